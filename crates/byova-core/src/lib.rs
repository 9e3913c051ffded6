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
//! - **Policy**: [`RefreshPolicy`] (fresh, due in a per-key point of the refresh window, expired) and
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

mod authorize;
mod budget;
mod builder;
mod cache;
mod config;
mod credentials;
pub mod engine;
mod error;
mod http;
mod ids;
mod key;
mod listener;
mod metrics;
mod oauth;
mod pending;
mod policy;
mod schedule;
mod sealing;
mod secret;
mod storage;
mod time;
mod tokens;
mod webhook;

pub use authorize::{
    AuthorizeOptions, BrowserOpener, RedirectOptions, authorization_prompt, browser_command_for,
    browser_environment, system_browser_command,
};
pub use budget::{BudgetDecision, BudgetState, TOKEN_BUDGET_STATE, TokenBudget};
pub use builder::{ByovaBuilder, EnvSettings, Facade, Parts, parse_webhook_secrets, webhook_secrets};
pub use cache::{CacheEntry, TokenCache, Unsaved};
pub use config::{ByovaConfig, DEFAULT_BASE_URL, env as config_env};
pub use credentials::{
    DEFAULT_INTEGRATION_SCOPES, DEFAULT_REDIRECT_URI, IntegrationCredentials, ServiceAppCredentials,
    credentials_from_lookup, env, load_credentials_from_env,
};
pub use engine::{
    BulkProgress, Flight, IntegrationEngine, Invalidation, OrgRefresh, ProgressFn, Sent, ServiceAppEngine,
    StatusReport, Step, Then, TokenEngine, Wiring,
};
pub use error::{ApiFailure, Error, Result, SignatureError, StorageError, StorageErrorKind, TokenSubject};
pub use http::{
    HeaderValue, HttpRequest, HttpResponse, MAX_RESPONSE_BYTES, Method, RetryClass, TRACKING_ID_HEADER,
    new_tracking_id,
};
pub use ids::{
    decode_org_id, decode_webex_id, derive_application_id, derive_application_id_in_region, encode_webex_id,
    normalize_org_id,
};
pub use key::{Expect, Lease, TokenKey, UNVERSIONED, Versioned};
pub use listener::{
    CallbackConnection, CallbackHandler, CallbackReply, CallbackVerdict, ConnectionStep, HeadProgress,
    HeadReader, LoopbackRedirect, MAX_CALLBACK_HEAD_BYTES, RequestHead, parse_request_head,
};
pub use metrics::{Metrics, SkipReason, metrics};
pub use oauth::{
    AuthorizationRequest, MAX_TOKEN_RESPONSE_BYTES, TokenCall, api_error, code_exchange_request,
    error_from_response, known_oauth_error, parse_retry_after, parse_token_response, refresh_request,
    service_app_token_request, tracking_id,
};
pub use pending::{PENDING_AUTHORIZATION_TTL, PendingAuthorization, pending_key};
pub use policy::{
    CoordinationPolicy, Freshness, KeyStatus, RefreshPolicy, RetryDecision, RetryPolicy, TokenState, key_seed,
};
pub use schedule::{Due, RefreshSchedule, WAKE_SLACK};
pub use sealing::{SealedStorage, StorageKeys};
pub use secret::{
    AccessToken, AuthorizationCode, ClientSecret, CsrfState, PkceCodeVerifier, RefreshToken, SharedSecret,
    WebhookSecret, random_u64,
};
pub use storage::{
    BlockingCoordinatedTokenStorage, BlockingTokenStorage, CoordinatedTokenStorage, InMemoryTokenStorage,
    TokenStorage, check_state_name, decode_record, journal_replay, redact_url, state_conflict,
};
pub use time::{Clock, CoarseClock, SystemClock, Timestamp};
pub use tokens::{OAuthTokens, Rejection, ServiceAppTokens, TOKEN_SCHEMA_VERSION};
pub use webhook::{
    Admission, DeliveryBodyProblem, MAX_WEBHOOK_BODY_BYTES, NewWebhook, SIGNATURE_HEADER, ServiceAppEvent,
    ServiceAppEventKind, Webhook, WebhookChange, WebhookGate, WebhookOutcome, WebhookPage,
    WebhookVerification, create_webhook_request, delete_webhook_request, delivery_body_reply,
    delivery_method_reply, delivery_reply, list_webhooks_request, next_link, next_page_request,
    parse_service_app_event, parse_webhook, parse_webhook_deletion, parse_webhook_page, sign,
    update_webhook_request, verify_signature, webhook_changes,
};

/// `async_trait`, re-exported so backends implement [`TokenStorage`] with the same macro.
pub use async_trait::async_trait;

/// Robustness: every parser of outside input returns a typed result for any bytes, never a
/// panic (the property-test counterpart of the fuzz targets in the reference checklist).
#[cfg(test)]
mod robustness {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn token_responses_never_panic(status in 100u16..600, body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let response = HttpResponse::new(status, vec![("Retry-After".into(), "x".into())], body);
            for call in [TokenCall::CodeExchange, TokenCall::Refresh(TokenSubject::Integration), TokenCall::ServiceAppFetch { org_id: "o".into() }] {
                if let Ok(tokens) = parse_token_response(&response, Timestamp::EPOCH, &call) {
                    prop_assert!(!tokens.access_token.expose_secret().is_empty());
                    prop_assert!((200..300).contains(&status));
                }
            }
        }

        #[test]
        fn json_shaped_token_responses_never_panic(access in "\\PC{0,40}", expires in any::<i64>(), extra in "\\PC{0,40}") {
            let body = serde_json::json!({"access_token": access, "expires_in": expires, "token_type": extra, "refresh_token": extra});
            let response = HttpResponse::new(200, vec![], serde_json::to_vec(&body).unwrap());
            let _ = parse_token_response(&response, Timestamp::EPOCH, &TokenCall::CodeExchange);
        }

        #[test]
        fn webhook_deliveries_and_signatures_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), header in "\\PC{0,60}") {
            let _ = parse_service_app_event(&body);
            let secret = WebhookSecret::new("s");
            if verify_signature(&secret, &body, Some(&header)).is_ok() {
                prop_assert_eq!(header.trim().to_ascii_lowercase(), sign(&secret, &body));
            }
        }

        #[test]
        fn listener_requests_never_panic_or_complete_without_the_state(raw in proptest::collection::vec(any::<u8>(), 0..300), target in "/[a-z?=&%0-9]{0,40}") {
            let redirect = LoopbackRedirect::parse("http://127.0.0.1:8765/cb").unwrap();
            let mut handler = CallbackHandler::new(&redirect, 8765, CsrfState::new("THE-STATE"));
            if let Some(head) = parse_request_head(&raw) {
                let (_, verdict) = handler.handle(&head);
                prop_assert!(matches!(verdict, CallbackVerdict::KeepWaiting));
            }
            let head = RequestHead { method: "GET".into(), target, host: Some("127.0.0.1:8765".into()) };
            let (_, verdict) = handler.handle(&head);
            prop_assert!(matches!(verdict, CallbackVerdict::KeepWaiting), "nothing ends the flow without THE-STATE");
        }

        #[test]
        fn policy_decisions_never_panic_for_any_lifetime(expires_in: u64, obtained: u64, now: u64, seed: u64, rexp: Option<u64>) {
            let mut tokens = OAuthTokens::new(AccessToken::new("a"), expires_in, Timestamp::from_unix_millis(obtained));
            tokens.refresh_token_expires_in = rexp;
            let policy = RefreshPolicy::default();
            let now = Timestamp::from_unix_millis(now);
            let _ = (policy.assess(&tokens, now, seed), policy.state(&tokens, now, seed), policy.buffer_for(&tokens));
            let cache = TokenCache::new(policy, std::time::Duration::from_secs(30));
            cache.put(&TokenKey::Integration, Versioned { value: tokens, version: 1 }, now);
            let _ = cache.fresh_integration(now);
        }

        #[test]
        fn stored_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Err(e) = decode_record(&bytes, &TokenKey::Integration, "test") {
                prop_assert_eq!(e.kind(), StorageErrorKind::Corrupt);
            }
        }
    }
}
