//! The storage conformance suite: the whole contract of a store's primitives
//! ([`CoordinatedTokenStorage`] / [`BlockingCoordinatedTokenStorage`]) and of the Python SDK's
//! six methods provided on them ([`TokenStorage`] / [`BlockingTokenStorage`]), as public
//! functions any backend's own tests call. A store with only the six methods is checked
//! through [`SingleProcess`](byova_core::backend::SingleProcess).
//!
//! ```no_run
//! # async fn example() {
//! use std::sync::Arc;
//! use byova_core::InMemoryTokenStorage;
//! use byova_testkit::conformance;
//!
//! let storage = Arc::new(InMemoryTokenStorage::new());
//! let corrupt = storage.clone();
//! let report = conformance::check_token_storage(
//!     storage,
//!     Some(Box::new(move |key| corrupt.put_raw_record(key, b"{not json".to_vec()))),
//! )
//! .await;
//! assert!(report.skipped.is_empty());
//! # }
//! ```
//!
//! The suite works on a store that other data already lives in (a shared Redis or database):
//! every org id it uses carries a random per-run prefix, and list checks are about its own ids.
//! It does write the Integration record. Coordination cases (versioned writes and deletes,
//! leases, concurrent versioned writers) run when the backend reports
//! [`supports_coordination`](CoordinatedTokenStorage::supports_coordination); otherwise they are listed in
//! [`ConformanceReport::skipped`]. The pending-authorization case runs when the backend keeps
//! them (its `save_pending_authorization` returns `true`).
//!
//! Failures panic at the end with every failed case named, so one run shows them all.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use byova_core::{
    AccessToken, BlockingTokenStorage, Clock, OAuthTokens, OrgId, RefreshToken, StorageError,
    StorageErrorKind, SystemClock, Timestamp, TokenKey, TokenStorage,
    backend::{
        BlockingCoordinatedTokenStorage, CoordinatedTokenStorage, Expect, Lease, PendingAuthorization,
        Versioned, pending_key,
    },
    oauth::PkceCodeVerifier,
};

/// Writes an unparseable record for a key, bypassing the codec (for the corrupt-record case).
pub type Corrupter = Box<dyn Fn(&TokenKey) + Send + Sync>;

/// What the suite ran.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ConformanceReport {
    /// Cases that passed.
    pub passed: Vec<&'static str>,
    /// Cases not applicable to this backend (no coordination, no corrupter).
    pub skipped: Vec<&'static str>,
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
type Res<T> = Result<T, StorageError>;

/// Either flavour of storage behind one async face, so the suite is written once.
#[derive(Clone)]
enum Target {
    Async(Arc<dyn CoordinatedTokenStorage>),
    Blocking(Arc<dyn BlockingCoordinatedTokenStorage>),
}

macro_rules! dispatch {
    ($self:ident, |$s:ident| $call:expr) => {
        match $self {
            Target::Async($s) => {
                let $s = $s.clone();
                Box::pin(async move { $call.await })
            }
            Target::Blocking($s) => {
                let $s = $s.clone();
                Box::pin(async move {
                    tokio::task::spawn_blocking(move || $call).await.unwrap_or_else(|e| {
                        Err(StorageError::other(format!("blocking storage call panicked: {e}")))
                    })
                })
            }
        }
    };
}

impl Target {
    fn supports_coordination(&self) -> bool {
        match self {
            Target::Async(s) => s.supports_coordination(),
            Target::Blocking(s) => s.supports_coordination(),
        }
    }
    fn get_integration(&self) -> BoxFut<'static, Res<Option<OAuthTokens>>> {
        dispatch!(self, |s| s.get_integration_tokens())
    }
    fn set_integration(&self, t: OAuthTokens) -> BoxFut<'static, Res<()>> {
        dispatch!(self, |s| s.set_integration_tokens(&t))
    }
    fn get_org(&self, org: OrgId) -> BoxFut<'static, Res<Option<OAuthTokens>>> {
        dispatch!(self, |s| s.get_service_app_tokens(&org))
    }
    fn set_org(&self, org: OrgId, t: OAuthTokens) -> BoxFut<'static, Res<()>> {
        dispatch!(self, |s| s.set_service_app_tokens(&org, &t))
    }
    fn delete_org(&self, org: OrgId) -> BoxFut<'static, Res<()>> {
        dispatch!(self, |s| s.delete_service_app_tokens(&org))
    }
    fn delete_versioned(&self, org: OrgId, expect: Expect) -> BoxFut<'static, Res<()>> {
        dispatch!(self, |s| s.delete_org(&org, expect))
    }
    fn save_pending(&self, key: String, pending: PendingAuthorization) -> BoxFut<'static, Res<bool>> {
        dispatch!(self, |s| s.save_pending_authorization(&key, &pending))
    }
    fn take_pending(&self, key: String) -> BoxFut<'static, Res<Option<PendingAuthorization>>> {
        dispatch!(self, |s| s.take_pending_authorization(&key))
    }
    fn load_many(&self, keys: Vec<TokenKey>) -> BoxFut<'static, Res<Vec<Option<Versioned<OAuthTokens>>>>> {
        dispatch!(self, |s| s.load_many(&keys))
    }
    fn load_state(&self, name: String) -> BoxFut<'static, Res<Option<Versioned<Vec<u8>>>>> {
        dispatch!(self, |s| s.load_state(&name))
    }
    fn store_state(&self, name: String, bytes: Vec<u8>, expect: Expect) -> BoxFut<'static, Res<u64>> {
        dispatch!(self, |s| s.store_state(&name, &bytes, expect))
    }
    fn list(&self) -> BoxFut<'static, Res<Vec<OrgId>>> {
        dispatch!(self, |s| s.list_registered_orgs())
    }
    fn load(&self, key: TokenKey) -> BoxFut<'static, Res<Option<Versioned<OAuthTokens>>>> {
        dispatch!(self, |s| s.load(&key))
    }
    fn store(&self, key: TokenKey, t: OAuthTokens, expect: Expect) -> BoxFut<'static, Res<u64>> {
        dispatch!(self, |s| s.store(&key, &t, expect))
    }
    fn acquire(&self, key: TokenKey, ttl: Duration) -> BoxFut<'static, Res<Option<Lease>>> {
        dispatch!(self, |s| s.try_acquire_lease(&key, ttl))
    }
    fn release(&self, lease: Lease) -> BoxFut<'static, Res<()>> {
        dispatch!(self, |s| s.release_lease(&lease))
    }
    fn extend(&self, lease: Lease, ttl: Duration) -> BoxFut<'static, Res<bool>> {
        dispatch!(self, |s| s.extend_lease(&lease, ttl))
    }
}

/// Runs the suite against an async backend. Call it from a multi-threaded tokio test.
///
/// # Panics
/// When any case fails, naming every failed case.
pub async fn check_token_storage(
    storage: Arc<dyn CoordinatedTokenStorage>,
    corrupt: Option<Corrupter>,
) -> ConformanceReport {
    run(Target::Async(storage), corrupt).await
}

/// Runs the suite against a blocking backend, on a runtime of its own (concurrent cases use
/// real threads). Call it from a plain `#[test]`, not from inside an async runtime.
///
/// # Panics
/// When any case fails, naming every failed case.
pub fn check_blocking_token_storage(
    storage: Arc<dyn BlockingCoordinatedTokenStorage>,
    corrupt: Option<Corrupter>,
) -> ConformanceReport {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(32)
        .enable_all()
        .build()
        .expect("a runtime for the conformance suite");
    rt.block_on(run(Target::Blocking(storage), corrupt))
}

type CaseResult = Result<(), String>;

/// `{org}-{i}`: an org id and a number make an org id.
fn suffixed(org: &OrgId, i: usize) -> OrgId {
    OrgId::new(&format!("{org}-{i}")).expect("an org id with a number appended is an org id")
}

fn ensure(cond: bool, what: impl FnOnce() -> String) -> CaseResult {
    if cond { Ok(()) } else { Err(what()) }
}

fn ok<T>(r: Res<T>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what} failed: {e}"))
}

/// Tokens whose fields all differ per `tag`, with characters that trip naive codecs.
pub fn sample_tokens(tag: &str) -> OAuthTokens {
    let mut t = OAuthTokens::new(
        AccessToken::new(format!("at-{tag}-ünï\"cødé\\/+=%\n")),
        1_209_599,
        Timestamp::from_unix_millis(1_764_000_000_123),
    )
    .with_refresh_token(RefreshToken::new(format!("rt-{tag}-{}", "x".repeat(200))), Some(7_775_999));
    t.scope = Some(format!("spark:all spark:applications_token {tag}"));
    t
}

fn same(a: &OAuthTokens, b: &OAuthTokens) -> bool {
    a.to_json() == b.to_json()
}

fn counter_tokens(n: u64) -> OAuthTokens {
    OAuthTokens::new(AccessToken::new(n.to_string()), 60, Timestamp::from_unix_secs(n))
}

fn counter_of(t: &OAuthTokens) -> Result<u64, String> {
    t.access_token.expose_secret().parse().map_err(|_| "counter record does not hold a number".to_owned())
}

struct Suite {
    target: Target,
    run_id: String,
}

impl Suite {
    fn org(&self, name: &str) -> OrgId {
        OrgId::new(&format!("{}-{name}", self.run_id)).expect("a run id and a case name make an org id")
    }

    async fn integration_round_trip(&self) -> CaseResult {
        let t = &self.target;
        let a = sample_tokens("integration-a");
        ok(t.set_integration(a.clone()).await, "set_integration_tokens")?;
        let got = ok(t.get_integration().await, "get_integration_tokens")?
            .ok_or("stored Integration tokens read back as None")?;
        ensure(same(&got, &a), || "Integration tokens did not round-trip byte-exact".into())?;
        let b = sample_tokens("integration-b");
        ok(t.set_integration(b.clone()).await, "set_integration_tokens")?;
        let got = ok(t.get_integration().await, "get_integration_tokens")?
            .ok_or("overwritten Integration tokens read back as None")?;
        ensure(same(&got, &b), || "overwriting Integration tokens did not replace them".into())
    }

    async fn org_round_trip_and_isolation(&self) -> CaseResult {
        let t = &self.target;
        let (a, b) = (self.org("iso-a"), self.org("iso-b"));
        ok(t.set_org(a.clone(), sample_tokens("org-a")).await, "set_service_app_tokens")?;
        ok(t.set_org(b.clone(), sample_tokens("org-b")).await, "set_service_app_tokens")?;
        let got_a =
            ok(t.get_org(a.clone()).await, "get_service_app_tokens")?.ok_or("org a read back as None")?;
        let got_b =
            ok(t.get_org(b.clone()).await, "get_service_app_tokens")?.ok_or("org b read back as None")?;
        ensure(same(&got_a, &sample_tokens("org-a")), || {
            "org a's tokens did not round-trip byte-exact".into()
        })?;
        ensure(same(&got_b, &sample_tokens("org-b")), || {
            "org b got something other than its own tokens".into()
        })?;
        let none = ok(t.get_org(self.org("never-registered")).await, "get_service_app_tokens")?;
        ensure(none.is_none(), || "an unregistered org returned tokens".into())?;
        let list = ok(t.list().await, "list_registered_orgs")?;
        ensure(!list.iter().any(|o| o.is_empty()), || {
            "the Integration record appeared in list_registered_orgs".into()
        })
    }

    async fn list_after_delete(&self) -> CaseResult {
        let t = &self.target;
        let (a, b) = (self.org("del-a"), self.org("del-b"));
        ok(t.set_org(a.clone(), sample_tokens("a")).await, "set_service_app_tokens")?;
        ok(t.set_org(b.clone(), sample_tokens("b")).await, "set_service_app_tokens")?;
        let list = ok(t.list().await, "list_registered_orgs")?;
        ensure(list.contains(&a) && list.contains(&b), || "list_registered_orgs lacks a stored org".into())?;
        ensure(list.iter().filter(|o| **o == a).count() == 1, || {
            "list_registered_orgs repeats an org".into()
        })?;
        ok(t.delete_org(a.clone()).await, "delete_service_app_tokens")?;
        let list = ok(t.list().await, "list_registered_orgs")?;
        ensure(!list.contains(&a), || "a deleted org is still listed".into())?;
        ensure(list.contains(&b), || "deleting one org removed another".into())?;
        ensure(ok(t.get_org(a.clone()).await, "get_service_app_tokens")?.is_none(), || {
            "a deleted org still has tokens".into()
        })?;
        ok(t.delete_org(a).await, "deleting an absent org (must not be an error)")
    }

    async fn awkward_org_ids(&self) -> CaseResult {
        let t = &self.target;
        let names = [
            "../../etc/passwd".to_owned(),
            "a/b\\c".to_owned(),
            "org:with:colons{and}braces".to_owned(),
            "ünïcødé-組織".to_owned(),
            "x".repeat(200),
            ".".to_owned(),
            "integration".to_owned(),
            "%2e%2e".to_owned(),
        ];
        for (i, name) in names.iter().enumerate() {
            let org = self.org(name);
            ok(
                t.set_org(org.clone(), sample_tokens(&i.to_string())).await,
                "set_service_app_tokens with an awkward org id",
            )?;
        }
        let list = ok(t.list().await, "list_registered_orgs")?;
        for (i, name) in names.iter().enumerate() {
            let org = self.org(name);
            let got = ok(t.get_org(org.clone()).await, "get_service_app_tokens")?
                .ok_or_else(|| format!("org id {name:?} read back as None"))?;
            ensure(same(&got, &sample_tokens(&i.to_string())), || {
                format!("org id {name:?} read back another org's tokens")
            })?;
            ensure(list.contains(&org), || format!("org id {name:?} is missing from list_registered_orgs"))?;
            ok(t.delete_org(org).await, "delete_service_app_tokens")?;
        }
        Ok(())
    }

    async fn concurrent_writers_distinct_orgs(&self) -> CaseResult {
        let mut tasks = Vec::new();
        for w in 0..8 {
            let t = self.target.clone();
            let prefix = self.org(&format!("conc-{w}"));
            tasks.push(tokio::spawn(async move {
                for i in 0..10 {
                    t.set_org(suffixed(&prefix, i), sample_tokens(&format!("{w}-{i}"))).await?;
                }
                Ok::<(), StorageError>(())
            }));
        }
        for task in tasks {
            let joined = task.await.map_err(|e| format!("a writer task failed: {e}"))?;
            ok(joined, "concurrent set_service_app_tokens")?;
        }
        let list = ok(self.target.list().await, "list_registered_orgs")?;
        for w in 0..8 {
            for i in 0..10 {
                let org = suffixed(&self.org(&format!("conc-{w}")), i);
                ensure(list.contains(&org), || format!("{org} written concurrently is missing"))?;
                let got = ok(self.target.get_org(org.clone()).await, "get_service_app_tokens")?
                    .ok_or("lost a concurrent write")?;
                ensure(same(&got, &sample_tokens(&format!("{w}-{i}"))), || {
                    format!("{org} holds another writer's tokens")
                })?;
            }
        }
        Ok(())
    }

    async fn versioned_writes(&self) -> CaseResult {
        let t = &self.target;
        let key = TokenKey::org(&self.org("versioned"));
        let v1 = ok(
            t.store(key.clone(), counter_tokens(1), Expect::Absent).await,
            "store(Expect::Absent) on a new key",
        )?;
        let again = t.store(key.clone(), counter_tokens(9), Expect::Absent).await;
        ensure(matches!(&again, Err(e) if e.kind() == StorageErrorKind::Conflict), || {
            format!("store(Absent) over an existing record gave {again:?}, not a conflict")
        })?;
        let loaded = ok(t.load(key.clone()).await, "load")?.ok_or("load returned None after store")?;
        ensure(loaded.version == v1, || {
            format!("load's version {} differs from store's {v1}", loaded.version)
        })?;
        let v2 = ok(
            t.store(key.clone(), counter_tokens(2), Expect::Version(v1)).await,
            "store(Expect::Version(current))",
        )?;
        ensure(v2 > v1, || format!("version did not grow: {v1} then {v2}"))?;
        let stale = t.store(key.clone(), counter_tokens(3), Expect::Version(v1)).await;
        ensure(matches!(&stale, Err(e) if e.kind() == StorageErrorKind::Conflict), || {
            format!("a stale versioned write gave {stale:?}, not a conflict")
        })?;
        let loaded = ok(t.load(key.clone()).await, "load")?.ok_or("record vanished")?;
        ensure(counter_of(&loaded.value)? == 2 && loaded.version == v2, || {
            "a rejected write changed the record".into()
        })?;
        let v3 = ok(t.store(key.clone(), counter_tokens(4), Expect::Any).await, "store(Expect::Any)")?;
        ensure(v3 > v2, || "an unconditional write did not advance the version".into())?;
        let via_seed = ok(t.get_org(self.org("versioned")).await, "get_service_app_tokens")?
            .ok_or("seed read missed a versioned write")?;
        ensure(counter_of(&via_seed)? == 4, || "the seed read and the versioned read disagree".into())?;
        // A record deleted and created again must not accept a write based on the old version.
        ok(t.delete_org(self.org("versioned")).await, "delete_service_app_tokens")?;
        let v4 =
            ok(t.store(key.clone(), counter_tokens(5), Expect::Absent).await, "store(Absent) after delete")?;
        let aba = t.store(key.clone(), counter_tokens(6), Expect::Version(v3)).await;
        ensure(matches!(&aba, Err(e) if e.kind() == StorageErrorKind::Conflict), || {
            "a write based on the pre-delete version was accepted".into()
        })?;
        ensure(v4 != v3, || "a re-created record reused the deleted record's version".into())?;
        let seeded = ok(t.load(key).await, "load")?;
        ensure(seeded.is_some_and(|v| v.version == v4), || {
            "load after re-create has the wrong version".into()
        })
    }

    /// A `deauthorized` delivery removes an org only if nothing newer was stored meanwhile: the
    /// delete must honour its expectation exactly as `store` does.
    async fn versioned_delete(&self) -> CaseResult {
        let t = &self.target;
        let org = self.org("vdelete");
        let key = TokenKey::org(&org);
        let v1 = ok(t.store(key.clone(), counter_tokens(1), Expect::Absent).await, "store(Absent)")?;
        let v2 = ok(t.store(key.clone(), counter_tokens(2), Expect::Version(v1)).await, "store(Version)")?;
        let stale = t.delete_versioned(org.clone(), Expect::Version(v1)).await;
        ensure(matches!(&stale, Err(e) if e.kind() == StorageErrorKind::Conflict), || {
            format!("delete_org(Version(stale)) gave {stale:?}, not a conflict")
        })?;
        let kept = ok(t.load(key.clone()).await, "load")?.ok_or("a rejected delete removed the record")?;
        ensure(kept.version == v2 && counter_of(&kept.value)? == 2, || {
            "a rejected delete changed the record".into()
        })?;
        let absent = t.delete_versioned(org.clone(), Expect::Absent).await;
        ensure(matches!(&absent, Err(e) if e.kind() == StorageErrorKind::Conflict), || {
            format!("delete_org(Absent) over an existing record gave {absent:?}, not a conflict")
        })?;
        ok(t.delete_versioned(org.clone(), Expect::Version(v2)).await, "delete_org(Version(current))")?;
        ensure(ok(t.load(key.clone()).await, "load")?.is_none(), || {
            "delete_org(Version(current)) left the record".into()
        })?;
        let gone = t.delete_versioned(org.clone(), Expect::Version(v2)).await;
        ensure(matches!(&gone, Err(e) if e.kind() == StorageErrorKind::Conflict), || {
            format!("delete_org(Version) of an absent record gave {gone:?}, not a conflict")
        })?;
        ok(t.delete_versioned(org.clone(), Expect::Any).await, "delete_org(Any) of an absent record")?;
        ok(t.delete_versioned(org, Expect::Absent).await, "delete_org(Absent) of an absent record")
    }

    fn pending(&self, tag: &str) -> (String, PendingAuthorization) {
        let verifier = PkceCodeVerifier::new(format!("{}-{tag}-{}", self.run_id, "v".repeat(43)));
        let pending =
            PendingAuthorization::new(verifier, format!("http://127.0.0.1:8765/{tag}"), SystemClock.now());
        (pending_key(&format!("{}-{tag}", self.run_id)), pending)
    }

    /// Pending authorizations: kept until taken, taken exactly once, by one of many racing
    /// takers. `None` (not applicable) when the backend keeps none (the primitives' defaults).
    async fn pending_authorizations(&self) -> Option<CaseResult> {
        let t = &self.target;
        let (key_a, a) = self.pending("a");
        let expected = (a.verifier.expose_secret().to_owned(), a.redirect_uri.clone(), a.expires_at);
        match t.save_pending(key_a.clone(), a).await {
            Ok(false) => return None,
            Ok(true) => {}
            Err(e) => return Some(Err(format!("save_pending_authorization: {e}"))),
        }
        Some(self.pending_cases(key_a, expected).await)
    }

    async fn pending_cases(&self, key_a: String, expected: (String, String, Timestamp)) -> CaseResult {
        let t = &self.target;
        let (unknown, _) = self.pending("never-saved");
        ensure(ok(t.take_pending(unknown).await, "take of an unknown key")?.is_none(), || {
            "an unknown key gave a pending authorization".into()
        })?;
        let got = ok(t.take_pending(key_a.clone()).await, "take_pending_authorization")?
            .ok_or("a saved pending authorization was not found")?;
        ensure(
            (got.verifier.expose_secret().to_owned(), got.redirect_uri.clone(), got.expires_at) == expected,
            || "the pending authorization taken differs from the one saved".into(),
        )?;
        ensure(ok(t.take_pending(key_a).await, "second take")?.is_none(), || {
            "a pending authorization was taken twice".into()
        })?;
        let (key_b, b) = self.pending("raced");
        ok(t.save_pending(key_b.clone(), b).await, "save_pending_authorization")?;
        let takers: Vec<_> = (0..8).map(|_| tokio::spawn(t.take_pending(key_b.clone()))).collect();
        let mut winners = 0;
        for taker in takers {
            let taken = taker.await.map_err(|e| format!("a taker panicked: {e}"))?;
            if ok(taken, "a racing take")?.is_some() {
                winners += 1;
            }
        }
        ensure(winners == 1, || format!("{winners} of 8 racing takers got the same pending authorization"))
    }

    /// `load_many` answers what `load` answers, key by key and in order, across batches.
    async fn batched_reads(&self) -> CaseResult {
        let t = &self.target;
        let mut keys = Vec::new();
        for i in 0..250 {
            let key = TokenKey::org(&self.org(&format!("batch-{i:03}")));
            if i % 3 != 1 {
                ok(t.store(key.clone(), sample_tokens(&format!("batch-{i}")), Expect::Any).await, "store")?;
            }
            keys.push(key);
        }
        keys.reverse();
        let many = ok(t.load_many(keys.clone()).await, "load_many")?;
        ensure(many.len() == keys.len(), || {
            format!("load_many gave {} records for {} keys", many.len(), keys.len())
        })?;
        for (key, got) in keys.iter().zip(&many) {
            let one = ok(t.load(key.clone()).await, "load")?;
            let same = match (&one, got) {
                (None, None) => true,
                (Some(a), Some(b)) => {
                    a.version == b.version && a.value.access_token.ct_eq(&b.value.access_token)
                }
                _ => false,
            };
            ensure(same, || format!("load_many and load disagree on {key}"))?;
        }
        ensure(many.iter().filter(|r| r.is_none()).count() == 83, || {
            "missing keys must read as None".to_owned()
        })?;
        for key in keys {
            if let TokenKey::Org(org) = key {
                let _ = t.delete_org(org).await;
            }
        }
        Ok(())
    }

    /// The small shared state replicas keep (the token budget): versioned exactly like
    /// records, and 8 concurrent compare-and-set writers lose no update. `None` (not
    /// applicable) when the backend keeps none (the primitives' defaults).
    async fn shared_state(&self) -> Option<CaseResult> {
        let t = &self.target;
        let name = format!("{}-state", self.run_id);
        match t.load_state(name.clone()).await {
            Err(e) if e.kind() == StorageErrorKind::Unsupported => return None,
            Err(e) => return Some(Err(format!("load_state: {e}"))),
            Ok(Some(_)) => return Some(Err("a state never written was found".into())),
            Ok(None) => {}
        }
        Some(self.shared_state_cases(name).await)
    }

    async fn shared_state_cases(&self, name: String) -> CaseResult {
        let t = &self.target;
        let v1 = ok(
            t.store_state(name.clone(), b"{\"n\":0}".to_vec(), Expect::Absent).await,
            "store_state(Absent)",
        )?;
        let again = t.store_state(name.clone(), b"{\"n\":9}".to_vec(), Expect::Absent).await;
        ensure(matches!(&again, Err(e) if e.kind() == StorageErrorKind::Conflict), || {
            format!("store_state(Absent) over a state gave {again:?}")
        })?;
        let v2 = ok(
            t.store_state(name.clone(), b"{\"n\":0}".to_vec(), Expect::Version(v1)).await,
            "store_state(Version)",
        )?;
        ensure(v2 > v1, || format!("the state's version did not grow: {v1} then {v2}"))?;
        let stale = t.store_state(name.clone(), b"{\"n\":7}".to_vec(), Expect::Version(v1)).await;
        ensure(matches!(&stale, Err(e) if e.kind() == StorageErrorKind::Conflict), || {
            format!("a stale state write gave {stale:?}")
        })?;
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let (t, name) = (t.clone(), name.clone());
                tokio::spawn(async move {
                    for _ in 0..20 {
                        loop {
                            let cur = t
                                .load_state(name.clone())
                                .await?
                                .ok_or_else(|| StorageError::other("state vanished"))?;
                            let n: u64 = serde_json::from_slice::<serde_json::Value>(&cur.value)
                                .ok()
                                .and_then(|v| v["n"].as_u64())
                                .ok_or_else(|| StorageError::other("state unreadable"))?;
                            let next = format!("{{\"n\":{}}}", n + 1).into_bytes();
                            match t.store_state(name.clone(), next, Expect::Version(cur.version)).await {
                                Ok(_) => break,
                                Err(e) if e.kind() == StorageErrorKind::Conflict => {}
                                Err(e) => return Err(e),
                            }
                        }
                    }
                    Ok::<(), StorageError>(())
                })
            })
            .collect();
        for w in writers {
            ok(w.await.map_err(|e| StorageError::other(e.to_string())).and_then(|r| r), "a state writer")?;
        }
        let end = ok(t.load_state(name).await, "load_state")?.ok_or("the state vanished")?;
        ensure(end.value == b"{\"n\":160}", || {
            format!("8 x 20 compare-and-set increments ended at {}", String::from_utf8_lossy(&end.value))
        })
    }

    async fn lease_exclusivity_and_expiry(&self) -> CaseResult {
        let t = &self.target;
        let key = TokenKey::org(&self.org("lease"));
        let ttl = Duration::from_millis(400);
        let first = ok(t.acquire(key.clone(), ttl).await, "try_acquire_lease")?
            .ok_or("a free lease was not granted")?;
        ensure(ok(t.acquire(key.clone(), ttl).await, "try_acquire_lease")?.is_none(), || {
            "a held lease was granted twice".into()
        })?;
        let other_key = TokenKey::org(&self.org("lease-other"));
        let other = ok(t.acquire(other_key, ttl).await, "try_acquire_lease")?
            .ok_or("a lease on another key was refused")?;
        let impostor = Lease { key: key.clone(), owner: first.owner.wrapping_add(1) };
        ok(t.release(impostor).await, "release_lease by a non-owner")?;
        ensure(ok(t.acquire(key.clone(), ttl).await, "try_acquire_lease")?.is_none(), || {
            "a non-owner released someone else's lease".into()
        })?;
        ok(t.release(first.clone()).await, "release_lease")?;
        let second = ok(t.acquire(key.clone(), Duration::from_millis(300)).await, "try_acquire_lease")?
            .ok_or("a released lease was not granted again")?;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let third = ok(t.acquire(key.clone(), Duration::from_secs(10)).await, "try_acquire_lease")?
            .ok_or("an expired lease was not granted to a new owner")?;
        ok(t.release(second).await, "release_lease of an expired lease")?;
        ensure(ok(t.acquire(key.clone(), ttl).await, "try_acquire_lease")?.is_none(), || {
            "releasing an expired lease freed its successor's".into()
        })?;
        ok(t.release(third).await, "release_lease")?;
        ok(t.release(other).await, "release_lease")
    }

    async fn lease_extension_by_the_owner_only(&self) -> CaseResult {
        let t = &self.target;
        let key = TokenKey::org(&self.org("extend"));
        let lease = ok(t.acquire(key.clone(), Duration::from_millis(400)).await, "try_acquire_lease")?
            .ok_or("a free lease was not granted")?;
        ensure(ok(t.extend(lease.clone(), Duration::from_secs(10)).await, "extend_lease")?, || {
            "the owner could not extend its lease".into()
        })?;
        tokio::time::sleep(Duration::from_millis(700)).await;
        ensure(
            ok(t.acquire(key.clone(), Duration::from_secs(1)).await, "try_acquire_lease")?.is_none(),
            || "an extended lease expired at its original time".into(),
        )?;
        let impostor = Lease { key: key.clone(), owner: lease.owner.wrapping_add(1) };
        ensure(!ok(t.extend(impostor, Duration::from_secs(10)).await, "extend_lease")?, || {
            "a non-owner extended the lease".into()
        })?;
        ok(t.release(lease.clone()).await, "release_lease")?;
        ensure(!ok(t.extend(lease, Duration::from_secs(10)).await, "extend_lease")?, || {
            "a released lease was extended".into()
        })?;
        let short = ok(t.acquire(key.clone(), Duration::from_millis(200)).await, "try_acquire_lease")?
            .ok_or("lease not granted")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let successor = ok(t.acquire(key.clone(), Duration::from_secs(10)).await, "try_acquire_lease")?
            .ok_or("an expired lease was not granted")?;
        ensure(!ok(t.extend(short, Duration::from_secs(10)).await, "extend_lease")?, || {
            "an expired holder extended over its successor".into()
        })?;
        ok(t.release(successor).await, "release_lease")
    }

    async fn concurrent_versioned_increments(&self) -> CaseResult {
        const WRITERS: u64 = 8;
        const EACH: u64 = 25;
        let key = TokenKey::org(&self.org("increments"));
        ok(self.target.store(key.clone(), counter_tokens(0), Expect::Absent).await, "store")?;
        let mut tasks = Vec::new();
        for _ in 0..WRITERS {
            let t = self.target.clone();
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = 0;
                let mut attempts = 0u32;
                while done < EACH {
                    attempts += 1;
                    if attempts > 100_000 {
                        return Err("a writer made no progress in 100000 attempts".to_owned());
                    }
                    let cur =
                        t.load(key.clone()).await.map_err(|e| e.to_string())?.ok_or("record vanished")?;
                    let n = counter_of(&cur.value)?;
                    match t.store(key.clone(), counter_tokens(n + 1), Expect::Version(cur.version)).await {
                        Ok(_) => done += 1,
                        Err(e) if e.kind() == StorageErrorKind::Conflict => tokio::task::yield_now().await,
                        Err(e) => return Err(format!("versioned store failed: {e}")),
                    }
                }
                Ok(())
            }));
        }
        for task in tasks {
            task.await.map_err(|e| e.to_string())??;
        }
        let end = ok(self.target.load(key).await, "load")?.ok_or("record vanished")?;
        let n = counter_of(&end.value)?;
        ensure(n == WRITERS * EACH, || {
            format!("lost updates: {n} after {} versioned increments", WRITERS * EACH)
        })
    }

    async fn corrupt_record_is_typed(&self, corrupt: &Corrupter) -> CaseResult {
        let org = self.org("corrupt");
        let neighbour = self.org("corrupt-neighbour");
        ok(self.target.set_org(neighbour.clone(), sample_tokens("n")).await, "set_service_app_tokens")?;
        corrupt(&TokenKey::org(&org));
        let got = self.target.get_org(org.clone()).await;
        ensure(matches!(&got, Err(e) if e.kind() == StorageErrorKind::Corrupt), || {
            format!("a corrupt record read as {:?}, not a Corrupt error", got.as_ref().map(|o| o.is_some()))
        })?;
        let neighbour_ok = ok(
            self.target.get_org(neighbour.clone()).await,
            "get_service_app_tokens next to a corrupt record",
        )?;
        ensure(neighbour_ok.is_some(), || "a corrupt record hid its neighbour".into())?;
        let _ = self.target.delete_org(org).await;
        ok(self.target.delete_org(neighbour).await, "delete_service_app_tokens")
    }

    async fn cleanup(&self) {
        if let Ok(list) = self.target.list().await {
            for org in list.into_iter().filter(|o| o.starts_with(&self.run_id)) {
                let _ = self.target.delete_org(org).await;
            }
        }
    }
}

async fn run(target: Target, corrupt: Option<Corrupter>) -> ConformanceReport {
    let mut rand = [0u8; 6];
    getrandom::fill(&mut rand).unwrap_or_default();
    let run_id = format!("conf{}", rand.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let suite = Suite { target, run_id };
    let coordinated = suite.target.supports_coordination();
    let mut report = ConformanceReport::default();
    let mut failures = Vec::new();
    let mut record = |name: &'static str, result: Option<CaseResult>| match result {
        None => report.skipped.push(name),
        Some(Ok(())) => report.passed.push(name),
        Some(Err(why)) => failures.push(format!("{name}: {why}")),
    };
    record("integration_round_trip", Some(suite.integration_round_trip().await));
    record("org_round_trip_and_isolation", Some(suite.org_round_trip_and_isolation().await));
    record("list_after_delete", Some(suite.list_after_delete().await));
    record("awkward_org_ids", Some(suite.awkward_org_ids().await));
    record("concurrent_writers_distinct_orgs", Some(suite.concurrent_writers_distinct_orgs().await));
    record("versioned_writes", if coordinated { Some(suite.versioned_writes().await) } else { None });
    record("versioned_delete", if coordinated { Some(suite.versioned_delete().await) } else { None });
    record(
        "lease_exclusivity_and_expiry",
        if coordinated { Some(suite.lease_exclusivity_and_expiry().await) } else { None },
    );
    record(
        "lease_extension_by_the_owner_only",
        if coordinated { Some(suite.lease_extension_by_the_owner_only().await) } else { None },
    );
    record(
        "concurrent_versioned_increments",
        if coordinated { Some(suite.concurrent_versioned_increments().await) } else { None },
    );
    record("pending_authorizations", suite.pending_authorizations().await);
    record("shared_state", suite.shared_state().await);
    record("batched_reads", Some(suite.batched_reads().await));
    record(
        "corrupt_record_is_typed",
        match &corrupt {
            Some(c) => Some(suite.corrupt_record_is_typed(c).await),
            None => None,
        },
    );
    suite.cleanup().await;
    for name in &report.passed {
        println!("conformance: {name} ... ok");
    }
    for name in &report.skipped {
        println!("conformance: {name} ... not applicable to this backend");
    }
    assert!(failures.is_empty(), "storage conformance failures:\n  {}", failures.join("\n  "));
    report
}
