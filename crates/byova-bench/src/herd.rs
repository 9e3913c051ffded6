//! `herd` and `sa-herd`: many callers on one expired token, in one or several processes.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use byova_core::{
    AccessToken, BlockingTokenStorage, ByovaConfig, Clock, EnvSettings, IntegrationCredentials, OAuthTokens,
    RefreshToken, ServiceAppCredentials, SystemClock,
};
use byova_testkit::{Endpoint, FakeWebex};
use serde_json::{Value, json};

use crate::Args;
use crate::storage::{self, Storages};

const ORG: &str = "63b02f90-9cc6-43b8-aa6d-cad425ac554c";
static ORG_ID: std::sync::LazyLock<byova_core::OrgId> =
    std::sync::LazyLock::new(|| byova_core::OrgId::from_static(ORG));

struct Target {
    config: ByovaConfig,
    integration: IntegrationCredentials,
    service_app: ServiceAppCredentials,
}

pub(crate) fn run(args: &Args, service_app: bool) -> Result<String, String> {
    if args.child {
        return child(args, service_app);
    }
    let stores = storage::open(&args.storage)?;
    if args.processes > 1 && !stores.shared {
        return Err(format!(
            "--processes {} needs a storage that processes share; {} is not",
            args.processes, args.storage
        ));
    }
    let fake = args.base_url.is_none().then(FakeWebex::start);
    let target = match (&fake, &args.base_url) {
        (Some(f), _) => Target {
            config: f.config(),
            integration: f.integration_credentials(),
            service_app: f.service_app_credentials(),
        },
        (None, Some(url)) => Target {
            config: ByovaConfig::with_base_url(url).map_err(|e| e.to_string())?,
            integration: IntegrationCredentials::new("bench-integration", "bench-secret"),
            service_app: ServiceAppCredentials::new("bench-service-app", "bench-secret"),
        },
        (None, None) => return Err("no server".into()),
    };
    seed(&stores, fake.as_ref(), service_app)?;
    let started = Instant::now();
    let errors = if args.processes == 1 {
        callers(args, &stores, &target, service_app, args.callers)?
    } else {
        spawn_children(args, &target, service_app)?
    };
    let seconds = started.elapsed().as_secs_f64();
    let calls = fake.as_ref().map(|f| f.calls(Endpoint::AccessToken) + f.calls(Endpoint::ApplicationToken));
    Ok(json!({
        "scenario": if service_app { "sa-herd" } else { "herd" },
        "flavour": args.flavour, "storage": args.storage, "processes": args.processes,
        "callers": args.callers, "token_endpoint_calls": calls,
        "seconds": (seconds * 10_000.0).round() / 10_000.0, "errors": errors,
        "server": args.base_url.clone().unwrap_or_else(|| "testkit fake".into()),
    })
    .to_string())
}

/// An expired Integration token (herd) or a fresh one and an expired org token (sa-herd), with
/// refresh tokens the server accepts.
fn seed(stores: &Storages, fake: Option<&FakeWebex>, service_app: bool) -> Result<(), String> {
    let now = SystemClock.now();
    let long_ago = now.saturating_sub(Duration::from_secs(3 * 1_209_599));
    let (integration, org) = match fake {
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
    stores.blocking.set_integration_tokens(&integration).map_err(|e| e.to_string())?;
    stores.blocking.set_service_app_tokens(&ORG_ID, &org).map_err(|e| e.to_string())
}

/// Runs `n` concurrent callers in this process; returns how many failed.
fn callers(
    args: &Args,
    stores: &Storages,
    target: &Target,
    service_app: bool,
    n: usize,
) -> Result<usize, String> {
    if args.flavour == "blocking" {
        use byova_blocking as b;
        let http = b::HttpClient::new(target.config.timeout).map_err(|e| e.to_string())?;
        let integration = b::IntegrationTokenManager::new(
            target.integration.clone(),
            http.clone(),
            stores.blocking.clone(),
            target.config.clone(),
        );
        let sa = b::ServiceAppTokenManager::new(
            target.service_app.clone(),
            integration.clone(),
            http,
            stores.blocking.clone(),
        );
        return Ok(std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    scope.spawn(|| {
                        if service_app {
                            sa.get_access_token(&ORG_ID)
                        } else {
                            integration.get_access_token()
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join()).filter(|r| !matches!(r, Ok(Ok(_)))).count()
        }));
    }
    use byova_async as a;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let http = a::HttpClient::new(target.config.timeout).map_err(|e| e.to_string())?;
        let integration = a::IntegrationTokenManager::new(
            target.integration.clone(),
            http.clone(),
            stores.async_.clone(),
            target.config.clone(),
        );
        let sa = a::ServiceAppTokenManager::new(
            target.service_app.clone(),
            integration.clone(),
            http,
            stores.async_.clone(),
        );
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (integration, sa) = (integration.clone(), sa.clone());
                tokio::spawn(async move {
                    if service_app {
                        sa.get_access_token(&ORG_ID).await
                    } else {
                        integration.get_access_token().await
                    }
                })
            })
            .collect();
        let mut errors = 0;
        for t in tasks {
            if !matches!(t.await, Ok(Ok(_))) {
                errors += 1;
            }
        }
        Ok(errors)
    })
}

/// Spreads the callers over child processes sharing the storage; returns their errors.
fn spawn_children(args: &Args, target: &Target, service_app: bool) -> Result<usize, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let per_child = args.callers.div_ceil(args.processes);
    let mut children = Vec::new();
    for _ in 0..args.processes {
        let child = Command::new(&exe)
            .arg(if service_app { "sa-herd" } else { "herd" })
            .args([
                "--flavour",
                &args.flavour,
                "--callers",
                &per_child.to_string(),
                "--storage",
                &args.storage,
                "--child",
            ])
            .env("BYOVA_BASE_URL", &target.config.base_url)
            .env("WEBEX_INTEGRATION_CLIENT_ID", &target.integration.client_id)
            .env("WEBEX_INTEGRATION_CLIENT_SECRET", target.integration.client_secret.expose_secret())
            .env("WEBEX_SA_CLIENT_ID", &target.service_app.client_id)
            .env("WEBEX_SA_CLIENT_SECRET", target.service_app.client_secret.expose_secret())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start a child process: {e}"))?;
        children.push(child);
    }
    let mut errors = 0;
    for child in children {
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("a child process failed ({})", out.status));
        }
        let line: Value =
            serde_json::from_slice(&out.stdout).map_err(|_| "a child printed no result".to_owned())?;
        errors += line["errors"].as_u64().unwrap_or(u64::MAX) as usize;
    }
    Ok(errors)
}

/// A child process: the parent seeded the storage and runs the server; just be callers.
fn child(args: &Args, service_app: bool) -> Result<String, String> {
    let env = EnvSettings::from_env().map_err(|e| e.to_string())?;
    let stores = storage::open(&args.storage)?;
    let target = Target { config: env.config, integration: env.integration, service_app: env.service_app };
    let started = Instant::now();
    let errors = callers(args, &stores, &target, service_app, args.callers)?;
    Ok(json!({ "errors": errors, "seconds": started.elapsed().as_secs_f64() }).to_string())
}
