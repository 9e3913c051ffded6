//! An axum gateway for a BYOVA provider:
//!
//! - `POST /webhook`: byova's `serviceApp` receiver (orgs authorize and deauthorize the
//!   Service App; their tokens are fetched and removed);
//! - `GET /orgs/{org_id}/me`: calls Webex for that org with its Service App token, which
//!   `BearerAuth` attaches, renews ahead of expiry and replaces on a 401.
//!
//! `/orgs/{org_id}/me` has no authentication of its own: put your own in front of it before
//! exposing it. Tokens live in Redis, so any number of gateway replicas share them (one refresh per
//! expiry between them). Configuration comes from the environment, as for the `byova` CLI:
//! `WEBEX_INTEGRATION_CLIENT_ID`/`_SECRET`, `WEBEX_SA_CLIENT_ID`/`_SECRET`,
//! `BYOVA_WEBHOOK_SECRET`, `BYOVA_STORAGE=redis://…` (or `rediss://…`), `BYOVA_BASE_URL` to
//! point at a test server. Register the webhook once with `byova webhooks ensure URL`.
//!
//! ```sh
//! cargo run -p example-gateway -- 0.0.0.0:8080
//! ```

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use byova_async::{BearerAuth, Byova, OrgId};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let redis = std::env::var("BYOVA_STORAGE").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned());
    let storage = Arc::new(byova_storage_redis::RedisTokenStorage::open(&redis)?);
    let byova = Arc::new(Byova::from_env_with_storage(storage)?);
    let app = axum::Router::new()
        .route("/orgs/{org_id}/me", get(who_am_i))
        .with_state(Gateway { byova: byova.clone(), http: reqwest::Client::new() })
        .merge(byova_axum::webhook_router(byova));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("gateway on http://{listen}: POST /webhook, GET /orgs/{{org_id}}/me");
    axum::serve(listener, app).await?;
    Ok(())
}

/// What the handlers share: byova and one HTTP client (one connection pool).
#[derive(Clone)]
struct Gateway {
    byova: Arc<Byova>,
    http: reqwest::Client,
}

/// Webex's `GET /people/me` with the org's Service App token.
/// The org id is parsed (and normalized) by the extractor: a malformed one is a 400.
async fn who_am_i(State(gateway): State<Gateway>, Path(org_id): Path<OrgId>) -> (StatusCode, String) {
    let url = format!("{}/people/me", gateway.byova.integration().config().base_url);
    let webex = reqwest_middleware::ClientBuilder::new(gateway.http.clone())
        .with(BearerAuth::org(gateway.byova, org_id))
        .build();
    match webex.get(url).send().await {
        Ok(response) => {
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, response.text().await.unwrap_or_default())
        }
        // Not authorized, not registered, storage down: the error says which, without secrets.
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()),
    }
}
