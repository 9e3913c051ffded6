//! byova-blocking through the shared scenario table (each call on a blocking thread), plus
//! blocking-only behaviour.

use std::sync::Arc;
use std::time::Duration;

use byova_blocking::*;
use byova_testkit::scenarios;

byova_testkit::flavour_adapter!(blocking byova_blocking);

#[test]
fn the_shared_scenario_table() {
    // Named threads: the flavour refuses to block for minutes on threads named like tokio's
    // default workers, and the blocking pool shares the runtime's thread name.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .max_blocking_threads(1200)
        .thread_name("scenario-runner")
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(scenarios::run_all(Arc::new(Adapter)));
}

#[test]
fn two_hundred_threads_on_an_expired_token_make_one_call() {
    let fake = byova_testkit::FakeWebex::start();
    fake.set_latency(byova_testkit::Endpoint::AccessToken, Duration::from_millis(50));
    let storage = Arc::new(InMemoryTokenStorage::new());
    let issued = fake.issue_integration_tokens();
    BlockingTokenStorage::set_integration_tokens(storage.as_ref(), &issued.expired_at(SystemClock.now()))
        .unwrap();
    let byova = byova_on(&fake, storage);
    let tokens: Vec<AccessToken> = std::thread::scope(|s| {
        let handles: Vec<_> =
            (0..200).map(|_| s.spawn(|| byova.integration().get_access_token().unwrap())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(fake.calls(byova_testkit::Endpoint::AccessToken), 1);
    assert!(tokens.iter().all(|t| t.ct_eq(&tokens[0])));
}

#[tokio::test(flavor = "current_thread")]
async fn authorize_on_an_async_worker_fails_fast_instead_of_hanging() {
    // #[tokio::test] runs on a thread tokio names like its workers only for multi-thread
    // runtimes, so run the call on a real worker.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let outcome = runtime
        .spawn(async {
            let byova =
                Byova::builder(IntegrationCredentials::new("C", "s"), ServiceAppCredentials::new("C2", "s"))
                    .build()
                    .unwrap();
            let started = std::time::Instant::now();
            let err =
                byova.integration().authorize(AuthorizeOptions::default().without_browser()).unwrap_err();
            (err, started.elapsed())
        })
        .await
        .unwrap();
    assert!(matches!(&outcome.0, Error::Configuration(m) if m.contains("spawn_blocking")), "{:?}", outcome.0);
    assert!(outcome.1 < Duration::from_secs(1));
    runtime.shutdown_background();
}

/// The blocking verifier: a valid JWS passes, an untrusted issuer costs no fetch, and twenty
/// threads meeting a cold cache fetch the broker's keys once.
#[test]
fn inbound_jws_verify_with_one_fetch_for_many_threads() {
    use byova_blocking::jws::{JwksCachePolicy, JwsError, JwsPolicy, JwsVerifier};
    use byova_testkit::{Endpoint, FakeWebex};
    let fake = FakeWebex::start();
    let url = "https://gateway.example.com/byova";
    let policy = JwsPolicy::new(url).unwrap().with_trusted_issuers([fake.broker_issuer()]).unwrap();
    let http = HttpClient::new(Duration::from_secs(5)).unwrap();
    let verifier = JwsVerifier::with_parts(policy, JwksCachePolicy::default(), http, Arc::new(SystemClock));
    let mut claims = fake.data_source_claims(url, "63b02f90-9cc6-43b8-aa6d-cad425ac554c");
    let token = fake.mint_jws(&claims);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..20).map(|_| scope.spawn(|| verifier.verify(&token))).collect();
        for t in threads {
            assert_eq!(t.join().unwrap().unwrap().data_source_url, url);
        }
    });
    assert_eq!(fake.calls(Endpoint::Jwks), 1, "one fetch for twenty threads");
    claims["iss"] = "https://attacker.example/idb".into();
    assert_eq!(verifier.verify(&fake.mint_jws(&claims)), Err(JwsError::UntrustedIssuer));
    assert_eq!(fake.calls(Endpoint::Jwks), 1);
}

/// The blocking flavour keeps an org's data source: registered once, left while its token is
/// not due, updated when the wanted lifetime changes.
#[test]
fn an_orgs_data_source_is_registered_kept_and_updated() {
    use byova_core::datasource::{DataSourceAction, DataSourceSpec};
    let fake = byova_testkit::FakeWebex::start();
    let org = "63b02f90-9cc6-43b8-aa6d-cad425ac554c";
    let storage = Arc::new(InMemoryTokenStorage::new());
    let now = SystemClock.now();
    BlockingTokenStorage::set_integration_tokens(
        storage.as_ref(),
        &fake.issue_integration_tokens().to_oauth_tokens(now),
    )
    .unwrap();
    let org_id = byova_core::OrgId::new(org).unwrap();
    BlockingTokenStorage::set_service_app_tokens(
        storage.as_ref(),
        &org_id,
        &fake.issue_service_app_tokens(org).to_oauth_tokens(now),
    )
    .unwrap();
    let byova = byova_on(&fake, storage);
    let spec =
        DataSourceSpec::new("https://gateway.example.com/byova").unwrap().with_lifetime_minutes(60).unwrap();
    let made = byova.ensure_data_source(&org_id, &spec).unwrap();
    assert_eq!(made.action, DataSourceAction::Registered);
    let made_id = made.data_source.map(|d| d.id);
    let kept = byova.ensure_data_source(&org_id, &spec).unwrap();
    assert_eq!(kept.action, DataSourceAction::Kept, "{kept:?}");
    assert_eq!(kept.data_source.map(|d| d.id), made_id);
    let longer = spec.with_lifetime_minutes(90).unwrap();
    let updated = byova.ensure_data_source(&org_id, &longer).unwrap();
    assert_eq!(updated.action, DataSourceAction::Updated);
    let updated = updated.data_source.unwrap();
    assert_eq!(Some(updated.id), made_id);
    assert_eq!(updated.token_lifetime_minutes, Some(90));
    assert_eq!(byova.list_data_sources(&org_id).unwrap().len(), 1);
    assert_eq!(fake.data_source_lapses(), 0);
}

/// The blocking SDK against `fake`, over `storage`.
fn byova_on(fake: &byova_testkit::FakeWebex, storage: Arc<InMemoryTokenStorage>) -> Byova {
    Byova::builder(fake.integration_credentials(), fake.service_app_credentials())
        .config(fake.config())
        .storage(storage)
        .build()
        .unwrap()
}
