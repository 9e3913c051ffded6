//! The SQL stores against the real PostgreSQL and MariaDB (`BYOVA_TEST_POSTGRES_URL`,
//! `BYOVA_TEST_MYSQL_URL`, set by `cargo xtask test`) and SQLite files: the conformance suite,
//! multi-process herds, a stalled lease holder's late write, and a connection lost before
//! `COMMIT`. A custom harness: the binary re-runs itself as herd children.

use byova_core::OrgId;
use std::sync::Arc;
use std::time::Duration;

use byova_core::{
    AccessToken, BlockingTokenStorage, OAuthTokens, StorageErrorKind, Timestamp, TokenKey, TokenStorage,
    backend::{CoordinatedTokenStorage, Expect},
};
use byova_storage_sql::{SqlTokenStorage, SqliteBlockingStorage};
use byova_testkit::conformance;
use byova_tests::herd;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn with_table(url: &str, table: &str) -> String {
    format!("{url}{}table={table}", if url.contains('?') { '&' } else { '?' })
}

fn unique(name: &str) -> String {
    format!("byova_t_{name}_{}_{:x}", std::process::id(), byova_core::engine::random_u64() & 0xffff_ffff)
}

fn sqlite_url(table: &str) -> String {
    let path = std::env::temp_dir().join(format!("{table}.db"));
    format!("sqlite://{}?table={table}", path.display())
}

fn counter(n: u64) -> OAuthTokens {
    OAuthTokens::new(AccessToken::new(n.to_string()), 3600, Timestamp::from_unix_secs(n))
}

fn conformance_async(url: &str) {
    let rt = rt();
    let store = Arc::new(rt.block_on(SqlTokenStorage::connect(url)).unwrap());
    let corrupt = store.clone();
    let report = rt.block_on(conformance::check_token_storage(
        store.clone(),
        Some(Box::new(move |key| {
            let handle = tokio::runtime::Handle::current();
            tokio::task::block_in_place(|| handle.block_on(corrupt.put_raw_record(key, "{\"schema\":1,")))
                .unwrap();
        })),
    ));
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    rt.block_on(store.drop_table()).unwrap();
}

fn conformance_rusqlite(url: &str) {
    let store = Arc::new(SqliteBlockingStorage::open(url).unwrap());
    let path = url.trim_start_matches("sqlite://").split('?').next().unwrap().to_owned();
    let table = url.split("table=").nth(1).unwrap().to_owned();
    let report = conformance::check_blocking_token_storage(
        store,
        Some(Box::new(move |key| {
            let conn = rusqlite::Connection::open(&path).unwrap();
            let name = match key {
                TokenKey::Integration => "integration".to_owned(),
                TokenKey::Org(o) => format!("org:{o}"),
            };
            conn.execute(&format!("INSERT OR IGNORE INTO {table} (key_name) VALUES (?1)"), [&name]).unwrap();
            conn.execute(
                &format!("UPDATE {table} SET record = 'garbage', version = 1 WHERE key_name = ?1"),
                [&name],
            )
            .unwrap();
        })),
    );
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
}

fn multi_process_herd(url: &str, flavour: herd::Flavour) {
    match flavour {
        herd::Flavour::Async => {
            let rt = rt();
            let store = rt.block_on(SqlTokenStorage::connect(url)).unwrap();
            herd::run(flavour, url, |expired| rt.block_on(store.set_integration_tokens(expired)).unwrap());
            if !url.starts_with("sqlite") {
                rt.block_on(store.drop_table()).unwrap();
            }
        }
        herd::Flavour::Blocking => {
            let store = SqliteBlockingStorage::open(url).unwrap();
            herd::run(flavour, url, |expired| {
                BlockingTokenStorage::set_integration_tokens(&store, expired).unwrap()
            });
        }
    }
}

fn open_sqlx(
    url: String,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn CoordinatedTokenStorage>>>> {
    Box::pin(async move {
        Arc::new(SqlTokenStorage::connect(&url).await.unwrap()) as Arc<dyn CoordinatedTokenStorage>
    })
}

fn late_write_affects_no_row(url: &str) {
    let rt = rt();
    rt.block_on(async {
        let store = SqlTokenStorage::connect(url).await.unwrap();
        let key = TokenKey::Integration;
        let v1 = store.store(&key, &counter(1), Expect::Any).await.unwrap();
        let a = store
            .try_acquire_lease(&key, Duration::from_millis(200))
            .await
            .unwrap()
            .expect("A gets the lease");
        let seen_by_a = store.load(&key).await.unwrap().unwrap().version;
        tokio::time::sleep(Duration::from_millis(400)).await; // A stalls past its lease
        let b = store
            .try_acquire_lease(&key, Duration::from_secs(10))
            .await
            .unwrap()
            .expect("B gets the expired lease");
        store.store(&key, &counter(2), Expect::Version(v1)).await.unwrap();
        assert!(!store.extend_lease(&a, Duration::from_secs(10)).await.unwrap(), "A cannot extend B's lease");
        let late = store.store(&key, &counter(3), Expect::Version(seen_by_a)).await.unwrap_err();
        assert_eq!(late.kind(), StorageErrorKind::Conflict, "A's late write affects no row");
        store.release_lease(&a).await.unwrap();
        assert!(
            store.try_acquire_lease(&key, Duration::from_secs(1)).await.unwrap().is_none(),
            "A's release left B's lease"
        );
        store.release_lease(&b).await.unwrap();
        assert_eq!(store.load(&key).await.unwrap().unwrap().value.access_token.expose_secret(), "2");
        store.drop_table().await.unwrap();
    });
}

fn a_connection_lost_before_commit_leaves_the_old_record(url: &str) {
    let rt = rt();
    rt.block_on(async {
        let store = SqlTokenStorage::connect(url).await.unwrap();
        let key = TokenKey::org(&OrgId::from_static("org-commit"));
        store.store(&key, &counter(1), Expect::Absent).await.unwrap();
        // A second pool on the same table: begin, write, then drop the connection unannounced.
        sqlx::any::install_default_drivers();
        let (base, table) = url
            .split_once("table=")
            .map(|(b, t)| (b.trim_end_matches(['?', '&']).to_owned(), t.to_owned()))
            .unwrap();
        let base = if base.starts_with("sqlite") && !base.contains("mode=") {
            format!("{base}?mode=rwc")
        } else {
            base
        };
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&base).await.unwrap();
        use sqlx::Connection;
        let mut tx = conn.begin().await.unwrap();
        let partial = String::from_utf8(counter(2).to_json()).unwrap();
        let update = if url.starts_with("postgres") {
            format!("UPDATE {table} SET record = $1, version = version + 1 WHERE key_name = $2")
        } else {
            format!("UPDATE {table} SET record = ?, version = version + 1 WHERE key_name = ?")
        };
        sqlx::query(&update).bind(partial).bind("org:org-commit").execute(&mut *tx).await.unwrap();
        std::mem::forget(tx); // never COMMIT, never ROLLBACK
        drop(conn.close_hard());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = store.load(&key).await.unwrap().expect("the record is still there");
        assert_eq!(
            after.value.access_token.expose_secret(),
            "1",
            "the uncommitted write is gone, the old record intact"
        );
        store
            .store(&key, &counter(3), Expect::Version(after.version))
            .await
            .expect("the next write succeeds");
        store.drop_table().await.unwrap();
    });
}

/// The TLS-only PostgreSQL (`hostssl` only), its CA and an unrelated CA.
fn tls_setup() -> Option<(String, String, String)> {
    let get = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    Some((get("BYOVA_TEST_POSTGRES_TLS_URL")?, get("BYOVA_TEST_TLS_CA")?, get("BYOVA_TEST_TLS_WRONG_CA")?))
}

/// The right CA connects (verified) and passes the conformance suite; a wrong CA fails with one
/// clear line; plaintext is refused by the server.
fn postgres_over_tls((url, ca, wrong_ca): &(String, String, String)) {
    let table = unique("tls");
    let rt = rt();
    rt.block_on(async {
        let store =
            SqlTokenStorage::connect_with_ca(&with_table(url, &table), Some(std::path::Path::new(ca)))
                .await
                .expect("the right CA connects");
        let report = byova_testkit::conformance::check_token_storage(Arc::new(store.clone()), None).await;
        println!(
            "  postgres, verify-full with the right CA: {} conformance cases passed",
            report.passed.len()
        );
        store.drop_table().await.unwrap();
        let wrong =
            SqlTokenStorage::connect_with_ca(&with_table(url, &table), Some(std::path::Path::new(wrong_ca)))
                .await
                .expect_err("a wrong CA must not connect");
        println!("  postgres with a wrong CA: {wrong}");
        assert!(wrong.to_string().contains("TLS failed") && !wrong.to_string().contains('\n'), "{wrong}");
        let required = SqlTokenStorage::connect_with_ca(
            &with_table(&format!("{url}?sslmode=require"), &table),
            Some(std::path::Path::new(wrong_ca)),
        )
        .await
        .expect_err("sslmode=require with a CA file checks the chain");
        assert!(required.to_string().contains("TLS failed"), "{required}");
        let plain = SqlTokenStorage::connect(&with_table(&format!("{url}?sslmode=disable"), &table))
            .await
            .expect_err("the server takes TLS only");
        println!("  postgres with sslmode=disable: {plain}");
        assert!(plain.to_string().contains("no encryption"), "{plain}");
    });
}

/// A server that answers Postgres's `SSLRequest` with "no": with `sslmode=require` the client
/// must give up, never continue in plaintext (whose first message would be the startup
/// packet, user name included).
fn sslmode_require_never_falls_back_to_plaintext() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut ssl_request = [0u8; 8];
        conn.read_exact(&mut ssl_request).unwrap();
        assert_eq!(ssl_request, [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f], "the client asked for TLS first");
        conn.write_all(b"N").unwrap();
        let mut next = Vec::new();
        let _ = conn.read_to_end(&mut next);
        next
    });
    let url = format!("postgres://tokens-user@127.0.0.1:{port}/db?sslmode=require&table=t");
    let err = rt().block_on(SqlTokenStorage::connect(&url)).expect_err("no TLS, no connection");
    let sent_after_refusal = server.join().unwrap();
    println!("  sslmode=require against a server without TLS: {err}");
    assert!(
        sent_after_refusal.is_empty(),
        "the client continued in plaintext: {:?}",
        String::from_utf8_lossy(&sent_after_refusal)
    );
}

/// Network faults between byova and the database before and during a refresh (see
/// `byova_tests::netfaults`).
fn store_faults_during_a_refresh(url: &str) {
    let rt = rt();
    let tables = std::sync::Mutex::new(Vec::new());
    let fresh = |url: &str, _: usize| {
        let table = unique("netfault");
        tables.lock().unwrap().push(with_table(url, &table));
        with_table(url, &table)
    };
    let open: byova_tests::netfaults::Open = Box::new(open_sqlx);
    let rows = byova_tests::netfaults::refresh_matrix(&rt, url, &fresh, &open);
    byova_tests::netfaults::print(url.split("://").next().unwrap_or("sql"), &rows);
    for table in tables.into_inner().unwrap() {
        rt.block_on(async {
            if let Ok(store) = byova_storage_sql::SqlTokenStorage::connect(&table).await {
                let _ = store.drop_table().await;
            }
        });
    }
}

fn main() {
    if herd::child_main(open_sqlx, |url| Arc::new(SqliteBlockingStorage::open(url).unwrap())) {
        return;
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let mut servers: Vec<(&str, String)> = Vec::new();
    for (name, var) in [("postgres", "BYOVA_TEST_POSTGRES_URL"), ("mysql", "BYOVA_TEST_MYSQL_URL")] {
        match std::env::var(var).ok().filter(|v| !v.is_empty()) {
            Some(url) => servers.push((name, url)),
            None if in_ci => {
                eprintln!("{var} is not set: CI must test the {name} store against a real server");
                std::process::exit(1);
            }
            None => println!("{name} tests skipped: {var} is not set (cargo xtask test sets it)"),
        }
    }
    let mut cases: Vec<(String, byova_testkit::harness::Case)> = Vec::new();
    for (name, url) in &servers {
        let conf = with_table(url, &unique("conf"));
        cases.push((format!("{name}: conformance (async)"), Box::new(move || conformance_async(&conf))));
        let herd = with_table(url, &unique("herd"));
        cases.push((
            format!("{name}: 4 processes x 250 callers, one token call"),
            Box::new(move || multi_process_herd(&herd, herd::Flavour::Async)),
        ));
        let late = with_table(url, &unique("late"));
        cases.push((
            format!("{name}: a stalled lease holder's write affects no row"),
            Box::new(move || late_write_affects_no_row(&late)),
        ));
        let faults = url.clone();
        cases.push((
            format!("{name}: network faults before and during a refresh"),
            Box::new(move || store_faults_during_a_refresh(&faults)),
        ));
        let commit = with_table(url, &unique("commit"));
        cases.push((
            format!("{name}: a connection lost before COMMIT leaves the old record"),
            Box::new(move || a_connection_lost_before_commit_leaves_the_old_record(&commit)),
        ));
    }
    match tls_setup() {
        Some(tls) => cases.push((
            "postgres over TLS: right CA, wrong CA, plaintext".into(),
            Box::new(move || postgres_over_tls(&tls)),
        )),
        None if in_ci => {
            eprintln!(
                "BYOVA_TEST_POSTGRES_TLS_URL / BYOVA_TEST_TLS_CA are not set: CI must test PostgreSQL over TLS"
            );
            std::process::exit(1);
        }
        None => println!(
            "postgres TLS tests skipped: BYOVA_TEST_POSTGRES_TLS_URL is not set (cargo xtask test sets it)"
        ),
    }
    cases.push((
        "postgres: sslmode=require never falls back to plaintext".into(),
        Box::new(sslmode_require_never_falls_back_to_plaintext),
    ));
    let conf = sqlite_url(&unique("sqlx"));
    cases.push(("sqlite (sqlx): conformance (async)".into(), Box::new(move || conformance_async(&conf))));
    let conf = sqlite_url(&unique("rusqlite"));
    cases.push((
        "sqlite (rusqlite): conformance (blocking)".into(),
        Box::new(move || conformance_rusqlite(&conf)),
    ));
    let herd = sqlite_url(&unique("herd_a"));
    cases.push((
        "sqlite (sqlx): 4 processes x 250 callers, one token call".into(),
        Box::new(move || multi_process_herd(&herd, herd::Flavour::Async)),
    ));
    let herd = sqlite_url(&unique("herd_b"));
    cases.push((
        "sqlite (rusqlite): 4 processes x 250 callers, one token call".into(),
        Box::new(move || multi_process_herd(&herd, herd::Flavour::Blocking)),
    ));
    let late = sqlite_url(&unique("late"));
    cases.push((
        "sqlite (sqlx): a stalled lease holder's write affects no row".into(),
        Box::new(move || late_write_affects_no_row(&late)),
    ));
    let commit = sqlite_url(&unique("commit"));
    cases.push((
        "sqlite (sqlx): a connection lost before COMMIT leaves the old record".into(),
        Box::new(move || a_connection_lost_before_commit_leaves_the_old_record(&commit)),
    ));

    let private = unique("private");
    cases.push((
        "sqlite: the database and its -wal and -shm files are 0600 under umask 022".into(),
        Box::new(move || sqlite_files_are_private(&private)),
    ));

    byova_testkit::harness::run(cases);
}

/// Item 6 of the brief: SQLite's three files hold refresh tokens; whatever the umask (the test
/// process's is 022), they are readable by their owner only, through either driver.
#[cfg(unix)]
fn sqlite_files_are_private(name: &str) {
    use std::os::unix::fs::PermissionsExt;
    for driver in ["sqlx", "rusqlite"] {
        let path = std::env::temp_dir().join(format!("{name}_{driver}.db"));
        let url = format!("sqlite://{}", path.display());
        let key = TokenKey::org(&OrgId::from_static("org-private"));
        if driver == "sqlx" {
            let rt = rt();
            let store = rt.block_on(SqlTokenStorage::connect(&url)).unwrap();
            rt.block_on(byova_core::backend::CoordinatedTokenStorage::store(
                &store,
                &key,
                &counter(1),
                Expect::Any,
            ))
            .unwrap();
            check_private(&path, driver);
            drop(store);
        } else {
            let store = SqliteBlockingStorage::open(&url).unwrap();
            byova_core::backend::BlockingCoordinatedTokenStorage::store(
                &store,
                &key,
                &counter(1),
                Expect::Any,
            )
            .unwrap();
            check_private(&path, driver);
        }
        // An existing file someone made readable is made private again on open.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(SqliteBlockingStorage::open(&url).unwrap());
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600,
            "{driver}: tightened"
        );
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}

#[cfg(unix)]
fn check_private(path: &std::path::Path, driver: &str) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", path.display());
        let mode =
            std::fs::metadata(&file).unwrap_or_else(|e| panic!("{driver}: {file}: {e}")).permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{driver}: {file} is {:o}", mode & 0o777);
    }
}

#[cfg(not(unix))]
fn sqlite_files_are_private(_: &str) {}
