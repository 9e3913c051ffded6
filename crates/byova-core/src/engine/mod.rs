//! The engine: everything byova does that is not I/O, for both flavours.
//!
//! Each manager of a flavour owns one engine: an [`IntegrationEngine`] or a
//! [`ServiceAppEngine`], both around a shared [`TokenEngine`] (configuration, the
//! process-local cache, the single-flight table, leases abandoned mid-run). Every operation is
//! a method that returns a plan ([`Step`]); the flavour performs the plan's steps (storage,
//! HTTP, sleeping, waiting) and hands the results back. The flavours hold no OAuth logic and
//! no coordination logic of their own: one drive loop and one-line methods.
//!
//! Refreshes, Service App fetches and code exchanges run as flights (`Flight`): one per key
//! at a time, detached from the caller that started it ([`Step::Detach`]), so a caller whose
//! future is dropped never cuts a refresh short, and every waiting caller gets the flight's
//! outcome, failures included.

mod datasources;
mod flight;
mod pending;
mod refresh;
mod step;
pub(crate) mod webhooks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::budget::{BudgetDecision, BudgetState, TOKEN_BUDGET_STATE};
pub use crate::builder::{Facade, Parts};
pub use crate::cache::{CacheEntry, TokenCache, Unsaved};
pub use crate::http::{
    HeaderValue, HttpRequest, HttpResponse, MAX_RESPONSE_BYTES, Method, RetryClass, TRACKING_ID_HEADER,
    new_tracking_id,
};
pub use crate::metrics::SkipReason;
pub use crate::policy::{RetryDecision, key_seed};
pub use crate::schedule::{Due, RefreshSchedule, WAKE_SLACK};
pub use crate::secret::random_u64;
pub use crate::time::CoarseClock;
pub use flight::{Flight, FlightWait, Held};
pub use pending::PendingAuthorizations;
pub use refresh::Outcome;
pub use step::{Sent, Step, StorageCall, StorageResult, Then};

use crate::authorize::{AuthorizationUrl, AuthorizeOptions};
use crate::config::ByovaConfig;
use crate::credentials::{IntegrationCredentials, ServiceAppCredentials};
use crate::engine::flight::{Flights, Joined, Sharing};
use crate::engine::refresh::{Mode, Run};
use crate::engine::step::done;
use crate::error::{Error, Result};
use crate::ids::derive_application_id_in_region;
use crate::key::OrgId;
use crate::key::{Expect, Lease, TokenKey, Versioned};
use crate::oauth::{AuthorizationRequest, TokenCall, code_exchange_request, parse_token_response};
use crate::pending::{PendingAuthorization, pending_key};
use crate::policy::{Invalidation, KeyStatus};
use crate::secret::{AccessToken, AuthorizationCode, CsrfState, PkceCodeVerifier, RefreshToken};
use crate::time::Timestamp;
use crate::tokens::OAuthTokens;
use crate::webhook::{WebhookGate, WebhookVerification};

/// Whose client credentials a token engine refreshes with.
#[derive(Debug)]
pub(crate) enum Client {
    Integration(IntegrationCredentials),
    ServiceApp { credentials: ServiceAppCredentials },
}

/// The machinery one manager's keys share: configuration, client credentials, the
/// process-local cache, the single-flight table, and leases abandoned by runs that were
/// dropped (released by the next run).
#[derive(Debug)]
pub struct TokenEngine {
    config: ByovaConfig,
    client: Client,
    cache: TokenCache,
    flights: Arc<Flights>,
    orphans: Arc<Mutex<Vec<Lease>>>,
    /// The last access token invalidated per key: never handed out again, even by a run that
    /// read the record before it was marked.
    rejected: Mutex<HashMap<TokenKey, (AccessToken, Timestamp)>>,
    /// Per key, a token whose 401s are not answered with a refresh, and until when (see
    /// [`RefreshPolicy::rejection_cooldown`](crate::RefreshPolicy::rejection_cooldown)).
    cooldowns: Mutex<HashMap<TokenKey, (AccessToken, Timestamp)>>,
    /// Per marked org, until when callers are not fetched for: Webex refused the last fetch.
    refused_fetches: Mutex<HashMap<TokenKey, Timestamp>>,
}

/// How long a marked org is not fetched again after Webex refused a fetch for it (callers
/// get `ReauthorizationRequired` meanwhile; an `authorized` delivery or an explicit fetch
/// still goes ahead).
const REFUSED_FETCH_PAUSE: Duration = Duration::from_secs(300);

/// What a marking flight carries: the key, the token, how to mark.
type MarkingPayload = (TokenKey, AccessToken, Marking);

/// How [`TokenEngine::invalidate_stored`] marks a record.
#[derive(Clone, Copy, Debug)]
enum Marking {
    /// Expired: the next caller refreshes.
    Expired,
    /// In its cool-down: 401s on it renew nothing for a while.
    CoolDown,
}

impl TokenEngine {
    fn new(config: ByovaConfig, client: Client) -> Arc<Self> {
        let cache = TokenCache::new(config.refresh.clone(), config.coordination.cache_revalidate);
        Arc::new(Self {
            config,
            client,
            cache,
            flights: Arc::default(),
            orphans: Arc::default(),
            rejected: Mutex::default(),
            cooldowns: Mutex::default(),
            refused_fetches: Mutex::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ByovaConfig {
        &self.config
    }

    /// The process-local cache.
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// The hot path: the Integration's access token when the cached one is fresh at `now`.
    #[inline]
    pub fn fresh_integration(&self, now: Timestamp) -> Option<AccessToken> {
        self.cache.fresh_integration(now)
    }

    /// A valid access token for `key`: from the cache when fresh, else after the key's flight.
    /// Out of line: the drivers call it when the hot path missed, and inlined it would widen
    /// the hot path's stack frame.
    #[inline(never)]
    pub fn access_token(self: &Arc<Self>, key: TokenKey, now: Timestamp) -> Step<AccessToken> {
        if let Some(token) = self.cache.fresh(&key, now) {
            return done(Ok(token));
        }
        self.obtain_unrejected(key, now, 0).map(now, |tokens| tokens.access_token)
    }

    /// Valid tokens for `key` with at least `min_valid` left at `now` (for a process that hands
    /// tokens on with their expiry): the cached or stored ones when they last that long, else
    /// refreshed first, through the key's flight, lease and budget as a forced refresh (tokens
    /// obtained moments ago are the answer as they are, rule 11). No refresh is made when a
    /// fresh token could not last `min_valid` either (the tokens' own lifetime is shorter), and
    /// when the refresh fails the still-valid tokens are the answer: their expiry says how
    /// long they last.
    pub fn valid_tokens(
        self: &Arc<Self>,
        key: TokenKey,
        min_valid: Duration,
        now: Timestamp,
    ) -> Step<OAuthTokens> {
        let engine = self.clone();
        self.obtain_unrejected(key.clone(), now, 0).then(now, move |tokens, now| match tokens {
            Ok(t) if min_valid.is_zero() || !t.is_expired(min_valid, now) => done(Ok(t)),
            Ok(t) if Duration::from_secs(t.expires_in) <= min_valid && !t.is_expired(Duration::ZERO, now) => {
                done(Ok(t))
            }
            Ok(t) => engine.obtain(key.clone(), Mode::Force(None), now).then(now, move |renewed, now| match renewed {
                Err(e) if !t.is_expired(Duration::ZERO, now) => {
                    tracing::warn!(key = %key, error = %e, "a refresh for a longer-lived token failed; the valid one is served");
                    done(Ok(t))
                }
                renewed => done(renewed),
            }),
            Err(e) => done(Err(e)),
        })
    }

    /// Tokens for `key` through its flight; a flight that started before an invalidation may
    /// still answer with the rejected token, so that answer is not taken: the record is marked
    /// again if need be and the key obtained again (a new flight reads the marked record and
    /// refreshes). If the store keeps answering with the rejected token, the caller gets a
    /// retryable error, never that token.
    fn obtain_unrejected(self: &Arc<Self>, key: TokenKey, now: Timestamp, attempt: u32) -> Step<OAuthTokens> {
        let engine = self.clone();
        self.obtain(key.clone(), Mode::GetValid, now).then(now, move |tokens, now| match tokens {
            Ok(t) if engine.is_rejected(&key, &t) => {
                engine.cache.evict(&key);
                if attempt >= 3 {
                    return done(Err(Error::Storage(crate::error::StorageError::unavailable(
                        "the store still holds an access token Webex rejected; try again shortly",
                    ))));
                }
                let rejected = t.access_token.clone();
                let again = engine.clone();
                engine
                    .clone()
                    .invalidate_stored(key.clone(), rejected, Marking::Expired, 0)
                    .then(now, move |_, now| again.obtain_unrejected(key, now, attempt + 1))
            }
            Ok(t) => {
                engine.forget_rejection(&key);
                done(Ok(t))
            }
            Err(e) => done(Err(e)),
        })
    }

    /// Whether `tokens` hold the access token invalidated for `key` (and were obtained no later
    /// than that: Webex reusing a token string later is a new token).
    fn is_rejected(&self, key: &TokenKey, tokens: &OAuthTokens) -> bool {
        self.rejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .is_some_and(|(token, at)| token.ct_eq(&tokens.access_token) && tokens.obtained_at <= *at)
    }

    fn forget_rejection(&self, key: &TokenKey) {
        let mut rejected = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
        if !rejected.is_empty() {
            rejected.remove(key);
        }
    }

    /// Stops serving `rejected` for `key` (Webex answered 401 to it): the cached entry goes if
    /// it holds that token, and the stored record, if it still holds it, is marked expired
    /// (a versioned write, on stores that keep versions), so the next
    /// [`access_token`](Self::access_token) here or in any process sharing the store refreshes,
    /// once, through the key's flight and lease. It runs as the key's flight, after any refresh
    /// of the key in this process. A newer token already stored (another caller refreshed
    /// since) is left alone, and so is a record already marked: any number of callers
    /// invalidating the same token cost one refresh.
    ///
    /// Within the token's cool-down (a retry with it was rejected too: see
    /// [`rejected_again`](Self::rejected_again)), nothing is renewed and the answer is
    /// [`Invalidation::NotAboutTheToken`]: rule 11, a 401 that a fresh token does not cure
    /// costs no more of Webex's per-user token cap.
    pub fn invalidate(
        self: &Arc<Self>,
        key: TokenKey,
        rejected: AccessToken,
        now: Timestamp,
    ) -> Step<Invalidation> {
        let cached = self.cache.get(&key).filter(|e| e.record.value.access_token.ct_eq(&rejected));
        let cooling = self.cooling(&key, &rejected, now).or_else(|| {
            cached.and_then(|e| self.config.refresh.rejection_cooldown_until(&e.record.value, now))
        });
        if let Some(until) = cooling {
            return done(Ok(self.not_about_the_token(&key, &rejected, until)));
        }
        self.rejected.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), (rejected.clone(), now));
        self.evict_if_holding(&key, &rejected);
        self.mark_as_flight(key, rejected, Marking::Expired, now, |engine, (key, rejected, _), now| {
            engine.invalidate(key, rejected, now).map(now, |_| None)
        })
    }

    /// Marks the stored record for `token` as `marking` says, as the key's flight (`retry`:
    /// what a caller behind another flight does once it ended), and answers what the token's
    /// 401s mean now.
    fn mark_as_flight(
        self: &Arc<Self>,
        key: TokenKey,
        token: AccessToken,
        marking: Marking,
        now: Timestamp,
        retry: fn(Arc<Self>, MarkingPayload, Timestamp) -> Step<Held>,
    ) -> Step<Invalidation> {
        let engine = self.clone();
        let (cooled_key, cooled) = (key.clone(), token.clone());
        self.fly(
            key.clone(),
            Sharing::Queues,
            now,
            (key, token, marking),
            retry,
            |engine, (key, token, marking), now| {
                engine.invalidate_stored(key, token, marking, 0).map(now, |()| None)
            },
        )
        .then(now, move |flown, now| {
            done(flown.map(|_| match engine.cooling(&cooled_key, &cooled, now) {
                Some(until) => Invalidation::NotAboutTheToken { until },
                None => Invalidation::Renew,
            }))
        })
    }

    /// Webex rejected `renewed` too, the token a request was retried with after a 401: that
    /// 401 is not about the token. For the cool-down
    /// ([`RefreshPolicy::rejection_cooldown_for`](crate::RefreshPolicy::rejection_cooldown_for)),
    /// 401s on it renew nothing, in this process and, through the stored record, in every
    /// process sharing the store. With the cool-down off, this does nothing and answers
    /// [`Invalidation::Renew`].
    pub fn rejected_again(
        self: &Arc<Self>,
        key: TokenKey,
        renewed: AccessToken,
        now: Timestamp,
    ) -> Step<Invalidation> {
        if self.config.refresh.rejection_cooldown.is_zero() {
            return done(Ok(Invalidation::Renew));
        }
        if let Some(until) = self.cooling(&key, &renewed, now) {
            return done(Ok(Invalidation::NotAboutTheToken { until }));
        }
        self.mark_as_flight(key, renewed, Marking::CoolDown, now, |engine, (key, renewed, _), now| {
            engine.rejected_again(key, renewed, now).map(now, |_| None)
        })
    }

    /// Webex refused a Service App fetch for `key` at `now`: callers wait a while.
    pub(crate) fn pause_fetches(&self, key: &TokenKey, now: Timestamp) {
        self.refused_fetches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), now.saturating_add(REFUSED_FETCH_PAUSE));
    }

    /// Whether callers of `key` are not fetched for at `now` (see [`pause_fetches`](Self::pause_fetches)).
    pub(crate) fn fetch_paused(&self, key: &TokenKey, now: Timestamp) -> bool {
        let mut paused = self.refused_fetches.lock().unwrap_or_else(|e| e.into_inner());
        match paused.get(key) {
            Some(until) if now < *until => true,
            Some(_) => {
                paused.remove(key);
                false
            }
            None => false,
        }
    }

    /// Until when 401s on `token` for `key` renew nothing, as this process knows.
    fn cooling(&self, key: &TokenKey, token: &AccessToken, now: Timestamp) -> Option<Timestamp> {
        let cooldowns = self.cooldowns.lock().unwrap_or_else(|e| e.into_inner());
        cooldowns.get(key).filter(|(t, until)| t.ct_eq(token) && now < *until).map(|(_, until)| *until)
    }

    /// Remembers that 401s on `token` renew nothing until `until` (the token is served on
    /// meanwhile), logs it once, counts the refresh not made.
    fn not_about_the_token(&self, key: &TokenKey, token: &AccessToken, until: Timestamp) -> Invalidation {
        let earlier = self
            .cooldowns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), (token.clone(), until));
        {
            let mut marked = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
            if marked.get(key).is_some_and(|(t, _)| t.ct_eq(token)) {
                marked.remove(key);
            }
        }
        crate::metrics::metrics().record_refresh_skipped(crate::metrics::SkipReason::RejectionCooldown);
        if earlier.is_none_or(|(t, _)| !t.ct_eq(token)) {
            tracing::warn!(
                key = %key,
                until = %until.to_rfc3339(),
                "Webex rejects the token a request was renewed with: the 401 is not about the token (a scope or \
                 a resource this identity may not use); 401s on it renew nothing until then"
            );
        }
        Invalidation::NotAboutTheToken { until }
    }

    fn evict_if_holding(&self, key: &TokenKey, token: &AccessToken) {
        if self.cache.get(key).is_some_and(|e| e.record.value.access_token.ct_eq(token)) {
            self.cache.evict(key);
        }
    }

    /// Marks the stored record if it still holds `token`: expired (a 401 to renew), or in its
    /// cool-down (a rejected retry). Within a cool-down already stored, nothing is written and
    /// this process learns it.
    fn invalidate_stored(
        self: Arc<Self>,
        key: TokenKey,
        token: AccessToken,
        marking: Marking,
        attempt: u32,
    ) -> Step<()> {
        Step::Storage(StorageCall::Load(
            key.clone(),
            Then::new(move |loaded: StorageResult<Option<Versioned<OAuthTokens>>>, now| {
                let record = match loaded {
                    Ok(Some(record)) if record.value.access_token.ct_eq(&token) => record,
                    // A newer token is stored, or none is left.
                    Ok(_) => {
                        self.evict_if_holding(&key, &token);
                        return done(Ok(()));
                    }
                    Err(e) => return done(Err(e.into())),
                };
                if let Some(until) = self.config.refresh.rejection_cooldown_until(&record.value, now) {
                    self.not_about_the_token(&key, &token, until);
                    return done(Ok(()));
                }
                let marked = match marking {
                    Marking::Expired if record.value.expires_in == 0 => {
                        self.evict_if_holding(&key, &token);
                        return done(Ok(()));
                    }
                    Marking::Expired => {
                        tracing::info!(key = %key, "Webex rejected the access token; marked for refresh");
                        record.value.clone().access_rejected()
                    }
                    Marking::CoolDown => {
                        let until =
                            now.saturating_add(self.config.refresh.rejection_cooldown_for(&record.value));
                        OAuthTokens { cooldown_until: Some(until), ..record.value.clone() }
                    }
                };
                let cooldown = marked.cooldown_until;
                Step::Storage(StorageCall::Store(
                    key.clone(),
                    marked,
                    Expect::Version(record.version),
                    Then::new(move |stored: StorageResult<u64>, _| match stored {
                        Ok(_) => {
                            match cooldown {
                                Some(until) => {
                                    self.not_about_the_token(&key, &token, until);
                                }
                                None => self.evict_if_holding(&key, &token),
                            }
                            done(Ok(()))
                        }
                        Err(e) if e.kind() == crate::error::StorageErrorKind::Conflict && attempt < 4 => {
                            self.invalidate_stored(key, token, marking, attempt + 1)
                        }
                        Err(e) => {
                            // This process holds back at least; the others refresh once.
                            if let Some(until) = cooldown {
                                self.not_about_the_token(&key, &token, until);
                            }
                            done(Err(e.into()))
                        }
                    }),
                ))
            }),
        ))
    }

    /// The status of `key` from storage, `None` when nothing is stored.
    pub fn status(self: &Arc<Self>, key: TokenKey) -> Step<Option<KeyStatus>> {
        let engine = self.clone();
        Step::Storage(StorageCall::Load(
            key.clone(),
            Then::new(move |loaded: StorageResult<Option<Versioned<OAuthTokens>>>, now| {
                done(loaded.map_err(Error::from).map(|r| r.map(|r| engine.cache.status(&key, &r.value, now))))
            }),
        ))
    }

    /// Tokens for `key` in `mode`, through the key's flight.
    fn obtain(self: &Arc<Self>, key: TokenKey, mode: Mode, now: Timestamp) -> Step<OAuthTokens> {
        let missing = nothing_stored(&key);
        self.obtain_held(key, mode, now).then(now, |held, _| done(held.and_then(|h| h.ok_or(missing))))
    }

    fn obtain_held(self: &Arc<Self>, key: TokenKey, mode: Mode, now: Timestamp) -> Step<Held> {
        if matches!(mode, Mode::GetValid)
            && let Some(entry) = self.cache.get(&key).filter(|e| now < e.serve_until)
        {
            return done(Ok(Some(entry.record.value.clone())));
        }
        let sharing = match mode {
            Mode::GetValid => Sharing::Joins,
            Mode::Fetch(Some(auth)) => Sharing::Fetches(auth.delivery),
            Mode::Force(_) | Mode::Fetch(None) => Sharing::Queues,
        };
        self.fly(
            key.clone(),
            sharing,
            now,
            (key, mode),
            |engine, (key, mode), now| engine.obtain_held(key, mode, now),
            |engine, (key, mode), now| {
                let settle = engine.clone();
                let settled_key = key.clone();
                Run::new(engine, key, mode, random_u64()).start().then(now, move |outcome, now| {
                    done(outcome.and_then(|o| settle.settle(&settled_key, o, now)).map(Some))
                })
            },
        )
    }

    /// Removes the org's record, as the key's flight (after any refresh or fetch of the org
    /// that is running, before any that starts later). With `before`, only a record no newer
    /// than that: a `deauthorized` event spares an authorization that came after it. Returns
    /// what the key holds afterwards (`Some`: a newer authorization was spared).
    fn remove(self: &Arc<Self>, org: OrgId, before: Option<Timestamp>, now: Timestamp) -> Step<Held> {
        self.fly(
            TokenKey::org(&org),
            Sharing::Queues,
            now,
            (org, before),
            |engine, (org, before), now| engine.remove(org, before, now),
            |engine, (org, before), _| match before {
                None => engine.delete(org, Expect::Any, None, 0),
                Some(at) => engine.delete_unless_newer(org, at, 0),
            },
        )
    }

    /// Removes the org's record only if Webex refuses a Service App fetch for it (403: the
    /// app is no longer authorized), as the key's flight (after any refresh or fetch running
    /// now). Returns what the key holds afterwards: `None` removed; `Some` kept, with fresh
    /// tokens when Webex answered the fetch, or as it was when nobody could ask (no authorized
    /// Integration).
    pub(crate) fn remove_unless_authorized(self: &Arc<Self>, org: OrgId, now: Timestamp) -> Step<Held> {
        self.fly(
            TokenKey::org(&org),
            Sharing::Queues,
            now,
            org,
            |engine, org, now| engine.remove_unless_authorized(org, now),
            |engine, org, _| {
                let key = TokenKey::org(&org);
                Step::Storage(StorageCall::Load(
                    key.clone(),
                    Then::new(move |loaded: StorageResult<Option<Versioned<OAuthTokens>>>, now| {
                        let kept = match loaded {
                            Ok(None) => return done(Ok(None)),
                            Ok(Some(record)) => Some(record.value),
                            Err(e) => return done(Err(e.into())),
                        };
                        let settle = engine.clone();
                        let settled_key = key.clone();
                        Run::new(engine.clone(), key.clone(), Mode::Fetch(None), random_u64()).start().then(
                            now,
                            move |outcome, now| match outcome.and_then(|o| settle.settle(&settled_key, o, now)) {
                                Ok(tokens) => done(Ok(Some(tokens))),
                                Err(Error::ServiceAppNotAuthorized { .. }) => {
                                    engine.delete_unless_newer(org, now, 0)
                                }
                                Err(Error::NotAuthorized | Error::ReauthorizationRequired { .. }) => {
                                    tracing::warn!(key = %key, "a deauthorization without a time of its own cannot be confirmed without an authorized Integration; the org is kept");
                                    done(Ok(kept))
                                }
                                Err(e) => done(Err(e)),
                            },
                        )
                    }),
                ))
            },
        )
    }

    fn delete_unless_newer(self: Arc<Self>, org: OrgId, at: Timestamp, attempt: u32) -> Step<Held> {
        let key = TokenKey::org(&org);
        Step::Storage(StorageCall::Load(
            key.clone(),
            Then::new(move |loaded: StorageResult<Option<Versioned<OAuthTokens>>>, _| match loaded {
                Err(e) => done(Err(e.into())),
                Ok(None) => done(Ok(None)),
                Ok(Some(record)) if record.value.authorized_at.is_some_and(|a| a > at) => {
                    tracing::info!(key = %key, "a deauthorization older than the stored authorization was ignored");
                    done(Ok(Some(record.value)))
                }
                Ok(Some(record)) => self.delete(org, Expect::Version(record.version), Some(at), attempt),
            }),
        ))
    }

    /// Deletes under `expect`. For a deauthorization at `judged_at`, a conflict (the record
    /// changed since it was read) means it is judged again, a few times.
    fn delete(
        self: Arc<Self>,
        org: OrgId,
        expect: Expect,
        judged_at: Option<Timestamp>,
        attempt: u32,
    ) -> Step<Held> {
        let key = TokenKey::org(&org);
        Step::Storage(StorageCall::DeleteOrg(
            org.clone(),
            expect,
            Then::new(move |deleted: StorageResult<()>, _| match (deleted, judged_at) {
                (Ok(()), _) => {
                    self.cache.remove(&key);
                    self.forget_rejection(&key);
                    done(Ok(None))
                }
                (Err(e), Some(at)) if e.kind() == crate::error::StorageErrorKind::Conflict && attempt < 4 => {
                    self.delete_unless_newer(org, at, attempt + 1)
                }
                (Err(e), _) => done(Err(e.into())),
            }),
        ))
    }

    /// Runs `lead` as the flight for `key`, or waits for the flight already running: shares
    /// its outcome when `sharing` allows, else waits for it to end and calls `retry`.
    fn fly<P: Send + 'static>(
        self: &Arc<Self>,
        key: TokenKey,
        sharing: Sharing,
        now: Timestamp,
        payload: P,
        retry: fn(Arc<Self>, P, Timestamp) -> Step<Held>,
        lead: fn(Arc<Self>, P, Timestamp) -> Step<Held>,
    ) -> Step<Held> {
        match self.flights.join(&key, sharing) {
            Joined::Follow(flight) => wait(flight),
            Joined::Busy(flight) => {
                let engine = self.clone();
                Step::Wait(flight, Then::new(move |_, now| retry(engine, payload, now)))
            }
            Joined::Lead(leader) => {
                let flight = leader.flight();
                let plan = lead(self.clone(), payload, now).then(now, move |result, _| {
                    leader.complete(result);
                    done(Ok(()))
                });
                Step::Detach(Box::new(plan), Then::new(move |(), _| wait(flight)))
            }
        }
    }

    /// What a finished run means: logged; the record cached, tokens that could not be stored
    /// kept for the next run, a key found missing forgotten; the tokens (or error) to hand out.
    fn settle(&self, key: &TokenKey, outcome: Outcome, now: Timestamp) -> Result<OAuthTokens> {
        if let Some(error) = &outcome.served_stale_after {
            tracing::warn!(key = %key, error = %error, "refresh failed; serving the still-valid access token");
        }
        if outcome.refreshed {
            tracing::info!(key = %key, "tokens refreshed and stored");
            crate::metrics::metrics().record_refresh(true);
        } else if outcome.served_stale_after.is_some()
            || outcome.result.as_ref().err().is_some_and(|e| e.status().is_some() || e.is_retryable())
        {
            crate::metrics::metrics().record_refresh(false);
        }
        match outcome.result {
            Ok(record) if self.is_rejected(key, &record.value) => {
                // A run that read the record before it was invalidated: not cached.
                Ok(record.value)
            }
            Ok(record) => {
                let tokens = record.value.clone();
                match outcome.deferred_until {
                    Some(until) => self.cache.put_deferred(key, record, now, until),
                    None => self.cache.put(key, record, now),
                }
                Ok(tokens)
            }
            Err(error) => {
                if matches!(error, Error::OrgNotRegistered { .. } | Error::NotAuthorized) {
                    self.cache.remove(key);
                }
                tracing::debug!(key = %key, error = %error, "could not obtain a valid token");
                Err(error)
            }
        }
    }

    /// How many flights are in progress (for tests and status pages).
    pub fn flights_in_progress(&self) -> usize {
        self.flights.in_progress()
    }
}

fn wait(flight: Flight) -> Step<Held> {
    Step::Wait(flight, Then::new(|result: Result<Held>, _| done(result)))
}

/// The error for a key with no stored tokens.
fn nothing_stored(key: &TokenKey) -> Error {
    match key.org_id() {
        Some(org) => Error::OrgNotRegistered { org_id: org.to_owned() },
        None => Error::NotAuthorized,
    }
}

/// Sends `request`, retrying as the retry policy decides, and parses the answer with `parse`
/// (given the response and when the request was sent).
pub(crate) fn send_with_retry<T: Send + 'static>(
    config: &ByovaConfig,
    request: crate::http::HttpRequest,
    parse: impl Fn(&HttpResponse, Timestamp) -> Result<T> + Send + Sync + 'static,
) -> Step<T> {
    send_with_policy(config.retry.clone(), request, parse)
}

/// [`send_with_retry`] under `retry` instead of the configured policy.
pub(crate) fn send_with_policy<T: Send + 'static>(
    retry: crate::policy::RetryPolicy,
    request: crate::http::HttpRequest,
    parse: impl Fn(&HttpResponse, Timestamp) -> Result<T> + Send + Sync + 'static,
) -> Step<T> {
    type Parse<T> = Arc<dyn Fn(&HttpResponse, Timestamp) -> Result<T> + Send + Sync>;
    fn attempt<T: Send + 'static>(
        retry: crate::policy::RetryPolicy,
        request: crate::http::HttpRequest,
        parse: Parse<T>,
        n: u32,
    ) -> Step<T> {
        Step::Send(
            request.clone(),
            Then::new(move |sent: Sent, _| {
                crate::metrics::metrics()
                    .record_call(&request, sent.response.as_ref().ok().map(|r| r.status));
                match sent.response.and_then(|r| parse(&r, sent.sent_at)) {
                    Ok(value) => done(Ok(value)),
                    Err(error) => {
                        let random = (random_u64() >> 32) as u32;
                        match retry.decide(request.retry, n, &error, random) {
                            RetryDecision::RetryAfter(d) => {
                                Step::Sleep(d, Then::new(move |(), _| attempt(retry, request, parse, n + 1)))
                            }
                            RetryDecision::GiveUp => done(Err(error)),
                        }
                    }
                }
            }),
        )
    }
    attempt(retry, request, Arc::new(parse), 1)
}

/// What a flavour runs one manager's plans with: the manager's token engine, its storage
/// (`S`: the flavour's storage trait object), the flavour's HTTP client `H`, a clock, and for a
/// Service App the Integration's agent, whose bearer fetches org tokens
/// ([`Step::IntegrationToken`]).
pub struct Agent<S: ?Sized, H> {
    /// The manager's token engine.
    pub engine: Arc<TokenEngine>,
    /// The storage its plans' storage steps go to.
    pub storage: Arc<S>,
    /// The HTTP client its `Send` steps go through.
    pub http: H,
    /// The clock every step's result is timestamped with.
    clock: Arc<dyn crate::time::Clock>,
    /// The Integration's agent, for a Service App's (`None`: this is the Integration's).
    pub integration: Option<Arc<Agent<S, H>>>,
    /// `clock` is the [`CoarseClock`](crate::time::CoarseClock): read without a dynamic call.
    coarse: bool,
}

impl<S: ?Sized, H> Agent<S, H> {
    /// An agent of these parts.
    pub fn new(
        engine: Arc<TokenEngine>,
        storage: Arc<S>,
        http: H,
        clock: Arc<dyn crate::time::Clock>,
        integration: Option<Arc<Agent<S, H>>>,
    ) -> Self {
        let coarse = clock.is_coarse();
        Self { engine, storage, http, clock, integration, coarse }
    }

    /// The clock every step's result is timestamped with.
    pub fn clock(&self) -> &Arc<dyn crate::time::Clock> {
        &self.clock
    }

    /// The current time (the hot path reads it on every call).
    #[inline]
    pub fn now(&self) -> Timestamp {
        if self.coarse { crate::time::CoarseClock::read() } else { self.clock.now() }
    }

    /// The Integration's agent: this Service App's Integration, or itself.
    pub fn integration_agent(self: &Arc<Self>) -> &Arc<Self> {
        self.integration.as_ref().unwrap_or(self)
    }
}

impl<S: ?Sized, H> std::fmt::Debug for Agent<S, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("engine", &self.engine).finish_non_exhaustive()
    }
}

/// The engine of an `IntegrationTokenManager`: the Integration's own OAuth tokens.
#[derive(Debug)]
pub struct IntegrationEngine {
    token_engine: Arc<TokenEngine>,
    credentials: IntegrationCredentials,
    pending: PendingAuthorizations,
}

impl IntegrationEngine {
    /// An engine for `credentials` under `config`.
    pub fn new(credentials: IntegrationCredentials, config: ByovaConfig) -> Arc<Self> {
        let tokens = TokenEngine::new(config, Client::Integration(credentials.clone()));
        Arc::new(Self { token_engine: tokens, credentials, pending: PendingAuthorizations::default() })
    }

    /// The shared machinery (cache, flights) the flavour's driver runs against.
    pub fn token_engine(&self) -> &Arc<TokenEngine> {
        &self.token_engine
    }

    /// The Integration's credentials.
    pub fn credentials(&self) -> &IntegrationCredentials {
        &self.credentials
    }

    /// The configuration.
    pub fn config(&self) -> &ByovaConfig {
        &self.token_engine.config
    }

    /// The authorization URL (state + PKCE S256) and its `state`, built at `now`, and the plan
    /// that writes its pending authorization to the store (for `exchange_code_for_state` in
    /// another process; it logs a failure and never fails). The verifier is also kept here, so
    /// [`exchange_code`](Self::exchange_code) works in this process whatever the store does.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad scope list.
    pub fn authorization_url(
        &self,
        scopes: Option<&[&str]>,
        state: Option<&str>,
        now: Timestamp,
    ) -> Result<(AuthorizationUrl, Step<()>)> {
        let (issued, save) = self.issue_authorization(scopes, state, now)?;
        let save = save.then(now, |saved, _| {
            if let Err(e) = saved {
                tracing::warn!(error = %e, "could not store the pending authorization; its code can be exchanged only in this process");
            }
            done(Ok(()))
        });
        Ok((issued, save))
    }

    /// [`authorization_url`](Self::authorization_url) whose plan fails when the store did
    /// not keep the pending authorization: a storage error, or
    /// [`Error::Configuration`] for a store that keeps none (a six-method backend).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad scope list.
    pub fn authorization_url_stored(
        &self,
        scopes: Option<&[&str]>,
        state: Option<&str>,
        now: Timestamp,
    ) -> Result<(AuthorizationUrl, Step<()>)> {
        let (issued, save) = self.issue_authorization(scopes, state, now)?;
        let save = save.then(now, |saved, _| {
            match saved {
            Ok(true) => done(Ok(())),
            Ok(false) => done(Err(Error::Configuration(
                "this storage keeps no pending authorizations, so only this process could exchange the code; \
                 use a shared store (file, Redis, SQL) or get_authorization_url"
                    .into(),
            ))),
            Err(e) => done(Err(e)),
        }
        });
        Ok((issued, save))
    }

    fn issue_authorization(
        &self,
        scopes: Option<&[&str]>,
        state: Option<&str>,
        now: Timestamp,
    ) -> Result<(AuthorizationUrl, Step<bool>)> {
        let issued = self.pending.issue(&self.token_engine.config, &self.credentials, scopes, state, now)?;
        let save = Step::Storage(StorageCall::SavePending(
            pending_key(&issued.state),
            issued.pending,
            Then::new(|saved: StorageResult<bool>, _| done(saved.map_err(Error::from))),
        ));
        Ok((AuthorizationUrl { url: issued.url, state: issued.state }, save))
    }

    /// The request `authorize` opens, for a listener bound at `redirect_uri`, and the
    /// credentials (with that redirect URI) the code exchange must use.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad scope list.
    pub fn authorization(
        &self,
        redirect_uri: &str,
        options: &AuthorizeOptions,
    ) -> Result<(AuthorizationRequest, IntegrationCredentials)> {
        let credentials = self.credentials.clone().with_redirect_uri(redirect_uri);
        let scopes: Option<Vec<&str>> =
            options.scopes.as_ref().map(|s| s.iter().map(String::as_str).collect());
        let state = options.state.as_deref().map(CsrfState::new);
        let mut request = AuthorizationRequest::builder(&self.token_engine.config, &credentials);
        if let Some(scopes) = scopes.as_deref() {
            request = request.scopes(scopes);
        }
        if let Some(state) = state {
            request = request.state(state);
        }
        let request = request.build()?;
        Ok((request, credentials))
    }

    /// Exchanges `code` with the pending authorization issued with `state`: this process's
    /// own, else the store's (another process built the URL). Without `state`, the latest URL
    /// this process built (the Python SDK's `exchange_code`), or none. Either way the pending
    /// authorization is used once: the store's copy is taken too.
    ///
    /// Fails with [`Error::UnknownAuthorizationState`] for a `state` nobody sharing the store
    /// issued, already used, or older than ten minutes.
    pub fn exchange_code(
        self: &Arc<Self>,
        code: &str,
        state: Option<&str>,
        now: Timestamp,
    ) -> Step<OAuthTokens> {
        let code = AuthorizationCode::new(code);
        let local = match state {
            Some(state) => self.pending.take_for_state(state).map(|p| (state.to_owned(), p)),
            None => self.pending.take_latest(),
        };
        let engine = self.clone();
        match (local, state) {
            (Some((state, local)), _) => Step::Storage(StorageCall::TakePending(
                pending_key(&state),
                Then::new(move |_stored: StorageResult<Option<PendingAuthorization>>, now| {
                    engine.exchange_pending(code, local, now)
                }),
            )),
            (None, Some(state)) => Step::Storage(StorageCall::TakePending(
                pending_key(state),
                Then::new(move |stored: StorageResult<Option<PendingAuthorization>>, now| match stored {
                    Ok(Some(pending)) => engine.exchange_pending(code, pending, now),
                    Ok(None) => done(Err(Error::UnknownAuthorizationState)),
                    Err(e) => done(Err(e.into())),
                }),
            )),
            (None, None) => self.exchange(self.credentials.clone(), code, None, now),
        }
    }

    fn exchange_pending(
        &self,
        code: AuthorizationCode,
        pending: PendingAuthorization,
        now: Timestamp,
    ) -> Step<OAuthTokens> {
        if pending.is_expired(now) {
            return done(Err(Error::UnknownAuthorizationState));
        }
        let credentials = self.credentials.clone().with_redirect_uri(pending.redirect_uri);
        self.exchange(credentials, code, Some(pending.verifier), now)
    }

    /// Exchanges `code` (a flight of its own: never retried once Webex may have seen it,
    /// stored before it is handed out, kept for the next run if the store fails).
    pub fn exchange(
        &self,
        credentials: IntegrationCredentials,
        code: AuthorizationCode,
        verifier: Option<PkceCodeVerifier>,
        now: Timestamp,
    ) -> Step<OAuthTokens> {
        exchange_flight(self.token_engine.clone(), (credentials, code, verifier), now)
            .then(now, |held, _| done(held.and_then(|h| h.ok_or(Error::NotAuthorized))))
    }

    /// Refreshes now; without `refresh_token`, with the stored one.
    pub fn refresh(&self, refresh_token: Option<RefreshToken>, now: Timestamp) -> Step<OAuthTokens> {
        self.token_engine.obtain(TokenKey::Integration, Mode::Force(refresh_token), now)
    }

    /// A valid access token.
    pub fn access_token(&self, now: Timestamp) -> Step<AccessToken> {
        self.token_engine.access_token(TokenKey::Integration, now)
    }

    /// Valid tokens with at least `min_valid` left (see [`TokenEngine::valid_tokens`]).
    pub fn valid_tokens(&self, min_valid: Duration, now: Timestamp) -> Step<OAuthTokens> {
        self.token_engine.valid_tokens(TokenKey::Integration, min_valid, now)
    }

    /// Stops serving `rejected` (see [`TokenEngine::invalidate`]).
    pub fn invalidate(&self, rejected: &AccessToken, now: Timestamp) -> Step<Invalidation> {
        self.token_engine.invalidate(TokenKey::Integration, rejected.clone(), now)
    }

    /// A retry with `renewed` was rejected too (see [`TokenEngine::rejected_again`]).
    pub fn rejected_again(&self, renewed: &AccessToken, now: Timestamp) -> Step<Invalidation> {
        self.token_engine.rejected_again(TokenKey::Integration, renewed.clone(), now)
    }

    /// The Integration's status.
    pub fn status(&self) -> Step<Option<KeyStatus>> {
        self.token_engine.status(TokenKey::Integration)
    }
}

type Exchange = (IntegrationCredentials, AuthorizationCode, Option<PkceCodeVerifier>);

/// The code exchange as the Integration key's flight; behind another flight it waits, the
/// code still unused.
fn exchange_flight(tokens: Arc<TokenEngine>, exchange: Exchange, now: Timestamp) -> Step<Held> {
    tokens.fly(TokenKey::Integration, Sharing::Queues, now, exchange, exchange_flight, exchange_lead)
}

fn exchange_lead(
    tokens: Arc<TokenEngine>,
    (credentials, code, verifier): Exchange,
    now: Timestamp,
) -> Step<Held> {
    let request = code_exchange_request(&tokens.config, &credentials, &code, verifier.as_ref());
    send_with_retry(&tokens.config, request, |r, sent_at| {
        parse_token_response(r, sent_at, &TokenCall::CodeExchange)
    })
    .then(now, move |exchanged, _| match exchanged {
        Ok(new) => store_new(tokens, TokenKey::Integration, new, Expect::Any),
        Err(e) => done(Err(e)),
    })
}

/// Stores tokens just obtained outside a refresh run (a code exchange) and caches them; if
/// the store fails they are kept for the key's next run instead of being lost.
fn store_new(engine: Arc<TokenEngine>, key: TokenKey, tokens: OAuthTokens, expect: Expect) -> Step<Held> {
    Step::Storage(StorageCall::Store(
        key.clone(),
        tokens.clone(),
        expect,
        Then::new(move |stored: StorageResult<u64>, now| match stored {
            Ok(version) => {
                tracing::info!(key = %key, "new tokens stored");
                engine.cache.put(&key, Versioned { value: tokens.clone(), version }, now);
                done(Ok(Some(tokens)))
            }
            Err(e) => {
                engine.cache.keep_unsaved(&key, Unsaved::new(tokens, expect, None));
                done(Err(e.into()))
            }
        }),
    ))
}

/// The engine of a `ServiceAppTokenManager`, and of the webhook handling and webhook API
/// calls of a `Byova` facade.
#[derive(Debug)]
pub struct ServiceAppEngine {
    token_engine: Arc<TokenEngine>,
    credentials: ServiceAppCredentials,
    application_id: String,
    gate: WebhookGate,
}

impl ServiceAppEngine {
    /// An engine for the Service App `credentials` under `config`, verifying webhook
    /// deliveries as `webhooks` says.
    pub fn new(
        credentials: ServiceAppCredentials,
        config: ByovaConfig,
        webhooks: WebhookVerification,
    ) -> Arc<Self> {
        let application_id = derive_application_id_in_region(&config.region, &credentials.client_id);
        let gate = WebhookGate::new(application_id.clone(), webhooks);
        let tokens = TokenEngine::new(config, Client::ServiceApp { credentials: credentials.clone() });
        Arc::new(Self { token_engine: tokens, credentials, application_id, gate })
    }

    /// The shared machinery (cache, flights) the flavour's driver runs against.
    pub fn token_engine(&self) -> &Arc<TokenEngine> {
        &self.token_engine
    }

    /// The Service App's credentials.
    pub fn credentials(&self) -> &ServiceAppCredentials {
        &self.credentials
    }

    /// The base64url application id derived from the client id.
    pub fn application_id(&self) -> &str {
        &self.application_id
    }

    /// The configuration.
    pub fn config(&self) -> &ByovaConfig {
        &self.token_engine.config
    }

    /// The hot path: the org's access token when the cached one is fresh at `now`.
    #[inline]
    pub fn fresh_org(&self, org: &OrgId, now: Timestamp) -> Option<AccessToken> {
        self.token_engine.cache.fresh_org(org, now)
    }

    /// A valid access token for `org` (out of line, as [`TokenEngine::access_token`]).
    #[inline(never)]
    pub fn access_token(&self, org: &OrgId, now: Timestamp) -> Step<AccessToken> {
        self.token_engine.access_token(TokenKey::org(org), now)
    }

    /// Valid tokens for `org` with at least `min_valid` left (see [`TokenEngine::valid_tokens`]).
    pub fn valid_tokens(&self, org: &OrgId, min_valid: Duration, now: Timestamp) -> Step<OAuthTokens> {
        self.token_engine.valid_tokens(TokenKey::org(org), min_valid, now)
    }

    /// Stops serving `rejected` for `org` (see [`TokenEngine::invalidate`]).
    pub fn invalidate(&self, org: &OrgId, rejected: &AccessToken, now: Timestamp) -> Step<Invalidation> {
        self.token_engine.invalidate(TokenKey::org(org), rejected.clone(), now)
    }

    /// A retry with `renewed` for `org` was rejected too (see
    /// [`TokenEngine::rejected_again`]).
    pub fn rejected_again(&self, org: &OrgId, renewed: &AccessToken, now: Timestamp) -> Step<Invalidation> {
        self.token_engine.rejected_again(TokenKey::org(org), renewed.clone(), now)
    }

    /// Fetches new tokens for `org` with the Integration's bearer.
    pub fn fetch(&self, org: &OrgId, now: Timestamp) -> Step<OAuthTokens> {
        self.token_engine.obtain(TokenKey::org(org), Mode::Fetch(None), now)
    }

    /// Decodes a webhook's org id and fetches its tokens.
    pub fn fetch_from_webhook_org(&self, encoded_org_id: &str, now: Timestamp) -> Step<(OrgId, OAuthTokens)> {
        match OrgId::from_webhook(encoded_org_id) {
            Ok(org) => self.fetch(&org, now).map(now, move |tokens| (org, tokens)),
            Err(e) => done(Err(e)),
        }
    }

    /// Registers `org` from an existing refresh token.
    pub fn save_registration(
        &self,
        org: &OrgId,
        refresh_token: RefreshToken,
        now: Timestamp,
    ) -> Step<OAuthTokens> {
        self.token_engine.obtain(TokenKey::org(org), Mode::Force(Some(refresh_token)), now)
    }

    /// Refreshes `org` now (fetching with the Integration's bearer when it has no usable
    /// refresh token).
    pub fn refresh_for_org(&self, org: &OrgId, now: Timestamp) -> Step<OAuthTokens> {
        self.token_engine.obtain(TokenKey::org(org), Mode::Force(None), now)
    }

    /// Removes `org`'s tokens, after any refresh or fetch of it that is running.
    pub fn remove_org(&self, org: &OrgId, now: Timestamp) -> Step<()> {
        self.token_engine.remove(org.clone(), None, now).map(now, drop)
    }

    /// Registered org ids.
    pub fn list_orgs(&self) -> Step<Vec<OrgId>> {
        Step::Storage(StorageCall::ListOrgs(Then::new(|orgs: StorageResult<Vec<OrgId>>, _| {
            done(orgs.map_err(Error::from))
        })))
    }

    /// The status of `org`, `None` when not registered.
    pub fn status(&self, org: &OrgId) -> Step<Option<KeyStatus>> {
        self.token_engine.status(TokenKey::org(org))
    }
}

#[cfg(test)]
mod model_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::encode_webex_id;
    use crate::secret::AccessToken;

    #[test]
    fn every_form_of_an_org_id_reads_the_same_cache_entry() {
        let engine = ServiceAppEngine::new(
            ServiceAppCredentials::new("C", "s"),
            ByovaConfig::default(),
            WebhookVerification::default(),
        );
        let org = "63b02f90-9cc6-43b8-aa6d-cad425ac554c";
        let now = Timestamp::from_unix_secs(1_000);
        let tokens = OAuthTokens::new(AccessToken::new("A"), 3_600, now);
        let key = TokenKey::org(&OrgId::from_static(org));
        engine.token_engine().cache().put(&key, Versioned { value: tokens, version: 1 }, now);
        let base64 = encode_webex_id("us", "ORGANIZATION", org);
        let padded = format!("{base64}{}", "=".repeat((4 - base64.len() % 4) % 4));
        for form in [org, &base64, &padded, &format!(" {org} ")] {
            let id = OrgId::new(form).unwrap();
            assert!(engine.fresh_org(&id, now).is_some_and(|t| t.ct_eq_str("A")), "{form:?}");
        }
        assert!(engine.fresh_org(&OrgId::from_static("not-an-org"), now).is_none());
    }
}
