//! `storage-ops`: operations per second through the storage adapter, and listing many orgs.

use std::time::Instant;

use byova_core::{
    AccessToken, BlockingTokenStorage, OAuthTokens, OrgId, RefreshToken, Timestamp, TokenStorage,
};
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

fn org(i: usize) -> OrgId {
    OrgId::new(&format!("00000000-0000-4000-8000-{i:012}")).expect("a UUID is an org id")
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
    let pg_reference = args.storage.starts_with("postgres").then(|| pgbench(&args.storage)).flatten();
    Ok(json!({
        "pgbench_single_row_update": pg_reference,
        "adapter_set_to_pgbench": pg_reference.as_ref().map(|r| {
            ((set_per_s / r["updates_per_second"].as_f64().unwrap_or(f64::NAN)) * 1000.0).round() / 1000.0
        }),
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

/// `pgbench`, one client, a single-row `UPDATE … WHERE k = 1` for 5 s, against the same
/// server and database: the floor one versioned write is measured against.
fn pgbench(url: &str) -> Option<serde_json::Value> {
    let rest = url.split_once("://")?.1;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, "postgres"));
    let db = path.split('?').next().filter(|d| !d.is_empty()).unwrap_or("postgres");
    let (user, hostport) = authority
        .rsplit_once('@')
        .map_or(("postgres", authority), |(u, h)| (u.split(':').next().unwrap_or(u), h));
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "5432"));
    let table = format!("byova_pgbench_{}", std::process::id());
    let psql = |sql: &str| {
        std::process::Command::new("psql")
            .args(["-h", host, "-p", port, "-U", user, "-d", db, "-qc", sql])
            .output()
            .ok()
            .filter(|o| o.status.success())
    };
    psql(&format!("CREATE TABLE {table} (k int PRIMARY KEY, v bigint); INSERT INTO {table} VALUES (1, 0)"))?;
    let script = std::env::temp_dir().join(format!("{table}.sql"));
    std::fs::write(&script, format!("UPDATE {table} SET v = v + 1 WHERE k = 1;\n")).ok()?;
    let out = std::process::Command::new("pgbench")
        .args(["-h", host, "-p", port, "-U", user, "-n", "-c", "1", "-T", "5", "-f"])
        .arg(&script)
        .arg(db)
        .output()
        .ok();
    let _ = std::fs::remove_file(&script);
    psql(&format!("DROP TABLE {table}"));
    let text = String::from_utf8_lossy(&out?.stdout).into_owned();
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))?
        .trim_start_matches("tps = ")
        .split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()?;
    Some(json!({ "updates_per_second": tps.round(), "clients": 1 }))
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
    let own;
    let rt = match &stores.runtime {
        Some(rt) => rt.as_ref(),
        None => {
            own = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            &own
        }
    };
    // The loop runs on a worker of the runtime the store's connections belong to, as a
    // service's request handler would, not on a thread outside it.
    let store = stores.async_.clone();
    let timed = rt.spawn(async move {
        let started = Instant::now();
        for i in 0..ops {
            store.set_service_app_tokens(&org(i), &tokens(i)).await.map_err(|e| e.to_string())?;
        }
        let set = ops as f64 / started.elapsed().as_secs_f64();
        let started = Instant::now();
        for i in 0..ops {
            store
                .get_service_app_tokens(&org(i))
                .await
                .map_err(|e| e.to_string())?
                .ok_or("a stored org read back as None")?;
        }
        Ok::<_, String>((set, ops as f64 / started.elapsed().as_secs_f64()))
    });
    rt.block_on(timed).map_err(|e| e.to_string())?
}
