//! The fake Webex server checked against byova-core's requests and the reference protocol,
//! the fault switches, and the conformance suite (including that it catches broken backends).

use byova_core::OrgId;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use byova_core::backend::*;
use byova_core::engine::*;
use byova_core::ids::*;
use byova_core::oauth::*;
use byova_core::webhook::*;
use byova_core::*;
use byova_testkit::conformance::{self, Corrupter};
use byova_testkit::{AuthorizeMode, Endpoint, FakeClock, FakeWebex, Fault, wire};

const ORG: &str = "63b02f90-9cc6-43b8-aa6d-cad425ac554c";

fn send(req: &HttpRequest) -> HttpResponse {
    wire::send(req).expect("the fake answers")
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    form_pairs(query).remove(name)
}

fn form_pairs(s: &str) -> HashMap<String, String> {
    form_urlencoded::parse(s.as_bytes()).into_owned().collect()
}

/// Runs the authorization flow against the fake: returns the exchange response.
fn run_flow(fake: &FakeWebex, scopes: Option<&[&str]>) -> (OAuthTokens, AuthorizationRequest, String) {
    let config = fake.config();
    let creds = fake.integration_credentials();
    let builder = AuthorizationRequest::builder(&config, &creds);
    let auth = match scopes {
        Some(scopes) => builder.scopes(scopes),
        None => builder,
    }
    .build()
    .unwrap();
    let location = fake.browser_visit(&auth.url).unwrap();
    assert!(location.starts_with(&creds.redirect_uri), "{location}");
    assert_eq!(query_param(&location, "state").as_deref(), Some(auth.state.expose_secret()));
    let code = query_param(&location, "code").expect("a code");
    let req = code_exchange_request(
        &config,
        &creds,
        &AuthorizationCode::new(code.clone()),
        auth.pkce_verifier.as_ref(),
    );
    let tokens = parse_token_response(&send(&req), Timestamp::EPOCH, &TokenCall::CodeExchange).unwrap();
    (tokens, auth, code)
}

fn refresh(fake: &FakeWebex, creds: (&str, &ClientSecret), token: &str) -> Result<OAuthTokens, Error> {
    let req = refresh_request(&fake.config(), creds.0, creds.1, &RefreshToken::new(token));
    parse_token_response(&send(&req), Timestamp::EPOCH, &TokenCall::Refresh(TokenSubject::Integration))
}

fn int_refresh(fake: &FakeWebex, token: &str) -> Result<OAuthTokens, Error> {
    let c = fake.integration_credentials();
    refresh(fake, (&c.client_id, &c.client_secret), token)
}

fn sa_fetch(fake: &FakeWebex, bearer: &str, org: &str) -> Result<OAuthTokens, Error> {
    let org = OrgId::new(org)?;
    let req = service_app_token_request(
        &fake.config(),
        &fake.service_app_credentials(),
        &org,
        &AccessToken::new(bearer),
    );
    parse_token_response(&send(&req), Timestamp::EPOCH, &TokenCall::ServiceAppFetch { org_id: org })
}

#[test]
fn code_flow_with_pkce_issues_working_tokens_and_codes_are_single_use() {
    let fake = FakeWebex::start();
    let (tokens, auth, code) = run_flow(&fake, None);
    assert!(fake.is_access_token_valid(tokens.access_token.expose_secret()));
    assert_eq!(tokens.expires_in, 1_209_599);
    assert_eq!(tokens.refresh_token_expires_in, Some(7_775_999));
    let again = code_exchange_request(
        &fake.config(),
        &fake.integration_credentials(),
        &AuthorizationCode::new(code),
        auth.pkce_verifier.as_ref(),
    );
    let err = parse_token_response(&send(&again), Timestamp::EPOCH, &TokenCall::CodeExchange).unwrap_err();
    assert!(matches!(err, Error::Validation(ref f) if f.status == 400), "{err:?}");
    assert!(
        !fake.is_access_token_valid(tokens.access_token.expose_secret()),
        "reusing a code revokes its tokens"
    );
}

#[test]
fn a_wrong_or_missing_pkce_verifier_is_rejected() {
    let fake = FakeWebex::start();
    let (config, creds) = (fake.config(), fake.integration_credentials());
    for verifier in [Some(PkceCodeVerifier::new("w".repeat(43))), None] {
        let auth = AuthorizationRequest::new(&config, &creds).unwrap();
        let code = query_param(&fake.browser_visit(&auth.url).unwrap(), "code").unwrap();
        let req = code_exchange_request(&config, &creds, &AuthorizationCode::new(code), verifier.as_ref());
        let err = parse_token_response(&send(&req), Timestamp::EPOCH, &TokenCall::CodeExchange).unwrap_err();
        assert!(matches!(err, Error::Validation(_)), "{err:?}");
    }
}

#[test]
fn authorize_validates_client_redirect_and_scope() {
    let fake = FakeWebex::start();
    let config = fake.config();
    let creds = fake.integration_credentials();
    let bad_client = IntegrationCredentials::new("Cunknown", "x");
    let url = AuthorizationRequest::new(&config, &bad_client).unwrap().url;
    assert!(fake.browser_visit(&url).is_err(), "unknown client must not redirect");
    let other_path = creds.clone().with_redirect_uri("http://127.0.0.1:8765/elsewhere");
    assert!(fake.browser_visit(&AuthorizationRequest::new(&config, &other_path).unwrap().url).is_err());
    let remote = creds.clone().with_redirect_uri("http://evil.test:8765/callback");
    assert!(fake.browser_visit(&AuthorizationRequest::new(&config, &remote).unwrap().url).is_err());
    // RFC 8252 §7.3: any port on the loopback literal.
    let other_port = creds.clone().with_redirect_uri("http://127.0.0.1:45123/callback");
    let loc = fake.browser_visit(&AuthorizationRequest::new(&config, &other_port).unwrap().url).unwrap();
    assert!(loc.starts_with("http://127.0.0.1:45123/callback?code="), "{loc}");
    let scoped =
        AuthorizationRequest::builder(&config, &creds).scopes(&["spark:admin_everything"]).build().unwrap();
    let loc = fake.browser_visit(&scoped.url).unwrap();
    assert_eq!(query_param(&loc, "error").as_deref(), Some("invalid_scope"));
    assert_eq!(query_param(&loc, "state").as_deref(), Some(scoped.state.expose_secret()));
}

#[test]
fn authorize_can_deny() {
    let fake = FakeWebex::start();
    fake.update_settings(|s| s.authorize_mode = AuthorizeMode::Deny("access_denied".into()));
    let auth = AuthorizationRequest::new(&fake.config(), &fake.integration_credentials()).unwrap();
    let loc = fake.browser_visit(&auth.url).unwrap();
    assert_eq!(query_param(&loc, "error").as_deref(), Some("access_denied"));
    assert_eq!(query_param(&loc, "state").as_deref(), Some(auth.state.expose_secret()));
    assert!(query_param(&loc, "code").is_none());
}

#[test]
fn refresh_keeps_the_refresh_token_by_default_and_logs_redemptions() {
    let fake = FakeWebex::start();
    let issued = fake.issue_integration_tokens();
    let t = int_refresh(&fake, &issued.refresh_token).unwrap();
    assert!(t.refresh_token.unwrap().ct_eq_str(&issued.refresh_token));
    assert!(!t.access_token.ct_eq_str(&issued.access_token));
    let t2 = int_refresh(&fake, &issued.refresh_token).unwrap();
    assert!(fake.is_access_token_valid(t2.access_token.expose_secret()));
    assert_eq!(fake.refresh_calls(), 2);
    assert_eq!(fake.reused_refresh_tokens(), 0);
    assert!(fake.redemptions().iter().all(|r| r.accepted && r.refresh_token == issued.refresh_token));
    assert_eq!(fake.calls(Endpoint::AccessToken), 2);
}

#[test]
fn rotation_invalidates_old_refresh_tokens_and_strict_mode_revokes_the_family() {
    let fake = FakeWebex::start();
    fake.update_settings(|s| s.rotate_refresh_tokens = true);
    let issued = fake.issue_integration_tokens();
    let t = int_refresh(&fake, &issued.refresh_token).unwrap();
    let r2 = t.refresh_token.unwrap().expose_secret().to_owned();
    assert_ne!(r2, issued.refresh_token);
    let err = int_refresh(&fake, &issued.refresh_token).unwrap_err();
    assert!(matches!(err, Error::ReauthorizationRequired { .. }), "{err:?}");
    assert_eq!(fake.reused_refresh_tokens(), 1);
    // Lenient rotation: the family survives a reuse.
    let t3 = int_refresh(&fake, &r2).unwrap();
    let r3 = t3.refresh_token.unwrap().expose_secret().to_owned();
    fake.update_settings(|s| s.strict_rotation = true);
    assert!(int_refresh(&fake, &r2).is_err());
    assert!(
        matches!(int_refresh(&fake, &r3), Err(Error::ReauthorizationRequired { .. })),
        "strict mode revokes the family"
    );
    assert!(!fake.is_access_token_valid(t3.access_token.expose_secret()));
}

#[test]
fn refresh_responses_can_omit_the_refresh_token_and_shorten_lifetimes() {
    let fake = FakeWebex::start();
    fake.update_settings(|s| {
        s.omit_refresh_token = true;
        s.expires_in = 5;
    });
    let issued = fake.issue_integration_tokens();
    let t = int_refresh(&fake, &issued.refresh_token).unwrap();
    assert!(t.refresh_token.is_none());
    assert_eq!(t.expires_in, 5);
}

#[test]
fn client_credentials_in_basic_auth_and_error_shapes() {
    let fake = FakeWebex::start();
    let issued = fake.issue_integration_tokens();
    let creds = fake.integration_credentials();
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        creds.client_id,
        creds.client_secret.expose_secret()
    ));
    let body = format!("grant_type=refresh_token&refresh_token={}", issued.refresh_token);
    let req = wire::request(
        Method::Post,
        &format!("{}/access_token", fake.base_url()),
        body.into_bytes(),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", &format!("Basic {basic}")),
        ],
    );
    assert_eq!(send(&req).status, 200);
    let wrong =
        refresh(&fake, (&creds.client_id, &ClientSecret::new("wrong")), &issued.refresh_token).unwrap_err();
    assert!(matches!(wrong, Error::Authentication(ref f) if f.status == 401), "{wrong:?}");
    fake.update_settings(|s| s.oauth_error_bodies = true);
    let wrong =
        refresh(&fake, (&creds.client_id, &ClientSecret::new("wrong")), &issued.refresh_token).unwrap_err();
    assert_eq!(wrong.api_failure().unwrap().oauth_error, Some("invalid_client"));
    let bad = int_refresh(&fake, "no-such-token").unwrap_err();
    assert_eq!(bad.api_failure().unwrap().oauth_error, Some("invalid_grant"));
    assert!(matches!(bad, Error::ReauthorizationRequired { .. }));
    let json = wire::request(
        Method::Post,
        &format!("{}/access_token", fake.base_url()),
        b"{}".to_vec(),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(send(&json).status, 415);
}

#[test]
fn service_app_fetch_checks_bearer_scope_app_id_and_org_authorization() {
    let fake = FakeWebex::start();
    let bearer = fake.issue_integration_tokens().access_token;
    let err = sa_fetch(&fake, &bearer, ORG).unwrap_err();
    assert!(matches!(err, Error::ServiceAppNotAuthorized { ref org_id, .. } if org_id == ORG), "{err:?}");
    fake.authorize_org(ORG);
    let t = sa_fetch(&fake, &bearer, ORG).unwrap();
    assert_eq!(fake.org_of_access_token(t.access_token.expose_secret()).as_deref(), Some(ORG));
    assert!(
        matches!(sa_fetch(&fake, "not-a-token", ORG), Err(Error::Authentication(ref f)) if f.status == 401)
    );
    let (narrow, _, _) = run_flow(&fake, Some(&["spark:all"]));
    // Webex answers 403 both for a missing scope and an unauthorized org.
    assert!(
        matches!(sa_fetch(&fake, narrow.access_token.expose_secret(), ORG), Err(Error::ServiceAppNotAuthorized { ref failure, .. }) if failure.status == 403)
    );
    // The Service App refreshes with its own credentials, not the Integration's.
    let sa = fake.service_app_credentials();
    let rt = t.refresh_token.unwrap().expose_secret().to_owned();
    let refreshed = refresh(&fake, (&sa.client_id, &sa.client_secret), &rt).unwrap();
    assert_eq!(fake.org_of_access_token(refreshed.access_token.expose_secret()).as_deref(), Some(ORG));
    assert!(int_refresh(&fake, &rt).is_err());
    // The UUID form of targetOrgId, form-encoded, is accepted too; a wrong application id is 404.
    let app = derive_application_id(&sa.client_id);
    let form_body = format!(
        "clientId={}&clientSecret={}&targetOrgId={ORG}",
        sa.client_id,
        sa.client_secret.expose_secret()
    );
    let auth = format!("Bearer {bearer}");
    let headers = [("Content-Type", "application/x-www-form-urlencoded"), ("Authorization", auth.as_str())];
    let ok = wire::request(
        Method::Post,
        &format!("{}/applications/{app}/token", fake.base_url()),
        form_body.clone().into_bytes(),
        &headers,
    );
    assert_eq!(send(&ok).status, 200);
    let wrong_app = derive_application_id("Cother");
    let nf = wire::request(
        Method::Post,
        &format!("{}/applications/{wrong_app}/token", fake.base_url()),
        form_body.into_bytes(),
        &headers,
    );
    assert_eq!(send(&nf).status, 404);
}

#[test]
fn faults_rate_limit_server_error_drop_latency() {
    let fake = FakeWebex::start();
    let issued = fake.issue_integration_tokens();
    fake.inject(Endpoint::AccessToken, Fault::rate_limited(7));
    let err = int_refresh(&fake, &issued.refresh_token).unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    fake.inject_times(Endpoint::AccessToken, Fault::status(503), 2);
    assert!(matches!(int_refresh(&fake, &issued.refresh_token), Err(Error::Server(_))));
    assert!(matches!(int_refresh(&fake, &issued.refresh_token), Err(Error::Server(_))));
    assert!(int_refresh(&fake, &issued.refresh_token).is_ok());
    fake.inject(Endpoint::AccessToken, Fault::Drop);
    let req = refresh_request(
        &fake.config(),
        &fake.integration_credentials().client_id,
        &fake.integration_credentials().client_secret,
        &RefreshToken::new(issued.refresh_token.clone()),
    );
    assert!(wire::send(&req).is_err(), "a dropped connection yields no response");
    fake.inject(Endpoint::AccessToken, Fault::Latency(Duration::from_millis(300)));
    let start = Instant::now();
    assert!(int_refresh(&fake, &issued.refresh_token).is_ok());
    assert!(start.elapsed() >= Duration::from_millis(300));
    fake.inject(Endpoint::AccessToken, Fault::InvalidGrant);
    assert!(matches!(int_refresh(&fake, &issued.refresh_token), Err(Error::ReauthorizationRequired { .. })));
    fake.inject_always(Endpoint::AccessToken, Fault::status(502));
    for _ in 0..3 {
        assert!(matches!(int_refresh(&fake, &issued.refresh_token), Err(Error::Server(_))));
    }
    fake.clear_faults();
    assert!(int_refresh(&fake, &issued.refresh_token).is_ok());
    assert_eq!(fake.calls(Endpoint::AccessToken), 11);
}

#[test]
fn drop_after_processing_rotates_without_telling_the_client() {
    let fake = FakeWebex::start();
    fake.update_settings(|s| s.rotate_refresh_tokens = true);
    let issued = fake.issue_integration_tokens();
    fake.inject(Endpoint::AccessToken, Fault::DropAfterProcessing);
    let c = fake.integration_credentials();
    let req = refresh_request(
        &fake.config(),
        &c.client_id,
        &c.client_secret,
        &RefreshToken::new(issued.refresh_token.clone()),
    );
    assert!(wire::send(&req).is_err());
    assert!(matches!(int_refresh(&fake, &issued.refresh_token), Err(Error::ReauthorizationRequired { .. })));
    assert_eq!(fake.reused_refresh_tokens(), 1);
}

#[test]
fn every_response_has_a_tracking_id_and_inbound_ids_are_echoed() {
    let fake = FakeWebex::start();
    let r = send(&wire::get(&format!("{}/nothing-here", fake.base_url())));
    assert_eq!(r.status, 404);
    assert!(r.header("trackingId").is_some_and(|t| t.starts_with("FAKE_")));
    let req = wire::request(
        Method::Get,
        &format!("{}/webhooks", fake.base_url()),
        vec![],
        &[("TrackingID", "SIMPLE_abc")],
    );
    let r = send(&req);
    assert_eq!((r.status, r.header("trackingid")), (401, Some("SIMPLE_abc")));
    let err = api_error(&r);
    assert_eq!(err.tracking_id(), Some("SIMPLE_abc"));
}

#[test]
fn webhooks_crud_with_link_pagination() {
    let fake = FakeWebex::start();
    let config = fake.config();
    let token = AccessToken::new(fake.issue_integration_tokens().access_token);
    for i in 0..5 {
        let w = NewWebhook::service_app_pair(
            "APP",
            &format!("http://127.0.0.1:9/{i}"),
            Some(&WebhookSecret::new("s")),
        );
        let created = parse_webhook(&send(&create_webhook_request(&config, &token, &w[0]))).unwrap();
        assert_eq!(created.resource, "serviceApp");
    }
    let mut req = list_webhooks_request(&config, &token, 2);
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = parse_webhook_page(&send(&req)).unwrap();
        pages += 1;
        seen.extend(page.items.into_iter().map(|w| w.id));
        match page.next {
            Some(next) => req = next_page_request(&config, &token, &next).unwrap(),
            None => break,
        }
    }
    assert_eq!((seen.len(), pages), (5, 3));
    let get = wire::request(
        Method::Get,
        &format!("{}/webhooks/{}", fake.base_url(), seen[0]),
        vec![],
        &[("Authorization", &format!("Bearer {}", token.expose_secret()))],
    );
    assert_eq!(send(&get).status, 200);
    let put = wire::request(
        Method::Put,
        &format!("{}/webhooks/{}", fake.base_url(), seen[0]),
        br#"{"name":"renamed","targetUrl":"http://127.0.0.1:9/x"}"#.to_vec(),
        &[
            ("Authorization", &format!("Bearer {}", token.expose_secret())),
            ("Content-Type", "application/json"),
        ],
    );
    assert_eq!(parse_webhook(&send(&put)).unwrap().name, "renamed");
    let del = send(&delete_webhook_request(&config, &token, &seen[0]));
    assert_eq!(del.status, 204);
    parse_webhook_deletion(&del).unwrap();
    assert_eq!(send(&delete_webhook_request(&config, &token, &seen[0])).status, 404);
    assert!(matches!(
        parse_webhook_page(&send(&list_webhooks_request(&config, &AccessToken::new("bad"), 10))),
        Err(Error::Authentication(_))
    ));
}

/// Headers (lower-cased names) and body of one delivery.
type Delivery = (HashMap<String, String>, Vec<u8>);

/// A loopback receiver that records each delivery and answers `status`.
fn receiver(status: u16) -> (String, mpsc::Receiver<Delivery>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/webex", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = HashMap::new();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((n, v)) = line.split_once(':') {
                    headers.insert(n.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
            }
            let len = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let mut stream = stream;
            let _ = write!(stream, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if tx.send((headers, body)).is_err() {
                return;
            }
        }
    });
    (url, rx)
}

#[test]
fn admin_events_deliver_signed_service_app_webhooks() {
    let fake = FakeWebex::start();
    let config = fake.config();
    let token = AccessToken::new(fake.issue_integration_tokens().access_token);
    let (url, rx) = receiver(200);
    let secret = WebhookSecret::new("hook-secret");
    let app = derive_application_id(&fake.service_app_credentials().client_id);
    for w in NewWebhook::service_app_pair(&app, &url, Some(&secret)) {
        parse_webhook(&send(&create_webhook_request(&config, &token, &w))).unwrap();
    }
    // A webhook for another application is not delivered to.
    let other = NewWebhook::service_app_pair("OTHER", &url, None);
    parse_webhook(&send(&create_webhook_request(&config, &token, &other[0]))).unwrap();

    let outcomes = fake.admin_event(ServiceAppEventKind::Authorized, ORG);
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].status, Some(200));
    assert!(fake.is_org_authorized(ORG));
    let (headers, body) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    verify_signature(&secret, &body, headers.get("x-spark-signature").map(String::as_str)).unwrap();
    let event = parse_service_app_event(&body).unwrap();
    assert_eq!((event.kind, event.org_id.as_str()), (ServiceAppEventKind::Authorized, ORG));
    assert_eq!(event.application_id.as_deref(), Some(app.as_str()));

    let sa = sa_fetch(&fake, token.expose_secret(), ORG).unwrap();
    let outcomes = fake.admin_event(ServiceAppEventKind::Deauthorized, ORG);
    assert_eq!(outcomes.len(), 1);
    let (_, body) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(parse_service_app_event(&body).unwrap().kind, ServiceAppEventKind::Deauthorized);
    assert!(
        !fake.is_access_token_valid(sa.access_token.expose_secret()),
        "deauthorization revokes the org's tokens"
    );
}

#[test]
fn failing_receivers_get_their_webhook_disabled() {
    let fake = FakeWebex::start();
    fake.update_settings(|s| s.webhook_failure_limit = 3);
    let token = AccessToken::new(fake.issue_integration_tokens().access_token);
    let (url, _rx) = receiver(500);
    let app = derive_application_id(&fake.service_app_credentials().client_id);
    let w = NewWebhook::service_app_pair(&app, &url, None);
    parse_webhook(&send(&create_webhook_request(&fake.config(), &token, &w[0]))).unwrap();
    for _ in 0..3 {
        assert_eq!(fake.deliver(ServiceAppEventKind::Authorized, ORG)[0].status, Some(500));
    }
    assert!(
        fake.deliver(ServiceAppEventKind::Authorized, ORG).is_empty(),
        "an inactive webhook gets nothing"
    );
    let page = parse_webhook_page(&send(&list_webhooks_request(&fake.config(), &token, 10))).unwrap();
    assert_eq!(page.items[0].status.as_deref(), Some("inactive"));
}

#[test]
fn the_fake_judges_expiry_by_its_clock() {
    let clock = Arc::new(FakeClock::default());
    let fake = FakeWebex::builder().clock(clock.clone()).start();
    let issued = fake.issue_integration_tokens();
    assert!(fake.is_access_token_valid(&issued.access_token));
    clock.advance(Duration::from_secs(issued.expires_in + 1));
    assert!(!fake.is_access_token_valid(&issued.access_token));
    let stored = issued.expired_at(clock.now());
    assert!(stored.is_expired(Duration::ZERO, clock.now()));
    assert!(int_refresh(&fake, stored.refresh_token.as_ref().unwrap().expose_secret()).is_ok());
}

#[test]
fn delivery_bodies_for_in_process_handling() {
    let fake = FakeWebex::start();
    let secret = WebhookSecret::new("s3");
    let (body, sig) = fake.service_app_delivery(ServiceAppEventKind::Authorized, ORG, Some(&secret));
    verify_signature(&secret, &body, sig.as_deref()).unwrap();
    assert_eq!(parse_service_app_event(&body).unwrap().org_id, ORG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_helpers_work_inside_a_runtime() {
    let fake = FakeWebex::start();
    let auth = AuthorizationRequest::new(&fake.config(), &fake.integration_credentials()).unwrap();
    let loc = fake.browser_visit_async(&auth.url).await.unwrap();
    assert!(query_param(&loc, "code").is_some());
    let r = wire::send_async(&wire::get(&format!("{}/x", fake.base_url()))).await.unwrap();
    assert_eq!(r.status, 404);
}

// ---- the conformance suite ----

fn memory_corrupter(storage: &Arc<InMemoryTokenStorage>) -> Corrupter {
    let s = storage.clone();
    Box::new(move |key| s.put_raw_record(key, b"{\"schema\":1,\"access_token\":".to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_storage_passes_the_async_suite() {
    let storage = Arc::new(InMemoryTokenStorage::new());
    let report = conformance::check_token_storage(storage.clone(), Some(memory_corrupter(&storage))).await;
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert_eq!(report.passed.len(), 14);
}

#[test]
fn in_memory_storage_passes_the_blocking_suite() {
    let storage = Arc::new(InMemoryTokenStorage::new());
    let report = conformance::check_blocking_token_storage(storage.clone(), Some(memory_corrupter(&storage)));
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert_eq!(report.passed.len(), 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_storage_passes_the_suite_in_both_flavours() {
    use byova_core::{SealedStorage, StorageKeys};
    let keys = StorageKeys::parse("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=").unwrap();
    let raw = Arc::new(InMemoryTokenStorage::new());
    let sealed: Arc<dyn CoordinatedTokenStorage> =
        Arc::new(SealedStorage::new(raw.clone() as Arc<dyn CoordinatedTokenStorage>, Some(keys.clone())));
    let report = conformance::check_token_storage(sealed, Some(memory_corrupter(&raw))).await;
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    let raw = Arc::new(InMemoryTokenStorage::new());
    let sealed: Arc<dyn BlockingCoordinatedTokenStorage> =
        Arc::new(SealedStorage::new(raw.clone() as Arc<dyn BlockingCoordinatedTokenStorage>, Some(keys)));
    let corrupt = memory_corrupter(&raw);
    let report =
        tokio::task::spawn_blocking(move || conformance::check_blocking_token_storage(sealed, Some(corrupt)))
            .await
            .unwrap();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
}

/// A six-method backend: the six methods over a map.
#[derive(Default)]
struct SixMethods(Mutex<HashMap<String, OAuthTokens>>);

impl BlockingTokenStorage for SixMethods {
    fn get_integration_tokens(&self) -> Result<Option<OAuthTokens>, StorageError> {
        Ok(self.0.lock().unwrap().get("\0integration").cloned())
    }
    fn set_integration_tokens(&self, t: &OAuthTokens) -> Result<(), StorageError> {
        self.0.lock().unwrap().insert("\0integration".into(), t.clone());
        Ok(())
    }
    fn get_service_app_tokens(&self, org: &OrgId) -> Result<Option<OAuthTokens>, StorageError> {
        Ok(self.0.lock().unwrap().get(org.as_str()).cloned())
    }
    fn set_service_app_tokens(&self, org: &OrgId, t: &OAuthTokens) -> Result<(), StorageError> {
        self.0.lock().unwrap().insert(org.to_string(), t.clone());
        Ok(())
    }
    fn delete_service_app_tokens(&self, org: &OrgId) -> Result<(), StorageError> {
        self.0.lock().unwrap().remove(org.as_str());
        Ok(())
    }
    fn list_registered_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .keys()
            .filter(|k| !k.starts_with('\0'))
            .filter_map(|k| OrgId::new(k).ok())
            .collect())
    }
}

#[test]
fn a_seed_only_backend_passes_with_coordination_cases_skipped() {
    let report =
        conformance::check_blocking_token_storage(Arc::new(SingleProcess::new(SixMethods::default())), None);
    assert_eq!(report.passed.len(), 6);
    assert_eq!(
        report.skipped,
        [
            "versioned_writes",
            "versioned_delete",
            "lease_exclusivity_and_expiry",
            "lease_extension_by_the_owner_only",
            "concurrent_versioned_increments",
            "pending_authorizations",
            "shared_state",
            "corrupt_record_is_typed"
        ]
    );
}

/// Claims coordination but ignores versions: the suite must catch it.
struct IgnoresVersions(InMemoryTokenStorage);

impl BlockingCoordinatedTokenStorage for IgnoresVersions {
    fn load(&self, key: &TokenKey) -> Result<Option<Versioned<OAuthTokens>>, StorageError> {
        BlockingCoordinatedTokenStorage::load(&self.0, key)
    }
    fn store(&self, key: &TokenKey, t: &OAuthTokens, _expect: Expect) -> Result<u64, StorageError> {
        BlockingCoordinatedTokenStorage::store(&self.0, key, t, Expect::Any)
    }
    fn delete_org(&self, org: &OrgId, _expect: Expect) -> Result<(), StorageError> {
        BlockingCoordinatedTokenStorage::delete_org(&self.0, org, Expect::Any)
    }
    fn list_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
        BlockingCoordinatedTokenStorage::list_orgs(&self.0)
    }
    fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<Lease>, StorageError> {
        BlockingCoordinatedTokenStorage::try_acquire_lease(&self.0, key, ttl)
    }
    fn release_lease(&self, lease: &Lease) -> Result<(), StorageError> {
        BlockingCoordinatedTokenStorage::release_lease(&self.0, lease)
    }
    fn extend_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StorageError> {
        BlockingCoordinatedTokenStorage::extend_lease(&self.0, lease, ttl)
    }
}

#[test]
fn the_suite_catches_a_backend_that_ignores_versions() {
    let result = std::panic::catch_unwind(|| {
        conformance::check_blocking_token_storage(
            Arc::new(IgnoresVersions(InMemoryTokenStorage::new())),
            None,
        )
    });
    let message =
        result.expect_err("the suite must fail").downcast::<String>().map(|s| *s).unwrap_or_default();
    assert!(message.contains("versioned_writes"), "{message}");
    assert!(message.contains("versioned_delete"), "{message}");
    assert!(message.contains("concurrent_versioned_increments"), "{message}");
}
