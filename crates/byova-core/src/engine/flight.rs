//! Single-flight per key: one refresh (or fetch, or code exchange) runs for a key at a time,
//! and every caller waiting for it gets its outcome, success or failure.
//!
//! A [`Flight`] is the shared outcome; the leader holds its lead and completes it. If the
//! leader's plan is dropped before it finishes (its task cancelled by a runtime shutting down,
//! a storage backend that panicked), dropping the `Lead` completes the flight with an error,
//! so no waiter is left hanging. Waiting is plain `std`: a [`Future`] for async drivers
//! ([`Flight::wait`]) and a condition variable for blocking ones
//! ([`Flight::wait_blocking`]).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::error::{Error, Result};
use crate::key::TokenKey;
use crate::tokens::OAuthTokens;

/// What a key holds after a flight: its tokens, or nothing (removed).
pub type Held = Option<OAuthTokens>;

/// The outcome of one refresh, fetch, code exchange or removal, shared by everyone waiting
/// for it. Cheap to clone.
#[derive(Clone)]
pub struct Flight(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    finished: Condvar,
}

#[derive(Default)]
struct State {
    outcome: Option<Result<Held>>,
    /// One slot per waiting future; a future that is polled again updates its own slot.
    wakers: Vec<Option<Waker>>,
}

impl fmt::Debug for Flight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flight").field("finished", &self.lock().outcome.is_some()).finish()
    }
}

impl Flight {
    fn new() -> Self {
        Flight(Arc::new(Shared { state: Mutex::new(State::default()), finished: Condvar::new() }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned state is still consistent.
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the outcome (async). Cancel safe: dropping the future only stops waiting.
    pub fn wait(&self) -> FlightWait {
        FlightWait { flight: self.clone(), slot: None }
    }

    /// Waits for the outcome, blocking the thread.
    pub fn wait_blocking(&self) -> Result<Held> {
        let mut state = self.lock();
        loop {
            if let Some(outcome) = &state.outcome {
                return outcome.clone();
            }
            state = self.0.finished.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn complete(&self, outcome: Result<Held>) {
        let wakers = {
            let mut state = self.lock();
            if state.outcome.is_some() {
                return;
            }
            state.outcome = Some(outcome);
            std::mem::take(&mut state.wakers)
        };
        self.0.finished.notify_all();
        wakers.into_iter().flatten().for_each(Waker::wake);
    }
}

/// The future of [`Flight::wait`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct FlightWait {
    flight: Flight,
    slot: Option<usize>,
}

impl Future for FlightWait {
    type Output = Result<Held>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut state = this.flight.lock();
        if let Some(outcome) = &state.outcome {
            return Poll::Ready(outcome.clone());
        }
        let waker = Some(cx.waker().clone());
        match this.slot {
            Some(i) if i < state.wakers.len() => state.wakers[i] = waker,
            _ => {
                this.slot = Some(state.wakers.len());
                state.wakers.push(waker);
            }
        }
        Poll::Pending
    }
}

/// Whether a caller may share a flight that is already running, or must wait for it to end
/// and then run its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sharing {
    /// "A valid token": any outcome of another valid-token flight answers it.
    Joins,
    /// A fetch for the `authorized` delivery with this digest: a fetch for the same delivery
    /// running for the org answers it (Webex's redelivery, or the delivery reaching another
    /// handler); a fetch for another delivery (a later authorization) queues.
    Fetches(u64),
    /// An explicit refresh, fetch or code exchange: it runs after the current flight.
    Queues,
}

struct Entry {
    flight: Flight,
    sharing: Sharing,
    id: u64,
}

/// The flights in progress, one per key at most.
#[derive(Default)]
pub(crate) struct Flights {
    table: Mutex<HashMap<TokenKey, Entry>>,
    next_id: AtomicU64,
}

impl fmt::Debug for Flights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flights").field("in_progress", &self.lock().len()).finish()
    }
}

/// What a caller got from [`Flights::join`].
pub(crate) enum Joined {
    /// Nothing was running: this caller leads a new flight and must complete it.
    Lead(Lead),
    /// A flight it may share is running: wait for its outcome.
    Follow(Flight),
    /// A flight it may not share is running: wait for it to end, then try again.
    Busy(Flight),
}

impl Flights {
    fn lock(&self) -> MutexGuard<'_, HashMap<TokenKey, Entry>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn join(self: &Arc<Self>, key: &TokenKey, sharing: Sharing) -> Joined {
        let mut table = self.lock();
        if let Some(entry) = table.get(key) {
            return if entry.sharing == sharing && sharing != Sharing::Queues {
                Joined::Follow(entry.flight.clone())
            } else {
                Joined::Busy(entry.flight.clone())
            };
        }
        let flight = Flight::new();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        table.insert(key.clone(), Entry { flight: flight.clone(), sharing, id });
        Joined::Lead(Lead { flight, flights: self.clone(), key: key.clone(), id, completed: false })
    }

    /// How many flights are in progress.
    pub(crate) fn in_progress(&self) -> usize {
        self.lock().len()
    }
}

/// The leader's duty: complete the flight. Dropped without completing, it completes the
/// flight with an error, so waiters never hang on a refresh that was abandoned.
pub(crate) struct Lead {
    flight: Flight,
    flights: Arc<Flights>,
    key: TokenKey,
    id: u64,
    completed: bool,
}

impl Lead {
    pub(crate) fn flight(&self) -> Flight {
        self.flight.clone()
    }

    /// Publishes the outcome to every waiter and ends the flight.
    pub(crate) fn complete(mut self, outcome: Result<Held>) {
        self.finish(outcome);
    }

    fn finish(&mut self, outcome: Result<Held>) {
        self.completed = true;
        {
            let mut table = self.flights.lock();
            if table.get(&self.key).is_some_and(|e| e.id == self.id) {
                table.remove(&self.key);
            }
        }
        self.flight.complete(outcome);
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if !self.completed {
            self.finish(Err(Error::Internal(format!(
                "the refresh of {} was abandoned before it finished (its task was cancelled or panicked)",
                self.key
            ))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::OrgId;
    use crate::secret::AccessToken;
    use crate::time::Timestamp;

    fn tokens() -> OAuthTokens {
        OAuthTokens::new(AccessToken::new("A"), 60, Timestamp::EPOCH)
    }

    #[test]
    fn followers_share_the_leaders_outcome_failures_included() {
        let flights = Arc::new(Flights::default());
        let key = TokenKey::Integration;
        let Joined::Lead(lead) = flights.join(&key, Sharing::Joins) else { panic!("first leads") };
        let Joined::Follow(follower) = flights.join(&key, Sharing::Joins) else { panic!("second follows") };
        assert!(matches!(flights.join(&key, Sharing::Queues), Joined::Busy(_)), "explicit work queues");
        let waiter = std::thread::spawn(move || follower.wait_blocking());
        lead.complete(Err(Error::NotAuthorized));
        assert!(matches!(waiter.join().unwrap(), Err(Error::NotAuthorized)));
        assert_eq!(flights.in_progress(), 0);
        assert!(matches!(flights.join(&key, Sharing::Joins), Joined::Lead(_)), "a new flight after the end");
    }

    #[test]
    fn a_dropped_lead_completes_its_flight_with_an_error() {
        let flights = Arc::new(Flights::default());
        let Joined::Lead(lead) = flights.join(&TokenKey::org(&OrgId::from_static("o")), Sharing::Joins)
        else {
            panic!()
        };
        let flight = lead.flight();
        drop(lead);
        assert!(matches!(flight.wait_blocking(), Err(Error::Internal(m)) if m.contains("abandoned")));
        assert_eq!(flights.in_progress(), 0);
    }

    #[test]
    fn async_waiters_are_woken() {
        let flights = Arc::new(Flights::default());
        let Joined::Lead(lead) = flights.join(&TokenKey::Integration, Sharing::Joins) else { panic!() };
        let flight = lead.flight();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let got = rt.block_on(async move {
            let waiters: Vec<_> = (0..100).map(|_| tokio::spawn(flight.wait())).collect();
            tokio::task::yield_now().await;
            lead.complete(Ok(Some(tokens())));
            let mut ok = 0;
            for w in waiters {
                ok += usize::from(w.await.unwrap().is_ok());
            }
            ok
        });
        assert_eq!(got, 100);
    }
}
