//! The blocking SQLite store on rusqlite: the same schema and statements as the async store.

use std::sync::Mutex;
use std::time::Duration;

use byova_core::{
    Clock, OAuthTokens, OrgId, StorageError, SystemClock, TokenKey,
    backend::{
        BlockingCoordinatedTokenStorage, Expect, Lease, PendingAuthorization, Versioned, decode_record,
        stored_org_ids,
    },
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::dialect::{
    Kind, Statements, check_pending_key, decode_pending, key_columns, split_table, state_row,
};

/// A blocking SQLite token store (one connection; SQLite serializes writers anyway). Processes
/// share the file: WAL, a 5 s busy timeout, and `BEGIN IMMEDIATE` for every read-then-write.
pub struct SqliteBlockingStorage {
    conn: Mutex<Connection>,
    st: Statements,
    path: String,
}

impl std::fmt::Debug for SqliteBlockingStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBlockingStorage").field("path", &self.path).finish_non_exhaustive()
    }
}

fn sqlite_error(what: &str, e: &rusqlite::Error) -> StorageError {
    let message = format!("{what}: {e}");
    match e.sqlite_error_code() {
        Some(
            rusqlite::ErrorCode::DatabaseBusy
            | rusqlite::ErrorCode::DatabaseLocked
            | rusqlite::ErrorCode::CannotOpen,
        ) => StorageError::unavailable(message),
        _ => StorageError::other(message),
    }
}

fn ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2).max(1)
}

impl SqliteBlockingStorage {
    /// Opens `sqlite:///absolute/path.db` (or `sqlite:relative.db`, or a plain path), with an
    /// optional `?table=NAME`, creating the file and the table when missing.
    ///
    /// # Errors
    /// When the file cannot be opened or the schema created.
    pub fn open(url: &str) -> Result<Self, StorageError> {
        let (rest, table) = split_table(url)?;
        let path = rest.strip_prefix("sqlite://").or_else(|| rest.strip_prefix("sqlite:")).unwrap_or(&rest);
        let path = path.split('?').next().unwrap_or(path).to_owned();
        if let Some(file) = crate::dialect::sqlite_path(&path) {
            crate::dialect::private_sqlite_files(&file)?;
        }
        let conn = Connection::open(&path).map_err(|e| sqlite_error(&format!("cannot open {path}"), &e))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(|e| sqlite_error("busy_timeout", &e))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| sqlite_error("journal_mode", &e))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| sqlite_error("synchronous", &e))?;
        let store = Self { conn: Mutex::new(conn), st: Statements::new(Kind::Sqlite, &table), path };
        store.migrate()?;
        Ok(store)
    }

    /// Creates the table when missing (the same schema as the async store). [`open`](Self::open)
    /// calls it; idempotent.
    ///
    /// # Errors
    /// When the statement fails.
    pub fn migrate(&self) -> Result<(), StorageError> {
        let conn = self.conn();
        for create in [&self.st.create, &self.st.create_pending] {
            conn.execute(create, []).map_err(|e| sqlite_error("cannot create the token tables", &e))?;
        }
        Ok(())
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ensure_row(
        conn: &Connection,
        st: &Statements,
        name: &str,
        org: Option<&str>,
    ) -> Result<(), StorageError> {
        conn.execute(&st.ensure_row, params![name, org])
            .map_err(|e| sqlite_error("cannot create the key's row", &e))?;
        Ok(())
    }
}

impl SqliteBlockingStorage {
    /// Writes `json` as the record of row `name` if `expect` holds, in one `BEGIN IMMEDIATE`
    /// transaction.
    fn write_text(
        &self,
        conflict: &dyn Fn() -> StorageError,
        name: &str,
        org: Option<&str>,
        json: &str,
        expect: Expect,
    ) -> Result<u64, StorageError> {
        let mut conn = self.conn();
        Self::ensure_row(&conn, &self.st, name, org)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sqlite_error("begin", &e))?;
        let (version, present): (i64, bool) = tx
            .query_row(&self.st.load_for_update, params![name], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?.is_some()))
            })
            .map_err(|e| sqlite_error("read", &e))?;
        let version = u64::try_from(version).unwrap_or(0);
        if !expect.admits(present.then_some(version)) {
            return Err(conflict());
        }
        let new_version = version + 1;
        tx.execute(
            &self.st.update_record,
            params![json, i64::try_from(new_version).unwrap_or(i64::MAX), name],
        )
        .map_err(|e| sqlite_error("write", &e))?;
        tx.commit().map_err(|e| sqlite_error("commit", &e))?;
        Ok(new_version)
    }
}

impl BlockingCoordinatedTokenStorage for SqliteBlockingStorage {
    fn delete_org(&self, org_id: &OrgId, expect: Expect) -> Result<(), StorageError> {
        let key = TokenKey::org(org_id);
        let (name, _) = key_columns(&key)?;
        let deleted = match expect {
            Expect::Any => self.conn().execute(&self.st.delete, params![name]),
            Expect::Version(v) => {
                let v = i64::try_from(v).unwrap_or(i64::MAX);
                self.conn().execute(&self.st.delete_version, params![name, v])
            }
            Expect::Absent if BlockingCoordinatedTokenStorage::load(self, &key)?.is_some() => {
                return Err(StorageError::conflict(&key));
            }
            Expect::Absent => return Ok(()),
        }
        .map_err(|e| sqlite_error("delete", &e))?;
        if matches!(expect, Expect::Version(_)) && deleted != 1 {
            return Err(StorageError::conflict(&key));
        }
        Ok(())
    }
    fn list_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&self.st.list).map_err(|e| sqlite_error("list", &e))?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(|e| sqlite_error("list", &e))?;
        let names = rows.map(|r| r.map_err(|e| sqlite_error("list", &e))).collect::<Result<Vec<_>, _>>()?;
        Ok(stored_org_ids(names, &self.path))
    }
    fn load(&self, key: &TokenKey) -> Result<Option<Versioned<OAuthTokens>>, StorageError> {
        let (name, _) = key_columns(key)?;
        let row: Option<(i64, Option<String>)> = self
            .conn()
            .query_row(&self.st.load, params![name], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(|e| sqlite_error("read", &e))?;
        match row {
            Some((version, Some(record))) => {
                let value = decode_record(record.as_bytes(), key, &format!("{} table", self.path))?;
                Ok(Some(Versioned { value, version: u64::try_from(version).unwrap_or(0) }))
            }
            _ => Ok(None),
        }
    }
    fn store(&self, key: &TokenKey, tokens: &OAuthTokens, expect: Expect) -> Result<u64, StorageError> {
        let (name, org) = key_columns(key)?;
        let json = String::from_utf8(tokens.to_json())
            .map_err(|_| StorageError::other("a token record is not UTF-8"))?;
        self.write_text(&|| StorageError::conflict(key), &name, org.as_deref(), &json, expect)
    }
    fn load_state(&self, name: &str) -> Result<Option<Versioned<Vec<u8>>>, StorageError> {
        let row: Option<(i64, Option<String>)> = self
            .conn()
            .query_row(&self.st.load, params![state_row(name)?], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(|e| sqlite_error("read", &e))?;
        Ok(row.and_then(|(version, record)| {
            record.map(|r| Versioned { value: r.into_bytes(), version: u64::try_from(version).unwrap_or(0) })
        }))
    }
    fn store_state(&self, name: &str, bytes: &[u8], expect: Expect) -> Result<u64, StorageError> {
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| StorageError::other("a shared state is not UTF-8"))?;
        self.write_text(&|| byova_core::backend::state_conflict(name), &state_row(name)?, None, &text, expect)
    }
    fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<Lease>, StorageError> {
        let (name, org) = key_columns(key)?;
        let conn = self.conn();
        Self::ensure_row(&conn, &self.st, &name, org.as_deref())?;
        let lease = Lease::new(key.clone());
        let n = conn
            .execute(&self.st.acquire, params![lease.owner.to_string(), ms(ttl), name])
            .map_err(|e| sqlite_error("acquire a lease", &e))?;
        Ok((n == 1).then_some(lease))
    }
    fn release_lease(&self, lease: &Lease) -> Result<(), StorageError> {
        let (name, _) = key_columns(&lease.key)?;
        self.conn()
            .execute(&self.st.release, params![name, lease.owner.to_string()])
            .map_err(|e| sqlite_error("release a lease", &e))?;
        Ok(())
    }
    fn extend_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StorageError> {
        let (name, _) = key_columns(&lease.key)?;
        let n = self
            .conn()
            .execute(&self.st.extend, params![ms(ttl), name, lease.owner.to_string()])
            .map_err(|e| sqlite_error("extend a lease", &e))?;
        Ok(n == 1)
    }
    fn save_pending_authorization(
        &self,
        key: &str,
        pending: &PendingAuthorization,
    ) -> Result<bool, StorageError> {
        check_pending_key(key)?;
        let json = String::from_utf8(pending.to_json())
            .map_err(|_| StorageError::other("a pending authorization is not UTF-8"))?;
        let conn = self.conn();
        conn.execute(&self.st.purge_pending, [])
            .map_err(|e| sqlite_error("purge expired pending authorizations", &e))?;
        conn.execute(&self.st.save_pending, params![key, json, ms(pending.remaining(SystemClock.now()))])
            .map_err(|e| sqlite_error("save a pending authorization", &e))?;
        Ok(true)
    }
    fn take_pending_authorization(&self, key: &str) -> Result<Option<PendingAuthorization>, StorageError> {
        check_pending_key(key)?;
        let conn = self.conn();
        let record: Option<String> = conn
            .query_row(&self.st.read_pending, params![key], |r| r.get(0))
            .optional()
            .map_err(|e| sqlite_error("read a pending authorization", &e))?;
        let Some(record) = record else { return Ok(None) };
        let deleted = conn
            .execute(&self.st.delete_pending, params![key])
            .map_err(|e| sqlite_error("take a pending authorization", &e))?;
        if deleted != 1 {
            return Ok(None); // another process took it
        }
        decode_pending(&record, &format!("{} table", self.path)).map(Some)
    }
}
