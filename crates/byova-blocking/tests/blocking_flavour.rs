//! byova-blocking through the shared scenario table (each call on a blocking thread), plus
//! blocking-only behaviour.

use std::sync::Arc;
use std::time::Duration;

use byova_blocking::*;
use byova_testkit::scenarios::{self, BoxFut, Browser, Flavour, Sdk, Setup};

struct BlockingFlavour;

struct BlockingSdk {
    byova: Arc<Byova>,
}

impl Flavour for BlockingFlavour {
    fn name(&self) -> &'static str {
        "blocking"
    }

    fn build(&self, setup: &Setup) -> Arc<dyn Sdk> {
        let mut builder = Byova::builder(setup.integration.clone(), setup.service_app.clone())
            .config(setup.config.clone())
            .storage(setup.blocking_storage.clone())
            .clock(setup.clock.clone());
        if let Some(secret) = &setup.webhook_secret {
            builder = builder.webhook_secret(secret.clone());
        }
        Arc::new(BlockingSdk { byova: Arc::new(builder.build().expect("build Byova")) })
    }
}

impl BlockingSdk {
    /// Runs a blocking call on the runtime's blocking pool, as async callers must.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Byova) -> Result<T> + Send + 'static,
    ) -> BoxFut<'_, Result<T>> {
        let byova = self.byova.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&byova))
                .await
                .unwrap_or_else(|e| Err(Error::Configuration(format!("blocking call panicked: {e}"))))
        })
    }
}

impl Sdk for BlockingSdk {
    fn get_access_token(&self) -> BoxFut<'_, Result<AccessToken>> {
        self.call(|b| b.integration().get_access_token())
    }
    fn refresh(&self, refresh_token: Option<String>) -> BoxFut<'_, Result<OAuthTokens>> {
        self.call(move |b| b.integration().refresh(refresh_token.as_deref()))
    }
    fn get_authorization_url(&self) -> Result<(String, String)> {
        self.byova.integration().get_authorization_url(None, None)
    }
    fn exchange_code(&self, code: String) -> BoxFut<'_, Result<OAuthTokens>> {
        self.call(move |b| b.integration().exchange_code(&code))
    }
    fn authorize(&self, browser: Browser, timeout: Duration) -> BoxFut<'_, Result<OAuthTokens>> {
        let mut options = AuthorizeOptions::default().with_timeout(timeout);
        options.browser = Some(browser);
        self.call(move |b| b.integration().authorize(options))
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
        self.call(move |_| wait_for_redirect(&redirect_uri, options))
    }
    fn org_token(&self, org_id: String) -> BoxFut<'_, Result<AccessToken>> {
        self.call(move |b| b.service_app().get_access_token(&org_id))
    }
    fn fetch_token_for_org(&self, org_id: String) -> BoxFut<'_, Result<OAuthTokens>> {
        self.call(move |b| b.service_app().fetch_token_for_org(&org_id))
    }
    fn fetch_token_from_webhook_org(&self, encoded: String) -> BoxFut<'_, Result<(String, OAuthTokens)>> {
        self.call(move |b| b.service_app().fetch_token_from_webhook_org(&encoded))
    }
    fn save_registration(&self, org_id: String, refresh_token: String) -> BoxFut<'_, Result<OAuthTokens>> {
        self.call(move |b| b.service_app().save_registration(&org_id, &refresh_token))
    }
    fn refresh_for_org(&self, org_id: String) -> BoxFut<'_, Result<OAuthTokens>> {
        self.call(move |b| b.service_app().refresh_for_org(&org_id))
    }
    fn remove_org(&self, org_id: String) -> BoxFut<'_, Result<()>> {
        self.call(move |b| b.service_app().remove_org(&org_id))
    }
    fn application_id(&self) -> String {
        self.byova.service_app().application_id().to_owned()
    }
    fn handle_webhook(&self, body: Vec<u8>, signature: Option<String>) -> BoxFut<'_, Result<String>> {
        self.call(move |b| {
            b.handle_service_app_webhook(&body, signature.as_deref()).map(|o| format!("{o:?}"))
        })
    }
    fn ensure_webhooks(
        &self,
        target_url: String,
        secret: Option<WebhookSecret>,
    ) -> BoxFut<'_, Result<usize>> {
        self.call(move |b| b.ensure_service_app_webhooks(&target_url, secret.as_ref()).map(|c| c.len()))
    }
    fn count_webhooks(&self) -> BoxFut<'_, Result<usize>> {
        self.call(|b| b.list_webhooks().map(|w| w.len()))
    }
    fn status(&self) -> BoxFut<'_, Result<Vec<KeyStatus>>> {
        self.call(|b| b.status())
    }
    fn refresh_all_orgs(&self, concurrency: usize) -> BoxFut<'_, Result<Vec<(String, bool)>>> {
        self.call(move |b| {
            Ok(b.refresh_all_orgs(concurrency)?.into_iter().map(|r| (r.org_id, r.result.is_ok())).collect())
        })
    }
}

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
    runtime.block_on(scenarios::run_all(Arc::new(BlockingFlavour)));
}

#[test]
fn two_hundred_threads_on_an_expired_token_make_one_call() {
    let fake = byova_testkit::FakeWebex::start();
    fake.set_latency(byova_testkit::Endpoint::AccessToken, Duration::from_millis(50));
    let storage = Arc::new(InMemoryTokenStorage::new());
    let issued = fake.issue_integration_tokens();
    BlockingTokenStorage::set_integration_tokens(storage.as_ref(), &issued.expired_at(SystemClock.now()))
        .unwrap();
    let byova = Byova::builder(fake.integration_credentials(), fake.service_app_credentials())
        .config(fake.config())
        .storage(storage)
        .build()
        .unwrap();
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
