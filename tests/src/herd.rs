//! The multi-process herd. A storage backend's test binary (`harness = false`) calls
//! [`child_main`] first thing in `main` (it returns `true` when this process is a herd child and
//! has done its part), and [`run`] as a test case.

use std::future::Future;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use byova_core::backend::{BlockingCoordinatedTokenStorage, CoordinatedTokenStorage};
use byova_core::{Clock, EnvSettings, OAuthTokens, SystemClock};
use byova_testkit::{Endpoint, FakeWebex};

const CHILD_ENV: &str = "BYOVA_HERD_CHILD";
const STORAGE_ENV: &str = "BYOVA_HERD_STORAGE";
const PROCESSES: usize = 4;
const CALLERS: usize = 250;

/// Which flavour the children run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// byova-async: tasks.
    Async,
    /// byova-blocking: threads.
    Blocking,
}

impl Flavour {
    fn name(self) -> &'static str {
        match self {
            Flavour::Async => "async",
            Flavour::Blocking => "blocking",
        }
    }
}

/// Opens the async store a URL names (may connect asynchronously).
pub type OpenAsync = fn(String) -> Pin<Box<dyn Future<Output = Arc<dyn CoordinatedTokenStorage>>>>;
/// Opens the blocking store a URL names.
pub type OpenBlocking = fn(&str) -> Arc<dyn BlockingCoordinatedTokenStorage>;

/// The parent: starts a fake Webex (100 ms per token call), lets `seed` store an expired
/// Integration token it accepts, spawns 4 children of this binary sharing `storage`, and asserts
/// that 4 × 250 callers caused exactly one token-endpoint call.
///
/// # Panics
/// When a child fails or the fake saw more than one call.
pub fn run(flavour: Flavour, storage: &str, seed: impl FnOnce(&OAuthTokens)) {
    let fake = FakeWebex::start();
    fake.set_latency(Endpoint::AccessToken, Duration::from_millis(100));
    seed(&fake.issue_integration_tokens().expired_at(SystemClock.now()));
    let (int, sa) = (fake.integration_credentials(), fake.service_app_credentials());
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(std::env::current_exe().expect("the test binary"))
                .env(CHILD_ENV, flavour.name())
                .env(STORAGE_ENV, storage)
                .env("BYOVA_BASE_URL", fake.base_url())
                .env("WEBEX_INTEGRATION_CLIENT_ID", &int.client_id)
                .env("WEBEX_INTEGRATION_CLIENT_SECRET", int.client_secret.expose_secret())
                .env("WEBEX_SA_CLIENT_ID", &sa.client_id)
                .env("WEBEX_SA_CLIENT_SECRET", sa.client_secret.expose_secret())
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn a herd child")
        })
        .collect();
    for mut child in children {
        assert!(
            child.wait().expect("wait for a herd child").success(),
            "a {} herd child failed",
            flavour.name()
        );
    }
    assert_eq!(
        fake.calls(Endpoint::AccessToken),
        1,
        "{PROCESSES} processes x {CALLERS} callers made one token call"
    );
    println!(
        "  herd ({}) on {}: {PROCESSES} processes x {CALLERS} callers -> 1 token-endpoint call",
        flavour.name(),
        storage.split(':').next().unwrap_or(storage)
    );
}

/// In a herd child: runs 250 concurrent callers of the flavour the parent asked for on the
/// shared store and checks they all got one token; returns `true`. In any other process,
/// returns `false` at once.
///
/// # Panics
/// When a caller fails or callers got different tokens (the child then exits non-zero).
pub fn child_main(open_async: OpenAsync, open_blocking: OpenBlocking) -> bool {
    let Ok(flavour) = std::env::var(CHILD_ENV) else { return false };
    let storage = std::env::var(STORAGE_ENV).expect("the parent names the storage");
    let env = EnvSettings::from_env().expect("the parent passes the credentials");
    let tokens: Vec<String> = if flavour == Flavour::Async.name() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let store = open_async(storage).await;
            let http = byova_async::HttpClient::new(Duration::from_secs(10)).expect("http client");
            let m = byova_async::IntegrationTokenManager::new(env.integration, http, store, env.config);
            let tasks: Vec<_> = (0..CALLERS)
                .map(|_| {
                    let m = m.clone();
                    tokio::spawn(async move { m.get_access_token().await })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(
                    t.await.expect("task").expect("every caller gets a token").expose_secret().to_owned(),
                );
            }
            out
        })
    } else {
        let store = open_blocking(&storage);
        let http = byova_blocking::HttpClient::new(Duration::from_secs(10)).expect("http client");
        let m = byova_blocking::IntegrationTokenManager::new(env.integration, http, store, env.config);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..CALLERS)
                .map(|_| s.spawn(|| m.get_access_token().expect("every caller gets a token")))
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread").expose_secret().to_owned()).collect()
        })
    };
    assert!(tokens.iter().all(|t| *t == tokens[0]), "callers got different tokens");
    true
}
