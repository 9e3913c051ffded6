//! # byova-storage-redis
//!
//! A Redis token store for providers that run several gateway replicas: they share tokens and
//! coordinate refreshes through it, so an org is refreshed once, not once per replica.
//!
//! Select it with `BYOVA_STORAGE=redis://host:port/db?prefix=NAME` (default prefix `byova`;
//! several apps or test runs can share one Redis under different prefixes), or `rediss://…`
//! for TLS (rustls), verified against the system's roots or, with
//! [`RedisTokenStorage::open_with_ca`] (`BYOVA_STORAGE_CA_FILE` in the CLI), a private CA.
//!
//! ## Key layout
//!
//! On one server every key carries the hash tag `{<prefix>}`, so a record, its lease, the org
//! index and the version counter sit in one slot and every script touches one slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:integration` | hash | `v` (version), `r` (the token record, JSON) |
//! | `{p}:org:<org id>` | hash | `v`, `r` for one org |
//! | `{p}:orgs` | set | registered org ids (`list_registered_orgs` reads it; no `KEYS`, no `SCAN`) |
//! | `{p}:version` | string | the counter every write takes its version from (versions never repeat, even across delete and re-create) |
//! | `{p}:lease:integration`, `{p}:lease:org:<org id>` | string, with a TTL | the lease owner's random token |
//! | `{p}:pending:<sha256 of the state>` | string, with a TTL (its expiry) | a pending authorization (PKCE verifier, redirect URI); taken by a get-and-delete script, so once |
//!
//! ### On a Redis Cluster
//!
//! `redis+cluster://host:port,host:port/?prefix=NAME` (`rediss+cluster://…` for TLS) goes
//! through redis-rs's cluster client, and the keys get **one hash tag per token key** instead of
//! one for the store:
//!
//! | key | holds |
//! |---|---|
//! | `{p:integration}:record`, `{p:org:<org id>}:record` | the hash `v`, `r` |
//! | `{p:…}:version` | that key's version counter (kept when the record is deleted) |
//! | `{p:…}:lease` | its lease |
//! | `{p}:orgs` | the org index |
//! | `{p}:pending:<sha256 of the state>` | a pending authorization |
//!
//! The trade-off: what must be atomic (a versioned write: compare, count, write; a lease) touches
//! one token key's record, counter and lease, which share that key's slot, so every script
//! stays single-slot while a fleet of orgs spreads over all the shards. The org index cannot
//! share every org's slot, so it is written beside the record rather than in the same script:
//! an org is added before its record is stored and never removed (removing could race a
//! re-registration in another replica and lose the org), and listing keeps only orgs whose
//! record exists, checked in pipelines (blocking) or 500 concurrent `EXISTS` (async). So a
//! registered org is never missing from the list; the price is one index entry (tens of
//! bytes) per org ever deauthorized. On one server the single-tag layout above is kept
//! (existing stores keep working); the two layouts are not interchangeable.
//!
//! ## Guarantees
//!
//! - Versioned writes are one Lua script (compare `v`, take a new version, write, index): a
//!   stale version is rejected with `Conflict`.
//! - Leases are `SET NX PX` with a random owner token; release and extension are Lua
//!   compare-and-delete / compare-and-pexpire, so only the owner can end or extend its lease.
//! - Errors from an unreachable Redis are `Unavailable` (retryable); a record that does not
//!   parse is `Corrupt` and is left in place.
//! - Durability is Redis's: with `appendonly yes` and `appendfsync always` (or `everysec`,
//!   accepting up to a second of loss), a stored refresh token survives a Redis restart.
//!
//! The blocking implementation keeps a small pool of connections; the async one a multiplexed
//! connection that reconnects by itself (features `blocking` and `async`, both on by default).
//!
//! ```no_run
//! # fn main() -> Result<(), byova_core::StorageError> {
//! let store = byova_storage_redis::RedisTokenStorage::open("redis://127.0.0.1:6379/0?prefix=byova")?;
//! # let _ = store;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod store;

pub use store::RedisTokenStorage;
