//! Time as an input: [`Timestamp`] and the [`Clock`] trait the drivers implement.
//!
//! byova-core's logic never reads the clock; every decision takes `now` as an argument.
//! [`SystemClock`] is the production clock the drivers hand in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time, in milliseconds since the Unix epoch (UTC).
///
/// Stored records keep timestamps in this form, so it is stable across platforms and upgrades.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// From milliseconds since the Unix epoch.
    pub const fn from_unix_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// From whole seconds since the Unix epoch.
    pub const fn from_unix_secs(secs: u64) -> Self {
        Self(secs.saturating_mul(1000))
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_unix_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the Unix epoch.
    pub const fn as_unix_secs(self) -> u64 {
        self.0 / 1000
    }

    /// This instant plus `d`, saturating at the far future.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(duration_millis(d)))
    }

    /// This instant minus `d`, saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(duration_millis(d)))
    }

    /// How long after `earlier` this instant is; zero when it is not later.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        // A clock set before 1970 is treated as the epoch rather than failing.
        let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Self(duration_millis(since))
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        UNIX_EPOCH + Duration::from_millis(t.0)
    }
}

/// A source of the current time. Drivers own the clock; tests use a fake one.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        SystemTime::now().into()
    }
}

/// The system clock read from a process-wide cache that a background thread refreshes every
/// [`CoarseClock::RESOLUTION`]: reading it costs one atomic load instead of a system call.
///
/// This is the drivers' default clock, because the hot path (a fresh token from the cache)
/// reads the clock on every call and `clock_gettime` would otherwise be most of its cost.
/// Token lifetimes are minutes to weeks and the expiry buffer is a minute, so 10 ms of
/// staleness never changes a decision. The thread (`byova-clock`) starts on first use and
/// sleeps between ticks; it holds no resources beyond its stack.
#[derive(Clone, Copy, Debug, Default)]
pub struct CoarseClock;

impl CoarseClock {
    /// How stale a reading may be.
    pub const RESOLUTION: Duration = Duration::from_millis(10);

    fn cell() -> &'static std::sync::atomic::AtomicU64 {
        use std::sync::OnceLock;
        use std::sync::atomic::{AtomicU64, Ordering};
        static NOW: OnceLock<&'static AtomicU64> = OnceLock::new();
        NOW.get_or_init(|| {
            let cell: &'static AtomicU64 =
                Box::leak(Box::new(AtomicU64::new(SystemClock.now().as_unix_millis())));
            let ticker = std::thread::Builder::new().name("byova-clock".into()).spawn(move || {
                loop {
                    std::thread::sleep(Self::RESOLUTION);
                    cell.store(SystemClock.now().as_unix_millis(), Ordering::Relaxed);
                }
            });
            // Without the ticker every reading falls back to the system clock (see `now`).
            if ticker.is_err() {
                cell.store(u64::MAX, Ordering::Relaxed);
            }
            cell
        })
    }
}

impl Clock for CoarseClock {
    #[inline]
    fn now(&self) -> Timestamp {
        let ms = Self::cell().load(std::sync::atomic::Ordering::Relaxed);
        if ms == u64::MAX { SystemClock.now() } else { Timestamp(ms) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_panicking() {
        let t = Timestamp::from_unix_secs(10);
        assert_eq!(t.saturating_add(Duration::from_millis(5)).as_unix_millis(), 10_005);
        assert_eq!(t.saturating_sub(Duration::from_secs(60)), Timestamp::EPOCH);
        assert_eq!(
            Timestamp::from_unix_millis(u64::MAX).saturating_add(Duration::MAX).as_unix_millis(),
            u64::MAX
        );
        assert_eq!(Timestamp::EPOCH.saturating_duration_since(t), Duration::ZERO);
        assert_eq!(t.saturating_duration_since(Timestamp::EPOCH), Duration::from_secs(10));
    }

    #[test]
    fn the_coarse_clock_follows_the_system_clock() {
        let a = CoarseClock.now();
        let s = SystemClock.now();
        assert!(s.saturating_duration_since(a) <= Duration::from_millis(500), "{a:?} vs {s:?}");
        std::thread::sleep(Duration::from_millis(50));
        assert!(CoarseClock.now() > a, "the ticker advances it");
    }

    #[test]
    fn system_time_round_trips_at_millisecond_precision() {
        let t = Timestamp::from_unix_millis(1_764_000_000_123);
        assert_eq!(Timestamp::from(SystemTime::from(t)), t);
    }
}
