//! `hot`: the cost of `get_access_token` when the cached token is fresh.

use std::time::{Duration, Instant};

use byova_core::{
    AccessToken, BlockingTokenStorage, ByovaConfig, Clock, IntegrationCredentials, OAuthTokens, RefreshToken,
    SystemClock,
};
use serde_json::json;

use crate::Args;
use crate::storage;

fn fresh_tokens() -> OAuthTokens {
    OAuthTokens::new(
        AccessToken::new("hot-path-access-token-0000000000000000000000000000000000000000000000000000"),
        1_209_599,
        SystemClock.now(),
    )
    .with_refresh_token(RefreshToken::new("r"), Some(7_775_999))
}

pub(crate) fn run(args: &Args) -> Result<String, String> {
    let stores = storage::open(&args.storage)?;
    stores.blocking.set_integration_tokens(&fresh_tokens()).map_err(|e| e.to_string())?;
    let config = ByovaConfig::with_base_url("http://127.0.0.1:9/v1").map_err(|e| e.to_string())?;
    let creds = IntegrationCredentials::new("C", "s");
    let iterations = args.iterations;
    let elapsed = if args.flavour == "blocking" {
        use byova_blocking as b;
        let http = b::HttpClient::new(Duration::from_secs(5)).map_err(|e| e.to_string())?;
        let manager = b::IntegrationTokenManager::new(creds, http, stores.blocking, config);
        manager.get_access_token().map_err(|e| e.to_string())?;
        let started = Instant::now();
        let mut total = 0usize;
        for _ in 0..iterations {
            total += std::hint::black_box(
                manager.get_access_token().map_err(|e| e.to_string())?.expose_secret().len(),
            );
        }
        std::hint::black_box(total);
        started.elapsed()
    } else {
        use byova_async as a;
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async {
            let http = a::HttpClient::new(Duration::from_secs(5)).map_err(|e| e.to_string())?;
            let manager = a::IntegrationTokenManager::new(creds, http, stores.async_, config);
            // Warm the cache (one storage read), then time the hot path.
            manager.get_access_token().await.map_err(|e| e.to_string())?;
            let started = Instant::now();
            let mut total = 0usize;
            for _ in 0..iterations {
                let token = manager.get_access_token().await.map_err(|e| e.to_string())?;
                total += std::hint::black_box(token.expose_secret().len());
            }
            std::hint::black_box(total);
            Ok::<_, String>(started.elapsed())
        })?
    };
    let ns = elapsed.as_nanos() as f64 / iterations as f64;
    Ok(json!({
        "scenario": "hot", "flavour": args.flavour, "storage": args.storage,
        "iterations": iterations, "ns_per_call": (ns * 10.0).round() / 10.0,
    })
    .to_string())
}
