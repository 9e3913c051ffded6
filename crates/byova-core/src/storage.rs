//! Token storage: the primitives every store implements ([`CoordinatedTokenStorage`], async, and
//! its blocking twin [`BlockingCoordinatedTokenStorage`]), the Python SDK's six methods provided
//! on top of them ([`TokenStorage`], [`BlockingTokenStorage`]), [`SingleProcess`] for a store
//! that has only the six, and [`InMemoryTokenStorage`].
//!
//! # One surface
//! The refresh path needs versions and leases: a **lease** per key so one process calls the
//! token endpoint (efficiency), and a **version** on every record so a write based on a stale
//! read is rejected (correctness). It reads and writes only through the primitives
//! (`load`, `store` with [`Expect`], `delete_org`, `list_orgs`, the three lease methods,
//! pending authorizations, shared states), declared once here for both flavours. Everything
//! else is provided on top of them in this file: the Python SDK's six methods for every
//! store, and the primitives of one process (no versions, leases always granted) for a store
//! written against the six methods alone, through [`SingleProcess`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::StorageError;
use crate::key::OrgId;
use crate::key::{Expect, Lease, TokenKey, UNVERSIONED, Versioned};
use crate::pending::PendingAuthorization;
use crate::time::{Clock, SystemClock, Timestamp};
use crate::tokens::{OAuthTokens, ServiceAppTokens};

/// Decodes a stored record, mapping failure to a
/// [`StorageErrorKind::Corrupt`](crate::StorageErrorKind::Corrupt) error that names `key` and
/// `location` (a file, a Redis key, a table) but no content.
pub fn decode_record(bytes: &[u8], key: &TokenKey, location: &str) -> Result<OAuthTokens, StorageError> {
    OAuthTokens::from_json(bytes).map_err(|why| {
        StorageError::corrupt(format!("the record for {key} at {location} is unreadable: {why}"))
    })
}

/// Whether tokens a local journal kept (written to the store under `written_under`, never
/// confirmed stored: the process died, or the store was down) still belong in the store that
/// now holds `stored`, and under which condition to write them there.
///
/// They replace a record obtained earlier (the store never got them, or lost them when it
/// was killed) under that record's version. They create a record only where one was meant to
/// be created (`Expect::Absent`) and none exists, and only within `max_age` of being obtained,
/// so a record removed since (a deauthorization) is not brought back by a stale entry. Anything
/// else (a newer or the same record stored, a record removed since a versioned write) drops them.
///
/// ```
/// use byova_core::backend::{journal_replay, Expect, Versioned};
/// use byova_core::{AccessToken, OAuthTokens, Timestamp};
/// use std::time::Duration;
/// let at = Timestamp::from_unix_secs;
/// let kept = OAuthTokens::new(AccessToken::new("new"), 60, at(100));
/// let older = Versioned { value: OAuthTokens::new(AccessToken::new("old"), 60, at(50)), version: 7 };
/// let hour = Duration::from_secs(3600);
/// assert_eq!(journal_replay(&kept, Expect::Version(7), Some(&older), at(120), hour), Some(Expect::Version(7)));
/// assert_eq!(journal_replay(&kept, Expect::Version(7), None, at(120), hour), None);
/// assert_eq!(journal_replay(&kept, Expect::Absent, None, at(120), hour), Some(Expect::Absent));
/// ```
pub fn journal_replay(
    tokens: &OAuthTokens,
    written_under: Expect,
    stored: Option<&Versioned<OAuthTokens>>,
    now: Timestamp,
    max_age: Duration,
) -> Option<Expect> {
    match stored {
        Some(record) => {
            (record.value.obtained_at < tokens.obtained_at).then_some(Expect::Version(record.version))
        }
        None => (written_under == Expect::Absent
            && now.saturating_duration_since(tokens.obtained_at) <= max_age)
            .then_some(Expect::Absent),
    }
}

/// What the primitives' default shared-state methods answer.
fn unsupported_state() -> StorageError {
    StorageError::new(crate::error::StorageErrorKind::Unsupported, "this store keeps no shared state")
}

/// Checks a shared state's name (letters, digits, `-`; at most 100), so every backend can use
/// it in a key, a file name or a row name as it is.
///
/// # Errors
/// A [`StorageError`] naming the refused name.
pub fn check_state_name(name: &str) -> Result<(), StorageError> {
    if name.is_empty() || name.len() > 100 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(StorageError::other(format!("{name:?} is not a shared state name")));
    }
    Ok(())
}

/// A storage URL as it may appear in a log or an error message: whatever precedes the last `@`
/// after the scheme (a user and password) becomes `***`, and the query and fragment (which can
/// carry `password=`) are dropped. When that `@` may lie beyond the authority (a `/`, `?` or `#`
/// comes before it), only the scheme is kept. Control characters are shown as `?`.
///
/// ```
/// use byova_core::backend::redact_url;
/// assert_eq!(redact_url("postgres://app:s3cret@db:5432/tokens?sslmode=require"), "postgres://***@db:5432/tokens");
/// assert_eq!(redact_url("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
/// assert_eq!(redact_url("mysql://db/test?password=s3cret&email=ops@example.com"), "mysql://***");
/// ```
pub fn redact_url(url: &str) -> String {
    // The scheme only when it is one (RFC 3986: a letter, then letters, digits, `+`, `-`, `.`),
    // so a password holding `://` cannot pass for the end of a scheme.
    let scheme_len = url
        .find(':')
        .filter(|&i| {
            let s = url.as_bytes();
            i > 0
                && s[0].is_ascii_alphabetic()
                && s[1..i].iter().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b))
        })
        .map_or(0, |i| i + 1);
    let (scheme, rest) = url.split_at(scheme_len);
    let (slashes, rest) = match rest.strip_prefix("//") {
        Some(rest) => ("//", rest),
        None => ("", rest),
    };
    // Whatever precedes the last `@` may be a user and password. When a `/`, `?` or `#`
    // precedes it too, that `@` may lie in the path or the query instead, after a password
    // (or one holding those characters unencoded): nothing after the scheme is shown then.
    let (userinfo, tail) = match rest.rfind('@') {
        Some(at) if rest[..at].contains(['/', '?', '#']) => ("***", ""),
        Some(at) => ("***@", &rest[at + 1..]),
        None => ("", rest),
    };
    let tail = tail.split(['?', '#']).next().unwrap_or_default();
    // Control characters become `?`, so a URL cannot forge lines in a log.
    format!("{scheme}{slashes}{userinfo}{tail}")
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Org ids read back from a store (keys, rows, file names) where they were written from
/// [`OrgId`]s, sorted. A name that is not an org id in its normalized spelling (an entry edited
/// by hand, or written by an older byova under another spelling of the org) is left out with
/// a warning naming it and `location`, never in the way of the others: every read and delete
/// names the normalized id, so listing it under that id would point at nothing (re-register
/// the org, or `byova org import` its record, to bring it back).
pub fn stored_org_ids(names: impl IntoIterator<Item = String>, location: &str) -> Vec<OrgId> {
    let mut orgs: Vec<OrgId> = names
        .into_iter()
        .filter_map(|name| match OrgId::new(&name) {
            Ok(org) if org.as_str() == name => Some(org),
            Ok(org) => {
                tracing::warn!(%location, stored = %name.escape_debug(), normalized = %org, "an org is stored under a spelling byova does not read; left out of the listing");
                None
            }
            Err(why) => {
                tracing::warn!(%location, stored = %name.escape_debug(), %why, "an org id in the store is unreadable; left out of the listing");
                None
            }
        })
        .collect();
    orgs.sort();
    orgs
}

/// A conflict on the shared state `name` (a versioned write based on a stale read).
pub fn state_conflict(name: &str) -> StorageError {
    StorageError::new(
        crate::error::StorageErrorKind::Conflict,
        format!("the shared state {name} changed since it was read"),
    )
}

/// Async token storage: the Python SDK's `TokenStorage` protocol, six methods.
///
/// Every store byova ships has these six methods, provided on top of its primitives
/// ([`CoordinatedTokenStorage`]). A team's own store implements just these six and hands
/// byova a [`SingleProcess`] around it, which provides the primitives for a store one process
/// uses: records without versions, leases always granted (in-process single-flight does the
/// work).
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use byova_core::backend::{CoordinatedTokenStorage, SingleProcess};
/// use byova_core::{AccessToken, OAuthTokens, OrgId, StorageError, Timestamp, TokenKey, TokenStorage, async_trait};
///
/// /// A team's own store: the Python SDK's six methods, nothing more.
/// #[derive(Default)]
/// struct TeamStore(Mutex<HashMap<TokenKey, OAuthTokens>>);
///
/// #[async_trait]
/// impl TokenStorage for TeamStore {
///     async fn get_integration_tokens(&self) -> Result<Option<OAuthTokens>, StorageError> {
///         Ok(self.0.lock().unwrap().get(&TokenKey::Integration).cloned())
///     }
///     async fn set_integration_tokens(&self, tokens: &OAuthTokens) -> Result<(), StorageError> {
///         self.0.lock().unwrap().insert(TokenKey::Integration, tokens.clone());
///         Ok(())
///     }
///     async fn get_service_app_tokens(&self, org: &OrgId) -> Result<Option<OAuthTokens>, StorageError> {
///         Ok(self.0.lock().unwrap().get(&TokenKey::org(org)).cloned())
///     }
///     async fn set_service_app_tokens(&self, org: &OrgId, tokens: &OAuthTokens) -> Result<(), StorageError> {
///         self.0.lock().unwrap().insert(TokenKey::org(org), tokens.clone());
///         Ok(())
///     }
///     async fn delete_service_app_tokens(&self, org: &OrgId) -> Result<(), StorageError> {
///         self.0.lock().unwrap().remove(&TokenKey::org(org));
///         Ok(())
///     }
///     async fn list_registered_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
///         Ok(self.0.lock().unwrap().keys().filter_map(TokenKey::org_id).cloned().collect())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // What byova's managers take: `Arc<dyn CoordinatedTokenStorage>`.
/// let store = std::sync::Arc::new(SingleProcess::new(TeamStore::default()));
/// let org: OrgId = "63b02f90-9cc6-43b8-aa6d-cad425ac554c".parse()?;
/// let tokens = OAuthTokens::new(AccessToken::new("a"), 3600, Timestamp::from_unix_secs(0));
/// store.set_service_app_tokens(&org, &tokens).await?;
/// assert_eq!(store.list_registered_orgs().await?, [org.clone()]);
/// // The primitives are provided for it: one process, unversioned records.
/// assert!(!store.supports_coordination());
/// assert_eq!(store.load(&TokenKey::org(&org)).await?.map(|r| r.version), Some(0));
/// # Ok(()) }
/// ```
#[async_trait]
pub trait TokenStorage: Send + Sync {
    /// Stored Integration tokens, or `None` when not authorized.
    async fn get_integration_tokens(&self) -> Result<Option<OAuthTokens>, StorageError>;
    /// Persists Integration tokens.
    async fn set_integration_tokens(&self, tokens: &OAuthTokens) -> Result<(), StorageError>;
    /// Service App tokens for an org, or `None` when not registered.
    async fn get_service_app_tokens(&self, org_id: &OrgId) -> Result<Option<ServiceAppTokens>, StorageError>;
    /// Persists Service App tokens for an org.
    async fn set_service_app_tokens(
        &self,
        org_id: &OrgId,
        tokens: &ServiceAppTokens,
    ) -> Result<(), StorageError>;
    /// Removes an org's Service App tokens (deauthorization). Removing an absent org is not an
    /// error.
    async fn delete_service_app_tokens(&self, org_id: &OrgId) -> Result<(), StorageError>;
    /// Org ids with stored Service App tokens.
    async fn list_registered_orgs(&self) -> Result<Vec<OrgId>, StorageError>;
}

/// Blocking token storage: the same six methods as [`TokenStorage`], without async; a team's
/// own store reaches byova through [`SingleProcess`], as there.
pub trait BlockingTokenStorage: Send + Sync {
    /// Stored Integration tokens, or `None` when not authorized.
    fn get_integration_tokens(&self) -> Result<Option<OAuthTokens>, StorageError>;
    /// Persists Integration tokens.
    fn set_integration_tokens(&self, tokens: &OAuthTokens) -> Result<(), StorageError>;
    /// Service App tokens for an org, or `None` when not registered.
    fn get_service_app_tokens(&self, org_id: &OrgId) -> Result<Option<ServiceAppTokens>, StorageError>;
    /// Persists Service App tokens for an org.
    fn set_service_app_tokens(&self, org_id: &OrgId, tokens: &ServiceAppTokens) -> Result<(), StorageError>;
    /// Removes an org's Service App tokens (deauthorization). Removing an absent org is not an
    /// error.
    fn delete_service_app_tokens(&self, org_id: &OrgId) -> Result<(), StorageError>;
    /// Org ids with stored Service App tokens.
    fn list_registered_orgs(&self) -> Result<Vec<OrgId>, StorageError>;
}

/// Declares the primitives, once: the async trait and its blocking twin are written from this
/// one list, so their methods, defaults and documentation cannot drift apart.
macro_rules! primitives {
    ($(#[$attr:meta])* $name:ident $(, $async_kw:ident, $await:tt)?) => {
        $(#[$attr])*
        pub trait $name: Send + Sync {
            /// Whether versions and leases coordinate for real: `true` by default; `false` for
            /// [`SingleProcess`] (unversioned records, leases always granted). A store that
            /// wraps another forwards it.
            fn supports_coordination(&self) -> bool {
                true
            }

            /// Reads a record with its version.
            $($async_kw)? fn load(&self, key: &TokenKey) -> Result<Option<Versioned<OAuthTokens>>, StorageError>;

            /// Writes a record if `expect` holds, returning its new version; a stale `expect`
            /// fails with [`StorageErrorKind::Conflict`](crate::StorageErrorKind::Conflict).
            $($async_kw)? fn store(&self, key: &TokenKey, tokens: &OAuthTokens, expect: Expect) -> Result<u64, StorageError>;

            /// Removes an org's record if `expect` holds (a stale `expect` fails with
            /// [`StorageErrorKind::Conflict`](crate::StorageErrorKind::Conflict)); an absent org
            /// is not an error unless `expect` asks for a version.
            $($async_kw)? fn delete_org(&self, org_id: &OrgId, expect: Expect) -> Result<(), StorageError>;

            /// Org ids with a record.
            $($async_kw)? fn list_orgs(&self) -> Result<Vec<OrgId>, StorageError>;

            /// Takes the lease on `key` for `ttl`, or `None` while another owner holds it.
            $($async_kw)? fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<Lease>, StorageError>;

            /// Releases a lease; a lease that expired and was taken by another owner is left
            /// alone.
            $($async_kw)? fn release_lease(&self, lease: &Lease) -> Result<(), StorageError>;

            /// Extends a lease to `ttl` from now if its owner still holds it; `false` when it
            /// expired or another owner holds it now. The refresh path calls this right before
            /// it spends a refresh token, so a holder that stalled past its lease never sends a
            /// token its successor already used.
            $($async_kw)? fn extend_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StorageError>;

            /// Keeps a pending authorization (see [`PendingAuthorization`]) under `key` (a
            /// [`pending_key`](crate::backend::pending_key)) until its expiry, so a process
            /// sharing this store can exchange its code. Returns whether it was kept; by default
            /// nothing is kept (the process that built the URL still holds it in memory).
            $($async_kw)? fn save_pending_authorization(
                &self,
                key: &str,
                pending: &PendingAuthorization,
            ) -> Result<bool, StorageError> {
                let _ = (key, pending);
                Ok(false)
            }

            /// Removes and returns the pending authorization under `key`: exactly one caller
            /// gets it. By default there is none.
            $($async_kw)? fn take_pending_authorization(&self, key: &str) -> Result<Option<PendingAuthorization>, StorageError> {
                let _ = key;
                Ok(None)
            }

            /// Reads many records at once (a daemon's resync reads every org), in the order of
            /// `keys`. By default one by one; a store that can batch them does.
            $($async_kw)? fn load_many(&self, keys: &[TokenKey]) -> Result<Vec<Option<Versioned<OAuthTokens>>>, StorageError> {
                let mut all = Vec::with_capacity(keys.len());
                for key in keys {
                    all.push(self.load(key)$(.$await)??);
                }
                Ok(all)
            }

            /// Reads a small state every replica shares (the token budget) with its version.
            /// By default it fails with
            /// [`StorageErrorKind::Unsupported`](crate::StorageErrorKind::Unsupported): the
            /// state then lives in each process.
            $($async_kw)? fn load_state(&self, name: &str) -> Result<Option<Versioned<Vec<u8>>>, StorageError> {
                let _ = name;
                Err(unsupported_state())
            }

            /// Writes a shared state if `expect` holds (as `store`), returning its new version.
            /// By default: [`StorageErrorKind::Unsupported`](crate::StorageErrorKind::Unsupported).
            $($async_kw)? fn store_state(&self, name: &str, bytes: &[u8], expect: Expect) -> Result<u64, StorageError> {
                let _ = (name, bytes, expect);
                Err(unsupported_state())
            }
        }
    };
}

primitives!(
    /// The primitives of a token store, what the refresh path reads and writes: versioned
    /// records, leases, pending authorizations and shared states. Implement these once; the
    /// Python SDK's six methods ([`TokenStorage`]) are provided on top of them. byova's
    /// managers take an `Arc<dyn CoordinatedTokenStorage>`.
    ///
    /// The refresh path needs a **lease** per key, so one process calls the token endpoint
    /// (efficiency), and a **version** on every record, so a write based on a stale read is
    /// rejected (correctness). The contract, which `byova_testkit::conformance` checks:
    /// versions only grow, also across a delete and a re-create; `store` applies only when
    /// [`Expect::admits`] the stored version and fails with a conflict otherwise; a lease is
    /// held by one owner at a time until released or until its time-to-live passes, and only
    /// its owner can release or extend it.
    #[async_trait]
    CoordinatedTokenStorage,
    async,
    await
);
primitives!(
    /// The blocking twin of [`CoordinatedTokenStorage`], with the same methods and contract;
    /// [`BlockingTokenStorage`] is provided on top of it.
    BlockingCoordinatedTokenStorage
);

/// Writes the Python SDK's six methods over the primitives, once for each flavour.
macro_rules! provide_seed_methods {
    ($(#[$attr:meta])* $seed:ident over $primitives:ident $(, $async_kw:ident, $await:tt)?) => {
        $(#[$attr])*
        impl<S: $primitives + ?Sized> $seed for S {
            $($async_kw)? fn get_integration_tokens(&self) -> Result<Option<OAuthTokens>, StorageError> {
                Ok($primitives::load(self, &TokenKey::Integration)$(.$await)??.map(|v| v.value))
            }
            $($async_kw)? fn set_integration_tokens(&self, tokens: &OAuthTokens) -> Result<(), StorageError> {
                $primitives::store(self, &TokenKey::Integration, tokens, Expect::Any)$(.$await)?.map(drop)
            }
            $($async_kw)? fn get_service_app_tokens(&self, org_id: &OrgId) -> Result<Option<ServiceAppTokens>, StorageError> {
                Ok($primitives::load(self, &TokenKey::org(org_id))$(.$await)??.map(|v| v.value))
            }
            $($async_kw)? fn set_service_app_tokens(&self, org_id: &OrgId, tokens: &ServiceAppTokens) -> Result<(), StorageError> {
                $primitives::store(self, &TokenKey::org(org_id), tokens, Expect::Any)$(.$await)?.map(drop)
            }
            $($async_kw)? fn delete_service_app_tokens(&self, org_id: &OrgId) -> Result<(), StorageError> {
                $primitives::delete_org(self, org_id, Expect::Any)$(.$await)?
            }
            $($async_kw)? fn list_registered_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
                $primitives::list_orgs(self)$(.$await)?
            }
        }
    };
}

provide_seed_methods!(#[async_trait] TokenStorage over CoordinatedTokenStorage, async, await);
provide_seed_methods!(BlockingTokenStorage over BlockingCoordinatedTokenStorage);

/// A store that has only the Python SDK's six methods ([`TokenStorage`] or
/// [`BlockingTokenStorage`]), made a byova store for one process: its primitives are provided
/// on top of the six. Records carry no version ([`UNVERSIONED`]) and every write applies,
/// whatever it expects; a lease is always granted; nothing pending or shared is kept. Within
/// one process, single-flight still makes one refresh per key at a time; processes sharing
/// such a store each refresh on their own, so give several replicas a coordinating store.
///
/// [`supports_coordination`](CoordinatedTokenStorage::supports_coordination) answers `false`.
#[derive(Clone, Debug, Default)]
pub struct SingleProcess<S>(S);

impl<S> SingleProcess<S> {
    /// `store`, used by one process.
    pub fn new(store: S) -> Self {
        SingleProcess(store)
    }

    /// The store inside.
    pub fn get_ref(&self) -> &S {
        &self.0
    }

    /// The store inside, unwrapped.
    pub fn into_inner(self) -> S {
        self.0
    }
}

/// The primitives of [`SingleProcess`] over one flavour's six methods.
macro_rules! single_process_impl {
    ($(#[$attr:meta])* $primitives:ident over $seed:ident $(, $async_kw:ident, $await:tt)?) => {
        $(#[$attr])*
        impl<S: $seed> $primitives for SingleProcess<S> {
            fn supports_coordination(&self) -> bool {
                false
            }
            $($async_kw)? fn load(&self, key: &TokenKey) -> Result<Option<Versioned<OAuthTokens>>, StorageError> {
                let value = match key {
                    TokenKey::Integration => self.0.get_integration_tokens()$(.$await)??,
                    TokenKey::Org(org) => self.0.get_service_app_tokens(org)$(.$await)??,
                };
                Ok(value.map(|value| Versioned { value, version: UNVERSIONED }))
            }
            $($async_kw)? fn store(&self, key: &TokenKey, tokens: &OAuthTokens, _expect: Expect) -> Result<u64, StorageError> {
                match key {
                    TokenKey::Integration => self.0.set_integration_tokens(tokens)$(.$await)??,
                    TokenKey::Org(org) => self.0.set_service_app_tokens(org, tokens)$(.$await)??,
                }
                Ok(UNVERSIONED)
            }
            $($async_kw)? fn delete_org(&self, org_id: &OrgId, _expect: Expect) -> Result<(), StorageError> {
                self.0.delete_service_app_tokens(org_id)$(.$await)?
            }
            $($async_kw)? fn list_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
                self.0.list_registered_orgs()$(.$await)?
            }
            $($async_kw)? fn try_acquire_lease(&self, key: &TokenKey, _ttl: Duration) -> Result<Option<Lease>, StorageError> {
                Ok(Some(Lease::new(key.clone())))
            }
            $($async_kw)? fn release_lease(&self, _lease: &Lease) -> Result<(), StorageError> {
                Ok(())
            }
            $($async_kw)? fn extend_lease(&self, _lease: &Lease, _ttl: Duration) -> Result<bool, StorageError> {
                Ok(true)
            }
        }
    };
}

single_process_impl!(#[async_trait] CoordinatedTokenStorage over TokenStorage, async, await);
single_process_impl!(BlockingCoordinatedTokenStorage over BlockingTokenStorage);

/// In-process token storage for development and tests; tokens are lost when the process exits.
///
/// Records are kept in their stored (serialized) form, exactly as durable backends keep them,
/// so it exercises the same codec. Versions and leases are real (within this process).
///
/// ```
/// use byova_core::{InMemoryTokenStorage, BlockingTokenStorage, OAuthTokens, OrgId, AccessToken, Timestamp};
/// let store = InMemoryTokenStorage::new();
/// let tokens = OAuthTokens::new(AccessToken::new("a"), 3600, Timestamp::from_unix_secs(0));
/// BlockingTokenStorage::set_service_app_tokens(&store, &OrgId::from_static("org-1"), &tokens)?;
/// assert_eq!(BlockingTokenStorage::list_registered_orgs(&store)?, ["org-1"]);
/// # Ok::<(), byova_core::StorageError>(())
/// ```
pub struct InMemoryTokenStorage {
    state: Mutex<MemoryState>,
    clock: Arc<dyn Clock>,
}

#[derive(Default)]
struct MemoryState {
    records: HashMap<TokenKey, (Vec<u8>, u64)>,
    leases: HashMap<TokenKey, (u128, Timestamp)>,
    /// Pending authorizations in their stored form, by key, with their expiry.
    pending: HashMap<String, (Vec<u8>, Timestamp)>,
    /// Shared states (the token budget), by name, with their versions.
    states: HashMap<String, (Vec<u8>, u64)>,
    /// One counter for all keys, so a record deleted and created again never reuses a version.
    last_version: u64,
}

impl fmt::Debug for InMemoryTokenStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let records = self.lock().records.len();
        f.debug_struct("InMemoryTokenStorage").field("records", &records).finish_non_exhaustive()
    }
}

impl Default for InMemoryTokenStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryTokenStorage {
    /// Empty storage on the system clock (the clock only times leases).
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// Empty storage timing leases with `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self { state: Mutex::new(MemoryState::default()), clock }
    }

    /// Stores raw bytes as the record for `key`, bypassing the codec: a test hook for the
    /// conformance suite's corrupt-record case.
    pub fn put_raw_record(&self, key: &TokenKey, bytes: Vec<u8>) {
        let mut state = self.lock();
        state.last_version += 1;
        let v = state.last_version;
        state.records.insert(key.clone(), (bytes, v));
    }

    /// The names of the shared states kept (a test hook: records kept aside are among them).
    pub fn state_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().states.keys().cloned().collect();
        names.sort();
        names
    }

    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        // No code path panics while holding the lock, but a poisoned map is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn load_sync(&self, key: &TokenKey) -> Result<Option<Versioned<OAuthTokens>>, StorageError> {
        let state = self.lock();
        match state.records.get(key) {
            None => Ok(None),
            Some((bytes, version)) => {
                let value = decode_record(bytes, key, "memory")?;
                Ok(Some(Versioned { value, version: *version }))
            }
        }
    }

    fn store_sync(&self, key: &TokenKey, tokens: &OAuthTokens, expect: Expect) -> Result<u64, StorageError> {
        let bytes = tokens.to_json();
        let mut state = self.lock();
        let current = state.records.get(key).map(|(_, v)| *v);
        if !expect.admits(current) {
            return Err(StorageError::conflict(key));
        }
        // A record that does not parse is kept aside (as the file store keeps its file) when
        // it is written over.
        if let Some((old, _)) = state.records.get(key)
            && OAuthTokens::from_json(old).is_err()
        {
            let old = old.clone();
            state.last_version += 1;
            let v = state.last_version;
            state.states.insert(format!("unreadable-memory-{v}"), (old, v));
        }
        state.last_version += 1;
        let version = state.last_version;
        state.records.insert(key.clone(), (bytes, version));
        Ok(version)
    }

    fn delete_sync(&self, org_id: &OrgId, expect: Expect) -> Result<(), StorageError> {
        let key = TokenKey::org(org_id);
        let mut state = self.lock();
        if !expect.admits(state.records.get(&key).map(|(_, v)| *v)) {
            return Err(StorageError::conflict(&key));
        }
        state.records.remove(&key);
        Ok(())
    }

    fn list_sync(&self) -> Vec<OrgId> {
        let state = self.lock();
        let mut orgs: Vec<OrgId> = state
            .records
            .keys()
            .filter_map(|k| match k {
                TokenKey::Org(org) => Some(org.clone()),
                TokenKey::Integration => None,
            })
            .collect();
        orgs.sort();
        orgs
    }

    fn acquire_sync(&self, key: &TokenKey, ttl: Duration) -> Option<Lease> {
        let now = self.clock.now();
        let mut state = self.lock();
        if state.leases.get(key).is_some_and(|(_, until)| *until > now) {
            return None;
        }
        let lease = Lease::new(key.clone());
        state.leases.insert(key.clone(), (lease.owner, now.saturating_add(ttl)));
        Some(lease)
    }

    fn extend_sync(&self, lease: &Lease, ttl: Duration) -> bool {
        let now = self.clock.now();
        let mut state = self.lock();
        match state.leases.get_mut(&lease.key) {
            Some((owner, until)) if *owner == lease.owner && *until > now => {
                *until = now.saturating_add(ttl);
                true
            }
            _ => false,
        }
    }

    fn save_pending_sync(&self, key: &str, pending: &PendingAuthorization) -> bool {
        let now = self.clock.now();
        let mut state = self.lock();
        state.pending.retain(|_, (_, expires_at)| *expires_at > now);
        state.pending.insert(key.to_owned(), (pending.to_json(), pending.expires_at));
        true
    }

    fn take_pending_sync(&self, key: &str) -> Result<Option<PendingAuthorization>, StorageError> {
        let taken = self.lock().pending.remove(key);
        taken
            .map(|(bytes, _)| {
                PendingAuthorization::from_json(&bytes).map_err(|why| {
                    StorageError::corrupt(format!("a pending authorization in memory is unreadable: {why}"))
                })
            })
            .transpose()
    }

    fn load_state_sync(&self, name: &str) -> Option<Versioned<Vec<u8>>> {
        self.lock()
            .states
            .get(name)
            .map(|(bytes, version)| Versioned { value: bytes.clone(), version: *version })
    }

    fn store_state_sync(&self, name: &str, bytes: &[u8], expect: Expect) -> Result<u64, StorageError> {
        let mut state = self.lock();
        if !expect.admits(state.states.get(name).map(|(_, v)| *v)) {
            return Err(state_conflict(name));
        }
        state.last_version += 1;
        let version = state.last_version;
        state.states.insert(name.to_owned(), (bytes.to_vec(), version));
        Ok(version)
    }

    fn release_sync(&self, lease: &Lease) {
        let mut state = self.lock();
        if state.leases.get(&lease.key).is_some_and(|(owner, _)| *owner == lease.owner) {
            state.leases.remove(&lease.key);
        }
    }
}

/// Implements one of the coordinated traits over the inherent `*_sync` methods above, so the
/// async and blocking implementations cannot drift apart.
macro_rules! memory_storage_impl {
    ($(#[$attr:meta])* $trait:ident $(, $async_kw:ident)?) => {
        $(#[$attr])*
        impl $trait for InMemoryTokenStorage {
            $($async_kw)? fn load(&self, key: &TokenKey) -> Result<Option<Versioned<OAuthTokens>>, StorageError> {
                self.load_sync(key)
            }
            $($async_kw)? fn store(&self, key: &TokenKey, tokens: &OAuthTokens, expect: Expect) -> Result<u64, StorageError> {
                self.store_sync(key, tokens, expect)
            }
            $($async_kw)? fn delete_org(&self, org_id: &OrgId, expect: Expect) -> Result<(), StorageError> {
                self.delete_sync(org_id, expect)
            }
            $($async_kw)? fn list_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
                Ok(self.list_sync())
            }
            $($async_kw)? fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<Lease>, StorageError> {
                Ok(self.acquire_sync(key, ttl))
            }
            $($async_kw)? fn release_lease(&self, lease: &Lease) -> Result<(), StorageError> {
                self.release_sync(lease);
                Ok(())
            }
            $($async_kw)? fn extend_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StorageError> {
                Ok(self.extend_sync(lease, ttl))
            }
            $($async_kw)? fn save_pending_authorization(&self, key: &str, pending: &PendingAuthorization) -> Result<bool, StorageError> {
                Ok(self.save_pending_sync(key, pending))
            }
            $($async_kw)? fn take_pending_authorization(&self, key: &str) -> Result<Option<PendingAuthorization>, StorageError> {
                self.take_pending_sync(key)
            }
            $($async_kw)? fn load_state(&self, name: &str) -> Result<Option<Versioned<Vec<u8>>>, StorageError> {
                Ok(self.load_state_sync(name))
            }
            $($async_kw)? fn store_state(&self, name: &str, bytes: &[u8], expect: Expect) -> Result<u64, StorageError> {
                self.store_state_sync(name, bytes, expect)
            }
        }
    };
}

memory_storage_impl!(
    #[async_trait]
    CoordinatedTokenStorage,
    async
);
memory_storage_impl!(BlockingCoordinatedTokenStorage);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StorageErrorKind;
    use crate::secret::{AccessToken, RefreshToken};

    #[test]
    fn redacted_urls_show_no_password() {
        for (url, shown) in [
            ("redis://:pw1@127.0.0.1:6379/0?prefix=a", "redis://***@127.0.0.1:6379/0"),
            ("postgres://u:p?w@db/x", "postgres://***"),
            ("sqlite:///var/x.db?mode=rwc", "sqlite:///var/x.db"),
            ("memory:", "memory:"),
            ("file:relative/dir", "file:relative/dir"),
            // Found by the storage_url fuzz target: `://` inside the query passed for the
            // end of the scheme, and an `@` inside the query exposed what followed it.
            ("mysql:/+st?password=hunter2:/redis://:4", "mysql:/+st"),
            ("redis:/x?password=hunter2@host", "redis:***"),
            ("mysql://db/test?password=hunter2&email=ops@example.com", "mysql://***"),
            ("redis://host\n2026 INFO forged/0", "redis://host?2026 INFO forged/0"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    fn tokens(access: &str) -> OAuthTokens {
        OAuthTokens::new(AccessToken::new(access), 60, Timestamp::from_unix_secs(1))
            .with_refresh_token(RefreshToken::new("R"), None)
    }

    /// A backend that implements only the Python SDK's six methods.
    #[derive(Default)]
    struct SixMethods(Mutex<HashMap<String, OAuthTokens>>);

    impl BlockingTokenStorage for SixMethods {
        fn get_integration_tokens(&self) -> Result<Option<OAuthTokens>, StorageError> {
            Ok(self.0.lock().unwrap().get("").cloned())
        }
        fn set_integration_tokens(&self, t: &OAuthTokens) -> Result<(), StorageError> {
            self.0.lock().unwrap().insert(String::new(), t.clone());
            Ok(())
        }
        fn get_service_app_tokens(&self, org: &OrgId) -> Result<Option<OAuthTokens>, StorageError> {
            Ok(self.0.lock().unwrap().get(org.as_str()).cloned())
        }
        fn set_service_app_tokens(&self, org: &OrgId, t: &OAuthTokens) -> Result<(), StorageError> {
            self.0.lock().unwrap().insert(org.to_string(), t.clone());
            Ok(())
        }
        fn delete_service_app_tokens(&self, org: &OrgId) -> Result<(), StorageError> {
            self.0.lock().unwrap().remove(org.as_str());
            Ok(())
        }
        fn list_registered_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
            Ok(self.0.lock().unwrap().keys().filter_map(|k| OrgId::new(k).ok()).collect())
        }
    }

    #[test]
    fn six_method_backends_get_single_process_primitives() {
        let s = SingleProcess::new(SixMethods::default());
        assert!(!s.supports_coordination());
        assert!(s.load(&TokenKey::Integration).unwrap().is_none());
        assert_eq!(s.store(&TokenKey::Integration, &tokens("a"), Expect::Version(7)).unwrap(), UNVERSIONED);
        let loaded = s.load(&TokenKey::Integration).unwrap().unwrap();
        assert_eq!(loaded.version, UNVERSIONED);
        assert!(loaded.value.access_token.ct_eq_str("a"));
        let lease = s.try_acquire_lease(&TokenKey::Integration, Duration::from_secs(1)).unwrap().unwrap();
        assert!(s.try_acquire_lease(&TokenKey::Integration, Duration::from_secs(1)).unwrap().is_some());
        s.release_lease(&lease).unwrap();
        s.store(&TokenKey::org(&OrgId::from_static("o")), &tokens("b"), Expect::Any).unwrap();
        assert_eq!(s.list_registered_orgs().unwrap(), ["o"]);
    }

    #[test]
    fn stored_org_ids_lists_only_names_stored_as_byova_writes_them() {
        let encoded =
            crate::ids::encode_webex_id("us", "ORGANIZATION", "63b02f90-9cc6-43b8-aa6d-cad425ac554c");
        let names = ["b", " a", "", "a", &encoded, "63b02f90-9cc6-43b8-aa6d-cad425ac554c"].map(str::to_owned);
        let listed = stored_org_ids(names, "test");
        assert_eq!(listed, ["63b02f90-9cc6-43b8-aa6d-cad425ac554c", "a", "b"]);
    }

    #[test]
    fn memory_versions_never_repeat_after_delete() {
        let s = InMemoryTokenStorage::new();
        let key = TokenKey::org(&OrgId::from_static("o"));
        let v1 = BlockingCoordinatedTokenStorage::store(&s, &key, &tokens("a"), Expect::Absent).unwrap();
        BlockingTokenStorage::delete_service_app_tokens(&s, &OrgId::from_static("o")).unwrap();
        let v2 = BlockingCoordinatedTokenStorage::store(&s, &key, &tokens("b"), Expect::Absent).unwrap();
        assert!(v2 > v1);
        let err =
            BlockingCoordinatedTokenStorage::store(&s, &key, &tokens("c"), Expect::Version(v1)).unwrap_err();
        assert_eq!(err.kind(), StorageErrorKind::Conflict);
        assert!(err.is_retryable());
    }

    #[test]
    fn storage_errors_name_the_key_not_the_content() {
        let s = InMemoryTokenStorage::new();
        s.put_raw_record(
            &TokenKey::org(&OrgId::from_static("o-9")),
            b"{\"access_token\":\"SECRET-CANARY\"".to_vec(),
        );
        let err = BlockingTokenStorage::get_service_app_tokens(&s, &OrgId::from_static("o-9")).unwrap_err();
        assert_eq!(err.kind(), StorageErrorKind::Corrupt);
        let msg = err.to_string();
        assert!(msg.contains("org o-9") && !msg.contains("SECRET-CANARY"), "{msg}");
    }
}
