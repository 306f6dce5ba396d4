//! Stale entries: revalidation now (one request per stale version across every node asks the handler,
//! conditionally; the others share its answer; stale-if-error serves the stale copy when the handler
//! fails), and the background refresh of stale-while-revalidate.

use std::time::Duration;

use http::StatusCode;
use pgcache_core::{CacheStore, Fill, LoadError, Loaded, SetOptions, Ttl};

use super::ctx::Mode;
use super::place::Prepared;
use super::respond::ttl_left;
use super::{call, Flow, Inner, ResBody, Resp, ERROR_PASS_TTL, REFRESH_RESULT_TTL};
use crate::body::{PgBody, ReplayBody};
use crate::entry::{encode_stored, now_ms, Record, Stored};
use crate::key;
use crate::policy::{self, Decision};
use crate::status::CacheStatusMember;

/// What a refresh answers the request that ran it with (the `get_or_load` output).
enum Refreshed<RB: http_body::Body, E> {
    /// The handler sent a new, storable response; it replaced the stale one.
    Stored(Box<Stored>),
    /// The handler answered 304; the stale response was freshened and stored again.
    Validated(Box<Stored>),
    /// The handler's answer may not be stored: a hit-for-pass marker replaced the entry.
    Passed(Resp<RB>, &'static str),
    /// The handler answered with an error status (500, 502, 503, 504): the stale entry stays.
    ErrorStatus(Resp<RB>),
    /// The inner service failed: the stale entry stays.
    Failed(E),
}

impl<S, B, RB> Flow<S, B, RB>
where
    S: Inner<B, RB>,
    B: ReplayBody,
    RB: ResBody,
{
    /// Revalidates a stale (or `no-cache`) entry now. Serves stale on error within `stale-if-error`.
    pub(super) async fn revalidate(
        self,
        key: String,
        stored: Box<Stored>,
        version: i64,
        age: Duration,
    ) -> Result<Resp<RB>, S::Error> {
        let f = stored.freshness;
        let stale_ok = age < f.lifetime + f.stale_if_error && !f.stale_if_error.is_zero();
        let loader = {
            let (flow, key, old) = (self.clone(), key.clone(), stored.clone());
            move || flow.refresh(key, old)
        };
        let result = self.shared.store.get_or_load(&key::refresh(&key, version), loader).await;
        let serve_stale = |fwd_status: Option<u16>| {
            let mut status = CacheStatusMember::fwd("stale").ttl(ttl_left(&stored, age)).detail("stale-if-error");
            status.fwd_status = fwd_status;
            self.respond(&stored, age, status)
        };
        match result {
            Ok(Loaded { output: Some(Refreshed::Stored(new)), .. }) => {
                let code = new.status.as_u16();
                Ok(self.respond_refreshed(&new, code))
            }
            Ok(Loaded { output: Some(Refreshed::Validated(new)), .. }) => Ok(self.respond_refreshed(&new, 304)),
            Ok(Loaded { output: Some(Refreshed::Failed(e)), .. }) => {
                if stale_ok {
                    Ok(serve_stale(None))
                } else {
                    Err(e)
                }
            }
            Ok(Loaded { output: Some(Refreshed::ErrorStatus(resp)), .. }) if stale_ok => {
                Ok(serve_stale(Some(resp.status().as_u16())))
            }
            Ok(Loaded { output: Some(Refreshed::ErrorStatus(resp)), .. }) => {
                let status = CacheStatusMember::fwd("stale").fwd_status(resp.status().as_u16()).detail("error");
                Ok(self.finish_fill(resp, status))
            }
            Ok(Loaded { output: Some(Refreshed::Passed(resp, reason)), .. }) => {
                let status = CacheStatusMember::fwd("stale").fwd_status(resp.status().as_u16()).detail(reason);
                Ok(self.finish_fill(resp, status))
            }
            Ok(loaded) => match Record::decode(&loaded.value) {
                // Another request refreshed it: share its answer.
                Some(Record::Response(new)) if self.ctx.selects(&new) => {
                    let age = new.age(None);
                    let status = CacheStatusMember::fwd("stale").collapsed().ttl(ttl_left(&new, age));
                    Ok(self.respond(&new, age, status))
                }
                Some(Record::Pass(reason)) if reason == "error" && stale_ok => Ok(serve_stale(None)),
                _ => self.forward(CacheStatusMember::fwd("stale")).await,
            },
            Err(LoadError::Loader(resp)) => {
                let status = CacheStatusMember::fwd("stale").fwd_status(resp.status().as_u16()).detail("body-error");
                Ok(self.finish_fill(resp, status))
            }
            Err(LoadError::Cache(e)) => self.unavailable(e).await,
        }
    }

    /// The fresh answer of the refresh this request ran.
    fn respond_refreshed(&self, new: &Stored, fwd_status: u16) -> Resp<RB> {
        let status = CacheStatusMember::fwd("stale").fwd_status(fwd_status).stored().ttl(ttl_left(new, Duration::ZERO));
        self.respond(new, Duration::ZERO, status)
    }

    /// Runs the refresh in the background (stale-while-revalidate); the request is served meanwhile.
    pub(super) fn spawn_refresh(self, key: String, stored: Box<Stored>, version: i64) {
        let store = self.shared.store.clone();
        let refresh_key = key::refresh(&key, version);
        tokio::spawn(async move {
            let loader = move || self.refresh(key, stored);
            match store.get_or_load(&refresh_key, loader).await {
                Ok(_) => {}
                Err(LoadError::Cache(e)) => {
                    tracing::debug!(target: "pgcache::tower", error = %e, "background refresh failed; the stale entry stays");
                }
                Err(LoadError::Loader(_)) => {
                    tracing::debug!(target: "pgcache::tower", "background refresh: the response body failed; the stale entry stays");
                }
            }
        });
    }

    /// The loader of a refresh, under the refresh key of `key`'s stale version: asks the handler with
    /// the stored validators; on 304 freshens the stored response, on a storable answer replaces it, on
    /// an error keeps it (and tells the waiters with an error marker), on an uncacheable answer
    /// replaces it with a hit-for-pass marker. Its value is the new record, or a marker.
    async fn refresh(mut self, key: String, old: Box<Stored>) -> Result<Fill<Refreshed<RB, S::Error>>, Resp<RB>> {
        let resp = call(&mut self.inner, self.ctx.request(Mode::Revalidate(&old))).await;
        let short = |value| {
            let options = SetOptions { ttl: Ttl::After(REFRESH_RESULT_TTL), tags: self.ctx.keys.base_tags() };
            (value, options)
        };
        let error_marker = |output| {
            let (value, options) = self.placement().pass_marker("error", ERROR_PASS_TTL);
            Fill { value, options, output }
        };
        let resp = match resp {
            Ok(resp) => resp,
            Err(e) => return Ok(error_marker(Refreshed::Failed(e))),
        };
        let placement = self.placement();
        let hit_for_pass = self.shared.config.hit_for_pass_ttl;
        if resp.status() == StatusCode::NOT_MODIFIED {
            let headers = policy::freshen(&old.headers, resp.headers());
            return match policy::decide(&self.shared.rules, self.ctx.facts, old.status, &headers) {
                Decision::Store { freshness, .. } => {
                    let new = Stored {
                        headers,
                        freshness,
                        stored_at_ms: now_ms(),
                        keep_ms: u64::try_from(freshness.keep_for().as_millis()).unwrap_or(u64::MAX),
                        ..(*old).clone()
                    };
                    let (value, options) = placement.place(&key, &new).await;
                    placement.write(&key, value, &options).await;
                    let (value, options) = short(encode_stored(&new));
                    Ok(Fill { value, options, output: Refreshed::Validated(Box::new(new)) })
                }
                Decision::Pass(reason) => {
                    let (pass, options) = placement.pass_marker(reason, hit_for_pass);
                    placement.write(&key, pass.clone(), &options).await;
                    let mut resp = http::Response::new(PgBody::replay(old.body.clone(), old.trailers.clone()));
                    *resp.status_mut() = old.status;
                    *resp.headers_mut() = headers;
                    let (value, options) = short(pass);
                    Ok(Fill { value, options, output: Refreshed::Passed(resp, reason) })
                }
            };
        }
        if policy::is_error_status(resp.status()) {
            return Ok(error_marker(Refreshed::ErrorStatus(resp.map(PgBody::passthrough))));
        }
        match super::place::prepare(&self.rulebook(), resp).await {
            Prepared::Store(new) => {
                let (value, options) = placement.place(&key, &new).await;
                placement.write(&key, value, &options).await;
                let (value, options) = short(encode_stored(&new));
                Ok(Fill { value, options, output: Refreshed::Stored(new) })
            }
            Prepared::Pass(resp, reason) => {
                let (pass, options) = placement.pass_marker(reason, hit_for_pass);
                placement.write(&key, pass.clone(), &options).await;
                let (value, options) = short(pass);
                Ok(Fill { value, options, output: Refreshed::Passed(resp, reason) })
            }
            Prepared::Failed(resp) => Err(resp),
        }
    }
}
