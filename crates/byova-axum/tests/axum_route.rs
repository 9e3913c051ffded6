//! The axum route against the fake Webex, with the end-to-end cases `byova serve` passes:
//! signed, repeated, unsigned, tampered, oversized, not a delivery, deauthorized.

use std::sync::Arc;

use byova_core::{
    BlockingTokenStorage, Clock, InMemoryTokenStorage, SystemClock, WebhookSecret, engine::Method,
    webhook::ServiceAppEventKind,
};
use byova_testkit::{Endpoint, FakeWebex, wire};

const ORG: &str = "63b02f90-9cc6-43b8-aa6d-cad425ac554c";

/// POSTs `body` (with the signature header when given) and returns the status.
async fn post(url: String, body: Vec<u8>, signature: Option<String>) -> u16 {
    tokio::task::spawn_blocking(move || {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(sig) = signature.as_deref() {
            headers.push(("X-Spark-Signature", sig));
        }
        wire::send(&wire::request(Method::Post, &url, body, &headers)).map_or(0, |r| r.status)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_axum_route_answers_as_byova_serve_does() {
    let fake = Arc::new(FakeWebex::start());
    let storage = Arc::new(InMemoryTokenStorage::new());
    storage
        .set_integration_tokens(&fake.issue_integration_tokens().to_oauth_tokens(SystemClock.now()))
        .unwrap();
    let secret = WebhookSecret::new("axum-secret");
    let byova = byova_async::Byova::builder(fake.integration_credentials(), fake.service_app_credentials())
        .config(fake.config())
        .storage(storage.clone())
        .webhook_secret(secret.clone())
        .build()
        .unwrap();
    let byova = Arc::new(byova);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhook", listener.local_addr().unwrap());
    let app = axum::Router::new().merge(byova_axum::webhook_router(byova.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await });
    byova.ensure_service_app_webhooks(&url, Some(&secret)).await.unwrap();
    let registered = || storage.list_registered_orgs().unwrap();

    // Signed: Webex's own delivery registers the org.
    let f = fake.clone();
    let outcomes = tokio::task::spawn_blocking(move || f.admin_event(ServiceAppEventKind::Authorized, ORG))
        .await
        .unwrap();
    assert_eq!(outcomes.iter().map(|o| o.status).collect::<Vec<_>>(), [Some(200)]);
    assert_eq!(
        (registered(), fake.calls(Endpoint::ApplicationToken)),
        (vec![byova_core::OrgId::from_static(ORG)], 1)
    );
    // Repeated: answered 200, no second fetch.
    let f = fake.clone();
    let again =
        tokio::task::spawn_blocking(move || f.deliver(ServiceAppEventKind::Authorized, ORG)).await.unwrap();
    assert_eq!(again.iter().map(|o| o.status).collect::<Vec<_>>(), [Some(200)]);
    assert_eq!(fake.calls(Endpoint::ApplicationToken), 1, "a redelivery costs no fetch");

    let (body, signature) = fake.service_app_delivery(ServiceAppEventKind::Deauthorized, ORG, Some(&secret));
    // Unsigned and tampered: 401, nothing changes.
    assert_eq!(post(url.clone(), body.clone(), None).await, 401);
    let mut tampered = body.clone();
    let last = tampered.len() - 2;
    tampered[last] ^= 1;
    assert_eq!(post(url.clone(), tampered, signature.clone()).await, 401);
    assert_eq!(registered(), vec![byova_core::OrgId::from_static(ORG)], "refused deliveries change nothing");
    // Oversized: 413 before anything looks at it.
    assert_eq!(post(url.clone(), vec![b' '; 70 * 1024], signature.clone()).await, 413);
    // Signed but not a delivery: 400.
    let junk = br#"{"hello":"world"}"#.to_vec();
    let junk_signature = byova_core::webhook::sign(&secret, &junk);
    assert_eq!(post(url.clone(), junk, Some(junk_signature)).await, 400);
    // The signed deauthorization: 200, the org is removed.
    assert_eq!(post(url.clone(), body, signature).await, 200);
    assert!(registered().is_empty());
    // Only POST /webhook is served.
    let get = tokio::task::spawn_blocking({
        let url = url.clone();
        move || wire::send(&wire::request(Method::Get, &url, Vec::new(), &[])).map_or(0, |r| r.status)
    })
    .await
    .unwrap();
    assert_eq!(get, 405, "as byova serve answers it");
}

/// Rule 12: the route of a `Byova` built without a webhook secret refuses every delivery
/// (500, so Webex delivers it again once the secret is set) and registers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_the_route_refuses_every_delivery() {
    let fake = Arc::new(FakeWebex::start());
    let storage = Arc::new(InMemoryTokenStorage::new());
    storage
        .set_integration_tokens(&fake.issue_integration_tokens().to_oauth_tokens(SystemClock.now()))
        .unwrap();
    fake.authorize_org(ORG);
    let byova = byova_async::Byova::builder(fake.integration_credentials(), fake.service_app_credentials())
        .config(fake.config())
        .storage(storage.clone())
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhook", listener.local_addr().unwrap());
    let app = axum::Router::new().merge(byova_axum::webhook_router(Arc::new(byova)));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (body, _) = fake.service_app_delivery(ServiceAppEventKind::Authorized, ORG, None);
    let forged = byova_core::webhook::sign(&WebhookSecret::new("guess"), &body);
    assert_eq!(post(url.clone(), body.clone(), None).await, 500);
    assert_eq!(post(url, body, Some(forged)).await, 500);
    assert!(storage.list_registered_orgs().unwrap().is_empty());
    assert_eq!(fake.calls(Endpoint::ApplicationToken), 0);
}
