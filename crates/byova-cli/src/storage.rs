//! `BYOVA_STORAGE` / `--storage`: which token store the CLI uses.

use std::path::PathBuf;
use std::sync::Arc;

use byova_core::{InMemoryTokenStorage, StorageError, TokenStorage};

/// The default store when none is named: files under the user's data directory.
pub(crate) fn default_url() -> String {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    format!("file://{}", base.join("byova").display())
}

/// Whether a storage URL carries a password (`scheme://user:password@host`).
pub(crate) fn has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else { return false };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// Opens the store a URL names; `BYOVA_STORAGE_CA_FILE` (PEM) is the CA a TLS store's
/// certificate is checked against (system roots otherwise).
pub(crate) async fn open(url: &str) -> Result<Arc<dyn TokenStorage>, StorageError> {
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
        byova_core::redact_url(url)
    )))
}
