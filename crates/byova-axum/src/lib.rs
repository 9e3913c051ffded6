//! byova's `serviceApp` webhook receiver as an [`axum::Router`], to mount in your own server
//! instead of running `byova serve` beside it.
//!
//! [`webhook_router`] serves `POST /webhook` exactly as `byova serve` does: the raw body (at
//! most [`MAX_WEBHOOK_BODY_BYTES`]), verified against `X-Spark-Signature` with the
//! [`Byova`]'s webhook secret(s), then applied; `200` with the outcome, `401` for a signature
//! that does not verify, `400` for a body that is not a `serviceApp` delivery, `413` for one
//! too large, `405` to any other method, `500` (details in the log only) for anything Webex
//! should deliver again. The
//! answers come from the same function in byova-core that `byova serve` uses.
//!
//! ```
//! use std::sync::Arc;
//! use byova_async::{Byova, OrgId, ServiceAppEventKind, WebhookSecret};
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let fake = byova_testkit::FakeWebex::start();
//! # let builder = Byova::builder(fake.integration_credentials(), fake.service_app_credentials());
//! let secret = WebhookSecret::new("the secret Webex signs deliveries with");
//! # let byova = Arc::new(builder.config(fake.config()).webhook_secret(secret.clone()).build()?);
//! # let issued = fake.issue_integration_tokens();
//! # byova.integration().refresh(Some(&issued.refresh_token)).await?; // stands in for authorize()
//! let app = axum::Router::new().merge(byova_axum::webhook_router(byova.clone()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?; // behind your public URL
//! let url = format!("http://{}/webhook", listener.local_addr()?);
//! tokio::spawn(async move { axum::serve(listener, app).await });
//! byova.ensure_service_app_webhooks(&url, Some(&secret)).await?; // Webex delivers here now
//!
//! // A customer admin authorizes the Service App; Webex posts the signed delivery, the
//! // router verifies it and the org's tokens are fetched and stored.
//! let org: OrgId = "63b02f90-9cc6-43b8-aa6d-cad425ac554c".parse()?;
//! # fake.admin_event_async(ServiceAppEventKind::Authorized, &org).await;
//! assert_eq!(byova.service_app().list_orgs().await?, [org]);
//! # Ok(()) }
//! ```
//!
//! [`JwsAuthLayer`] is the other half of a gateway's authentication: it lets through only
//! the requests Webex signed for your data source.
//!
//! Put a request timeout in front of it (tower-http's `TimeoutLayer`, or your proxy's): axum
//! imposes none, and `byova serve` gives a delivery 10 s to arrive.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod jws;
pub use jws::{JwsAuth, JwsAuthLayer};

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use byova_async::Byova;
use byova_async::core::webhook::{
    DeliveryBodyProblem, MAX_WEBHOOK_BODY_BYTES, SIGNATURE_HEADER, delivery_body_reply,
    delivery_method_reply, delivery_reply,
};

/// `POST /webhook` for `byova`'s Service App deliveries.
pub fn webhook_router(byova: Arc<Byova>) -> Router {
    Router::new()
        .route("/webhook", post(webhook).fallback(method_not_allowed))
        .layer(DefaultBodyLimit::max(MAX_WEBHOOK_BODY_BYTES))
        .with_state(byova)
}

async fn webhook(
    State(byova): State<Arc<Byova>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return reply(delivery_body_reply(DeliveryBodyProblem::TooLarge));
        }
        Err(_) => return reply(delivery_body_reply(DeliveryBodyProblem::Unreadable)),
    };
    let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    reply(delivery_reply(&byova.handle_service_app_webhook(&body, signature).await))
}

async fn method_not_allowed() -> Response {
    let mut response = reply(delivery_method_reply());
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

fn reply((status, body): (u16, String)) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
