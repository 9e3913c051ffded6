//! `storage-ops`: operations per second through the storage adapter, and listing many orgs.

use std::time::Instant;

use byova_core::{AccessToken, OAuthTokens, RefreshToken, Timestamp};
use serde_json::json;

use crate::Args;
use crate::storage::{self, Storages};

fn tokens(i: usize) -> OAuthTokens {
    OAuthTokens::new(
        AccessToken::new(format!("bench-access-{i:08}-{}", "a".repeat(60))),
        1_209_599,
        Timestamp::from_unix_secs(1_800_000_000),
    )
    .with_refresh_token(
        RefreshToken::new(format!("bench-refresh-{i:08}-{}", "r".repeat(60))),
        Some(7_775_999),
    )
}

fn org(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

pub(crate) fn run(args: &Args) -> Result<String, String> {
    let stores = storage::open(&args.storage)?;
    let ops = args.ops.max(1);
    let (set_per_s, get_per_s) =
        if args.flavour == "blocking" { blocking_ops(&stores, ops)? } else { async_ops(&stores, ops)? };
    // Fill up to --orgs with 8 writers, then time one listing.
    let fill_started = Instant::now();
    let threads = 8;
    std::thread::scope(|scope| {
        for t in 0..threads {
            let stores = &stores;
            scope.spawn(move || {
                for i in (ops + t..args.orgs).step_by(threads) {
                    stores.blocking.set_service_app_tokens(&org(i), &tokens(i)).expect("fill");
                }
            });
        }
    });
    let fill_seconds = fill_started.elapsed().as_secs_f64();
    let started = Instant::now();
    let listed = stores.blocking.list_registered_orgs().map_err(|e| e.to_string())?.len();
    let list_seconds = started.elapsed().as_secs_f64();
    if listed < args.orgs {
        return Err(format!("listed {listed} orgs, expected at least {}", args.orgs));
    }
    let reference = args.storage.starts_with("redis").then(|| redis_benchmark(&args.storage)).flatten();
    Ok(json!({
        "redis_benchmark": reference,
        "adapter_to_redis_benchmark": reference.as_ref().map(|r| json!({
            "set": ((set_per_s / r["set_per_second"].as_f64().unwrap_or(f64::NAN)) * 1000.0).round() / 1000.0,
            "get": ((get_per_s / r["get_per_second"].as_f64().unwrap_or(f64::NAN)) * 1000.0).round() / 1000.0,
        })),
        "scenario": "storage-ops", "flavour": args.flavour, "storage": args.storage,
        "ops": ops, "set_per_second": set_per_s.round(), "get_per_second": get_per_s.round(),
        "orgs": listed, "fill_seconds": (fill_seconds * 100.0).round() / 100.0,
        "list_seconds": (list_seconds * 10_000.0).round() / 10_000.0,
    })
    .to_string())
}

/// `redis-benchmark -t get,set` against the same server, one client, for the same request
/// pattern the adapter's loop has (one request at a time).
fn redis_benchmark(url: &str) -> Option<serde_json::Value> {
    let authority = url.split("://").nth(1)?.split(['/', '?']).next()?;
    let (host, port) = authority.rsplit_once(':').unwrap_or((authority, "6379"));
    let out = std::process::Command::new("redis-benchmark")
        .args(["-h", host, "-p", port, "-t", "get,set", "-n", "20000", "-c", "1", "-q", "--csv"])
        .output()
        .ok()?;
    // redis-benchmark leaves its one key behind; remove it.
    let _ = std::process::Command::new("redis-cli")
        .args(["-h", host, "-p", port, "del", "key:__rand_int__"])
        .output();
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("\"{name}\"")))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|v| v.trim_matches('"').parse::<f64>().ok())
    };
    Some(json!({ "set_per_second": rate("SET")?, "get_per_second": rate("GET")?, "clients": 1 }))
}

fn blocking_ops(stores: &Storages, ops: usize) -> Result<(f64, f64), String> {
    let started = Instant::now();
    for i in 0..ops {
        stores.blocking.set_service_app_tokens(&org(i), &tokens(i)).map_err(|e| e.to_string())?;
    }
    let set = ops as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for i in 0..ops {
        stores
            .blocking
            .get_service_app_tokens(&org(i))
            .map_err(|e| e.to_string())?
            .ok_or("a stored org read back as None")?;
    }
    Ok((set, ops as f64 / started.elapsed().as_secs_f64()))
}

fn async_ops(stores: &Storages, ops: usize) -> Result<(f64, f64), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let started = Instant::now();
        for i in 0..ops {
            stores.async_.set_service_app_tokens(&org(i), &tokens(i)).await.map_err(|e| e.to_string())?;
        }
        let set = ops as f64 / started.elapsed().as_secs_f64();
        let started = Instant::now();
        for i in 0..ops {
            stores
                .async_
                .get_service_app_tokens(&org(i))
                .await
                .map_err(|e| e.to_string())?
                .ok_or("a stored org read back as None")?;
        }
        Ok((set, ops as f64 / started.elapsed().as_secs_f64()))
    })
}
