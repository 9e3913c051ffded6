//! `byova demo`: the whole lifecycle on the real code paths, against a local fake Webex.

use std::sync::Arc;

use byova_async::{AuthorizeOptions, Byova, OrgId, ServiceAppEventKind, WebhookSecret};
use byova_testkit::{FakeWebex, wire};
use serde_json::json;

use byova_async::{IntegrationCredentials, ServiceAppCredentials};

use crate::{Failure, failure, status_json};

const ORG_A: &str = "11111111-aaaa-4aaa-8aaa-111111111111";
const ORG_B: &str = "22222222-bbbb-4bbb-8bbb-222222222222";

fn org_id(org: &'static str) -> OrgId {
    OrgId::from_static(org)
}

struct Steps {
    json: bool,
    n: usize,
}

impl Steps {
    fn say(&mut self, text: String) {
        self.n += 1;
        if self.json {
            println!("{}", json!({"step": self.n, "message": text}));
        } else {
            println!("{:>2}. {text}", self.n);
        }
    }
}

pub(crate) async fn run(as_json: bool) -> Result<(), Failure> {
    let mut steps = Steps { json: as_json, n: 0 };
    let fake = Arc::new(FakeWebex::start());
    steps.say(format!("Started a fake Webex at {} (no credentials or network needed)", fake.base_url()));

    let secret = WebhookSecret::new(format!("demo-{:016x}", byova_core::engine::random_u64()));
    let (integration, service_app) = demo_credentials(&fake);
    let byova = Arc::new(
        Byova::builder(integration, service_app)
            .config(fake.config())
            .webhook_secret(secret.clone())
            .build()?,
    );

    // The demo plays the browser: it visits the authorization URL and follows the redirect.
    let player = fake.clone();
    let browser = move |url: &str| {
        let (fake, url) = (player.clone(), url.to_owned());
        std::thread::spawn(move || {
            if let Ok(location) = fake.browser_visit(&url) {
                let _ = wire::send(&wire::get(&location));
            }
        });
        Ok(())
    };
    let tokens = byova.integration().authorize(AuthorizeOptions::default().with_browser(browser)).await?;
    steps.say(format!(
        "Authorized the Integration through the browser flow (loopback listener, state, PKCE S256); its token expires at {}",
        crate::when(tokens.expires_at())
    ));

    let listener = crate::serve::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr().map_err(|e| failure(3, e.to_string()))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = Arc::new(crate::serve::Daemon {
        byova: byova.clone(),
        touched: Vec::new(),
        board: Arc::default(),
        admin_token: None,
        metrics_per_key: false,
        token_secret: None,
        token_stats: Arc::new(crate::token::RequestStats::token_endpoint()),
        proxy_stats: Arc::default(),
        sinks: Arc::default(),
        data_sources: None,
    });
    let server = tokio::spawn(crate::serve::serve_http(
        daemon,
        listener,
        crate::serve::Role::Public,
        crate::serve::Limits { max_connections: 16 },
        async {
            let _ = stop_rx.await;
        },
    ));
    let target = format!("http://{addr}/webhook");
    let created = byova.ensure_service_app_webhooks(&target, Some(&secret)).await?;
    steps.say(format!(
        "Started the webhook receiver at {target} and registered {} serviceApp webhooks (signed)",
        created.len()
    ));

    for org in [ORG_A, ORG_B] {
        let outcomes = fake.admin_event_async(ServiceAppEventKind::Authorized, org).await;
        let ok = outcomes.iter().all(|o| o.status == Some(200));
        steps.say(format!(
            "A customer admin authorized the Service App for org {org}; Webex delivered the signed webhook ({}) and tokens were fetched",
            if ok { "answered 200" } else { "NOT accepted" }
        ));
        if !ok {
            return Err(failure(
                6,
                format!("the receiver did not accept the delivery for {org}: {outcomes:?}"),
            ));
        }
    }
    for org in [ORG_A, ORG_B] {
        let token = byova.service_app().get_access_token(&org_id(org)).await?;
        let valid = fake.is_access_token_valid(token.expose_secret());
        steps.say(format!(
            "Org {org} has a valid access token ({} characters; Webex accepts it: {valid})",
            token.expose_secret().len()
        ));
    }

    let before = fake.refresh_calls();
    byova.service_app().refresh_for_org(&org_id(ORG_A)).await?;
    steps.say(format!(
        "Refreshed org {ORG_A}'s token with its refresh token ({} refresh call)",
        fake.refresh_calls() - before
    ));

    let outcomes = fake.admin_event_async(ServiceAppEventKind::Deauthorized, ORG_B).await;
    steps.say(format!(
        "The admin of org {ORG_B} withdrew the authorization; the deauthorized webhook removed its tokens ({})",
        if outcomes.iter().all(|o| o.status == Some(200)) { "answered 200" } else { "NOT accepted" }
    ));
    let orgs = byova.service_app().list_orgs().await?;
    if orgs != [ORG_A] {
        return Err(failure(6, format!("expected only {ORG_A} to remain, found {orgs:?}")));
    }

    let statuses = byova.status().await?;
    if as_json {
        println!("{}", json!({"status": statuses.iter().map(status_json).collect::<Vec<_>>()}));
    } else {
        steps.say("Status:".into());
        for s in &statuses {
            let key = match &s.key {
                byova_core::TokenKey::Integration => "integration".to_owned(),
                byova_core::TokenKey::Org(o) => format!("org {o}"),
            };
            println!(
                "      {key:<44} {:<14} access token expires {}",
                s.state.as_str(),
                crate::when(s.access_expires_at)
            );
        }
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    if !as_json {
        println!(
            "\nDone. Against real Webex: set WEBEX_* (and BYOVA_STORAGE), run `byova authorize`, then `byova serve`."
        );
    }
    Ok(())
}

/// Credentials of the fake server, for the demo.
fn demo_credentials(fake: &byova_testkit::FakeWebex) -> (IntegrationCredentials, ServiceAppCredentials) {
    (
        fake.integration_credentials().with_redirect_uri("http://127.0.0.1:0/callback"),
        fake.service_app_credentials(),
    )
}
