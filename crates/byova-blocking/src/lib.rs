//! # byova-blocking
//!
//! The blocking flavour of byova, on ureq (rustls) and std threads, with the same API and the
//! same behaviour as `byova-async`: Integration OAuth and per-org Service App tokens for a
//! Webex BYOVA provider. It does not pull in tokio.
//!
//! - [`IntegrationTokenManager`]: authorization URL, the browser flow with a loopback redirect
//!   listener ([`RedirectListener`], [`wait_for_redirect`]), code exchange with PKCE, refresh,
//!   and [`get_access_token`](IntegrationTokenManager::get_access_token).
//! - [`ServiceAppTokenManager`]: per-org tokens fetched with the Integration's bearer,
//!   refreshed, registered, removed.
//! - [`Byova`]: everything wired together, with webhook handling, webhook registration, status
//!   and bulk refresh (a small pool of threads).
//!
//! Every OAuth decision is byova-core's (re-exported here), driven by the same refresh state
//! machine as the async flavour; this crate moves bytes, sleeps, and coordinates threads.
//!
//! # Inside an async runtime
//!
//! Every call here blocks its thread: an HTTP call for up to the configured timeout, a refresh
//! while another thread holds the key, `authorize` and `wait_for_redirect` for up to minutes.
//! Called from async code, that stalls an executor thread (on a current-thread runtime, all of
//! it). `authorize` and `RedirectListener::wait` therefore refuse to run on a thread that
//! carries tokio's default worker name (`tokio-rt-worker`, `tokio-runtime-worker`) and return
//! [`Error::Configuration`] at once instead of hanging; a runtime with custom thread names is
//! not recognised. Everything else works but blocks. From async code use `byova-async`, or
//! wrap calls in `spawn_blocking`.
//!
//! ```
//! use byova_blocking::*;
//! # let fake = byova_testkit::FakeWebex::start();
//! # let (integration_creds, service_app_creds) = (fake.integration_credentials(), fake.service_app_credentials());
//! # let config = fake.config();
//! # let issued = fake.issue_integration_tokens();
//! // An org id as a webhook, a request or a configuration gives it: parsed once.
//! let org: OrgId = "63b02f90-9cc6-43b8-aa6d-cad425ac554c".parse()?;
//!
//! let byova = Byova::builder(integration_creds, service_app_creds)
//!     .config(config) // ByovaConfig::default() is production Webex
//!     .build()?;
//! # byova.integration().refresh(Some(&issued.refresh_token))?; // stands in for authorize()
//! let bearer = byova.integration().get_access_token()?;
//! # fake.authorize_org(&org);
//! byova.service_app().fetch_token_for_org(&org)?;
//! let org_token = byova.service_app().get_access_token(&org)?;
//! # let _ = (bearer, org_token);
//! # Ok::<(), byova_blocking::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod driver;
mod http;
pub mod jws;
mod listener;
mod managers;
mod middleware;

pub use http::HttpClient;
pub use listener::{RedirectListener, wait_for_redirect};
pub use managers::{Byova, ByovaBuilder, IntegrationTokenManager, ServiceAppTokenManager};
pub use middleware::BearerAuth;

/// byova-core, for everything not re-exported below (plans, policies, request builders).
pub use byova_core as core;
pub use byova_core::{
    AccessToken, ApiFailure, AuthorizationUrl, AuthorizeOptions, BlockingTokenStorage, BulkProgress,
    ByovaConfig, Clock, DEFAULT_INTEGRATION_SCOPES, DEFAULT_REDIRECT_URI, Error, InMemoryTokenStorage,
    IntegrationCredentials, Invalidation, KeyStatus, OAuthTokens, OrgId, OrgRefresh, RedirectOptions,
    RefreshToken, Result, ServiceAppCredentials, ServiceAppTokens, SignatureError, StatusReport,
    StorageError, StorageErrorKind, StorageKeys, SystemClock, Timestamp, TokenKey, TokenState, TokenSubject,
    WebhookSecret,
    backend::{BlockingCoordinatedTokenStorage, Expect, Lease, SingleProcess, Versioned},
    engine::CoarseClock,
    ids::{decode_org_id, derive_application_id},
    load_credentials_from_env,
    webhook::{NewWebhook, ServiceAppEventKind, Webhook, WebhookOutcome},
};
