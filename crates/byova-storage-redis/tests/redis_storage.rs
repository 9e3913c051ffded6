//! The Redis store against the real Redis (`BYOVA_TEST_REDIS_URL`, set by `cargo xtask test`):
//! the conformance suite in both flavours, multi-process herds, a stalled lease holder, a
//! Redis restart, and network faults (latency, cut, black hole, trickle) before and during a
//! refresh. A custom harness: the binary re-runs itself as herd children.

use byova_core::OrgId;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use byova_core::{
    AccessToken, BlockingTokenStorage, Clock, OAuthTokens, StorageError, StorageErrorKind, SystemClock,
    Timestamp, TokenKey, TokenStorage, async_trait,
    backend::{BlockingCoordinatedTokenStorage, CoordinatedTokenStorage, Expect, Versioned},
};
use byova_storage_redis::RedisTokenStorage;
use byova_testkit::{FakeWebex, conformance};
use byova_tests::herd;

fn base_url() -> Option<String> {
    std::env::var("BYOVA_TEST_REDIS_URL").ok().filter(|u| !u.is_empty())
}

/// The TLS-only Redis, its CA and an unrelated CA (`cargo xtask test` starts it).
fn tls_setup() -> Option<(String, String, String)> {
    let get = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    Some((get("BYOVA_TEST_REDIS_TLS_URL")?, get("BYOVA_TEST_TLS_CA")?, get("BYOVA_TEST_TLS_WRONG_CA")?))
}

/// `rediss://` with the right CA passes the whole conformance suite; with a wrong CA every
/// call fails with one clear, non-retryable error; plain `redis://` to the TLS port never
/// gets an answer.
fn tls_right_ca_wrong_ca_and_plaintext(tls: &(String, String, String)) {
    let (url, ca, wrong) = tls;
    let prefix = unique_prefix("tls");
    let store = Arc::new(
        RedisTokenStorage::open_with_ca(&with_prefix(url, &prefix), Some(std::path::Path::new(ca))).unwrap(),
    );
    let report = conformance::check_blocking_token_storage(store.clone(), None);
    println!("  rediss:// with the right CA: {} conformance cases passed", report.passed.len());
    let wrong_store =
        RedisTokenStorage::open_with_ca(&with_prefix(url, &prefix), Some(std::path::Path::new(wrong)))
            .unwrap();
    let err = BlockingTokenStorage::get_integration_tokens(&wrong_store).unwrap_err();
    println!("  rediss:// with a wrong CA: {err}");
    assert_eq!(err.kind(), StorageErrorKind::Other, "{err}");
    assert!(err.to_string().contains("TLS failed") && !err.to_string().contains('\n'), "{err}");
    let system_roots = RedisTokenStorage::open(&with_prefix(url, &prefix)).unwrap();
    let err = BlockingTokenStorage::get_integration_tokens(&system_roots).unwrap_err();
    assert!(err.to_string().contains("TLS failed"), "a private CA is not in the system roots: {err}");
    let plain = url.replacen("rediss://", "redis://", 1);
    let started = Instant::now();
    let plain_store = RedisTokenStorage::open(&with_prefix(&plain, &prefix)).unwrap();
    let err = BlockingTokenStorage::get_integration_tokens(&plain_store).unwrap_err();
    println!("  redis:// to the TLS port: {err} (after {:?})", started.elapsed());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let async_store =
        RedisTokenStorage::open_with_ca(&with_prefix(url, &prefix), Some(std::path::Path::new(ca))).unwrap();
    rt.block_on(async {
        TokenStorage::set_integration_tokens(&async_store, &counter(7)).await.unwrap();
        let back = TokenStorage::get_integration_tokens(&async_store).await.unwrap().unwrap();
        assert!(back.access_token.ct_eq_str("7"), "the async flavour over TLS");
        let wrong_async =
            RedisTokenStorage::open_with_ca(&with_prefix(url, &prefix), Some(std::path::Path::new(wrong)))
                .unwrap();
        let err = TokenStorage::get_integration_tokens(&wrong_async).await.unwrap_err();
        assert!(err.to_string().contains("TLS failed"), "{err}");
    });
    let cleanup_client = redis::Client::build_with_tls(
        url.as_str(),
        redis::TlsCertificates { client_tls: None, root_cert: Some(std::fs::read(ca).unwrap()) },
    )
    .unwrap();
    let mut conn = cleanup_client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{{{prefix}}}*")).query(&mut conn).unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query(&mut conn).unwrap();
    }
}

/// The cluster's nodes as plain `redis://` URLs.
fn cluster_nodes(url: &str) -> Vec<String> {
    let hosts = url.trim_start_matches("redis+cluster://").split(['/', '?']).next().unwrap_or_default();
    hosts.split(',').map(|h| format!("redis://{h}")).collect()
}

/// How many keys of `prefix` each node holds.
fn keys_per_node(url: &str, prefix: &str) -> Vec<usize> {
    cluster_nodes(url)
        .iter()
        .map(|node| {
            let mut conn = redis::Client::open(node.as_str()).unwrap().get_connection().unwrap();
            let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{{{prefix}*")).query(&mut conn).unwrap();
            keys.len()
        })
        .collect()
}

fn cluster_cleanup(url: &str, prefix: &str) {
    for node in cluster_nodes(url) {
        let mut conn = redis::Client::open(node.as_str()).unwrap().get_connection().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{{{prefix}*")).query(&mut conn).unwrap();
        for key in keys {
            let _: () = redis::cmd("UNLINK").arg(key).query(&mut conn).unwrap();
        }
    }
}

fn cluster_corrupter(url: &str, store: &RedisTokenStorage) -> conformance::Corrupter {
    let client = redis::cluster::ClusterClient::new(cluster_nodes(url)).unwrap();
    let store = store.clone();
    Box::new(move |key| {
        let mut conn = client.get_connection().unwrap();
        let _: () = redis::cmd("HSET")
            .arg(store.record_key(key))
            .arg("v")
            .arg(1)
            .arg("r")
            .arg("{\"schema\":1,")
            .query(&mut conn)
            .unwrap();
    })
}

/// The whole conformance suite, both flavours, on a three-node cluster; the records of the
/// suite's orgs end up on more than one node.
fn cluster_conformance(url: &str) {
    let prefix = unique_prefix("cluster");
    let store = RedisTokenStorage::open(&with_prefix(url, &prefix)).unwrap();
    let report = conformance::check_blocking_token_storage(
        Arc::new(store.clone()),
        Some(cluster_corrupter(url, &store)),
    );
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let async_store = RedisTokenStorage::open(&with_prefix(url, &prefix)).unwrap();
    let report = rt.block_on(conformance::check_token_storage(
        Arc::new(async_store.clone()),
        Some(cluster_corrupter(url, &async_store)),
    ));
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    for i in 0..30 {
        BlockingTokenStorage::set_service_app_tokens(
            &store,
            &OrgId::new(&format!("org-{i}")).unwrap(),
            &counter(i),
        )
        .unwrap();
    }
    assert_eq!(BlockingTokenStorage::list_registered_orgs(&store).unwrap().len(), 30);
    BlockingTokenStorage::delete_service_app_tokens(&store, &OrgId::from_static("org-0")).unwrap();
    assert!(
        !BlockingTokenStorage::list_registered_orgs(&store).unwrap().contains(&OrgId::from_static("org-0"))
    );
    BlockingTokenStorage::set_service_app_tokens(&store, &OrgId::from_static("org-0"), &counter(0)).unwrap();
    assert!(
        BlockingTokenStorage::list_registered_orgs(&store).unwrap().contains(&OrgId::from_static("org-0")),
        "re-registered"
    );
    for i in 30..3_000 {
        BlockingTokenStorage::set_service_app_tokens(
            &store,
            &OrgId::new(&format!("org-{i}")).unwrap(),
            &counter(i),
        )
        .unwrap();
    }
    let started = Instant::now();
    assert_eq!(BlockingTokenStorage::list_registered_orgs(&store).unwrap().len(), 3_000);
    let blocking_list = started.elapsed();
    let started = Instant::now();
    assert_eq!(rt.block_on(TokenStorage::list_registered_orgs(&async_store)).unwrap().len(), 3_000);
    println!(
        "  cluster: listing 3,000 orgs took {blocking_list:?} (blocking), {:?} (async)",
        started.elapsed()
    );
    let spread = keys_per_node(url, &prefix);
    println!("  cluster: 3,000 orgs' keys per node: {spread:?}");
    assert!(spread.iter().filter(|n| **n > 0).count() >= 2, "a fleet spreads over the shards: {spread:?}");
    cluster_cleanup(url, &prefix);
}

fn cluster_herd(url: &str, flavour: herd::Flavour) {
    let prefix = unique_prefix("cluster-herd");
    let storage_url = with_prefix(url, &prefix);
    let store = RedisTokenStorage::open(&storage_url).unwrap();
    herd::run(flavour, &storage_url, |expired| {
        BlockingTokenStorage::set_integration_tokens(&store, expired).unwrap()
    });
    cluster_cleanup(url, &prefix);
}

fn with_prefix(url: &str, prefix: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}prefix={prefix}")
}

fn unique_prefix(name: &str) -> String {
    format!("byova-test-{name}-{}-{:x}", std::process::id(), byova_core::engine::random_u64())
}

/// Deletes every key of a test prefix.
fn cleanup(url: &str, prefix: &str) {
    let client = redis::Client::open(url.split('?').next().unwrap()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{{{prefix}}}*")).query(&mut conn).unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query(&mut conn).unwrap();
    }
}

fn counter(n: u64) -> OAuthTokens {
    OAuthTokens::new(AccessToken::new(n.to_string()), 3600, Timestamp::from_unix_secs(n))
}

fn corrupter(url: &str, store: &RedisTokenStorage) -> conformance::Corrupter {
    let client = redis::Client::open(url.split('?').next().unwrap()).unwrap();
    let store = store.clone();
    Box::new(move |key| {
        let mut conn = client.get_connection().unwrap();
        let _: () = redis::cmd("HSET")
            .arg(store.record_key(key))
            .arg("v")
            .arg(1)
            .arg("r")
            .arg("{\"schema\":1,")
            .query(&mut conn)
            .unwrap();
    })
}

fn conformance_blocking(url: &str) {
    let prefix = unique_prefix("conf-b");
    let store = RedisTokenStorage::open(&with_prefix(url, &prefix)).unwrap();
    let report =
        conformance::check_blocking_token_storage(Arc::new(store.clone()), Some(corrupter(url, &store)));
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    cleanup(url, &prefix);
}

fn conformance_async(url: &str) {
    let prefix = unique_prefix("conf-a");
    let store = RedisTokenStorage::open(&with_prefix(url, &prefix)).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let report =
        rt.block_on(conformance::check_token_storage(Arc::new(store.clone()), Some(corrupter(url, &store))));
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    cleanup(url, &prefix);
}

fn multi_process_herd(url: &str, flavour: herd::Flavour) {
    let prefix = unique_prefix("herd");
    let storage_url = with_prefix(url, &prefix);
    let store = RedisTokenStorage::open(&storage_url).unwrap();
    herd::run(flavour, &storage_url, |expired| {
        BlockingTokenStorage::set_integration_tokens(&store, expired).unwrap()
    });
    cleanup(url, &prefix);
}

fn open_redis(url: &str) -> Arc<RedisTokenStorage> {
    Arc::new(RedisTokenStorage::open(url).unwrap())
}

fn a_late_write_from_an_expired_lease_holder_is_rejected(url: &str) {
    let prefix = unique_prefix("late");
    let store = RedisTokenStorage::open(&with_prefix(url, &prefix)).unwrap();
    let store: &dyn BlockingCoordinatedTokenStorage = &store;
    let key = TokenKey::Integration;
    let v1 = store.store(&key, &counter(1), Expect::Absent).unwrap();
    let a = store.try_acquire_lease(&key, Duration::from_millis(200)).unwrap().expect("A gets the lease");
    let seen_by_a = store.load(&key).unwrap().unwrap().version;
    std::thread::sleep(Duration::from_millis(400)); // A stalls past its lease
    let b =
        store.try_acquire_lease(&key, Duration::from_secs(10)).unwrap().expect("B gets the expired lease");
    store.store(&key, &counter(2), Expect::Version(v1)).unwrap();
    assert!(!store.extend_lease(&a, Duration::from_secs(10)).unwrap(), "A cannot extend B's lease");
    let late = store.store(&key, &counter(3), Expect::Version(seen_by_a)).unwrap_err();
    assert_eq!(late.kind(), StorageErrorKind::Conflict, "A's late write affects nothing");
    store.release_lease(&a).unwrap();
    assert!(
        store.try_acquire_lease(&key, Duration::from_secs(1)).unwrap().is_none(),
        "A's release left B's lease alone"
    );
    store.release_lease(&b).unwrap();
    assert_eq!(store.load(&key).unwrap().unwrap().value.access_token.expose_secret(), "2");
    cleanup(url, &prefix);
}

/// Delegates to Redis, but stalls after its `stall_on`-th load, like a paused process.
struct Stalling {
    inner: RedisTokenStorage,
    loads: AtomicUsize,
    stall_on: usize,
    stall: Duration,
}

#[async_trait]
impl CoordinatedTokenStorage for Stalling {
    async fn delete_org(&self, org: &OrgId, e: Expect) -> Result<(), StorageError> {
        CoordinatedTokenStorage::delete_org(&self.inner, org, e).await
    }
    async fn list_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
        CoordinatedTokenStorage::list_orgs(&self.inner).await
    }
    async fn load(&self, key: &TokenKey) -> Result<Option<Versioned<OAuthTokens>>, StorageError> {
        let loaded = CoordinatedTokenStorage::load(&self.inner, key).await;
        if self.loads.fetch_add(1, Ordering::SeqCst) + 1 == self.stall_on {
            tokio::time::sleep(self.stall).await;
        }
        loaded
    }
    async fn store(&self, key: &TokenKey, t: &OAuthTokens, e: Expect) -> Result<u64, StorageError> {
        CoordinatedTokenStorage::store(&self.inner, key, t, e).await
    }
    async fn try_acquire_lease(
        &self,
        key: &TokenKey,
        ttl: Duration,
    ) -> Result<Option<byova_core::backend::Lease>, StorageError> {
        CoordinatedTokenStorage::try_acquire_lease(&self.inner, key, ttl).await
    }
    async fn release_lease(&self, lease: &byova_core::backend::Lease) -> Result<(), StorageError> {
        CoordinatedTokenStorage::release_lease(&self.inner, lease).await
    }
    async fn extend_lease(
        &self,
        lease: &byova_core::backend::Lease,
        ttl: Duration,
    ) -> Result<bool, StorageError> {
        CoordinatedTokenStorage::extend_lease(&self.inner, lease, ttl).await
    }
}

fn a_stalled_lease_holder_never_reuses_a_rotated_refresh_token(url: &str) {
    let prefix = unique_prefix("stall");
    let storage_url = with_prefix(url, &prefix);
    let fake = FakeWebex::start();
    fake.update_settings(|s| {
        s.rotate_refresh_tokens = true;
        s.strict_rotation = true;
    });
    let redis = RedisTokenStorage::open(&storage_url).unwrap();
    let issued = fake.issue_integration_tokens();
    BlockingTokenStorage::set_integration_tokens(&redis, &issued.expired_at(SystemClock.now())).unwrap();
    let mut config = fake.config();
    config.coordination.lease_ttl = Duration::from_millis(300);
    config.coordination.poll_interval = Duration::from_millis(20);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (a_token, b_token) = rt.block_on(async {
        let http = byova_async::HttpClient::new(Duration::from_secs(10)).unwrap();
        // A stalls 1 s right after its read under the lease (its second load).
        let stalling = Arc::new(Stalling {
            inner: redis.clone(),
            loads: AtomicUsize::new(0),
            stall_on: 2,
            stall: Duration::from_secs(1),
        });
        let a = byova_async::IntegrationTokenManager::new(
            fake.integration_credentials(),
            http.clone(),
            stalling,
            config.clone(),
        );
        let b = byova_async::IntegrationTokenManager::new(
            fake.integration_credentials(),
            http,
            Arc::new(redis.clone()),
            config,
        );
        let a_task = tokio::spawn(async move { a.get_access_token().await });
        tokio::time::sleep(Duration::from_millis(500)).await; // A's lease has run out
        let b_token = b.get_access_token().await.expect("B refreshes");
        (a_task.await.unwrap().expect("A ends with a valid token"), b_token)
    });
    assert_eq!(fake.reused_refresh_tokens(), 0, "no refresh token was presented twice");
    assert_eq!(fake.refresh_calls(), 1, "only B called the token endpoint");
    assert!(a_token.ct_eq(&b_token), "A returned B's tokens");
    assert!(fake.is_access_token_valid(b_token.expose_secret()));
    cleanup(url, &prefix);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_redis(port: u16, dir: &std::path::Path) {
    let status = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "yes",
            "--save",
            "",
            "--appendonly",
            "yes",
        ])
        .args(["--appendfsync", "always", "--dir", dir.to_str().unwrap(), "--logfile", "redis.log"])
        .status()
        .expect("redis-server is installed");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop_redis(port: u16) {
    let _ = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "shutdown"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "redis-server did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn a_redis_restart_gives_retryable_errors_and_loses_nothing() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!(
        "byova-redis-restart-{}-{:x}",
        std::process::id(),
        byova_core::engine::random_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    start_redis(port, &dir);
    let url = format!("redis://127.0.0.1:{port}/0?prefix=restart");
    let store = RedisTokenStorage::open(&url).unwrap();
    let bs: &dyn BlockingCoordinatedTokenStorage = &store;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    bs.set_service_app_tokens(&OrgId::from_static("org-1"), &counter(7)).unwrap();
    rt.block_on(TokenStorage::set_integration_tokens(&store, &counter(8))).unwrap();
    stop_redis(port);
    let blocking_err = bs.get_service_app_tokens(&OrgId::from_static("org-1")).unwrap_err();
    assert_eq!(blocking_err.kind(), StorageErrorKind::Unavailable, "{blocking_err}");
    assert!(blocking_err.is_retryable());
    let async_err = rt.block_on(TokenStorage::get_integration_tokens(&store)).unwrap_err();
    assert!(async_err.is_retryable(), "{async_err}");
    start_redis(port, &dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    let recovered = loop {
        match (
            bs.get_service_app_tokens(&OrgId::from_static("org-1")),
            rt.block_on(TokenStorage::get_integration_tokens(&store)),
        ) {
            (Ok(a), Ok(b)) => break (a, b),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            (a, b) => panic!("no recovery after restart: {a:?} {b:?}"),
        }
    };
    assert_eq!(recovered.0.unwrap().access_token.expose_secret(), "7", "the org's tokens survived");
    assert_eq!(recovered.1.unwrap().access_token.expose_secret(), "8", "the Integration's tokens survived");
    assert_eq!(bs.list_registered_orgs().unwrap(), ["org-1"]);
    stop_redis(port);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Network faults between byova and Redis before and during a refresh (see
/// `byova_tests::netfaults`).
fn store_faults_during_a_refresh(url: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let prefixes = std::sync::Mutex::new(Vec::new());
    let fresh = |url: &str, _: usize| {
        let prefix = unique_prefix("netfault");
        prefixes.lock().unwrap().push(prefix.clone());
        with_prefix(url, &prefix)
    };
    let open: byova_tests::netfaults::Open =
        Box::new(|url| Box::pin(async move { open_redis(&url) as Arc<dyn CoordinatedTokenStorage> }));
    let rows = byova_tests::netfaults::refresh_matrix(&rt, url, &fresh, &open);
    byova_tests::netfaults::print("redis", &rows);
    for prefix in prefixes.into_inner().unwrap() {
        cleanup(url, &prefix);
    }
}

fn main() {
    if herd::child_main(
        |url| Box::pin(async move { open_redis(&url) as Arc<dyn CoordinatedTokenStorage> }),
        |url| open_redis(url),
    ) {
        return;
    }
    let Some(url) = base_url() else {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            eprintln!("BYOVA_TEST_REDIS_URL is not set: CI must test the Redis store against a real Redis");
            std::process::exit(1);
        }
        println!("redis storage tests skipped: BYOVA_TEST_REDIS_URL is not set (cargo xtask test sets it)");
        println!("\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
        return;
    };
    let cases: Vec<(&str, byova_testkit::harness::Case)> = vec![
        (
            "conformance_blocking",
            Box::new({
                let u = url.clone();
                move || conformance_blocking(&u)
            }),
        ),
        (
            "conformance_async",
            Box::new({
                let u = url.clone();
                move || conformance_async(&u)
            }),
        ),
        (
            "multi_process_herd_async",
            Box::new({
                let u = url.clone();
                move || multi_process_herd(&u, herd::Flavour::Async)
            }),
        ),
        (
            "multi_process_herd_blocking",
            Box::new({
                let u = url.clone();
                move || multi_process_herd(&u, herd::Flavour::Blocking)
            }),
        ),
        (
            "a_late_write_from_an_expired_lease_holder_is_rejected",
            Box::new({
                let u = url.clone();
                move || a_late_write_from_an_expired_lease_holder_is_rejected(&u)
            }),
        ),
        (
            "a_stalled_lease_holder_never_reuses_a_rotated_refresh_token",
            Box::new({
                let u = url.clone();
                move || a_stalled_lease_holder_never_reuses_a_rotated_refresh_token(&u)
            }),
        ),
        (
            "store_faults_during_a_refresh",
            Box::new({
                let u = url.clone();
                move || store_faults_during_a_refresh(&u)
            }),
        ),
        (
            "a_redis_restart_gives_retryable_errors_and_loses_nothing",
            Box::new(a_redis_restart_gives_retryable_errors_and_loses_nothing),
        ),
    ];
    let mut cases = cases;
    match std::env::var("BYOVA_TEST_REDIS_CLUSTER_URL").ok().filter(|v| !v.is_empty()) {
        Some(cluster) => {
            let (a, b, c) = (cluster.clone(), cluster.clone(), cluster);
            cases.push(("cluster_conformance", Box::new(move || cluster_conformance(&a))));
            cases.push(("cluster_herd_async", Box::new(move || cluster_herd(&b, herd::Flavour::Async))));
            cases
                .push(("cluster_herd_blocking", Box::new(move || cluster_herd(&c, herd::Flavour::Blocking))));
        }
        None if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            eprintln!("BYOVA_TEST_REDIS_CLUSTER_URL is not set: CI must test the Redis Cluster");
            std::process::exit(1);
        }
        None => println!(
            "redis cluster tests skipped: BYOVA_TEST_REDIS_CLUSTER_URL is not set (cargo xtask test sets it)"
        ),
    }
    match tls_setup() {
        Some(tls) => cases.push((
            "tls_right_ca_wrong_ca_and_plaintext",
            Box::new(move || tls_right_ca_wrong_ca_and_plaintext(&tls)),
        )),
        None if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            eprintln!(
                "BYOVA_TEST_REDIS_TLS_URL / BYOVA_TEST_TLS_CA are not set: CI must test Redis over TLS"
            );
            std::process::exit(1);
        }
        None => println!(
            "redis TLS tests skipped: BYOVA_TEST_REDIS_TLS_URL is not set (cargo xtask test sets it)"
        ),
    }
    byova_testkit::harness::run(cases);
}
