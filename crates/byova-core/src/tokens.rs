//! Token records: [`OAuthTokens`] (and its alias [`ServiceAppTokens`]), with absolute expiry
//! and a stable, versioned serde form for storage.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::{AccessToken, RefreshToken};
use crate::time::Timestamp;

/// The storage schema version [`OAuthTokens`] serializes with. Records from older schemas are
/// read; records from a newer byova are refused with a clear error rather than misread.
pub const TOKEN_SCHEMA_VERSION: u32 = 1;

/// OAuth tokens from the Webex token endpoint (Integration or Service App).
///
/// `obtained_at` is when the request that produced them was *sent*, so the computed expiry is
/// never later than the real one.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OAuthTokens {
    /// The bearer access token.
    pub access_token: AccessToken,
    /// Lifetime of the access token in seconds, from `obtained_at`.
    pub expires_in: u64,
    /// Always `Bearer` for Webex.
    pub token_type: String,
    /// The refresh token, when one was issued.
    pub refresh_token: Option<RefreshToken>,
    /// Lifetime of the refresh token in seconds, from `obtained_at`.
    pub refresh_token_expires_in: Option<u64>,
    /// Granted scopes, space-separated, when the server said.
    pub scope: Option<String>,
    /// When the request that produced these tokens was sent.
    pub obtained_at: Timestamp,
    /// Webex rejected this record's refresh token (`invalid_grant`): a person must authorize
    /// again. Stored with the record, so every process sees it and none spends the rejected
    /// token again; tokens from a new authorization come without it.
    pub reauthorization_required: bool,
    /// For a Service App org: when the authorization these tokens belong to happened (the
    /// `authorized` event's own time, or when they were fetched). Refreshes carry it over; a
    /// `deauthorized` event older than it does not remove them.
    pub authorized_at: Option<Timestamp>,
    /// For a Service App org: the `authorized` delivery these tokens answer (a digest of its
    /// body), so Webex's redelivery of it is answered without another fetch.
    pub authorized_by: Option<u64>,
    /// How many times in a row these tokens were obtained because Webex rejected (401) the
    /// access token before them (0: an ordinary refresh, fetch or authorization). A 401 on a
    /// renewal is not cured by another one: see
    /// [`RefreshPolicy::rejection_cooldown`](crate::RefreshPolicy::rejection_cooldown).
    pub renewals: u32,
    /// Until when 401s on this access token renew nothing: a request retried with it after a
    /// 401 was rejected too, so those 401s are not about the token (see
    /// [`RefreshPolicy::rejection_cooldown`](crate::RefreshPolicy::rejection_cooldown)).
    pub cooldown_until: Option<Timestamp>,
    /// With [`reauthorization_required`](Self::reauthorization_required): what Webex answered
    /// when it rejected the refresh token, to quote to Webex support (absent on marks written
    /// by an older byova).
    pub rejection: Option<Rejection>,
}

/// What Webex answered when it rejected a record's refresh token, kept with the mark.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejection {
    /// The HTTP status of the rejecting answer.
    pub status: u16,
    /// Its `trackingId`, when it had one.
    pub tracking_id: Option<String>,
    /// When it was received.
    pub at: Timestamp,
}

impl Rejection {
    /// A rejection answered with `status` (and `tracking_id`) at `at`.
    pub fn new(status: u16, tracking_id: Option<String>, at: Timestamp) -> Self {
        Self { status, tracking_id, at }
    }
}

/// Service App tokens have exactly the shape of Integration tokens.
pub type ServiceAppTokens = OAuthTokens;

impl OAuthTokens {
    /// Tokens with just an access token (a `Bearer` without refresh token).
    pub fn new(access_token: AccessToken, expires_in: u64, obtained_at: Timestamp) -> Self {
        Self {
            access_token,
            expires_in,
            token_type: "Bearer".to_owned(),
            refresh_token: None,
            refresh_token_expires_in: None,
            scope: None,
            obtained_at,
            reauthorization_required: false,
            authorized_at: None,
            authorized_by: None,
            renewals: 0,
            cooldown_until: None,
            rejection: None,
        }
    }

    /// Adds a refresh token and its lifetime.
    pub fn with_refresh_token(mut self, token: RefreshToken, expires_in: Option<u64>) -> Self {
        self.refresh_token = Some(token);
        self.refresh_token_expires_in = expires_in;
        self
    }

    /// The same record marked: Webex rejected its refresh token.
    pub fn rejected(mut self) -> Self {
        self.reauthorization_required = true;
        self
    }

    /// The same record marked, with what Webex answered.
    pub fn rejected_by(mut self, rejection: Rejection) -> Self {
        self.reauthorization_required = true;
        self.rejection = Some(rejection);
        self
    }

    /// The same record with its access token counted as expired from now on (Webex rejected
    /// it before its time): a zero lifetime. The refresh token and its expiry are kept.
    pub fn access_rejected(mut self) -> Self {
        self.expires_in = 0;
        self.cooldown_until = None;
        self
    }

    /// The access token's lifetime.
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.expires_in)
    }

    /// When the access token expires.
    pub fn expires_at(&self) -> Timestamp {
        self.obtained_at.saturating_add(Duration::from_secs(self.expires_in))
    }

    /// When the refresh token expires, when its lifetime is known.
    pub fn refresh_token_expires_at(&self) -> Option<Timestamp> {
        self.refresh_token_expires_in.map(|s| self.obtained_at.saturating_add(Duration::from_secs(s)))
    }

    /// Whether the access token is expired at `now`, counting it expired `buffer` early. A
    /// zero lifetime (a token Webex rejected, see [`access_rejected`](Self::access_rejected))
    /// is expired whatever the clock says, even one that lags the moment it was obtained.
    pub fn is_expired(&self, buffer: Duration, now: Timestamp) -> bool {
        self.expires_in == 0 || now >= self.expires_at().saturating_sub(buffer)
    }

    /// Keeps `previous`'s refresh token when these tokens came without one: a refresh response
    /// that omits `refresh_token` must never cost the stored one. Its expiry carries over to
    /// the second, rounded down (never later than the real one).
    pub fn inherit_refresh_token(mut self, previous: &OAuthTokens) -> Self {
        if self.refresh_token.is_none() {
            self.refresh_token = previous.refresh_token.clone();
            self.refresh_token_expires_in = previous
                .refresh_token_expires_at()
                .map(|at| at.saturating_duration_since(self.obtained_at).as_secs());
        }
        self
    }

    /// The stored form: JSON with a schema version. Secrets are included; this is the one
    /// place they leave their types, for the store codec.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses the stored form.
    ///
    /// # Errors
    /// A description of what is wrong (never the content) when the bytes are not a record of a
    /// schema this version understands.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| {
            // serde_json's messages quote at most a type or a field name, never a value of
            // ours, but keep only the classification to be safe.
            format!(
                "not a byova token record ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            )
        })
    }
}

// serde's skip_serializing_if passes a reference.
fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Serialize)]
struct WireOut<'a> {
    schema: u32,
    access_token: &'a str,
    expires_in: u64,
    token_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token_expires_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
    obtained_at_ms: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    reauthorization_required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    authorized_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    authorized_by: Option<u64>,
    #[serde(skip_serializing_if = "is_zero")]
    renewals: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    cooldown_until_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected_tracking_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected_at_ms: Option<u64>,
}

#[derive(Deserialize)]
struct WireIn {
    schema: u32,
    access_token: String,
    expires_in: u64,
    token_type: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    refresh_token_expires_in: Option<u64>,
    #[serde(default)]
    scope: Option<String>,
    obtained_at_ms: u64,
    #[serde(default)]
    reauthorization_required: bool,
    #[serde(default)]
    authorized_at_ms: Option<u64>,
    #[serde(default)]
    authorized_by: Option<u64>,
    #[serde(default)]
    renewals: u32,
    #[serde(default)]
    cooldown_until_ms: Option<u64>,
    #[serde(default)]
    rejected_status: Option<u16>,
    #[serde(default)]
    rejected_tracking_id: Option<String>,
    #[serde(default)]
    rejected_at_ms: Option<u64>,
}

impl Serialize for OAuthTokens {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WireOut {
            schema: TOKEN_SCHEMA_VERSION,
            access_token: self.access_token.expose_secret(),
            expires_in: self.expires_in,
            token_type: &self.token_type,
            refresh_token: self.refresh_token.as_ref().map(|t| t.expose_secret()),
            refresh_token_expires_in: self.refresh_token_expires_in,
            scope: self.scope.as_deref(),
            obtained_at_ms: self.obtained_at.as_unix_millis(),
            reauthorization_required: self.reauthorization_required,
            authorized_at_ms: self.authorized_at.map(Timestamp::as_unix_millis),
            authorized_by: self.authorized_by,
            renewals: self.renewals,
            cooldown_until_ms: self.cooldown_until.map(Timestamp::as_unix_millis),
            rejected_status: self.rejection.as_ref().map(|r| r.status),
            rejected_tracking_id: self.rejection.as_ref().and_then(|r| r.tracking_id.as_deref()),
            rejected_at_ms: self.rejection.as_ref().map(|r| r.at.as_unix_millis()),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for OAuthTokens {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let w = WireIn::deserialize(deserializer)?;
        if w.schema == 0 || w.schema > TOKEN_SCHEMA_VERSION {
            return Err(serde::de::Error::custom(format!(
                "token record schema {} is not supported by this byova (schema {TOKEN_SCHEMA_VERSION})",
                w.schema
            )));
        }
        Ok(OAuthTokens {
            access_token: AccessToken::new(w.access_token),
            expires_in: w.expires_in,
            token_type: w.token_type,
            refresh_token: w.refresh_token.map(RefreshToken::new),
            refresh_token_expires_in: w.refresh_token_expires_in,
            scope: w.scope,
            obtained_at: Timestamp::from_unix_millis(w.obtained_at_ms),
            reauthorization_required: w.reauthorization_required,
            authorized_at: w.authorized_at_ms.map(Timestamp::from_unix_millis),
            authorized_by: w.authorized_by,
            renewals: w.renewals,
            cooldown_until: w.cooldown_until_ms.map(Timestamp::from_unix_millis),
            rejection: match (w.rejected_status, w.rejected_at_ms) {
                (Some(status), Some(at)) => Some(Rejection {
                    status,
                    tracking_id: w.rejected_tracking_id,
                    at: Timestamp::from_unix_millis(at),
                }),
                _ => None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> OAuthTokens {
        OAuthTokens::new(
            AccessToken::new("ACCESS-CANARY"),
            1_209_599,
            Timestamp::from_unix_millis(1_764_000_000_500),
        )
        .with_refresh_token(RefreshToken::new("REFRESH-CANARY"), Some(7_775_999))
    }

    #[test]
    fn debug_pins_redaction() {
        assert_eq!(
            format!("{:?}", sample()),
            "OAuthTokens { access_token: AccessToken([redacted]), expires_in: 1209599, token_type: \"Bearer\", \
             refresh_token: Some(RefreshToken([redacted])), refresh_token_expires_in: Some(7775999), scope: None, \
             obtained_at: Timestamp(1764000000500), reauthorization_required: false, \
             authorized_at: None, authorized_by: None, renewals: 0, cooldown_until: None, rejection: None }"
        );
    }

    #[test]
    fn expiry_is_absolute_from_obtained_at() {
        let t = sample();
        assert_eq!(t.expires_at().as_unix_millis(), 1_764_000_000_500 + 1_209_599_000);
        assert_eq!(t.refresh_token_expires_at().unwrap().as_unix_millis(), 1_764_000_000_500 + 7_775_999_000);
        let exp = t.expires_at();
        assert!(!t.is_expired(Duration::ZERO, exp.saturating_sub(Duration::from_millis(1))));
        assert!(t.is_expired(Duration::ZERO, exp));
        assert!(t.is_expired(Duration::from_secs(60), exp.saturating_sub(Duration::from_secs(60))));
    }

    #[test]
    fn stored_form_is_stable() {
        assert_eq!(
            String::from_utf8(sample().to_json()).unwrap(),
            r#"{"schema":1,"access_token":"ACCESS-CANARY","expires_in":1209599,"token_type":"Bearer","refresh_token":"REFRESH-CANARY","refresh_token_expires_in":7775999,"obtained_at_ms":1764000000500}"#
        );
    }

    #[test]
    fn the_reauthorization_mark_round_trips_and_is_absent_when_unset() {
        let marked = sample().rejected();
        let json = String::from_utf8(marked.to_json()).unwrap();
        assert!(json.ends_with(r#","reauthorization_required":true}"#), "{json}");
        assert!(OAuthTokens::from_json(json.as_bytes()).unwrap().reauthorization_required);
        assert!(!String::from_utf8(sample().to_json()).unwrap().contains("reauthorization"));
    }

    #[test]
    fn the_rejection_round_trips_with_the_mark() {
        let at = Timestamp::from_unix_millis(1_764_000_100_000);
        let marked = sample().rejected_by(Rejection::new(400, Some("ROUTER_X".into()), at));
        let json = String::from_utf8(marked.to_json()).unwrap();
        assert!(
            json.ends_with(
                r#","reauthorization_required":true,"rejected_status":400,"rejected_tracking_id":"ROUTER_X","rejected_at_ms":1764000100000}"#
            ),
            "{json}"
        );
        let back = OAuthTokens::from_json(json.as_bytes()).unwrap();
        assert!(back.reauthorization_required);
        assert_eq!(back.rejection, Some(Rejection::new(400, Some("ROUTER_X".into()), at)));
    }

    #[test]
    fn newer_schemas_and_garbage_are_refused_without_echoing_content() {
        let newer = br#"{"schema":2,"access_token":"SECRET","expires_in":1,"token_type":"Bearer","obtained_at_ms":0}"#;
        let err = OAuthTokens::from_json(newer).unwrap_err();
        assert!(!err.contains("SECRET"), "{err}");
        for bad in [&b""[..], b"{", b"null", b"{\"schema\":1}", b"\xff\xfe"] {
            assert!(OAuthTokens::from_json(bad).is_err());
        }
    }

    #[test]
    fn unknown_fields_are_ignored_for_forward_compatibility() {
        let rec = br#"{"schema":1,"access_token":"a","expires_in":5,"token_type":"Bearer","obtained_at_ms":7,"future":true}"#;
        let t = OAuthTokens::from_json(rec).unwrap();
        assert_eq!(t.expires_in, 5);
        assert!(t.refresh_token.is_none());
    }

    #[test]
    fn inherit_keeps_the_old_refresh_token_and_its_expiry() {
        let old = sample();
        let new = OAuthTokens::new(
            AccessToken::new("new"),
            100,
            old.obtained_at.saturating_add(Duration::from_secs(1000)),
        );
        let merged = new.inherit_refresh_token(&old);
        assert!(merged.refresh_token.as_ref().unwrap().ct_eq_str("REFRESH-CANARY"));
        assert_eq!(merged.refresh_token_expires_at(), old.refresh_token_expires_at());
        let rotated =
            sample().with_refresh_token(RefreshToken::new("R2"), Some(5)).inherit_refresh_token(&old);
        assert!(rotated.refresh_token.unwrap().ct_eq_str("R2"));
    }

    proptest! {
        #[test]
        fn records_round_trip_byte_exact(
            access in "\\PC{0,80}", refresh in proptest::option::of("\\PC{0,80}"),
            expires_in: u64, rexp: Option<u64>, scope in proptest::option::of("[a-z: _]{0,40}"),
            obtained in 0u64..u64::MAX / 2, token_type in "[A-Za-z]{1,10}",
        ) {
            let mut t = OAuthTokens::new(AccessToken::new(access.clone()), expires_in, Timestamp::from_unix_millis(obtained));
            t.token_type = token_type.clone();
            t.scope = scope.clone();
            if let Some(r) = &refresh { t = t.with_refresh_token(RefreshToken::new(r.clone()), rexp); }
            let bytes = t.to_json();
            let back = OAuthTokens::from_json(&bytes).unwrap();
            prop_assert_eq!(back.access_token.expose_secret(), access.as_str());
            prop_assert_eq!(back.refresh_token.as_ref().map(|r| r.expose_secret().to_owned()), refresh);
            prop_assert_eq!(back.expires_in, expires_in);
            prop_assert_eq!(&back.scope, &scope);
            prop_assert_eq!(&back.token_type, &token_type);
            prop_assert_eq!(back.obtained_at.as_unix_millis(), obtained);
            prop_assert_eq!(back.to_json(), bytes);
        }
    }

    #[test]
    fn a_rejected_access_token_is_expired_even_on_a_lagging_clock() {
        let obtained = Timestamp::from_unix_secs(1_000);
        let t = OAuthTokens::new(AccessToken::new("a"), 3600, obtained)
            .with_refresh_token(RefreshToken::new("r"), Some(7_775_999));
        let rejected = t.clone().access_rejected();
        // A coarse clock reads a few milliseconds behind the moment the tokens were obtained.
        let lagging = obtained.saturating_sub(Duration::from_millis(5));
        assert!(!t.is_expired(Duration::ZERO, lagging));
        assert!(rejected.is_expired(Duration::ZERO, lagging));
        assert_eq!(
            rejected.refresh_token_expires_at(),
            t.refresh_token_expires_at(),
            "the refresh token is kept"
        );
    }
}
