//! A team's own byova storage backend, as an example: records in a key-value map with a
//! version per key (any database with compare-and-set works the same way). Implementing
//! [`BlockingCoordinatedTokenStorage`]'s primitives is all it takes: byova provides the Python
//! SDK's six methods on top, and `tests/conformance.rs` runs byova's conformance suite on it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use byova_core::{
    OAuthTokens, OrgId, StorageError, Timestamp, TokenKey,
    backend::{
        BlockingCoordinatedTokenStorage, Expect, Lease, PendingAuthorization, Versioned, decode_record,
        stored_org_ids,
    },
};

/// One versioned value.
#[derive(Clone)]
struct Entry {
    version: u64,
    bytes: Vec<u8>,
}

#[derive(Default)]
struct Db {
    records: HashMap<String, Entry>,
    leases: HashMap<String, (u128, Instant)>,
    pending: HashMap<String, Vec<u8>>,
    states: HashMap<String, Entry>,
    last_version: u64,
}

/// The team's store. Keys are `integration` and `org:<id>`, values the records' JSON.
#[derive(Default)]
pub struct KvStore {
    db: Mutex<Db>,
}

fn name(key: &TokenKey) -> String {
    match key {
        TokenKey::Integration => "integration".to_owned(),
        TokenKey::Org(org) => format!("org:{org}"),
    }
}

impl KvStore {
    fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Overwrites a record's bytes as they are (for the suite's corrupt-record case).
    pub fn write_raw(&self, key: &TokenKey, bytes: &[u8]) {
        let mut db = self.db();
        db.last_version += 1;
        let version = db.last_version;
        db.records.insert(name(key), Entry { version, bytes: bytes.to_vec() });
    }
}

/// Compare-and-set on one map: the heart of any backend.
fn put(
    map: &mut HashMap<String, Entry>,
    last_version: &mut u64,
    key: String,
    bytes: &[u8],
    expect: Expect,
    conflict: impl FnOnce() -> StorageError,
) -> Result<u64, StorageError> {
    if !expect.admits(map.get(&key).map(|e| e.version)) {
        return Err(conflict());
    }
    *last_version += 1;
    map.insert(key, Entry { version: *last_version, bytes: bytes.to_vec() });
    Ok(*last_version)
}

impl BlockingCoordinatedTokenStorage for KvStore {
    fn load(&self, key: &TokenKey) -> Result<Option<Versioned<OAuthTokens>>, StorageError> {
        let entry = self.db().records.get(&name(key)).cloned();
        entry
            .map(|e| {
                Ok(Versioned { value: decode_record(&e.bytes, key, "the team's store")?, version: e.version })
            })
            .transpose()
    }

    fn store(&self, key: &TokenKey, tokens: &OAuthTokens, expect: Expect) -> Result<u64, StorageError> {
        let db = &mut *self.db();
        put(&mut db.records, &mut db.last_version, name(key), &tokens.to_json(), expect, || {
            StorageError::conflict(key)
        })
    }

    fn delete_org(&self, org_id: &OrgId, expect: Expect) -> Result<(), StorageError> {
        let key = TokenKey::org(org_id);
        let mut db = self.db();
        let current = db.records.get(&name(&key)).map(|e| e.version);
        if !expect.admits(current) {
            return Err(StorageError::conflict(&key));
        }
        db.records.remove(&name(&key));
        Ok(())
    }

    fn list_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
        let names = self
            .db()
            .records
            .keys()
            .filter_map(|k| k.strip_prefix("org:").map(str::to_owned))
            .collect::<Vec<_>>();
        Ok(stored_org_ids(names, "the team's store"))
    }

    fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<Lease>, StorageError> {
        let mut db = self.db();
        let now = Instant::now();
        if db.leases.get(&name(key)).is_some_and(|(_, until)| *until > now) {
            return Ok(None);
        }
        let lease = Lease::new(key.clone());
        db.leases.insert(name(key), (lease.owner, now + ttl));
        Ok(Some(lease))
    }

    fn release_lease(&self, lease: &Lease) -> Result<(), StorageError> {
        let mut db = self.db();
        if db.leases.get(&name(&lease.key)).is_some_and(|(owner, _)| *owner == lease.owner) {
            db.leases.remove(&name(&lease.key));
        }
        Ok(())
    }

    fn extend_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StorageError> {
        let mut db = self.db();
        let now = Instant::now();
        match db.leases.get_mut(&name(&lease.key)) {
            Some((owner, until)) if *owner == lease.owner && *until > now => {
                *until = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn save_pending_authorization(
        &self,
        key: &str,
        pending: &PendingAuthorization,
    ) -> Result<bool, StorageError> {
        self.db().pending.insert(key.to_owned(), pending.to_json());
        Ok(true)
    }

    fn take_pending_authorization(&self, key: &str) -> Result<Option<PendingAuthorization>, StorageError> {
        let Some(bytes) = self.db().pending.remove(key) else { return Ok(None) };
        let pending = PendingAuthorization::from_json(&bytes).map_err(StorageError::other)?;
        let now = Timestamp::from_unix_millis(
            u64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis(),
            )
            .unwrap_or(u64::MAX),
        );
        Ok((pending.expires_at > now).then_some(pending))
    }

    fn load_state(&self, state: &str) -> Result<Option<Versioned<Vec<u8>>>, StorageError> {
        Ok(self.db().states.get(state).map(|e| Versioned { value: e.bytes.clone(), version: e.version }))
    }

    fn store_state(&self, state: &str, bytes: &[u8], expect: Expect) -> Result<u64, StorageError> {
        let db = &mut *self.db();
        put(&mut db.states, &mut db.last_version, state.to_owned(), bytes, expect, || {
            byova_core::backend::state_conflict(state)
        })
    }
}
