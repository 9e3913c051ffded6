//! The async store on sqlx (Postgres, MySQL/MariaDB, SQLite).

use std::time::Duration;

use byova_core::{
    Clock, OAuthTokens, OrgId, StorageError, SystemClock, TokenKey, async_trait,
    backend::{
        CoordinatedTokenStorage, Expect, Lease, PendingAuthorization, Versioned, decode_record,
        stored_org_ids,
    },
};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::dialect::{
    Kind, LOAD_MANY_BATCH, Statements, check_pending_key, decode_pending, key_columns, split_table, state_row,
};

/// An async SQL token store. Cheap to clone (a connection pool).
#[derive(Clone)]
pub struct SqlTokenStorage {
    pool: AnyPool,
    st: Statements,
    display: String,
    table: String,
}

impl std::fmt::Debug for SqlTokenStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlTokenStorage")
            .field("database", &self.display)
            .field("table", &self.table)
            .finish()
    }
}

fn sqlx_error(what: &str, e: &sqlx::Error) -> StorageError {
    let text = e.to_string().replace('\n', " ");
    if matches!(e, sqlx::Error::Tls(_)) || text.contains("certificate") {
        let hint = if text.contains("certificate") {
            " (trust the server's CA with BYOVA_STORAGE_CA_FILE or sslrootcert / ssl-ca)"
        } else {
            ""
        };
        return StorageError::other(format!("{what}: TLS failed: {text}{hint}"));
    }
    let message = format!("{what}: {text}");
    let transient = match e {
        // A connection cut mid-exchange surfaces as I/O or as a garbled protocol message
        // (e.g. Postgres's answer to SSLRequest missing): both are worth another try.
        sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let text = db.message().to_ascii_lowercase();
            // Postgres serialization failure / deadlock, MySQL deadlock / lock wait, SQLite busy.
            matches!(code.as_ref(), "40001" | "40P01" | "1213" | "1205" | "5" | "6" | "517")
                || text.contains("deadlock")
                || text.contains("database is locked")
                || text.contains("busy")
        }
        _ => false,
    };
    if transient { StorageError::unavailable(message) } else { StorageError::other(message) }
}

/// A text column; MySQL reports text with a binary collation as BLOB, so bytes are accepted
/// too (invalid UTF-8 reads as empty text, which the record decoder reports as corrupt).
fn text(row: &AnyRow, index: usize) -> Result<Option<String>, sqlx::Error> {
    match row.try_get::<Option<String>, _>(index) {
        Ok(v) => Ok(v),
        Err(_) => {
            Ok(row.try_get::<Option<Vec<u8>>, _>(index)?.map(|b| String::from_utf8(b).unwrap_or_default()))
        }
    }
}

fn ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2).max(1)
}

impl SqlTokenStorage {
    /// Connects to `postgres://…`, `mysql://…` (MariaDB too) or `sqlite:///path.db`, with an
    /// optional `?table=NAME` (default `byova_tokens`), and applies the schema (see
    /// [`migrate`](Self::migrate)).
    ///
    /// # Errors
    /// An unreachable database ([`Unavailable`](byova_core::StorageErrorKind::Unavailable)), a
    /// bad URL, or a schema that cannot be created.
    pub async fn connect(url: &str) -> Result<Self, StorageError> {
        Self::connect_with_ca(url, None).await
    }

    /// [`connect`](Self::connect), trusting the PEM CA certificate(s) in `ca_file` for a TLS
    /// connection (Postgres `sslrootcert`, MySQL `ssl-ca`, unless the URL names one).
    ///
    /// TLS follows the URL's own parameters (`sslmode`, `sslrootcert`; `ssl-mode`, `ssl-ca`).
    /// Without them, a database on another host is reached over verified TLS
    /// (`sslmode=verify-full`, `ssl-mode=VERIFY_IDENTITY`): tokens never cross a network in
    /// clear text by default. `sslmode=require` never falls back to plaintext.
    ///
    /// # Errors
    /// As [`connect`](Self::connect); a certificate the CA does not vouch for.
    pub async fn connect_with_ca(url: &str, ca_file: Option<&std::path::Path>) -> Result<Self, StorageError> {
        sqlx::any::install_default_drivers();
        let (url, table) = split_table(url)?;
        let url = if url.starts_with("mariadb://") { url.replacen("mariadb://", "mysql://", 1) } else { url };
        let url = crate::dialect::with_tls_defaults(&url, ca_file)?;
        let kind = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Kind::Postgres
        } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            Kind::MySql
        } else if url.starts_with("sqlite:") {
            Kind::Sqlite
        } else {
            return Err(StorageError::other(format!(
                "{} is not a postgres://, mysql:// or sqlite: URL",
                byova_core::backend::redact_url(&url)
            )));
        };
        let url = match kind {
            Kind::MySql => url.replacen("mariadb://", "mysql://", 1),
            Kind::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
            }
            _ => url,
        };
        if kind == Kind::Sqlite
            && let Some(file) = crate::dialect::sqlite_path(&url)
        {
            crate::dialect::private_sqlite_files(&file)?;
        }
        let mut options = AnyPoolOptions::new().max_connections(8).acquire_timeout(Duration::from_secs(5));
        if kind == Kind::Sqlite {
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.execute("PRAGMA synchronous = FULL").await?;
                    Ok(())
                })
            });
        }
        let display = byova_core::backend::redact_url(&url);
        let pool = options
            .connect(&url)
            .await
            .map_err(|e| sqlx_error(&format!("cannot connect to {display}"), &e))?;
        let store = Self { pool, st: Statements::new(kind, &table), display, table };
        store.migrate().await?;
        Ok(store)
    }

    /// Creates the table when missing. [`connect`](Self::connect) calls it; call it yourself to
    /// apply the schema ahead of time (in a deploy step, say). Idempotent.
    ///
    /// # Errors
    /// When the statement fails.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        for create in [&self.st.create, &self.st.create_pending] {
            sqlx::query(create)
                .execute(&self.pool)
                .await
                .map_err(|e| sqlx_error("cannot create the token tables", &e))?;
        }
        Ok(())
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Drops the tables (tests, uninstalling). Every stored token is gone afterwards.
    ///
    /// # Errors
    /// When the statement fails.
    pub async fn drop_table(&self) -> Result<(), StorageError> {
        for table in [self.table.clone(), format!("{}_pending", self.table)] {
            sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
                .execute(&self.pool)
                .await
                .map_err(|e| sqlx_error("cannot drop the token tables", &e))?;
        }
        Ok(())
    }

    /// Writes raw text as `key`'s record (tests of corrupt records).
    ///
    /// # Errors
    /// When the statements fail.
    pub async fn put_raw_record(&self, key: &TokenKey, text: &str) -> Result<(), StorageError> {
        let (name, org) = key_columns(key)?;
        self.ensure_row(&name, org.as_deref()).await?;
        sqlx::query(&self.st.update_record)
            .bind(text)
            .bind(1_i64)
            .bind(&name)
            .execute(&self.pool)
            .await
            .map_err(|e| sqlx_error("write", &e))?;
        Ok(())
    }

    async fn ensure_row(&self, name: &str, org: Option<&str>) -> Result<(), StorageError> {
        sqlx::query(&self.st.ensure_row)
            .bind(name)
            .bind(org)
            .execute(&self.pool)
            .await
            .map_err(|e| sqlx_error("cannot create the key's row", &e))?;
        Ok(())
    }

    fn decode(
        &self,
        key: &TokenKey,
        row: Option<AnyRow>,
    ) -> Result<Option<Versioned<OAuthTokens>>, StorageError> {
        let Some(row) = row else { return Ok(None) };
        let version: i64 = row.try_get(0).map_err(|e| sqlx_error("read the version", &e))?;
        let record = text(&row, 1).map_err(|e| sqlx_error("read the record", &e))?;
        let Some(record) = record else { return Ok(None) };
        let value = decode_record(record.as_bytes(), key, &format!("{} table {}", self.display, self.table))?;
        Ok(Some(Versioned { value, version: u64::try_from(version).unwrap_or(0) }))
    }

    /// Writes `json` as the record of row `name` if `expect` holds: one statement where the
    /// database allows it, else a transaction (retried a few times on deadlocks).
    async fn write_text(
        &self,
        conflict: &(dyn Fn() -> StorageError + Send + Sync),
        name: &str,
        org: Option<&str>,
        json: String,
        expect: Expect,
    ) -> Result<u64, StorageError> {
        if let Some(version) = self.store_in_one_statement(conflict, name, org, json.clone(), expect).await? {
            return version;
        }
        self.ensure_row(name, org).await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.store_once(conflict, name, &json, expect).await {
                // Deadlocks and busy databases are retried a few times before surfacing.
                Err(e) if e.kind() == byova_core::StorageErrorKind::Unavailable && attempt < 5 => {
                    tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// A versioned write in one round trip, where the database allows it: `Some(result)`, or
    /// `None` when this write needs the transaction (MySQL's `Any` and `Absent`).
    async fn store_in_one_statement(
        &self,
        conflict: &(dyn Fn() -> StorageError + Send + Sync),
        name: &str,
        org: Option<&str>,
        json: String,
        expect: Expect,
    ) -> Result<Option<Result<u64, StorageError>>, StorageError> {
        let returning = match expect {
            Expect::Any => self.st.store_any.as_ref(),
            Expect::Absent => self.st.store_absent.as_ref(),
            Expect::Version(_) => self.st.store_version.as_ref(),
        };
        let row = match (returning, expect) {
            (Some(sql), Expect::Version(v)) => {
                sqlx::query(sql)
                    .bind(json)
                    .bind(name)
                    .bind(i64::try_from(v).unwrap_or(i64::MAX))
                    .fetch_optional(&self.pool)
                    .await
            }
            (Some(sql), _) => {
                sqlx::query(sql).bind(name).bind(org).bind(json).fetch_optional(&self.pool).await
            }
            (None, Expect::Version(v)) => {
                let done = sqlx::query(&self.st.store_version_affected)
                    .bind(json)
                    .bind(name)
                    .bind(i64::try_from(v).unwrap_or(i64::MAX))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| sqlx_error("write", &e))?;
                return Ok(Some(if done.rows_affected() == 1 { Ok(v + 1) } else { Err(conflict()) }));
            }
            (None, _) => return Ok(None),
        }
        .map_err(|e| sqlx_error("write", &e))?;
        Ok(Some(match row {
            None => Err(conflict()),
            Some(row) => {
                let version: i64 = row.try_get(0).map_err(|e| sqlx_error("read the version", &e))?;
                Ok(u64::try_from(version).unwrap_or(0))
            }
        }))
    }

    async fn store_once(
        &self,
        conflict: &(dyn Fn() -> StorageError + Send + Sync),
        name: &str,
        json: &str,
        expect: Expect,
    ) -> Result<u64, StorageError> {
        let mut tx = if self.st.kind == Kind::Sqlite {
            self.pool.begin_with("BEGIN IMMEDIATE").await
        } else {
            self.pool.begin().await
        }
        .map_err(|e| sqlx_error("cannot begin a transaction", &e))?;
        let row = sqlx::query(&self.st.load_for_update)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| sqlx_error("read", &e))?;
        let (version, present) = match &row {
            Some(row) => {
                let v: i64 = row.try_get(0).map_err(|e| sqlx_error("read the version", &e))?;
                let r = text(row, 1).map_err(|e| sqlx_error("read the record", &e))?;
                (u64::try_from(v).unwrap_or(0), r.is_some())
            }
            None => (0, false),
        };
        if !expect.admits(present.then_some(version)) {
            return Err(conflict());
        }
        let new_version = version + 1;
        sqlx::query(&self.st.update_record)
            .bind(json)
            .bind(i64::try_from(new_version).unwrap_or(i64::MAX))
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(|e| sqlx_error("write", &e))?;
        tx.commit().await.map_err(|e| sqlx_error("commit", &e))?;
        Ok(new_version)
    }
}

#[async_trait]
impl CoordinatedTokenStorage for SqlTokenStorage {
    async fn delete_org(&self, org_id: &OrgId, expect: Expect) -> Result<(), StorageError> {
        let key = TokenKey::org(org_id);
        let (name, _) = key_columns(&key)?;
        let deleted = match expect {
            Expect::Any => sqlx::query(&self.st.delete).bind(name).execute(&self.pool).await,
            Expect::Version(v) => {
                let v = i64::try_from(v).unwrap_or(i64::MAX);
                sqlx::query(&self.st.delete_version).bind(name).bind(v).execute(&self.pool).await
            }
            Expect::Absent if CoordinatedTokenStorage::load(self, &key).await?.is_some() => {
                return Err(StorageError::conflict(&key));
            }
            Expect::Absent => return Ok(()),
        }
        .map_err(|e| sqlx_error("delete", &e))?;
        if matches!(expect, Expect::Version(_)) && deleted.rows_affected() != 1 {
            return Err(StorageError::conflict(&key));
        }
        Ok(())
    }
    async fn list_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
        let rows =
            sqlx::query(&self.st.list).fetch_all(&self.pool).await.map_err(|e| sqlx_error("list", &e))?;
        let names = rows
            .iter()
            .filter_map(|r| text(r, 0).map_err(|e| sqlx_error("list", &e)).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(stored_org_ids(names, &self.display))
    }
    async fn load(&self, key: &TokenKey) -> Result<Option<Versioned<OAuthTokens>>, StorageError> {
        let (name, _) = key_columns(key)?;
        let row = sqlx::query(&self.st.load)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| sqlx_error("read", &e))?;
        self.decode(key, row)
    }
    async fn load_many(
        &self,
        keys: &[TokenKey],
    ) -> Result<Vec<Option<Versioned<OAuthTokens>>>, StorageError> {
        let mut all = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(LOAD_MANY_BATCH) {
            let names =
                chunk.iter().map(|k| key_columns(k).map(|(name, _)| name)).collect::<Result<Vec<_>, _>>()?;
            let mut query = sqlx::query(&self.st.load_many);
            for i in 0..LOAD_MANY_BATCH {
                query = query.bind(names[i.min(names.len() - 1)].clone());
            }
            let rows = query.fetch_all(&self.pool).await.map_err(|e| sqlx_error("read", &e))?;
            let mut by_name = std::collections::HashMap::with_capacity(rows.len());
            for row in rows {
                let name = text(&row, 0).map_err(|e| sqlx_error("read the key", &e))?.unwrap_or_default();
                by_name.insert(name, row);
            }
            for (key, name) in chunk.iter().zip(&names) {
                let row = by_name.get(name).map(|row| {
                    let version: i64 = row.try_get(1).map_err(|e| sqlx_error("read the version", &e))?;
                    let record = text(row, 2).map_err(|e| sqlx_error("read the record", &e))?;
                    Ok::<_, StorageError>((version, record))
                });
                all.push(match row.transpose()? {
                    Some((version, Some(record))) => Some(Versioned {
                        value: decode_record(
                            record.as_bytes(),
                            key,
                            &format!("{} table {}", self.display, self.table),
                        )?,
                        version: u64::try_from(version).unwrap_or(0),
                    }),
                    _ => None,
                });
            }
        }
        Ok(all)
    }
    async fn store(&self, key: &TokenKey, tokens: &OAuthTokens, expect: Expect) -> Result<u64, StorageError> {
        let (name, org) = key_columns(key)?;
        let json = String::from_utf8(tokens.to_json())
            .map_err(|_| StorageError::other("a token record is not UTF-8"))?;
        self.write_text(&|| StorageError::conflict(key), &name, org.as_deref(), json, expect).await
    }
    async fn load_state(&self, name: &str) -> Result<Option<Versioned<Vec<u8>>>, StorageError> {
        let row = sqlx::query(&self.st.load)
            .bind(state_row(name)?)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| sqlx_error("read", &e))?;
        let Some(row) = row else { return Ok(None) };
        let version: i64 = row.try_get(0).map_err(|e| sqlx_error("read the version", &e))?;
        let record = text(&row, 1).map_err(|e| sqlx_error("read the record", &e))?;
        Ok(record.map(|r| Versioned { value: r.into_bytes(), version: u64::try_from(version).unwrap_or(0) }))
    }
    async fn store_state(&self, name: &str, bytes: &[u8], expect: Expect) -> Result<u64, StorageError> {
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| StorageError::other("a shared state is not UTF-8"))?;
        self.write_text(&|| byova_core::backend::state_conflict(name), &state_row(name)?, None, text, expect)
            .await
    }
    async fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<Lease>, StorageError> {
        let (name, org) = key_columns(key)?;
        self.ensure_row(&name, org.as_deref()).await?;
        let lease = Lease::new(key.clone());
        let done = sqlx::query(&self.st.acquire)
            .bind(lease.owner.to_string())
            .bind(ms(ttl))
            .bind(&name)
            .execute(&self.pool)
            .await
            .map_err(|e| sqlx_error("acquire a lease", &e))?;
        Ok((done.rows_affected() == 1).then_some(lease))
    }
    async fn release_lease(&self, lease: &Lease) -> Result<(), StorageError> {
        let (name, _) = key_columns(&lease.key)?;
        sqlx::query(&self.st.release)
            .bind(name)
            .bind(lease.owner.to_string())
            .execute(&self.pool)
            .await
            .map_err(|e| sqlx_error("release a lease", &e))?;
        Ok(())
    }
    async fn extend_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StorageError> {
        let (name, _) = key_columns(&lease.key)?;
        let done = sqlx::query(&self.st.extend)
            .bind(ms(ttl))
            .bind(name)
            .bind(lease.owner.to_string())
            .execute(&self.pool)
            .await
            .map_err(|e| sqlx_error("extend a lease", &e))?;
        Ok(done.rows_affected() == 1)
    }
    async fn save_pending_authorization(
        &self,
        key: &str,
        pending: &PendingAuthorization,
    ) -> Result<bool, StorageError> {
        check_pending_key(key)?;
        let json = String::from_utf8(pending.to_json())
            .map_err(|_| StorageError::other("a pending authorization is not UTF-8"))?;
        sqlx::query(&self.st.purge_pending)
            .execute(&self.pool)
            .await
            .map_err(|e| sqlx_error("purge expired pending authorizations", &e))?;
        sqlx::query(&self.st.save_pending)
            .bind(key)
            .bind(json)
            .bind(ms(pending.remaining(SystemClock.now())))
            .execute(&self.pool)
            .await
            .map_err(|e| sqlx_error("save a pending authorization", &e))?;
        Ok(true)
    }
    async fn take_pending_authorization(
        &self,
        key: &str,
    ) -> Result<Option<PendingAuthorization>, StorageError> {
        check_pending_key(key)?;
        let row = sqlx::query(&self.st.read_pending)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| sqlx_error("read a pending authorization", &e))?;
        let Some(record) =
            row.map(|r| text(&r, 0)).transpose().map_err(|e| sqlx_error("read", &e))?.flatten()
        else {
            return Ok(None);
        };
        let deleted = sqlx::query(&self.st.delete_pending)
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(|e| sqlx_error("take a pending authorization", &e))?;
        if deleted.rows_affected() != 1 {
            return Ok(None); // another taker won
        }
        decode_pending(&record, &self.display).map(Some)
    }
}
