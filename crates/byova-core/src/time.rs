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

    /// Parses an RFC 3339 time as Webex writes it (`2026-01-02T03:04:05.678Z`, or with an
    /// offset; fractions beyond milliseconds are cut). `None` for anything else, or before 1970.
    ///
    /// ```
    /// use byova_core::Timestamp;
    /// let t = Timestamp::parse_rfc3339("2026-01-02T03:04:05.678Z").unwrap();
    /// assert_eq!(t.to_rfc3339(), "2026-01-02T03:04:05.678Z");
    /// assert_eq!(Timestamp::parse_rfc3339("2026-01-02T05:04:05+02:00"), Timestamp::parse_rfc3339("2026-01-02T03:04:05Z"));
    /// assert!(Timestamp::parse_rfc3339("yesterday").is_none());
    /// ```
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let b = text.trim().as_bytes();
        let num = |from: usize, len: usize| -> Option<i64> {
            let digits = b.get(from..from + len)?;
            digits.iter().try_fold(0i64, |acc, d| d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0')))
        };
        if b.len() < 20
            || b[4] != b'-'
            || b[7] != b'-'
            || !matches!(b[10], b'T' | b't' | b' ')
            || b[13] != b':'
            || b[16] != b':'
        {
            return None;
        }
        let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
        let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        let mut i = 19;
        let mut millis = 0i64;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                if i - start < 3 {
                    millis = millis * 10 + i64::from(b[i] - b'0');
                }
                i += 1;
            }
            if i == start {
                return None;
            }
            for _ in (i - start)..3 {
                millis *= 10;
            }
        }
        let offset_secs = match b.get(i..)? {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
                let secs = num(i + 1, 2)? * 3600 + num(i + 4, 2)? * 60;
                if *sign == b'+' { secs } else { -secs }
            }
            _ => return None,
        };
        let days = days_from_civil(year, month, day);
        let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
        let ms = secs.checked_mul(1000)?.checked_add(millis)?;
        u64::try_from(ms).ok().map(Self)
    }

    /// This instant as RFC 3339 UTC with milliseconds: `2026-01-02T03:04:05.678Z`.
    pub fn to_rfc3339(self) -> String {
        let secs = i64::try_from(self.0 / 1000).unwrap_or(i64::MAX);
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            self.0 % 1000
        )
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
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

    /// Whether this is [`CoarseClock`], which a driver then reads without a dynamic call. Not
    /// for other clocks to answer `true`: a clock that does is never asked the time.
    #[doc(hidden)]
    fn is_coarse(&self) -> bool {
        false
    }
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

    /// The reading: one relaxed load of a static. `0` until the ticker runs (the first read
    /// starts it), `u64::MAX` when it could not be started; the system clock answers both.
    #[inline]
    pub(crate) fn read() -> Timestamp {
        let ms = COARSE_NOW.load(std::sync::atomic::Ordering::Relaxed);
        if ms == 0 || ms == u64::MAX { Self::read_cold() } else { Timestamp(ms) }
    }

    #[cold]
    fn read_cold() -> Timestamp {
        use std::sync::atomic::Ordering;
        static TICKER: std::sync::Once = std::sync::Once::new();
        TICKER.call_once(|| {
            COARSE_NOW.store(SystemClock.now().as_unix_millis().max(1), Ordering::Relaxed);
            let ticker = std::thread::Builder::new().name("byova-clock".into()).spawn(|| {
                loop {
                    std::thread::sleep(Self::RESOLUTION);
                    COARSE_NOW.store(SystemClock.now().as_unix_millis().max(1), Ordering::Relaxed);
                }
            });
            // Without the ticker every reading falls back to the system clock.
            if ticker.is_err() {
                COARSE_NOW.store(u64::MAX, Ordering::Relaxed);
            }
        });
        SystemClock.now()
    }
}

/// [`CoarseClock`]'s reading in milliseconds (see [`CoarseClock::read`]).
static COARSE_NOW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Clock for CoarseClock {
    #[inline]
    fn now(&self) -> Timestamp {
        Self::read()
    }

    fn is_coarse(&self) -> bool {
        true
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
        // Only the coarse clock is read past its vtable; any other (a test's fake) is asked.
        assert!(CoarseClock.is_coarse() && !SystemClock.is_coarse());
    }

    #[test]
    fn rfc3339_round_trips_and_refuses_garbage() {
        for ms in [0u64, 951_782_400_000, 1_764_000_000_123, 4_102_444_799_999] {
            let t = Timestamp::from_unix_millis(ms);
            assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t), "{}", t.to_rfc3339());
        }
        assert_eq!(
            Timestamp::parse_rfc3339("2000-02-29T00:00:00Z"),
            Some(Timestamp::from_unix_secs(951_782_400))
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2026-01-02T03:04:05.6789123Z"),
            Timestamp::parse_rfc3339("2026-01-02T03:04:05.678Z")
        );
        for bad in [
            "",
            "2026-01-02",
            "2026-13-02T03:04:05Z",
            "2026-01-02T03:04:05",
            "1969-12-31T23:59:59Z",
            "2026-01-02T03:04:05.Z",
            "２026-01-02T03:04:05Z",
        ] {
            assert!(Timestamp::parse_rfc3339(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn system_time_round_trips_at_millisecond_precision() {
        let t = Timestamp::from_unix_millis(1_764_000_000_123);
        assert_eq!(Timestamp::from(SystemTime::from(t)), t);
    }
}
