//! # byova-core
//!
//! The pure heart of byova, the Rust SDK for the authentication side of a Webex BYOVA
//! (Bring Your Own Virtual Agent) provider. It holds every OAuth decision and does no I/O:
//!
//! - **Types**: credentials, [`OAuthTokens`] / [`ServiceAppTokens`] with absolute expiry and a
//!   versioned storage form, [`ByovaConfig`], secret newtypes that never print.
//! - **Requests as values** ([`HttpRequest`]) and **parsers** of the [`HttpResponse`] a driver
//!   hands back: authorization URL with `state` and PKCE S256, code exchange, refresh, the
//!   Service App token fetch, the `/webhooks` API.
//! - **Policy**: [`RefreshPolicy`] (fresh, refresh-ahead with jitter, expired) and
//!   [`RetryPolicy`] (capped jittered backoff, `Retry-After`, no retry of a code exchange).
//! - **Webhooks**: tolerant `serviceApp` parsing and `X-Spark-Signature` verification.
//! - **Storage**: [`TokenStorage`] (async) and [`BlockingTokenStorage`] with coordination hooks
//!   (leases, versioned writes), and [`InMemoryTokenStorage`].
//!
//! Not here: sockets, HTTP clients, runtimes, files, the process environment (except the one
//! explicit edge, [`load_credentials_from_env`]) and clock reads (time is always an argument;
//! [`SystemClock`] or [`CoarseClock`] is handed in by drivers). The `byova-async` and `byova-blocking` crates drive
//! this core.
//!
//! ```
//! use byova_core::*;
//!
//! let config = ByovaConfig::with_base_url("http://127.0.0.1:9/v1")?;
//! let creds = IntegrationCredentials::new("C123", "secret");
//! let auth = AuthorizationRequest::new(&config, &creds, None, None, true)?;
//! assert!(auth.url.contains("code_challenge_method=S256"));
//!
//! // A driver sends `request` and hands the response back:
//! let request = code_exchange_request(&config, &creds, &AuthorizationCode::new("code"), auth.pkce_verifier.as_ref());
//! let response = HttpResponse::new(200, vec![], br#"{"access_token":"a","expires_in":3600,"refresh_token":"r"}"#.to_vec());
//! let sent_at = Timestamp::from_unix_secs(1_000);
//! let tokens = parse_token_response(&response, sent_at, &TokenCall::CodeExchange)?;
//! assert_eq!(RefreshPolicy::default().assess(&tokens, sent_at, 0), Freshness::Fresh);
//! # let _ = request;
//! # Ok::<(), byova_core::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cache;
mod config;
mod credentials;
mod error;
mod flow;
mod http;
mod ids;
mod listener;
mod oauth;
mod policy;
pub mod refresh;
mod secret;
mod storage;
mod time;
mod tokens;
mod webhook;

pub use cache::{CacheEntry, TokenCache};
pub use config::{ByovaConfig, DEFAULT_BASE_URL, env as config_env};
pub use credentials::{
    DEFAULT_INTEGRATION_SCOPES, DEFAULT_REDIRECT_URI, IntegrationCredentials, ServiceAppCredentials,
    credentials_from_lookup, env, load_credentials_from_env,
};
pub use error::{ApiFailure, Error, Result, TokenSubject};
pub use flow::{AuthorizeOptions, BrowserOpener, EnvSettings, PendingAuthorizations, RedirectOptions};
pub use http::{HeaderValue, HttpRequest, HttpResponse, Method, RetryClass};
pub use ids::{
    decode_org_id, decode_webex_id, derive_application_id, derive_application_id_in_region, encode_webex_id,
    normalize_org_id,
};
pub use listener::{
    CallbackHandler, CallbackReply, CallbackVerdict, LoopbackRedirect, MAX_CALLBACK_HEAD_BYTES, RequestHead,
    parse_request_head,
};
pub use oauth::{
    AuthorizationRequest, MAX_TOKEN_RESPONSE_BYTES, TokenCall, api_error, code_exchange_request,
    error_from_response, known_oauth_error, parse_retry_after, parse_token_response, refresh_request,
    service_app_token_request, tracking_id,
};
pub use policy::{
    CoordinationPolicy, Freshness, KeyStatus, RefreshPolicy, RetryDecision, RetryPolicy, TokenState,
};
pub use refresh::{Outcome, RefreshClient, RefreshMachine, RefreshMode, Step};
pub use secret::{
    AccessToken, AuthorizationCode, ClientSecret, CsrfState, PkceCodeVerifier, RefreshToken, WebhookSecret,
    random_u64,
};
pub use storage::{
    BlockingTokenStorage, Expect, InMemoryTokenStorage, Lease, StorageError, StorageErrorKind, TokenKey,
    TokenStorage, UNVERSIONED, Versioned, decode_record,
};
pub use time::{Clock, CoarseClock, SystemClock, Timestamp};
pub use tokens::{OAuthTokens, ServiceAppTokens, TOKEN_SCHEMA_VERSION};
pub use webhook::{
    Admission, MAX_WEBHOOK_BODY_BYTES, NewWebhook, SIGNATURE_HEADER, ServiceAppEvent, ServiceAppEventKind,
    SignatureError, WEBHOOK_DEDUP_CAPACITY, Webhook, WebhookGate, WebhookOutcome, WebhookPage,
    create_webhook_request, delete_webhook_request, list_webhooks_request, missing_webhooks, next_link,
    next_page_request, parse_service_app_event, parse_webhook, parse_webhook_deletion, parse_webhook_page,
    sign, verify_signature,
};

/// `async_trait`, re-exported so backends implement [`TokenStorage`] with the same macro.
pub use async_trait::async_trait;
