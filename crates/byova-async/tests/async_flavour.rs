//! byova-async through the shared scenario table, plus request-shape tests with mockito.

use byova_core::OrgId;
use std::sync::Arc;
use std::time::Duration;

use byova_async::*;
use byova_testkit::scenarios;

byova_testkit::flavour_adapter!(async byova_async);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shared_scenario_table() {
    scenarios::run_all(Arc::new(Adapter)).await;
}

// ---- request shapes, checked against mockito ----

fn mock_config(server: &mockito::Server) -> ByovaConfig {
    let mut config = ByovaConfig::with_base_url(&format!("{}/v1", server.url())).unwrap();
    config.retry.base_delay = Duration::from_millis(5);
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_sends_the_form_fields_and_headers_webex_expects() {
    let mut server = mockito::Server::new_async().await;
    let mock = server
        .mock("POST", "/v1/access_token")
        .match_header("content-type", "application/x-www-form-urlencoded")
        .match_header("trackingid", mockito::Matcher::Regex("^byova_[0-9a-f]{32}$".into()))
        .match_header("user-agent", mockito::Matcher::Regex("^byova/".into()))
        .match_body(mockito::Matcher::AllOf(vec![
            mockito::Matcher::UrlEncoded("grant_type".into(), "refresh_token".into()),
            mockito::Matcher::UrlEncoded("refresh_token".into(), "R-1".into()),
            mockito::Matcher::UrlEncoded("client_id".into(), "Cint".into()),
            mockito::Matcher::UrlEncoded("client_secret".into(), "int-secret".into()),
        ]))
        .with_status(200)
        .with_body(r#"{"access_token":"A","expires_in":3600}"#)
        .create_async()
        .await;
    let http = HttpClient::new(Duration::from_secs(5)).unwrap();
    let manager = IntegrationTokenManager::new(
        IntegrationCredentials::new("Cint", "int-secret"),
        http,
        Arc::new(InMemoryTokenStorage::new()),
        mock_config(&server),
    );
    let tokens = manager.refresh(Some("R-1")).await.unwrap();
    assert!(
        tokens.refresh_token.unwrap().ct_eq_str("R-1"),
        "the given refresh token is kept when none comes back"
    );
    mock.assert_async().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn service_app_fetch_sends_json_with_the_integration_bearer() {
    let mut server = mockito::Server::new_async().await;
    let app = derive_application_id("Csa");
    let fetch = server
        .mock("POST", format!("/v1/applications/{app}/token").as_str())
        .match_header("authorization", "Bearer INT-TOKEN")
        .match_header("content-type", "application/json")
        .match_body(json_body(&format!(
            r#"{{"clientId":"Csa","clientSecret":"sa-secret","targetOrgId":"{}"}}"#,
            byova_async::core::ids::encode_webex_id("us", "ORGANIZATION", "o-1")
        )))
        .with_status(200)
        .with_body(r#"{"access_token":"SA","expires_in":3600,"refresh_token":"SR","token_type":"Bearer"}"#)
        .create_async()
        .await;
    let storage = Arc::new(InMemoryTokenStorage::new());
    let now = SystemClock.now();
    TokenStorage::set_integration_tokens(
        storage.as_ref(),
        &OAuthTokens::new(AccessToken::new("INT-TOKEN"), 3600, now),
    )
    .await
    .unwrap();
    let http = HttpClient::new(Duration::from_secs(5)).unwrap();
    let integration = IntegrationTokenManager::new(
        IntegrationCredentials::new("Cint", "s"),
        http.clone(),
        storage.clone(),
        mock_config(&server),
    );
    let sa = ServiceAppTokenManager::new(
        ServiceAppCredentials::new("Csa", "sa-secret"),
        integration,
        http,
        storage,
    );
    let tokens = sa.fetch_token_for_org(&OrgId::from_static("o-1")).await.unwrap();
    assert!(tokens.access_token.ct_eq_str("SA"));
    fetch.assert_async().await;
}

fn json_body(text: &str) -> mockito::Matcher {
    mockito::Matcher::JsonString(text.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_code_exchange_answered_500_is_not_retried() {
    let mut server = mockito::Server::new_async().await;
    let mock = server.mock("POST", "/v1/access_token").with_status(500).expect(1).create_async().await;
    let manager = IntegrationTokenManager::new(
        IntegrationCredentials::new("Cint", "s"),
        HttpClient::new(Duration::from_secs(5)).unwrap(),
        Arc::new(InMemoryTokenStorage::new()),
        mock_config(&server),
    );
    let err = manager.exchange_code("code").await.unwrap_err();
    assert!(matches!(err, Error::Server(_)));
    mock.assert_async().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_from_the_token_endpoint_are_not_followed() {
    let mut server = mockito::Server::new_async().await;
    let _redirect = server
        .mock("POST", "/v1/access_token")
        .with_status(302)
        .with_header("Location", "http://127.0.0.1:9/steal")
        .create_async()
        .await;
    let manager = IntegrationTokenManager::new(
        IntegrationCredentials::new("Cint", "s"),
        HttpClient::new(Duration::from_secs(5)).unwrap(),
        Arc::new(InMemoryTokenStorage::new()),
        mock_config(&server),
    );
    let err = manager.refresh(Some("R")).await.unwrap_err();
    assert!(matches!(err, Error::UnexpectedStatus(ref f) if f.status == 302), "{err:?}");
}

// ---- a store that never answers ----

/// Every call waits forever (a hung database, a partitioned Redis).
struct Hung;

#[byova_core::async_trait]
impl TokenStorage for Hung {
    async fn get_integration_tokens(&self) -> std::result::Result<Option<OAuthTokens>, StorageError> {
        std::future::pending().await
    }
    async fn set_integration_tokens(&self, _: &OAuthTokens) -> std::result::Result<(), StorageError> {
        std::future::pending().await
    }
    async fn get_service_app_tokens(
        &self,
        _: &OrgId,
    ) -> std::result::Result<Option<OAuthTokens>, StorageError> {
        std::future::pending().await
    }
    async fn set_service_app_tokens(
        &self,
        _: &OrgId,
        _: &OAuthTokens,
    ) -> std::result::Result<(), StorageError> {
        std::future::pending().await
    }
    async fn delete_service_app_tokens(&self, _: &OrgId) -> std::result::Result<(), StorageError> {
        std::future::pending().await
    }
    async fn list_registered_orgs(&self) -> std::result::Result<Vec<OrgId>, StorageError> {
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_never_answers_fails_every_call_in_time_as_unavailable() {
    let fake = byova_testkit::FakeWebex::start();
    let mut config = fake.config();
    config.storage_timeout = Duration::from_millis(300);
    let byova = Byova::builder(fake.integration_credentials(), fake.service_app_credentials())
        .config(config)
        .storage(Arc::new(byova_async::SingleProcess::new(Hung)))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let errors = [
        byova.integration().get_access_token().await.map(drop).unwrap_err(),
        byova.service_app().get_access_token(&OrgId::from_static("org-1")).await.map(drop).unwrap_err(),
        byova.status().await.map(drop).unwrap_err(),
    ];
    for e in &errors {
        assert!(
            matches!(e, Error::Storage(s) if s.kind() == StorageErrorKind::Unavailable && s.is_retryable()),
            "{e:?}"
        );
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "three calls bounded by 300 ms each (with the refresh path's re-reads): {took:?}"
    );
    assert_eq!(
        fake.calls(byova_testkit::Endpoint::AccessToken),
        0,
        "nothing was spent while the store was away"
    );
}

// ---- inbound JWS, against the fake identity broker ----

mod inbound_jws {
    use super::*;
    use byova_async::jws::{JwksCachePolicy, JwsError, JwsPolicy, JwsVerifier};
    use byova_testkit::{Endpoint, FakeWebex, Fault};
    use serde_json::{Value, json};

    const URL: &str = "https://gateway.example.com/byova";
    const ORG: &str = "63b02f90-9cc6-43b8-aa6d-cad425ac554c";

    fn verifier(fake: &FakeWebex, cache: JwksCachePolicy) -> JwsVerifier {
        let policy = JwsPolicy::new(URL).unwrap().with_trusted_issuers([fake.broker_issuer()]).unwrap();
        let http = HttpClient::new(Duration::from_secs(5)).unwrap();
        JwsVerifier::with_parts(policy, cache, http, Arc::new(SystemClock))
    }

    fn with(claims: &Value, change: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
        let mut claims = claims.clone();
        change(claims.as_object_mut().unwrap());
        claims
    }

    /// The verification matrix: a valid JWS passes; every way of being wrong is refused with
    /// its own error; an untrusted issuer costs no fetch.
    #[tokio::test(flavor = "multi_thread")]
    async fn every_way_of_being_wrong_has_its_own_refusal() {
        let fake = FakeWebex::start();
        let v = verifier(&fake, JwksCachePolicy::default());
        let good = fake.data_source_claims(URL, ORG);
        let verified = v.verify(&fake.mint_jws(&good)).await.unwrap();
        assert_eq!(verified.data_source_url, URL);
        assert_eq!(verified.issuer, fake.broker_issuer());
        assert_eq!(verified.claims["com.cisco.org.id"], ORG);
        assert_eq!(fake.calls(Endpoint::Jwks), 1);

        let now = SystemClock.now().as_unix_secs();
        let signed = fake.mint_jws(&good);
        let (head, _) = signed.split_once('.').unwrap();
        let (_, signature) = signed.rsplit_once('.').unwrap();
        let other_claims = {
            use base64::Engine as _;
            let c = with(&good, |c| drop(c.insert("sub".into(), "somebody-else".into())));
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.to_string())
        };
        let tampered = format!("{head}.{other_claims}.{signature}");
        let unsigned = {
            let t = fake.mint_jws_with_header(&json!({"alg": "none"}), &good);
            format!("{}.", t.rsplit_once('.').unwrap().0)
        };
        let cases: Vec<(&str, String, JwsError)> = vec![
            (
                "a key the broker never published",
                fake.mint_jws_with_foreign_key(&good),
                JwsError::BadSignature,
            ),
            ("claims changed after signing", tampered, JwsError::BadSignature),
            (
                "an issuer not trusted",
                fake.mint_jws(&with(&good, |c| {
                    drop(c.insert("iss".into(), "https://attacker.example/idb".into()))
                })),
                JwsError::UntrustedIssuer,
            ),
            (
                "expired",
                fake.mint_jws(&with(&good, |c| drop(c.insert("exp".into(), (now - 120).into())))),
                JwsError::Expired,
            ),
            (
                "not yet valid",
                fake.mint_jws(&with(&good, |c| drop(c.insert("nbf".into(), (now + 120).into())))),
                JwsError::NotYetValid,
            ),
            ("no jti", fake.mint_jws(&with(&good, |c| drop(c.remove("jti")))), JwsError::MissingClaim("jti")),
            ("no aud", fake.mint_jws(&with(&good, |c| drop(c.remove("aud")))), JwsError::MissingClaim("aud")),
            ("no sub", fake.mint_jws(&with(&good, |c| drop(c.remove("sub")))), JwsError::MissingClaim("sub")),
            (
                "another data source",
                fake.mint_jws(&with(&good, |c| {
                    drop(c.insert("com.cisco.datasource.url".into(), "https://evil.example".into()))
                })),
                JwsError::WrongDataSourceUrl,
            ),
            (
                "another schema",
                fake.mint_jws(&with(&good, |c| {
                    drop(c.insert(
                        "com.cisco.datasource.schema.uuid".into(),
                        "00000000-0000-4000-8000-000000000000".into(),
                    ))
                })),
                JwsError::WrongSchema,
            ),
            ("alg none", unsigned, JwsError::Algorithm),
            ("HS256 keyed with the public key", fake.forge_hs256_jws(&good), JwsError::Algorithm),
        ];
        for (what, token, expected) in cases {
            let refused = v.verify(&token).await.expect_err(what);
            assert_eq!(refused, expected, "{what}");
            assert!(!refused.to_string().contains(&token[..40]), "{what}: the error echoes the token");
        }
        assert_eq!(fake.calls(Endpoint::Jwks), 1, "no refusal above cost a fetch");
    }

    /// The broker rotates its key: the new kid is picked up with one fetch (once the minimum
    /// interval since the last fetch has passed), and the old key still verifies.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_rotated_key_is_picked_up_with_one_fetch() {
        let fake = FakeWebex::start();
        let cache = JwksCachePolicy::new(
            Duration::from_secs(3600),
            Duration::from_secs(5),
            Duration::from_secs(3600),
        );
        let v = verifier(&fake, cache);
        let claims = fake.data_source_claims(URL, ORG);
        let old = fake.mint_jws(&claims);
        // The new key is generated before the clock starts, so that the rotation is instant.
        fake.stage_broker_key();
        v.verify(&old).await.unwrap();
        let fetched = tokio::time::Instant::now();
        let kid = fake.rotate_broker_key();
        let new = fake.mint_jws(&claims);
        assert_eq!(
            v.verify(&new).await,
            Err(JwsError::UnknownKey),
            "{kid}: within the minimum interval, no fetch"
        );
        tokio::time::sleep_until(fetched + Duration::from_millis(5050)).await;
        let verified = futures_join_all((0..20).map(|_| v.verify(&new))).await;
        assert!(verified.iter().all(Result::is_ok), "{verified:?}");
        assert_eq!(fake.calls(Endpoint::Jwks), 2, "one fetch for twenty requests with the new kid");
        v.verify(&old).await.unwrap();
        assert_eq!(fake.calls(Endpoint::Jwks), 2);
    }

    /// 1,000 requests with random unknown kids, over about three seconds: at most one fetch
    /// per minimum interval (one second here), every one refused.
    #[tokio::test(flavor = "multi_thread")]
    async fn random_kids_cannot_make_it_fetch_in_a_loop() {
        let fake = FakeWebex::start();
        let cache = JwksCachePolicy::new(
            Duration::from_secs(3600),
            Duration::from_secs(1),
            Duration::from_secs(3600),
        );
        let v = Arc::new(verifier(&fake, cache));
        let claims = fake.data_source_claims(URL, ORG);
        v.verify(&fake.mint_jws(&claims)).await.unwrap();
        let tokens: Vec<String> = (0..1000)
            .map(|i| fake.mint_jws_with_header(&json!({"alg": "RS256", "kid": format!("random-{i}-{:x}", byova_core::engine::random_u64())}), &claims))
            .collect();
        let started = std::time::Instant::now();
        for batch in tokens.chunks(50) {
            let results = futures_join_all(batch.iter().map(|t| v.verify(t))).await;
            assert!(results.iter().all(|r| *r == Err(JwsError::UnknownKey)), "{results:?}");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let fetches = fake.calls(Endpoint::Jwks) - 1;
        eprintln!("1,000 random kids over {elapsed:.1} s: {fetches} fetches");
        assert!(fetches as f64 <= 1.0 + elapsed, "{fetches} fetches in {elapsed:.1} s, at most one a second");
        assert!(elapsed > 2.0, "the run spans several intervals");
    }

    /// The broker answers 429: the cached keys keep verifying past their freshness, then,
    /// past the stale bound, a clear error; once it answers again, tokens verify.
    #[tokio::test(flavor = "multi_thread")]
    async fn stale_keys_serve_while_the_broker_answers_429_then_a_clear_error() {
        let fake = FakeWebex::start();
        let cache =
            JwksCachePolicy::new(Duration::from_secs(1), Duration::from_millis(200), Duration::from_secs(4));
        let v = verifier(&fake, cache);
        let claims = fake.data_source_claims(URL, ORG);
        let token = fake.mint_jws(&claims);
        v.verify(&token).await.unwrap();
        let fetched = tokio::time::Instant::now();
        fake.inject_always(Endpoint::Jwks, Fault::rate_limited(1));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        v.verify(&token).await.expect("stale keys while the broker answers 429");
        assert_eq!(fake.calls(Endpoint::Jwks), 2, "it asked once, and was refused");
        // Past fresh (1 s) and the stale bound (4 s more).
        tokio::time::sleep_until(fetched + Duration::from_millis(5200)).await;
        match v.verify(&token).await {
            Err(JwsError::KeysUnavailable(why)) => {
                assert!(why.contains("429") && why.contains("too old"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        fake.clear_faults();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        v.verify(&token).await.expect("the broker answers again");
    }

    /// Requests dropped while their key fetch is in flight (a client that resets its stream, a
    /// timeout layer) still count as fetches: random kids over three seconds against a slow
    /// broker make at most one fetch per interval (one second).
    #[tokio::test(flavor = "multi_thread")]
    async fn requests_dropped_mid_fetch_cannot_make_it_fetch_in_a_loop() {
        let fake = FakeWebex::start();
        let cache = JwksCachePolicy::new(
            Duration::from_secs(3600),
            Duration::from_secs(1),
            Duration::from_secs(3600),
        );
        let v = verifier(&fake, cache);
        let claims = fake.data_source_claims(URL, ORG);
        v.verify(&fake.mint_jws(&claims)).await.unwrap();
        fake.set_answer_latency(Endpoint::Jwks, Duration::from_millis(800));
        let started = std::time::Instant::now();
        let mut dropped = 0;
        while started.elapsed() < Duration::from_secs(3) {
            let kid = format!("random-{:x}", byova_core::engine::random_u64());
            let token = fake.mint_jws_with_header(&json!({"alg": "RS256", "kid": kid}), &claims);
            if tokio::time::timeout(Duration::from_millis(50), v.verify(&token)).await.is_err() {
                dropped += 1;
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let fetches = fake.calls(Endpoint::Jwks) - 1;
        eprintln!("{dropped} requests dropped mid-fetch over {elapsed:.1} s: {fetches} fetches");
        assert!(dropped >= 1, "some requests were dropped while their fetch was in flight");
        assert!(fetches as f64 <= 1.0 + elapsed, "{fetches} fetches in {elapsed:.1} s, at most one a second");
    }

    /// A request whose fetch is dropped mid-way does not leave the others without it: the
    /// fetch runs on its own, and a request with the broker's newly rotated kid, waiting behind
    /// it, verifies.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_dropped_request_does_not_cancel_the_fetch_others_wait_for() {
        let fake = FakeWebex::start();
        let cache = JwksCachePolicy::new(
            Duration::from_secs(3600),
            Duration::from_millis(500),
            Duration::from_secs(3600),
        );
        let v = Arc::new(verifier(&fake, cache));
        let claims = fake.data_source_claims(URL, ORG);
        fake.stage_broker_key();
        v.verify(&fake.mint_jws(&claims)).await.unwrap();
        fake.rotate_broker_key();
        let new = fake.mint_jws(&claims);
        tokio::time::sleep(Duration::from_millis(600)).await;
        fake.set_answer_latency(Endpoint::Jwks, Duration::from_millis(800));
        let dropped = tokio::time::timeout(Duration::from_millis(100), v.verify(&new));
        let waiting = {
            let (v, new) = (v.clone(), new.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                v.verify(&new).await
            })
        };
        assert!(dropped.await.is_err(), "the first request gave up mid-fetch");
        let verified = waiting.await.unwrap();
        assert!(verified.is_ok(), "{verified:?}");
        assert_eq!(fake.calls(Endpoint::Jwks), 2, "one fetch, finished though its caller left");
    }

    /// Past fresh, one request refreshes the keys while the others verify with the stale ones
    /// instead of waiting for the broker.
    #[tokio::test(flavor = "multi_thread")]
    async fn stale_keys_serve_while_one_request_refreshes() {
        let fake = FakeWebex::start();
        let cache = JwksCachePolicy::new(
            Duration::from_secs(1),
            Duration::from_millis(200),
            Duration::from_secs(3600),
        );
        let v = Arc::new(verifier(&fake, cache));
        let token = fake.mint_jws(&fake.data_source_claims(URL, ORG));
        v.verify(&token).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        fake.set_answer_latency(Endpoint::Jwks, Duration::from_millis(800));
        let timed: Vec<_> = (0..20)
            .map(|_| {
                let (v, token) = (v.clone(), token.clone());
                tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    let verified = v.verify(&token).await;
                    (verified.is_ok(), started.elapsed())
                })
            })
            .collect();
        let mut quick = 0;
        for t in timed {
            let (ok, took) = t.await.unwrap();
            assert!(ok);
            quick += usize::from(took < Duration::from_millis(400));
        }
        assert!(quick >= 19, "{quick} of 20 answered before the 800 ms fetch finished");
        assert_eq!(fake.calls(Endpoint::Jwks), 2, "one refresh");
    }

    async fn futures_join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
        let mut out = Vec::new();
        let handles: Vec<_> = futures.collect();
        // Polled together, so they contend for the cache and the fetch as requests would.
        let mut pinned: Vec<std::pin::Pin<Box<F>>> = handles.into_iter().map(Box::pin).collect();
        let mut done: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (future, slot) in pinned.iter_mut().zip(done.iter_mut()) {
                if slot.is_none() {
                    match future.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => *slot = Some(v),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
        })
        .await;
        out.extend(done.into_iter().flatten());
        out
    }
}
