//! The SQL each database needs, written once: one table, a version column and lease columns,
//! leases judged by the database's clock.

/// Which database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Postgres,
    MySql,
    Sqlite,
}

/// Every statement the stores run, for one table.
#[derive(Clone, Debug)]
pub(crate) struct Statements {
    pub(crate) kind: Kind,
    pub(crate) create: String,
    pub(crate) ensure_row: String,
    pub(crate) load: String,
    /// Reads [`LOAD_MANY_BATCH`] rows by key (pad the list by repeating a key).
    pub(crate) load_many: String,
    pub(crate) load_for_update: String,
    pub(crate) update_record: String,
    pub(crate) delete: String,
    /// Deletes only the record at the given version (`rows affected = 1`).
    pub(crate) delete_version: String,
    pub(crate) list: String,
    pub(crate) acquire: String,
    pub(crate) release: String,
    pub(crate) extend: String,
    /// One-round-trip versioned writes, each returning the new version (no row: the
    /// expectation did not hold). `None` where the database cannot (MySQL: no `RETURNING`),
    /// which then uses a transaction; `store_version_affected` is MySQL's one-statement form
    /// for `Expect::Version` (the new version is the old plus one).
    pub(crate) store_any: Option<String>,
    pub(crate) store_absent: Option<String>,
    pub(crate) store_version: Option<String>,
    pub(crate) store_version_affected: String,
    /// The pending authorizations' table (`<table>_pending`).
    pub(crate) create_pending: String,
    /// Upserts a pending authorization expiring `$3` ms from the database's now.
    pub(crate) save_pending: String,
    pub(crate) purge_pending: String,
    pub(crate) read_pending: String,
    /// The taker whose delete removed the row (`rows affected = 1`) is the one that has it.
    pub(crate) delete_pending: String,
}

/// Keys per batched read.
pub(crate) const LOAD_MANY_BATCH: usize = 100;

impl Statements {
    pub(crate) fn new(kind: Kind, table: &str) -> Self {
        let p = |i: usize| if kind == Kind::Postgres { format!("${i}") } else { "?".to_owned() };
        let now = match kind {
            Kind::Postgres => "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
            Kind::MySql => "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
            Kind::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
        };
        let create = match kind {
            Kind::Postgres => format!(
                "CREATE TABLE IF NOT EXISTS {table} (key_name TEXT PRIMARY KEY, org_id TEXT, \
                 version BIGINT NOT NULL DEFAULT 0, record TEXT, lease_owner TEXT, lease_until BIGINT, \
                 lease_seq BIGINT NOT NULL DEFAULT 0)"
            ),
            Kind::MySql => format!(
                "CREATE TABLE IF NOT EXISTS {table} (\
                 key_name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY, \
                 org_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL, \
                 version BIGINT NOT NULL DEFAULT 0, record MEDIUMTEXT NULL, lease_owner VARCHAR(64) NULL, \
                 lease_until BIGINT NULL, lease_seq BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB"
            ),
            Kind::Sqlite => format!(
                "CREATE TABLE IF NOT EXISTS {table} (key_name TEXT PRIMARY KEY, org_id TEXT, \
                 version INTEGER NOT NULL DEFAULT 0, record TEXT, lease_owner TEXT, lease_until INTEGER, \
                 lease_seq INTEGER NOT NULL DEFAULT 0)"
            ),
        };
        let ensure_row = match kind {
            Kind::Postgres => format!(
                "INSERT INTO {table} (key_name, org_id) VALUES ($1, $2) ON CONFLICT (key_name) DO NOTHING"
            ),
            Kind::MySql => format!("INSERT IGNORE INTO {table} (key_name, org_id) VALUES (?, ?)"),
            Kind::Sqlite => format!("INSERT OR IGNORE INTO {table} (key_name, org_id) VALUES (?, ?)"),
        };
        let pending = format!("{table}_pending");
        let create_pending = match kind {
            Kind::Postgres => format!(
                "CREATE TABLE IF NOT EXISTS {pending} (key_name TEXT PRIMARY KEY, record TEXT NOT NULL, \
                 expires_at BIGINT NOT NULL)"
            ),
            Kind::MySql => format!(
                "CREATE TABLE IF NOT EXISTS {pending} (key_name CHAR(64) CHARACTER SET ascii NOT NULL PRIMARY KEY, \
                 record TEXT NOT NULL, expires_at BIGINT NOT NULL) ENGINE=InnoDB"
            ),
            Kind::Sqlite => format!(
                "CREATE TABLE IF NOT EXISTS {pending} (key_name TEXT PRIMARY KEY, record TEXT NOT NULL, \
                 expires_at INTEGER NOT NULL)"
            ),
        };
        let save_pending = match kind {
            Kind::Postgres => format!(
                "INSERT INTO {pending} (key_name, record, expires_at) VALUES ($1, $2, {now} + $3) \
                 ON CONFLICT (key_name) DO UPDATE SET record = EXCLUDED.record, expires_at = EXCLUDED.expires_at"
            ),
            Kind::MySql => {
                format!("REPLACE INTO {pending} (key_name, record, expires_at) VALUES (?, ?, {now} + ?)")
            }
            Kind::Sqlite => {
                format!(
                    "INSERT OR REPLACE INTO {pending} (key_name, record, expires_at) VALUES (?, ?, {now} + ?)"
                )
            }
        };
        let returning = kind != Kind::MySql;
        let upsert = |condition: &str| {
            format!(
                "INSERT INTO {table} (key_name, org_id, version, record) VALUES ({}, {}, 1, {}) \
                 ON CONFLICT (key_name) DO UPDATE SET record = excluded.record, version = {table}.version + 1{condition} \
                 RETURNING version",
                p(1),
                p(2),
                p(3)
            )
        };
        let store_any = returning.then(|| upsert(""));
        let store_absent = returning.then(|| upsert(&format!(" WHERE {table}.record IS NULL")));
        let store_version = returning.then(|| {
            format!(
                "UPDATE {table} SET record = {}, version = version + 1 \
                 WHERE key_name = {} AND version = {} AND record IS NOT NULL RETURNING version",
                p(1),
                p(2),
                p(3)
            )
        });
        let store_version_affected = format!(
            "UPDATE {table} SET record = {}, version = version + 1 WHERE key_name = {} AND version = {} AND record IS NOT NULL",
            p(1),
            p(2),
            p(3)
        );
        let for_update = if kind == Kind::Sqlite { "" } else { " FOR UPDATE" };
        Self {
            kind,
            create,
            ensure_row,
            load: format!("SELECT version, record FROM {table} WHERE key_name = {}", p(1)),
            load_many: format!(
                "SELECT key_name, version, record FROM {table} WHERE key_name IN ({})",
                (1..=LOAD_MANY_BATCH).map(p).collect::<Vec<_>>().join(", ")
            ),
            load_for_update: format!(
                "SELECT version, record FROM {table} WHERE key_name = {}{for_update}",
                p(1)
            ),
            update_record: format!(
                "UPDATE {table} SET record = {}, version = {} WHERE key_name = {}",
                p(1),
                p(2),
                p(3)
            ),
            delete: format!(
                "UPDATE {table} SET record = NULL, version = version + 1 WHERE key_name = {}",
                p(1)
            ),
            delete_version: format!(
                "UPDATE {table} SET record = NULL, version = version + 1 \
                 WHERE key_name = {} AND version = {} AND record IS NOT NULL",
                p(1),
                p(2)
            ),
            list: format!(
                "SELECT org_id FROM {table} WHERE org_id IS NOT NULL AND record IS NOT NULL ORDER BY org_id"
            ),
            acquire: format!(
                "UPDATE {table} SET lease_owner = {}, lease_until = {now} + {}, lease_seq = lease_seq + 1 \
                 WHERE key_name = {} AND (lease_until IS NULL OR lease_until < {now})",
                p(1),
                p(2),
                p(3)
            ),
            release: format!(
                "UPDATE {table} SET lease_owner = NULL, lease_until = NULL WHERE key_name = {} AND lease_owner = {}",
                p(1),
                p(2)
            ),
            extend: format!(
                "UPDATE {table} SET lease_until = {now} + {}, lease_seq = lease_seq + 1 \
                 WHERE key_name = {} AND lease_owner = {} AND lease_until >= {now}",
                p(1),
                p(2),
                p(3)
            ),
            store_any,
            store_absent,
            store_version,
            store_version_affected,
            create_pending,
            save_pending,
            purge_pending: format!("DELETE FROM {pending} WHERE expires_at < {now}"),
            read_pending: format!("SELECT record FROM {pending} WHERE key_name = {}", p(1)),
            delete_pending: format!("DELETE FROM {pending} WHERE key_name = {}", p(1)),
        }
    }
}

/// Parses a pending authorization read from `location`.
pub(crate) fn decode_pending(
    record: &str,
    location: &str,
) -> Result<byova_core::backend::PendingAuthorization, byova_core::StorageError> {
    byova_core::backend::PendingAuthorization::from_json(record.as_bytes()).map_err(|why| {
        byova_core::StorageError::corrupt(format!(
            "a pending authorization in {location} is unreadable: {why}"
        ))
    })
}

/// A pending authorization's key: 64 hex digits (the SHA-256 of its state).
pub(crate) fn check_pending_key(key: &str) -> Result<(), byova_core::StorageError> {
    if key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(byova_core::StorageError::other("a pending authorization key is 64 hex digits"))
    }
}

/// The primary key of a token key: `integration` or `org:<id>`, and the org id column.
pub(crate) fn key_columns(
    key: &byova_core::TokenKey,
) -> Result<(String, Option<String>), byova_core::StorageError> {
    match key {
        byova_core::TokenKey::Integration => Ok(("integration".to_owned(), None)),
        byova_core::TokenKey::Org(org) if org.len() > 250 => Err(byova_core::StorageError::other(format!(
            "org id {:?}… is longer than 250 bytes",
            org.chars().take(20).collect::<String>()
        ))),
        byova_core::TokenKey::Org(org) => Ok((format!("org:{org}"), Some(org.to_string()))),
    }
}

/// The row of a shared state (`state:<name>`; no org id, so listings never see it).
pub(crate) fn state_row(name: &str) -> Result<String, byova_core::StorageError> {
    byova_core::backend::check_state_name(name)?;
    Ok(format!("state:{name}"))
}

/// A table name from the URL's `table` parameter: letters, digits and `_` only.
pub(crate) fn check_table(name: &str) -> Result<(), byova_core::StorageError> {
    if !name.is_empty()
        && name.len() <= MAX_TABLE_NAME
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
    {
        Ok(())
    } else {
        Err(byova_core::StorageError::other(format!(
            "table name {name:?} must be 1-{MAX_TABLE_NAME} letters, digits or _ (not starting with a digit): \
             with the \"_pending\" table derived from it, names stay within MySQL's 64 characters"
        )))
    }
}

/// The longest table name: `<table>_pending` must fit MySQL's 64-character identifiers
/// (PostgreSQL's 63 too).
const MAX_TABLE_NAME: usize = 63 - "_pending".len();

/// Splits `?table=NAME` off a URL; the rest goes to the driver.
pub(crate) fn split_table(url: &str) -> Result<(String, String), byova_core::StorageError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut table = "byova_tokens".to_owned();
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("table", v)) => table = v.to_owned(),
            _ => kept.push(pair),
        }
    }
    check_table(&table)?;
    let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    Ok((rest, table))
}

/// A Postgres or MySQL URL with byova's TLS defaults: `ca_file` as the trusted CA unless the
/// URL names one; verified TLS for a host that is not loopback unless the URL chooses a mode;
/// and a CA never silently ignored: with one, `require` is upgraded to verifying the chain
/// (libpq's rule), and a mode without TLS is refused. Other URLs are returned as they are.
///
/// # Errors
/// A CA file with a mode that turns TLS off.
pub(crate) fn with_tls_defaults(
    url: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<String, byova_core::StorageError> {
    with_tls_defaults_in(url, ca_file, &|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

/// [`with_tls_defaults`] with the process environment read through `env` (`PGHOST`,
/// `PGHOSTADDR`, `PGSSLMODE`: sqlx reads them too, so the default is decided on the host and
/// mode sqlx will really use).
fn with_tls_defaults_in(
    url: &str,
    ca_file: Option<&std::path::Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, byova_core::StorageError> {
    let (mode_keys, ca_keys, verified, ca_verified, require, off): (&[&str], &[&str], _, _, &str, &[&str]) =
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (
                &["sslmode", "ssl-mode"],
                &["sslrootcert", "ssl-root-cert", "ssl-ca"],
                "verify-full",
                "verify-ca",
                "require",
                &["disable", "allow", "prefer"],
            )
        } else if url.starts_with("mysql://") {
            (
                &["ssl-mode"],
                &["ssl-ca"],
                "VERIFY_IDENTITY",
                "VERIFY_CA",
                "REQUIRED",
                &["DISABLED", "PREFERRED"],
            )
        } else {
            return Ok(url.to_owned());
        };
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut pairs: Vec<String> = query.split('&').filter(|p| !p.is_empty()).map(str::to_owned).collect();
    let value_of = |pairs: &[String], keys: &[&str]| {
        pairs.iter().find_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            keys.contains(&k).then(|| v.to_owned())
        })
    };
    let has_ca = ca_file.is_some() || value_of(&pairs, ca_keys).is_some();
    if let Some(ca) = ca_file
        && value_of(&pairs, ca_keys).is_none()
    {
        let path = ca.display().to_string();
        pairs.push(format!(
            "{}={}",
            ca_keys[0],
            percent_encoding::utf8_percent_encode(&path, percent_encoding::NON_ALPHANUMERIC)
        ));
    }
    let postgres = mode_keys.len() == 2;
    // A mode set in the environment is the operator's choice, as one in the URL is.
    let env_mode = if postgres { env("PGSSLMODE") } else { None };
    let host = if postgres { postgres_host(url, &pairs, env) } else { url_host(url) };
    if value_of(&pairs, mode_keys).is_none()
        && let Some(mode) = env_mode
    {
        // Rule 12: an inherited mode that may skip verification is not taken for a database on
        // another host; naming it in the URL is the explicit way.
        if !is_local_host(&host) && off.iter().any(|o| o.eq_ignore_ascii_case(&mode)) {
            return Err(byova_core::StorageError::other(format!(
                "PGSSLMODE={mode} would let {host} be reached without verified TLS; name sslmode={mode} in the \
                 storage URL to choose it, or unset PGSSLMODE"
            )));
        }
        // Written into the URL, so a CA upgrades it as one named there would be.
        pairs.push(format!("{}={mode}", mode_keys[0]));
    }
    match value_of(&pairs, mode_keys) {
        None if has_ca || !is_local_host(&host) => pairs.push(format!("{}={verified}", mode_keys[0])),
        None => {}
        Some(mode) if has_ca && mode.eq_ignore_ascii_case(require) => {
            // `require` alone accepts any certificate; with a CA the chain is checked.
            for p in &mut pairs {
                if mode_keys.iter().any(|k| p.starts_with(&format!("{k}="))) {
                    *p = format!("{}={ca_verified}", mode_keys[0]);
                }
            }
        }
        Some(mode) if has_ca && off.iter().any(|o| o.eq_ignore_ascii_case(&mode)) => {
            return Err(byova_core::StorageError::other(format!(
                "a CA file was given but the URL's {}={mode} may not use TLS: drop the CA file or ask for TLS",
                mode_keys[0]
            )));
        }
        Some(_) => {}
    }
    Ok(if pairs.is_empty() { base.to_owned() } else { format!("{base}?{}", pairs.join("&")) })
}

/// The host in the URL's authority (empty when it names none).
fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.rsplit_once(':').map_or(host_port, |(h, _)| h),
    };
    host.to_owned()
}

/// The host sqlx's Postgres driver will connect to: the last `host=` or `hostaddr=` of the
/// query, else the URL's authority, else `PGHOSTADDR`, else `PGHOST`, else this machine.
fn postgres_host(url: &str, pairs: &[String], env: &dyn Fn(&str) -> Option<String>) -> String {
    let from_query = pairs.iter().rev().find_map(|p| {
        let (k, v) = p.split_once('=')?;
        matches!(k, "host" | "hostaddr")
            .then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
    });
    from_query
        .or_else(|| Some(url_host(url)).filter(|h| !h.is_empty()))
        .or_else(|| env("PGHOSTADDR"))
        .or_else(|| env("PGHOST"))
        .unwrap_or_default()
}

/// Whether `host` is this machine: loopback, `localhost`, a Unix socket path, or none.
fn is_local_host(host: &str) -> bool {
    host.is_empty()
        || host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The database file a `sqlite:` URL names (`None` for an in-memory database).
pub(crate) fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let in_memory = path.is_empty() || path == ":memory:" || query.split('&').any(|p| p == "mode=memory");
    (!in_memory).then(|| std::path::PathBuf::from(path))
}

/// Makes the SQLite database file (created if missing) and its `-wal` and `-shm` companions
/// readable by their owner only, whatever the umask: they hold refresh tokens (in clear unless
/// sealed). SQLite creates the companions with the database file's mode.
pub(crate) fn private_sqlite_files(path: &std::path::Path) -> Result<(), byova_core::StorageError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let fail = |what: &str, e: std::io::Error| {
            byova_core::StorageError::other(format!("cannot {what} {}: {e}", path.display()))
        };
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| fail("create", e))?;
        let companions = ["", "-wal", "-shm"].map(|suffix| {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            std::path::PathBuf::from(name)
        });
        for file in companions {
            match std::fs::metadata(&file) {
                Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| fail("make private", e))?;
                }
                _ => {}
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_keys_and_urls() {
        assert_eq!(
            split_table("postgres://u@h/db?table=t1&sslmode=disable").unwrap(),
            ("postgres://u@h/db?sslmode=disable".into(), "t1".into())
        );
        assert_eq!(split_table("sqlite:///x.db").unwrap().1, "byova_tokens");
        assert!(split_table("mysql://h/db?table=drop;--").is_err());
        assert!(split_table("mysql://h/db?table=1abc").is_err());
        assert_eq!(
            key_columns(&byova_core::TokenKey::org(&byova_core::OrgId::from_static("o"))).unwrap(),
            ("org:o".into(), Some("o".into()))
        );
        assert_eq!(
            byova_core::backend::redact_url("postgres://user:SECRET@db:5432/x?table=t"),
            "postgres://***@db:5432/x"
        );
        let s = Statements::new(Kind::Postgres, "t");
        assert!(s.update_record.contains("$3") && s.load_for_update.ends_with("FOR UPDATE"));
        assert!(!Statements::new(Kind::Sqlite, "t").load_for_update.contains("FOR UPDATE"));
    }

    #[test]
    fn tls_defaults_verify_remote_databases_and_add_the_ca() {
        let ca = std::path::Path::new("/etc/byova/ca.pem");
        let d = |url: &str, ca: Option<&std::path::Path>| with_tls_defaults(url, ca).unwrap();
        assert_eq!(d("postgres://u@127.0.0.1/db", None), "postgres://u@127.0.0.1/db");
        assert_eq!(d("postgres://u@localhost:5432/db", None), "postgres://u@localhost:5432/db");
        assert_eq!(d("postgres://u@db.example/db", None), "postgres://u@db.example/db?sslmode=verify-full");
        assert_eq!(
            d("postgres://u@db.example/db?sslmode=require", None),
            "postgres://u@db.example/db?sslmode=require",
            "the URL's own mode wins"
        );
        assert_eq!(
            d("postgres://u@127.0.0.1:15433/db", Some(ca)),
            "postgres://u@127.0.0.1:15433/db?sslrootcert=%2Fetc%2Fbyova%2Fca%2Epem&sslmode=verify-full"
        );
        assert_eq!(
            d("postgres://u@db.example/db?sslmode=require", Some(ca)),
            "postgres://u@db.example/db?sslmode=verify-ca&sslrootcert=%2Fetc%2Fbyova%2Fca%2Epem",
            "require with a CA checks the chain"
        );
        assert_eq!(
            d("postgres://u@db.example/db?ssl-root-cert=/x.pem&sslmode=require", None),
            "postgres://u@db.example/db?ssl-root-cert=/x.pem&sslmode=verify-ca",
            "sqlx's own spelling of the CA parameter counts"
        );
        assert!(with_tls_defaults("postgres://u@db.example/db?sslmode=disable", Some(ca)).is_err());
        assert_eq!(
            d("mysql://root@10.0.0.5:3306/test?ssl-ca=/x.pem", Some(ca)),
            "mysql://root@10.0.0.5:3306/test?ssl-ca=/x.pem&ssl-mode=VERIFY_IDENTITY"
        );
        assert_eq!(
            d("mysql://root@10.0.0.5/test?ssl-mode=REQUIRED", Some(ca)),
            "mysql://root@10.0.0.5/test?ssl-mode=VERIFY_CA&ssl-ca=%2Fetc%2Fbyova%2Fca%2Epem"
        );
        assert_eq!(d("sqlite:///tmp/x.db", Some(ca)), "sqlite:///tmp/x.db");
        assert_eq!(d("postgres://u:p@[::1]:5432/db", None), "postgres://u:p@[::1]:5432/db");
    }

    /// Item 6 of the brief: the default is decided on the host sqlx will really use: a
    /// `host=` or `hostaddr=` in the query, or `PGHOSTADDR`/`PGHOST` when the URL names none;
    /// a mode in `PGSSLMODE` is the operator's, as one in the URL.
    #[test]
    fn table_names_leave_room_for_the_derived_ones() {
        let longest = format!("t{}", "x".repeat(MAX_TABLE_NAME - 1));
        assert!(check_table(&longest).is_ok());
        assert!(format!("{longest}_pending").len() <= 63);
        let err = check_table(&format!("{longest}x")).unwrap_err().to_string();
        assert!(err.contains("64 characters"), "{err}");
        assert!(split_table(&format!("mysql://db/x?table={longest}y")).is_err(), "refused at start");
    }

    #[test]
    fn tls_defaults_follow_the_host_sqlx_connects_to() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        let none = env(&[]);
        let d = |url: &str, e: &dyn Fn(&str) -> Option<String>| with_tls_defaults_in(url, None, e).unwrap();
        assert_eq!(
            d("postgres://u@127.0.0.1/db?host=db.example", &none),
            "postgres://u@127.0.0.1/db?host=db.example&sslmode=verify-full"
        );
        assert_eq!(
            d("postgres://u@localhost/db?hostaddr=10.0.0.7", &none),
            "postgres://u@localhost/db?hostaddr=10.0.0.7&sslmode=verify-full"
        );
        assert_eq!(
            d("postgres://u@db.example/db?host=%2Fvar%2Frun%2Fpostgresql", &none),
            "postgres://u@db.example/db?host=%2Fvar%2Frun%2Fpostgresql",
            "a Unix socket is local"
        );
        assert_eq!(
            d("postgres:///db", &env(&[("PGHOST", "db.example")])),
            "postgres:///db?sslmode=verify-full"
        );
        assert_eq!(
            d("postgres:///db", &env(&[("PGHOSTADDR", "10.1.2.3"), ("PGHOST", "localhost")])),
            "postgres:///db?sslmode=verify-full"
        );
        assert_eq!(d("postgres:///db", &env(&[("PGHOST", "/tmp")])), "postgres:///db");
        assert_eq!(d("postgres:///db", &none), "postgres:///db", "this machine by default");
        assert_eq!(
            d("postgres://u@db.example/db", &env(&[("PGSSLMODE", "require")])),
            "postgres://u@db.example/db?sslmode=require",
            "PGSSLMODE is honoured"
        );
        assert_eq!(
            d("postgres://u@127.0.0.1/db", &env(&[("PGSSLMODE", "disable")])),
            "postgres://u@127.0.0.1/db?sslmode=disable"
        );
        let weak = with_tls_defaults_in("postgres://u@db.example/db", None, &env(&[("PGSSLMODE", "prefer")]));
        assert!(
            weak.unwrap_err().to_string().contains("PGSSLMODE=prefer"),
            "an inherited weak mode is refused off this host"
        );
        let ca = std::path::Path::new("/ca.pem");
        assert_eq!(
            with_tls_defaults_in("postgres://u@db.example/db", Some(ca), &env(&[("PGSSLMODE", "require")]))
                .unwrap(),
            "postgres://u@db.example/db?sslrootcert=%2Fca%2Epem&sslmode=verify-ca",
            "a CA upgrades an inherited require too"
        );
    }
}
