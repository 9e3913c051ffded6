//! Storage chosen by URL: `memory:`, `file:///dir`, `redis://…`, `postgres://…`, `mysql://…`,
//! `sqlite:///path.db`.

use std::sync::Arc;

use std::time::Duration;

use byova_core::{
    InMemoryTokenStorage, OAuthTokens, OrgId, StorageError, TokenKey,
    backend::{
        BlockingCoordinatedTokenStorage, CoordinatedTokenStorage, Expect, Lease, PendingAuthorization,
        Versioned,
    },
};

/// One store seen through both traits.
pub(crate) struct Storages {
    pub(crate) async_: Arc<dyn CoordinatedTokenStorage>,
    pub(crate) blocking: Arc<dyn BlockingCoordinatedTokenStorage>,
    /// Whether several processes can share it.
    pub(crate) shared: bool,
    /// The runtime an async store's connections belong to (sqlx pools are tied to theirs).
    pub(crate) runtime: Option<Arc<tokio::runtime::Runtime>>,
}

pub(crate) fn open(url: &str) -> Result<Storages, String> {
    if url == "memory:" {
        let s = Arc::new(InMemoryTokenStorage::new());
        return Ok(Storages { async_: s.clone(), blocking: s, shared: false, runtime: None });
    }
    if url.starts_with("file:") {
        let s = Arc::new(byova_storage_file::FileTokenStorage::from_url(url).map_err(|e| e.to_string())?);
        return Ok(Storages { async_: s.clone(), blocking: s, shared: true, runtime: None });
    }
    if ["redis://", "rediss://", "redis+cluster://", "rediss+cluster://"].iter().any(|p| url.starts_with(p)) {
        let s = Arc::new(byova_storage_redis::RedisTokenStorage::open(url).map_err(|e| e.to_string())?);
        return Ok(Storages { async_: s.clone(), blocking: s, shared: true, runtime: None });
    }
    if ["postgres://", "postgresql://", "mysql://", "mariadb://", "sqlite:"]
        .iter()
        .any(|p| url.starts_with(p))
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let sql = rt.block_on(byova_storage_sql::SqlTokenStorage::connect(url)).map_err(|e| e.to_string())?;
        let rt = Arc::new(rt);
        // The blocking flavour gets rusqlite for SQLite and an adapter over sqlx otherwise.
        let blocking: Arc<dyn BlockingCoordinatedTokenStorage> = if url.starts_with("sqlite:") {
            Arc::new(byova_storage_sql::SqliteBlockingStorage::open(url).map_err(|e| e.to_string())?)
        } else {
            Arc::new(OnRuntime { inner: sql.clone(), rt: rt.clone() })
        };
        return Ok(Storages { async_: Arc::new(sql), blocking, shared: true, runtime: Some(rt) });
    }
    Err(format!(
        "storage {url:?} is not supported (memory:, file:///dir, redis://host:port/db?prefix=NAME, postgres://…, mysql://…, sqlite:///path.db)"
    ))
}

/// The async SQL store driven from blocking code on a private runtime (the bench's blocking
/// flavour on Postgres and MySQL, where no blocking driver exists).
struct OnRuntime {
    inner: byova_storage_sql::SqlTokenStorage,
    rt: Arc<tokio::runtime::Runtime>,
}

macro_rules! on_runtime {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        impl BlockingCoordinatedTokenStorage for OnRuntime {
            $(fn $name(&self, $($arg: $ty),*) -> $ret {
                self.rt.block_on(CoordinatedTokenStorage::$name(&self.inner, $($arg),*))
            })*
        }
    };
}

on_runtime! {
    load(key: &TokenKey) -> Result<Option<Versioned<OAuthTokens>>, StorageError>;
    store(key: &TokenKey, t: &OAuthTokens, e: Expect) -> Result<u64, StorageError>;
    delete_org(org: &OrgId, e: Expect) -> Result<(), StorageError>;
    list_orgs() -> Result<Vec<OrgId>, StorageError>;
    try_acquire_lease(key: &TokenKey, ttl: Duration) -> Result<Option<Lease>, StorageError>;
    release_lease(lease: &Lease) -> Result<(), StorageError>;
    extend_lease(lease: &Lease, ttl: Duration) -> Result<bool, StorageError>;
    save_pending_authorization(key: &str, p: &PendingAuthorization) -> Result<bool, StorageError>;
    take_pending_authorization(key: &str) -> Result<Option<PendingAuthorization>, StorageError>;
    load_many(keys: &[TokenKey]) -> Result<Vec<Option<Versioned<OAuthTokens>>>, StorageError>;
    load_state(name: &str) -> Result<Option<Versioned<Vec<u8>>>, StorageError>;
    store_state(name: &str, bytes: &[u8], e: Expect) -> Result<u64, StorageError>;
}
