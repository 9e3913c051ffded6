//! One org's data sources (`/v1/dataSources`), with its Service App token: listing, `ensure`
//! (reads Webex's list, then registers, updates, extends or leaves the data source as
//! [`datasource::plan`](crate::datasource::plan) decides), `keep` (the same, but trusting the
//! shared record while it is fresh: what a daemon runs at every extension point) and removal.
//!
//! Every process sharing the store coordinates through the org's
//! [`DataSourceRecord`]: a versioned write claims the data source before anything is sent,
//! so when two replicas wake for the same extension, one extends and the other finds the claim
//! and then the new expiry. Each call an `ensure` or a `keep` makes to `/v1/dataSources` is
//! tried once (the caller, or the daemon's keeper, tries again later) and takes one from the
//! data-source budget ([`ByovaConfig::data_source_budget`](crate::ByovaConfig::data_source_budget),
//! shared through the store like the token budget); a 429 pauses it for every process.

use std::sync::Arc;
use std::time::Duration;

use crate::budget::{BudgetDecision, BudgetState, LocalBudget, pause_local, take_local};
use crate::datasource::{
    BUSY_RECHECK, DATA_SOURCE_BUDGET_STATE, DataSource, DataSourceAction, DataSourceOutcome, DataSourcePlan,
    DataSourceRecord, DataSourceSpec, RecordDecision, claim_ttl, delete_request, list_request, new_nonce,
    parse_deletion, parse_list, parse_one, plan, record_name, register_request, update_request,
};
use crate::engine::step::{Step, StorageCall, StorageResult, Then, done};
use crate::engine::{ServiceAppEngine, send_with_policy};
use crate::error::{Error, StorageErrorKind};
use crate::key::{Expect, OrgId, Versioned};
use crate::policy::Invalidation;
use crate::secret::{AccessToken, random_u64};
use crate::time::Timestamp;

/// The data-source budget's state for stores that keep no shared state.
static LOCAL_BUDGET: LocalBudget = std::sync::Mutex::new(None);

/// The longest a stored 429 pause holds data-source calls back.
const MAX_PAUSE: Duration = Duration::from_secs(300);

/// The longest one attempt waits for room in the budget before it reports
/// [`DataSourceAction::Deferred`] and releases its claim.
const MAX_BUDGET_WAIT: Duration = Duration::from_secs(5);

/// Versioned writes that may lose to other processes before an attempt gives way.
const MAX_CONFLICTS: u32 = 4;

impl ServiceAppEngine {
    /// `org`'s data sources (an operator's look, outside the data-source budget).
    pub fn list_data_sources(self: &Arc<Self>, org: &OrgId, now: Timestamp) -> Step<Vec<DataSource>> {
        let engine = self.clone();
        self.access_token(org, now).then(now, move |token, _| match token {
            Ok(token) => {
                let request = list_request(engine.config(), &token);
                send_with_policy(engine.config().retry.clone(), request, |r, _| parse_list(r))
            }
            Err(e) => done(Err(e)),
        })
    }

    /// Makes sure `org` has a data source for `spec` whose token is not due: reads Webex's
    /// list, then registers one, updates one that drifted, extends one that is due (each with
    /// a fresh nonce), or leaves it. Coordinated with every process sharing the store: when
    /// another is at it right now the outcome is [`DataSourceAction::Busy`].
    pub fn ensure_data_source(
        self: &Arc<Self>,
        org: &OrgId,
        spec: DataSourceSpec,
        now: Timestamp,
    ) -> Step<DataSourceOutcome> {
        Tend::new(self.clone(), org.clone(), spec, true).start(now)
    }

    /// What a daemon runs at each of `org`'s extension points: like
    /// [`ensure_data_source`](Self::ensure_data_source), but while the shared record is fresh
    /// (checked against Webex within [`RECONCILE_EVERY`](crate::datasource::RECONCILE_EVERY),
    /// its answer not lost) it is trusted: nothing is sent before the extension point, and
    /// then only the extension. Its `next_check` says when to call again.
    pub fn keep_data_source(
        self: &Arc<Self>,
        org: &OrgId,
        spec: DataSourceSpec,
        now: Timestamp,
    ) -> Step<DataSourceOutcome> {
        Tend::new(self.clone(), org.clone(), spec, false).start(now)
    }

    /// Removes `org`'s data source for `spec` from Webex (the one its shared record names, else
    /// the one listed for the URL and schema) and resets its shared record; `Some(id)` when one
    /// was removed. Removals are rare (one per deauthorization) and take nothing from the
    /// budget. An org still registered gets a data source again from whatever keeps them (a
    /// `byova serve --data-source-url`).
    pub fn remove_data_source(
        self: &Arc<Self>,
        org: &OrgId,
        spec: DataSourceSpec,
        now: Timestamp,
    ) -> Step<Option<String>> {
        let engine = self.clone();
        let org = org.clone();
        self.access_token(&org, now).then(now, move |token, now| match token {
            Ok(token) => engine.remove_with(org, spec, token, engine.config().retry.clone(), now),
            Err(e) => done(Err(e)),
        })
    }

    /// [`remove_data_source`](Self::remove_data_source) with `token` (the org's last access
    /// token, when its tokens are gone already), each call under `retry`.
    pub(crate) fn remove_with(
        self: &Arc<Self>,
        org: OrgId,
        spec: DataSourceSpec,
        token: AccessToken,
        retry: crate::policy::RetryPolicy,
        _now: Timestamp,
    ) -> Step<Option<String>> {
        let engine = self.clone();
        Step::Storage(StorageCall::LoadState(
            record_name(&org, &spec),
            Then::new(move |loaded: StorageResult<Option<Versioned<Vec<u8>>>>, now| {
                let known = loaded
                    .ok()
                    .flatten()
                    .and_then(|stored| DataSourceRecord::from_json(&stored.value))
                    .and_then(|record| record.data_source)
                    .filter(|d| d.is_for(&spec));
                let removal = Removal { engine, org, spec, token, retry };
                match known {
                    Some(known) => removal.delete(known.id, true, now),
                    None => removal.find_then_delete(now),
                }
            }),
        ))
    }
}

/// One removal of an org's data source.
struct Removal {
    engine: Arc<ServiceAppEngine>,
    org: OrgId,
    spec: DataSourceSpec,
    token: AccessToken,
    retry: crate::policy::RetryPolicy,
}

impl Removal {
    fn find_then_delete(self, now: Timestamp) -> Step<Option<String>> {
        let list = list_request(self.engine.config(), &self.token);
        send_with_policy(self.retry.clone(), list, |r, _| parse_list(r)).then(now, move |listed, now| {
            match listed.map(|listed| listed.into_iter().find(|d| d.is_for(&self.spec))) {
                Ok(Some(found)) => self.delete(found.id, false, now),
                Ok(None) => forget_record(&self.org, &self.spec, None),
                Err(e) => done(Err(e)),
            }
        })
    }

    /// Deletes `id` (`recorded`: the id came from the shared record, which may be out of
    /// date: a 404 then looks the data source up in the list).
    fn delete(self, id: String, recorded: bool, now: Timestamp) -> Step<Option<String>> {
        let request = delete_request(self.engine.config(), &self.token, &id);
        send_with_policy(self.retry.clone(), request, |r, _| parse_deletion(r)).then(
            now,
            move |deleted, now| match deleted {
                Ok(true) => forget_record(&self.org, &self.spec, Some(id)),
                Ok(false) if recorded => self.find_then_delete(now),
                Ok(false) => forget_record(&self.org, &self.spec, None),
                Err(e) => done(Err(e)),
            },
        )
    }
}

/// Resets the org's record (a store without shared state has none), then answers `removed`.
fn forget_record(org: &OrgId, spec: &DataSourceSpec, removed: Option<String>) -> Step<Option<String>> {
    Step::Storage(StorageCall::StoreState(
        record_name(org, spec),
        DataSourceRecord::default().to_json(),
        Expect::Any,
        Then::new(move |stored: StorageResult<u64>, _| match stored {
            Ok(_) => done(Ok(removed)),
            Err(e) if e.kind() == StorageErrorKind::Unsupported => done(Ok(removed)),
            Err(e) => done(Err(e.into())),
        }),
    ))
}

/// The data-source budget, asked for one call at a time.
struct Budget {
    engine: Arc<ServiceAppEngine>,
    /// Whether the store keeps shared state (else this process's own budget is used).
    shared: bool,
    /// Reads that lost a versioned write to another process.
    conflicts: u32,
    /// How long this attempt has waited for room.
    waited: Duration,
}

type Granted = std::result::Result<(), Timestamp>;

impl Budget {
    fn new(engine: Arc<ServiceAppEngine>, shared: bool) -> Self {
        Self { engine, shared, conflicts: 0, waited: Duration::ZERO }
    }

    /// One call from the budget, then `next` (with `Err(at)`: no room before `at`, after
    /// waiting up to [`MAX_BUDGET_WAIT`]). `urgent`: the token is about to lapse (the
    /// background reserve is used too).
    fn then<T: Send + 'static>(
        self,
        now: Timestamp,
        urgent: bool,
        next: impl FnOnce(Granted, Timestamp) -> Step<T> + Send + 'static,
    ) -> Step<T> {
        let Some(budget) = self.engine.config().data_source_budget.clone() else { return next(Ok(()), now) };
        if !self.shared {
            return match take_local(&LOCAL_BUDGET, &budget, now, urgent, MAX_PAUSE) {
                BudgetDecision::Granted(_) => next(Ok(()), now),
                BudgetDecision::RetryAt(at) => self.wait(at, now, urgent, next),
            };
        }
        Step::Storage(StorageCall::LoadState(
            DATA_SOURCE_BUDGET_STATE.to_owned(),
            Then::new(move |loaded: StorageResult<Option<Versioned<Vec<u8>>>>, now| {
                let (state, expect) = match loaded {
                    Ok(Some(stored)) => {
                        (BudgetState::from_json(&stored.value), Expect::Version(stored.version))
                    }
                    Ok(None) => (None, Expect::Absent),
                    Err(e) if e.kind() == StorageErrorKind::Unsupported => {
                        return Budget { shared: false, ..self }.then(now, urgent, next);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the data-source budget could not be read; calling without it");
                        return next(Ok(()), now);
                    }
                };
                match budget.take(state, now, urgent, MAX_PAUSE) {
                    BudgetDecision::Granted(taken) => Step::Storage(StorageCall::StoreState(
                        DATA_SOURCE_BUDGET_STATE.to_owned(),
                        taken.to_json(),
                        expect,
                        Then::new(move |stored: StorageResult<u64>, now| match stored {
                            Ok(_) => next(Ok(()), now),
                            // Others are spending it right now: read it again after a short,
                            // growing, jittered pause, counted as waiting.
                            Err(e) if e.kind() == StorageErrorKind::Conflict => {
                                let mut again = self;
                                again.conflicts += 1;
                                let ceiling = 1u64 << again.conflicts.min(7);
                                let pause = Duration::from_millis(random_u64() % ceiling + 1);
                                if again.waited.saturating_add(pause) > MAX_BUDGET_WAIT {
                                    return next(Err(now.saturating_add(pause)), now);
                                }
                                again.waited += pause;
                                Step::Sleep(pause, Then::new(move |(), now| again.then(now, urgent, next)))
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "the data-source budget could not be updated; calling without it");
                                next(Ok(()), now)
                            }
                        }),
                    )),
                    BudgetDecision::RetryAt(at) => self.wait(at, now, urgent, next),
                }
            }),
        ))
    }

    /// No room before `at`: waits for it when that is soon enough, else says when.
    fn wait<T: Send + 'static>(
        mut self,
        at: Timestamp,
        now: Timestamp,
        urgent: bool,
        next: impl FnOnce(Granted, Timestamp) -> Step<T> + Send + 'static,
    ) -> Step<T> {
        crate::metrics::metrics().record_budget_wait();
        let wait = at.saturating_duration_since(now).max(Duration::from_millis(1));
        if self.waited.saturating_add(wait) > MAX_BUDGET_WAIT {
            return next(Err(at), now);
        }
        self.waited += wait;
        Step::Sleep(wait, Then::new(move |(), now| self.then(now, urgent, next)))
    }

    /// Every process's data-source calls paused until `until` (Webex answered 429).
    fn pause<T: Send + 'static>(
        self,
        until: Timestamp,
        now: Timestamp,
        next: impl FnOnce(Timestamp) -> Step<T> + Send + 'static,
    ) -> Step<T> {
        let Some(budget) = self.engine.config().data_source_budget.clone() else { return next(now) };
        if !self.shared {
            pause_local(&LOCAL_BUDGET, &budget, now, until);
            return next(now);
        }
        Step::Storage(StorageCall::LoadState(
            DATA_SOURCE_BUDGET_STATE.to_owned(),
            Then::new(move |loaded: StorageResult<Option<Versioned<Vec<u8>>>>, now| {
                let (state, expect) = match loaded {
                    Ok(Some(stored)) => {
                        (BudgetState::from_json(&stored.value), Expect::Version(stored.version))
                    }
                    Ok(None) => (None, Expect::Absent),
                    Err(_) => {
                        pause_local(&LOCAL_BUDGET, &budget, now, until);
                        return next(now);
                    }
                };
                // One try: a writer that beat it read the same 429 or spent the budget.
                Step::Storage(StorageCall::StoreState(
                    DATA_SOURCE_BUDGET_STATE.to_owned(),
                    budget.pause(state, now, until).to_json(),
                    expect,
                    Then::new(move |_: StorageResult<u64>, now| next(now)),
                ))
            }),
        ))
    }
}

type Plan = Step<DataSourceOutcome>;

/// One `ensure` or `keep` of an org's data source.
struct Tend {
    engine: Arc<ServiceAppEngine>,
    org: OrgId,
    spec: DataSourceSpec,
    /// The record's shared state name.
    name: String,
    /// Read Webex's list whatever the record says.
    reconcile: bool,
    /// The record as last read or written.
    record: DataSourceRecord,
    /// Its version (`None`: not stored).
    version: Option<u64>,
    /// Whether the store keeps shared state (else nothing is claimed or recorded).
    coordinated: bool,
    /// Versioned writes lost to other processes.
    conflicts: u32,
    /// The list was read again after a 409 or a 404 (once per attempt).
    relisted: bool,
    /// The org's token was renewed after a 401 (once per attempt).
    renewed: bool,
    /// Webex's list shows the token due (or of unknown expiry): extending it goes first in
    /// the budget.
    due: bool,
}

/// What an attempt was doing when it failed.
enum Phase {
    /// Getting the org's token or reading the list: nothing was sent that changes anything.
    Reading,
    /// Sending a register or an update.
    Sending,
}

impl Tend {
    fn new(engine: Arc<ServiceAppEngine>, org: OrgId, spec: DataSourceSpec, reconcile: bool) -> Self {
        let name = record_name(&org, &spec);
        Self {
            engine,
            org,
            spec,
            name,
            reconcile,
            record: DataSourceRecord::default(),
            version: None,
            coordinated: true,
            conflicts: 0,
            relisted: false,
            renewed: false,
            due: false,
        }
    }

    fn start(self, _now: Timestamp) -> Plan {
        Step::Storage(StorageCall::LoadState(
            self.name.clone(),
            Then::new(move |loaded, now| self.on_loaded(loaded, now)),
        ))
    }

    fn on_loaded(mut self, loaded: StorageResult<Option<Versioned<Vec<u8>>>>, now: Timestamp) -> Plan {
        match loaded {
            Ok(Some(stored)) => {
                self.record = DataSourceRecord::from_json(&stored.value).unwrap_or_else(|| {
                    tracing::warn!(org = %self.org, "the data source's shared record is unreadable; starting afresh");
                    DataSourceRecord::default()
                });
                self.version = Some(stored.version);
            }
            Ok(None) => (self.record, self.version) = (DataSourceRecord::default(), None),
            Err(e) if e.kind() == StorageErrorKind::Unsupported => {
                // Nothing to coordinate through: read the list and act, as one process.
                self.coordinated = false;
                return self.with_token(now, true);
            }
            Err(e) => return done(Err(e.into())),
        }
        match self.record.next(&self.spec, now, self.reconcile) {
            RecordDecision::Busy(until) => {
                let next_check = until.min(now.saturating_add(BUSY_RECHECK));
                self.outcome(DataSourceAction::Busy, next_check)
            }
            RecordDecision::Keep(at) => self.outcome(DataSourceAction::Kept, at),
            RecordDecision::Claim { list } => self.claim(list, now),
        }
    }

    /// Reports `action` with the record as it stands.
    fn outcome(&self, action: DataSourceAction, next_check: Timestamp) -> Plan {
        done(Ok(DataSourceOutcome {
            action,
            data_source: self.record.data_source.clone(),
            expires_at: self.record.expires_at(),
            next_check,
        }))
    }

    fn expect(&self) -> Expect {
        self.version.map_or(Expect::Absent, Expect::Version)
    }

    /// Writes `record` over the one this attempt holds (its version), then continues with
    /// this attempt holding it; a write another process won first goes to `on_conflict`.
    fn write(
        self,
        record: DataSourceRecord,
        now: Timestamp,
        then: impl FnOnce(Self, Timestamp) -> Plan + Send + 'static,
        on_conflict: impl FnOnce(Self, Timestamp) -> Plan + Send + 'static,
    ) -> Plan {
        if !self.coordinated {
            let mut tend = self;
            tend.record = record;
            return then(tend, now);
        }
        Step::Storage(StorageCall::StoreState(
            self.name.clone(),
            record.to_json(),
            self.expect(),
            Then::new(move |stored: StorageResult<u64>, now| match stored {
                Ok(version) => {
                    let mut tend = self;
                    (tend.record, tend.version) = (record, Some(version));
                    then(tend, now)
                }
                Err(e) if e.kind() == StorageErrorKind::Conflict => on_conflict(self, now),
                Err(e) => done(Err(e.into())),
            }),
        ))
    }

    /// Claims the record, then acts; a lost write reads it again.
    fn claim(self, list: bool, now: Timestamp) -> Plan {
        let claimed = self.record.clone().claimed(now.saturating_add(claim_ttl(&self.spec)));
        self.write(claimed, now, move |tend, now| tend.with_token(now, list), Self::lost_write)
    }

    /// Another process wrote the record first: read it again (it is probably at it now).
    fn lost_write(mut self, now: Timestamp) -> Plan {
        self.conflicts += 1;
        if self.conflicts >= MAX_CONFLICTS {
            return self.outcome(DataSourceAction::Busy, now.saturating_add(BUSY_RECHECK));
        }
        self.start(now)
    }

    /// Whether this attempt keeps a token alive that is due or lapsed: it may use the budget's
    /// reserve, which registrations and checks leave, so a fleet registering hundreds of orgs
    /// at once never starves the extensions already due.
    fn urgent(&self, now: Timestamp) -> bool {
        self.due || self.record.due(&self.spec, now)
    }

    /// The org's access token, then the list (when `list`) or the extension.
    fn with_token(self, now: Timestamp, list: bool) -> Plan {
        self.engine.clone().access_token(&self.org, now).then(now, move |token, now| match token {
            Err(e) => self.fail(e, Phase::Reading, now),
            Ok(token) => {
                let known = self.record.data_source.as_ref().map(|d| d.id.clone());
                match known {
                    Some(id) if !list => self.send(token, DataSourcePlan::Extend { id }, false, now),
                    _ => self.list(token, now),
                }
            }
        })
    }

    /// The retry policy of data-source calls: one try each (every try takes one from the
    /// budget, and stays within the claim); the caller tries again later. A 429 pauses the
    /// shared budget and the attempt reports `Deferred`.
    fn retry(&self) -> crate::policy::RetryPolicy {
        let mut retry = self.engine.config().retry.clone();
        retry.max_attempts = 1;
        retry.max_retry_after = Duration::ZERO;
        retry
    }

    /// One call from the budget, then `then`; no room soon enough releases the claim and
    /// reports `Deferred`.
    fn budgeted(self, now: Timestamp, then: impl FnOnce(Self, Timestamp) -> Plan + Send + 'static) -> Plan {
        let budget = Budget::new(self.engine.clone(), self.coordinated);
        let urgent = self.urgent(now);
        budget.then(now, urgent, move |granted, now| match granted {
            Ok(()) => then(self, now),
            Err(at) => self.deferred(at, now),
        })
    }

    /// Reads the org's data sources, then acts as [`plan`] decides.
    fn list(self, token: AccessToken, now: Timestamp) -> Plan {
        self.budgeted(now, move |tend, now| {
            let request = list_request(tend.engine.config(), &token);
            send_with_policy(tend.retry(), request, |r, sent_at| parse_list(r).map(|l| (l, sent_at))).then(
                now,
                move |listed, now| match listed {
                    Err(e) => tend.fail_call(e, token, false, now),
                    Ok((mut existing, listed_at)) => {
                        tend.record.fill_in_expiry(&mut existing);
                        match plan(&existing, &tend.spec, now) {
                            DataSourcePlan::Keep { id, .. } => {
                                let Some(found) = existing.into_iter().find(|d| d.id == id) else {
                                    return done(Err(Error::Internal(
                                        "the planned data source left the list".into(),
                                    )));
                                };
                                let record =
                                    tend.record.clone().answered(found, &tend.spec, listed_at, false, true);
                                tend.save(record, DataSourceAction::Kept, now)
                            }
                            action => {
                                let mut tend = tend;
                                tend.due |= matches!(action, DataSourcePlan::Extend { .. });
                                tend.send(token, action, true, now)
                            }
                        }
                    }
                },
            )
        })
    }

    /// Registers, updates or extends as `action` says (`listed`: the list was just read):
    /// takes one from the budget, marks the record as sending (renewing the claim), checks
    /// before a register that the org is still registered, then sends.
    fn send(self, token: AccessToken, action: DataSourcePlan, listed: bool, now: Timestamp) -> Plan {
        if let DataSourcePlan::Keep { .. } = action {
            return done(Err(Error::Internal("a kept data source is not sent".into())));
        }
        self.budgeted(now, move |tend, now| {
            let marked = tend.record.clone().sending(now.saturating_add(claim_ttl(&tend.spec)));
            tend.write(
                marked,
                now,
                move |tend, now| {
                    if action != DataSourcePlan::Register {
                        return tend.transmit(token, action, listed, now);
                    }
                    // A deauthorization may have removed the org meanwhile: no data source is
                    // registered for an org whose tokens are gone.
                    let key = crate::key::TokenKey::org(&tend.org);
                    Step::Storage(StorageCall::Load(
                        key,
                        Then::new(
                            move |stored: StorageResult<Option<Versioned<crate::tokens::OAuthTokens>>>,
                                  now| {
                                match stored {
                                    Ok(Some(_)) => tend.transmit(token, action, listed, now),
                                    Ok(None) => {
                                        let gone = Error::OrgNotRegistered { org_id: tend.org.clone() };
                                        tend.fail(gone, Phase::Reading, now)
                                    }
                                    Err(e) => tend.fail(e.into(), Phase::Reading, now),
                                }
                            },
                        ),
                    ))
                },
                // The claim ran out and another process wrote the record meanwhile (took it
                // over, or removed the data source): read it again.
                Self::lost_write,
            )
        })
    }

    fn transmit(self, token: AccessToken, action: DataSourcePlan, listed: bool, now: Timestamp) -> Plan {
        let config = self.engine.config();
        let (request, done_as) = match &action {
            DataSourcePlan::Register => {
                (register_request(config, &token, &self.spec, &new_nonce()), DataSourceAction::Registered)
            }
            DataSourcePlan::Update { id } => {
                (update_request(config, &token, id, &self.spec, &new_nonce()), DataSourceAction::Updated)
            }
            DataSourcePlan::Extend { id } | DataSourcePlan::Keep { id, .. } => {
                (update_request(config, &token, id, &self.spec, &new_nonce()), DataSourceAction::Extended)
            }
        };
        send_with_policy(self.retry(), request, |r, sent_at| parse_one(r).map(|d| (d, sent_at))).then(
            now,
            move |answered, now| match answered {
                Ok((data_source, sent_at)) => {
                    let record = self.record.clone().answered(data_source, &self.spec, sent_at, true, listed);
                    if record.extend_at(&self.spec).is_some_and(|at| at <= now) {
                        tracing::warn!(org = %self.org, "Webex set the data source's token to expire sooner than asked; it is looked at again when its claim would have run out");
                    }
                    self.save(record, done_as, now)
                }
                // Registered meanwhile (409), or gone from Webex (404): read the list again,
                // once.
                Err(e)
                    if !self.relisted
                        && matches!((&e, e.status()), (Error::NotFound(_), _) | (Error::Validation(_), Some(409))) =>
                {
                    let mut again = self;
                    again.relisted = true;
                    again.record = again.record.clone().failed(&e);
                    tracing::info!(org = %again.org, status = ?e.status(), "the data source changed at Webex; reading the list again");
                    again.list(token, now)
                }
                Err(e) => self.fail_call(e, token, true, now),
            },
        )
    }

    /// Stores `record` (releasing the claim) and reports `action`.
    fn save(self, record: DataSourceRecord, action: DataSourceAction, now: Timestamp) -> Plan {
        if action.renewed() {
            tracing::info!(org = %self.org, action = action.as_str(), expires = ?record.expires_at().map(Timestamp::to_rfc3339), "data source renewed");
        }
        let outcome = DataSourceOutcome {
            action,
            data_source: record.data_source.clone(),
            expires_at: record.expires_at(),
            next_check: record.next_check(&self.spec, now),
        };
        if !self.coordinated {
            return done(Ok(outcome));
        }
        Step::Storage(StorageCall::StoreState(
            self.name.clone(),
            record.to_json(),
            self.expect(),
            Then::new(move |stored: StorageResult<u64>, now| match stored {
                Ok(_) => done(Ok(outcome)),
                // The claim ran out and another process took it: keep whichever expiry is
                // later.
                Err(e) if e.kind() == StorageErrorKind::Conflict => self.merge(record, outcome, now),
                // Webex did it: say so. The record still says `sending`, so the next look
                // reads the list first once the claim runs out.
                Err(e) => {
                    tracing::warn!(org = %self.org, error = %e, "the data source was renewed but its shared record could not be written");
                    done(Ok(outcome))
                }
            }),
        ))
    }

    /// After a lost write of `ours`: writes it again over a record of the same data source
    /// whose expiry is earlier (keeping the other process's claim and marker). A record reset
    /// meanwhile (the data source was removed) or naming another data source is left alone.
    fn merge(self, ours: DataSourceRecord, outcome: DataSourceOutcome, now: Timestamp) -> Plan {
        Step::Storage(StorageCall::LoadState(
            self.name.clone(),
            Then::new(move |loaded: StorageResult<Option<Versioned<Vec<u8>>>>, _| {
                let Ok(Some(stored)) = loaded else { return done(Ok(outcome)) };
                let theirs = DataSourceRecord::from_json(&stored.value).unwrap_or_default();
                let same = |r: &DataSourceRecord| r.data_source.as_ref().map(|d| d.id.clone());
                if same(&theirs).is_none()
                    || same(&theirs) != same(&ours)
                    || theirs.expires_at_ms >= ours.expires_at_ms
                {
                    return done(Ok(outcome));
                }
                let mut ours = ours;
                if Timestamp::from_unix_millis(theirs.claimed_until_ms) > now {
                    (ours.claimed_until_ms, ours.unsure) = (theirs.claimed_until_ms, theirs.unsure);
                }
                ours.renewals = ours.renewals.max(theirs.renewals);
                Step::Storage(StorageCall::StoreState(
                    self.name.clone(),
                    ours.to_json(),
                    Expect::Version(stored.version),
                    Then::new(move |_: StorageResult<u64>, _| done(Ok(outcome))),
                ))
            }),
        ))
    }

    /// A call to `/v1/dataSources` failed (`sent`: a register or an update). A 429 pauses
    /// every process's data-source calls and reports `Deferred`; a 401 renews the org's token
    /// and tries once more (a 401 the new token does not cure is not about the token).
    fn fail_call(mut self, error: Error, token: AccessToken, sent: bool, now: Timestamp) -> Plan {
        if let Error::RateLimited { retry_after, .. } = &error {
            let until = now.saturating_add(retry_after.unwrap_or(Duration::from_secs(60)).min(MAX_PAUSE));
            tracing::warn!(org = %self.org, until = %until.to_rfc3339(), "Webex answered 429 to a data-source call; every process pauses them");
            if sent {
                self.record = self.record.clone().failed(&error);
            }
            let budget = Budget::new(self.engine.clone(), self.coordinated);
            return budget.pause(until, now, move |now| self.deferred(until, now));
        }
        // Webex's 401 (an answer not in its shape is `UnrecognizedAnswer`, and renews nothing).
        if matches!(error, Error::Authentication(_)) && error.status() == Some(401) {
            return self.engine.clone().invalidate(&self.org, &token, now).then(
                now,
                move |invalidated, now| match invalidated {
                    Ok(Invalidation::Renew) if !self.renewed => {
                        let mut again = self;
                        again.renewed = true;
                        if sent {
                            again.record = again.record.clone().failed(&error);
                        }
                        again.with_token(now, true)
                    }
                    _ => self.fail(error, if sent { Phase::Sending } else { Phase::Reading }, now),
                },
            );
        }
        self.fail(error, if sent { Phase::Sending } else { Phase::Reading }, now)
    }

    /// Records that the attempt failed (releasing the claim; after a send, `unsure` when Webex
    /// may have acted), then reports `error`.
    fn fail(self, error: Error, phase: Phase, now: Timestamp) -> Plan {
        let record = match phase {
            Phase::Reading => self.record.clone().released(),
            Phase::Sending => self.record.clone().failed(&error),
        };
        // Lost to another process that took the record over: the error is still this one's.
        let reported = error.clone();
        self.write(record, now, move |_, _| done(Err(error)), move |_, _| done(Err(reported)))
    }

    /// No room in the budget before `at`: releases the claim and says when to come back.
    fn deferred(self, at: Timestamp, now: Timestamp) -> Plan {
        let record = self.record.clone().released();
        self.write(
            record,
            now,
            move |tend, _| tend.outcome(DataSourceAction::Deferred, at),
            move |tend, _| tend.outcome(DataSourceAction::Deferred, at),
        )
    }
}
