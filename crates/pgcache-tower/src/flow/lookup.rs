//! Looking a cacheable request up: the primary key, then (when the response varies) the variant key,
//! then serving what was found: fresh → hit; stale within stale-while-revalidate → hit plus one
//! background refresh; otherwise → revalidate now.

use http::header::HeaderName;
use pgcache_core::{CacheStore, Entry};

use super::respond::{only_if_cached, ttl_left};
use super::{Flow, Inner, ResBody, Resp};
use crate::body::ReplayBody;
use crate::entry::{Record, Stored};
use crate::key;
use crate::status::CacheStatusMember;

impl<S, B, RB> Flow<S, B, RB>
where
    S: Inner<B, RB>,
    B: ReplayBody,
    RB: ResBody,
{
    /// Reads the primary key and serves, fills or forwards.
    pub(super) async fn lookup(self) -> Result<Resp<RB>, S::Error> {
        let primary = self.ctx.keys.primary.clone();
        let entry = match self.shared.store.get_entry(&primary).await {
            Ok(entry) => entry,
            Err(e) => return self.unavailable(e).await,
        };
        let Some(entry) = entry else {
            return self.miss(primary, "uri-miss").await;
        };
        match Record::decode(&entry.value) {
            Some(Record::Response(stored)) if self.ctx.selects(&stored) => self.serve(primary, stored, entry).await,
            Some(Record::Response(stored)) => self.variant(stored.vary_names()).await,
            Some(Record::Variants(names)) => self.variant(names).await,
            Some(Record::Pass(_)) => self.forward(CacheStatusMember::fwd("uri-miss").detail("pass")).await,
            None => self.miss(primary, "uri-miss").await,
        }
    }

    /// The response varies on `names`: reads this request's variant.
    async fn variant(self, names: Vec<HeaderName>) -> Result<Resp<RB>, S::Error> {
        let selected = key::selected(&names, self.ctx.headers());
        let vkey = key::variant(&self.ctx.keys.primary, &selected);
        match self.shared.store.get_entry(&vkey).await {
            Err(e) => self.unavailable(e).await,
            Ok(Some(entry)) => match Record::decode(&entry.value) {
                Some(Record::Response(stored)) if self.ctx.selects(&stored) => self.serve(vkey, stored, entry).await,
                Some(Record::Pass(_)) => self.forward(CacheStatusMember::fwd("vary-miss").detail("pass")).await,
                _ => self.miss(vkey, "vary-miss").await,
            },
            Ok(None) => self.miss(vkey, "vary-miss").await,
        }
    }

    /// A usable stored response under `key`: fresh → hit; stale within stale-while-revalidate → hit and
    /// one background refresh; otherwise (or `no-cache`) → revalidate now.
    async fn serve(self, key: String, stored: Box<Stored>, entry: Entry) -> Result<Resp<RB>, S::Error> {
        let age = stored.age(entry.expiry.remaining());
        let f = stored.freshness;
        let must_validate = f.no_cache || self.ctx.force_revalidate;
        if !must_validate && age < f.lifetime {
            let status = CacheStatusMember::hit().ttl(ttl_left(&stored, age));
            return Ok(self.respond(&stored, age, status));
        }
        if !must_validate && age < f.lifetime + f.stale_while_revalidate {
            self.clone().spawn_refresh(key, stored.clone(), entry.version);
            let status = CacheStatusMember::hit().ttl(ttl_left(&stored, age)).detail("stale-while-revalidate");
            return Ok(self.respond(&stored, age, status));
        }
        if self.ctx.only_if_cached {
            return Ok(only_if_cached(self.name()));
        }
        self.revalidate(key, stored, entry.version, age).await
    }
}
