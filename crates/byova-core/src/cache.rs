//! The process-local token cache that answers the hot path.
//!
//! A fresh token is served from here without a storage round trip: one uncontended read lock,
//! two timestamp comparisons and an `Arc` increment. Each entry remembers when refresh-ahead
//! begins for it (with per-key, per-process jitter) and when it was last read from storage, so
//! a shared backend's changes (a deauthorization, a refresh by another replica) are seen within
//! [`TokenCache::revalidate_after`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use crate::key::OrgId;
use crate::key::{Expect, TokenKey, Versioned};
use crate::policy::{Freshness, KeyStatus, RefreshPolicy, key_seed};
use crate::secret::{AccessToken, RefreshToken};
use crate::time::Timestamp;
use crate::tokens::OAuthTokens;

/// One cached record.
#[derive(Debug)]
pub struct CacheEntry {
    /// The record as last read or written.
    pub record: Versioned<OAuthTokens>,
    /// From this moment the entry is no longer served from the hot path.
    pub serve_until: Timestamp,
}

/// Tokens Webex issued that could not be stored yet, kept for the key's next run, which stores
/// them before anything else.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Unsaved {
    /// The tokens.
    pub tokens: OAuthTokens,
    /// The condition to store them under: the version read before the refresh token was spent.
    pub expect: Expect,
    /// The refresh token spent to get them. A stored record still holding it is older than
    /// these tokens, and so is a record marked "re-authorization required".
    pub spent: Option<RefreshToken>,
}

impl Unsaved {
    /// Tokens to keep, stored against `expect`, obtained by spending `spent`.
    pub fn new(tokens: OAuthTokens, expect: Expect, spent: Option<RefreshToken>) -> Self {
        Self { tokens, expect, spent }
    }

    /// Whether these tokens should replace `stored`, a record another writer stored meanwhile.
    pub fn supersede(&self, stored: &OAuthTokens) -> bool {
        stored.reauthorization_required
            || matches!((&stored.refresh_token, &self.spent), (Some(s), Some(spent)) if s.ct_eq(spent))
    }
}

/// Names caches for the per-thread snapshots.
static NEXT_CACHE_ID: AtomicU64 = AtomicU64::new(1);

/// The Integration entry this thread last read: which cache and generation it came from, its
/// token and until when it may be served.
struct Snapshot {
    cache: u64,
    generation: u64,
    token: AccessToken,
    serve_until: Timestamp,
}

thread_local! {
    static SNAPSHOT: RefCell<Option<Snapshot>> = const { RefCell::new(None) };
}

/// The cache: one slot for the Integration, a map for orgs.
///
/// The Integration's hot path reads a per-thread snapshot of the slot, valid while the
/// cache's generation (bumped by every write) has not moved: one atomic load and an `Arc`
/// increment. A thread's snapshot holds the last token it was handed until its next read
/// after a change, or until it exits.
#[derive(Debug)]
pub struct TokenCache {
    id: u64,
    generation: AtomicU64,
    /// Lock-free: readers never contend with each other or wait for a writer.
    integration: ArcSwapOption<CacheEntry>,
    orgs: RwLock<HashMap<OrgId, Arc<CacheEntry>>>,
    /// Tokens obtained but not yet stored (the store was down), per key.
    unsaved: Mutex<HashMap<TokenKey, Unsaved>>,
    policy: RefreshPolicy,
    revalidate_after: Duration,
}

impl TokenCache {
    /// An empty cache; entries are re-read from storage at least every `revalidate_after`.
    pub fn new(policy: RefreshPolicy, revalidate_after: Duration) -> Self {
        Self {
            id: NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
            integration: ArcSwapOption::empty(),
            orgs: RwLock::new(HashMap::new()),
            unsaved: Mutex::new(HashMap::new()),
            policy,
            revalidate_after,
        }
    }

    /// How long an entry is trusted before it is re-read from storage.
    pub fn revalidate_after(&self) -> Duration {
        self.revalidate_after
    }

    /// Where `key` falls in the refresh window ([`key_seed`]; the same in every process).
    pub fn jitter_seed(&self, key: &TokenKey) -> u64 {
        key_seed(key)
    }

    /// The hot path for the Integration: the access token when it is fresh at `now`.
    #[inline]
    pub fn fresh_integration(&self, now: Timestamp) -> Option<AccessToken> {
        let generation = self.generation.load(Ordering::Acquire);
        let hit = SNAPSHOT.with(|snapshot| match &*snapshot.borrow() {
            Some(s) if s.cache == self.id && s.generation == generation => {
                Some((now < s.serve_until).then(|| s.token.clone()))
            }
            _ => None,
        });
        match hit {
            Some(answer) => answer,
            None => self.fresh_integration_from_slot(now, generation),
        }
    }

    /// Reads the slot and keeps it as this thread's snapshot for `generation` (read before the
    /// slot, so a snapshot is never older than its generation says).
    #[cold]
    fn fresh_integration_from_slot(&self, now: Timestamp, generation: u64) -> Option<AccessToken> {
        let Some(entry) = self.integration.load_full() else {
            // Removed: drop this thread's copy of the old token too.
            SNAPSHOT.with(|snapshot| *snapshot.borrow_mut() = None);
            return None;
        };
        let token = entry.record.value.access_token.clone();
        let serve_until = entry.serve_until;
        SNAPSHOT.with(|snapshot| {
            *snapshot.borrow_mut() =
                Some(Snapshot { cache: self.id, generation, token: token.clone(), serve_until });
        });
        (now < serve_until).then_some(token)
    }

    fn set_integration(&self, entry: Option<Arc<CacheEntry>>) {
        self.integration.store(entry);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The hot path for an org.
    #[inline]
    pub fn fresh_org(&self, org_id: &OrgId, now: Timestamp) -> Option<AccessToken> {
        let map = self.orgs.read().unwrap_or_else(|e| e.into_inner());
        map.get(org_id).filter(|e| now < e.serve_until).map(|e| e.record.value.access_token.clone())
    }

    /// The hot path for any key.
    pub fn fresh(&self, key: &TokenKey, now: Timestamp) -> Option<AccessToken> {
        match key {
            TokenKey::Integration => self.fresh_integration(now),
            TokenKey::Org(org) => self.fresh_org(org, now),
        }
    }

    /// The cached entry, fresh or not.
    pub fn get(&self, key: &TokenKey) -> Option<Arc<CacheEntry>> {
        match key {
            TokenKey::Integration => self.integration.load_full(),
            TokenKey::Org(org) => self.orgs.read().unwrap_or_else(|e| e.into_inner()).get(org).cloned(),
        }
    }

    /// Caches `record`, read from or written to storage at `now`. A record that is not fresh
    /// is cached too (status reports use it) but never served from the hot path.
    pub fn put(&self, key: &TokenKey, record: Versioned<OAuthTokens>, now: Timestamp) {
        let seed = self.jitter_seed(key);
        let revalidate = now.saturating_add(self.revalidate_after);
        let tokens = &record.value;
        // A record nobody can renew without a person (marked, or an Integration's without a
        // refresh token; an org's is renewed by a fetch) is served while it is usable.
        let renewable = !tokens.reauthorization_required
            && (tokens.refresh_token.is_some() || matches!(key, TokenKey::Org(_)));
        let usable_until = tokens.expires_at().saturating_sub(self.policy.buffer_for(tokens));
        let serve_until = match self.policy.assess(tokens, now, seed) {
            Freshness::Fresh if renewable => self.policy.refresh_ahead_at(tokens, seed).min(revalidate),
            Freshness::Fresh | Freshness::RefreshAhead if !renewable => usable_until.min(revalidate),
            Freshness::Fresh | Freshness::RefreshAhead | Freshness::Expired => Timestamp::EPOCH,
        };
        let entry = Arc::new(CacheEntry { record, serve_until });
        match key {
            TokenKey::Integration => self.set_integration(Some(entry)),
            TokenKey::Org(org) => {
                self.orgs.write().unwrap_or_else(|e| e.into_inner()).insert(org.clone(), entry);
            }
        }
    }

    /// Caches `record` to be served until `until` (no sooner tried again), or until it is no
    /// longer usable: a refresh the token budget had no room for.
    pub fn put_deferred(
        &self,
        key: &TokenKey,
        record: Versioned<OAuthTokens>,
        now: Timestamp,
        until: Timestamp,
    ) {
        let usable_until = record.value.expires_at().saturating_sub(self.policy.buffer_for(&record.value));
        let revalidate = now.saturating_add(self.revalidate_after);
        let entry = Arc::new(CacheEntry { serve_until: until.min(usable_until).min(revalidate), record });
        match key {
            TokenKey::Integration => self.set_integration(Some(entry)),
            TokenKey::Org(org) => {
                self.orgs.write().unwrap_or_else(|e| e.into_inner()).insert(org.clone(), entry);
            }
        }
    }

    /// The [`KeyStatus`] of a stored record.
    pub fn status(&self, key: &TokenKey, tokens: &OAuthTokens, now: Timestamp) -> KeyStatus {
        self.policy.key_status(key.clone(), tokens, now, self.jitter_seed(key))
    }

    /// Keeps tokens that were obtained but could not be stored, for the key's next run.
    pub fn keep_unsaved(&self, key: &TokenKey, unsaved: Unsaved) {
        self.unsaved.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), unsaved);
    }

    /// The tokens waiting to be stored for `key`, left in place (tests look at them).
    #[cfg(test)]
    pub(crate) fn peek_unsaved(&self, key: &TokenKey) -> Option<Unsaved> {
        self.unsaved.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// Takes the tokens an earlier refresh of `key` could not store, for the next run to store
    /// first.
    pub fn take_unsaved(&self, key: &TokenKey) -> Option<Unsaved> {
        self.unsaved.lock().unwrap_or_else(|e| e.into_inner()).remove(key)
    }

    /// Stops serving `key`'s cached entry (its access token was rejected); tokens waiting to be
    /// stored stay.
    pub fn evict(&self, key: &TokenKey) {
        match key {
            TokenKey::Integration => self.set_integration(None),
            TokenKey::Org(org) => {
                self.orgs.write().unwrap_or_else(|e| e.into_inner()).remove(org);
            }
        }
    }

    /// Forgets `key` (deauthorized, removed, or found missing in storage).
    pub fn remove(&self, key: &TokenKey) {
        self.unsaved.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        match key {
            TokenKey::Integration => self.set_integration(None),
            TokenKey::Org(org) => {
                self.orgs.write().unwrap_or_else(|e| e.into_inner()).remove(org);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::OrgId;

    fn record(obtained: u64, expires_in: u64) -> Versioned<OAuthTokens> {
        Versioned {
            value: OAuthTokens::new(AccessToken::new("A"), expires_in, Timestamp::from_unix_secs(obtained)),
            version: 3,
        }
    }

    #[test]
    fn serves_fresh_entries_until_revalidation_or_refresh_ahead() {
        let policy = RefreshPolicy { refresh_from_percent: 80, ..RefreshPolicy::default() };
        let cache = TokenCache::new(policy, Duration::from_secs(30));
        let now = Timestamp::from_unix_secs(1000);
        cache.put(&TokenKey::Integration, record(1000, 10_000), now);
        assert!(cache.fresh_integration(now).is_some());
        assert!(cache.fresh_integration(Timestamp::from_unix_secs(1029)).is_some());
        assert!(cache.fresh_integration(Timestamp::from_unix_secs(1030)).is_none(), "re-read after 30 s");
        cache.put(&TokenKey::org(&OrgId::from_static("o")), record(1000, 100), now);
        assert!(cache.fresh_org(&OrgId::from_static("o"), Timestamp::from_unix_secs(1010)).is_some());
        // Refresh-ahead begins at 80 % of 100 s, before the revalidation interval ends.
        assert!(cache.fresh_org(&OrgId::from_static("o"), Timestamp::from_unix_secs(1080)).is_none());
        assert!(cache.fresh_org(&OrgId::from_static("other"), now).is_none());
        cache.remove(&TokenKey::org(&OrgId::from_static("o")));
        assert!(cache.get(&TokenKey::org(&OrgId::from_static("o"))).is_none());
    }

    #[test]
    fn per_thread_snapshots_follow_every_write_and_never_mix_caches() {
        let policy = RefreshPolicy { refresh_from_percent: 80, ..RefreshPolicy::default() };
        let now = Timestamp::from_unix_secs(1000);
        let record = |access: &str| Versioned {
            value: OAuthTokens::new(AccessToken::new(access), 10_000, Timestamp::from_unix_secs(1000)),
            version: 1,
        };
        let a = Arc::new(TokenCache::new(policy.clone(), Duration::from_secs(30)));
        let b = TokenCache::new(policy, Duration::from_secs(30));
        a.put(&TokenKey::Integration, record("A1"), now);
        b.put(&TokenKey::Integration, record("B1"), now);
        assert!(a.fresh_integration(now).unwrap().ct_eq_str("A1"));
        assert!(b.fresh_integration(now).unwrap().ct_eq_str("B1"), "one thread, two caches");
        assert!(a.fresh_integration(now).unwrap().ct_eq_str("A1"));
        // Another thread replaces the entry; this thread's next read sees it.
        let writer = a.clone();
        std::thread::spawn(move || writer.put(&TokenKey::Integration, record("A2"), now)).join().unwrap();
        assert!(a.fresh_integration(now).unwrap().ct_eq_str("A2"));
        let remover = a.clone();
        std::thread::spawn(move || remover.remove(&TokenKey::Integration)).join().unwrap();
        assert!(a.fresh_integration(now).is_none(), "a removal is seen at once");
        assert!(a.fresh_integration(Timestamp::from_unix_secs(1029)).is_none());
    }

    #[test]
    fn stale_records_are_kept_but_never_served() {
        let cache = TokenCache::new(RefreshPolicy::default(), Duration::from_secs(30));
        let now = Timestamp::from_unix_secs(100_000);
        cache.put(&TokenKey::Integration, record(0, 60), now);
        assert!(cache.fresh_integration(now).is_none());
        assert_eq!(cache.get(&TokenKey::Integration).unwrap().record.version, 3);
    }

    #[test]
    fn seeds_differ_per_key_and_agree_across_processes() {
        let a = TokenCache::new(RefreshPolicy::default(), Duration::from_secs(1));
        let b = TokenCache::new(RefreshPolicy::default(), Duration::from_secs(1));
        assert_ne!(
            a.jitter_seed(&TokenKey::org(&OrgId::from_static("x"))),
            a.jitter_seed(&TokenKey::org(&OrgId::from_static("y")))
        );
        assert_eq!(
            a.jitter_seed(&TokenKey::org(&OrgId::from_static("x"))),
            b.jitter_seed(&TokenKey::org(&OrgId::from_static("x"))),
            "every replica agrees"
        );
    }
}
