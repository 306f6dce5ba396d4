//! A cacheable request's way through the cache, as one struct with methods that read top-down:
//! `lookup` → `variant` → `serve` (a fresh hit, or stale-while-revalidate); `miss` → the dogpile-safe
//! `fill` through the core's typed `get_or_load` → `waiter`; `revalidate` (once per stale version across
//! nodes, stale-if-error) and the background `refresh`. It builds on the leaves `ctx.rs`, `respond.rs`,
//! `place.rs` and `inner.rs`, which know nothing of it.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::StatusCode;
use pgcache_core::{CacheStore, Entry, Error, Fill, LoadError, Loaded, SetOptions, Source, Ttl};

use super::ctx::{Ctx, Mode};
use super::inner::{call, Inner, ResBody, Resp};
use super::place::{Placement, Prepared, Rulebook};
use super::respond::{finish, from_stored, only_if_cached, plain_hit, ttl_left};
use crate::body::{PgBody, ReplayBody};
use crate::config::{Config, Shared};
use crate::decoded::{DecodedRecord, HitHead};
use crate::entry::{encode_stored, now_ms, Record, Stored};
use crate::key;
use crate::policy::{self, Decision};
use crate::status::CacheStatusMember;

/// How long a refresh result stays under its refresh key (only concurrent requests read it).
const REFRESH_RESULT_TTL: Duration = Duration::from_secs(5);
/// How long the result of a revalidation whose 304 selected nothing stays under its refresh key: just
/// long enough for the requests collapsed on it, since the stored response is still stale.
const UNSELECTED_RESULT_TTL: Duration = Duration::from_millis(1);
/// How long a failed fill or refresh is remembered, so waiters go to the handler in parallel.
const ERROR_PASS_TTL: Duration = Duration::from_secs(1);

/// One cacheable request on its way through the cache: the layer's shared state, the inner service
/// (a ready clone, cloned again into loaders and background refreshes) and the request.
pub(crate) struct Flow<S, B, RB> {
    shared: Arc<Shared>,
    inner: S,
    ctx: Arc<Ctx>,
    _types: PhantomData<fn(B) -> RB>,
}

impl<S: Clone, B, RB> Clone for Flow<S, B, RB> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            inner: self.inner.clone(),
            ctx: Arc::clone(&self.ctx),
            _types: PhantomData,
        }
    }
}

impl<S, B, RB> Flow<S, B, RB>
where
    S: Inner<B, RB>,
    B: ReplayBody,
    RB: ResBody,
{
    /// `ready` is the service `poll_ready` answered for. The flow keeps a fresh clone instead and drops
    /// `ready` at once: every call it makes polls readiness itself (`inner::call`), and a ready service
    /// that holds a reservation (a concurrency limit, a buffer slot) while a loader's clone waits for
    /// another would deadlock behind a limit of one.
    pub(super) fn new(shared: Arc<Shared>, ready: S, ctx: Ctx) -> Self {
        let inner = ready.clone();
        drop(ready);
        Self { shared, inner, ctx: Arc::new(ctx), _types: PhantomData }
    }

    /// Where this request's responses are stored.
    fn placement(&self) -> Placement<'_> {
        Placement {
            store: &self.shared.store,
            namespace: &self.shared.config.namespace,
            keys: &self.ctx.keys,
            max_variants: self.shared.config.max_variants.max(1),
        }
    }

    /// What the storage rules need.
    fn rulebook(&self) -> Rulebook<'_> {
        let (method, target) = self.ctx.request_line();
        Rulebook {
            rules: &self.shared.rules,
            facts: self.ctx.facts,
            max_body_bytes: self.shared.config.max_body_bytes,
            request: self.ctx.headers(),
            method,
            target,
        }
    }

    /// The finished answer from a stored response of this age.
    fn respond(&self, stored: &Stored, age: Duration, status: CacheStatusMember) -> Resp<RB> {
        finish(from_stored(&self.ctx.parts, stored, age), &status, &self.shared.config, false)
    }

    /// A response of the inner service, finished (its body dropped for HEAD: fills are GETs).
    fn finish_fill(&self, resp: Resp<RB>, status: CacheStatusMember) -> Resp<RB> {
        finish(resp, &status, &self.shared.config, self.ctx.head)
    }

    /// The inner service answers as the client asked; nothing is stored.
    async fn forward(mut self, status: CacheStatusMember) -> Result<Resp<RB>, S::Error> {
        let resp = call(&mut self.inner, self.ctx.request(Mode::Forward)).await?;
        let status = status.fwd_status(resp.status().as_u16());
        Ok(finish(resp.map(PgBody::passthrough), &status, &self.shared.config, false))
    }

    /// Fail open: the cache failed, the inner service answers.
    async fn unavailable(self, err: Error) -> Result<Resp<RB>, S::Error> {
        tracing::warn!(target: "pgcache::tower", error = %err, "HTTP cache unavailable; serving from the handler");
        self.forward(CacheStatusMember::fwd("miss").detail("cache-unavailable")).await
    }
}

// ---- Lookup: fresh and stale hits ----

impl<S, B, RB> Flow<S, B, RB>
where
    S: Inner<B, RB>,
    B: ReplayBody,
    RB: ResBody,
{
    /// Reads the primary key (unless `peeked`: what the local cache answered for it already) and
    /// serves, fills or forwards.
    pub(super) async fn lookup(self, peeked: Option<Entry>) -> Result<Resp<RB>, S::Error> {
        // Borrowed from a handle of its own (not from `self`, which the branches consume): a hit never
        // copies the key.
        let keys = Arc::clone(&self.ctx.keys);
        let primary = keys.primary.as_str();
        let entry = match peeked {
            Some(entry) => Some(entry),
            None => match self.shared.store.get_entry(primary).await {
                Ok(entry) => entry,
                Err(e) => return Box::pin(self.unavailable(e)).await,
            },
        };
        let Some(entry) = entry else {
            return Box::pin(self.miss(primary.to_owned(), "uri-miss")).await;
        };
        let decoded = self.shared.decoded.record(primary, &entry.value);
        match decoded.as_deref().map(|d| &d.record) {
            Some(Record::Response(stored)) if self.ctx.selects(stored) => {
                self.serve(primary, stored, decoded.as_deref(), entry).await
            }
            Some(Record::Response(stored)) => Box::pin(self.variant(stored.vary_names())).await,
            Some(Record::Variants(index)) => Box::pin(self.variant(index.names.clone())).await,
            Some(Record::Pass(_)) => Box::pin(self.forward(CacheStatusMember::fwd("uri-miss").detail("pass"))).await,
            None => Box::pin(self.miss(primary.to_owned(), "uri-miss")).await,
        }
    }

    /// The response varies on `names`: reads this request's variant.
    async fn variant(self, names: Vec<HeaderName>) -> Result<Resp<RB>, S::Error> {
        let selected = key::selected(&names, self.ctx.headers());
        let vkey = key::variant(&self.ctx.keys.primary, &selected);
        match self.shared.store.get_entry(&vkey).await {
            Err(e) => Box::pin(self.unavailable(e)).await,
            Ok(Some(entry)) => {
                let decoded = self.shared.decoded.record(&vkey, &entry.value);
                match decoded.as_deref().map(|d| &d.record) {
                    Some(Record::Response(stored)) if self.ctx.selects(stored) => {
                        self.serve(&vkey, stored, decoded.as_deref(), entry).await
                    }
                    Some(Record::Pass(_)) => {
                        Box::pin(self.forward(CacheStatusMember::fwd("vary-miss").detail("pass"))).await
                    }
                    _ => Box::pin(self.miss(vkey, "vary-miss")).await,
                }
            }
            Ok(None) => Box::pin(self.miss(vkey, "vary-miss")).await,
        }
    }

    /// A usable stored response under `key`: fresh → hit; stale within stale-while-revalidate → hit and
    /// one background refresh; otherwise (or `no-cache`) → revalidate now.
    /// `memo` is the memo `stored` was decoded into, which remembers the head of plain hits.
    async fn serve(
        self,
        key: &str,
        stored: &Stored,
        memo: Option<&DecodedRecord>,
        entry: Entry,
    ) -> Result<Resp<RB>, S::Error> {
        let age = stored.age(entry.expiry.remaining());
        let f = stored.freshness;
        let must_validate = f.no_cache || self.ctx.force_revalidate;
        if !must_validate && age < f.lifetime {
            return Ok(fresh_hit(&self.shared.config, &self.ctx, stored, memo, age));
        }
        if !must_validate && age < policy::add(f.lifetime, f.stale_while_revalidate) {
            self.clone().spawn_refresh(key.to_owned(), Box::new(stored.clone()), entry.version);
            let status = CacheStatusMember::hit().ttl(ttl_left(stored, age)).detail("stale-while-revalidate");
            return Ok(self.respond(stored, age, status));
        }
        if self.ctx.only_if_cached {
            return Ok(only_if_cached(&self.shared.config));
        }
        if self.ctx.range {
            return Box::pin(self.forward(CacheStatusMember::fwd("stale").detail("range"))).await;
        }
        Box::pin(self.revalidate(key.to_owned(), Box::new(stored.clone()), entry.version, age)).await
    }
}

/// A fresh hit (see [`fresh_now`] for the conditions). For a plain GET, the head remembered in `memo`
/// for this age and ttl when there is one; else the head is built as for any answer, and remembered.
fn fresh_hit<RB: ResBody>(
    cfg: &Config,
    ctx: &Ctx,
    stored: &Stored,
    memo: Option<&DecodedRecord>,
    age: Duration,
) -> Resp<RB> {
    let ttl = ttl_left(stored, age);
    let memo = memo.filter(|_| ctx.plain);
    if let Some((status, headers)) = memo.and_then(|m| m.hit_head(age.as_secs(), ttl)) {
        return plain_hit(stored, status, headers);
    }
    let resp = finish(from_stored(&ctx.parts, stored, age), &CacheStatusMember::hit().ttl(ttl), cfg, false);
    if let Some(memo) = memo {
        memo.remember_hit_head(HitHead {
            age: age.as_secs(),
            ttl,
            status: resp.status(),
            headers: resp.headers().clone(),
        });
    }
    resp
}

/// The answer to a request whose primary key the local cache answered with `entry`, when no waiting
/// is needed: a fresh stored response this request selects, served as `lookup` and `serve` would serve
/// it. `None` for anything else (a variant index, a stale or `no-cache` response, a pass marker), which
/// the flow then takes on from `entry`.
pub(crate) fn fresh_now<RB: ResBody>(shared: &Shared, ctx: &Ctx, entry: &Entry) -> Option<Resp<RB>> {
    let decoded = shared.decoded.record(&ctx.keys.primary, &entry.value)?;
    let Record::Response(stored) = &decoded.record else { return None };
    if !ctx.selects(stored) {
        return None;
    }
    let age = stored.age(entry.expiry.remaining());
    let f = stored.freshness;
    if f.no_cache || ctx.force_revalidate || age >= f.lifetime {
        return None;
    }
    Some(fresh_hit(&shared.config, ctx, stored, Some(&decoded), age))
}

// ---- Misses: the dogpile-safe fill ----

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
            return Ok(only_if_cached(&self.shared.config));
        }
        if self.ctx.range {
            return self.forward(CacheStatusMember::fwd(fwd).detail("range")).await;
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
            Some(Record::Variants(index)) => index.names,
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

// ---- Stale entries: revalidation and background refresh ----

/// What a refresh answers the request that ran it with (the `get_or_load` output).
enum Refreshed<RB: http_body::Body, E> {
    /// The handler sent a new, storable response; it replaced the stale one.
    Stored(Box<Stored>),
    /// The handler answered 304; the stale response was freshened and stored again.
    Validated(Box<Stored>),
    /// The handler answered 304 for another validator (RFC 9111 §4.3.4): the stored response is served
    /// as it is, and stays as it was.
    Unselected(Box<Stored>),
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
        let stale_ok = age < policy::add(f.lifetime, f.stale_if_error) && !f.stale_if_error.is_zero();
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
            Ok(Loaded { output: Some(Refreshed::Unselected(old)), .. }) => {
                let status = CacheStatusMember::fwd("stale").fwd_status(304).ttl(ttl_left(&old, age));
                Ok(self.respond(&old, age, status))
            }
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
            let options = SetOptions::ttl(Ttl::After(REFRESH_RESULT_TTL)).tags(self.ctx.keys.base_tags());
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
        if resp.status() == StatusCode::NOT_MODIFIED && !policy::selected_for_update(&old.headers, resp.headers()) {
            // §4.3.4: a 304 naming another validator updates nothing; it still says the stored
            // representation is current (it answered our conditional), so that one is served as it is.
            // Shared with the requests collapsed on this revalidation only: a later request validates again.
            let options = SetOptions::ttl(Ttl::After(UNSELECTED_RESULT_TTL)).tags(self.ctx.keys.base_tags());
            return Ok(Fill { value: encode_stored(&old), options, output: Refreshed::Unselected(old) });
        }
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
