//! A local write-ahead journal in front of a shared store: tokens Webex issued are made
//! durable on this host before the shared store is asked to take them, so a process killed
//! after Webex's answer (or a store that was down, or killed, when they arrived) loses nothing.
//! The next start replays what the store never confirmed, version-checked
//! ([`byova_core::backend::journal_replay`] decides: a kept record replaces an older one, creates one
//! only where one was meant to be created, recently, and is dropped otherwise).
//!
//! One file per write, `entry-<key digest>-<obtained ms>.json` (`0600`, in a `0700`
//! directory), written as the file store writes records (temporary file, fsync, rename,
//! directory fsync) and removed once the store confirmed the write, or refused it for a newer
//! record. Wrapped inside [`SealedStorage`](byova_core::SealedStorage) (as `Byova`'s builder
//! does with a storage key), entries hold tokens sealed like the store's.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use byova_core::{
    Clock, OAuthTokens, OrgId, StorageError, StorageErrorKind, SystemClock, TokenKey,
    backend::{
        BlockingCoordinatedTokenStorage, CoordinatedTokenStorage, Expect, Lease, PendingAuthorization,
        Versioned, journal_replay,
    },
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{ensure_private_dir, sync_dir, write_durably};

const ENTRY_FORMAT: u32 = 1;

/// A kept first registration is written on replay only this soon after it was obtained: an
/// older one may have been stored and removed since (a deauthorization).
const CREATE_WITHIN: Duration = Duration::from_secs(3600);

/// A store with a local write-ahead journal: tokens Webex issued are made durable on this host
/// before the shared store is asked to take them, so a process killed after Webex's answer
/// (or a store down, or killed, when they arrived) loses nothing; the next start replays what
/// the store never confirmed, version-checked ([`byova_core::backend::journal_replay`] decides).
///
/// One file per write (`0600`, in a `0700` directory), written as the file store writes
/// records and removed once the store confirmed it (or refused it for a newer record).
/// Wrapped inside [`SealedStorage`](byova_core::SealedStorage) (as `Byova`'s builder does with
/// a storage key), entries hold tokens sealed like the store's.
pub struct Journaled<S: ?Sized> {
    inner: Arc<S>,
    dir: PathBuf,
}

impl<S: ?Sized> std::fmt::Debug for Journaled<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journaled").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// What a replay did with the journal's entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replay {
    /// Entries written to the store (it had lost them, or never got them).
    pub stored: usize,
    /// Entries the store already holds, or holds something newer than.
    pub dropped: usize,
    /// Entries kept for a later replay (the store could not be read or written).
    pub kept: usize,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Condition {
    Absent,
    Version(u64),
    Any,
}

impl From<Expect> for Condition {
    fn from(e: Expect) -> Self {
        match e {
            Expect::Absent => Self::Absent,
            Expect::Version(v) => Self::Version(v),
            Expect::Any => Self::Any,
        }
    }
}

impl From<Condition> for Expect {
    fn from(c: Condition) -> Self {
        match c {
            Condition::Absent => Expect::Absent,
            Condition::Version(v) => Expect::Version(v),
            Condition::Any => Expect::Any,
        }
    }
}

#[derive(Serialize)]
struct EntryOut<'a> {
    format: u32,
    key: String,
    expect: Condition,
    tokens: &'a OAuthTokens,
}

#[derive(Deserialize)]
struct EntryIn {
    format: u32,
    key: String,
    expect: Condition,
    tokens: OAuthTokens,
}

/// An entry read back: its file, key, condition and tokens.
struct Entry {
    path: PathBuf,
    key: TokenKey,
    expect: Expect,
    tokens: OAuthTokens,
}

impl<S: ?Sized> Journaled<S> {
    fn with_dir(inner: Arc<S>, dir: PathBuf) -> Result<Self, StorageError> {
        ensure_private_dir(&dir)?;
        Ok(Self { inner, dir })
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The store behind the journal.
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    /// Entries not yet confirmed by the store.
    pub fn pending(&self) -> usize {
        self.entry_paths().len()
    }

    fn entry_paths(&self) -> Vec<PathBuf> {
        let Ok(read) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut paths: Vec<PathBuf> = read
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("entry-") && n.ends_with(".json"))
            })
            .collect();
        paths.sort();
        paths
    }

    /// Writes `tokens` (about to be stored under `key` with `expect`) durably; the entry's path.
    fn write_entry(
        dir: &Path,
        key: &TokenKey,
        tokens: &OAuthTokens,
        expect: Expect,
    ) -> Result<PathBuf, StorageError> {
        let digest = Sha256::digest(key.label().as_bytes());
        let name = format!(
            "entry-{}-{}.json",
            digest[..8].iter().map(|b| format!("{b:02x}")).collect::<String>(),
            tokens.obtained_at.as_unix_millis()
        );
        let path = dir.join(name);
        let entry = EntryOut { format: ENTRY_FORMAT, key: key.label(), expect: expect.into(), tokens };
        let bytes =
            serde_json::to_vec(&entry).map_err(|e| StorageError::other(format!("journal entry: {e}")))?;
        write_durably(dir, &path, &bytes)?;
        sync_dir(dir)?;
        Ok(path)
    }

    /// Reads every entry; unreadable ones are moved aside (`.unreadable`) for a person.
    fn read_entries(paths: Vec<PathBuf>) -> Vec<Entry> {
        let mut entries = Vec::new();
        for path in paths {
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<EntryIn>(&bytes).map_err(|e| format!("{:?}", e.classify()))
                })
                .and_then(|e| {
                    let key = TokenKey::from_label(&e.key).ok_or("an unknown key")?;
                    if e.format != ENTRY_FORMAT {
                        return Err(format!("format {}", e.format));
                    }
                    Ok(Entry { path: path.clone(), key, expect: e.expect.into(), tokens: e.tokens })
                });
            match parsed {
                Ok(entry) => entries.push(entry),
                Err(why) => {
                    let aside = path.with_extension("json.unreadable");
                    tracing::warn!(entry = %path.display(), aside = %aside.display(), %why, "a journal entry cannot be read; moved aside");
                    let _ = fs::rename(&path, aside);
                }
            }
        }
        entries
    }
}

fn remove(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(entry = %path.display(), error = %e, "cannot remove a journal entry; a later replay drops it");
    }
}

/// What the store's answer to a journaled write means for its entry.
fn settle_entry(entry: Option<&Path>, key: &TokenKey, result: &Result<u64, StorageError>) {
    let Some(path) = entry else { return };
    match result {
        Ok(_) => remove(path),
        // The engine re-reads and may store these same tokens again (the entry then goes with
        // that write), or drop them for a newer record (a later replay drops the entry).
        Err(e) if e.kind() == StorageErrorKind::Conflict => {}
        Err(e) => {
            tracing::warn!(key = %key, error = %e, entry = %path.display(), "the store did not take new tokens; kept in the local journal for replay");
        }
    }
}

fn journal_failed(key: &TokenKey, e: &StorageError) {
    tracing::warn!(key = %key, error = %e, "cannot write the local journal; storing without it");
}

/// Implements a storage trait for `Journaled<dyn Trait>`, and its `replay`, once for each
/// flavour: `$fs` runs file work (inline, or on tokio's blocking pool).
macro_rules! journaled_impl {
    ($(#[$attr:meta])* $trait:ident, $fs:ident $(, $async_kw:ident, $await:tt)?) => {
        impl Journaled<dyn $trait> {
            /// Replays every entry the store never confirmed: replaces an older record, creates
            /// one only where one was meant to be created (within an hour), drops the rest.
            ///
            /// # Errors
            /// None today: entries the store cannot take are counted as kept.
            pub $($async_kw)? fn replay(&self) -> Result<Replay, StorageError> {
                let paths = self.entry_paths();
                let entries = $fs(move || Self::read_entries(paths))$(.$await)?;
                let mut report = Replay::default();
                'entries: for entry in entries {
                    for _ in 0..3 {
                        let stored = match self.inner.load(&entry.key)$(.$await)? {
                            Ok(stored) => stored,
                            Err(e) => {
                                tracing::warn!(key = %entry.key, error = %e, "cannot read the store to replay the journal; kept");
                                report.kept += 1;
                                continue 'entries;
                            }
                        };
                        let now = SystemClock.now();
                        let Some(expect) = journal_replay(&entry.tokens, entry.expect, stored.as_ref(), now, CREATE_WITHIN) else {
                            remove(&entry.path);
                            report.dropped += 1;
                            continue 'entries;
                        };
                        match self.inner.store(&entry.key, &entry.tokens, expect)$(.$await)? {
                            Ok(_) => {
                                tracing::info!(key = %entry.key, "tokens the store never confirmed were stored from the local journal");
                                remove(&entry.path);
                                report.stored += 1;
                                continue 'entries;
                            }
                            Err(e) if e.kind() == StorageErrorKind::Conflict => continue,
                            Err(e) => {
                                tracing::warn!(key = %entry.key, error = %e, "cannot replay a journal entry; kept");
                                report.kept += 1;
                                continue 'entries;
                            }
                        }
                    }
                    report.kept += 1;
                }
                Ok(report)
            }
        }

        $(#[$attr])*
        impl $trait for Journaled<dyn $trait> {
            fn supports_coordination(&self) -> bool {
                self.inner.supports_coordination()
            }
            $($async_kw)? fn load(&self, key: &TokenKey) -> Result<Option<Versioned<OAuthTokens>>, StorageError> {
                self.inner.load(key)$(.$await)?
            }
            $($async_kw)? fn store(&self, key: &TokenKey, tokens: &OAuthTokens, expect: Expect) -> Result<u64, StorageError> {
                let (dir, k, t) = (self.dir.clone(), key.clone(), tokens.clone());
                let entry = match $fs(move || Self::write_entry(&dir, &k, &t, expect))$(.$await)? {
                    Ok(path) => Some(path),
                    Err(e) => {
                        journal_failed(key, &e);
                        None
                    }
                };
                let result = self.inner.store(key, tokens, expect)$(.$await)?;
                settle_entry(entry.as_deref(), key, &result);
                result
            }
            $($async_kw)? fn delete_org(&self, org_id: &OrgId, expect: Expect) -> Result<(), StorageError> {
                self.inner.delete_org(org_id, expect)$(.$await)?
            }
            $($async_kw)? fn list_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
                self.inner.list_orgs()$(.$await)?
            }
            $($async_kw)? fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<Lease>, StorageError> {
                self.inner.try_acquire_lease(key, ttl)$(.$await)?
            }
            $($async_kw)? fn release_lease(&self, lease: &Lease) -> Result<(), StorageError> {
                self.inner.release_lease(lease)$(.$await)?
            }
            $($async_kw)? fn extend_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StorageError> {
                self.inner.extend_lease(lease, ttl)$(.$await)?
            }
            $($async_kw)? fn save_pending_authorization(&self, key: &str, pending: &PendingAuthorization) -> Result<bool, StorageError> {
                self.inner.save_pending_authorization(key, pending)$(.$await)?
            }
            $($async_kw)? fn take_pending_authorization(&self, key: &str) -> Result<Option<PendingAuthorization>, StorageError> {
                self.inner.take_pending_authorization(key)$(.$await)?
            }
            $($async_kw)? fn load_many(&self, keys: &[TokenKey]) -> Result<Vec<Option<Versioned<OAuthTokens>>>, StorageError> {
                self.inner.load_many(keys)$(.$await)?
            }
            $($async_kw)? fn load_state(&self, name: &str) -> Result<Option<Versioned<Vec<u8>>>, StorageError> {
                self.inner.load_state(name)$(.$await)?
            }
            $($async_kw)? fn store_state(&self, name: &str, bytes: &[u8], expect: Expect) -> Result<u64, StorageError> {
                self.inner.store_state(name, bytes, expect)$(.$await)?
            }
        }
    };
}

/// File work, inline.
fn inline<T>(work: impl FnOnce() -> T) -> T {
    work()
}

journaled_impl!(BlockingCoordinatedTokenStorage, inline);

impl Journaled<dyn BlockingCoordinatedTokenStorage> {
    /// `inner` with a journal in `dir` (created `0700`); entries left by an earlier process are
    /// replayed first.
    ///
    /// # Errors
    /// When the directory cannot be created or is not private.
    pub fn open_blocking(
        inner: Arc<dyn BlockingCoordinatedTokenStorage>,
        dir: impl AsRef<Path>,
    ) -> Result<Arc<Self>, StorageError> {
        let journaled = Arc::new(Self::with_dir(inner, dir.as_ref().to_path_buf())?);
        let report = journaled.replay()?;
        log_replay(&journaled.dir, report);
        Ok(journaled)
    }
}

#[cfg(feature = "async")]
mod async_impl {
    use super::*;
    use byova_core::async_trait;

    /// File work on tokio's blocking pool.
    async fn offload<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
        match tokio::task::spawn_blocking(work).await {
            Ok(value) => value,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    journaled_impl!(
        #[async_trait]
        CoordinatedTokenStorage,
        offload,
        async,
        await
    );

    impl Journaled<dyn CoordinatedTokenStorage> {
        /// `inner` with a journal in `dir` (created `0700`); entries left by an earlier
        /// process are replayed first.
        ///
        /// # Errors
        /// When the directory cannot be created or is not private.
        pub async fn open(
            inner: Arc<dyn CoordinatedTokenStorage>,
            dir: impl AsRef<Path>,
        ) -> Result<Arc<Self>, StorageError> {
            let dir = dir.as_ref().to_path_buf();
            let journaled = Arc::new(offload(move || Self::with_dir(inner, dir)).await?);
            let report = journaled.replay().await?;
            log_replay(&journaled.dir, report);
            Ok(journaled)
        }
    }
}

fn log_replay(dir: &Path, report: Replay) {
    if report != Replay::default() {
        tracing::info!(
            journal = %dir.display(),
            stored = report.stored,
            dropped = report.dropped,
            kept = report.kept,
            "local journal replayed"
        );
    }
}
