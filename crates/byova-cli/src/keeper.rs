//! The daemon's data-source keeper (`byova serve --data-source-url URL`): every registered
//! org's data source is kept registered and its token extended before it lapses.
//!
//! Each org is looked at when core's `keep_data_source` says (`next_check`: its extension
//! point or the hourly check against Webex's list; a few seconds when another replica holds
//! it; when the budget or a 429 allows), so with nothing due the keeper sleeps. Replicas sharing a store wake for an org together; the
//! org's shared record lets one of them extend it, and the others then read the new expiry.
//! Orgs come from the store (at the start and every `--resync-interval`) and from webhook
//! deliveries (an authorized org is looked at at once; a removed one is dropped).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use byova_async::core::datasource::{DataSourceAction, DataSourceOutcome, DataSourceSpec};
use byova_async::core::{Clock, SystemClock, Timestamp, TokenKey, engine::RefreshSchedule};
use byova_async::{Byova, Error, OrgId};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// A failed attempt is tried again after this, doubling up to [`MAX_RETRY`] (and never
/// later than a quarter of what is left of the token).
const AFTER_FAILURE: Duration = Duration::from_secs(5);
/// The longest an org waits between failed attempts.
const MAX_RETRY: Duration = Duration::from_secs(300);
/// A failed listing of the orgs is tried again after this.
const RESYNC_RETRY: Duration = Duration::from_secs(5);

/// What the daemon knows of every org's data source, for `/status`, `/metrics` and `/ready`.
#[derive(Default)]
pub(crate) struct DataSourceBoard {
    entries: std::sync::Mutex<BTreeMap<OrgId, Entry>>,
    /// Outcomes by kind: registered, updated, extended, kept, busy, deferred, failed.
    outcomes: [AtomicU64; 7],
}

/// One org's data source as last seen.
#[derive(Clone, Debug, Default)]
struct Entry {
    id: Option<String>,
    expires_at: Option<Timestamp>,
    next_check: Option<Timestamp>,
    last_action: Option<DataSourceAction>,
    /// Why the last attempt failed (cleared by the next success).
    error: Option<String>,
    /// Consecutive failed attempts.
    failures: u32,
}

const OUTCOME_NAMES: [&str; 7] = ["registered", "updated", "extended", "kept", "busy", "deferred", "failed"];

fn outcome_index(action: DataSourceAction) -> usize {
    match action {
        DataSourceAction::Registered => 0,
        DataSourceAction::Updated => 1,
        DataSourceAction::Extended => 2,
        DataSourceAction::Kept => 3,
        DataSourceAction::Busy => 4,
        _ => 5,
    }
}

impl DataSourceBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<OrgId, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, org: &OrgId, outcome: &DataSourceOutcome) {
        self.outcomes[outcome_index(outcome.action)].fetch_add(1, Ordering::Relaxed);
        let mut entries = self.lock();
        let entry = entries.entry(org.clone()).or_default();
        if let Some(ds) = &outcome.data_source {
            entry.id = Some(ds.id.clone());
        }
        if outcome.expires_at.is_some() {
            entry.expires_at = outcome.expires_at;
        }
        if outcome.action.renewed() || outcome.action == DataSourceAction::Kept {
            (entry.error, entry.failures) = (None, 0);
        }
        entry.next_check = Some(outcome.next_check);
        entry.last_action = Some(outcome.action);
    }

    /// Records a failed attempt; returns the expiry known for the org's data source.
    fn failed(&self, org: &OrgId, error: &Error, next_check: Timestamp) {
        self.outcomes[6].fetch_add(1, Ordering::Relaxed);
        let mut entries = self.lock();
        let entry = entries.entry(org.clone()).or_default();
        entry.error = Some(error.to_string());
        entry.failures += 1;
        entry.next_check = Some(next_check);
    }

    fn expires_at(&self, org: &OrgId) -> Option<Timestamp> {
        self.lock().get(org).and_then(|e| e.expires_at)
    }

    fn remove(&self, org: &OrgId) {
        self.lock().remove(org);
    }

    /// The org's data source for `/status` (`None`: not looked at yet).
    pub(crate) fn json(&self, org: &OrgId, now: Timestamp) -> Option<serde_json::Value> {
        let entries = self.lock();
        let e = entries.get(org)?;
        Some(json!({
            "id": e.id,
            "state": state(e, now),
            "expires_at": e.expires_at.map(Timestamp::to_rfc3339),
            "next_check": e.next_check.map(Timestamp::to_rfc3339),
            "last_action": e.last_action.map(DataSourceAction::as_str),
            "error": e.error,
        }))
    }

    /// Orgs whose data source has lapsed or could not be registered, for `/ready`.
    pub(crate) fn not_ready(&self, now: Timestamp) -> Vec<(OrgId, &'static str)> {
        self.lock()
            .iter()
            .filter_map(|(org, e)| match state(e, now) {
                "lapsed" => Some((org.clone(), "data_source_lapsed")),
                "failing" if e.expires_at.is_none() => Some((org.clone(), "data_source_unregistered")),
                _ => None,
            })
            .collect()
    }

    /// The keeper's figures, in Prometheus' text format.
    pub(crate) fn render(&self, now: Timestamp) -> String {
        let mut by_state: BTreeMap<&str, usize> =
            ["ok", "lapsed", "failing", "pending"].into_iter().map(|s| (s, 0)).collect();
        let mut soonest: Option<Timestamp> = None;
        for e in self.lock().values() {
            *by_state.entry(state(e, now)).or_default() += 1;
            if let Some(at) = e.expires_at {
                soonest = Some(soonest.map_or(at, |s| s.min(at)));
            }
        }
        let mut text = String::from(
            "# HELP byova_data_sources Data sources this replica's keeper holds, by state (ok: its token is \
             valid and the last attempt did not fail; lapsed: its token expired, Webex stops calling the gateway \
             for the org; failing: the last attempt failed; pending: not known yet).\n\
             # TYPE byova_data_sources gauge\n",
        );
        for (state, n) in by_state {
            text.push_str(&format!("byova_data_sources{{state=\"{state}\"}} {n}\n"));
        }
        text.push_str(
            "# HELP byova_data_source_outcomes_total What each of this replica's looks at an org's data source did \
             (registered, updated, extended; kept: nothing was due; busy: another replica was at it; deferred: the \
             data-source budget had no room, or Webex answered 429; failed: an error, tried again later).\n\
             # TYPE byova_data_source_outcomes_total counter\n",
        );
        for (name, n) in OUTCOME_NAMES.iter().zip(&self.outcomes) {
            text.push_str(&format!(
                "byova_data_source_outcomes_total{{outcome=\"{name}\"}} {}\n",
                n.load(Ordering::Relaxed)
            ));
        }
        if let Some(soonest) = soonest {
            let left = soonest.as_unix_millis() as f64 / 1000.0 - now.as_unix_millis() as f64 / 1000.0;
            text.push_str(&format!(
                "# HELP byova_data_source_soonest_expiry_seconds Seconds until the first data-source token \
                 expires (negative: one has lapsed).\n# TYPE byova_data_source_soonest_expiry_seconds gauge\n\
                 byova_data_source_soonest_expiry_seconds {left:.3}\n"
            ));
        }
        text
    }
}

/// `ok`, `lapsed`, `failing` or `pending`.
fn state(e: &Entry, now: Timestamp) -> &'static str {
    match e.expires_at {
        Some(at) if at <= now => "lapsed",
        _ if e.failures > 0 => "failing",
        Some(_) => "ok",
        None => "pending",
    }
}

/// What the keeper needs to run.
pub(crate) struct Keeper {
    pub(crate) byova: Arc<Byova>,
    pub(crate) spec: DataSourceSpec,
    /// Orgs looked at at once.
    pub(crate) concurrency: usize,
    /// Between listings of the registered orgs.
    pub(crate) resync_every: Duration,
    /// Orgs a delivery touched.
    pub(crate) touched: mpsc::Receiver<OrgId>,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) board: Arc<DataSourceBoard>,
}

type Finished = (OrgId, Result<DataSourceOutcome, Error>);

impl Keeper {
    /// Runs until `stop` turns true; attempts in flight then finish.
    pub(crate) async fn run(mut self) {
        let mut schedule = RefreshSchedule::default();
        let mut known: HashSet<OrgId> = HashSet::new();
        let mut in_flight: HashMap<tokio::task::Id, OrgId> = HashMap::new();
        let mut attempts: HashMap<OrgId, u32> = HashMap::new();
        let mut running = tokio::task::JoinSet::<Finished>::new();
        let mut next_resync = Instant::now();
        let slots = self.concurrency.max(1);
        loop {
            if *self.stop.borrow() {
                break;
            }
            if Instant::now() >= next_resync {
                match self.byova.service_app().list_orgs().await {
                    Ok(orgs) => {
                        let now = SystemClock.now();
                        let orgs: HashSet<OrgId> = orgs.into_iter().collect();
                        for gone in known.difference(&orgs) {
                            schedule.remove(&TokenKey::org(gone));
                            self.board.remove(gone);
                        }
                        let busy: HashSet<&OrgId> = in_flight.values().collect();
                        for org in orgs.difference(&known) {
                            if !busy.contains(org) {
                                schedule.set(TokenKey::org(org), now);
                            }
                        }
                        tracing::info!(orgs = orgs.len(), "data-source keeper resynced");
                        known = orgs;
                        next_resync = Instant::now() + self.resync_every;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot list the registered orgs; the data-source keeper tries again soon");
                        next_resync = Instant::now() + RESYNC_RETRY.min(self.resync_every);
                    }
                }
            }
            for due in schedule.take_due(SystemClock.now(), slots.saturating_sub(running.len())) {
                let TokenKey::Org(org) = due.key else { continue };
                let (byova, spec) = (self.byova.clone(), self.spec.clone());
                let task = running.spawn({
                    let org = org.clone();
                    async move {
                        let outcome = byova.keep_data_source(&org, &spec).await;
                        (org, outcome)
                    }
                });
                in_flight.insert(task.id(), org);
            }
            let due = schedule
                .next_due()
                .map(|at| Instant::now() + at.saturating_duration_since(SystemClock.now()));
            let wake = due.map_or(next_resync, |due| due.min(next_resync));
            let busy = running.len() >= slots;
            tokio::select! {
                () = tokio::time::sleep_until(wake), if !busy => {}
                Some(done) = running.join_next_with_id(), if !running.is_empty() => match done {
                    Ok((id, (org, outcome))) => {
                        in_flight.remove(&id);
                        if known.contains(&org) {
                            self.finished(&mut schedule, &mut attempts, &mut known, org, outcome);
                        }
                    }
                    Err(e) => {
                        if let Some(org) = in_flight.remove(&e.id()) {
                            tracing::warn!(org = %org, "a data-source attempt panicked");
                            schedule.set(TokenKey::org(&org), SystemClock.now().saturating_add(AFTER_FAILURE));
                        }
                    }
                },
                Some(org) = self.touched.recv() => {
                    match self.byova.service_app().status(&org).await {
                        Ok(Some(_)) => {
                            known.insert(org.clone());
                            if !in_flight.values().any(|o| *o == org) {
                                schedule.set(TokenKey::org(&org), SystemClock.now());
                            }
                        }
                        Ok(None) => {
                            known.remove(&org);
                            schedule.remove(&TokenKey::org(&org));
                            self.board.remove(&org);
                        }
                        Err(e) => tracing::warn!(org = %org, error = %e, "cannot read the org's status after a delivery"),
                    }
                }
                changed = self.stop.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        while running.join_next().await.is_some() {}
    }

    fn finished(
        &self,
        schedule: &mut RefreshSchedule,
        attempts: &mut HashMap<OrgId, u32>,
        known: &mut HashSet<OrgId>,
        org: OrgId,
        outcome: Result<DataSourceOutcome, Error>,
    ) {
        let now = SystemClock.now();
        let key = TokenKey::org(&org);
        match outcome {
            Ok(outcome) => {
                attempts.remove(&org);
                self.board.record(&org, &outcome);
                schedule.set(key, outcome.next_check.max(now.saturating_add(Duration::from_millis(50))));
            }
            // Removed meanwhile: forgotten, so that the next resync (or a delivery) finds it
            // again if it comes back.
            Err(Error::OrgNotRegistered { .. }) => {
                attempts.remove(&org);
                schedule.remove(&key);
                self.board.remove(&org);
                known.remove(&org);
            }
            Err(e) => {
                let n = attempts.entry(org.clone()).or_insert(0);
                let mut delay = AFTER_FAILURE.saturating_mul(1 << (*n).min(10)).min(MAX_RETRY);
                if let Some(expires_at) = self.board.expires_at(&org).filter(|at| *at > now) {
                    delay = delay
                        .min((expires_at.saturating_duration_since(now) / 4).max(Duration::from_secs(1)));
                }
                *n += 1;
                let next = now.saturating_add(delay);
                tracing::warn!(org = %org, error = %e, retry_in = ?delay, "the org's data source could not be kept");
                self.board.failed(&org, &e, next);
                schedule.set(key, next);
            }
        }
    }
}
