//! The daemon's refresh schedule: the next refresh point of every key, kept in memory, and a
//! refresher that sleeps until the earliest one instead of scanning the store.
//!
//! It learns what changed from its own refreshes (the key's status is read back after each),
//! from webhook deliveries (the org is looked up again), and from a slow full resync that
//! catches what other replicas or tools did (every `--resync-interval`, 10 minutes by
//! default). Refresh points come from core's policy (a key's place in its refresh window, the
//! same in every replica), so replicas wake for a key together and the store's lease lets one
//! of them call Webex. With nothing due the refresher is asleep: no store reads, no CPU.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use byova_async::core::{
    Clock, KeyStatus, StatusReport, SystemClock, Timestamp, TokenKey,
    engine::{Due, RefreshSchedule},
};
use byova_async::{Byova, Error, OrgId};
use tokio::sync::{mpsc, watch};

/// Orgs a webhook delivery touched, for the refresher to look up again. Bounded: when it is
/// full, the next resync catches up.
pub(crate) type Touched = mpsc::Sender<OrgId>;

/// What the daemon knows of every key, for `/status` and `/metrics`: filled by the full
/// resync, kept current by every refresh and delivery, so a scrape reads no store (and
/// unseals no record).
#[derive(Default)]
pub(crate) struct StatusBoard {
    statuses: std::sync::Mutex<Option<std::collections::BTreeMap<TokenKey, KeyStatus>>>,
    /// Records the last full resync could not read.
    unreadable: std::sync::atomic::AtomicUsize,
}

impl StatusBoard {
    /// Every key's status, `None` until the first resync.
    pub(crate) fn snapshot(&self) -> Option<Vec<KeyStatus>> {
        self.lock().as_ref().map(|all| all.values().cloned().collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<std::collections::BTreeMap<TokenKey, KeyStatus>>> {
        self.statuses.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the last full resync could not read.
    pub(crate) fn unreadable(&self) -> usize {
        self.unreadable.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Replaces everything (a full resync).
    pub(crate) fn replace(&self, report: &StatusReport) {
        *self.lock() = Some(report.keys.iter().map(|s| (s.key.clone(), s.clone())).collect());
        self.unreadable.store(report.unreadable.len(), std::sync::atomic::Ordering::Relaxed);
    }

    /// One key's status now (`None`: nothing stored). Before the first full resync the board
    /// knows nothing, and one key would pass for the whole list: it waits for the resync.
    pub(crate) fn put(&self, key: &TokenKey, status: Option<&KeyStatus>) {
        let mut board = self.lock();
        let Some(all) = board.as_mut() else { return };
        match status {
            Some(status) => {
                all.insert(key.clone(), status.clone());
            }
            None => {
                all.remove(key);
            }
        }
    }

    /// Reads every status from the store (a full resync); says whether it could.
    pub(crate) async fn resync(&self, byova: &Byova) -> Result<usize, Error> {
        let report = byova.status_report().await?;
        self.replace(&report);
        Ok(report.keys.len())
    }
}

/// A key still due right after its refresh (the token budget deferred it, another replica
/// holds its lease, or Webex failed and the still-valid token was served) is tried again after
/// this, doubling each time up to [`MAX_RETRY`]; meanwhile nothing else due is started for
/// [`HOLD`] (the budget is shared, so when one key waits for it, all do).
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// A key whose refresh failed is tried again after this, doubling up to [`MAX_RETRY`].
const AFTER_FAILURE: Duration = Duration::from_secs(5);
/// The longest a key waits between attempts.
const MAX_RETRY: Duration = Duration::from_secs(300);
/// How long a refresh that found no room in the budget holds back the next ones.
const HOLD: Duration = Duration::from_secs(1);
/// A failed resync is tried again after this, doubling up to a minute.
const RESYNC_RETRY: Duration = Duration::from_secs(5);

/// What the refresher needs to know to run.
pub(crate) struct Refresher {
    pub(crate) byova: Arc<Byova>,
    /// Keys refreshed at once.
    pub(crate) concurrency: usize,
    /// Between full resyncs.
    pub(crate) resync_every: Duration,
    pub(crate) touched: mpsc::Receiver<OrgId>,
    pub(crate) stop: watch::Receiver<bool>,
    /// What `/status` and `/metrics` read (the daemon may fill it before the refresher starts:
    /// the refresher then plans from it instead of reading the store again).
    pub(crate) board: Arc<StatusBoard>,
}

/// A due key's refresh finished: its status now (or why not), whether it went well, and its
/// own refresh point when it was planned ahead of it.
type Finished = (TokenKey, Result<Option<KeyStatus>, Error>, bool, Option<Timestamp>);

/// The refresher's state between events.
struct State {
    schedule: RefreshSchedule,
    /// Keys being refreshed now, by task.
    in_flight: HashMap<tokio::task::Id, TokenKey>,
    /// Consecutive attempts that left a key still due, per key.
    attempts: HashMap<TokenKey, u32>,
    /// Keys whose rejected refresh token was reported to the operator (once each).
    reported: HashSet<TokenKey>,
}

impl State {
    fn new(spacing: Duration) -> Self {
        Self {
            schedule: RefreshSchedule::with_spacing(spacing),
            in_flight: HashMap::new(),
            attempts: HashMap::new(),
            reported: HashSet::new(),
        }
    }

    /// Reschedules a key whose refresh ended; says whether the budget seems to be holding
    /// refreshes back.
    fn finished(
        &mut self,
        key: TokenKey,
        status: Result<Option<KeyStatus>, Error>,
        ok: bool,
        ahead: Option<Timestamp>,
    ) -> bool {
        let now = SystemClock.now();
        let status = match status {
            Ok(status) => status,
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "cannot read the key's status after its refresh");
                self.retry_later(key, AFTER_FAILURE);
                return false;
            }
        };
        self.report(&key, status.as_ref());
        let still_due = status.as_ref().and_then(|s| s.refresh_at).is_some_and(|at| at <= now);
        let unchanged = |own: Timestamp| {
            status
                .as_ref()
                .and_then(|s| s.refresh_at)
                .map(|at| at.saturating_add(byova_async::core::engine::WAKE_SLACK))
                == Some(own)
        };
        match (ok, still_due) {
            // Planned ahead, but nothing was renewed (obtained moments ago): its own point.
            (true, false) if ahead.is_some_and(unchanged) => {
                self.attempts.remove(&key);
                self.schedule.set(key, ahead.unwrap_or(now));
                false
            }
            (true, false) => {
                self.attempts.remove(&key);
                self.schedule.apply(key, status.as_ref(), now);
                false
            }
            (true, true) => {
                let cap = status.as_ref().map(|s| s.access_expires_at);
                self.retry_later_before(key, FIRST_RETRY, cap);
                true
            }
            (false, _) if status.is_none() => {
                self.attempts.remove(&key);
                self.schedule.remove(&key);
                false
            }
            (false, _) => {
                let cap = status.as_ref().map(|s| s.access_expires_at);
                self.retry_later_before(key, AFTER_FAILURE, cap);
                false
            }
        }
    }

    /// Tells the operator, once per key, that Webex rejected its refresh token.
    fn report(&mut self, key: &TokenKey, status: Option<&KeyStatus>) {
        let rejected = status.is_some_and(|s| s.refresh_token_rejected);
        if !rejected {
            self.reported.remove(key);
        } else if self.reported.insert(key.clone())
            && let Some(remedy) = status.and_then(crate::remedy)
        {
            tracing::warn!(key = %key, "Webex rejected the refresh token; no process sends it again: {remedy}");
        }
    }

    fn retry_later(&mut self, key: TokenKey, first: Duration) {
        self.retry_later_before(key, first, None);
    }

    /// Tries `key` again after a backoff (doubling from `first`), which never sleeps through
    /// more than a quarter of what is left until `expires_at`: a key the budget held back is
    /// asked again while its token still lives, not after it expired.
    fn retry_later_before(&mut self, key: TokenKey, first: Duration, expires_at: Option<Timestamp>) {
        let now = SystemClock.now();
        let n = self.attempts.entry(key.clone()).or_insert(0);
        let mut delay = first.saturating_mul(1 << (*n).min(10)).min(MAX_RETRY);
        if let Some(expires_at) = expires_at {
            delay = delay.min((expires_at.saturating_duration_since(now) / 4).max(FIRST_RETRY));
        }
        *n += 1;
        self.schedule.set(key, now.saturating_add(delay));
    }
}

impl Refresher {
    /// Runs until `stop` turns true; refreshes in flight then finish (the caller bounds how
    /// long it waits).
    pub(crate) async fn run(mut self) {
        // Planned against the shared token budget: refresh points that crowd into one stretch
        // are moved earlier, so no token waits for the budget past its expiry.
        let mut state = State::new(spacing_of(&self.byova));
        let mut running = tokio::task::JoinSet::<Finished>::new();
        let mut next_resync = Instant::now();
        if let Some(statuses) = self.board.snapshot() {
            self.rebuild(&mut state, &statuses);
            next_resync += self.resync_every;
            tracing::info!(keys = state.schedule.len(), "refresh schedule planned");
        }
        let mut resync_retry = RESYNC_RETRY;
        let mut hold_until = Instant::now();
        let slots = self.concurrency.max(1);
        loop {
            if *self.stop.borrow() {
                break;
            }
            if Instant::now() >= next_resync {
                if self.resync(&mut state).await {
                    next_resync = Instant::now() + self.resync_every;
                    resync_retry = RESYNC_RETRY;
                } else {
                    next_resync = Instant::now() + resync_retry.min(self.resync_every);
                    resync_retry = (resync_retry * 2).min(Duration::from_secs(60));
                }
            }
            if Instant::now() >= hold_until {
                for due in state.schedule.take_due(SystemClock.now(), slots.saturating_sub(running.len())) {
                    let byova = self.byova.clone();
                    let key = due.key.clone();
                    let task = running.spawn(async move { refresh(&byova, due).await });
                    state.in_flight.insert(task.id(), key);
                }
            }
            let due = state.schedule.next_due().map(|at| {
                let due = Instant::now() + at.saturating_duration_since(SystemClock.now());
                due.max(hold_until)
            });
            let wake = due.map_or(next_resync, |due| due.min(next_resync));
            let busy = running.len() >= slots;
            tokio::select! {
                () = tokio::time::sleep_until(wake), if !busy => {}
                Some(done) = running.join_next_with_id(), if !running.is_empty() => match done {
                    Ok((id, (key, status, ok, ahead))) => {
                        state.in_flight.remove(&id);
                        if let Ok(status) = &status {
                            self.board.put(&key, status.as_ref());
                        }
                        if state.finished(key, status, ok, ahead) {
                            hold_until = Instant::now() + HOLD;
                        }
                    }
                    Err(e) => {
                        if let Some(key) = state.in_flight.remove(&e.id()) {
                            tracing::warn!(key = %key, "a background refresh panicked");
                            state.retry_later(key, AFTER_FAILURE);
                        }
                    }
                },
                Some(org) = self.touched.recv() => {
                    let key = TokenKey::org(&org);
                    match self.byova.service_app().status(&org).await {
                        Ok(status) => {
                            state.attempts.remove(&key);
                            self.board.put(&key, status.as_ref());
                            state.report(&key, status.as_ref());
                            state.schedule.apply(key, status.as_ref(), SystemClock.now());
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

    /// Reads every key's status and schedules it (keys being refreshed now are left to their
    /// refresh): what other replicas, tools or restarts changed since the last resync. Says
    /// whether it could.
    async fn resync(&self, state: &mut State) -> bool {
        let started = std::time::Instant::now();
        match self.byova.status_report().await {
            Ok(report) => {
                self.board.replace(&report);
                self.rebuild(state, &report.keys);
                tracing::info!(
                    keys = state.schedule.len(),
                    took = ?started.elapsed(),
                    next_due = ?state.schedule.next_due().map(Timestamp::to_rfc3339),
                    "refresh schedule resynced"
                );
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the tokens' status; keeping the schedule and trying again soon");
                false
            }
        }
    }

    /// The schedule anew from every key's status (keys being refreshed now are left to their
    /// refresh).
    fn rebuild(&self, state: &mut State, statuses: &[KeyStatus]) {
        let busy: HashSet<&TokenKey> = state.in_flight.values().collect();
        let mut fresh = RefreshSchedule::with_spacing(spacing_of(&self.byova));
        let now = SystemClock.now();
        for status in statuses.iter().filter(|s| !busy.contains(&s.key)) {
            fresh.apply(status.key.clone(), Some(status), now);
        }
        for status in statuses {
            state.report(&status.key, Some(status));
        }
        state.schedule = fresh;
        state.attempts.clear();
    }
}

/// The spacing the schedule keeps between planned refreshes (see [`RefreshSchedule`]).
fn spacing_of(byova: &Byova) -> Duration {
    byova.integration().config().token_budget.as_ref().map_or(Duration::ZERO, RefreshSchedule::spacing_for)
}

/// Refreshes a due key (a valid token is all that is asked: another replica may have
/// refreshed it already; a key planned ahead of its window to stay within the budget is
/// refreshed although its token is still fresh), then reads its status back.
async fn refresh(byova: &Byova, due: Due) -> Finished {
    let (key, ahead) = (due.key, due.ahead);
    let (got, status) = match &key {
        TokenKey::Integration => {
            let got = if ahead.is_some() {
                byova.integration().refresh(None).await.map(drop)
            } else {
                byova.integration().get_access_token().await.map(drop)
            };
            (got, byova.integration().status().await)
        }
        TokenKey::Org(org) => {
            let got = if ahead.is_some() {
                byova.service_app().refresh_for_org(org).await.map(drop)
            } else {
                byova.service_app().get_access_token(org).await.map(drop)
            };
            (got, byova.service_app().status(org).await)
        }
    };
    let ok = match got {
        Ok(()) => true,
        Err(Error::NotAuthorized | Error::OrgNotRegistered { .. }) => true,
        Err(e) => {
            tracing::warn!(key = %key, error = %e, "background refresh failed");
            false
        }
    };
    (key, status, ok, ahead)
}
