//! The daemon's refresh schedule: the next refresh point of every key, kept in memory, and a
//! refresher that sleeps until the earliest one instead of scanning the store.
//!
//! It learns what changed from its own refreshes (the key's status is read back after each),
//! from webhook deliveries (the org is looked up again), and from a slow full resync that
//! catches what other replicas or tools did (every `--resync-interval`, 10 minutes by
//! default). Refresh points come from core's policy (a key's place in its refresh window, the
//! same in every replica), so replicas wake for a key together and the store's lease lets one
//! of them call Webex. With nothing due the refresher is asleep: no store reads, no CPU.

use std::sync::Arc;
use std::time::Duration;

use byova_async::core::{Clock, KeyStatus, RefreshSchedule, SystemClock, Timestamp, TokenKey};
use byova_async::{Byova, Error};
use tokio::sync::{mpsc, watch};

/// Orgs a webhook delivery touched, for the refresher to look up again. Bounded: when it is
/// full, the next resync catches up.
pub(crate) type Touched = mpsc::Sender<String>;

/// A key whose refresh went wrong is tried again this much later.
const AFTER_FAILURE: Duration = Duration::from_secs(30);
/// A key still due right after its refresh (the token budget deferred it, or another
/// replica holds its lease) is looked at again this much later.
const STILL_DUE: Duration = Duration::from_secs(5);

/// What the refresher needs to know to run.
pub(crate) struct Refresher {
    pub(crate) byova: Arc<Byova>,
    /// Keys refreshed at once.
    pub(crate) concurrency: usize,
    /// Between full resyncs.
    pub(crate) resync_every: Duration,
    pub(crate) touched: mpsc::Receiver<String>,
    pub(crate) stop: watch::Receiver<bool>,
}

/// A due key's refresh finished: its status now (or why not).
type Finished = (TokenKey, Result<Option<KeyStatus>, Error>, bool);

impl Refresher {
    /// Runs until `stop` turns true; refreshes in flight then finish (the caller bounds how
    /// long it waits).
    pub(crate) async fn run(mut self) {
        let mut schedule = RefreshSchedule::default();
        let mut running = tokio::task::JoinSet::<Finished>::new();
        let mut next_resync = tokio::time::Instant::now();
        loop {
            if *self.stop.borrow() {
                break;
            }
            if tokio::time::Instant::now() >= next_resync {
                self.resync(&mut schedule).await;
                next_resync = tokio::time::Instant::now() + self.resync_every;
            }
            let now = SystemClock.now();
            let free = self.concurrency.max(1).saturating_sub(running.len());
            for key in schedule.take_due(now, free) {
                let byova = self.byova.clone();
                running.spawn(async move { refresh(&byova, key).await });
            }
            let wake = schedule
                .next_due()
                .map(|at| tokio::time::Instant::now() + at.saturating_duration_since(SystemClock.now()))
                .map_or(next_resync, |due| due.min(next_resync));
            let busy = running.len() >= self.concurrency.max(1);
            tokio::select! {
                () = tokio::time::sleep_until(wake), if !busy => {}
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok((key, status, ok)) = done {
                        let now = SystemClock.now();
                        let not_before = now.saturating_add(if ok { STILL_DUE } else { AFTER_FAILURE });
                        match status {
                            Ok(status) => schedule.apply(key, status.as_ref(), not_before),
                            Err(_) => schedule.set(key, not_before),
                        }
                    }
                }
                Some(org) = self.touched.recv() => {
                    let key = TokenKey::org(org.as_str());
                    match self.byova.service_app().status(&org).await {
                        Ok(status) => schedule.apply(key, status.as_ref(), SystemClock.now()),
                        Err(e) => tracing::warn!(org = %org, error = %e, "cannot read the org's status after a delivery"),
                    }
                }
                _ = self.stop.changed() => {}
            }
        }
        while running.join_next().await.is_some() {}
    }

    /// Reads every key's status and schedules it: what other replicas, tools or restarts
    /// changed since the last resync.
    async fn resync(&self, schedule: &mut RefreshSchedule) {
        let started = std::time::Instant::now();
        match self.byova.status().await {
            Ok(statuses) => {
                let mut fresh = RefreshSchedule::default();
                let now = SystemClock.now();
                for status in &statuses {
                    fresh.apply(status.key.clone(), Some(status), now);
                }
                *schedule = fresh;
                tracing::info!(
                    keys = schedule.len(),
                    took = ?started.elapsed(),
                    next_due = ?schedule.next_due().map(Timestamp::to_rfc3339),
                    "refresh schedule resynced"
                );
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the tokens' status; keeping the schedule"),
        }
    }
}

/// Refreshes `key` if it is due (a valid token is all that is asked: another replica may
/// have refreshed it already), then reads its status back.
async fn refresh(byova: &Byova, key: TokenKey) -> Finished {
    let (got, status) = match &key {
        TokenKey::Integration => {
            let got = byova.integration().get_access_token().await.map(drop);
            (got, byova.integration().status().await)
        }
        TokenKey::Org(org) => {
            let got = byova.service_app().get_access_token(org).await.map(drop);
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
    (key, status, ok)
}
