//! One org's data sources (`/v1/dataSources`), with its Service App token: listing, `ensure`
//! (reads Webex's list, then registers, updates, extends or leaves the data source as
//! [`datasource::plan`](crate::datasource::plan) decides), `keep` (the same, but trusting the
//! shared record while it is fresh: what a daemon runs at every extension point) and removal.
//!
//! Every process sharing the store coordinates through the org's
//! [`DataSourceRecord`]: a versioned write claims the data source before anything is sent,
//! so when two replicas wake for the same extension, one extends and the other finds the claim
//! and then the new expiry. Each call to `/v1/dataSources` takes one from the data-source
//! budget ([`ByovaConfig::data_source_budget`](crate::ByovaConfig::data_source_budget),
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
use crate::http::HttpRequest;
use crate::key::{Expect, OrgId, Versioned};
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
    /// `org`'s data sources (one call from the data-source budget).
    pub fn list_data_sources(self: &Arc<Self>, org: &OrgId, now: Timestamp) -> Step<Vec<DataSource>> {
        let engine = self.clone();
        let org = org.clone();
        self.access_token(&org, now).then(now, move |token, now| {
            let token = match token {
                Ok(token) => token,
                Err(e) => return done(Err(e)),
            };
            let request = list_request(engine.config(), &token);
            Budget::new(engine.clone(), true).then(now, false, move |granted, now| match granted {
                Ok(()) => send_with_policy(engine.config().retry.clone(), request, |r, _| parse_list(r)),
                Err(at) => done(Err(deferred_error(at, now))),
            })
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

    /// Removes `org`'s data source for `spec` from Webex (found by URL and schema) and resets
    /// its shared record; `Some(id)` when one was removed.
    pub fn remove_data_source(
        self: &Arc<Self>,
        org: &OrgId,
        spec: DataSourceSpec,
        now: Timestamp,
    ) -> Step<Option<String>> {
        let engine = self.clone();
        let org = org.clone();
        self.access_token(&org, now).then(now, move |token, now| match token {
            Ok(token) => engine.remove_with(org, spec, token, now),
            Err(e) => done(Err(e)),
        })
    }

    /// [`remove_data_source`](Self::remove_data_source) with `token` (the org's last access
    /// token, when its tokens are gone already).
    pub(crate) fn remove_with(
        self: &Arc<Self>,
        org: OrgId,
        spec: DataSourceSpec,
        token: AccessToken,
        now: Timestamp,
    ) -> Step<Option<String>> {
        let engine = self.clone();
        let list = list_request(engine.config(), &token);
        Budget::new(engine.clone(), true).then(now, false, move |granted, now| {
            if let Err(at) = granted {
                return done(Err(deferred_error(at, now)));
            }
            send_with_policy(engine.config().retry.clone(), list, |r, _| parse_list(r)).then(
                now,
                move |listed, now| {
                    let Some(found) = (match listed {
                        Ok(listed) => listed.into_iter().find(|d| d.is_for(&spec)),
                        Err(e) => return done(Err(e)),
                    }) else {
                        return forget_record(&org, &spec, None);
                    };
                    let delete = delete_request(engine.config(), &token, &found.id);
                    Budget::new(engine.clone(), true).then(now, false, move |granted, now| {
                        if let Err(at) = granted {
                            return done(Err(deferred_error(at, now)));
                        }
                        send_with_policy(engine.config().retry.clone(), delete, |r, _| parse_deletion(r))
                            .then(now, move |deleted, _| match deleted {
                                Ok(()) => forget_record(&org, &spec, Some(found.id)),
                                Err(e) => done(Err(e)),
                            })
                    })
                },
            )
        })
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

/// The error a one-off call reports at `now` when the data-source budget has no room before
/// `at`.
fn deferred_error(at: Timestamp, now: Timestamp) -> Error {
    Error::RateLimited {
        failure: crate::error::ApiFailure::new(429),
        retry_after: Some(at.saturating_duration_since(now)),
    }
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
                            Err(e) if e.kind() == StorageErrorKind::Conflict => {
                                let mut again = self;
                                again.conflicts += 1;
                                let ceiling = 1u64 << again.conflicts.min(7);
                                let pause = Duration::from_millis(random_u64() % ceiling + 1);
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
                self.outcome(DataSourceAction::Busy, self.record.data_source.clone(), next_check)
            }
            RecordDecision::Keep(at) => {
                self.outcome(DataSourceAction::Kept, self.record.data_source.clone(), at)
            }
            RecordDecision::Claim { list } => self.claim(list, now),
        }
    }

    fn outcome(
        &self,
        action: DataSourceAction,
        data_source: Option<DataSource>,
        next_check: Timestamp,
    ) -> Plan {
        let expires_at = self.record.expires_at();
        done(Ok(DataSourceOutcome { action, data_source, expires_at, next_check }))
    }

    fn expect(&self) -> Expect {
        self.version.map_or(Expect::Absent, Expect::Version)
    }

    /// Writes the record claimed by this process, then acts; a lost write reads it again.
    fn claim(self, list: bool, now: Timestamp) -> Plan {
        let claimed = self.record.clone().claimed(now.saturating_add(claim_ttl(&self.spec)));
        Step::Storage(StorageCall::StoreState(
            self.name.clone(),
            claimed.to_json(),
            self.expect(),
            Then::new(move |stored: StorageResult<u64>, now| match stored {
                Ok(version) => {
                    let mut tend = self;
                    (tend.record, tend.version) = (claimed, Some(version));
                    tend.with_token(now, list)
                }
                Err(e) if e.kind() == StorageErrorKind::Conflict => self.lost_write(now),
                Err(e) => done(Err(e.into())),
            }),
        ))
    }

    /// Another process wrote the record first: read it again (it is probably at it now).
    fn lost_write(mut self, now: Timestamp) -> Plan {
        self.conflicts += 1;
        if self.conflicts >= MAX_CONFLICTS {
            return self.outcome(
                DataSourceAction::Busy,
                self.record.data_source.clone(),
                now.saturating_add(BUSY_RECHECK),
            );
        }
        self.start(now)
    }

    /// Whether this attempt keeps a live token alive (an extension, or the list before one):
    /// it may use the budget's reserve, which registrations and reconciliations leave, so a
    /// fleet registering hundreds of orgs at once never starves the extensions already due.
    fn urgent(&self, now: Timestamp) -> bool {
        self.record.expires_at().is_some_and(|at| at > now)
    }

    /// The org's access token, then the list (when `list`) or the extension.
    fn with_token(self, now: Timestamp, list: bool) -> Plan {
        self.engine.clone().access_token(&self.org, now).then(now, move |token, now| match token {
            Err(e) => self.failed(e, now),
            Ok(token) => {
                let known = self.record.data_source.as_ref().map(|d| d.id.clone());
                match known {
                    Some(id) if !list => self.send(token, DataSourcePlan::Extend { id }, false, now),
                    _ => self.list(token, now),
                }
            }
        })
    }

    /// The retry policy of data-source calls: a 429 is not slept through here (it pauses the
    /// shared budget and the attempt reports `Deferred`).
    fn retry(&self) -> crate::policy::RetryPolicy {
        let mut retry = self.engine.config().retry.clone();
        retry.max_retry_after = Duration::ZERO;
        retry
    }

    fn budgeted(
        self,
        request: HttpRequest,
        now: Timestamp,
        then: impl FnOnce(Self, Result<(DataSource, Timestamp), Error>, Timestamp) -> Plan + Send + 'static,
        parse: impl Fn(&crate::http::HttpResponse) -> Result<DataSource, Error> + Send + Sync + 'static,
    ) -> Plan {
        let budget = Budget::new(self.engine.clone(), self.coordinated);
        let urgent = self.urgent(now);
        budget.then(now, urgent, move |granted, now| {
            if let Err(at) = granted {
                return self.deferred(at, now);
            }
            let retry = self.retry();
            send_with_policy(retry, request, move |r, sent_at| parse(r).map(|d| (d, sent_at)))
                .then(now, move |answered, now| then(self, answered, now))
        })
    }

    /// Reads the org's data sources, then acts as [`plan`] decides.
    fn list(self, token: AccessToken, now: Timestamp) -> Plan {
        let request = list_request(self.engine.config(), &token);
        let budget = Budget::new(self.engine.clone(), self.coordinated);
        let urgent = self.urgent(now);
        budget.then(now, urgent, move |granted, now| {
            if let Err(at) = granted {
                return self.deferred(at, now);
            }
            send_with_policy(self.retry(), request, |r, sent_at| parse_list(r).map(|l| (l, sent_at))).then(
                now,
                move |listed, now| match listed {
                    Err(e) => self.failed_with(e, Some(&token), now),
                    Ok((existing, listed_at)) => match plan(&existing, &self.spec, now) {
                        DataSourcePlan::Keep { id, .. } => {
                            let Some(found) = existing.into_iter().find(|d| d.id == id) else {
                                return done(Err(Error::Internal(
                                    "the planned data source left the list".into(),
                                )));
                            };
                            let record =
                                self.record.clone().answered(found, &self.spec, listed_at, false, true);
                            self.save(record, DataSourceAction::Kept, now)
                        }
                        action => self.send(token, action, true, now),
                    },
                },
            )
        })
    }

    /// Registers, updates or extends as `action` says (`listed`: the list was just read).
    fn send(self, token: AccessToken, action: DataSourcePlan, listed: bool, now: Timestamp) -> Plan {
        let config = self.engine.config();
        let (request, done_as) = match &action {
            DataSourcePlan::Register => {
                (register_request(config, &token, &self.spec, &new_nonce()), DataSourceAction::Registered)
            }
            DataSourcePlan::Update { id } => {
                (update_request(config, &token, id, &self.spec, &new_nonce()), DataSourceAction::Updated)
            }
            DataSourcePlan::Extend { id } => {
                (update_request(config, &token, id, &self.spec, &new_nonce()), DataSourceAction::Extended)
            }
            DataSourcePlan::Keep { .. } => {
                return done(Err(Error::Internal("a kept data source is not sent".into())));
            }
        };
        self.budgeted(
            request,
            now,
            move |tend, answered, now| match answered {
                Ok((data_source, sent_at)) => {
                    let record = tend.record.clone().answered(data_source, &tend.spec, sent_at, true, listed);
                    tend.save(record, done_as, now)
                }
                // Registered meanwhile (409), or gone from Webex (404): read the list again,
                // once.
                Err(e) if !tend.relisted && matches!(e.status(), Some(404 | 409)) => {
                    let mut again = tend;
                    again.relisted = true;
                    if e.status() == Some(404) {
                        again.record.data_source = None;
                    }
                    tracing::info!(org = %again.org, status = ?e.status(), "the data source changed at Webex; reading the list again");
                    again.list(token, now)
                }
                Err(e) => tend.failed_with(e, Some(&token), now),
            },
            parse_one,
        )
    }

    /// Stores `record` (releasing the claim) and reports `action`.
    fn save(self, record: DataSourceRecord, action: DataSourceAction, now: Timestamp) -> Plan {
        let next_check = record.extend_at(&self.spec).unwrap_or(now.saturating_add(BUSY_RECHECK));
        let data_source = record.data_source.clone();
        if action.renewed() {
            tracing::info!(org = %self.org, action = action.as_str(), expires = ?record.expires_at().map(Timestamp::to_rfc3339), "data source renewed");
        }
        let outcome = DataSourceOutcome { action, data_source, expires_at: record.expires_at(), next_check };
        if !self.coordinated {
            return done(Ok(outcome));
        }
        let (name, expect) = (self.name.clone(), self.expect());
        Step::Storage(StorageCall::StoreState(
            name,
            record.to_json(),
            expect,
            Then::new(move |stored: StorageResult<u64>, now| match stored {
                Ok(_) => done(Ok(outcome)),
                // The claim ran out and another process took it: keep whichever expiry is
                // later.
                Err(e) if e.kind() == StorageErrorKind::Conflict => self.merge(record, outcome, now),
                Err(e) => {
                    tracing::warn!(org = %self.org, error = %e, "the data source was renewed but its shared record could not be written; its claim runs out on its own");
                    done(Ok(outcome))
                }
            }),
        ))
    }

    /// After a lost write of `ours`: writes it again over a record whose expiry is earlier.
    fn merge(self, ours: DataSourceRecord, outcome: DataSourceOutcome, _now: Timestamp) -> Plan {
        Step::Storage(StorageCall::LoadState(
            self.name.clone(),
            Then::new(move |loaded: StorageResult<Option<Versioned<Vec<u8>>>>, _| {
                let Ok(Some(stored)) = loaded else { return done(Ok(outcome)) };
                let theirs = DataSourceRecord::from_json(&stored.value).unwrap_or_default();
                if theirs.expires_at_ms >= ours.expires_at_ms {
                    return done(Ok(outcome));
                }
                let mut ours = ours;
                ours.claimed_until_ms = theirs.claimed_until_ms;
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

    fn failed(self, error: Error, now: Timestamp) -> Plan {
        self.failed_with(error, None, now)
    }

    /// Records why the attempt failed (releasing the claim), then reports it. A 429 pauses
    /// every process's data-source calls and reports `Deferred`; a 401 marks the org's
    /// token rejected, so the next attempt gets another.
    fn failed_with(self, error: Error, token: Option<&AccessToken>, now: Timestamp) -> Plan {
        if let Error::RateLimited { retry_after, .. } = &error {
            let until = now.saturating_add(retry_after.unwrap_or(Duration::from_secs(60)).min(MAX_PAUSE));
            tracing::warn!(org = %self.org, until = %until.to_rfc3339(), "Webex answered 429 to a data-source call; every process pauses them");
            let budget = Budget::new(self.engine.clone(), self.coordinated);
            return budget.pause(until, now, move |now| self.deferred(until, now));
        }
        let record = self.record.clone().failed(&error);
        let rejected = matches!(error, Error::Authentication(_));
        let after = move |tend: Self| -> Plan {
            if !tend.coordinated {
                return done(Err(error));
            }
            Step::Storage(StorageCall::StoreState(
                tend.name.clone(),
                record.to_json(),
                tend.expect(),
                Then::new(move |_: StorageResult<u64>, _| done(Err(error))),
            ))
        };
        match (token, rejected) {
            (Some(token), true) => {
                let rejected = token.clone();
                self.engine.invalidate(&self.org, &rejected, now).then(now, move |_, _| after(self))
            }
            _ => after(self),
        }
    }

    /// No room in the budget before `at`: releases the claim and says when to come back.
    fn deferred(self, at: Timestamp, _now: Timestamp) -> Plan {
        let outcome = DataSourceOutcome {
            action: DataSourceAction::Deferred,
            data_source: self.record.data_source.clone(),
            expires_at: self.record.expires_at(),
            next_check: at,
        };
        if !self.coordinated {
            return done(Ok(outcome));
        }
        Step::Storage(StorageCall::StoreState(
            self.name.clone(),
            self.record.clone().released().to_json(),
            self.expect(),
            Then::new(move |_: StorageResult<u64>, _| done(Ok(outcome))),
        ))
    }
}
