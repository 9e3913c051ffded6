//! The refresh path for one key, as a plan of [`Step`]s.
//!
//! ```text
//! (unsaved tokens of an earlier run? Store them first, unless the stored record is newer)
//! Load ─▶ fresh? ─▶ Done          marked "re-authorization required"? ─▶ Done (no call)
//!   └─▶ AcquireLease ─▶ held elsewhere ─▶ (old token still good? Done) Sleep ▷ Load ▷ …
//!         └─▶ Load (re-read under the lease: another process may have refreshed) ─▶ Release ▷ Done
//!               └─▶ ExtendLease ▷ Send(refresh) ─▶ 429/5xx/transport: Sleep ▷ Send (RetryPolicy)
//!                     │            invalid_grant: Load (rotated elsewhere?) ▷ Send with that token,
//!                     │                           org: IntegrationToken ▷ Send(fetch)
//!                     │                           else Store(record marked) ▷ fail or serve stale
//!                     │            other failure: old token still valid? serve it : fail
//!                     └─▶ Store(version-checked) ─▶ Release ─▶ Done
//! ```
//!
//! Each continuation is a method taking the run by value, so what comes next is decided by
//! which method the previous step named, never by a state field. The run's phase is its type:
//! a [`Run<Unleased>`](Run) reads, takes the lease and waits; only a [`Run<Leased>`](Run) has
//! the methods that call Webex (and holds the lease they check), so a token call without the
//! lease does not compile, and losing the lease turns the run back into an unleased one. Data
//! a phase needs travels with it: the lease in [`Leased`], the call under way and the tokens
//! in hand as arguments of the steps that use them. The run holds every
//! decision: when a token is good enough, whether to wait or to call Webex, what to retry,
//! when a refresh token is dead, and that new tokens are stored before anyone is given them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::budget::{BudgetDecision, BudgetState, TOKEN_BUDGET_STATE, pause_local_budget, take_local_budget};
use crate::cache::Unsaved;
use crate::engine::step::{Sent, Step, StorageCall, StorageResult, Then};
use crate::engine::{Client, TokenEngine as Engine};
use crate::error::{ApiFailure, Error, Result, StorageErrorKind};
use crate::http::HttpRequest;
use crate::key::{Expect, Lease, TokenKey, Versioned};
use crate::oauth::{TokenCall, parse_token_response, refresh_request, service_app_token_request};
use crate::policy::{Freshness, RetryDecision};
use crate::secret::{AccessToken, RefreshToken};
use crate::time::Timestamp;
use crate::tokens::{OAuthTokens, Rejection};

/// What a caller wants from a run.
#[derive(Clone, Debug)]
pub(crate) enum Mode {
    /// A valid token: refresh only when needed (refresh-ahead or expired).
    GetValid,
    /// New tokens now (`refresh`, `refresh_for_org`). With an explicit refresh token, that one
    /// is used (`refresh(Some(token))`, `save_registration`); without one, the stored one.
    Force(Option<RefreshToken>),
    /// Fetch new Service App tokens with the Integration's bearer: for an `authorized` event
    /// (`Some`), or because the caller asked (`fetch_token_for_org`).
    Fetch(Option<Authorization>),
}

/// The authorization an `authorized` event announces: when it happened (`exact`: the
/// event's own time; otherwise when its delivery arrived) and which delivery announced it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Authorization {
    pub(crate) at: Timestamp,
    pub(crate) exact: bool,
    /// A digest of the delivery's body: Webex's redelivery of it has the same.
    pub(crate) delivery: u64,
}

impl Mode {
    /// Whether the caller brought its own credential (a refresh token or an authorization):
    /// it acts even when another process just refreshed, and whatever the stored mark says.
    fn explicit(&self) -> bool {
        matches!(self, Mode::Force(Some(_)) | Mode::Fetch(_))
    }
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
    /// this is the failure, for the log.
    pub served_stale_after: Option<Error>,
    /// The token budget had no room for a refresh of a still-valid token, so that token was
    /// served; the cache serves it until then (or until it is no longer usable) instead of
    /// trying again at once.
    pub deferred_until: Option<Timestamp>,
}

/// A lease this run holds. Dropped while still held (the run was abandoned), it is handed to
/// the engine, whose next run releases it.
struct HeldLease {
    lease: Lease,
    orphans: Arc<Mutex<Vec<Lease>>>,
    armed: bool,
}

impl HeldLease {
    /// The guard stands down: the lease was released, or lost to another owner.
    fn disarm(mut self) {
        self.armed = false;
    }

    /// Releases the lease, then continues with `then`; dropped before the release finished,
    /// or if the store could not release it (a network fault), the lease goes back to the
    /// orphans, and the key's next run releases it instead of waiting out its TTL.
    fn release<T: Send + 'static>(self, then: impl FnOnce() -> Step<T> + Send + 'static) -> Step<T> {
        let lease = self.lease.clone();
        Step::Storage(StorageCall::ReleaseLease(
            lease,
            Then::new(move |released: StorageResult<()>, _| {
                if released.is_ok() {
                    self.disarm();
                }
                then()
            }),
        ))
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        if self.armed {
            self.orphans.lock().unwrap_or_else(|e| e.into_inner()).push(self.lease.clone());
        }
    }
}

/// Tokens Webex issued that are not durable yet, handed from step to step while a run stores
/// them. Dropped before they are stored or knowingly given up (a failure, a cancelled task, a
/// panicking store), they go back to the cache for the key's next run, so a refresh token
/// Webex rotated is never lost to a storage outage.
struct InHand {
    unsaved: Unsaved,
    engine: Arc<Engine>,
    key: TokenKey,
    armed: bool,
}

impl InHand {
    fn new(engine: Arc<Engine>, key: TokenKey, unsaved: Unsaved) -> Self {
        Self { unsaved, engine, key, armed: true }
    }

    /// Stored: the tokens, now durable.
    fn stored(mut self) -> OAuthTokens {
        self.armed = false;
        self.unsaved.tokens.clone()
    }

    /// Given up on purpose: another writer's newer record (or its deletion) stands.
    fn give_up(mut self) {
        self.armed = false;
    }
}

impl Drop for InHand {
    fn drop(&mut self) {
        if self.armed {
            self.engine.cache().keep_unsaved(&self.key, self.unsaved.clone());
        }
    }
}

/// How storing tokens in hand ended, for the step that asked for it: the run ends with them
/// (fresh from Webex), or goes on as an ordinary run (an earlier run's tokens, stored first).
enum Persisted {
    /// Stored, at this version.
    Stored(Versioned<OAuthTokens>),
    /// Another writer's record (or its deletion, `None`) stands; the tokens in hand were given
    /// up on purpose.
    Superseded(Option<Versioned<OAuthTokens>>),
}

/// A token call under way: which call, and the request that makes it. Handed from step to step
/// while the call runs (the lease check, the budget, the send, each retry) and gone once the
/// answer is handled, so no step can send without a request or read an answer without its call.
struct Call {
    kind: TokenCall,
    request: HttpRequest,
}

type Plan = Step<Outcome>;
type Loaded = StorageResult<Option<Versioned<OAuthTokens>>>;

/// One run of the refresh path for one key, in phase `P`. See the [module docs](self).
///
/// The phase is a type: a run holds the key's lease ([`Leased`]) or does not ([`Unleased`]),
/// and only a leased run has the methods that call Webex, so a token call without the lease
/// (two processes spending one refresh token) does not compile. Losing the lease turns the run
/// back into an unleased one, which can only wait and read.
pub(crate) struct Run<P = Unleased> {
    s: Box<State>,
    phase: P,
}

/// Before the lease: reading, taking the lease, waiting for another holder.
pub(crate) struct Unleased;

/// Holding the key's lease: the run may call Webex and store what it gets.
pub(crate) struct Leased(HeldLease);

/// What a phase does when the run ends: a held lease is released first.
pub(crate) trait Phase: Send + 'static {
    /// Ends the run with `outcome`.
    fn end(self, outcome: Outcome) -> Plan;
}

impl Phase for Unleased {
    fn end(self, outcome: Outcome) -> Plan {
        Step::Done(Ok(outcome))
    }
}

impl Phase for Leased {
    fn end(self, outcome: Outcome) -> Plan {
        self.0.release(move || Step::Done(Ok(outcome)))
    }
}

/// What a run knows and has decided, whatever its phase.
struct State {
    engine: Arc<Engine>,
    key: TokenKey,
    mode: Mode,
    jitter_seed: u64,
    rng: u64,
    /// The record as last read.
    current: Option<Versioned<OAuthTokens>>,
    /// The caller may be given the stored access token if refreshing fails.
    stale_ok: bool,
    waited: Duration,
    attempt: u32,
    /// The refresh token the last call spent (none for a fetch).
    used_refresh: Option<RefreshToken>,
    /// A Service App's fetch with the Integration's bearer has stood in once already.
    fallback_used: bool,
    /// What this run learned of Webex rejecting the refresh token it sent.
    dead: DeadToken,
    store_attempts: u32,
    /// Reads of the token budget for the call about to be sent (a conflict reads again).
    budget_reads: u32,
    /// The stored record could not be read, and this run (a fetch) replaces it.
    unreadable: bool,
    /// Writes of the "refresh token rejected" mark lost to another writer.
    mark_attempts: u32,
    /// How long this run has waited for the budget.
    budget_waited: Duration,
}

/// What a run learned of Webex rejecting (`invalid_grant`) the refresh token it sent. Marking
/// the record is pending only for a rejection believed, so a mark without one cannot be asked
/// for; and a rejection is re-read from the store once, before it is believed.
enum DeadToken {
    /// No rejection yet: the first one is checked against the store (another process may have
    /// rotated the token this run sent).
    Unchecked,
    /// A rejection was checked and explained (the token had been rotated elsewhere) or could
    /// not be checked: a later one is not re-read.
    Explained,
    /// Webex rejected the stored refresh token: `error` is the caller's answer, and while
    /// `mark` is set the record is marked "re-authorization required" before the run ends.
    Rejected { error: Error, mark: bool },
}

impl DeadToken {
    /// What Webex answered, when this run believes the stored refresh token dead.
    fn rejection(&self) -> Option<&Error> {
        match self {
            DeadToken::Rejected { error, .. } => Some(error),
            DeadToken::Unchecked | DeadToken::Explained => None,
        }
    }

    /// Asks for the record to be marked before the run ends (again, after a conflict); only a
    /// rejection believed can be marked.
    fn mark_again(&mut self) {
        if let DeadToken::Rejected { mark, .. } = self {
            *mark = true;
        }
    }

    /// Whether a mark is pending, clearing it: the caller writes it once.
    fn take_mark(&mut self) -> bool {
        match self {
            DeadToken::Rejected { mark, .. } => std::mem::take(mark),
            DeadToken::Unchecked | DeadToken::Explained => false,
        }
    }
}

/// Versioned writes of the token budget that may lose to other writers (each after a short,
/// jittered pause) before the call waits as for an empty bucket.
const MAX_BUDGET_READS: u32 = 8;

impl<P: Phase> Run<P> {
    fn load(self, then: fn(Self, Loaded, Timestamp) -> Plan) -> Plan {
        let key = self.s.key.clone();
        Step::Storage(StorageCall::Load(key, Then::new(move |loaded, now| then(self, loaded, now))))
    }

    fn random(&mut self) -> u32 {
        // xorshift64*: plenty for spreading backoff.
        self.s.rng ^= self.s.rng >> 12;
        self.s.rng ^= self.s.rng << 25;
        self.s.rng ^= self.s.rng >> 27;
        (self.s.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    fn is_service_app(&self) -> bool {
        matches!(self.s.engine.client, Client::ServiceApp { .. })
    }

    fn nothing_stored(&self) -> Error {
        match self.s.key.org_id() {
            Some(org) => Error::OrgNotRegistered { org_id: org.to_owned() },
            None => Error::NotAuthorized,
        }
    }

    /// The error for a dead refresh token: what Webex said in this run, else what the stored
    /// mark kept of it.
    fn reauthorization_required(&self) -> Error {
        self.s.dead.rejection().cloned().unwrap_or_else(|| {
            let kept = self.s.current.as_ref().and_then(|c| c.value.rejection.as_ref());
            Error::ReauthorizationRequired {
                subject: self.s.key.subject(),
                failure: match kept {
                    Some(r) => ApiFailure {
                        status: r.status,
                        tracking_id: r.tracking_id.clone(),
                        oauth_error: Some("invalid_grant"),
                    },
                    // A mark from an older byova: what it was answered is not known.
                    None => ApiFailure::new(400),
                },
            }
        })
    }

    fn freshness(&self, tokens: &OAuthTokens, now: Timestamp) -> Freshness {
        self.s.engine.config.refresh.assess(tokens, now, self.s.jitter_seed)
    }

    /// Whether `tokens` can be renewed without a person: for a Service App always (through a
    /// fetch with the Integration's bearer when its refresh token is gone or was rejected),
    /// for the Integration when it holds a refresh token Webex has not rejected.
    fn renewable(&self, tokens: &OAuthTokens) -> bool {
        self.is_service_app() || (!tokens.reauthorization_required && tokens.refresh_token.is_some())
    }

    /// Whether the record as last read carries the "refresh token rejected" mark.
    fn current_marked(&self) -> bool {
        self.s.current.as_ref().is_some_and(|c| c.value.reauthorization_required)
    }

    /// Whether a record that cannot be read (corrupt, sealed under a key not configured,
    /// written by a newer byova) stands in this run's way: a fetch (an `authorized` delivery,
    /// `fetch_token_for_org`) brings tokens of its own and replaces it, so the org is never
    /// blocked by it.
    fn replaces_unreadable(&self, error: &crate::error::StorageError) -> bool {
        matches!(self.s.mode, Mode::Fetch(_))
            && matches!(error.kind(), StorageErrorKind::Corrupt | StorageErrorKind::Sealing)
    }

    /// Whether `record` already answers the authorization this run fetches for: fetched for
    /// this very delivery (a redelivery, or another replica that got it too), or for an event
    /// at least as new.
    fn satisfied_by(&self, record: &Versioned<OAuthTokens>) -> bool {
        let Mode::Fetch(Some(auth)) = &self.s.mode else { return false };
        let tokens = &record.value;
        !tokens.reauthorization_required
            && (tokens.authorized_by == Some(auth.delivery)
                || (auth.exact && tokens.authorized_at.is_some_and(|at| at >= auth.at)))
    }

    /// Whether `record` is newer than the one this run last read.
    fn is_newer(&self, record: &Versioned<OAuthTokens>) -> bool {
        self.s.current.as_ref().is_none_or(|c| record.version != c.version)
    }

    /// Whether the stored access token may be handed out if refreshing fails.
    fn old_still_valid(&self, now: Timestamp) -> bool {
        self.s.stale_ok && self.s.current.as_ref().is_some_and(|c| !c.value.is_expired(Duration::ZERO, now))
    }

    // ---- the end of a run ----

    fn finish(self, result: Result<Versioned<OAuthTokens>>, refreshed: bool, stale: Option<Error>) -> Plan {
        self.end(Outcome { result, refreshed, served_stale_after: stale, deferred_until: None })
    }

    /// Releases the lease, if one is held, and ends with `outcome`.
    fn end(self, outcome: Outcome) -> Plan {
        self.phase.end(outcome)
    }

    fn succeed(self, record: Versioned<OAuthTokens>) -> Plan {
        self.finish(Ok(record), false, None)
    }

    fn fail(self, error: Error) -> Plan {
        self.finish(Err(error), false, None)
    }

    /// A failure: the record is marked first when Webex rejected its refresh token, whatever
    /// happened after (a Service App's fallback fetch refused, or impossible without an
    /// authorized Integration): no process sends that refresh token again (rule 10; a spent
    /// token resent in a loop is what a replica killed mid-refresh otherwise leaves behind).
    /// Then the still-valid access token is served if there is one, else the error is returned.
    fn conclude(mut self, error: Error, now: Timestamp) -> Plan {
        let mark = self.s.dead.take_mark();
        if mark && let Some(current) = self.s.current.clone().filter(|c| !c.value.reauthorization_required) {
            let failure = self.reauthorization_required();
            let failure = failure.api_failure().cloned().unwrap_or_else(|| ApiFailure::new(400));
            let marked =
                current.value.clone().rejected_by(Rejection::new(failure.status, failure.tracking_id, now));
            let key = self.s.key.clone();
            let expect = Expect::Version(current.version);
            return Step::Storage(StorageCall::Store(
                key,
                marked.clone(),
                expect,
                Then::new(move |stored: StorageResult<u64>, now| match stored {
                    Ok(version) => {
                        tracing::warn!(key = %self.s.key, "Webex rejected the refresh token; marked re-authorization required");
                        self.s.current = Some(Versioned { value: marked, version });
                        self.conclude(error, now)
                    }
                    // Someone wrote the record meanwhile: if it still holds the rejected refresh
                    // token, it is marked on the new version (a few times); a newer token stands.
                    Err(e) if e.kind() == StorageErrorKind::Conflict && self.s.mark_attempts < 3 => {
                        self.s.mark_attempts += 1;
                        self.load(Self::remark_after_conflict)
                    }
                    Err(_) => self.conclude(error, now),
                }),
            ));
        }
        if self.old_still_valid(now)
            && let Some(current) = self.s.current.clone()
        {
            return self.finish(Ok(current), false, Some(error));
        }
        self.fail(error)
    }

    /// After a conflict on the mark: marks the record as it is now if it still holds the
    /// refresh token Webex rejected; a newer record stands.
    fn remark_after_conflict(mut self, loaded: Loaded, now: Timestamp) -> Plan {
        let error = self.reauthorization_required();
        match loaded {
            Ok(Some(record))
                if !record.value.reauthorization_required
                    && record
                        .value
                        .refresh_token
                        .as_ref()
                        .zip(self.s.used_refresh.as_ref())
                        .is_some_and(|(a, b)| a.ct_eq(b)) =>
            {
                self.s.current = Some(record);
                self.s.dead.mark_again();
                self.conclude(error, now)
            }
            Ok(record) => {
                if let Some(record) = record {
                    self.s.current = Some(record);
                }
                self.conclude(error, now)
            }
            Err(_) => self.conclude(error, now),
        }
    }

    /// Judges a stored record for a caller who wants a valid token: fresh is served; one that
    /// cannot be renewed without a person is served while it is usable. Hands the run back
    /// when the record needs refreshing.
    fn judge(self, record: Versioned<OAuthTokens>, now: Timestamp) -> Result<Plan, Self> {
        let freshness = self.freshness(&record.value, now);
        if freshness == Freshness::Fresh {
            return Ok(self.succeed(record));
        }
        if !self.renewable(&record.value) {
            return Ok(self.serve_unrenewable(record, freshness));
        }
        // A marked org whose fetch Webex refused a moment ago (a missed deauthorization): asking
        // again at every call would spend the shared budget on answers known in advance.
        if record.value.reauthorization_required && self.s.engine.fetch_paused(&self.s.key, now) {
            return Ok(self.serve_unrenewable(record, freshness));
        }
        Err(self)
    }

    /// A record that cannot be renewed (marked "re-authorization required", or an
    /// Integration's without a refresh token) is served while it is usable, and never refreshed.
    fn serve_unrenewable(self, record: Versioned<OAuthTokens>, freshness: Freshness) -> Plan {
        if freshness != Freshness::Expired && matches!(self.s.mode, Mode::GetValid) {
            return self.succeed(record);
        }
        let error = if record.value.reauthorization_required {
            self.reauthorization_required()
        } else {
            Error::NoRefreshToken { subject: self.s.key.subject() }
        };
        self.fail(error)
    }

    /// A caller whose token has expired (or is about to) is urgent: it may use the reserve
    /// that background refreshes leave.
    fn urgent(&self, now: Timestamp) -> bool {
        self.s.current.as_ref().is_none_or(|c| self.freshness(&c.value, now) == Freshness::Expired)
    }

    /// How long a stored pause counts at most (a longer `Retry-After` is not waited for).
    fn max_pause(&self) -> Duration {
        self.s.engine.config.retry.max_retry_after
    }

    // ---- storing ----

    /// Stores the tokens in hand under their condition. A conflict re-reads: the tokens in
    /// hand replace a record that is marked or still holds the refresh token they were bought
    /// with; anything else another writer stored stands, and so does a deletion.
    fn persist(mut self, in_hand: InHand, afterwards: fn(Self, Persisted, Timestamp) -> Plan) -> Plan {
        let (key, tokens, expect) =
            (self.s.key.clone(), in_hand.unsaved.tokens.clone(), in_hand.unsaved.expect);
        self.s.store_attempts += 1;
        Step::Storage(StorageCall::Store(
            key,
            tokens,
            expect,
            Then::new(move |stored, now| self.on_persisted(in_hand, stored, afterwards, now)),
        ))
    }

    fn on_persisted(
        self,
        in_hand: InHand,
        stored: StorageResult<u64>,
        afterwards: fn(Self, Persisted, Timestamp) -> Plan,
        now: Timestamp,
    ) -> Plan {
        let attempts_left = self.s.store_attempts < self.s.engine.config.retry.max_attempts.max(2);
        match stored {
            Ok(version) => {
                let tokens = in_hand.stored();
                afterwards(self, Persisted::Stored(Versioned { value: tokens, version }), now)
            }
            Err(e) if e.kind() == StorageErrorKind::Conflict && attempts_left => {
                let key = self.s.key.clone();
                Step::Storage(StorageCall::Load(
                    key,
                    Then::new(move |loaded, now| self.after_conflict(in_hand, loaded, afterwards, now)),
                ))
            }
            Err(e) if e.is_retryable() && attempts_left => {
                let d = self.s.engine.config.retry.base_delay.saturating_mul(self.s.store_attempts);
                Step::Sleep(d, Then::new(move |(), _| self.persist(in_hand, afterwards)))
            }
            // Dropped here, the tokens in hand go back to the cache: kept for the next run.
            Err(e) => self.fail(e.into()),
        }
    }

    fn after_conflict(
        self,
        mut in_hand: InHand,
        loaded: Loaded,
        afterwards: fn(Self, Persisted, Timestamp) -> Plan,
        now: Timestamp,
    ) -> Plan {
        let winner = match loaded {
            Ok(winner) => winner,
            Err(e) => return self.fail(e.into()),
        };
        if let Some(w) = &winner
            && in_hand.unsaved.supersede(&w.value)
        {
            in_hand.unsaved.expect = Expect::Version(w.version);
            return self.persist(in_hand, afterwards);
        }
        // The other writer's record (or its deletion) stands; ours are dropped on purpose.
        in_hand.give_up();
        afterwards(self, Persisted::Superseded(winner), now)
    }
}

impl Run<Unleased> {
    pub(crate) fn new(engine: Arc<Engine>, key: TokenKey, mode: Mode, random: u64) -> Self {
        let jitter_seed = engine.cache().jitter_seed(&key);
        let s = Box::new(State {
            engine,
            key,
            mode,
            jitter_seed,
            rng: random | 1,
            current: None,
            stale_ok: false,
            waited: Duration::ZERO,
            attempt: 0,
            used_refresh: None,
            fallback_used: false,
            dead: DeadToken::Unchecked,
            store_attempts: 0,
            budget_reads: 0,
            budget_waited: Duration::ZERO,
            unreadable: false,
            mark_attempts: 0,
        });
        Run { s, phase: Unleased }
    }

    /// The first step: release leases abandoned by earlier runs, store tokens an earlier run
    /// could not store, then read the record.
    pub(crate) fn start(self) -> Plan {
        let orphan = self.s.engine.orphans.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(lease) = orphan {
            let held = HeldLease { lease, orphans: self.s.engine.orphans.clone(), armed: true };
            return held.release(move || self.start());
        }
        if let Some(unsaved) = self.s.engine.cache().take_unsaved(&self.s.key) {
            let in_hand = InHand::new(self.s.engine.clone(), self.s.key.clone(), unsaved);
            return self.persist(in_hand, Self::after_earlier_stored);
        }
        self.load(Self::after_initial_load)
    }

    // ---- reading ----

    fn after_initial_load(mut self, loaded: Loaded, now: Timestamp) -> Plan {
        let record = match loaded {
            Ok(record) => record,
            Err(e) if self.replaces_unreadable(&e) => {
                self.s.unreadable = true;
                return self.acquire_lease();
            }
            Err(e) => return self.fail(e.into()),
        };
        match (&record, &self.s.mode) {
            (Some(rec), Mode::GetValid) => {
                let rec = rec.clone();
                self.s.current = Some(rec.clone());
                self.s.stale_ok = true;
                match self.judge(rec, now) {
                    Ok(plan) => return plan,
                    Err(run) => self = run,
                }
            }
            (None, Mode::GetValid) => {
                let error = self.nothing_stored();
                return self.fail(error);
            }
            (Some(rec), Mode::Fetch(_)) if self.satisfied_by(rec) => {
                let rec = rec.clone();
                return self.succeed(rec);
            }
            // Rule 11: a forced refresh of tokens obtained moments ago mints a token of Webex's
            // per-user cap for nothing; they are the answer.
            (Some(rec), Mode::Force(None))
                if self.s.engine.config.refresh.within_forced_floor(&rec.value, now) =>
            {
                crate::metrics::metrics().record_refresh_skipped(crate::metrics::SkipReason::ForcedFloor);
                tracing::debug!(key = %self.s.key, "forced refresh of tokens obtained moments ago: served as they are");
                let rec = rec.clone();
                return self.succeed(rec);
            }
            (None, Mode::Force(None)) if !self.is_service_app() => return self.fail(Error::NotAuthorized),
            // A Service App still fetches; the Integration has no way forward without a person.
            (Some(rec), Mode::Force(None)) if !self.is_service_app() && !self.renewable(&rec.value) => {
                let (rec, freshness) = (rec.clone(), Freshness::Expired);
                return self.serve_unrenewable(rec, freshness);
            }
            _ => {}
        }
        if self.s.current.is_none() {
            self.s.current = record;
        }
        self.acquire_lease()
    }

    /// An earlier run's tokens are stored (or a newer record stands): the run goes on as an
    /// ordinary one.
    fn after_earlier_stored(self, _: Persisted, _: Timestamp) -> Plan {
        self.load(Self::after_initial_load)
    }

    fn acquire_lease(self) -> Plan {
        let (key, ttl) = (self.s.key.clone(), self.s.engine.config.coordination.lease_ttl);
        Step::Storage(StorageCall::AcquireLease(
            key,
            ttl,
            Then::new(move |lease, now| self.on_lease(lease, now)),
        ))
    }

    fn on_lease(self, lease: StorageResult<Option<Lease>>, now: Timestamp) -> Plan {
        match lease {
            Ok(Some(lease)) => {
                let held = HeldLease { lease, orphans: self.s.engine.orphans.clone(), armed: true };
                Run { s: self.s, phase: Leased(held) }.load(Run::after_lease_load)
            }
            // Another process is refreshing; a still-valid token needs no waiting for.
            Ok(None) if self.old_still_valid(now) && !self.s.mode.explicit() => {
                match self.s.current.clone() {
                    Some(current) => self.succeed(current),
                    None => self.poll(),
                }
            }
            Ok(None) => self.poll(),
            Err(e) => self.conclude(e.into(), now),
        }
    }

    fn poll(mut self) -> Plan {
        let d = self.s.engine.config.coordination.poll_interval;
        self.s.waited += d;
        Step::Sleep(d, Then::new(move |(), _| self.load(Self::after_poll)))
    }

    /// Another process holds the lease: accept any record newer than the one seen that is
    /// not really expired, or compete again once the holder has had its whole lease. A caller
    /// that brought its own credential goes on with it once the lease is free.
    fn after_poll(mut self, loaded: Loaded, now: Timestamp) -> Plan {
        let ttl = self.s.engine.config.coordination.lease_ttl;
        match loaded {
            Ok(Some(rec)) if self.is_newer(&rec) && self.s.mode.explicit() => {
                self.s.current = Some(rec);
                self.s.waited = Duration::ZERO;
                self.acquire_lease()
            }
            Ok(Some(rec)) if self.is_newer(&rec) && !rec.value.is_expired(Duration::ZERO, now) => {
                if self.renewable(&rec.value) {
                    return self.succeed(rec);
                }
                let freshness = self.freshness(&rec.value, now);
                self.serve_unrenewable(rec, freshness)
            }
            Ok(None) if self.s.current.is_some() && !self.s.mode.explicit() => {
                let error = self.nothing_stored();
                self.fail(error)
            }
            Ok(_) | Err(_) if self.s.waited < ttl => self.poll(),
            // The holder has had the whole lease: it may have died. Compete again.
            Ok(_) => {
                self.s.waited = Duration::ZERO;
                self.acquire_lease()
            }
            Err(e) => self.conclude(e.into(), now),
        }
    }
}

impl Run<Leased> {
    /// Re-read under the lease: another process may have refreshed since the first read.
    fn after_lease_load(mut self, loaded: Loaded, now: Timestamp) -> Plan {
        let record = match loaded {
            Ok(record) => record,
            Err(e) if self.replaces_unreadable(&e) => {
                self.s.unreadable = true;
                self.s.current = None;
                return self.begin_token_call(now);
            }
            Err(e) => return self.conclude(e.into(), now),
        };
        match &record {
            Some(rec) if self.satisfied_by(rec) => {
                let rec = rec.clone();
                return self.succeed(rec);
            }
            Some(rec) if self.is_newer(rec) && !self.s.mode.explicit() => {
                let rec = rec.clone();
                match self.s.mode {
                    Mode::GetValid => {
                        self.s.current = Some(rec.clone());
                        match self.judge(rec, now) {
                            Ok(plan) => return plan,
                            Err(run) => self = run,
                        }
                    }
                    // A refresh "now" is answered by one that happened since the call.
                    _ if !rec.value.is_expired(Duration::ZERO, now) && self.renewable(&rec.value) => {
                        return self.succeed(rec);
                    }
                    _ => self.s.current = Some(rec),
                }
            }
            Some(rec) => self.s.current = Some(rec.clone()),
            None if self.s.current.is_some() && matches!(self.s.mode, Mode::GetValid) => {
                // Removed while we waited for the lease (deauthorized elsewhere).
                let error = self.nothing_stored();
                return self.fail(error);
            }
            None => self.s.current = None,
        }
        self.begin_token_call(now)
    }

    // ---- calling Webex ----

    fn begin_token_call(self, now: Timestamp) -> Plan {
        if matches!(self.s.mode, Mode::Fetch(_)) {
            return self.fetch_with_bearer();
        }
        let explicit = match &self.s.mode {
            Mode::Force(Some(token)) => Some(token.clone()),
            _ => None,
        };
        let stored = self
            .s
            .current
            .as_ref()
            .filter(|c| !c.value.reauthorization_required)
            .and_then(|c| c.value.refresh_token.clone());
        match (explicit.or(stored), &self.s.current) {
            (Some(token), _) => self.send_refresh(token),
            (None, _) if self.is_service_app() => self.fetch_with_bearer(),
            (None, Some(current)) => {
                let error = if current.value.reauthorization_required {
                    self.reauthorization_required()
                } else {
                    Error::NoRefreshToken { subject: self.s.key.subject() }
                };
                self.conclude(error, now)
            }
            (None, None) => self.fail(Error::NotAuthorized),
        }
    }

    fn send_refresh(mut self, token: RefreshToken) -> Plan {
        let request = {
            let (client_id, secret) = match &self.s.engine.client {
                Client::Integration(c) => (&c.client_id, &c.client_secret),
                Client::ServiceApp { credentials, .. } => {
                    (&credentials.client_id, &credentials.client_secret)
                }
            };
            refresh_request(&self.s.engine.config, client_id, secret, &token)
        };
        self.s.used_refresh = Some(token);
        self.s.attempt = 0;
        let kind = TokenCall::Refresh(self.s.key.subject());
        self.send(Call { kind, request })
    }

    fn fetch_with_bearer(mut self) -> Plan {
        if !self.is_service_app() {
            return self.fail(Error::NotAuthorized);
        }
        self.s.fallback_used = true;
        Step::IntegrationToken(Then::new(move |token, now| self.on_integration_token(token, now)))
    }

    fn on_integration_token(mut self, token: Result<AccessToken>, now: Timestamp) -> Plan {
        let bearer = match token {
            Ok(bearer) => bearer,
            // The org's refresh token was rejected and no fetch can stand in for it: the
            // rejection is the caller's answer (its remedy: re-register the org, or authorize
            // the Integration so byova fetches anew).
            Err(e) if self.s.dead.rejection().is_some() || self.current_marked() => {
                tracing::warn!(key = %self.s.key, error = %e, "the org's refresh token is dead and no Service App fetch can replace it");
                let error = self.reauthorization_required();
                return self.conclude(error, now);
            }
            Err(e) => return self.conclude(e, now),
        };
        let (Client::ServiceApp { credentials }, Some(org)) = (&self.s.engine.client, self.s.key.org_id())
        else {
            return self.fail(Error::NotAuthorized);
        };
        let request = service_app_token_request(&self.s.engine.config, credentials, org, &bearer);
        let kind = TokenCall::ServiceAppFetch { org_id: org.clone() };
        self.s.used_refresh = None;
        self.s.attempt = 0;
        self.send(Call { kind, request })
    }

    /// Checks the lease right before every token call: a holder that
    /// stalled past its lease must not spend a token its successor may have used.
    fn send(self, call: Call) -> Plan {
        let (lease, ttl) = (self.phase.0.lease.clone(), self.s.engine.config.coordination.lease_ttl);
        Step::Storage(StorageCall::ExtendLease(
            lease,
            ttl,
            Then::new(move |extended, now| self.on_lease_extended(call, extended, now)),
        ))
    }

    fn on_lease_extended(self, call: Call, extended: StorageResult<bool>, now: Timestamp) -> Plan {
        match extended {
            Ok(true) => self.send_now(call),
            // The lease expired and may be someone else's now: do not spend the token; wait for
            // the successor's result instead (or compete again once its lease has run out).
            Ok(false) => {
                let Run { mut s, phase: Leased(held) } = self;
                held.disarm();
                s.waited = Duration::ZERO;
                Run { s, phase: Unleased }.load(Run::after_poll)
            }
            Err(e) => self.conclude(e.into(), now),
        }
    }

    /// Asks the token budget every process sharing the store keeps (see [`crate::budget`])
    /// for one call, then sends.
    fn send_now(mut self, call: Call) -> Plan {
        if self.s.engine.config.token_budget.is_none() {
            return self.send_granted(call);
        }
        self.s.budget_reads += 1;
        Step::Storage(StorageCall::LoadState(
            TOKEN_BUDGET_STATE.to_owned(),
            Then::new(move |loaded, now| self.on_budget_loaded(call, loaded, now)),
        ))
    }

    fn on_budget_loaded(
        self,
        call: Call,
        loaded: StorageResult<Option<Versioned<Vec<u8>>>>,
        now: Timestamp,
    ) -> Plan {
        let Some(budget) = self.s.engine.config.token_budget.clone() else { return self.send_granted(call) };
        let (urgent, max_pause) = (self.urgent(now), self.max_pause());
        let (state, expect) = match loaded {
            Ok(Some(stored)) => (BudgetState::from_json(&stored.value), Expect::Version(stored.version)),
            Ok(None) => (None, Expect::Absent),
            Err(e) if e.kind() == StorageErrorKind::Unsupported => {
                return match take_local_budget(&budget, now, urgent, max_pause) {
                    BudgetDecision::Granted(_) => self.send_granted(call),
                    BudgetDecision::RetryAt(at) => self.over_budget(call, at, now),
                };
            }
            Err(e) => {
                // The store cannot say; Webex's own 429s still slow us down.
                tracing::warn!(error = %e, "the token budget could not be read; calling without it");
                return self.send_granted(call);
            }
        };
        match budget.take(state, now, urgent, max_pause) {
            BudgetDecision::Granted(next) => Step::Storage(StorageCall::StoreState(
                TOKEN_BUDGET_STATE.to_owned(),
                next.to_json(),
                expect,
                Then::new(move |stored: StorageResult<u64>, now| match stored {
                    Ok(_) => self.send_granted(call),
                    // Others are spending the budget right now: ask again after a short,
                    // jittered pause, and after a few losses wait as for an empty bucket.
                    Err(e) if e.kind() == StorageErrorKind::Conflict => self.after_budget_conflict(call, now),
                    Err(e) => {
                        tracing::warn!(error = %e, "the token budget could not be updated; calling without it");
                        self.send_granted(call)
                    }
                }),
            )),
            BudgetDecision::RetryAt(at) => self.over_budget(call, at, now),
        }
    }

    /// A versioned write of the budget lost to another process: back off (jittered, growing)
    /// and read it again; after [`MAX_BUDGET_READS`] losses, wait as for an empty bucket.
    fn after_budget_conflict(mut self, call: Call, now: Timestamp) -> Plan {
        if self.s.budget_reads >= MAX_BUDGET_READS {
            let jitter = Duration::from_millis(u64::from(self.random() % 50) + 1);
            return self.over_budget(call, now.saturating_add(jitter), now);
        }
        let ceiling = 1u64 << self.s.budget_reads.min(7);
        let d = Duration::from_millis(u64::from(self.random()) % ceiling + 1);
        Step::Sleep(d, Then::new(move |(), _| self.send_now(call)))
    }

    /// No room in the budget before `at`: a caller who only wants a valid token and has one
    /// that is really valid is served it (and the key is not tried again before `at`); anyone
    /// else waits (a slice at a time, extending the lease in between) and asks again, for at
    /// most the longest `Retry-After` the retry policy honours; then the still-valid token is
    /// served if there is one, else the caller is told to come back later.
    fn over_budget(mut self, call: Call, at: Timestamp, now: Timestamp) -> Plan {
        crate::metrics::metrics().record_budget_wait();
        if matches!(self.s.mode, Mode::GetValid)
            && self.old_still_valid(now)
            && let Some(current) = self.s.current.clone()
        {
            tracing::debug!(key = %self.s.key, "token budget spent; serving the still-valid access token");
            return self.end(Outcome {
                result: Ok(current),
                refreshed: false,
                served_stale_after: None,
                deferred_until: Some(at),
            });
        }
        let wait = at.saturating_duration_since(now).max(Duration::from_millis(1));
        if self.s.budget_waited.saturating_add(wait) > self.max_pause() {
            let error = Error::RateLimited { failure: ApiFailure::new(429), retry_after: Some(wait) };
            return self.conclude(error, now);
        }
        let slice = wait.min((self.s.engine.config.coordination.lease_ttl / 3).max(Duration::from_millis(1)));
        self.s.budget_waited += slice;
        tracing::debug!(key = %self.s.key, ?slice, "token budget spent; waiting");
        self.s.budget_reads = 0;
        Step::Sleep(slice, Then::new(move |(), _| self.send(call)))
    }

    fn send_granted(mut self, call: Call) -> Plan {
        self.s.attempt += 1;
        Step::Send(call.request.clone(), Then::new(move |sent, now| self.on_response(call, sent, now)))
    }

    fn on_response(self, call: Call, sent: Sent, now: Timestamp) -> Plan {
        crate::metrics::metrics().record_call(&call.request, sent.response.as_ref().ok().map(|r| r.status));
        let parsed = sent.response.and_then(|r| parse_token_response(&r, sent.sent_at, &call.kind));
        let tokens = match parsed {
            Ok(tokens) => tokens,
            Err(error) => return self.after_failed_call(call, error, now),
        };
        // A response without a refresh token keeps the one that was sent (with the stored
        // record's expiry for it, when that is the one sent).
        let tokens = match (&self.s.used_refresh, &self.s.current) {
            (Some(used), Some(old))
                if tokens.refresh_token.is_none()
                    && old.value.refresh_token.as_ref().is_some_and(|r| r.ct_eq(used)) =>
            {
                tokens.inherit_refresh_token(&old.value)
            }
            (Some(used), _) if tokens.refresh_token.is_none() => {
                tokens.with_refresh_token(used.clone(), None)
            }
            _ => tokens,
        };
        let authorized_by = match (&call.kind, &self.s.mode) {
            (TokenCall::Refresh(_), _) => self.s.current.as_ref().and_then(|c| c.value.authorized_by),
            (_, Mode::Fetch(Some(auth))) => Some(auth.delivery),
            _ => None,
        };
        // Tokens bought because Webex rejected the access token before them (a 401, see
        // `TokenEngine::invalidate`) count how many such renewals came in a row.
        let renewals = match (&self.s.mode, &self.s.current) {
            (Mode::GetValid | Mode::Force(None), Some(c)) if c.value.expires_in == 0 => {
                c.value.renewals.saturating_add(1)
            }
            _ => 0,
        };
        let tokens = OAuthTokens {
            authorized_at: self.authorized_at(&call.kind, now),
            authorized_by,
            renewals,
            ..tokens
        };
        let expect = match &self.s.current {
            Some(c) => Expect::Version(c.version),
            // Over a record nobody can read: written whatever is there (the store keeps the
            // unreadable one aside where it can: see `Expect::Any`).
            None if self.s.unreadable => Expect::Any,
            None => Expect::Absent,
        };
        if self.s.unreadable {
            tracing::warn!(key = %self.s.key, "the stored record could not be read; replaced by the tokens just fetched");
        }
        let unsaved = Unsaved::new(tokens, expect, self.s.used_refresh.clone());
        let in_hand = InHand::new(self.s.engine.clone(), self.s.key.clone(), unsaved);
        self.persist(in_hand, Self::after_fresh_stored)
    }

    /// Tokens fresh from Webex are stored: the run ends with them. When another writer's record
    /// stood instead, it is the answer while it is valid.
    fn after_fresh_stored(self, persisted: Persisted, now: Timestamp) -> Plan {
        match persisted {
            Persisted::Stored(record) => self.finish(Ok(record), true, None),
            Persisted::Superseded(Some(w)) if !w.value.is_expired(Duration::ZERO, now) => self.succeed(w),
            Persisted::Superseded(_) => {
                let key = self.s.key.clone();
                self.fail(Error::Storage(crate::error::StorageError::conflict(key)))
            }
        }
    }

    /// The authorization new tokens belong to: a refresh keeps the record's; a fetch for an
    /// event is that event's (its own time when the delivery gave one, else its arrival), never
    /// older than the record's (a replayed old `authorized` does not make the record look
    /// older); any other fetch or registration is one as of now. An event's time, not the
    /// fetch's: a `deauthorized` that arrives while the fetch runs is newer and removes it.
    fn authorized_at(&self, call: &TokenCall, now: Timestamp) -> Option<Timestamp> {
        let kept = self.s.current.as_ref().and_then(|c| c.value.authorized_at);
        match (call, &self.s.mode) {
            (TokenCall::Refresh(_), Mode::Force(Some(_))) if self.is_service_app() => Some(now),
            (TokenCall::Refresh(_), _) => kept,
            (_, Mode::Fetch(Some(auth))) => Some(kept.map_or(auth.at, |k| k.max(auth.at))),
            _ => Some(now),
        }
    }

    /// A 429 with `Retry-After` pauses every process sharing the store (the pause is stored
    /// with the budget, for at most the longest `Retry-After` the retry policy honours), then
    /// the failure is handled as any other.
    fn after_failed_call(mut self, call: Call, error: Error, now: Timestamp) -> Plan {
        let pause = match (&error, error.retry_after(), &self.s.engine.config.token_budget) {
            (Error::RateLimited { .. }, Some(after), Some(_)) => {
                now.saturating_add(after.min(self.max_pause()))
            }
            _ => return self.retry_or_conclude(call, error, now),
        };
        self.s.budget_reads = 0;
        self.store_pause(call, pause, error)
    }

    fn store_pause(mut self, call: Call, until: Timestamp, error: Error) -> Plan {
        self.s.budget_reads += 1;
        Step::Storage(StorageCall::LoadState(
            TOKEN_BUDGET_STATE.to_owned(),
            Then::new(move |loaded: StorageResult<Option<Versioned<Vec<u8>>>>, now| {
                let Some(budget) = self.s.engine.config.token_budget.clone() else {
                    return self.retry_or_conclude(call, error, now);
                };
                let (state, expect) = match loaded {
                    Ok(Some(stored)) => {
                        (BudgetState::from_json(&stored.value), Expect::Version(stored.version))
                    }
                    Ok(None) => (None, Expect::Absent),
                    Err(e) if e.kind() == StorageErrorKind::Unsupported => {
                        pause_local_budget(&budget, now, until);
                        return self.retry_or_conclude(call, error, now);
                    }
                    Err(_) => return self.retry_or_conclude(call, error, now),
                };
                let paused = budget.pause(state, now, until);
                Step::Storage(StorageCall::StoreState(
                    TOKEN_BUDGET_STATE.to_owned(),
                    paused.to_json(),
                    expect,
                    Then::new(move |stored: StorageResult<u64>, now| match stored {
                        Err(e)
                            if e.kind() == StorageErrorKind::Conflict
                                && self.s.budget_reads < MAX_BUDGET_READS =>
                        {
                            let d = Duration::from_millis(u64::from(self.random() % 20) + 1);
                            Step::Sleep(d, Then::new(move |(), _| self.store_pause(call, until, error)))
                        }
                        stored => {
                            if stored.is_ok() {
                                tracing::warn!(until = %until.to_rfc3339(), "Webex answered 429: token calls paused in every process sharing the store");
                            }
                            self.retry_or_conclude(call, error, now)
                        }
                    }),
                ))
            }),
        ))
    }

    fn retry_or_conclude(mut self, call: Call, error: Error, now: Timestamp) -> Plan {
        let class = call.request.retry;
        let random = self.random();
        if let RetryDecision::RetryAfter(d) =
            self.s.engine.config.retry.decide(class, self.s.attempt, &error, random)
        {
            return Step::Sleep(d, Then::new(move |(), _| self.send(call)));
        }
        if matches!(call.kind, TokenCall::ServiceAppFetch { .. }) {
            // Refused by Webex (403, 404, 401, 400), not merely unavailable.
            let refused = error.api_failure().is_some() && !error.is_retryable();
            if refused {
                self.s.engine.pause_fetches(&self.s.key, now);
            }
        }
        let rejected = matches!(error, Error::ReauthorizationRequired { .. });
        if rejected && matches!(self.s.mode, Mode::Force(Some(_))) {
            // The caller's own refresh token was refused; the stored record is not at fault.
            return self.fail(error);
        }
        if rejected
            && matches!(call.kind, TokenCall::Refresh(_))
            && matches!(self.s.dead, DeadToken::Unchecked)
        {
            // Another process may have rotated the token we sent; look before giving up.
            self.s.dead = DeadToken::Rejected { error, mark: false };
            return self.load(Self::after_invalid_grant_load);
        }
        self.conclude(error, now)
    }

    fn after_invalid_grant_load(mut self, loaded: Loaded, now: Timestamp) -> Plan {
        let rec = match loaded {
            Ok(Some(rec)) => rec,
            Ok(None) => {
                let error = self.nothing_stored();
                return self.fail(error);
            }
            Err(e) => {
                // The refresh token was refused but the record cannot be read to mark it.
                self.s.dead = DeadToken::Explained;
                return self.fail(e.into());
            }
        };
        let rotated_elsewhere = match (&rec.value.refresh_token, &self.s.used_refresh) {
            (Some(stored), Some(used)) => !stored.ct_eq(used),
            _ => false,
        };
        if rotated_elsewhere {
            self.s.current = Some(rec.clone());
            // Another process rotated it: the rejection is explained (and not re-read again).
            self.s.dead = DeadToken::Explained;
            if rec.value.reauthorization_required {
                let error = self.reauthorization_required();
                return self.conclude(error, now);
            }
            if self.freshness(&rec.value, now) != Freshness::Expired {
                return self.succeed(rec);
            }
            if let Some(token) = rec.value.refresh_token.clone() {
                return self.send_refresh(token);
            }
        }
        self.s.current = Some(rec);
        self.s.dead.mark_again();
        self.give_up_on_refresh_token(now)
    }

    /// The stored refresh token is dead. A Service App fetches new tokens with the
    /// Integration's bearer once, as the Python SDK does; otherwise the record is marked and
    /// re-authorization is required.
    fn give_up_on_refresh_token(self, now: Timestamp) -> Plan {
        if self.is_service_app() && !self.s.fallback_used {
            return self.fetch_with_bearer();
        }
        let error = self.reauthorization_required();
        self.conclude(error, now)
    }
}

#[cfg(test)]
#[path = "refresh_tests.rs"]
mod tests;
