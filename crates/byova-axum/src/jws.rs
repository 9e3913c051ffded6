//! [`JwsAuthLayer`]: a tower layer that lets through only requests whose bearer is a JWS
//! Webex's identity broker signed for this data source (see `byova_async::jws`), with the
//! verified claims in the request's extensions for the handler. It is plain tower, so it sits
//! in front of an axum router or a tonic server alike: a gRPC request (`content-type:
//! application/grpc…`) is refused with `grpc-status: 16` (`UNAUTHENTICATED`), any other with
//! `401` and `WWW-Authenticate: Bearer error="invalid_token"`; the token never reaches a log
//! or the answer. When the broker's keys cannot be had, the fault is the gateway's, not the
//! caller's: `503` (gRPC `14`, `UNAVAILABLE`), so Webex tries again; the details go to the log
//! only.
//!
//! ```
//! use std::sync::Arc;
//! use axum::{Extension, Router, routing::post};
//! use byova_async::jws::{JwsPolicy, JwsVerifier, VerifiedClaims};
//! use byova_axum::JwsAuthLayer;
//!
//! async fn handler(Extension(claims): Extension<VerifiedClaims>) -> String {
//!     format!("a call for {}", claims.claims["com.cisco.org.id"])
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let verifier = JwsVerifier::new(JwsPolicy::new("https://gateway.example.com/byova")?)?;
//! let app: Router = Router::new()
//!     .route("/byova.VoiceVirtualAgent/ProcessCallerInput", post(handler))
//!     .layer(JwsAuthLayer::new(Arc::new(verifier)));
//! # let _ = app;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use byova_async::jws::{JwsError, JwsVerifier};

/// Verifies the bearer of every request with a shared [`JwsVerifier`].
#[derive(Clone, Debug)]
pub struct JwsAuthLayer {
    verifier: Arc<JwsVerifier>,
}

impl JwsAuthLayer {
    /// A layer verifying with `verifier` (share one per process: it holds the key cache).
    pub fn new(verifier: Arc<JwsVerifier>) -> Self {
        Self { verifier }
    }
}

impl<S> tower_layer::Layer<S> for JwsAuthLayer {
    type Service = JwsAuth<S>;

    fn layer(&self, inner: S) -> JwsAuth<S> {
        JwsAuth { inner, verifier: self.verifier.clone() }
    }
}

/// The service [`JwsAuthLayer`] wraps around another.
#[derive(Clone, Debug)]
pub struct JwsAuth<S> {
    inner: S,
    verifier: Arc<JwsVerifier>,
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for JwsAuth<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready serves this request (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        Box::pin(async move {
            let grpc = is_grpc(req.headers());
            let verified = match bearer(req.headers()) {
                Some(token) => verifier.verify(&token).await,
                None => Err(JwsError::Malformed("no bearer token")),
            };
            match verified {
                Ok(claims) => {
                    req.extensions_mut().insert(claims);
                    inner.call(req).await
                }
                Err(refused) => {
                    tracing::debug!(reason = %refused, "refused a request: its JWS did not verify");
                    Ok(refusal(grpc, &refused))
                }
            }
        })
    }
}

/// Whether the request is gRPC.
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The token of `authorization: Bearer …` (the scheme in any case; gRPC metadata is a header).
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned()).filter(|t| !t.is_empty())
}

/// The refusal: gRPC's `UNAUTHENTICATED` (a trailers-only answer), or HTTP's 401; for keys
/// that cannot be had, `UNAVAILABLE` or 503.
fn refusal<B: Default>(grpc: bool, refused: &JwsError) -> Response<B> {
    let unavailable = matches!(refused, JwsError::KeysUnavailable(_));
    // byova's own reasons are fixed ASCII text; the one that carries a transport failure's
    // details is named without them.
    let reason = if unavailable {
        "the identity broker's keys are unavailable".to_owned()
    } else {
        refused.to_string()
    };
    let mut resp = Response::new(B::default());
    if !grpc {
        *resp.status_mut() =
            if unavailable { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::UNAUTHORIZED };
    }
    let headers = resp.headers_mut();
    if grpc {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from_static(if unavailable { "14" } else { "16" }));
        // grpc-message is percent-encoded; the reasons are ASCII text of byova's own.
        let encoded: String = reason
            .bytes()
            .map(|b| {
                if b.is_ascii_graphic() && b != b'%' || b == b' ' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        if let Ok(value) = HeaderValue::from_str(&encoded) {
            headers.insert("grpc-message", value);
        }
    } else if !unavailable {
        let challenge =
            format!("Bearer error=\"invalid_token\", error_description=\"{}\"", reason.replace('"', "'"));
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
    }
    resp
}
