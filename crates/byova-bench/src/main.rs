//! `byova-bench SCENARIO [--flavour async|blocking] [--callers N] [--processes P]
//! [--storage URL] [--base-url URL] [--iterations N]`
//!
//! Prints one JSON object per line with `scenario`, `flavour`, `storage` and the figures.
//!
//! - `hot`: `ns_per_call` of `get_access_token` on a fresh Integration token.
//! - `herd` / `sa-herd`: an expired Integration (or one org's Service App) token with a valid
//!   refresh token, then N concurrent callers: `callers`, `token_endpoint_calls`, `seconds`,
//!   `errors`. Without `--base-url` the testkit's fake Webex serves and counts the calls; with
//!   it, the named server does (any credentials), and `token_endpoint_calls` is left to it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use byova_async::{
    AccessToken, BlockingTokenStorage, ByovaConfig, Clock, HttpClient, InMemoryTokenStorage,
    IntegrationTokenManager, OAuthTokens, RefreshToken, ServiceAppTokenManager, SystemClock, TokenStorage,
};
use byova_testkit::{Endpoint, FakeWebex};
use serde_json::json;

struct Args {
    scenario: String,
    flavour: String,
    callers: usize,
    processes: usize,
    storage: String,
    base_url: Option<String>,
    iterations: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().ok_or("usage: byova-bench hot|herd|sa-herd [--flavour async|blocking] [--callers N] [--processes P] [--storage URL] [--base-url URL]")?;
    let mut parsed = Args {
        scenario,
        flavour: "async".into(),
        callers: 1000,
        processes: 1,
        storage: "memory:".into(),
        base_url: None,
        iterations: 20_000_000,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--flavour" => parsed.flavour = value()?,
            "--callers" => parsed.callers = value()?.parse().map_err(|_| "--callers takes a number")?,
            "--processes" => parsed.processes = value()?.parse().map_err(|_| "--processes takes a number")?,
            "--storage" => parsed.storage = value()?,
            "--base-url" => parsed.base_url = Some(value()?),
            "--iterations" => {
                parsed.iterations = value()?.parse().map_err(|_| "--iterations takes a number")?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !matches!(parsed.flavour.as_str(), "async" | "blocking") {
        return Err(format!("flavour {:?} is neither async nor blocking", parsed.flavour));
    }
    if parsed.storage != "memory:" {
        return Err(format!("storage {:?} is not available in this build (memory: only)", parsed.storage));
    }
    if parsed.processes != 1 {
        return Err("--processes needs a storage shared between processes; memory: is not".into());
    }
    Ok(parsed)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("byova-bench: {e}");
            std::process::exit(2);
        }
    };
    let result = match (args.scenario.as_str(), args.flavour.as_str()) {
        ("hot", "blocking") => blocking::hot(&args),
        ("herd", "blocking") => blocking::herd(&args, false),
        ("sa-herd", "blocking") => blocking::herd(&args, true),
        ("hot", _) => hot(&args),
        ("herd", _) => herd(&args, false),
        ("sa-herd", _) => herd(&args, true),
        (other, _) => Err(format!("unknown scenario {other:?}; try hot, herd or sa-herd")),
    };
    match result {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("byova-bench: {e}");
            std::process::exit(1);
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

/// A fresh Integration token for the hot-path benchmark.
fn fresh_tokens() -> OAuthTokens {
    OAuthTokens::new(
        AccessToken::new("hot-path-access-token-0000000000000000000000000000000000000000000000000000"),
        1_209_599,
        SystemClock.now(),
    )
    .with_refresh_token(RefreshToken::new("r"), Some(7_775_999))
}

fn hot_report(args: &Args, elapsed: Duration) -> String {
    let ns = elapsed.as_nanos() as f64 / args.iterations as f64;
    json!({
        "scenario": "hot", "flavour": args.flavour, "storage": args.storage,
        "iterations": args.iterations, "ns_per_call": (ns * 10.0).round() / 10.0,
    })
    .to_string()
}

fn hot(args: &Args) -> Result<String, String> {
    let storage = Arc::new(InMemoryTokenStorage::new());
    BlockingTokenStorage::set_integration_tokens(storage.as_ref(), &fresh_tokens())
        .map_err(|e| e.to_string())?;
    let config = ByovaConfig::with_base_url("http://127.0.0.1:9/v1").map_err(|e| e.to_string())?;
    let http = HttpClient::new(Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let elapsed = rt.block_on(async {
        let manager = IntegrationTokenManager::new(
            byova_async::IntegrationCredentials::new("C", "s"),
            http,
            storage,
            Some(config),
        );
        // Warm the cache (one storage read), then time the hot path.
        manager.get_access_token().await.map_err(|e| e.to_string())?;
        let started = Instant::now();
        let mut total = 0usize;
        for _ in 0..args.iterations {
            let token = manager.get_access_token().await.map_err(|e| e.to_string())?;
            total += std::hint::black_box(token.expose_secret().len());
        }
        std::hint::black_box(total);
        Ok::<_, String>(started.elapsed())
    })?;
    Ok(hot_report(args, elapsed))
}

const ORG: &str = "63b02f90-9cc6-43b8-aa6d-cad425ac554c";

/// What a herd run starts from, for either flavour.
struct HerdSetup {
    fake: Option<FakeWebex>,
    config: ByovaConfig,
    integration_creds: byova_async::IntegrationCredentials,
    sa_creds: byova_async::ServiceAppCredentials,
    storage: Arc<InMemoryTokenStorage>,
}

impl HerdSetup {
    fn token_endpoint_calls(&self) -> Option<u64> {
        self.fake.as_ref().map(|f| f.calls(Endpoint::AccessToken) + f.calls(Endpoint::ApplicationToken))
    }

    fn report(&self, args: &Args, service_app: bool, seconds: f64, errors: usize) -> String {
        json!({
            "scenario": if service_app { "sa-herd" } else { "herd" },
            "flavour": args.flavour, "storage": args.storage, "processes": args.processes,
            "callers": args.callers, "token_endpoint_calls": self.token_endpoint_calls(),
            "seconds": (seconds * 10_000.0).round() / 10_000.0, "errors": errors,
            "server": args.base_url.clone().unwrap_or_else(|| "testkit fake".into()),
        })
        .to_string()
    }
}

/// An expired Integration (or org) token with a refresh token the server accepts.
fn herd_setup(args: &Args, service_app: bool) -> Result<HerdSetup, String> {
    let fake = args.base_url.is_none().then(FakeWebex::start);
    let (config, integration_creds, sa_creds) = match (&fake, &args.base_url) {
        (Some(f), _) => (f.config(), f.integration_credentials(), f.service_app_credentials()),
        (None, Some(url)) => (
            ByovaConfig::with_base_url(url).map_err(|e| e.to_string())?,
            byova_async::IntegrationCredentials::new("bench-integration", "bench-secret"),
            byova_async::ServiceAppCredentials::new("bench-service-app", "bench-secret"),
        ),
        (None, None) => return Err("no server: give --base-url or let the fake start".into()),
    };
    let now = SystemClock.now();
    let long_ago = now.saturating_sub(Duration::from_secs(3 * 1_209_599));
    let (integration_tokens, org_tokens) = match &fake {
        Some(f) => {
            let integration = f.issue_integration_tokens();
            let integration =
                if service_app { integration.to_oauth_tokens(now) } else { integration.expired_at(now) };
            (integration, f.issue_service_app_tokens(ORG).expired_at(now))
        }
        None => {
            let t = |a: &str, r: &str, at| {
                OAuthTokens::new(AccessToken::new(a), 1_209_599, at)
                    .with_refresh_token(RefreshToken::new(r), Some(7_775_999))
            };
            (
                t("bench-a", "bench-r", if service_app { now } else { long_ago }),
                t("bench-sa", "bench-sr", long_ago),
            )
        }
    };
    let storage = Arc::new(InMemoryTokenStorage::new());
    BlockingTokenStorage::set_integration_tokens(storage.as_ref(), &integration_tokens)
        .map_err(|e| e.to_string())?;
    BlockingTokenStorage::set_service_app_tokens(storage.as_ref(), ORG, &org_tokens)
        .map_err(|e| e.to_string())?;
    Ok(HerdSetup { fake, config, integration_creds, sa_creds, storage })
}

fn herd(args: &Args, service_app: bool) -> Result<String, String> {
    let setup = herd_setup(args, service_app)?;
    let callers = args.callers;
    let (seconds, errors) = runtime().block_on(async {
        let http = HttpClient::new(setup.config.timeout).map_err(|e| e.to_string())?;
        let storage: Arc<dyn TokenStorage> = setup.storage.clone();
        let integration = IntegrationTokenManager::new(
            setup.integration_creds.clone(),
            http.clone(),
            storage.clone(),
            Some(setup.config.clone()),
        );
        let sa = ServiceAppTokenManager::new(setup.sa_creds.clone(), integration.clone(), http, storage);
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(callers);
        for _ in 0..callers {
            let (integration, sa) = (integration.clone(), sa.clone());
            tasks.push(tokio::spawn(async move {
                if service_app {
                    sa.get_access_token(ORG).await
                } else {
                    integration.get_access_token().await
                }
            }));
        }
        let mut errors = 0usize;
        for t in tasks {
            if !matches!(t.await, Ok(Ok(_))) {
                errors += 1;
            }
        }
        Ok::<_, String>((started.elapsed().as_secs_f64(), errors))
    })?;
    Ok(setup.report(args, service_app, seconds, errors))
}

/// The same scenarios on the blocking flavour: threads instead of tasks.
mod blocking {
    use super::*;
    use byova_blocking as b;

    pub(super) fn hot(args: &Args) -> Result<String, String> {
        let storage = Arc::new(InMemoryTokenStorage::new());
        BlockingTokenStorage::set_integration_tokens(storage.as_ref(), &fresh_tokens())
            .map_err(|e| e.to_string())?;
        let config = ByovaConfig::with_base_url("http://127.0.0.1:9/v1").map_err(|e| e.to_string())?;
        let http = b::HttpClient::new(Duration::from_secs(5)).map_err(|e| e.to_string())?;
        let manager = b::IntegrationTokenManager::new(
            b::IntegrationCredentials::new("C", "s"),
            http,
            storage,
            Some(config),
        );
        manager.get_access_token().map_err(|e| e.to_string())?;
        let started = Instant::now();
        let mut total = 0usize;
        for _ in 0..args.iterations {
            let token = manager.get_access_token().map_err(|e| e.to_string())?;
            total += std::hint::black_box(token.expose_secret().len());
        }
        std::hint::black_box(total);
        Ok(hot_report(args, started.elapsed()))
    }

    pub(super) fn herd(args: &Args, service_app: bool) -> Result<String, String> {
        let setup = herd_setup(args, service_app)?;
        let http = b::HttpClient::new(setup.config.timeout).map_err(|e| e.to_string())?;
        let storage: Arc<dyn BlockingTokenStorage> = setup.storage.clone();
        let integration = b::IntegrationTokenManager::new(
            setup.integration_creds.clone(),
            http.clone(),
            storage.clone(),
            Some(setup.config.clone()),
        );
        let sa = b::ServiceAppTokenManager::new(setup.sa_creds.clone(), integration.clone(), http, storage);
        let started = Instant::now();
        let errors = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..args.callers)
                .map(|_| {
                    scope.spawn(|| {
                        if service_app { sa.get_access_token(ORG) } else { integration.get_access_token() }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join()).filter(|r| !matches!(r, Ok(Ok(_)))).count()
        });
        Ok(setup.report(args, service_app, started.elapsed().as_secs_f64(), errors))
    }
}
