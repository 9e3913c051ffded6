//! # byova-testkit
//!
//! Test infrastructure for byova and for anyone writing a byova storage backend:
//!
//! - [`FakeWebex`]: a real HTTP fake of the Webex endpoints byova uses, on `127.0.0.1` with an
//!   ephemeral port and its own runtime thread, usable from async and blocking tests alike,
//!   with fault injection ([`Fault`]), behaviour switches ([`Settings`]: refresh-token
//!   rotation, strict rotation with family revocation, omitted refresh tokens, short
//!   lifetimes), per-endpoint counters and a log of every refresh token redeemed.
//! - [`FakeClock`]: time that moves only when a test moves it.
//! - [`conformance`]: the storage contract as public functions any backend's tests call.
//! - [`scenarios`]: one scenario table (the Python SDK's methods, listener, faults, herds, rotation,
//!   cancellation, canary secrets) that every flavour's tests run through the adapter
//!   [`flavour_adapter!`] generates over its public API.
//! - [`harness`]: the runner for self-spawning test binaries (`harness = false`).
//! - [`logcapture`]: captures every `tracing` event so tests can look for leaked secrets.
//! - [`wire`]: a tiny HTTP/1.1 client that sends byova-core request values, so tests can
//!   drive the fake and loopback listeners and see every hop.
//!
//! ```
//! use byova_core::oauth::{TokenCall, parse_token_response, refresh_request};
//! use byova_core::{RefreshToken, Timestamp, TokenSubject};
//! use byova_testkit::{FakeWebex, wire};
//!
//! let fake = FakeWebex::start();
//! let issued = fake.issue_integration_tokens();
//! let creds = fake.integration_credentials();
//! let req = refresh_request(&fake.config(), &creds.client_id, &creds.client_secret, &RefreshToken::new(issued.refresh_token));
//! let resp = wire::send(&req).unwrap();
//! let tokens = parse_token_response(&resp, Timestamp::EPOCH, &TokenCall::Refresh(TokenSubject::Integration)).unwrap();
//! assert!(fake.is_access_token_valid(tokens.access_token.expose_secret()));
//! assert_eq!(fake.refresh_calls(), 1);
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod adapter;
mod broker;
mod clock;
pub mod conformance;
mod fake;
pub mod faultproxy;
pub mod harness;
pub mod logcapture;
pub mod scenarios;
pub mod tls;
pub mod wire;

/// What `flavour_adapter!` expands to needs; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use tokio;
}

pub use clock::FakeClock;
pub use fake::{
    AccessTokenStatus, AuthorizeMode, DataSourceRenewal, DeliveryOutcome, DeliveryShape, Endpoint, FakeWebex,
    FakeWebexBuilder, Fault, IssuedTokens, Redemption, Settings, echo_pattern,
};
