//! `BYOVA_STORAGE` / `--storage`: which token store the CLI uses.

use std::path::PathBuf;
use std::sync::Arc;

use byova_core::backend::CoordinatedTokenStorage;
use byova_core::{InMemoryTokenStorage, StorageError};

/// The default store when none is named: files under the user's data directory.
pub(crate) fn default_url() -> String {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    format!("file://{}", base.join("byova").display())
}

/// Whether a storage URL carries a password: `scheme://user:password@host`, or a query
/// parameter such as `?password=` (the drivers read that too).
pub(crate) fn has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else { return false };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let in_userinfo = authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let query = rest.split_once('?').map_or("", |(_, q)| q);
    let in_query = query.split('&').any(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key).to_ascii_lowercase();
        !value.is_empty() && ["password", "pass", "passwd", "pwd"].contains(&key.as_str())
    });
    in_userinfo || in_query
}

/// What names a store in its URL: everything but the user info and the query, plus the
/// query's `prefix` and `table`.
fn store_identity(url: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (scheme, rest) = base.split_once("://").unwrap_or(("", base));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let mut names: Vec<&str> =
        query.split('&').filter(|p| p.starts_with("prefix=") || p.starts_with("table=")).collect();
    names.sort_unstable();
    format!("{}://{}/{path}?{}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase(), names.join("&"))
}

/// Rule 12: a plain `redis://` to a host other than this machine sends tokens (and any
/// password) across the network in clear; it is refused unless `allow_insecure` says so.
pub(crate) fn check_plaintext_redis(url: &str, allow_insecure: bool) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("redis://").or_else(|| lower.strip_prefix("redis+cluster://")) else {
        return Ok(());
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let remote = hosts.split(',').any(|host_port| {
        let host = match host_port.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => host_port.rsplit_once(':').map_or(host_port, |(h, _)| h),
        };
        !(host.is_empty()
            || host.eq_ignore_ascii_case("localhost")
            || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
    });
    if remote && !allow_insecure {
        return Err(format!(
            "{} is plain Redis on another host: tokens would cross the network in clear; use rediss:// (TLS), \
             or pass --allow-insecure-storage (BYOVA_ALLOW_INSECURE_STORAGE=1) on a network you trust",
            byova_core::backend::redact_url(url)
        ));
    }
    Ok(())
}

/// Opens the store a URL names; `BYOVA_STORAGE_CA_FILE` (PEM) is the CA a TLS store's
/// certificate is checked against (system roots otherwise).
pub(crate) async fn open(url: &str) -> Result<Arc<dyn CoordinatedTokenStorage>, StorageError> {
    let ca_file = std::env::var_os("BYOVA_STORAGE_CA_FILE").filter(|v| !v.is_empty()).map(PathBuf::from);
    let ca_file = ca_file.as_deref();
    if url == "memory:" {
        return Ok(Arc::new(InMemoryTokenStorage::new()));
    }
    if url.starts_with("file:") {
        return Ok(Arc::new(byova_storage_file::FileTokenStorage::from_url(url)?));
    }
    if ["redis://", "rediss://", "redis+cluster://", "rediss+cluster://"].iter().any(|p| url.starts_with(p)) {
        return Ok(Arc::new(byova_storage_redis::RedisTokenStorage::open_with_ca(url, ca_file)?));
    }
    if ["postgres://", "postgresql://", "mysql://", "mariadb://", "sqlite:"]
        .iter()
        .any(|p| url.starts_with(p))
    {
        return Ok(Arc::new(byova_storage_sql::SqlTokenStorage::connect_with_ca(url, ca_file).await?));
    }
    Err(StorageError::other(format!(
        "BYOVA_STORAGE {:?} is not a storage URL: use memory:, file:///dir, redis://host:port/db, redis+cluster://host:port,host:port/, postgres://…, mysql://… or sqlite:///path.db",
        byova_core::backend::redact_url(url)
    )))
}

/// Wraps a shared store (Redis, PostgreSQL, MySQL) in a local write-ahead journal
/// ([`byova_storage_file::Journaled`]), so tokens Webex issued survive this process being
/// killed, or the store being down, before the store confirmed them; entries an earlier process
/// left are replayed first. `journal`: a directory, `off`, or `None` for the default (under
/// `$XDG_STATE_HOME/byova/journal`, one directory per store). Stores on this host (files,
/// SQLite, memory) are durable or private already and get none.
pub(crate) async fn with_journal(
    store: Arc<dyn CoordinatedTokenStorage>,
    url: &str,
    journal: Option<&str>,
) -> Result<Arc<dyn CoordinatedTokenStorage>, StorageError> {
    let shared = !(url == "memory:" || url.starts_with("file:") || url.starts_with("sqlite:"));
    let dir = match journal {
        Some("off") => return Ok(store),
        Some(dir) => PathBuf::from(dir),
        None if !shared => return Ok(store),
        None => default_journal_dir(url),
    };
    Ok(byova_storage_file::Journaled::open(store, dir).await?)
}

/// One journal directory per store, named by a digest of what names the store (scheme, host,
/// port, database, and the `prefix` or `table` that make another store on the same server),
/// so entries are replayed into the store they were meant for, and a new password or TLS
/// setting does not strand them.
fn default_journal_dir(url: &str) -> PathBuf {
    use sha2::Digest;
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    let digest = sha2::Sha256::digest(store_identity(url).as_bytes());
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    base.join("byova").join("journal").join(name)
}

/// `%XX` escapes decoded (as the drivers decode query keys); anything else kept.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_found_in_any_spelling() {
        for url in [
            "postgres://u:p@db/x",
            "postgres://u@db/x?password=p",
            "mysql://db/x?a=1&PassWord=p",
            "postgres://db/x?pass%77ord=p",
        ] {
            assert!(has_password(url), "{url}");
        }
        assert!(!has_password("postgres://u@db/x?sslmode=require&password="));
    }

    #[test]
    fn the_journal_follows_the_store_not_its_password() {
        let a = store_identity("redis://:old@10.0.0.1:6379/0?prefix=p&timeout=1");
        assert_eq!(a, store_identity("redis://:new@10.0.0.1:6379/0?prefix=p"));
        assert_ne!(a, store_identity("redis://10.0.0.1:6379/0?prefix=q"));
        assert!(!a.contains("old"));
    }

    #[test]
    fn plain_redis_off_loopback_needs_the_allowance_in_any_case() {
        for url in
            ["redis://10.0.0.1:6379/0", "REDIS://10.0.0.1/0", "redis+cluster://127.0.0.1:1,10.0.0.2:2/"]
        {
            assert!(check_plaintext_redis(url, false).is_err(), "{url}");
            assert!(check_plaintext_redis(url, true).is_ok(), "{url}");
        }
        for url in ["redis://127.0.0.1:6379/0", "rediss://10.0.0.1/0", "redis://:pw@[::1]:1/0"] {
            assert!(check_plaintext_redis(url, false).is_ok(), "{url}");
        }
    }
}
