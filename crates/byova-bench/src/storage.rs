//! Storage chosen by URL: `memory:`, `file:///dir`, `redis://host:port/db?prefix=NAME`.

use std::sync::Arc;

use byova_core::{BlockingTokenStorage, InMemoryTokenStorage, TokenStorage};

/// One store seen through both traits.
pub(crate) struct Storages {
    pub(crate) async_: Arc<dyn TokenStorage>,
    pub(crate) blocking: Arc<dyn BlockingTokenStorage>,
    /// Whether several processes can share it.
    pub(crate) shared: bool,
}

pub(crate) fn open(url: &str) -> Result<Storages, String> {
    if url == "memory:" {
        let s = Arc::new(InMemoryTokenStorage::new());
        return Ok(Storages { async_: s.clone(), blocking: s, shared: false });
    }
    if url.starts_with("file:") {
        let s = Arc::new(byova_storage_file::FileTokenStorage::from_url(url).map_err(|e| e.to_string())?);
        return Ok(Storages { async_: s.clone(), blocking: s, shared: true });
    }
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        let s = Arc::new(byova_storage_redis::RedisTokenStorage::open(url).map_err(|e| e.to_string())?);
        return Ok(Storages { async_: s.clone(), blocking: s, shared: true });
    }
    Err(format!(
        "storage {url:?} is not supported by this build (memory:, file:///dir, redis://host:port/db?prefix=NAME)"
    ))
}
