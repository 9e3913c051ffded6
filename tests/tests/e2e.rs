//! End-to-end against the fake Webex: `BearerAuth` in both flavours (a revoked token meets one
//! 401, costs one refresh, and the retried request succeeds; 50 concurrent requests on the
//! same revoked token cost one refresh; a request whose body cannot be cloned is not retried),
//! and README's quickstart flows.

use std::sync::Arc;

use byova_core::{BlockingTokenStorage, Clock, InMemoryTokenStorage, SystemClock};
use byova_testkit::{Endpoint, FakeWebex};

const ORG: &str = "63b02f90-9cc6-43b8-aa6d-cad425ac554c";
static ORG_ID: std::sync::LazyLock<byova_core::OrgId> =
    std::sync::LazyLock::new(|| byova_core::OrgId::from_static(ORG));

struct World {
    fake: Arc<FakeWebex>,
    storage: Arc<InMemoryTokenStorage>,
}

fn world() -> World {
    let fake = Arc::new(FakeWebex::start());
    let storage = Arc::new(InMemoryTokenStorage::new());
    let now = SystemClock.now();
    storage.set_integration_tokens(&fake.issue_integration_tokens().to_oauth_tokens(now)).unwrap();
    storage
        .set_service_app_tokens(&ORG_ID, &fake.issue_service_app_tokens(ORG).to_oauth_tokens(now))
        .unwrap();
    World { fake, storage }
}

/// The rejection cool-down these tests run with (10 minutes by default).
const COOLDOWN: std::time::Duration = std::time::Duration::from_secs(1);

fn config(fake: &FakeWebex) -> byova_core::ByovaConfig {
    let mut config = fake.config();
    config.refresh.rejection_cooldown = COOLDOWN;
    config
}

fn token_calls(fake: &FakeWebex) -> u64 {
    fake.calls(Endpoint::AccessToken) + fake.calls(Endpoint::ApplicationToken)
}

impl World {
    fn async_byova(&self) -> Arc<byova_async::Byova> {
        let byova = byova_async::Byova::builder(
            self.fake.integration_credentials(),
            self.fake.service_app_credentials(),
        )
        .config(config(&self.fake))
        .storage(self.storage.clone())
        .build()
        .unwrap();
        Arc::new(byova)
    }

    fn blocking_byova(&self) -> Arc<byova_blocking::Byova> {
        let byova = byova_blocking::Byova::builder(
            self.fake.integration_credentials(),
            self.fake.service_app_credentials(),
        )
        .config(config(&self.fake))
        .storage(self.storage.clone())
        .build()
        .unwrap();
        Arc::new(byova)
    }

    fn people_me(&self) -> String {
        format!("{}/people/me", self.fake.base_url())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_middleware_renews_a_revoked_token_once() {
    for org in [None, Some(&*ORG_ID)] {
        let w = world();
        let byova = w.async_byova();
        let auth = match org {
            None => byova_async::BearerAuth::integration(byova.clone()),
            Some(org) => byova_async::BearerAuth::org(byova.clone(), org.clone()),
        };
        let client = bearer_client(auth);
        let first = client.get(w.people_me()).send().await.unwrap();
        assert_eq!(first.status(), 200, "{org:?}: the token is attached");
        let token = match org {
            None => byova.integration().get_access_token().await.unwrap(),
            Some(org) => byova.service_app().get_access_token(org).await.unwrap(),
        };
        assert!(w.fake.revoke_access_token(token.expose_secret()));
        let before = (w.fake.calls(Endpoint::PeopleMe), token_calls(&w.fake));
        let retried = client.get(w.people_me()).send().await.unwrap();
        assert_eq!(retried.status(), 200, "{org:?}: the retried request succeeds");
        assert_eq!(
            (w.fake.calls(Endpoint::PeopleMe) - before.0, token_calls(&w.fake) - before.1),
            (2, 1),
            "{org:?}: one 401, one refresh, one retry"
        );
        // Fifty requests at once on a token revoked again: one refresh between them.
        let token = match org {
            None => byova.integration().get_access_token().await.unwrap(),
            Some(org) => byova.service_app().get_access_token(org).await.unwrap(),
        };
        assert!(w.fake.revoke_access_token(token.expose_secret()));
        let calls = token_calls(&w.fake);
        let requests: Vec<_> = (0..50)
            .map(|_| {
                let (client, url) = (client.clone(), w.people_me());
                tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) })
            })
            .collect();
        for r in requests {
            assert_eq!(r.await.unwrap().unwrap(), 200);
        }
        assert_eq!(token_calls(&w.fake) - calls, 1, "{org:?}: fifty 401s, one refresh");
    }
}

/// Rule 11 with reqwest: 150 requests to a resource that answers 401 whatever the bearer (the
/// token lacks a scope) cost one refresh, not one per request; the 401s reach the caller; the
/// cool-down is stored, so another process holds back too; and a token Webex then really
/// revokes on another resource still renews at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_middleware_refreshes_once_for_a_401_no_token_cures() {
    for org in [None, Some(&*ORG_ID)] {
        let w = world();
        let byova = w.async_byova();
        let auth = |byova: &Arc<byova_async::Byova>| match org {
            None => byova_async::BearerAuth::integration(byova.clone()),
            Some(org) => byova_async::BearerAuth::org(byova.clone(), org.clone()),
        };
        let client = bearer_client(auth(&byova));
        let devices = format!("{}/devices", w.fake.base_url());
        let calls = token_calls(&w.fake);
        for _ in 0..150 {
            assert_eq!(client.get(&devices).send().await.unwrap().status(), 401);
        }
        let refreshes = token_calls(&w.fake) - calls;
        println!("{org:?}: 150 requests to a resource that always answers 401 -> {refreshes} refresh(es)");
        assert_eq!(refreshes, 1, "{org:?}: one renewal, then the 401s go back to the caller");
        assert_eq!(w.fake.calls(Endpoint::ScopeMissing), 151, "{org:?}: one retry, the first time only");
        // Another process sharing the store holds back as well.
        let other = bearer_client(auth(&w.async_byova()));
        for _ in 0..20 {
            assert_eq!(other.get(&devices).send().await.unwrap().status(), 401);
        }
        assert_eq!(token_calls(&w.fake) - calls, 1, "{org:?}: the cool-down is in the store");
        // The token works where its scopes reach; once the cool-down is over, a token Webex
        // really revoked renews at once.
        assert_eq!(client.get(w.people_me()).send().await.unwrap().status(), 200);
        let token = match org {
            None => byova.integration().get_access_token().await.unwrap(),
            Some(org) => byova.service_app().get_access_token(org).await.unwrap(),
        };
        assert!(w.fake.revoke_access_token(token.expose_secret()));
        tokio::time::sleep(COOLDOWN + std::time::Duration::from_millis(100)).await;
        assert_eq!(client.get(w.people_me()).send().await.unwrap().status(), 200, "{org:?}: renewed");
        assert_eq!(token_calls(&w.fake) - calls, 2, "{org:?}: a real revocation costs its one refresh");
    }
}

/// The same with ureq.
#[test]
fn ureq_middleware_refreshes_once_for_a_401_no_token_cures() {
    for org in [None, Some(&*ORG_ID)] {
        let w = world();
        let byova = w.blocking_byova();
        let auth = match org {
            None => byova_blocking::BearerAuth::integration(byova.clone()),
            Some(org) => byova_blocking::BearerAuth::org(byova.clone(), org.clone()),
        };
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).middleware(auth).build().into();
        let devices = format!("{}/devices", w.fake.base_url());
        let calls = token_calls(&w.fake);
        for _ in 0..150 {
            assert_eq!(agent.get(&devices).call().unwrap().status(), 401);
        }
        let refreshes = token_calls(&w.fake) - calls;
        println!(
            "{org:?} (ureq): 150 requests to a resource that always answers 401 -> {refreshes} refresh(es)"
        );
        assert_eq!(refreshes, 1, "{org:?}: one renewal, then the 401s go back to the caller");
        let token = match org {
            None => byova.integration().get_access_token().unwrap(),
            Some(org) => byova.service_app().get_access_token(org).unwrap(),
        };
        assert!(w.fake.revoke_access_token(token.expose_secret()));
        std::thread::sleep(COOLDOWN + std::time::Duration::from_millis(100));
        assert_eq!(agent.get(&w.people_me()).call().unwrap().status(), 200, "{org:?}: renewed");
        assert_eq!(token_calls(&w.fake) - calls, 2);
    }
}

/// A reqwest client whose requests go through `auth`.
fn bearer_client(auth: byova_async::BearerAuth) -> reqwest_middleware::ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(auth).build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_middleware_returns_the_401_of_a_streamed_body() {
    let w = world();
    let byova = w.async_byova();
    let client = bearer_client(byova_async::BearerAuth::integration(byova.clone()));
    let token = byova.integration().get_access_token().await.unwrap();
    assert!(w.fake.revoke_access_token(token.expose_secret()));
    let stream = futures_util::stream::once(async { Ok::<_, std::io::Error>(b"{}".to_vec()) });
    let response = client.get(w.people_me()).body(reqwest::Body::wrap_stream(stream)).send().await.unwrap();
    assert_eq!(response.status(), 401, "not retried: the body cannot be sent twice");
    assert_eq!(w.fake.calls(Endpoint::PeopleMe), 1);
    // The token was invalidated all the same: the next request gets a fresh one.
    let next = client.get(w.people_me()).send().await.unwrap();
    assert_eq!(next.status(), 200);
    assert_eq!(token_calls(&w.fake), 1);
    assert_eq!(
        w.fake.calls(Endpoint::PeopleMe),
        2,
        "the 401 invalidated the token: the next request went once"
    );
}

/// Tokens go to Webex's API origin only: the same server under another name gets none, and
/// its 401 invalidates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_auth_sends_tokens_to_the_api_origin_only() {
    let w = world();
    let byova = w.async_byova();
    let client = bearer_client(byova_async::BearerAuth::integration(byova.clone()));
    let elsewhere = w.people_me().replace("127.0.0.1", "localhost");
    assert_eq!(client.get(&elsewhere).send().await.unwrap().status(), 401, "no token attached");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .middleware(byova_blocking::BearerAuth::integration(w.blocking_byova()))
        .build()
        .into();
    assert_eq!(agent.get(&elsewhere).call().unwrap().status(), 401, "no token attached (ureq)");
    assert_eq!(token_calls(&w.fake), 0, "nothing invalidated, nothing refreshed");
    assert_eq!(client.get(w.people_me()).send().await.unwrap().status(), 200, "the API origin gets it");
}

#[test]
fn ureq_middleware_renews_a_revoked_token_once() {
    for org in [None, Some(&*ORG_ID)] {
        let w = world();
        let byova = w.blocking_byova();
        let auth = match org {
            None => byova_blocking::BearerAuth::integration(byova.clone()),
            Some(org) => byova_blocking::BearerAuth::org(byova.clone(), org.clone()),
        };
        let agent: ureq::Agent = ureq::Agent::config_builder().middleware(auth).build().into();
        assert_eq!(agent.get(&w.people_me()).call().unwrap().status(), 200, "{org:?}: the token is attached");
        let token = match org {
            None => byova.integration().get_access_token().unwrap(),
            Some(org) => byova.service_app().get_access_token(org).unwrap(),
        };
        assert!(w.fake.revoke_access_token(token.expose_secret()));
        let before = (w.fake.calls(Endpoint::PeopleMe), token_calls(&w.fake));
        assert_eq!(agent.get(&w.people_me()).call().unwrap().status(), 200, "{org:?}: the retry succeeds");
        assert_eq!(
            (w.fake.calls(Endpoint::PeopleMe) - before.0, token_calls(&w.fake) - before.1),
            (2, 1),
            "{org:?}: one 401, one refresh, one retry"
        );
        let token = match org {
            None => byova.integration().get_access_token().unwrap(),
            Some(org) => byova.service_app().get_access_token(org).unwrap(),
        };
        assert!(w.fake.revoke_access_token(token.expose_secret()));
        let calls = token_calls(&w.fake);
        std::thread::scope(|s| {
            for _ in 0..50 {
                let (agent, url) = (agent.clone(), w.people_me());
                s.spawn(move || assert_eq!(agent.get(&url).call().unwrap().status(), 200));
            }
        });
        assert_eq!(token_calls(&w.fake) - calls, 1, "{org:?}: fifty 401s, one refresh");
    }
}

#[test]
fn ureq_middleware_returns_the_401_of_a_request_with_a_body() {
    let w = world();
    let byova = w.blocking_byova();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .middleware(byova_blocking::BearerAuth::integration(byova.clone()))
        .build()
        .into();
    let token = byova.integration().get_access_token().unwrap();
    assert!(w.fake.revoke_access_token(token.expose_secret()));
    let response = agent.post(&w.people_me()).send("{}").unwrap();
    // The fake answers 401 before it looks at the method; the request is not retried.
    assert_eq!(response.status(), 401);
    assert_eq!(w.fake.calls(Endpoint::PeopleMe), 1);
    assert_eq!(
        agent.get(&w.people_me()).call().unwrap().status(),
        200,
        "the next request gets a fresh token"
    );
    assert_eq!(token_calls(&w.fake), 1);
}

/// README's async quickstart, against the fake Webex: the browser flow (a stand-in plays the
/// browser), then a signed `serviceApp` delivery registers an org.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quickstart_flow_against_the_fake() {
    use byova_async::{AuthorizeOptions, ServiceAppEventKind};
    let fake = Arc::new(FakeWebex::start());
    let play = fake.clone();
    let browser = move |url: &str| {
        let (fake, url) = (play.clone(), url.to_owned());
        std::thread::spawn(move || {
            let location = fake.browser_visit(&url).unwrap();
            byova_testkit::wire::send(&byova_testkit::wire::get(&location)).unwrap();
        });
        Ok(())
    };
    let integration = fake.integration_credentials().with_redirect_uri("http://127.0.0.1:0/callback");
    let secret = byova_async::WebhookSecret::new("quickstart-secret");
    let byova = byova_async::Byova::builder(integration, fake.service_app_credentials())
        .config(fake.config())
        .webhook_secret(secret.clone())
        .build()
        .unwrap();
    byova.integration().authorize(AuthorizeOptions::default().with_browser(browser)).await.unwrap();
    let bearer = byova.integration().get_access_token().await.unwrap();
    assert!(fake.is_access_token_valid(bearer.expose_secret()));
    fake.authorize_org(ORG);
    let (raw_body, signature) =
        fake.service_app_delivery(ServiceAppEventKind::Authorized, ORG, Some(&secret));
    let outcome = byova.handle_service_app_webhook(&raw_body, signature.as_deref()).await.unwrap();
    assert_eq!(outcome.org_id(), Some(&*ORG_ID));
    let org_token = byova.service_app().get_access_token(&ORG_ID).await.unwrap();
    assert!(fake.is_access_token_valid(org_token.expose_secret()));
}

/// README's blocking quickstart, against the fake Webex.
#[test]
fn the_readme_blocking_quickstart_against_the_fake() {
    let fake = FakeWebex::start();
    let issued = fake.issue_integration_tokens();
    let byova =
        byova_blocking::Byova::builder(fake.integration_credentials(), fake.service_app_credentials())
            .config(fake.config())
            .build()
            .unwrap();
    byova.integration().refresh(Some(&issued.refresh_token)).unwrap(); // stands in for authorize()
    let bearer = byova.integration().get_access_token().unwrap();
    assert!(fake.is_access_token_valid(bearer.expose_secret()));
    fake.authorize_org(ORG);
    byova.service_app().fetch_token_for_org(&ORG_ID).unwrap();
    let org_token = byova.service_app().get_access_token(&ORG_ID).unwrap();
    assert!(fake.is_access_token_valid(org_token.expose_secret()));
}
