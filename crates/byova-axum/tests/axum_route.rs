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

/// Issue 23, item 2: the tower layer in front of an axum router lets through only requests
/// whose bearer the broker signed for this data source, hands the handler the claims, and
/// refuses the rest with 401 (HTTP) or grpc-status 16 (gRPC), naming the reason, never the
/// token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jws_layer_lets_through_only_what_webex_signed() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::{Extension, Router, routing::post};
    use byova_async::jws::{JwksCachePolicy, JwsPolicy, JwsVerifier, VerifiedClaims};
    use tower::ServiceExt as _;

    let fake = FakeWebex::start();
    let url = "https://gateway.example.com/byova";
    let policy = JwsPolicy::new(url).unwrap().with_trusted_issuers([fake.broker_issuer()]).unwrap();
    let http = byova_async::HttpClient::new(std::time::Duration::from_secs(5)).unwrap();
    let verifier =
        Arc::new(JwsVerifier::with_parts(policy, JwksCachePolicy::default(), http, Arc::new(SystemClock)));
    async fn handler(Extension(claims): Extension<VerifiedClaims>) -> String {
        format!("org {}", claims.claims["com.cisco.org.id"].as_str().unwrap_or_default())
    }
    let app = Router::new()
        .route("/byova.VoiceVirtualAgent/ProcessCallerInput", post(handler))
        .layer(byova_axum::JwsAuthLayer::new(verifier));
    let call = |auth: Option<String>, grpc: bool| {
        let app = app.clone();
        async move {
            let mut req = Request::post("/byova.VoiceVirtualAgent/ProcessCallerInput");
            if let Some(auth) = auth {
                req = req.header("authorization", auth);
            }
            if grpc {
                req = req.header("content-type", "application/grpc");
            }
            let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
            let (parts, body) = resp.into_parts();
            let body = axum::body::to_bytes(body, 1 << 16).await.unwrap();
            (parts, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let claims = fake.data_source_claims(url, ORG);
    let token = fake.mint_jws(&claims);
    let (parts, body) = call(Some(format!("Bearer {token}")), false).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, format!("org {ORG}"), "the handler reads the verified claims");
    let (parts, body) = call(Some(format!("bearer {token}")), true).await;
    assert_eq!((parts.status, body), (StatusCode::OK, format!("org {ORG}")), "gRPC metadata, any case");

    let (parts, _) = call(None, false).await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    let challenge = parts.headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("invalid_token") && challenge.contains("no bearer"), "{challenge}");
    let mut expired = claims.clone();
    expired["exp"] = (SystemClock.now().as_unix_secs() - 600).into();
    let expired = fake.mint_jws(&expired);
    let (parts, _) = call(Some(format!("Bearer {expired}")), false).await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    let challenge = parts.headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("expired") && !challenge.contains(&expired[..30]), "{challenge}");
    let (parts, body) = call(Some(format!("Bearer {}", fake.forge_hs256_jws(&claims))), true).await;
    assert_eq!(parts.status, StatusCode::OK, "gRPC refusals are trailers-only answers");
    assert_eq!(parts.headers["grpc-status"], "16", "UNAUTHENTICATED");
    assert!(parts.headers["grpc-message"].to_str().unwrap().contains("RS256"));
    assert!(body.is_empty());
    assert_eq!(fake.calls(Endpoint::Jwks), 1, "one key fetch for every request");

    // A broker that cannot be reached is the gateway's fault: 503 / UNAVAILABLE, no detail.
    let dead = "http://127.0.0.1:9/idb";
    let policy = JwsPolicy::new(url).unwrap().with_trusted_issuers([dead]).unwrap();
    let http = byova_async::HttpClient::new(std::time::Duration::from_secs(5)).unwrap();
    let verifier =
        Arc::new(JwsVerifier::with_parts(policy, JwksCachePolicy::default(), http, Arc::new(SystemClock)));
    let app = Router::new()
        .route("/byova.VoiceVirtualAgent/ProcessCallerInput", post(handler))
        .layer(byova_axum::JwsAuthLayer::new(verifier));
    let mut from_dead = claims.clone();
    from_dead["iss"] = dead.into();
    let token = fake.mint_jws(&from_dead);
    for grpc in [false, true] {
        let mut req = Request::post("/byova.VoiceVirtualAgent/ProcessCallerInput")
            .header("authorization", format!("Bearer {token}"));
        if grpc {
            req = req.header("content-type", "application/grpc");
        }
        let resp = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        if grpc {
            assert_eq!(resp.headers()["grpc-status"], "14", "UNAVAILABLE");
            let message = resp.headers()["grpc-message"].to_str().unwrap();
            assert!(message.contains("unavailable") && !message.contains("127.0.0.1"), "{message}");
        } else {
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
    }
}
