//! A refresh schedule: when each key's token should next be refreshed, ordered by time, for
//! a daemon that sleeps until the earliest instead of scanning the store. Pure data; the
//! refresh points come from [`KeyStatus::refresh_at`] (core's policy: each key's place in its
//! refresh window, the same in every replica).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::key::TokenKey;
use crate::policy::KeyStatus;
use crate::time::Timestamp;

/// Keys come due this long after their refresh point: the drivers read a coarse clock
/// ([`CoarseClock::RESOLUTION`](crate::engine::CoarseClock::RESOLUTION)), and a wake a tick early
/// would find the token still fresh.
pub const WAKE_SLACK: Duration = Duration::from_millis(50);

/// When each key is due, ordered by time.
///
/// With a spacing ([`with_spacing`](Self::with_spacing)), the refresh points a key's status
/// gives are planned against the token budget: no two keys are placed within the spacing of
/// each other (the time the budget takes to admit one more background call), so a cohort whose
/// points crowd into one stretch is spread out. Keys only ever move *earlier* than their own
/// point (never later, which could let a token reach its expiry); a key moved earlier is
/// [`Due::ahead`] when it comes due, and is refreshed then although it is not in its window yet.
///
/// ```
/// use byova_core::engine::RefreshSchedule;
/// use byova_core::{OrgId, Timestamp, TokenKey};
/// let mut s = RefreshSchedule::default();
/// s.set(TokenKey::org(&OrgId::from_static("a")), Timestamp::from_unix_secs(20));
/// s.set(TokenKey::org(&OrgId::from_static("b")), Timestamp::from_unix_secs(10));
/// let due = s.take_due(Timestamp::from_unix_secs(15), 8);
/// assert_eq!(due.len(), 1);
/// assert_eq!(due[0].key, TokenKey::org(&OrgId::from_static("b")));
/// ```
#[derive(Debug, Default)]
pub struct RefreshSchedule {
    by_time: BTreeSet<(Timestamp, TokenKey)>,
    by_key: HashMap<TokenKey, Timestamp>,
    /// Keys planned earlier than their own refresh point, with that point.
    ahead: HashMap<TokenKey, Timestamp>,
    spacing: Duration,
}

/// A key that came due.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Due {
    /// The key.
    pub key: TokenKey,
    /// Planned ahead of its own refresh point (this one) to stay within the budget: refresh
    /// it now although its token is not in its refresh window yet. If that renews nothing
    /// (the token was obtained moments ago), schedule it at this point with
    /// [`set`](RefreshSchedule::set).
    pub ahead: Option<Timestamp>,
}

impl RefreshSchedule {
    /// An empty schedule that keeps planned points at least `spacing` apart (see the type's
    /// docs); [`spacing_for`](Self::spacing_for) derives it from a token budget.
    pub fn with_spacing(spacing: Duration) -> Self {
        Self { spacing, ..Self::default() }
    }

    /// The spacing that keeps background refreshes within `budget`: one call per
    /// `per / (calls × background share)`.
    pub fn spacing_for(budget: &crate::budget::TokenBudget) -> Duration {
        let background = u64::from(budget.calls) * u64::from(budget.background_percent.min(100)) / 100;
        if background == 0 {
            return Duration::ZERO;
        }
        budget.per / u32::try_from(background).unwrap_or(u32::MAX)
    }

    /// Schedules `key` at exactly `at` (replacing its earlier time): a retry, not a plan.
    pub fn set(&mut self, key: TokenKey, at: Timestamp) {
        self.ahead.remove(&key);
        self.insert(key, at);
    }

    fn insert(&mut self, key: TokenKey, at: Timestamp) {
        if let Some(old) = self.by_key.insert(key.clone(), at) {
            self.by_time.remove(&(old, key.clone()));
        }
        self.by_time.insert((at, key));
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &TokenKey) {
        self.ahead.remove(key);
        if let Some(old) = self.by_key.remove(key) {
            self.by_time.remove(&(old, key.clone()));
        }
    }

    /// The earliest time anything is due.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Takes up to `max` keys due at `now`, earliest first (those closest to expiry).
    pub fn take_due(&mut self, now: Timestamp, max: usize) -> Vec<Due> {
        let mut due = Vec::new();
        while due.len() < max {
            match self.by_time.first() {
                Some((at, _)) if *at <= now => {
                    if let Some((_, key)) = self.by_time.pop_first() {
                        self.by_key.remove(&key);
                        let ahead = self.ahead.remove(&key);
                        due.push(Due { key, ahead });
                    }
                }
                _ => break,
            }
        }
        due
    }

    /// Keys scheduled.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Applies what a key's status says: planned at its refresh point (not before
    /// `not_before`), moved earlier while other keys are planned within the spacing of it; or
    /// forgotten when nothing is stored or nobody can renew it.
    pub fn apply(&mut self, key: TokenKey, status: Option<&KeyStatus>, not_before: Timestamp) {
        let Some(own) = status.and_then(|s| s.refresh_at) else {
            self.remove(&key);
            return;
        };
        self.remove(&key);
        let own = own.saturating_add(WAKE_SLACK).max(not_before);
        let at = self.free_point(own, not_before);
        if at < own {
            self.ahead.insert(key.clone(), own);
        }
        self.insert(key, at);
    }

    /// The latest point at or before `at` (and not before `not_before`) with no planned key
    /// within the spacing of it; `not_before` when none is free (the budget then queues).
    fn free_point(&self, at: Timestamp, not_before: Timestamp) -> Timestamp {
        if self.spacing.is_zero() {
            return at;
        }
        let mut t = at;
        loop {
            let low = t.saturating_sub(self.spacing).saturating_add(Duration::from_millis(1));
            let high = t.saturating_add(self.spacing);
            let crowded = self
                .by_time
                .range((low, TokenKey::Integration)..)
                .take_while(|(when, _)| *when < high)
                .map(|(when, _)| *when)
                .min();
            match crowded {
                None => return t,
                Some(other) => {
                    let below = other.saturating_sub(self.spacing);
                    if below <= not_before || below >= t {
                        return not_before.max(below.min(t));
                    }
                    t = below;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::OrgId;

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(secs)
    }

    #[test]
    fn keys_come_due_in_time_order_and_once() {
        let mut s = RefreshSchedule::default();
        s.set(TokenKey::org(&OrgId::from_static("b")), at(20));
        s.set(TokenKey::org(&OrgId::from_static("a")), at(10));
        s.set(TokenKey::Integration, at(30));
        s.set(TokenKey::org(&OrgId::from_static("b")), at(5));
        assert_eq!(s.len(), 3);
        assert_eq!(s.next_due(), Some(at(5)));
        assert!(s.take_due(at(4), 10).is_empty());
        let keys = |due: Vec<Due>| due.into_iter().map(|d| d.key).collect::<Vec<_>>();
        assert_eq!(keys(s.take_due(at(10), 1)), [TokenKey::org(&OrgId::from_static("b"))]);
        assert_eq!(keys(s.take_due(at(10), 10)), [TokenKey::org(&OrgId::from_static("a"))]);
        assert_eq!(s.next_due(), Some(at(30)));
        s.remove(&TokenKey::Integration);
        assert_eq!((s.len(), s.next_due()), (0, None));
    }

    fn status(refresh_at: u64) -> KeyStatus {
        let tokens = crate::tokens::OAuthTokens::new(crate::secret::AccessToken::new("a"), 1_000, at(0));
        let mut status =
            crate::policy::RefreshPolicy::default().key_status(TokenKey::Integration, &tokens, at(0), 1);
        status.refresh_at = Some(at(refresh_at));
        status
    }

    /// Item 5 of the brief: points that crowd into one stretch are spread to the budget's pace,
    /// only ever earlier than their own, and those moved are marked ahead.
    #[test]
    fn crowded_points_move_earlier_to_the_budgets_pace() {
        let mut s = RefreshSchedule::with_spacing(Duration::from_secs(3));
        for i in 0..10 {
            s.apply(TokenKey::org(&OrgId::new(&format!("o{i}")).unwrap()), Some(&status(100)), at(0));
        }
        let mut points: Vec<(Timestamp, Option<Timestamp>)> = Vec::new();
        while let Some(next) = s.next_due() {
            for due in s.take_due(next, 100) {
                points.push((next, due.ahead));
            }
        }
        points.sort();
        assert_eq!(points.len(), 10);
        let slack = WAKE_SLACK;
        assert_eq!(points.last().unwrap().0, at(100).saturating_add(slack), "the last keeps its own point");
        for pair in points.windows(2) {
            assert!(pair[1].0.saturating_duration_since(pair[0].0) >= Duration::from_secs(3), "{points:?}");
        }
        assert_eq!(points.iter().filter(|(_, ahead)| ahead.is_some()).count(), 9);
        assert!(points[0].0 >= at(100 - 27), "no earlier than needed: {points:?}");
        // Never before `not_before`: what cannot fit waits for the budget instead.
        let mut s = RefreshSchedule::with_spacing(Duration::from_secs(30));
        for i in 0..5 {
            s.apply(TokenKey::org(&OrgId::new(&format!("o{i}")).unwrap()), Some(&status(100)), at(90));
        }
        assert!(s.next_due().unwrap() >= at(90));
        // A spacing from the budget: 25 a minute, 80 % for the background -> 3 s.
        let budget = crate::budget::TokenBudget::per_minute(25);
        assert_eq!(RefreshSchedule::spacing_for(&budget), Duration::from_secs(3));
    }
}
