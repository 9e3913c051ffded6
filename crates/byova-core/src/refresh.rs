//! The refresh path as a sans-I/O state machine, driven the same way by both flavours.
//!
//! A driver creates a [`RefreshMachine`] for one key after its process-local cache missed and it
//! holds the key's in-process single-flight lock, then performs each [`Step`] the machine asks
//! for and feeds the result back, until [`Step::Done`]:
//!
//! ```text
//! Load ─▶ fresh? ─▶ Done
//!   └─▶ AcquireLease ─▶ held elsewhere ─▶ (old token still good? Done) Sleep ▷ Load ▷ …
//!         └─▶ Load (re-read under the lease: another process may have refreshed) ─▶ Release ▷ Done
//!               └─▶ Send(refresh) ─▶ 429/5xx/transport: Sleep ▷ Send (RetryPolicy)
//!                     │            invalid_grant: Load (rotated elsewhere?) ▷ Send with that token,
//!                     │                           org: NeedIntegrationToken ▷ Send(fetch)
//!                     │            other failure: old token still valid? serve it : fail
//!                     └─▶ Store(version-checked) ─▶ Release ─▶ Done
//! ```
//!
//! The machine holds every decision: when a token is good enough, whether to wait or to call
//! Webex, what to retry, when a refresh token is dead, and that new tokens are stored before
//! anyone is given them.

use std::time::Duration;

use crate::config::ByovaConfig;
use crate::credentials::{IntegrationCredentials, ServiceAppCredentials};
use crate::error::{Error, Result, TokenSubject};
use crate::http::{HttpRequest, HttpResponse};
use crate::oauth::{TokenCall, parse_token_response, refresh_request, service_app_token_request};
use crate::policy::{Freshness, RetryDecision};
use crate::secret::{AccessToken, RefreshToken};
use crate::storage::{Expect, Lease, StorageError, StorageErrorKind, TokenKey, Versioned};
use crate::time::Timestamp;
use crate::tokens::OAuthTokens;

/// Whose client credentials refresh the key.
#[derive(Clone, Copy, Debug)]
pub enum RefreshClient<'a> {
    /// The Integration refreshes its own tokens.
    Integration(&'a IntegrationCredentials),
    /// A Service App refreshes an org's tokens (and fetches new ones with the Integration's
    /// bearer when it has no usable refresh token).
    ServiceApp(&'a ServiceAppCredentials),
}

/// What the caller wants.
#[derive(Debug)]
pub enum RefreshMode {
    /// A valid token: refresh only when needed (refresh-ahead or expired).
    GetValid,
    /// New tokens now (`refresh`, `refresh_for_org`). With an explicit refresh token, that one is
    /// used (`refresh(Some(token))`, `save_registration`); without one, the stored one.
    Force(Option<RefreshToken>),
    /// Fetch new Service App tokens with the Integration's bearer (`fetch_token_for_org`).
    Fetch,
}

/// How a finished run went.
#[derive(Debug)]
#[non_exhaustive]
pub struct Outcome {
    /// The tokens to hand out, with the version they are stored at, or the error.
    pub result: Result<Versioned<OAuthTokens>>,
    /// Whether this run obtained new tokens from Webex (and stored them).
    pub refreshed: bool,
    /// A refresh failed but the old access token is still really valid, so it was served;
    /// this is the failure, for the driver to trace.
    pub served_stale_after: Option<Error>,
    /// Tokens Webex issued that could not be stored (the store kept failing). They were not
    /// handed out; the driver keeps them and gives them to the next run for the key
    /// ([`RefreshMachine::with_unsaved`]), which stores them before anything else, so a
    /// refresh token Webex rotated is not lost to a storage outage.
    pub unsaved: Option<(OAuthTokens, Expect)>,
}

/// The next thing the driver must do.
#[derive(Debug)]
pub enum Step {
    /// Read the record (`storage.load(key)`) and call [`RefreshMachine::on_loaded`].
    Load(TokenKey),
    /// `storage.try_acquire_lease(key, ttl)`, then [`RefreshMachine::on_lease`].
    AcquireLease(TokenKey, Duration),
    /// Wait, then [`RefreshMachine::on_slept`].
    Sleep(Duration),
    /// Get a valid Integration access token, then [`RefreshMachine::on_integration_token`].
    NeedIntegrationToken,
    /// Send the request, then [`RefreshMachine::on_response`].
    Send(HttpRequest),
    /// `storage.store(key, tokens, expect)`, then [`RefreshMachine::on_stored`].
    Store(TokenKey, OAuthTokens, Expect),
    /// `storage.release_lease(lease)` (errors ignored), then [`RefreshMachine::on_released`].
    Release(Lease),
    /// `storage.extend_lease(lease, ttl)`, then [`RefreshMachine::on_lease_extended`]: checked
    /// right before each token call, so a stalled holder never spends a token its successor used.
    ExtendLease(Lease, Duration),
    /// Finished.
    Done(Outcome),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LoadPurpose {
    Initial,
    UnderLease,
    Polling,
    AfterInvalidGrant,
    AfterConflict,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SleepPurpose {
    Resend,
    Poll,
    RetryStore,
}

#[derive(Debug)]
enum Awaiting {
    Nothing,
    Load(LoadPurpose),
    Lease,
    Sleep(SleepPurpose),
    IntegrationToken,
    Response,
    Stored,
    Released,
    LeaseExtended,
}

/// The refresh path for one key. See the [module docs](self).
#[derive(Debug)]
pub struct RefreshMachine<'a> {
    config: &'a ByovaConfig,
    client: RefreshClient<'a>,
    key: TokenKey,
    mode: RefreshMode,
    jitter_seed: u64,
    rng: u64,
    awaiting: Awaiting,
    current: Option<Versioned<OAuthTokens>>,
    lease: Option<Lease>,
    stale_ok: bool,
    waited: Duration,
    attempt: u32,
    call: Option<TokenCall>,
    request: Option<HttpRequest>,
    used_refresh: Option<RefreshToken>,
    bearer: Option<AccessToken>,
    reread_after_invalid_grant: bool,
    fallback_used: bool,
    new_tokens: Option<OAuthTokens>,
    store_attempts: u32,
    finished: Option<Outcome>,
    /// Tokens from an earlier run that could not be stored, and the condition to store them
    /// under; `storing_unsaved` while that store is in flight.
    unsaved: Option<(OAuthTokens, Expect)>,
    storing_unsaved: bool,
}

impl<'a> RefreshMachine<'a> {
    /// A machine for `key`. `jitter_seed` is the key's per-process seed
    /// ([`TokenCache::jitter_seed`](crate::TokenCache::jitter_seed)); `random` seeds backoff
    /// jitter.
    pub fn new(
        config: &'a ByovaConfig,
        client: RefreshClient<'a>,
        key: TokenKey,
        mode: RefreshMode,
        jitter_seed: u64,
        random: u64,
    ) -> Self {
        Self {
            config,
            client,
            key,
            mode,
            jitter_seed,
            rng: random | 1,
            awaiting: Awaiting::Nothing,
            current: None,
            lease: None,
            stale_ok: false,
            waited: Duration::ZERO,
            attempt: 0,
            call: None,
            request: None,
            used_refresh: None,
            bearer: None,
            reread_after_invalid_grant: false,
            fallback_used: false,
            new_tokens: None,
            store_attempts: 0,
            finished: None,
            unsaved: None,
            storing_unsaved: false,
        }
    }

    /// Gives the machine tokens an earlier run obtained but could not store
    /// ([`Outcome::unsaved`]): it stores them first (under the same version check), then runs
    /// as usual and finds them stored; if another writer got there first, theirs stand.
    pub fn with_unsaved(mut self, unsaved: Option<(OAuthTokens, Expect)>) -> Self {
        self.unsaved = unsaved;
        self
    }

    /// The first step.
    pub fn start(&mut self) -> Step {
        if let Some((tokens, expect)) = self.unsaved.clone() {
            self.storing_unsaved = true;
            self.new_tokens = Some(tokens.clone());
            self.awaiting = Awaiting::Stored;
            return Step::Store(self.key.clone(), tokens, expect);
        }
        self.load(LoadPurpose::Initial)
    }

    fn load(&mut self, purpose: LoadPurpose) -> Step {
        self.awaiting = Awaiting::Load(purpose);
        Step::Load(self.key.clone())
    }

    fn random(&mut self) -> u32 {
        // xorshift64*: plenty for spreading backoff.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    fn subject(&self) -> TokenSubject {
        self.key.subject()
    }

    fn org_id(&self) -> Option<&str> {
        match &self.key {
            TokenKey::Org(org) => Some(org),
            TokenKey::Integration => None,
        }
    }

    /// The error for a key with no stored tokens.
    fn nothing_stored(&self) -> Error {
        match self.org_id() {
            Some(org) => Error::OrgNotRegistered { org_id: org.to_owned() },
            None => Error::NotAuthorized,
        }
    }

    fn freshness(&self, tokens: &OAuthTokens, now: Timestamp) -> Freshness {
        self.config.refresh.assess(tokens, now, self.jitter_seed)
    }

    /// Whether the stored access token may still be handed out if refreshing fails.
    fn old_still_valid(&self, now: Timestamp) -> bool {
        self.stale_ok && self.current.as_ref().is_some_and(|c| !c.value.is_expired(Duration::ZERO, now))
    }

    fn finish(
        &mut self,
        result: Result<Versioned<OAuthTokens>>,
        refreshed: bool,
        stale: Option<Error>,
    ) -> Step {
        let outcome = Outcome { result, refreshed, served_stale_after: stale, unsaved: None };
        match self.lease.take() {
            Some(lease) => {
                self.finished = Some(outcome);
                self.awaiting = Awaiting::Released;
                Step::Release(lease)
            }
            None => {
                self.awaiting = Awaiting::Nothing;
                Step::Done(outcome)
            }
        }
    }

    fn fail(&mut self, error: Error) -> Step {
        self.finish(Err(error), false, None)
    }

    /// Serves the stored token after a failed refresh when it is still really valid, else fails.
    fn fail_or_serve_stale(&mut self, error: Error, now: Timestamp) -> Step {
        if self.old_still_valid(now) {
            let current = self.current.clone();
            if let Some(current) = current {
                return self.finish(Ok(current), false, Some(error));
            }
        }
        self.fail(error)
    }

    /// Feeds the result of [`Step::Load`].
    pub fn on_loaded(
        &mut self,
        loaded: Result<Option<Versioned<OAuthTokens>>, StorageError>,
        now: Timestamp,
    ) -> Step {
        let Awaiting::Load(purpose) = self.awaiting else { return self.fail(out_of_order()) };
        match purpose {
            LoadPurpose::Initial => self.after_initial_load(loaded, now),
            LoadPurpose::UnderLease => self.after_lease_load(loaded, now),
            LoadPurpose::Polling => self.after_poll(loaded, now),
            LoadPurpose::AfterInvalidGrant => self.after_invalid_grant_load(loaded, now),
            LoadPurpose::AfterConflict => match loaded {
                Ok(Some(rec)) if !rec.value.is_expired(Duration::ZERO, now) => {
                    self.finish(Ok(rec), false, None)
                }
                Ok(_) => self.fail(Error::Storage(StorageError::conflict(&self.key))),
                Err(e) => self.fail(e.into()),
            },
        }
    }

    fn after_initial_load(
        &mut self,
        loaded: Result<Option<Versioned<OAuthTokens>>, StorageError>,
        now: Timestamp,
    ) -> Step {
        let record = match loaded {
            Ok(r) => r,
            Err(e) => return self.fail(e.into()),
        };
        match (&record, &self.mode) {
            (Some(rec), RefreshMode::GetValid) => match self.freshness(&rec.value, now) {
                Freshness::Fresh => {
                    let rec = rec.clone();
                    return self.finish(Ok(rec), false, None);
                }
                Freshness::RefreshAhead | Freshness::Expired => self.stale_ok = true,
            },
            (None, RefreshMode::GetValid) => {
                return self.fail(self.nothing_stored());
            }
            (None, RefreshMode::Force(None)) if self.org_id().is_none() => {
                return self.fail(Error::NotAuthorized);
            }
            _ => {}
        }
        self.current = record;
        self.awaiting = Awaiting::Lease;
        Step::AcquireLease(self.key.clone(), self.config.coordination.lease_ttl)
    }

    /// Feeds the result of [`Step::AcquireLease`].
    pub fn on_lease(&mut self, lease: Result<Option<Lease>, StorageError>, now: Timestamp) -> Step {
        if !matches!(self.awaiting, Awaiting::Lease) {
            return self.fail(out_of_order());
        }
        match lease {
            Ok(Some(lease)) => {
                self.lease = Some(lease);
                self.load(LoadPurpose::UnderLease)
            }
            // Another process is refreshing; a still-valid token needs no waiting for.
            Ok(None) if self.old_still_valid(now) => {
                let current = self.current.clone();
                match current {
                    Some(c) => self.finish(Ok(c), false, None),
                    None => self.poll(),
                }
            }
            Ok(None) => self.poll(),
            Err(e) => self.fail_or_serve_stale(e.into(), now),
        }
    }

    fn poll(&mut self) -> Step {
        let d = self.config.coordination.poll_interval;
        self.waited += d;
        self.awaiting = Awaiting::Sleep(SleepPurpose::Poll);
        Step::Sleep(d)
    }

    fn advanced(&self, rec: &Versioned<OAuthTokens>) -> bool {
        match &self.current {
            None => true,
            Some(cur) => rec.version != cur.version || rec.value.to_json() != cur.value.to_json(),
        }
    }

    fn after_poll(
        &mut self,
        loaded: Result<Option<Versioned<OAuthTokens>>, StorageError>,
        now: Timestamp,
    ) -> Step {
        match loaded {
            Ok(Some(rec)) if self.advanced(&rec) && self.freshness(&rec.value, now) != Freshness::Expired => {
                self.finish(Ok(rec), false, None)
            }
            Ok(None) if self.current.is_some() => self.fail(self.nothing_stored()),
            Ok(_) | Err(_) if self.waited < self.config.coordination.lease_ttl => self.poll(),
            // The holder has had the whole lease: it may have died. Compete again.
            Ok(_) => {
                self.waited = Duration::ZERO;
                self.awaiting = Awaiting::Lease;
                Step::AcquireLease(self.key.clone(), self.config.coordination.lease_ttl)
            }
            Err(e) => self.fail_or_serve_stale(e.into(), now),
        }
    }

    fn after_lease_load(
        &mut self,
        loaded: Result<Option<Versioned<OAuthTokens>>, StorageError>,
        now: Timestamp,
    ) -> Step {
        let record = match loaded {
            Ok(r) => r,
            Err(e) => return self.fail_or_serve_stale(e.into(), now),
        };
        let explicit = matches!(self.mode, RefreshMode::Force(Some(_)) | RefreshMode::Fetch);
        if let Some(rec) = &record {
            let usable = self.freshness(&rec.value, now) != Freshness::Expired;
            let someone_refreshed = self.advanced(rec);
            let good_enough = match self.mode {
                RefreshMode::GetValid => self.freshness(&rec.value, now) == Freshness::Fresh,
                _ => someone_refreshed && usable,
            };
            if !explicit && someone_refreshed && good_enough {
                let rec = rec.clone();
                return self.finish(Ok(rec), false, None);
            }
        } else if self.current.is_some() && matches!(self.mode, RefreshMode::GetValid) {
            // Removed while we waited for the lease (deauthorized elsewhere).
            return self.fail(self.nothing_stored());
        }
        self.current = record;
        self.begin_token_call()
    }

    fn begin_token_call(&mut self) -> Step {
        if matches!(self.mode, RefreshMode::Fetch) {
            return self.fetch_with_bearer();
        }
        let explicit = match &self.mode {
            RefreshMode::Force(Some(t)) => Some(t.clone()),
            _ => None,
        };
        let stored = self.current.as_ref().and_then(|c| c.value.refresh_token.clone());
        match explicit.or(stored) {
            Some(token) => self.send_refresh(token),
            None => match self.client {
                RefreshClient::Integration(_) => self.fail(Error::NotAuthorized),
                RefreshClient::ServiceApp(_) => self.fetch_with_bearer(),
            },
        }
    }

    fn send_refresh(&mut self, token: RefreshToken) -> Step {
        let (client_id, secret) = match self.client {
            RefreshClient::Integration(c) => (&c.client_id, &c.client_secret),
            RefreshClient::ServiceApp(c) => (&c.client_id, &c.client_secret),
        };
        let request = refresh_request(self.config, client_id, secret, &token);
        self.used_refresh = Some(token);
        self.call = Some(TokenCall::Refresh(self.subject()));
        self.attempt = 0;
        self.send(request)
    }

    fn fetch_with_bearer(&mut self) -> Step {
        if matches!(self.client, RefreshClient::Integration(_)) {
            return self.fail(Error::NotAuthorized);
        }
        self.fallback_used = true;
        self.awaiting = Awaiting::IntegrationToken;
        Step::NeedIntegrationToken
    }

    fn send(&mut self, request: HttpRequest) -> Step {
        self.request = Some(request);
        if let Some(lease) = &self.lease {
            self.awaiting = Awaiting::LeaseExtended;
            return Step::ExtendLease(lease.clone(), self.config.coordination.lease_ttl);
        }
        self.send_now()
    }

    fn send_now(&mut self) -> Step {
        let Some(request) = self.request.clone() else { return self.fail(out_of_order()) };
        self.attempt += 1;
        self.awaiting = Awaiting::Response;
        Step::Send(request)
    }

    /// Feeds the result of [`Step::ExtendLease`].
    pub fn on_lease_extended(&mut self, extended: Result<bool, StorageError>, now: Timestamp) -> Step {
        if !matches!(self.awaiting, Awaiting::LeaseExtended) {
            return self.fail(out_of_order());
        }
        match extended {
            Ok(true) => self.send_now(),
            // The lease expired and may be someone else's now: do not spend the token; wait for
            // the successor's result instead (or compete again once its lease has run out).
            Ok(false) => {
                self.lease = None;
                self.waited = Duration::ZERO;
                self.load(LoadPurpose::Polling)
            }
            Err(e) => self.fail_or_serve_stale(e.into(), now),
        }
    }

    /// Feeds the result of [`Step::NeedIntegrationToken`].
    pub fn on_integration_token(&mut self, token: Result<AccessToken>) -> Step {
        if !matches!(self.awaiting, Awaiting::IntegrationToken) {
            return self.fail(out_of_order());
        }
        let (RefreshClient::ServiceApp(creds), Some(org)) = (self.client, self.org_id().map(str::to_owned))
        else {
            return self.fail(out_of_order());
        };
        match token {
            Ok(bearer) => {
                let request = service_app_token_request(self.config, creds, &org, &bearer);
                self.bearer = Some(bearer);
                self.used_refresh = None;
                self.call = Some(TokenCall::ServiceAppFetch { org_id: org });
                self.attempt = 0;
                self.send(request)
            }
            Err(e) => self.fail(e),
        }
    }

    /// Feeds the answer to [`Step::Send`]: the response, or the transport error. `sent_at` is
    /// when the request was sent.
    pub fn on_response(
        &mut self,
        response: Result<HttpResponse>,
        sent_at: Timestamp,
        now: Timestamp,
    ) -> Step {
        if !matches!(self.awaiting, Awaiting::Response) {
            return self.fail(out_of_order());
        }
        let Some(call) = self.call.clone() else { return self.fail(out_of_order()) };
        let parsed = response.and_then(|r| parse_token_response(&r, sent_at, &call));
        match parsed {
            Ok(tokens) => {
                let tokens = match (&call, &self.current) {
                    (TokenCall::Refresh(_), Some(old)) => tokens.inherit_refresh_token(&old.value),
                    (TokenCall::Refresh(_), None) => match &self.used_refresh {
                        Some(used) if tokens.refresh_token.is_none() => {
                            tokens.with_refresh_token(used.clone(), None)
                        }
                        _ => tokens,
                    },
                    _ => tokens,
                };
                self.new_tokens = Some(tokens.clone());
                self.store(tokens)
            }
            Err(error) => self.after_failed_call(error, now),
        }
    }

    fn after_failed_call(&mut self, error: Error, now: Timestamp) -> Step {
        let class = self.request.as_ref().map_or(crate::http::RetryClass::Idempotent, |r| r.retry);
        let random = self.random();
        if let RetryDecision::RetryAfter(d) = self.config.retry.decide(class, self.attempt, &error, random) {
            self.awaiting = Awaiting::Sleep(SleepPurpose::Resend);
            return Step::Sleep(d);
        }
        let explicit = matches!(self.mode, RefreshMode::Force(Some(_)));
        match &error {
            Error::ReauthorizationRequired { .. } if !self.reread_after_invalid_grant && !explicit => {
                // Another process may have rotated the token we sent; look before giving up.
                self.reread_after_invalid_grant = true;
                self.load(LoadPurpose::AfterInvalidGrant)
            }
            Error::ReauthorizationRequired { .. }
                if matches!(self.client, RefreshClient::ServiceApp(_))
                    && !self.fallback_used
                    && !explicit =>
            {
                self.fetch_with_bearer()
            }
            _ => self.fail_or_serve_stale(error, now),
        }
    }

    fn after_invalid_grant_load(
        &mut self,
        loaded: Result<Option<Versioned<OAuthTokens>>, StorageError>,
        now: Timestamp,
    ) -> Step {
        let rejected = self.used_refresh.clone();
        match loaded {
            Ok(Some(rec)) => {
                let stored = rec.value.refresh_token.clone();
                let rotated_elsewhere = match (&stored, &rejected) {
                    (Some(s), Some(r)) => !s.ct_eq(r),
                    _ => false,
                };
                if rotated_elsewhere {
                    let fresh = self.freshness(&rec.value, now) != Freshness::Expired;
                    self.current = Some(rec.clone());
                    if fresh {
                        return self.finish(Ok(rec), false, None);
                    }
                    if let Some(token) = stored {
                        return self.send_refresh(token);
                    }
                }
                self.current = Some(rec);
                self.give_up_on_refresh_token(now)
            }
            Ok(None) => self.fail(self.nothing_stored()),
            Err(e) => self.fail(e.into()),
        }
    }

    fn give_up_on_refresh_token(&mut self, now: Timestamp) -> Step {
        if matches!(self.client, RefreshClient::ServiceApp(_)) && !self.fallback_used {
            return self.fetch_with_bearer();
        }
        let failure =
            crate::error::ApiFailure { status: 400, tracking_id: None, oauth_error: Some("invalid_grant") };
        let error = Error::ReauthorizationRequired { subject: self.subject(), failure };
        // The stored access token may outlive its refresh token; hand it out while it lasts.
        self.fail_or_serve_stale(error, now)
    }

    fn store(&mut self, tokens: OAuthTokens) -> Step {
        let expect = match &self.current {
            Some(c) => Expect::Version(c.version),
            None => Expect::Absent,
        };
        self.store_attempts += 1;
        self.awaiting = Awaiting::Stored;
        Step::Store(self.key.clone(), tokens, expect)
    }

    /// Feeds the result of [`Step::Store`].
    pub fn on_stored(&mut self, stored: Result<u64, StorageError>) -> Step {
        if !matches!(self.awaiting, Awaiting::Stored) {
            return self.fail(out_of_order());
        }
        let Some(tokens) = self.new_tokens.clone() else { return self.fail(out_of_order()) };
        if self.storing_unsaved {
            self.storing_unsaved = false;
            return match stored {
                // Stored (or another writer stored newer tokens meanwhile, and theirs stand):
                // from here on this is an ordinary run that finds the stored record.
                Ok(_) => {
                    self.unsaved = None;
                    self.new_tokens = None;
                    self.load(LoadPurpose::Initial)
                }
                Err(e) if e.kind() == StorageErrorKind::Conflict => {
                    self.unsaved = None;
                    self.new_tokens = None;
                    self.load(LoadPurpose::Initial)
                }
                Err(e) => self.fail_keeping_unsaved(e),
            };
        }
        match stored {
            Ok(version) => self.finish(Ok(Versioned { value: tokens, version }), true, None),
            Err(e) if e.kind() == StorageErrorKind::Conflict => {
                // Another writer won (our lease must have expired): its record stands.
                self.load(LoadPurpose::AfterConflict)
            }
            Err(e) if e.is_retryable() && self.store_attempts < self.config.retry.max_attempts.max(2) => {
                let d = self.config.retry.base_delay.saturating_mul(self.store_attempts);
                self.awaiting = Awaiting::Sleep(SleepPurpose::RetryStore);
                Step::Sleep(d)
            }
            Err(e) => self.fail_keeping_unsaved(e),
        }
    }

    /// Fails with a storage error, handing the unstored tokens back to the driver.
    fn fail_keeping_unsaved(&mut self, e: StorageError) -> Step {
        let expect = self.unsaved.as_ref().map(|(_, x)| *x).unwrap_or(match &self.current {
            Some(c) => Expect::Version(c.version),
            None => Expect::Absent,
        });
        let unsaved = self.new_tokens.clone().map(|t| (t, expect));
        let step = self.fail(e.into());
        let outcome = match step {
            Step::Done(mut outcome) => {
                outcome.unsaved = unsaved;
                return Step::Done(outcome);
            }
            other => other,
        };
        if let Some(finished) = self.finished.as_mut() {
            finished.unsaved = unsaved;
        }
        outcome
    }

    /// Feeds the end of [`Step::Sleep`].
    pub fn on_slept(&mut self) -> Step {
        let Awaiting::Sleep(purpose) = self.awaiting else { return self.fail(out_of_order()) };
        match purpose {
            SleepPurpose::Poll => self.load(LoadPurpose::Polling),
            SleepPurpose::Resend => match self.request.take() {
                Some(request) => self.send(request),
                None => self.fail(out_of_order()),
            },
            SleepPurpose::RetryStore => match self.new_tokens.clone() {
                Some(tokens) => self.store(tokens),
                None => self.fail(out_of_order()),
            },
        }
    }

    /// Feeds the end of [`Step::Release`].
    pub fn on_released(&mut self) -> Step {
        match self.finished.take() {
            Some(outcome) => {
                self.awaiting = Awaiting::Nothing;
                Step::Done(outcome)
            }
            None => self.fail(out_of_order()),
        }
    }
}

fn out_of_order() -> Error {
    Error::Configuration("refresh machine driven out of order (a driver bug)".into())
}

#[cfg(test)]
mod tests;
