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
/// ([`CoarseClock::RESOLUTION`](crate::CoarseClock::RESOLUTION)), and a wake a tick early
/// would find the token still fresh.
pub const WAKE_SLACK: Duration = Duration::from_millis(50);

/// When each key is due, ordered by time.
///
/// ```
/// use byova_core::{RefreshSchedule, Timestamp, TokenKey};
/// let mut s = RefreshSchedule::default();
/// s.set(TokenKey::org("a"), Timestamp::from_unix_secs(20));
/// s.set(TokenKey::org("b"), Timestamp::from_unix_secs(10));
/// assert_eq!(s.take_due(Timestamp::from_unix_secs(15), 8), [TokenKey::org("b")]);
/// ```
#[derive(Debug, Default)]
pub struct RefreshSchedule {
    by_time: BTreeSet<(Timestamp, TokenKey)>,
    by_key: HashMap<TokenKey, Timestamp>,
}

impl RefreshSchedule {
    /// Schedules `key` at `at` (replacing its earlier time).
    pub fn set(&mut self, key: TokenKey, at: Timestamp) {
        if let Some(old) = self.by_key.insert(key.clone(), at) {
            self.by_time.remove(&(old, key.clone()));
        }
        self.by_time.insert((at, key));
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &TokenKey) {
        if let Some(old) = self.by_key.remove(key) {
            self.by_time.remove(&(old, key.clone()));
        }
    }

    /// The earliest time anything is due.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Takes up to `max` keys due at `now`, earliest first (those closest to expiry).
    pub fn take_due(&mut self, now: Timestamp, max: usize) -> Vec<TokenKey> {
        let mut due = Vec::new();
        while due.len() < max {
            match self.by_time.first() {
                Some((at, _)) if *at <= now => {
                    if let Some((_, key)) = self.by_time.pop_first() {
                        self.by_key.remove(&key);
                        due.push(key);
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

    /// Applies what a key's status says: scheduled at its refresh point (not before
    /// `not_before`), or forgotten when nothing is stored or nobody can renew it.
    pub fn apply(&mut self, key: TokenKey, status: Option<&KeyStatus>, not_before: Timestamp) {
        match status.and_then(|s| s.refresh_at) {
            Some(at) => self.set(key, at.saturating_add(WAKE_SLACK).max(not_before)),
            None => self.remove(&key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(secs)
    }

    #[test]
    fn keys_come_due_in_time_order_and_once() {
        let mut s = RefreshSchedule::default();
        s.set(TokenKey::org("b"), at(20));
        s.set(TokenKey::org("a"), at(10));
        s.set(TokenKey::Integration, at(30));
        s.set(TokenKey::org("b"), at(5));
        assert_eq!(s.len(), 3);
        assert_eq!(s.next_due(), Some(at(5)));
        assert!(s.take_due(at(4), 10).is_empty());
        assert_eq!(s.take_due(at(10), 1), [TokenKey::org("b")]);
        assert_eq!(s.take_due(at(10), 10), [TokenKey::org("a")]);
        assert_eq!(s.next_due(), Some(at(30)));
        s.remove(&TokenKey::Integration);
        assert_eq!((s.len(), s.next_due()), (0, None));
    }
}
