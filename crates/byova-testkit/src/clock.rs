//! A fake clock for tests: time moves only when the test says so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use byova_core::{Clock, Timestamp};

/// A [`Clock`] that stands still until [`advance`](FakeClock::advance) or
/// [`set`](FakeClock::set) moves it. Share it through an `Arc`.
#[derive(Debug)]
pub struct FakeClock(AtomicU64);

impl FakeClock {
    /// A clock showing `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(AtomicU64::new(start.as_unix_millis()))
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock to `t` (backwards too, to test clock steps).
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.as_unix_millis(), Ordering::SeqCst);
    }
}

impl Default for FakeClock {
    /// A clock at 2026-01-01T00:00:00Z.
    fn default() -> Self {
        Self::new(Timestamp::from_unix_secs(1_767_225_600))
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_unix_millis(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_only_when_told() {
        let c = FakeClock::new(Timestamp::from_unix_secs(10));
        assert_eq!(c.now(), Timestamp::from_unix_secs(10));
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.now().as_unix_millis(), 11_500);
        c.set(Timestamp::from_unix_secs(3));
        assert_eq!(c.now(), Timestamp::from_unix_secs(3));
    }
}
