//! `jws`: verifications of Webex's inbound JWS per second on one core, the key cached: the
//! fake broker mints one token, the flavour's verifier fetches its keys once, then verifies it
//! `--iterations` times on this thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use byova_core::SystemClock;
use byova_testkit::FakeWebex;
use serde_json::json;

use crate::Args;

const URL: &str = "https://gateway.example.com/byova";

pub(crate) fn run(args: &Args) -> Result<String, String> {
    let fake = FakeWebex::start();
    let token = fake.mint_jws(&fake.data_source_claims(URL, "63b02f90-9cc6-43b8-aa6d-cad425ac554c"));
    let policy = byova_core::jws::JwsPolicy::new(URL)
        .and_then(|p| p.with_trusted_issuers([fake.broker_issuer()]))
        .map_err(|e| e.to_string())?;
    let iterations = args.iterations.max(1);
    let elapsed = if args.flavour == "blocking" {
        use byova_blocking::jws::{JwksCachePolicy, JwsVerifier};
        let http = byova_blocking::HttpClient::new(Duration::from_secs(5)).map_err(|e| e.to_string())?;
        let verifier =
            JwsVerifier::with_parts(policy, JwksCachePolicy::default(), http, Arc::new(SystemClock));
        verifier.verify(&token).map_err(|e| e.to_string())?;
        let started = Instant::now();
        for _ in 0..iterations {
            std::hint::black_box(verifier.verify(std::hint::black_box(&token)).map_err(|e| e.to_string())?);
        }
        started.elapsed()
    } else {
        use byova_async::jws::{JwksCachePolicy, JwsVerifier};
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let http = byova_async::HttpClient::new(Duration::from_secs(5)).map_err(|e| e.to_string())?;
            let verifier =
                JwsVerifier::with_parts(policy, JwksCachePolicy::default(), http, Arc::new(SystemClock));
            verifier.verify(&token).await.map_err(|e| e.to_string())?;
            let started = Instant::now();
            for _ in 0..iterations {
                std::hint::black_box(
                    verifier.verify(std::hint::black_box(&token)).await.map_err(|e| e.to_string())?,
                );
            }
            Ok::<_, String>(started.elapsed())
        })?
    };
    let per_second = iterations as f64 / elapsed.as_secs_f64();
    Ok(json!({
        "scenario": "jws",
        "flavour": args.flavour,
        "iterations": iterations,
        "verifications_per_second_per_core": per_second.round(),
        "us_per_verification": (elapsed.as_secs_f64() * 1e6 / iterations as f64 * 100.0).round() / 100.0,
        "key_fetches": fake.calls(byova_testkit::Endpoint::Jwks),
    })
    .to_string())
}
