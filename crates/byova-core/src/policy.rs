//! The refresh policy (is a token fresh, due for refresh-ahead, or expired?) and the retry
//! schedule (wait how long before trying again, or give up?). Pure functions of their inputs;
//! both flavours ask these and never decide on their own.

use std::time::Duration;

use crate::error::Error;
use crate::http::RetryClass;
use crate::key::TokenKey;
use crate::time::Timestamp;
use crate::tokens::OAuthTokens;

/// How fresh a stored token is at a given moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Use it; nothing to do.
    Fresh,
    /// Still usable, but refresh now so callers never see it expire.
    RefreshAhead,
    /// Within the safety buffer of its expiry (or past it): refresh before use.
    Expired,
}

/// When tokens count as expired and when they are refreshed ahead of expiry.
///
/// Every duration here is a fraction of the token's own lifetime, so tokens of any lifetime
/// work: a 10 s token is usable for 9 s and refreshed from somewhere in 5–8 s on; a 14-day
/// token counts as expired 60 s early and is refreshed days ahead.
///
/// **Spread refresh points.** Each key's refresh point lies in a window of its token's life
/// (`refresh_from_percent` to `refresh_ahead_percent`, 50–80 % by default), placed by a hash
/// of the key alone, so every replica agrees on it and a cohort of orgs authorized, imported
/// or restored together spreads over the window instead of arriving at once.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefreshPolicy {
    /// A token within this much of its expiry (at most a tenth of its lifetime) is treated as
    /// expired (clock skew, request latency).
    pub expiry_buffer: Duration,
    /// The earliest point of the refresh window, in percent of the lifetime (0–100).
    pub refresh_from_percent: u8,
    /// The latest point of the refresh window, in percent of the lifetime (0–100); at the
    /// same value as `refresh_from_percent` every key refreshes at that one point.
    pub refresh_ahead_percent: u8,
    /// Webex caps the live tokens of a user (about 750) and every refresh mints one, so a 401
    /// that a fresh token does not cure must not buy another. When the retry of a request
    /// with the token renewed after a 401 is rejected too, further 401s on that token are
    /// handed back without a refresh for this long (doubling with each renewal in a row, up
    /// to 8 times: at most one refresh per 80 minutes, well under the cap). A token Webex
    /// really revoked renews at once, however young, unless it is in such a cool-down: then
    /// at its end (or at its scheduled refresh). Zero turns the cool-down off. 10 minutes by
    /// default.
    pub rejection_cooldown: Duration,
    /// A forced refresh (`refresh`, `refresh_for_org`, `refresh_all_orgs`, without a refresh
    /// token of the caller's) of tokens obtained less than this long ago (a quarter of their
    /// lifetime at most), still valid and not rejected, returns them without calling Webex.
    /// Zero forces every time. 10 minutes by default.
    pub forced_refresh_floor: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            expiry_buffer: Duration::from_secs(60),
            refresh_from_percent: 50,
            refresh_ahead_percent: 80,
            rejection_cooldown: Duration::from_secs(600),
            forced_refresh_floor: Duration::from_secs(600),
        }
    }
}

impl RefreshPolicy {
    /// Classifies `tokens` at `now`. `key_seed` is [`key_seed`] of the tokens' key: the same
    /// key gives the same answer in every process.
    pub fn assess(&self, tokens: &OAuthTokens, now: Timestamp, key_seed: u64) -> Freshness {
        if tokens.is_expired(self.buffer_for(tokens), now) {
            return Freshness::Expired;
        }
        if now >= self.refresh_ahead_at(tokens, key_seed) {
            Freshness::RefreshAhead
        } else {
            Freshness::Fresh
        }
    }

    /// How long 401s on `tokens` renew nothing once the cool-down starts: the configured
    /// cool-down, doubled for each renewal in a row beyond the first (at most 8 times).
    pub fn rejection_cooldown_for(&self, tokens: &OAuthTokens) -> Duration {
        self.rejection_cooldown.saturating_mul(1u32 << tokens.renewals.saturating_sub(1).min(3))
    }

    /// Until when a 401 on `tokens` is not answered with a refresh at `now`, or `None` when it
    /// renews them. It is not when a retry with them was rejected too (the cool-down stored
    /// with them, [`OAuthTokens::cooldown_until`]), or when they are the
    /// third renewal in a row and still within the cool-down of
    /// their minting (a client that never reports a rejected retry cannot loop either).
    pub fn rejection_cooldown_until(&self, tokens: &OAuthTokens, now: Timestamp) -> Option<Timestamp> {
        if self.rejection_cooldown.is_zero() {
            return None;
        }
        if let Some(until) = tokens.cooldown_until.filter(|until| now < *until) {
            return Some(until);
        }
        let until = tokens.obtained_at.saturating_add(self.rejection_cooldown_for(tokens));
        (tokens.renewals >= AUTOMATIC_COOLDOWN_RENEWALS && now < until).then_some(until)
    }

    /// Whether a forced refresh of `tokens` at `now` is answered with them instead (see
    /// [`forced_refresh_floor`](Self::forced_refresh_floor)).
    pub fn within_forced_floor(&self, tokens: &OAuthTokens, now: Timestamp) -> bool {
        // Scaled like every other duration here: a quarter of a short token's life at most.
        let floor = self.forced_refresh_floor.min(tokens.lifetime() / 4);
        !tokens.reauthorization_required
            && tokens.expires_in > 0
            && now < tokens.obtained_at.saturating_add(floor)
            && !tokens.is_expired(self.buffer_for(tokens), now)
    }

    /// The expiry buffer for `tokens`: the configured one, or a tenth of their lifetime when
    /// that is shorter.
    pub fn buffer_for(&self, tokens: &OAuthTokens) -> Duration {
        self.expiry_buffer.min(tokens.lifetime() / 10)
    }

    /// The moment `tokens` become due for refresh: their key's place in the refresh window.
    pub fn refresh_ahead_at(&self, tokens: &OAuthTokens, key_seed: u64) -> Timestamp {
        let lifetime = tokens.lifetime();
        let end = u32::from(self.refresh_ahead_percent.min(100));
        let start = u32::from(self.refresh_from_percent).min(end);
        // Divided first: no lifetime, however absurd, can overflow.
        let opens = tokens.obtained_at.saturating_add(lifetime / 100 * start);
        let window = lifetime / 100 * (end - start);
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let offset_ms = if window_ms == 0 { 0 } else { splitmix64(key_seed) % window_ms.saturating_add(1) };
        opens.saturating_add(Duration::from_millis(offset_ms))
    }
}

/// Renewals on 401 in a row after which a 401 on the newest renews nothing within its
/// cool-down, even when no rejected retry was reported.
pub(crate) const AUTOMATIC_COOLDOWN_RENEWALS: u32 = 3;

/// What places `key` in the refresh window: a hash of the key alone (FNV-1a), so every
/// replica computes the same refresh point for it.
pub fn key_seed(key: &TokenKey) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes: &[u8] = match key {
        TokenKey::Integration => b"\x00integration",
        TokenKey::Org(org) => org.as_bytes(),
    };
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What a readiness probe needs to know about one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenState {
    /// The access token is fresh.
    Valid,
    /// Still valid; it will be refreshed on next use (refresh-ahead).
    RefreshSoon,
    /// The access token expired; it will be refreshed on next use.
    Expired,
    /// A person must authorize again (the refresh token was rejected or has expired).
    ReauthorizationRequired,
}

impl TokenState {
    /// A short lowercase name for JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Valid => "valid",
            TokenState::RefreshSoon => "refresh_soon",
            TokenState::Expired => "expired",
            TokenState::ReauthorizationRequired => "reauthorization_required",
        }
    }
}

/// One key's status, for readiness probes and `byova status`. Holds no secret.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyStatus {
    /// The key.
    pub key: TokenKey,
    /// Its state.
    pub state: TokenState,
    /// When the access token expires.
    pub access_expires_at: Timestamp,
    /// When the refresh token expires, when known.
    pub refresh_expires_at: Option<Timestamp>,
    /// When the key's refresh-ahead point comes (its place in the refresh window); `None`
    /// when nobody can renew it without a person (marked, or an Integration's without a
    /// refresh token). A scheduler wakes for the key then.
    pub refresh_at: Option<Timestamp>,
    /// Webex rejected the stored refresh token: no process sends it again. The Integration
    /// needs a person to authorize again; an org is fetched anew with the Integration's bearer
    /// when it is authorized, else it needs registering again (`save_registration`, a new
    /// `authorized` delivery).
    pub refresh_token_rejected: bool,
}

impl RefreshPolicy {
    /// The [`KeyStatus`] of `tokens` at `now`.
    pub fn key_status(
        &self,
        key: TokenKey,
        tokens: &OAuthTokens,
        now: Timestamp,
        jitter_seed: u64,
    ) -> KeyStatus {
        // An org is renewed by a fetch even without a live refresh token (or with one Webex
        // rejected); the Integration needs one that has not expired and was not rejected.
        let renewable = matches!(key, TokenKey::Org(_))
            || (!tokens.reauthorization_required
                && tokens.refresh_token.is_some()
                && tokens.refresh_token_expires_at().is_none_or(|at| at > now));
        KeyStatus {
            state: self.state(tokens, now, jitter_seed),
            access_expires_at: tokens.expires_at(),
            refresh_expires_at: tokens.refresh_token_expires_at(),
            refresh_at: renewable.then(|| self.refresh_ahead_at(tokens, jitter_seed)),
            refresh_token_rejected: tokens.reauthorization_required,
            key,
        }
    }

    /// The state of `tokens` at `now`.
    pub fn state(&self, tokens: &OAuthTokens, now: Timestamp, jitter_seed: u64) -> TokenState {
        let refresh_dead = tokens.reauthorization_required
            || tokens.refresh_token.is_none()
            || tokens.refresh_token_expires_at().is_some_and(|at| at <= now);
        match self.assess(tokens, now, jitter_seed) {
            Freshness::Fresh => TokenState::Valid,
            Freshness::RefreshAhead if refresh_dead => TokenState::Valid,
            Freshness::RefreshAhead => TokenState::RefreshSoon,
            Freshness::Expired if refresh_dead => TokenState::ReauthorizationRequired,
            Freshness::Expired => TokenState::Expired,
        }
    }
}

/// A small, well-mixed hash so nearby seeds give unrelated jitter.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// How callers and processes coordinate around one key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoordinationPolicy {
    /// How long a refresh lease lasts; longer than a refresh with all its retries takes.
    pub lease_ttl: Duration,
    /// How often a caller without the lease re-reads storage while another process refreshes.
    pub poll_interval: Duration,
    /// A cached token is re-read from storage at least this often, so a deauthorization or a
    /// refresh elsewhere is seen.
    pub cache_revalidate: Duration,
}

impl Default for CoordinationPolicy {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(60),
            poll_interval: Duration::from_millis(50),
            cache_revalidate: Duration::from_secs(30),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Wait this long, then send the request again.
    RetryAfter(Duration),
    /// Return the error to the caller.
    GiveUp,
}

/// Capped, jittered exponential backoff that honours `Retry-After`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in total, the first included.
    pub max_attempts: u32,
    /// The first backoff delay.
    pub base_delay: Duration,
    /// No backoff delay is longer than this.
    pub max_delay: Duration,
    /// A `Retry-After` longer than this is not waited for: the error goes to the caller.
    pub max_retry_after: Duration,
    /// The wait when a 429 carries no usable `Retry-After`.
    pub default_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(60),
            default_retry_after: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }

    /// Decides what follows failed attempt number `attempt` (1 for the first) of a request of
    /// class `class` that failed with `error`. `random` is a uniform sample in `0..=u32::MAX`
    /// that spreads backoff ("full jitter").
    pub fn decide(&self, class: RetryClass, attempt: u32, error: &Error, random: u32) -> RetryDecision {
        if attempt >= self.max_attempts || !error.is_retryable() {
            return RetryDecision::GiveUp;
        }
        let certainly_unprocessed = matches!(error, Error::RateLimited { .. })
            || matches!(error, Error::Transport { maybe_sent: false, .. });
        if class == RetryClass::OnlyIfNotProcessed && !certainly_unprocessed {
            return RetryDecision::GiveUp;
        }
        if let Error::RateLimited { retry_after, .. } = error {
            let wait = retry_after.unwrap_or(self.default_retry_after);
            return if wait > self.max_retry_after {
                RetryDecision::GiveUp
            } else {
                RetryDecision::RetryAfter(wait)
            };
        }
        let exp = self.base_delay.saturating_mul(1u32 << (attempt - 1).min(16));
        let cap = exp.min(self.max_delay);
        let fraction = f64::from(random) / f64::from(u32::MAX);
        RetryDecision::RetryAfter(cap.mul_f64(0.5 + fraction / 2.0))
    }
}

/// What [`TokenEngine::invalidate`](crate::engine::TokenEngine::invalidate) did with a token Webex answered 401 to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// The token is not served again: the next request gets another (one refresh for every
    /// caller and every process sharing the store). Retry the request once with it.
    Renew,
    /// A request retried with this token after a 401 was rejected too: the 401 is not about
    /// the token (a missing scope, a resource this identity may not see). Nothing was
    /// refreshed, and until `until` no 401 on this token is (Webex caps the live tokens of a
    /// user; every refresh mints one). Hand the 401 to the caller.
    NotAboutTheToken {
        /// When a 401 on this token may renew it again.
        until: Timestamp,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiFailure;
    use crate::key::OrgId;
    use crate::secret::AccessToken;

    fn tokens(obtained_secs: u64, expires_in: u64) -> OAuthTokens {
        OAuthTokens::new(AccessToken::new("a"), expires_in, Timestamp::from_unix_secs(obtained_secs))
    }

    #[test]
    fn fresh_then_refresh_ahead_then_expired() {
        let p = RefreshPolicy { refresh_from_percent: 80, ..RefreshPolicy::default() };
        let t = tokens(1_000, 1_000);
        assert_eq!(p.assess(&t, Timestamp::from_unix_secs(1_000), 1), Freshness::Fresh);
        assert_eq!(p.assess(&t, Timestamp::from_unix_secs(1_799), 1), Freshness::Fresh);
        assert_eq!(p.assess(&t, Timestamp::from_unix_secs(1_800), 1), Freshness::RefreshAhead);
        // Expired 60 s (the buffer) before the real expiry at 2_000.
        assert_eq!(p.assess(&t, Timestamp::from_unix_secs(1_940), 1), Freshness::Expired);
        assert_eq!(p.assess(&t, Timestamp::from_unix_secs(5_000), 1), Freshness::Expired);
    }

    #[test]
    fn a_cohort_spreads_evenly_over_the_refresh_window() {
        let p = RefreshPolicy::default();
        let t = tokens(0, 1_800);
        let mut deciles = [0u32; 10];
        for i in 0..10_000 {
            let at =
                p.refresh_ahead_at(&t, key_seed(&TokenKey::org(&OrgId::new(&format!("org-{i}")).unwrap())));
            let secs = at.as_unix_millis() as f64 / 1000.0;
            assert!((900.0..=1_440.0).contains(&secs), "inside 50-80 % of 1,800 s: {secs}");
            let decile = (((secs - 900.0) / 540.0) * 10.0).min(9.0) as usize;
            deciles[decile] += 1;
        }
        for (i, n) in deciles.iter().enumerate() {
            assert!((800..1_200).contains(n), "decile {i} of the window got {n} of 10,000: {deciles:?}");
        }
    }

    #[test]
    fn every_replica_places_a_key_at_the_same_point() {
        let p = RefreshPolicy::default();
        let t = tokens(0, 3_600);
        let key = TokenKey::org(&OrgId::from_static("63b02f90-9cc6-43b8-aa6d-cad425ac554c"));
        assert_eq!(p.refresh_ahead_at(&t, key_seed(&key)), p.refresh_ahead_at(&t, key_seed(&key.clone())));
        assert_ne!(key_seed(&key), key_seed(&TokenKey::Integration));
    }

    #[test]
    fn short_lifetimes_stay_usable_for_most_of_their_life() {
        let p = RefreshPolicy::default();
        let t = tokens(1_000, 10);
        let at = |ms: u64| Timestamp::from_unix_millis(1_000_000 + ms);
        assert_eq!(p.assess(&t, at(0), 3), Freshness::Fresh, "a 10 s token is fresh when issued");
        assert_eq!(p.assess(&t, at(4_900), 3), Freshness::Fresh, "never before half its life");
        assert_eq!(p.assess(&t, at(8_500), 3), Freshness::RefreshAhead, "always by 80 %");
        assert_eq!(p.assess(&t, at(9_000), 3), Freshness::Expired, "a tenth of the lifetime as buffer");
        let long = tokens(0, 1_209_599);
        assert_eq!(p.buffer_for(&long), Duration::from_secs(60), "capped by the configured buffer");
        let ahead = p.refresh_ahead_at(&long, 3);
        assert!(long.expires_at().saturating_duration_since(ahead) > Duration::from_secs(2 * 86_400));
    }

    #[test]
    fn short_lifetimes_refresh_inside_their_window() {
        let p = RefreshPolicy { expiry_buffer: Duration::ZERO, ..RefreshPolicy::default() };
        let t = tokens(0, 10);
        for seed in 0..1000 {
            let at = p.refresh_ahead_at(&t, seed);
            assert!(at >= Timestamp::from_unix_secs(5) && at <= Timestamp::from_unix_secs(8), "{at:?}");
        }
    }

    #[test]
    fn states_for_readiness_probes() {
        use crate::secret::RefreshToken;
        let p = RefreshPolicy { refresh_from_percent: 80, ..RefreshPolicy::default() };
        let with_rt = tokens(1_000, 1_000).with_refresh_token(RefreshToken::new("r"), Some(10_000));
        let at = Timestamp::from_unix_secs;
        assert_eq!(p.state(&with_rt, at(1_100), 0), TokenState::Valid);
        assert_eq!(p.state(&with_rt, at(1_850), 0), TokenState::RefreshSoon);
        assert_eq!(p.state(&with_rt, at(3_000), 0), TokenState::Expired);
        assert_eq!(p.state(&with_rt.clone().rejected(), at(3_000), 0), TokenState::ReauthorizationRequired);
        assert_eq!(
            p.state(&with_rt.clone().rejected(), at(1_850), 0),
            TokenState::Valid,
            "usable while it lasts"
        );
        assert_eq!(
            p.state(&with_rt, at(20_000), 0),
            TokenState::ReauthorizationRequired,
            "refresh token expired"
        );
        assert_eq!(p.state(&tokens(1_000, 1_000), at(3_000), 0), TokenState::ReauthorizationRequired);
        assert_eq!(TokenState::RefreshSoon.as_str(), "refresh_soon");
    }

    #[test]
    fn the_rejection_cooldown_doubles_with_renewals_and_can_be_turned_off() {
        let p = RefreshPolicy::default();
        let at = Timestamp::from_unix_secs;
        let mut t = tokens(1_000, 3_600);
        assert_eq!(p.rejection_cooldown_until(&t, at(1_001)), None, "an ordinary token renews");
        t.cooldown_until = Some(at(1_600));
        assert_eq!(p.rejection_cooldown_until(&t, at(1_001)), Some(at(1_600)), "a rejected retry");
        assert_eq!(p.rejection_cooldown_until(&t, at(1_600)), None, "until then only");
        t.cooldown_until = None;
        t.renewals = 2;
        assert_eq!(p.rejection_cooldown_for(&t), Duration::from_secs(1_200));
        assert_eq!(p.rejection_cooldown_until(&t, at(1_001)), None, "two renewals in a row still renew");
        t.renewals = 3;
        assert_eq!(p.rejection_cooldown_until(&t, at(1_001)), Some(at(1_000 + 2_400)), "the third holds");
        t.renewals = 40;
        assert_eq!(p.rejection_cooldown_for(&t), Duration::from_secs(600 * 8), "capped at 8 times");
        let off = RefreshPolicy { rejection_cooldown: Duration::ZERO, ..RefreshPolicy::default() };
        t.cooldown_until = Some(at(1_600));
        assert_eq!(off.rejection_cooldown_until(&t, at(1_001)), None);
    }

    #[test]
    fn forced_refreshes_have_a_floor_that_expiry_and_marks_cross() {
        let p = RefreshPolicy::default();
        let at = Timestamp::from_unix_secs;
        let t = tokens(1_000, 3_600);
        assert!(p.within_forced_floor(&t, at(1_599)));
        assert!(!p.within_forced_floor(&t, at(1_600)), "10 minutes by default");
        assert!(!p.within_forced_floor(&t.clone().access_rejected(), at(1_001)), "a rejected token");
        assert!(!p.within_forced_floor(&t.clone().rejected(), at(1_001)), "a marked record");
        assert!(!p.within_forced_floor(&tokens(1_000, 30), at(1_028)), "a token about to expire");
        assert!(p.within_forced_floor(&tokens(1_000, 240), at(1_059)), "a quarter of a short life");
        assert!(!p.within_forced_floor(&tokens(1_000, 240), at(1_060)));
        let none = RefreshPolicy { forced_refresh_floor: Duration::ZERO, ..RefreshPolicy::default() };
        assert!(!none.within_forced_floor(&t, at(1_000)));
    }

    #[test]
    fn retry_honours_retry_after_and_gives_up_on_long_waits() {
        let p = RetryPolicy::default();
        let rl = |s| Error::RateLimited {
            retry_after: Some(Duration::from_secs(s)),
            failure: ApiFailure::new(429),
        };
        assert_eq!(
            p.decide(RetryClass::Idempotent, 1, &rl(3), 0),
            RetryDecision::RetryAfter(Duration::from_secs(3))
        );
        assert_eq!(p.decide(RetryClass::Idempotent, 1, &rl(3600), 0), RetryDecision::GiveUp);
        let no_header = Error::RateLimited { retry_after: None, failure: ApiFailure::new(429) };
        assert_eq!(
            p.decide(RetryClass::Idempotent, 1, &no_header, 0),
            RetryDecision::RetryAfter(p.default_retry_after)
        );
        assert_eq!(p.decide(RetryClass::Idempotent, 4, &rl(3), 0), RetryDecision::GiveUp);
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let p = RetryPolicy::default();
        let e = Error::Server(ApiFailure::new(503));
        let RetryDecision::RetryAfter(low) = p.decide(RetryClass::Idempotent, 1, &e, 0) else { panic!() };
        let RetryDecision::RetryAfter(high) = p.decide(RetryClass::Idempotent, 1, &e, u32::MAX) else {
            panic!()
        };
        assert_eq!(low, Duration::from_millis(100));
        assert_eq!(high, Duration::from_millis(200));
        let big = RetryPolicy { max_attempts: 100, ..RetryPolicy::default() };
        let RetryDecision::RetryAfter(d) = big.decide(RetryClass::Idempotent, 40, &e, u32::MAX) else {
            panic!()
        };
        assert_eq!(d, big.max_delay);
    }

    #[test]
    fn a_code_exchange_is_not_retried_once_the_server_may_have_seen_it() {
        let p = RetryPolicy::default();
        let class = RetryClass::OnlyIfNotProcessed;
        assert_eq!(p.decide(class, 1, &Error::Server(ApiFailure::new(500)), 0), RetryDecision::GiveUp);
        let reset = Error::Transport { message: "reset".into(), maybe_sent: true };
        assert_eq!(p.decide(class, 1, &reset, 0), RetryDecision::GiveUp);
        let refused = Error::Transport { message: "refused".into(), maybe_sent: false };
        assert!(matches!(p.decide(class, 1, &refused, 0), RetryDecision::RetryAfter(_)));
    }

    #[test]
    fn non_retryable_errors_give_up_at_once() {
        let p = RetryPolicy::default();
        let e = Error::Authentication(ApiFailure::new(401));
        assert_eq!(p.decide(RetryClass::Idempotent, 1, &e, 0), RetryDecision::GiveUp);
    }
}
