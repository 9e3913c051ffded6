//! The file store. See the crate docs for the layout and the guarantees.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use byova_core::{
    Clock, OAuthTokens, OrgId, StorageError, StorageErrorKind, SystemClock, TokenKey,
    backend::{
        BlockingCoordinatedTokenStorage, Expect, Lease, PENDING_AUTHORIZATION_TTL, PendingAuthorization,
        Versioned, stored_org_ids,
    },
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The store's one lock file.
const STORE_LOCK: &str = ".byova.lock";
/// The longest wait for the store's lock.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Org ids up to this many bytes are hex-encoded into the file name; longer ones are hashed.
const MAX_HEX_ID_BYTES: usize = 100;
const RECORD_FORMAT: u32 = 1;

/// A token store in one directory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct FileTokenStorage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
}

#[derive(Serialize)]
struct RecordOut<'a> {
    format: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    org_id: Option<&'a str>,
    version: u64,
    tokens: &'a OAuthTokens,
}

#[derive(Deserialize)]
struct RecordIn {
    format: u32,
    #[serde(default)]
    org_id: Option<String>,
    version: u64,
    tokens: OAuthTokens,
}

#[derive(Serialize, Deserialize)]
struct StateRecord {
    format: u32,
    version: u64,
    state: String,
}

#[derive(Serialize, Deserialize)]
struct LeaseRecord {
    owner: String,
    expires_at_ms: u64,
}

fn io_error(what: &str, path: &Path, e: &io::Error) -> StorageError {
    let message = format!("{what} {}: {e}", path.display());
    match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => StorageError::other(message),
        _ => StorageError::unavailable(message),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

/// The file-name stem for a key.
fn stem(key: &TokenKey) -> Result<String, StorageError> {
    match key {
        TokenKey::Integration => Ok("integration".to_owned()),
        TokenKey::Org(org) if org.len() <= MAX_HEX_ID_BYTES => Ok(format!("org-{}", hex(org.as_bytes()))),
        TokenKey::Org(org) => Ok(format!("org-h-{}", hex(&Sha256::digest(org.as_bytes())))),
    }
}

/// The wall clock in microseconds: the floor of every new version, so a record deleted and
/// created again never reuses an old version (writes take far longer than a microsecond).
fn micros_now() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
}

fn random_suffix() -> String {
    format!("{:016x}", byova_core::engine::random_u64())
}

impl FileTokenStorage {
    /// Opens (creating, mode `0700`) the store in `dir`.
    ///
    /// # Errors
    /// When the directory cannot be created, is a symlink, or is not a directory.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        ensure_private_dir(&dir)?;
        remove_legacy_lock_files(&dir)?;
        remove_crash_leftovers(&dir);
        Ok(Self { inner: Arc::new(Inner { dir }) })
    }

    /// Opens the store a `file:///absolute/dir` (or `file:relative/dir`) URL names.
    ///
    /// # Errors
    /// For another scheme, or as [`open`](Self::open).
    pub fn from_url(url: &str) -> Result<Self, StorageError> {
        let path = url
            .strip_prefix("file://")
            .or_else(|| url.strip_prefix("file:"))
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                StorageError::other(format!(
                    "{:?} is not a file: storage URL (file:///path/to/dir)",
                    byova_core::backend::redact_url(url)
                ))
            })?;
        Self::open(path)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Where the record for `key` lives (for inspection and tests).
    ///
    /// # Errors
    /// For an empty org id.
    pub fn record_path(&self, key: &TokenKey) -> Result<PathBuf, StorageError> {
        Ok(self.inner.dir.join(format!("{}.json", stem(key)?)))
    }

    /// Runs `f` holding the OS lock on the store's one lock file (held for a version check and
    /// a write with its fsync; the directory's fsync happens after it is released). Waiting for
    /// it is bounded by [`LOCK_WAIT`]: a process stopped while holding it cannot hang the others.
    fn locked<T>(&self, _stem: &str, f: impl FnOnce() -> Result<T, StorageError>) -> Result<T, StorageError> {
        let path = self.inner.dir.join(STORE_LOCK);
        let file =
            open_private(&path, false).map_err(|e| io_error("cannot open the lock file", &path, &e))?;
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let mut pause = Duration::from_micros(200);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(StorageError::unavailable(format!(
                        "{} stayed locked for {LOCK_WAIT:?} (a process holding it is stopped or stuck)",
                        path.display()
                    )));
                }
                Err(fs::TryLockError::Error(e)) => return Err(io_error("cannot lock", &path, &e)),
            }
        }
        let result = f();
        drop(file);
        result
    }

    fn read(&self, key: &TokenKey, stem: &str) -> Result<Option<(OAuthTokens, u64)>, StorageError> {
        let path = self.inner.dir.join(format!("{stem}.json"));
        let bytes = match read_no_follow(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("cannot read the record", &path, &e)),
        };
        let record: RecordIn = serde_json::from_slice(&bytes).map_err(|e| {
            StorageError::corrupt(format!(
                "the record for {key} in {} does not parse ({:?} at line {} column {}); it was left as it is",
                path.display(),
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        if record.format != RECORD_FORMAT {
            return Err(StorageError::corrupt(format!(
                "the record for {key} in {} has format {}, which this byova does not read",
                path.display(),
                record.format
            )));
        }
        if let TokenKey::Org(org) = key
            && record.org_id.as_deref().is_some_and(|stored| stored != org.as_str())
        {
            return Err(StorageError::corrupt(format!("{} holds another org's record", path.display())));
        }
        Ok(Some((record.tokens, record.version)))
    }

    fn write(
        &self,
        key: &TokenKey,
        stem: &str,
        tokens: &OAuthTokens,
        version: u64,
    ) -> Result<(), StorageError> {
        let org_id = match key {
            TokenKey::Org(org) => Some(org.as_str()),
            TokenKey::Integration => None,
        };
        let bytes = serde_json::to_vec(&RecordOut { format: RECORD_FORMAT, org_id, version, tokens })
            .map_err(|e| StorageError::other(format!("cannot encode the record for {key}: {e}")))?;
        let target = self.inner.dir.join(format!("{stem}.json"));
        refuse_symlink(&target)?;
        write_durably(&self.inner.dir, &target, &bytes)
    }

    fn store_sync(&self, key: &TokenKey, tokens: &OAuthTokens, expect: Expect) -> Result<u64, StorageError> {
        let stem = stem(key)?;
        let version = self.locked(&stem, || {
            let current = match self.read(key, &stem) {
                Ok(current) => current.map(|(_, v)| v),
                Err(e) if e.kind() == StorageErrorKind::Corrupt && expect == Expect::Any => {
                    self.move_aside(&stem)?;
                    None
                }
                Err(e) => return Err(e),
            };
            if !expect.admits(current) {
                return Err(StorageError::conflict(key));
            }
            let version = current.map_or(0, |v| v + 1).max(micros_now());
            self.write(key, &stem, tokens, version)?;
            Ok(version)
        })?;
        // Durable before success is reported; the lock is not held for the directory's fsync.
        sync_dir(&self.inner.dir)?;
        Ok(version)
    }

    /// Keeps an unreadable record for a person to inspect before it is replaced.
    fn move_aside(&self, stem: &str) -> Result<(), StorageError> {
        let from = self.inner.dir.join(format!("{stem}.json"));
        let to = self.inner.dir.join(format!("{stem}.json.corrupt-{}", micros_now()));
        fs::rename(&from, &to).map_err(|e| io_error("cannot move the unreadable record aside", &from, &e))?;
        sync_dir(&self.inner.dir)
    }

    fn load_sync(&self, key: &TokenKey) -> Result<Option<Versioned<OAuthTokens>>, StorageError> {
        let stem = stem(key)?;
        Ok(self.read(key, &stem)?.map(|(value, version)| Versioned { value, version }))
    }

    fn delete_sync(&self, org_id: &OrgId, expect: Expect) -> Result<(), StorageError> {
        let key = TokenKey::org(org_id);
        let stem = stem(&key)?;
        self.locked(&stem, || {
            if expect != Expect::Any && !expect.admits(self.read(&key, &stem)?.map(|(_, v)| v)) {
                return Err(StorageError::conflict(&key));
            }
            // A lease left by a holder that stopped goes with the record.
            let _ = fs::remove_file(self.inner.dir.join(format!("{stem}.lease")));
            let path = self.inner.dir.join(format!("{stem}.json"));
            match fs::remove_file(&path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(io_error("cannot remove the record", &path, &e)),
            }
        })
        .and_then(|removed| if removed { sync_dir(&self.inner.dir) } else { Ok(()) })
    }

    fn list_sync(&self) -> Result<Vec<OrgId>, StorageError> {
        let dir = &self.inner.dir;
        let entries = fs::read_dir(dir).map_err(|e| io_error("cannot list the token directory", dir, &e))?;
        let mut orgs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("cannot list the token directory", dir, &e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stem) = name.strip_suffix(".json") else { continue };
            if let Some(hashed) = stem.strip_prefix("org-h-") {
                // Long ids are stored inside the record; read it. One that cannot be read is
                // left out (and said so), never in the way of the others.
                let read = read_no_follow(&entry.path()).map_err(|e| e.to_string()).and_then(|bytes| {
                    serde_json::from_slice::<RecordIn>(&bytes).map_err(|_| "it does not parse".into())
                });
                match read.map(|r| r.org_id) {
                    Ok(Some(org)) if hex(&Sha256::digest(org.as_bytes())) == hashed => orgs.push(org),
                    Ok(_) => {
                        tracing::warn!(record = %entry.path().display(), "left out of the listing: it holds no matching org id")
                    }
                    Err(why) => {
                        tracing::warn!(record = %entry.path().display(), %why, "left out of the listing: it cannot be read")
                    }
                }
            } else if let Some(org) = stem.strip_prefix("org-").and_then(unhex) {
                orgs.push(org);
            }
        }
        Ok(stored_org_ids(orgs, &dir.display().to_string()))
    }

    /// Writes a pending authorization as `pending-{key}.json` (durably), first removing the
    /// ones whose time has passed.
    fn save_pending_sync(&self, key: &str, bytes: &[u8]) -> Result<bool, StorageError> {
        let target = self.pending_path(key)?;
        self.purge_expired_pending();
        write_durably(&self.inner.dir, &target, bytes)?;
        sync_dir(&self.inner.dir)?;
        Ok(true)
    }

    /// Claims `pending-{key}.json` by renaming it to a name of this caller's own (one rename
    /// wins), then reads and removes it.
    fn take_pending_sync(&self, key: &str) -> Result<Option<PendingAuthorization>, StorageError> {
        let path = self.pending_path(key)?;
        let claimed = self.inner.dir.join(format!(".pending-{key}.taken-{}", random_suffix()));
        match fs::rename(&path, &claimed) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("cannot take the pending authorization", &path, &e)),
        }
        let bytes = read_no_follow(&claimed);
        let _ = fs::remove_file(&claimed);
        let bytes = bytes.map_err(|e| io_error("cannot read the pending authorization", &path, &e))?;
        PendingAuthorization::from_json(&bytes).map(Some).map_err(|why| {
            StorageError::corrupt(format!(
                "the pending authorization {} is unreadable: {why}",
                path.display()
            ))
        })
    }

    fn pending_path(&self, key: &str) -> Result<PathBuf, StorageError> {
        if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StorageError::other("a pending authorization key is 64 hex digits"));
        }
        Ok(self.inner.dir.join(format!("pending-{key}.json")))
    }

    /// Best effort: pending authorizations nobody exchanged are removed once they expired
    /// (judged by the file's age; a failure here costs only disk space).
    fn purge_expired_pending(&self) {
        let Ok(entries) = fs::read_dir(&self.inner.dir) else { return };
        let horizon = PENDING_AUTHORIZATION_TTL + Duration::from_secs(60);
        for entry in entries.flatten() {
            let name = entry.file_name();
            let is_pending = name.to_str().is_some_and(|n| n.starts_with("pending-") && n.ends_with(".json"));
            let age = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
            if is_pending && age.is_some_and(|age| age > horizon) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    fn state_path(&self, name: &str) -> Result<PathBuf, StorageError> {
        byova_core::backend::check_state_name(name)?;
        Ok(self.inner.dir.join(format!("state-{name}.json")))
    }

    fn read_state(&self, path: &Path) -> Result<Option<StateRecord>, StorageError> {
        match read_no_follow(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|_| {
                StorageError::corrupt(format!("the shared state {} does not parse", path.display()))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("cannot read the shared state", path, &e)),
        }
    }

    fn load_state_sync(&self, name: &str) -> Result<Option<Versioned<Vec<u8>>>, StorageError> {
        let path = self.state_path(name)?;
        Ok(self.read_state(&path)?.map(|r| Versioned { value: r.state.into_bytes(), version: r.version }))
    }

    fn store_state_sync(&self, name: &str, bytes: &[u8], expect: Expect) -> Result<u64, StorageError> {
        let path = self.state_path(name)?;
        let state = String::from_utf8(bytes.to_vec())
            .map_err(|_| StorageError::other("a shared state is not UTF-8"))?;
        let version = self.locked("state", || {
            let current = self.read_state(&path)?.map(|r| r.version);
            if !expect.admits(current) {
                return Err(byova_core::backend::state_conflict(name));
            }
            let version = current.map_or(0, |v| v + 1).max(micros_now());
            let record = StateRecord { format: RECORD_FORMAT, version, state };
            let json = serde_json::to_vec(&record).map_err(|e| StorageError::other(e.to_string()))?;
            write_durably(&self.inner.dir, &path, &json)?;
            Ok(version)
        })?;
        sync_dir(&self.inner.dir)?;
        Ok(version)
    }

    fn acquire_sync(&self, key: &TokenKey, ttl: Duration) -> Result<Option<Lease>, StorageError> {
        let stem = stem(key)?;
        let path = self.inner.dir.join(format!("{stem}.lease"));
        self.locked(&stem, || {
            let now = SystemClock.now().as_unix_millis();
            let held = fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<LeaseRecord>(&bytes).ok())
                .is_some_and(|l| l.expires_at_ms > now);
            if held {
                return Ok(None);
            }
            let lease = Lease::new(key.clone());
            self.write_lease(&stem, &path, &lease, now, ttl)?;
            Ok(Some(lease))
        })
    }

    fn extend_sync(&self, lease: &Lease, ttl: Duration) -> Result<bool, StorageError> {
        let stem = stem(&lease.key)?;
        let path = self.inner.dir.join(format!("{stem}.lease"));
        self.locked(&stem, || {
            let now = SystemClock.now().as_unix_millis();
            let ours = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<LeaseRecord>(&b).ok())
                .is_some_and(|l| l.owner == lease.owner.to_string() && l.expires_at_ms > now);
            if !ours {
                return Ok(false);
            }
            self.write_lease(&stem, &path, lease, now, ttl)?;
            Ok(true)
        })
    }

    fn write_lease(
        &self,
        stem: &str,
        path: &Path,
        lease: &Lease,
        now: u64,
        ttl: Duration,
    ) -> Result<(), StorageError> {
        let expires_at_ms = now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let record = LeaseRecord { owner: lease.owner.to_string(), expires_at_ms };
        let bytes = serde_json::to_vec(&record).map_err(|e| StorageError::other(e.to_string()))?;
        let tmp = self.inner.dir.join(format!(".{stem}.lease.tmp-{}", random_suffix()));
        write_private(&tmp, &bytes).map_err(|e| io_error("cannot write the lease", &tmp, &e))?;
        fs::rename(&tmp, path).map_err(|e| io_error("cannot write the lease", path, &e))
    }

    fn release_sync(&self, lease: &Lease) -> Result<(), StorageError> {
        let stem = stem(&lease.key)?;
        let path = self.inner.dir.join(format!("{stem}.lease"));
        self.locked(&stem, || {
            let owned = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<LeaseRecord>(&b).ok())
                .is_some_and(|l| l.owner == lease.owner.to_string());
            if owned {
                fs::remove_file(&path).map_err(|e| io_error("cannot remove the lease", &path, &e))?;
            }
            Ok(())
        })
    }
}

/// An existing token directory is made private (`0700`); one that belongs to another user
/// (so its mode cannot be changed) is refused.
fn tighten_dir(dir: &Path, meta: &fs::Metadata) -> Result<(), StorageError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if effective_uid().is_some_and(|uid| uid != meta.uid()) {
            return Err(StorageError::other(format!(
                "refusing the token directory {}: it belongs to another user (uid {})",
                dir.display(),
                meta.uid()
            )));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| {
                if e.kind() == io::ErrorKind::PermissionDenied {
                    StorageError::other(format!(
                        "refusing the token directory {}: it is open to other users and belongs to another user",
                        dir.display()
                    ))
                } else {
                    io_error("cannot make the token directory private", dir, &e)
                }
            })?;
            tracing::info!(dir = %dir.display(), "made the token directory private (0700)");
        }
    }
    #[cfg(not(unix))]
    let _ = (dir, meta);
    Ok(())
}

/// Earlier versions locked one file per key and never removed them; one lock file per store
/// replaced them. A process of an earlier version still using the directory (it holds one of
/// those locks) would not exclude this one: refuse, rather than share the directory with it.
fn remove_legacy_lock_files(dir: &Path) -> Result<(), StorageError> {
    let Ok(entries) = fs::read_dir(dir) else { return Ok(()) };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let legacy = name
            .to_str()
            .is_some_and(|n| n.ends_with(".lock") && (n.starts_with("org-") || n == "integration.lock"));
        if !legacy {
            continue;
        }
        let path = entry.path();
        let Ok(file) = OpenOptions::new().read(true).write(true).open(&path) else { continue };
        match file.try_lock() {
            Ok(()) => {
                let _ = fs::remove_file(&path);
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StorageError::other(format!(
                    "a process of an earlier byova version is using {} (it holds {}): stop it before this version opens the store",
                    dir.display(),
                    path.display()
                )));
            }
            Err(fs::TryLockError::Error(_)) => {}
        }
    }
    Ok(())
}

/// This process's effective user id (Linux), to tell whose directory it is.
#[cfg(unix)]
fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn create_private_dir(dir: &Path) -> Result<(), StorageError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| io_error("cannot create the token directory", dir, &e))
}

fn open_private(path: &Path, create_new: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if create_new {
        options.create_new(true);
    } else {
        options.create(true).truncate(false);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = open_private(path, true)?;
    file.write_all(bytes)
}

fn refuse_symlink(path: &Path) -> Result<(), StorageError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            Err(StorageError::other(format!("refusing the record {}: it is a symlink", path.display())))
        }
        _ => Ok(()),
    }
}

fn read_no_follow(path: &Path) -> io::Result<Vec<u8>> {
    if fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "refusing to follow a symlink"));
    }
    fs::read(path)
}

/// How old a leftover without a process id must be before it counts as abandoned.
const LEFTOVER_AGE: Duration = Duration::from_secs(600);

/// Removes what crashed writes left behind: temporary files (`.NAME.tmp-PID-…` whose process
/// is gone, or any older than ten minutes) and pending authorizations a taker claimed but never
/// finished (`.pending-….taken-…`, older than ten minutes; their expiry passed by then). A
/// writer that is alive is never disturbed. Best effort: what cannot be removed stays.
fn remove_crash_leftovers(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with('.') || !(name.contains(".tmp-") || name.contains(".taken-")) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > LEFTOVER_AGE);
        let writer_gone = name
            .split_once(".tmp-")
            .and_then(|(_, rest)| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !process_alive(pid));
        if old || writer_gone {
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), "removed what a crashed write left behind")
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove a crashed write's leftover")
                }
            }
        }
    }
}

/// Whether a process with `pid` runs on this host (Linux: `/proc`; elsewhere assumed alive,
/// and the age rule applies).
fn process_alive(pid: u32) -> bool {
    if Path::new("/proc/self").exists() { Path::new(&format!("/proc/{pid}")).exists() } else { true }
}

/// Makes `dir` a private directory of this user's: created `0700`, or an existing one (not a
/// symlink, not another user's) tightened to `0700`.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), StorageError> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_symlink() => Err(StorageError::other(format!(
            "refusing the token directory {}: it is a symlink",
            dir.display()
        ))),
        Ok(meta) if !meta.is_dir() => {
            Err(StorageError::other(format!("the token directory {} is not a directory", dir.display())))
        }
        Ok(meta) => tighten_dir(dir, &meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_private_dir(dir),
        Err(e) => Err(io_error("cannot inspect the token directory", dir, &e)),
    }
}

/// Temp file in the same directory (0600, unique name), write, fsync, rename: the old record
/// or the new one survives any crash, never a torn one. The caller fsyncs the directory
/// (outside the store's lock) before reporting success.
pub(crate) fn write_durably(dir: &Path, target: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("record");
    let tmp = dir.join(format!(".{name}.tmp-{}-{}", std::process::id(), random_suffix()));
    let written = (|| {
        let mut file = open_private(&tmp, true)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, target)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_error("cannot write the record", target, &e));
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("cannot sync the token directory", dir, &e))?;
    }
    Ok(())
}

impl BlockingCoordinatedTokenStorage for FileTokenStorage {
    fn load(&self, key: &TokenKey) -> Result<Option<Versioned<OAuthTokens>>, StorageError> {
        self.load_sync(key)
    }
    fn store(&self, key: &TokenKey, tokens: &OAuthTokens, expect: Expect) -> Result<u64, StorageError> {
        self.store_sync(key, tokens, expect)
    }
    fn delete_org(&self, org_id: &OrgId, expect: Expect) -> Result<(), StorageError> {
        self.delete_sync(org_id, expect)
    }
    fn list_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
        self.list_sync()
    }
    fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<Lease>, StorageError> {
        self.acquire_sync(key, ttl)
    }
    fn release_lease(&self, lease: &Lease) -> Result<(), StorageError> {
        self.release_sync(lease)
    }
    fn extend_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StorageError> {
        self.extend_sync(lease, ttl)
    }
    fn save_pending_authorization(
        &self,
        key: &str,
        pending: &PendingAuthorization,
    ) -> Result<bool, StorageError> {
        self.save_pending_sync(key, &pending.to_json())
    }
    fn take_pending_authorization(&self, key: &str) -> Result<Option<PendingAuthorization>, StorageError> {
        self.take_pending_sync(key)
    }
    fn load_state(&self, name: &str) -> Result<Option<Versioned<Vec<u8>>>, StorageError> {
        self.load_state_sync(name)
    }
    fn store_state(&self, name: &str, bytes: &[u8], expect: Expect) -> Result<u64, StorageError> {
        self.store_state_sync(name, bytes, expect)
    }
}

#[cfg(feature = "async")]
mod async_impl {
    use super::*;
    use byova_core::{async_trait, backend::CoordinatedTokenStorage};

    impl FileTokenStorage {
        /// Runs blocking file work on tokio's blocking pool, never on the runtime's threads.
        async fn offload<T: Send + 'static>(
            &self,
            f: impl FnOnce(&FileTokenStorage) -> Result<T, StorageError> + Send + 'static,
        ) -> Result<T, StorageError> {
            let this = self.clone();
            tokio::task::spawn_blocking(move || f(&this))
                .await
                .map_err(|e| StorageError::other(format!("a file storage task failed: {e}")))?
        }
    }

    #[async_trait]
    impl CoordinatedTokenStorage for FileTokenStorage {
        async fn load(&self, key: &TokenKey) -> Result<Option<Versioned<OAuthTokens>>, StorageError> {
            let key = key.clone();
            self.offload(move |s| s.load_sync(&key)).await
        }
        async fn store(
            &self,
            key: &TokenKey,
            tokens: &OAuthTokens,
            expect: Expect,
        ) -> Result<u64, StorageError> {
            let (key, tokens) = (key.clone(), tokens.clone());
            self.offload(move |s| s.store_sync(&key, &tokens, expect)).await
        }
        async fn delete_org(&self, org_id: &OrgId, expect: Expect) -> Result<(), StorageError> {
            let org = org_id.to_owned();
            self.offload(move |s| s.delete_sync(&org, expect)).await
        }
        async fn list_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
            self.offload(FileTokenStorage::list_sync).await
        }
        async fn try_acquire_lease(
            &self,
            key: &TokenKey,
            ttl: Duration,
        ) -> Result<Option<Lease>, StorageError> {
            let key = key.clone();
            self.offload(move |s| s.acquire_sync(&key, ttl)).await
        }
        async fn release_lease(&self, lease: &Lease) -> Result<(), StorageError> {
            let lease = lease.clone();
            self.offload(move |s| s.release_sync(&lease)).await
        }
        async fn extend_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StorageError> {
            let lease = lease.clone();
            self.offload(move |s| s.extend_sync(&lease, ttl)).await
        }
        async fn save_pending_authorization(
            &self,
            key: &str,
            pending: &PendingAuthorization,
        ) -> Result<bool, StorageError> {
            let (key, bytes) = (key.to_owned(), pending.to_json());
            self.offload(move |s| s.save_pending_sync(&key, &bytes)).await
        }
        async fn take_pending_authorization(
            &self,
            key: &str,
        ) -> Result<Option<PendingAuthorization>, StorageError> {
            let key = key.to_owned();
            self.offload(move |s| s.take_pending_sync(&key)).await
        }
        async fn load_state(&self, name: &str) -> Result<Option<Versioned<Vec<u8>>>, StorageError> {
            let name = name.to_owned();
            self.offload(move |s| s.load_state_sync(&name)).await
        }
        async fn store_state(&self, name: &str, bytes: &[u8], expect: Expect) -> Result<u64, StorageError> {
            let (name, bytes) = (name.to_owned(), bytes.to_vec());
            self.offload(move |s| s.store_state_sync(&name, &bytes, expect)).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_are_safe_for_any_org_id() {
        assert_eq!(stem(&TokenKey::Integration).unwrap(), "integration");
        let s = stem(&TokenKey::org(&OrgId::from_static("../../etc/passwd"))).unwrap();
        assert!(!s.contains('/') && !s.contains(".."), "{s}");
        assert_eq!(unhex(s.strip_prefix("org-").unwrap()).as_deref(), Some("../../etc/passwd"));
        let long = stem(&TokenKey::org(&OrgId::new(&"x".repeat(101)).unwrap())).unwrap();
        assert!(long.starts_with("org-h-") && long.len() == 6 + 64);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("abc"), None);
    }
}
