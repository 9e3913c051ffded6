//! The token-endpoint budget: how many calls to Webex's token endpoints every replica sharing a
//! store may make together, so a fleet stays within Webex's rate limits instead of learning
//! them from 429s.
//!
//! A token bucket, kept in the store (a few bytes under a versioned write) so replicas share
//! it: `capacity` calls may go at once, the rest at a steady rate, sized so that no window of
//! `per` ever sees more than `calls`. Background work (refreshing a token that is still valid)
//! leaves a reserve for callers whose token has expired, which are served first. A 429 from
//! Webex stores a pause until its `Retry-After`, which every replica honours.
//!
//! Pure functions of the stored state and the time; the engine reads, decides and writes back.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// The name the budget's state is stored under.
pub const TOKEN_BUDGET_STATE: &str = "token-budget";

/// How many token-endpoint calls all replicas sharing a store may make per window.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenBudget {
    /// Calls per window (240 a minute by default, under Webex's documented ~300).
    pub calls: u32,
    /// The window.
    pub per: Duration,
    /// How much of the bucket background refreshes may use (percent); the rest is kept for
    /// callers whose token has expired.
    pub background_percent: u8,
}

impl Default for TokenBudget {
    fn default() -> Self {
        Self { calls: 240, per: Duration::from_secs(60), background_percent: 80 }
    }
}

/// The stored state of the bucket (milli-calls, to stay in integers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetState {
    /// Calls available now, in thousandths.
    pub milli_calls: u64,
    /// When `milli_calls` was computed (unix ms).
    pub updated_at_ms: u64,
    /// No call before this (a 429's `Retry-After`; unix ms).
    pub paused_until_ms: u64,
}

impl BudgetState {
    /// The stored form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses the stored form (`None`: unreadable, start afresh).
    pub fn from_json(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// What the budget says about one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetDecision {
    /// Call now; store this state.
    Granted(BudgetState),
    /// Not before then.
    RetryAt(Timestamp),
}

impl TokenBudget {
    /// `calls` a minute, 80 % of them for background refreshes.
    ///
    /// ```
    /// let budget = byova_core::TokenBudget::per_minute(240);
    /// assert_eq!(budget, byova_core::TokenBudget::default());
    /// ```
    pub fn per_minute(calls: u32) -> Self {
        Self::new(calls, Duration::from_secs(60))
    }

    /// `calls` per `per`, 80 % of them for background refreshes.
    pub fn new(calls: u32, per: Duration) -> Self {
        Self { calls, per, ..Self::default() }
    }

    /// The share of the bucket background refreshes may use (percent, at most 100).
    #[must_use]
    pub fn with_background_percent(mut self, percent: u8) -> Self {
        self.background_percent = percent.min(100);
        self
    }

    /// At most a tenth of the window's calls go at once (at least one).
    fn capacity_milli(&self) -> u64 {
        (u64::from(self.calls) * 100).max(1_000).min(u64::from(self.calls.max(1)) * 1_000)
    }

    /// Milli-calls refilled per window: the window's calls minus the burst, so that no window
    /// sees more than `calls`.
    fn refill_milli(&self) -> u64 {
        (u64::from(self.calls) * 1_000).saturating_sub(self.capacity_milli()).max(1_000)
    }

    fn per_ms(&self) -> u64 {
        u64::try_from(self.per.as_millis()).unwrap_or(u64::MAX).max(1)
    }

    /// The reserve background calls leave in the bucket, in milli-calls: never so much that a
    /// full bucket refuses them.
    fn reserve_milli(&self, capacity: u64) -> u64 {
        (capacity * u64::from(100 - self.background_percent.min(100)) / 100)
            .min(capacity.saturating_sub(1_000))
    }

    /// Whether one more call may go now (`urgent`: the caller's token has expired), given the
    /// stored `state` (`None`: a full bucket). A stored pause counts for at most `max_pause`
    /// from now (a `Retry-After` of hours, or a replica whose clock runs ahead, cannot freeze
    /// the fleet).
    pub fn take(
        &self,
        state: Option<BudgetState>,
        now: Timestamp,
        urgent: bool,
        max_pause: Duration,
    ) -> BudgetDecision {
        let now_ms = now.as_unix_millis();
        let capacity = self.capacity_milli();
        let state =
            state.unwrap_or(BudgetState { milli_calls: capacity, updated_at_ms: now_ms, paused_until_ms: 0 });
        let paused_until = state.paused_until_ms.min(now.saturating_add(max_pause).as_unix_millis());
        if now_ms < paused_until {
            return BudgetDecision::RetryAt(Timestamp::from_unix_millis(paused_until));
        }
        // A replica whose clock is behind never makes time run backwards for the others.
        let now_ms = now_ms.max(state.updated_at_ms);
        let elapsed = now_ms.saturating_sub(state.updated_at_ms);
        let refilled = u128::from(elapsed) * u128::from(self.refill_milli()) / u128::from(self.per_ms());
        let available = u128::from(state.milli_calls).saturating_add(refilled).min(u128::from(capacity));
        let available = u64::try_from(available).unwrap_or(capacity);
        let reserve = if urgent { 0 } else { self.reserve_milli(capacity) };
        let needed = 1_000 + reserve;
        if available >= needed {
            return BudgetDecision::Granted(BudgetState {
                milli_calls: available - 1_000,
                updated_at_ms: now_ms,
                paused_until_ms: state.paused_until_ms,
            });
        }
        // Not enough yet: when the refill will have brought it (`needed` never exceeds the
        // bucket, so the wait is finite and positive).
        let short = needed - available;
        let wait_ms = u128::from(short) * u128::from(self.per_ms()) / u128::from(self.refill_milli()) + 1;
        BudgetDecision::RetryAt(Timestamp::from_unix_millis(
            now_ms.saturating_add(u64::try_from(wait_ms).unwrap_or(u64::MAX)),
        ))
    }

    /// `state` with every call paused until `until` (a 429's `Retry-After`; the caller caps
    /// it).
    pub fn pause(&self, state: Option<BudgetState>, now: Timestamp, until: Timestamp) -> BudgetState {
        let now_ms = now.as_unix_millis();
        let mut state = state.unwrap_or(BudgetState {
            milli_calls: self.capacity_milli(),
            updated_at_ms: now_ms,
            paused_until_ms: 0,
        });
        state.paused_until_ms = state.paused_until_ms.max(until.as_unix_millis());
        state
    }
}

/// A budget's state for stores that keep no shared state: one per process (every engine,
/// Integration and Service App alike, draws on it).
pub(crate) type LocalBudget = std::sync::Mutex<Option<BudgetState>>;

/// The token budget's [`LocalBudget`].
static LOCAL: LocalBudget = std::sync::Mutex::new(None);

/// [`TokenBudget::take`] on this process's own state.
pub(crate) fn take_local_budget(
    budget: &TokenBudget,
    now: Timestamp,
    urgent: bool,
    max_pause: Duration,
) -> BudgetDecision {
    take_local(&LOCAL, budget, now, urgent, max_pause)
}

/// [`TokenBudget::take`] on the process's own state `local`.
pub(crate) fn take_local(
    local: &LocalBudget,
    budget: &TokenBudget,
    now: Timestamp,
    urgent: bool,
    max_pause: Duration,
) -> BudgetDecision {
    let mut state = local.lock().unwrap_or_else(|e| e.into_inner());
    let decision = budget.take(*state, now, urgent, max_pause);
    if let BudgetDecision::Granted(next) = decision {
        *state = Some(next);
    }
    decision
}

/// [`TokenBudget::pause`] on this process's own state.
pub(crate) fn pause_local_budget(budget: &TokenBudget, now: Timestamp, until: Timestamp) {
    pause_local(&LOCAL, budget, now, until);
}

/// [`TokenBudget::pause`] on the process's own state `local`.
pub(crate) fn pause_local(local: &LocalBudget, budget: &TokenBudget, now: Timestamp, until: Timestamp) {
    let mut state = local.lock().unwrap_or_else(|e| e.into_inner());
    *state = Some(budget.pause(*state, now, until));
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(60);

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    /// Runs callers as fast as the budget lets them for `span`, and returns the times granted.
    fn grants(budget: &TokenBudget, span_ms: u64, urgent: bool) -> Vec<u64> {
        let (mut state, mut now, mut granted) = (None, 1_000_000u64, Vec::new());
        while now < 1_000_000 + span_ms {
            match budget.take(state, at(now), urgent, MAX) {
                BudgetDecision::Granted(s) => {
                    state = Some(s);
                    granted.push(now);
                }
                BudgetDecision::RetryAt(t) => {
                    assert!(t.as_unix_millis() > now, "a retry is always later");
                    now = t.as_unix_millis();
                }
            }
        }
        granted
    }

    #[test]
    fn no_window_ever_sees_more_than_the_budget() {
        for calls in [1, 10, 240, 300] {
            let budget = TokenBudget { calls, ..TokenBudget::default() };
            let granted = grants(&budget, 10 * 60_000, true);
            for (i, t) in granted.iter().enumerate() {
                let in_window = granted[i..].iter().take_while(|u| **u < t + 60_000).count();
                assert!(in_window <= calls as usize, "{calls}/min: {in_window} in the window from {t}");
            }
            assert!(
                granted.len() as u64 >= u64::from(calls) * 9,
                "{calls}/min: only {} in 10 minutes",
                granted.len()
            );
        }
    }

    #[test]
    fn background_work_leaves_a_reserve_for_expired_tokens() {
        let budget = TokenBudget::default();
        let mut state = None;
        let mut background = 0;
        while let BudgetDecision::Granted(s) = budget.take(state, at(0), false, MAX) {
            state = Some(s);
            background += 1;
        }
        assert!(background < 24, "background stops short of the bucket: {background}");
        assert!(
            matches!(budget.take(state, at(0), true, MAX), BudgetDecision::Granted(_)),
            "an expired token still goes"
        );
    }

    #[test]
    fn a_pause_holds_every_call_until_it_ends() {
        let budget = TokenBudget::default();
        let paused = budget.pause(None, at(1_000), at(31_000));
        assert_eq!(budget.take(Some(paused), at(30_999), true, MAX), BudgetDecision::RetryAt(at(31_000)));
        assert!(matches!(budget.take(Some(paused), at(31_000), true, MAX), BudgetDecision::Granted(_)));
        let state = BudgetState::from_json(&paused.to_json()).unwrap();
        assert_eq!(state, paused);
        assert_eq!(BudgetState::from_json(b"{"), None);
    }

    #[test]
    fn every_budget_lets_background_work_through_a_full_bucket() {
        for calls in 1..=20 {
            for percent in [0, 1, 50, 80, 100] {
                let budget = TokenBudget::per_minute(calls).with_background_percent(percent);
                assert!(
                    matches!(budget.take(None, at(0), false, MAX), BudgetDecision::Granted(_)),
                    "{calls}/min, {percent} %: a full bucket refuses background work"
                );
                let empty = BudgetState { milli_calls: 0, updated_at_ms: 0, paused_until_ms: 0 };
                match budget.take(Some(empty), at(0), false, MAX) {
                    BudgetDecision::RetryAt(t) => {
                        assert!(t > at(0) && t <= at(61_000), "{calls}/min, {percent} %: retry at {t:?}");
                        assert!(matches!(
                            budget.take(Some(empty), t, false, MAX),
                            BudgetDecision::Granted(_)
                        ));
                    }
                    other => panic!("an empty bucket granted {other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_pause_counts_for_at_most_the_cap_and_time_never_runs_backwards() {
        let budget = TokenBudget::default();
        let paused = budget.pause(None, at(0), at(3_600_000));
        assert_eq!(budget.take(Some(paused), at(1_000), true, MAX), BudgetDecision::RetryAt(at(61_000)));
        // A state written by a replica whose clock is ahead: no free refill for it.
        let ahead = BudgetState { milli_calls: 0, updated_at_ms: 100_000, paused_until_ms: 0 };
        assert!(matches!(budget.take(Some(ahead), at(50_000), true, MAX), BudgetDecision::RetryAt(_)));
    }
}
