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
