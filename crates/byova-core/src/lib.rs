//! # byova-core
//!
//! The pure heart of byova, the Rust SDK for the authentication side of a Webex BYOVA
//! (Bring Your Own Virtual Agent) provider. It holds every OAuth decision and does no I/O.
//! Most applications use it through `byova-async` or `byova-blocking`, which re-export the
//! names below; the crate root holds what a user names, the modules what a protocol, a
//! driver or a storage backend needs:
//!
//! - **At the root**: credentials and [`ByovaConfig`]; [`OAuthTokens`] / [`ServiceAppTokens`]
//!   with absolute expiry; [`TokenKey`]; secret newtypes that never print ([`AccessToken`],
//!   [`RefreshToken`], …); the policies ([`RefreshPolicy`], [`RetryPolicy`],
//!   [`CoordinationPolicy`]) and what they report ([`KeyStatus`], [`TokenState`]); the Python
//!   SDK's storage traits ([`TokenStorage`], [`BlockingTokenStorage`]: six methods, which every
//!   store has), [`InMemoryTokenStorage`] and sealing at rest ([`SealedStorage`]); [`Error`].
//! - [`oauth`]: the authorization URL with `state` and PKCE S256, the code exchange, the
//!   refresh and the Service App token fetch as request values, and the parsing of their
//!   answers, including what every error status means.
//! - [`webhook`]: `serviceApp` deliveries, `X-Spark-Signature` and the `/webhooks` API.
//! - [`redirect`]: the browser flow's loopback redirect, as values.
//! - [`ids`]: Webex's base64 ids (org ids, the Service App's application id).
//! - [`backend`]: the one storage surface: the primitives every store implements and the
//!   engine reads and writes ([`CoordinatedTokenStorage`](backend::CoordinatedTokenStorage),
//!   versions, leases, the record's encoding), and [`SingleProcess`](backend::SingleProcess),
//!   which makes a store with only the six methods one.
//! - [`engine`]: the driver SPI, for the flavour crates and anyone writing a third.
//!
//! **The engine.** Every operation (a valid token now, a refresh, a code exchange, a webhook
//! delivery, a bulk refresh) is a method of an engine that returns a *plan*, a
//! [`Step`](engine::Step): one piece of I/O (a storage call, an HTTP request, a sleep, a wait
//! on another caller's refresh) with a typed continuation that takes its result and decides
//! what comes next. A flavour's driver is a loop of about 70 lines that performs steps and
//! hands results back; it holds no OAuth or coordination logic, so both flavours behave
//! identically by construction, a model checker can replay every interleaving of several
//! processes' plans, and a refresh runs as a detached single flight per key that a dropped
//! caller never cuts short. The engine's cache answers a fresh token without any step.
//!
//! Not here: sockets, HTTP clients, runtimes, files, the process environment (except the one
//! explicit edge, [`load_credentials_from_env`]) and clock reads (time is always an argument;
//! [`SystemClock`] or [`engine::CoarseClock`] is handed in by drivers).
//!
//! ```
//! use byova_core::engine::HttpResponse;
//! use byova_core::oauth::{AuthorizationCode, AuthorizationRequest, TokenCall, code_exchange_request, parse_token_response};
//! use byova_core::{ByovaConfig, Freshness, IntegrationCredentials, RefreshPolicy, Timestamp};
//!
//! let config = ByovaConfig::with_base_url("http://127.0.0.1:9/v1")?;
//! let creds = IntegrationCredentials::new("C123", "secret");
//! let auth = AuthorizationRequest::new(&config, &creds)?;
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
pub mod datasource;
pub mod engine;
mod error;
mod flavour;
mod http;
pub mod ids;
pub mod jws;
mod key;
mod listener;
mod metrics;
pub mod oauth;
mod pending;
mod policy;
mod schedule;
mod sealing;
mod secret;
mod storage;
mod time;
mod tokens;
pub mod webhook;

pub use authorize::{AuthorizationUrl, AuthorizeOptions, RedirectOptions};
pub use budget::TokenBudget;
pub use builder::{ByovaBuilder, EnvSettings};
pub use config::{ByovaConfig, DEFAULT_BASE_URL};
pub use credentials::{
    DEFAULT_INTEGRATION_SCOPES, DEFAULT_REDIRECT_URI, IntegrationCredentials, ServiceAppCredentials,
    credentials_from_lookup, load_credentials_from_env,
};
pub use engine::webhooks::{BulkProgress, OrgRefresh, ProgressFn, StatusReport};
pub use error::{ApiFailure, Error, Result, SignatureError, StorageError, StorageErrorKind, TokenSubject};
pub use key::{OrgId, TokenKey};
pub use metrics::{Metrics, metrics};
pub use policy::{
    CoordinationPolicy, Freshness, Invalidation, KeyStatus, RefreshPolicy, RetryPolicy, TokenState,
};
pub use sealing::{SealedStorage, StorageKeys};
pub use secret::{AccessToken, ClientSecret, RefreshToken, SharedSecret, WebhookSecret};
pub use storage::{BlockingTokenStorage, InMemoryTokenStorage, TokenStorage};
pub use time::{Clock, SystemClock, Timestamp};
pub use tokens::{OAuthTokens, Rejection, ServiceAppTokens};

/// The names of the environment variables byova reads (credentials and configuration).
pub mod env {
    pub use crate::config::env::*;
    pub use crate::credentials::env::*;
}

/// The browser flow's loopback redirect, as values: the listener's request parsing and
/// replies ([`CallbackHandler`](crate::redirect::CallbackHandler)), and opening the system browser.
pub mod redirect {
    pub use crate::authorize::{
        BrowserOpener, authorization_prompt, browser_command_for, browser_environment, browser_launch,
        system_browser_command,
    };
    pub use crate::listener::{
        CALLBACK_READ_TIMEOUT, CallbackConnection, CallbackHandler, CallbackReply, CallbackVerdict,
        ConnectionStep, HeadProgress, HeadReader, LoopbackRedirect, MAX_CALLBACK_CONNECTIONS,
        MAX_CALLBACK_HEAD_BYTES, RequestHead, parse_request_head,
    };
}

/// The storage surface: the primitives every store implements and the engine reads and writes
/// ([`CoordinatedTokenStorage`](crate::backend::CoordinatedTokenStorage), its blocking twin
/// [`BlockingCoordinatedTokenStorage`](crate::backend::BlockingCoordinatedTokenStorage); the
/// managers take an `Arc<dyn …>` of one), [`SingleProcess`](crate::backend::SingleProcess) for
/// a store that has only the Python SDK's six methods, versions and leases, the
/// pending-authorization record, the stored record's encoding, and the helpers every backend
/// in this workspace shares. The conformance suite in `byova-testkit` checks a store against
/// them.
pub mod backend {
    pub use crate::key::{Expect, Lease, UNVERSIONED, Versioned};
    pub use crate::pending::{PENDING_AUTHORIZATION_TTL, PendingAuthorization, pending_key};
    pub use crate::storage::{
        BlockingCoordinatedTokenStorage, CoordinatedTokenStorage, SingleProcess, check_state_name,
        decode_record, journal_replay, redact_url, state_conflict, stored_org_ids,
    };
    pub use crate::tokens::TOKEN_SCHEMA_VERSION;
}

/// `async_trait`, re-exported so backends implement
/// [`CoordinatedTokenStorage`](backend::CoordinatedTokenStorage) (and teams [`TokenStorage`])
/// with the same macro.
pub use async_trait::async_trait;

/// Robustness: every parser of outside input returns a typed result for any bytes, never a
/// panic (the property-test counterpart of the fuzz targets in the reference checklist).
#[cfg(test)]
mod robustness {
    use proptest::prelude::*;

    use super::backend::*;
    use super::engine::*;
    use super::oauth::*;
    use super::redirect::*;
    use super::webhook::*;
    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn token_responses_never_panic(status in 100u16..600, body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let response = HttpResponse::new(status, vec![("Retry-After".into(), "x".into())], body);
            for call in [TokenCall::CodeExchange, TokenCall::Refresh(TokenSubject::Integration), TokenCall::ServiceAppFetch { org_id: OrgId::from_static("o") }] {
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
