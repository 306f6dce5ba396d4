//! Misses: one request (across every node) runs the handler inside the core's dogpile-safe
//! `get_or_load` and stores its response (or a hit-for-pass marker); the others wait and share it.
//! Credentialed requests and second variants fill without collapsing.

use pgcache_core::{CacheStore, Fill, LoadError, Loaded, Source};

use super::ctx::Mode;
use super::place::Prepared;
use super::respond::{only_if_cached, ttl_left};
use super::{call, Flow, Inner, ResBody, Resp, ERROR_PASS_TTL};
use crate::body::ReplayBody;
use crate::entry::Record;
use crate::key;
use crate::status::CacheStatusMember;

/// What the leader's fill answers its own request with (the `get_or_load` output).
enum Filled<RB: http_body::Body> {
    /// The response was stored: serve it from the record.
    Stored(Box<crate::entry::Stored>),
    /// Not stored (a hit-for-pass marker was): this response, streamed, and why.
    Passed(Resp<RB>, &'static str),
}

/// Why a fill stored nothing (the `get_or_load` loader error; never cached).
enum FillError<RB: http_body::Body, E> {
    /// The inner service failed: its error is the request's.
    Inner(E),
    /// The response body failed while it was buffered: the bytes read, then the error.
    Body(Resp<RB>),
}

impl<S, B, RB> Flow<S, B, RB>
where
    S: Inner<B, RB>,
    B: ReplayBody,
    RB: ResBody,
{
    /// A miss on `key` (`fwd` says which: `uri-miss` or `vary-miss`).
    pub(super) async fn miss(self, key: String, fwd: &'static str) -> Result<Resp<RB>, S::Error> {
        if self.ctx.only_if_cached {
            return Ok(only_if_cached(self.name()));
        }
        if self.ctx.credentialed {
            return self.fill_direct(key, fwd).await;
        }
        let loader = {
            let (flow, key) = (self.clone(), key.clone());
            move || flow.fill(key)
        };
        let status = CacheStatusMember::fwd(fwd);
        match self.shared.store.get_or_load(&key, loader).await {
            Ok(Loaded { output: Some(Filled::Stored(stored)), stored: written, unavailable, .. }) => {
                let age = stored.freshness.initial_age;
                let mut status = status.fwd_status(stored.status.as_u16()).ttl(ttl_left(&stored, age));
                if written {
                    status = status.stored();
                } else if unavailable {
                    status = status.detail("cache-unavailable");
                }
                // Else a NullCache, which stores nothing by design: a plain miss, nothing to report.
                Ok(self.respond(&stored, age, status))
            }
            Ok(Loaded { output: Some(Filled::Passed(resp, reason)), .. }) => {
                let status = status.fwd_status(resp.status().as_u16()).detail(reason);
                Ok(self.finish_fill(resp, status))
            }
            Ok(loaded) => self.waiter(loaded, fwd).await,
            Err(LoadError::Loader(FillError::Inner(e))) => Err(e),
            Err(LoadError::Loader(FillError::Body(resp))) => {
                let status = status.fwd_status(resp.status().as_u16()).detail("body-error");
                Ok(self.finish_fill(resp, status))
            }
            Err(LoadError::Cache(e)) => self.unavailable(e).await,
        }
    }

    /// The loader of a miss: runs the handler; stores its response, or a hit-for-pass marker.
    async fn fill(mut self, key: String) -> Result<Fill<Filled<RB>>, FillError<RB, S::Error>> {
        let resp = call(&mut self.inner, self.ctx.request(Mode::Fill)).await.map_err(FillError::Inner)?;
        let server_error = resp.status().is_server_error();
        match super::place::prepare(&self.rulebook(), resp).await {
            Prepared::Store(stored) => {
                let (value, options) = self.placement().place(&key, &stored).await;
                Ok(Fill { value, options, output: Filled::Stored(stored) })
            }
            Prepared::Pass(resp, reason) => {
                let ttl = if server_error { ERROR_PASS_TTL } else { self.shared.config.hit_for_pass_ttl };
                let (value, options) = self.placement().pass_marker(reason, ttl);
                Ok(Fill { value, options, output: Filled::Passed(resp, reason) })
            }
            Prepared::Failed(resp) => Err(FillError::Body(resp)),
        }
    }

    /// A request that did not run the loader: the value was filled by another request (or was there).
    async fn waiter<T>(self, loaded: Loaded<T>, fwd: &'static str) -> Result<Resp<RB>, S::Error> {
        let mut status = match loaded.source {
            Source::Local | Source::Shared => CacheStatusMember::hit(),
            _ => CacheStatusMember::fwd(fwd),
        };
        let collapsed = loaded.source == Source::Collapsed;
        if collapsed {
            status = status.collapsed();
        }
        let names = match Record::decode(&loaded.value) {
            Some(Record::Response(stored)) if self.ctx.selects(&stored) => {
                let age = stored.age(None);
                let status = status.ttl(ttl_left(&stored, age));
                return Ok(self.respond(&stored, age, status));
            }
            Some(Record::Response(stored)) => stored.vary_names(),
            Some(Record::Variants(names)) => names,
            Some(Record::Pass(_)) => {
                // Not storable (hit-for-pass): everyone goes to the handler, in parallel.
                let mut pass = CacheStatusMember::fwd(fwd).detail("pass");
                if collapsed {
                    pass = pass.collapsed();
                }
                return self.forward(pass).await;
            }
            None => return self.forward(CacheStatusMember::fwd("miss")).await,
        };
        // Another variant than the leader's: read it, else fill it without collapsing.
        let vkey = key::variant(&self.ctx.keys.primary, &key::selected(&names, self.ctx.headers()));
        if let Ok(Some(entry)) = self.shared.store.get_entry(&vkey).await {
            if let Some(Record::Response(stored)) = Record::decode(&entry.value) {
                if self.ctx.selects(&stored) {
                    let age = stored.age(entry.expiry.remaining());
                    return Ok(self.respond(&stored, age, status.ttl(ttl_left(&stored, age))));
                }
            }
        }
        self.fill_direct(vkey, "vary-miss").await
    }

    /// Fills without collapsing (credentialed requests, second variants): handler, then store if storable.
    async fn fill_direct(mut self, key: String, fwd: &'static str) -> Result<Resp<RB>, S::Error> {
        let resp = call(&mut self.inner, self.ctx.request(Mode::Fill)).await?;
        let status = CacheStatusMember::fwd(fwd).fwd_status(resp.status().as_u16());
        match super::place::prepare(&self.rulebook(), resp).await {
            Prepared::Store(stored) => {
                let (value, options) = self.placement().place(&key, &stored).await;
                let mut status = match self.shared.store.set_entry(&key, value, &options).await {
                    Ok(_) => status.stored(),
                    Err(e) => {
                        tracing::warn!(target: "pgcache::tower", error = %e, "could not store the response");
                        status.detail("cache-unavailable")
                    }
                };
                let age = stored.freshness.initial_age;
                status = status.ttl(ttl_left(&stored, age));
                Ok(self.respond(&stored, age, status))
            }
            Prepared::Pass(resp, reason) => Ok(self.finish_fill(resp, status.detail(reason))),
            Prepared::Failed(resp) => Ok(self.finish_fill(resp, status.detail("body-error"))),
        }
    }
}
