//! # byova-storage-file
//!
//! A crash-safe token store in one directory, for providers that run on one host. Several
//! processes can share it: they coordinate refreshes through it exactly as replicas do through
//! Redis or SQL.
//!
//! - **One file per key**: `integration.json`, and `org-<hex of the org id>.json` per org (ids
//!   longer than 100 bytes use `org-h-<sha256>.json`). Any org id is safe: the name never
//!   contains a path separator, and lowercase hex is safe on case-insensitive file systems.
//! - **Crash-safe writes**: a uniquely named temporary file in the same directory, created
//!   `0600`, written, `fsync`ed, renamed over the target, then the directory `fsync`ed. A crash
//!   at any point leaves the old record or the new one, never a torn one. A symlinked
//!   directory or record is refused.
//! - **Corruption is loud**: a record that does not parse is a
//!   [`StorageErrorKind::Corrupt`](byova_core::StorageErrorKind::Corrupt) error naming the
//!   file, never "no tokens". A write over it first moves it aside to `<name>.corrupt-<time>`.
//! - **Coordination across processes**: an OS lock on the store's one lock file `.byova.lock`
//!   (held for a version check and one write with its fsync; waiting for it gives up after
//!   10 s with a retryable `Unavailable`) guards the version check of every versioned write and the lease record
//!   `<name>.lease` (owner and expiry), so a crashed or stopped lease holder blocks others for
//!   at most the lease's time-to-live. A lease file goes when it is released or its record is
//!   deleted; no file outlives its key. Every process sharing a directory must run this
//!   version or later: earlier ones locked a file per key; opening the store removes those,
//!   and refuses while a process of an earlier version holds one.
//! - **A private directory**: created `0700`; an existing one that belongs to another user is
//!   refused, and one open to other users is made `0700`.
//! - **Versions only grow**, also across deletion: a new version is the larger of the old one
//!   plus one and the current time in microseconds.
//! - **Pending authorizations** (an authorization URL's PKCE verifier, for
//!   `exchange_code_for_state` in another process) are `pending-<sha256 of the state>.json`,
//!   written the same crash-safe way; taking one renames it to a name of the taker's own
//!   first, so exactly one taker gets it. Unused ones are removed once they expired.
//!
//! - **A journal for shared stores**: [`Journaled`] puts a local write-ahead journal in front
//!   of a Redis or SQL store, so tokens Webex issued survive the process or the store dying
//!   before the store confirmed them (replayed, version-checked, at the next start).
//! - **Crashed writes leave nothing behind**: opening the store removes temporary files of
//!   processes that are gone and pending claims abandoned for ten minutes.
//!
//! ```
//! use byova_core::{BlockingTokenStorage, OAuthTokens, OrgId, AccessToken, Timestamp};
//! let dir = std::env::temp_dir().join(format!("byova-doc-{}", std::process::id()));
//! let store = byova_storage_file::FileTokenStorage::open(&dir)?;
//! let tokens = OAuthTokens::new(AccessToken::new("a"), 3600, Timestamp::from_unix_secs(0));
//! store.set_service_app_tokens(&OrgId::from_static("org-1"), &tokens)?;
//! assert_eq!(store.list_registered_orgs()?, ["org-1"]);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), byova_core::StorageError>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod journal;
mod store;

pub use journal::{Journaled, Replay};
pub use store::FileTokenStorage;
