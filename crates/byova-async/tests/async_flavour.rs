//! byova-async through the shared scenario table, plus request-shape tests with mockito.

use std::sync::Arc;
use std::time::Duration;

use byova_async::*;
use byova_testkit::scenarios::{self, BoxFut, Browser, Flavour, Sdk, Setup};

struct AsyncFlavour;

struct AsyncSdk {
    byova: Byova,
}

impl Flavour for AsyncFlavour {
    fn name(&self) -> &'static str {
        "async"
    }

    fn build(&self, setup: &Setup) -> Arc<dyn Sdk> {
        let mut builder = Byova::builder(setup.integration.clone(), setup.service_app.clone())
            .config(setup.config.clone())
            .storage(setup.async_storage.clone())
            .clock(setup.clock.clone());
        if let Some(secret) = &setup.webhook_secret {
            builder = builder.webhook_secret(secret.clone());
        }
        Arc::new(AsyncSdk { byova: builder.build().expect("build Byova") })
    }
}

impl Sdk for AsyncSdk {
    fn get_access_token(&self) -> BoxFut<'_, Result<AccessToken>> {
        Box::pin(self.byova.integration().get_access_token())
    }
    fn refresh(&self, refresh_token: Option<String>) -> BoxFut<'_, Result<OAuthTokens>> {
        Box::pin(async move { self.byova.integration().refresh(refresh_token.as_deref()).await })
    }
    fn get_authorization_url(&self) -> Result<(String, String)> {
        self.byova.integration().get_authorization_url(None, None)
    }
    fn exchange_code(&self, code: String) -> BoxFut<'_, Result<OAuthTokens>> {
        Box::pin(async move { self.byova.integration().exchange_code(&code).await })
    }
    fn authorize(&self, browser: Browser, timeout: Duration) -> BoxFut<'_, Result<OAuthTokens>> {
        let mut options = AuthorizeOptions::default().with_timeout(timeout);
        options.browser = Some(browser);
        Box::pin(self.byova.integration().authorize(options))
    }
    fn wait_for_redirect(
        &self,
        redirect_uri: String,
        state: String,
        timeout: Duration,
    ) -> BoxFut<'_, Result<(String, Option<String>)>> {
        let mut options = RedirectOptions::default();
        options.timeout = timeout;
        options.open_browser = false;
        options.expected_state = Some(state);
        Box::pin(async move { wait_for_redirect(&redirect_uri, options).await })
    }
    fn org_token(&self, org_id: String) -> BoxFut<'_, Result<AccessToken>> {
        Box::pin(async move { self.byova.service_app().get_access_token(&org_id).await })
    }
    fn fetch_token_for_org(&self, org_id: String) -> BoxFut<'_, Result<OAuthTokens>> {
        Box::pin(async move { self.byova.service_app().fetch_token_for_org(&org_id).await })
    }
    fn fetch_token_from_webhook_org(&self, encoded: String) -> BoxFut<'_, Result<(String, OAuthTokens)>> {
        Box::pin(async move { self.byova.service_app().fetch_token_from_webhook_org(&encoded).await })
    }
    fn save_registration(&self, org_id: String, refresh_token: String) -> BoxFut<'_, Result<OAuthTokens>> {
        Box::pin(async move { self.byova.service_app().save_registration(&org_id, &refresh_token).await })
    }
    fn refresh_for_org(&self, org_id: String) -> BoxFut<'_, Result<OAuthTokens>> {
        Box::pin(async move { self.byova.service_app().refresh_for_org(&org_id).await })
    }
    fn remove_org(&self, org_id: String) -> BoxFut<'_, Result<()>> {
        Box::pin(async move { self.byova.service_app().remove_org(&org_id).await })
    }
    fn application_id(&self) -> String {
        self.byova.service_app().application_id().to_owned()
    }
    fn handle_webhook(&self, body: Vec<u8>, signature: Option<String>) -> BoxFut<'_, Result<String>> {
        Box::pin(async move {
            self.byova.handle_service_app_webhook(&body, signature.as_deref()).await.map(|o| format!("{o:?}"))
        })
    }
    fn ensure_webhooks(
        &self,
        target_url: String,
        secret: Option<WebhookSecret>,
    ) -> BoxFut<'_, Result<usize>> {
        Box::pin(async move {
            self.byova.ensure_service_app_webhooks(&target_url, secret.as_ref()).await.map(|c| c.len())
        })
    }
    fn count_webhooks(&self) -> BoxFut<'_, Result<usize>> {
        Box::pin(async move { self.byova.list_webhooks().await.map(|w| w.len()) })
    }
    fn status(&self) -> BoxFut<'_, Result<Vec<KeyStatus>>> {
        Box::pin(self.byova.status())
    }
    fn refresh_all_orgs(&self, concurrency: usize) -> BoxFut<'_, Result<Vec<(String, bool)>>> {
        Box::pin(async move {
            let results = self.byova.refresh_all_orgs(concurrency).await?;
            Ok(results.into_iter().map(|r| (r.org_id, r.result.is_ok())).collect())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shared_scenario_table() {
    scenarios::run_all(Arc::new(AsyncFlavour)).await;
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
        Some(mock_config(&server)),
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
            byova_async::core::encode_webex_id("us", "ORGANIZATION", "o-1")
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
        Some(mock_config(&server)),
    );
    let sa = ServiceAppTokenManager::new(
        ServiceAppCredentials::new("Csa", "sa-secret"),
        integration,
        http,
        storage,
    );
    let tokens = sa.fetch_token_for_org("o-1").await.unwrap();
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
        Some(mock_config(&server)),
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
        Some(mock_config(&server)),
    );
    let err = manager.refresh(Some("R")).await.unwrap_err();
    assert!(matches!(err, Error::UnexpectedStatus(ref f) if f.status == 302), "{err:?}");
}
