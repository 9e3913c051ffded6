//! Webex's side of the call: the JWS Webex's identity broker signs into every request Webex
//! makes to a data source (a BYOVA gateway), checked without I/O. The flavours fetch the
//! broker's keys (`byova_async::JwsVerifier`, `byova_blocking::JwsVerifier`); everything they
//! decide is here.
//!
//! The order is the point: the token is parsed and its issuer checked against the allow-list
//! *before* anything is fetched (a caller cannot make the gateway fetch a URL of its choosing);
//! the key is the one its `kid` names, RSA with SHA-256 only (the token's `alg` never chooses
//! the key type; `none` and HMAC are refused); then expiry and not-before with a small leeway,
//! `aud`, `sub` and `jti` present, and the data-source claims equal to the configured ones.
//! Every refusal is its own [`JwsError`], and none echoes the token.
//!
//! ```
//! use byova_core::jws::{JwkSet, JwsError, JwsPolicy};
//!
//! let policy = JwsPolicy::new("https://gateway.example.com/byova")?;
//! // A token that is not even a JWS is refused before any key is looked at.
//! assert_eq!(policy.inspect("not-a-jws").unwrap_err(), JwsError::Malformed("not three dot-separated parts"));
//! // A key set the broker serves, and what it holds.
//! let keys = JwkSet::parse(br#"{"keys":[{"kty":"EC","kid":"x","crv":"P-256","x":"","y":""}]}"#);
//! assert!(keys.is_err(), "no RSA signing key in it");
//! # Ok::<(), byova_core::Error>(())
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::http::{HttpRequest, HttpResponse, Method, RetryClass};
use crate::{Error, Result, Timestamp};

/// The BYOVA data-source schema (`com.cisco.datasource.schema.uuid`), from
/// github.com/webex/dataSourceSchemas.
pub const BYOVA_SCHEMA_ID: &str = "5397013b-7920-4ffc-807c-e8a3e0a18f43";

/// The identity brokers trusted by default: production in every region, and the BTS test
/// brokers (Webex's own gateway sample accepts the same).
pub const WEBEX_ISSUERS: [&str; 6] = [
    "https://idbroker.webex.com/idb",
    "https://idbroker-eu.webex.com/idb",
    "https://idbroker-b-us.webex.com/idb",
    "https://idbroker-ca.webex.com/idb",
    "https://idbrokerbts.webex.com/idb",
    "https://idbrokerbts-eu.webex.com/idb",
];

/// The longest token looked at (16 KiB; Webex's are about 1 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The claim naming the data source's URL.
pub const DATA_SOURCE_URL_CLAIM: &str = "com.cisco.datasource.url";
/// The claim naming the data source's schema.
pub const SCHEMA_CLAIM: &str = "com.cisco.datasource.schema.uuid";

/// The RSA moduli accepted, in bits: at least 2048, at most 8192 (a larger key would only
/// make each verification costlier).
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// The longest a broker's `Retry-After` holds fetching back (5 minutes): one answer, from the
/// broker or a proxy on the way, must not stop key fetches for hours.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Why a token was refused. No variant carries the token or a claim's value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwsError {
    /// Not a compact JWS (three base64url parts, JSON header and claims).
    #[error("the token is not a compact JWS: {0}")]
    Malformed(&'static str),
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("the token is longer than 16 KiB")]
    TooLarge,
    /// `alg` is not `RS256` (`none`, HMAC, anything else).
    #[error("the token's algorithm is not RS256")]
    Algorithm,
    /// No `kid` in the header.
    #[error("the token names no key (kid)")]
    MissingKeyId,
    /// `iss` is not in the allow-list; nothing was fetched.
    #[error("the token's issuer is not trusted")]
    UntrustedIssuer,
    /// The issuer's keys hold no key with the token's `kid` (refetched at most once per
    /// minimum interval).
    #[error("the issuer has no key with the token's kid")]
    UnknownKey,
    /// The signature does not verify with the key.
    #[error("the signature does not verify")]
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    #[error("the token expired")]
    Expired,
    /// `nbf` (or `iat`) is still ahead (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// A required claim is missing or empty: `exp`, `aud`, `sub`, `jti`, or a data-source claim.
    #[error("the token has no {0} claim")]
    MissingClaim(&'static str),
    /// `com.cisco.datasource.url` is not the configured URL.
    #[error("the token is for another data source URL")]
    WrongDataSourceUrl,
    /// `com.cisco.datasource.schema.uuid` is not the configured schema.
    #[error("the token is for another data-source schema")]
    WrongSchema,
    /// The issuer's keys could not be fetched and none is cached within the stale bound.
    #[error("the issuer's keys cannot be had: {0}")]
    KeysUnavailable(String),
}

/// What a verifier accepts: the trusted issuers, the data source's URL and schema, the clock
/// leeway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwsPolicy {
    trusted_issuers: Vec<String>,
    data_source_url: String,
    schema_id: String,
    leeway: Duration,
}

impl JwsPolicy {
    /// Tokens for the data source at `data_source_url` with the BYOVA schema, from
    /// [`WEBEX_ISSUERS`], with 30 s of clock leeway.
    ///
    /// # Errors
    /// [`Error::Configuration`] when the URL is empty.
    pub fn new(data_source_url: &str) -> Result<Self> {
        if data_source_url.trim().is_empty() {
            return Err(Error::Configuration("the data source URL is empty".into()));
        }
        Ok(Self {
            trusted_issuers: WEBEX_ISSUERS.iter().map(|s| (*s).to_owned()).collect(),
            data_source_url: data_source_url.trim().to_owned(),
            schema_id: BYOVA_SCHEMA_ID.to_owned(),
            leeway: Duration::from_secs(30),
        })
    }

    /// Trusts exactly `issuers` instead of [`WEBEX_ISSUERS`] (`https://`, or `http://` to a
    /// loopback host: a local fake broker).
    ///
    /// # Errors
    /// [`Error::Configuration`] for an empty list or an issuer that is not such a URL.
    pub fn with_trusted_issuers<I, S>(mut self, issuers: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut trusted = Vec::new();
        for issuer in issuers {
            let issuer = issuer.as_ref().trim().trim_end_matches('/');
            let host = match (issuer.strip_prefix("https://"), issuer.strip_prefix("http://")) {
                (Some(rest), _) => Some(rest),
                (None, Some(rest)) => {
                    Some(rest).filter(|r| crate::config::is_loopback_authority(authority(r)))
                }
                _ => None,
            };
            if host.is_none_or(|rest| authority(rest).is_empty()) {
                return Err(Error::Configuration(format!(
                    "trusted issuer {issuer:?} must be an https:// URL (http:// only to a loopback host)"
                )));
            }
            trusted.push(issuer.to_owned());
        }
        if trusted.is_empty() {
            return Err(Error::Configuration("the trusted issuers are empty: no token could pass".into()));
        }
        self.trusted_issuers = trusted;
        Ok(self)
    }

    /// Expects `schema_id` in `com.cisco.datasource.schema.uuid` instead of the BYOVA schema.
    pub fn with_schema_id(mut self, schema_id: &str) -> Self {
        self.schema_id = schema_id.trim().to_owned();
        self
    }

    /// The clock leeway for `exp` and `nbf` (30 s by default; at most 5 minutes are used).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway.min(Duration::from_secs(300));
        self
    }

    /// The trusted issuers.
    pub fn trusted_issuers(&self) -> &[String] {
        &self.trusted_issuers
    }

    /// The data source's URL.
    pub fn data_source_url(&self) -> &str {
        &self.data_source_url
    }

    /// Parses `token` and checks what needs no key: its form, `alg` RS256, a `kid`, and a
    /// trusted issuer. Only then may the issuer's keys be fetched.
    ///
    /// # Errors
    /// [`JwsError::TooLarge`], [`Malformed`](JwsError::Malformed),
    /// [`Algorithm`](JwsError::Algorithm), [`MissingKeyId`](JwsError::MissingKeyId),
    /// [`MissingClaim`](JwsError::MissingClaim)`("iss")`,
    /// [`UntrustedIssuer`](JwsError::UntrustedIssuer).
    pub fn inspect<'t>(&self, token: &'t str) -> std::result::Result<Jws<'t>, JwsError> {
        let jws = Jws::parse(token)?;
        if !self.trusted_issuers.contains(&jws.issuer) {
            return Err(JwsError::UntrustedIssuer);
        }
        Ok(jws)
    }

    /// Checks `jws` (from [`inspect`](Self::inspect)) against the key its `kid` names in
    /// `keys`, then its claims at `now`.
    ///
    /// # Errors
    /// [`JwsError::UnknownKey`], [`BadSignature`](JwsError::BadSignature), and the claims'
    /// errors.
    pub fn verify(
        &self,
        jws: &Jws<'_>,
        keys: &JwkSet,
        now: Timestamp,
    ) -> std::result::Result<VerifiedClaims, JwsError> {
        // Again, for a Jws parsed without inspect().
        if !self.trusted_issuers.contains(&jws.issuer) {
            return Err(JwsError::UntrustedIssuer);
        }
        let key = keys.key(&jws.kid).ok_or(JwsError::UnknownKey)?;
        key.verify(jws.signing_input.as_bytes(), &jws.signature)?;
        self.check_claims(jws, now)
    }

    /// The claims of a token whose signature verified.
    fn check_claims(&self, jws: &Jws<'_>, now: Timestamp) -> std::result::Result<VerifiedClaims, JwsError> {
        let claims = &jws.claims;
        let now_secs = now.as_unix_secs();
        let leeway = self.leeway.as_secs();
        let exp = seconds(claims.get("exp")).ok_or(JwsError::MissingClaim("exp"))?;
        if now_secs >= exp.saturating_add(leeway) {
            return Err(JwsError::Expired);
        }
        for name in ["nbf", "iat"] {
            if let Some(at) = seconds(claims.get(name))
                && at > now_secs.saturating_add(leeway)
            {
                return Err(JwsError::NotYetValid);
            }
        }
        let audience: Vec<String> = match claims.get("aud") {
            Some(Value::String(a)) if !a.is_empty() => vec![a.clone()],
            Some(Value::Array(all)) => {
                all.iter().filter_map(Value::as_str).filter(|a| !a.is_empty()).map(str::to_owned).collect()
            }
            _ => Vec::new(),
        };
        if audience.is_empty() {
            return Err(JwsError::MissingClaim("aud"));
        }
        let text = |name: &'static str| {
            claims
                .get(name)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or(JwsError::MissingClaim(name))
        };
        let subject = text("sub")?;
        let jti = text("jti")?;
        let url = text(DATA_SOURCE_URL_CLAIM)?;
        if url != self.data_source_url {
            return Err(JwsError::WrongDataSourceUrl);
        }
        let schema = text(SCHEMA_CLAIM)?;
        if !schema.eq_ignore_ascii_case(&self.schema_id) {
            return Err(JwsError::WrongSchema);
        }
        Ok(VerifiedClaims {
            issuer: jws.issuer.clone(),
            subject,
            audience,
            jti,
            expires_at: Timestamp::from_unix_secs(exp),
            data_source_url: url,
            schema_id: schema,
            claims: claims.clone(),
        })
    }
}

/// `host[:port]` of `rest` (what follows `scheme://`).
fn authority(rest: &str) -> &str {
    rest.split(['/', '?', '#']).next().unwrap_or_default()
}

/// A whole number of seconds since the epoch (a JSON number, integral or not, not negative).
fn seconds(value: Option<&Value>) -> Option<u64> {
    let value = value?;
    value.as_u64().or_else(|| value.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
}

/// A parsed compact JWS whose form, algorithm and `kid` were checked, and whose issuer is
/// known; neither its signature nor its claims are yet.
pub struct Jws<'t> {
    signing_input: &'t str,
    signature: Vec<u8>,
    claims: Map<String, Value>,
    issuer: String,
    kid: String,
}

impl std::fmt::Debug for Jws<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jws").field("issuer", &self.issuer).field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl<'t> Jws<'t> {
    /// Parses `token` (`header.claims.signature`, base64url without padding).
    ///
    /// # Errors
    /// As [`JwsPolicy::inspect`], but for the issuer's trust.
    pub fn parse(token: &'t str) -> std::result::Result<Self, JwsError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwsError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwsError::Malformed("not three dot-separated parts"));
        };
        let header = decode_json(header, "the header")?;
        match header.get("alg").and_then(Value::as_str) {
            Some("RS256") => {}
            _ => return Err(JwsError::Algorithm),
        }
        if header.contains_key("crit") {
            // Extensions this verifier does not implement must not be ignored (RFC 7515 §4.1.11).
            return Err(JwsError::Malformed("a crit header this verifier does not know"));
        }
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
            .ok_or(JwsError::MissingKeyId)?;
        let claims_map = decode_json(claims, "the claims")?;
        let issuer = claims_map
            .get("iss")
            .and_then(Value::as_str)
            .filter(|i| !i.is_empty())
            .ok_or(JwsError::MissingClaim("iss"))?
            .trim_end_matches('/')
            .to_owned();
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| JwsError::Malformed("the signature is not base64url"))?;
        if signature.is_empty() {
            return Err(JwsError::Malformed("the signature is empty"));
        }
        let signing_input = &token[..header_len(token)];
        Ok(Self { signing_input, signature, claims: claims_map, issuer, kid: kid.to_owned() })
    }

    /// The issuer (`iss`, without a trailing slash).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The key id (`kid`).
    pub fn key_id(&self) -> &str {
        &self.kid
    }
}

/// The length of `header.claims` in `token` (the signing input).
fn header_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(token.len())
}

fn decode_json(part: &str, what: &'static str) -> std::result::Result<Map<String, Value>, JwsError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| {
        JwsError::Malformed(if what == "the header" {
            "the header is not base64url"
        } else {
            "the claims are not base64url"
        })
    })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwsError::Malformed(if what == "the header" {
            "the header is not a JSON object"
        } else {
            "the claims are not a JSON object"
        })),
    }
}

/// The claims of a verified token.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct VerifiedClaims {
    /// `iss`: the broker that signed it.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// `aud`, as a list.
    pub audience: Vec<String>,
    /// `jti`: the token's id (a replay cache keys on it).
    pub jti: String,
    /// `exp`.
    #[serde(serialize_with = "rfc3339")]
    pub expires_at: Timestamp,
    /// `com.cisco.datasource.url`.
    pub data_source_url: String,
    /// `com.cisco.datasource.schema.uuid`.
    pub schema_id: String,
    /// Every claim, as sent (the org, the Webex user, and what else Webex adds).
    pub claims: Map<String, Value>,
}

fn rfc3339<S: serde::Serializer>(at: &Timestamp, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339())
}

/// One of an issuer's RSA signing keys, parsed once (by aws-lc-rs, the crypto provider rustls
/// already uses).
#[derive(Clone)]
pub struct RsaKey {
    kid: String,
    key: ParsedPublicKey,
}

impl std::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl RsaKey {
    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 over `message`.
    fn verify(&self, message: &[u8], signature: &[u8]) -> std::result::Result<(), JwsError> {
        self.key.verify_sig(message, signature).map_err(|_| JwsError::BadSignature)
    }
}

/// An issuer's key set (its JWKS): the RSA signing keys, by `kid`.
#[derive(Clone, Debug)]
pub struct JwkSet {
    keys: Vec<RsaKey>,
}

impl JwkSet {
    /// Parses a JWKS document, keeping the RSA keys meant for signatures (`use` `sig` or
    /// absent, `alg` `RS256` or absent) of 2048 to 8192 bits.
    ///
    /// # Errors
    /// [`JwsError::KeysUnavailable`] when it is not a JWKS or holds no such key.
    pub fn parse(json: &[u8]) -> std::result::Result<Self, JwsError> {
        let unavailable = |why: &str| JwsError::KeysUnavailable(why.to_owned());
        let doc: Value = serde_json::from_slice(json).map_err(|_| unavailable("the key set is not JSON"))?;
        let entries = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| unavailable("the key set has no keys"))?;
        let mut keys = Vec::new();
        for entry in entries {
            let field = |name: &str| entry.get(name).and_then(Value::as_str);
            if field("kty") != Some("RSA")
                || field("use").is_some_and(|u| u != "sig")
                || field("alg").is_some_and(|a| a != "RS256")
            {
                continue;
            }
            let (Some(kid), Some(n), Some(e)) = (field("kid"), field("n"), field("e")) else { continue };
            let (Ok(n), Ok(e)) = (
                URL_SAFE_NO_PAD.decode(n.trim_end_matches('=')),
                URL_SAFE_NO_PAD.decode(e.trim_end_matches('=')),
            ) else {
                continue;
            };
            let n: Vec<u8> = n.into_iter().skip_while(|b| *b == 0).collect();
            let e: Vec<u8> = e.into_iter().skip_while(|b| *b == 0).collect();
            let bits = n.first().map_or(0, |top| (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize));
            if !RSA_BITS.contains(&bits) {
                continue;
            }
            let components = RsaPublicKeyComponents { n: &n[..], e: &e[..] };
            if let Ok(key) = components.to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256) {
                keys.push(RsaKey { kid: kid.to_owned(), key });
            }
        }
        if keys.is_empty() {
            return Err(unavailable("the key set holds no RSA signing key of 2048 to 8192 bits"));
        }
        Ok(Self { keys })
    }

    /// The key with id `kid`.
    pub fn key(&self, kid: &str) -> Option<&RsaKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// The keys.
    pub fn keys(&self) -> &[RsaKey] {
        &self.keys
    }
}

/// Where an issuer serves its keys: `{issuer}/oauth2/v2/keys/verificationjwk`.
pub fn jwks_url(issuer: &str) -> String {
    format!("{}/oauth2/v2/keys/verificationjwk", issuer.trim_end_matches('/'))
}

/// The request for `issuer`'s keys (a trusted issuer: [`JwsPolicy::inspect`] said so).
pub fn jwks_request(issuer: &str) -> HttpRequest {
    HttpRequest::new(Method::Get, jwks_url(issuer), RetryClass::Idempotent)
        .header("Accept", "application/json")
}

/// Why fetching keys failed: what to say, and how long the broker asked to be left alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchFailure {
    /// What went wrong (a status, a transport failure), naming no token.
    pub message: String,
    /// `Retry-After` of a 429 or 503.
    pub retry_after: Option<Duration>,
}

/// The key set in the answer to [`jwks_request`] (or why there is none), from what the
/// transport returned.
pub fn jwks_outcome(sent: crate::Result<HttpResponse>) -> std::result::Result<JwkSet, FetchFailure> {
    match sent {
        Ok(response) => jwks_response(&response),
        Err(e) => Err(FetchFailure { message: e.to_string(), retry_after: None }),
    }
}

/// The key set in `response`, or why there is none.
pub fn jwks_response(response: &HttpResponse) -> std::result::Result<JwkSet, FetchFailure> {
    match response.status {
        200 => JwkSet::parse(&response.body)
            .map_err(|e| FetchFailure { message: e.to_string(), retry_after: None }),
        status => Err(FetchFailure {
            message: format!("the identity broker answered {status}"),
            retry_after: matches!(status, 429 | 503)
                .then(|| crate::oauth::parse_retry_after(response.header("retry-after")))
                .flatten(),
        }),
    }
}

/// How the key cache behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JwksCachePolicy {
    /// How long fetched keys are fresh (60 minutes, as Webex's sample).
    pub refresh_every: Duration,
    /// The least time between two fetches for one issuer, however many unknown `kid`s arrive
    /// (30 s).
    pub min_refetch: Duration,
    /// How long past fresh the keys are still used while the broker cannot be reached or
    /// answers 429 (6 hours); past it, [`JwsError::KeysUnavailable`].
    pub max_stale: Duration,
}

impl Default for JwksCachePolicy {
    fn default() -> Self {
        Self {
            refresh_every: Duration::from_secs(3600),
            min_refetch: Duration::from_secs(30),
            max_stale: Duration::from_secs(6 * 3600),
        }
    }
}

impl JwksCachePolicy {
    /// This policy with `refresh_every`, `min_refetch` and `max_stale`.
    pub fn new(refresh_every: Duration, min_refetch: Duration, max_stale: Duration) -> Self {
        Self { refresh_every, min_refetch, max_stale }
    }
}

/// What to do for a key.
#[derive(Clone, Debug)]
pub enum KeyLookup {
    /// Verify with these keys.
    Ready(Arc<JwkSet>),
    /// Fetch the issuer's keys (one caller per issuer at a time): [`JwksCache::begin_fetch`]
    /// before sending, [`JwksCache::fetched`] with the outcome, then ask
    /// [`JwksCache::after_fetch`].
    Fetch,
    /// The keys are past fresh but may still serve, and hold the kid: fetch as for
    /// [`Fetch`](Self::Fetch) when no other caller is fetching, else verify with these.
    Refresh(Arc<JwkSet>),
    /// Refuse the token.
    Refused(JwsError),
}

#[derive(Default)]
struct Entry {
    keys: Option<Arc<JwkSet>>,
    fetched_at: Option<Timestamp>,
    /// No fetch before this (the minimum interval, or the broker's `Retry-After`).
    next_fetch: Option<Timestamp>,
    /// A fetch began and has not reported (it may still, or its caller was dropped).
    in_flight: bool,
    last_failure: Option<String>,
}

/// The refusal of a kid the fresh keys lack: unknown, if the broker was asked since it came;
/// unavailable (try again), if the last attempt to ask it failed: a key it rotated in may
/// well be real.
fn unknown_kid(entry: &Entry) -> JwsError {
    match &entry.last_failure {
        Some(failure) => JwsError::KeysUnavailable(failure.clone()),
        None => JwsError::UnknownKey,
    }
}

/// Every trusted issuer's keys, with the decisions of when to fetch: fresh for
/// `refresh_every`; an unknown `kid` refetches at most once per `min_refetch`; while the
/// broker fails, keys up to `max_stale` past fresh are used. Shared by every verification of
/// a process; the lock is never held across a fetch.
pub struct JwksCache {
    policy: JwksCachePolicy,
    entries: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl JwksCache {
    /// An empty cache.
    pub fn new(policy: JwksCachePolicy) -> Self {
        Self { policy, entries: Mutex::new(HashMap::new()) }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What to do for `kid` of `issuer` at `now`. While a fetch is in flight, a kid it may
    /// bring is answered [`KeyLookup::Fetch`]: wait for the fetch (the per-issuer lock), then
    /// ask [`lookup_after_wait`](Self::lookup_after_wait).
    pub fn lookup(&self, issuer: &str, kid: &str, now: Timestamp) -> KeyLookup {
        let entries = self.entries();
        let Some(entry) = entries.get(issuer) else { return KeyLookup::Fetch };
        match self.decide(entry, kid, now) {
            KeyLookup::Refused(_) if entry.in_flight => KeyLookup::Fetch,
            decided => decided,
        }
    }

    /// [`lookup`](Self::lookup) for a caller holding the per-issuer lock: no fetch is in
    /// flight (one that began and never reported was dropped).
    pub fn lookup_after_wait(&self, issuer: &str, kid: &str, now: Timestamp) -> KeyLookup {
        let entries = self.entries();
        match entries.get(issuer) {
            Some(entry) => self.decide(entry, kid, now),
            None => KeyLookup::Fetch,
        }
    }

    fn decide(&self, entry: &Entry, kid: &str, now: Timestamp) -> KeyLookup {
        let may_fetch = entry.next_fetch.is_none_or(|at| now >= at);
        let fresh = entry.fetched_at.is_some_and(|at| now < at.saturating_add(self.policy.refresh_every));
        if fresh && let Some(keys) = entry.keys.as_ref().filter(|keys| keys.key(kid).is_some()) {
            return KeyLookup::Ready(keys.clone());
        }
        if may_fetch {
            match self.stale(entry, kid, now) {
                KeyLookup::Ready(stale) if !fresh => KeyLookup::Refresh(stale),
                _ => KeyLookup::Fetch,
            }
        } else if fresh {
            // An unknown kid, and the keys were fetched moments ago: no fetch in a loop.
            KeyLookup::Refused(unknown_kid(entry))
        } else {
            self.stale(entry, kid, now)
        }
    }

    /// A fetch of `issuer`'s keys starts at `now`: none other before the minimum interval, even
    /// if this one never reports (its caller gave up, its request was cancelled).
    pub fn begin_fetch(&self, issuer: &str, now: Timestamp) {
        let mut entries = self.entries();
        let entry = entries.entry(issuer.to_owned()).or_default();
        entry.next_fetch = Some(now.saturating_add(self.policy.min_refetch));
        entry.in_flight = true;
    }

    /// Records the outcome of fetching `issuer`'s keys at `now`.
    pub fn fetched(&self, issuer: &str, outcome: std::result::Result<JwkSet, FetchFailure>, now: Timestamp) {
        let mut entries = self.entries();
        let entry = entries.entry(issuer.to_owned()).or_default();
        entry.in_flight = false;
        match outcome {
            Ok(keys) => {
                entry.keys = Some(Arc::new(keys));
                entry.fetched_at = Some(now);
                entry.next_fetch = Some(now.saturating_add(self.policy.min_refetch));
                entry.last_failure = None;
            }
            Err(failure) => {
                let asked = failure.retry_after.unwrap_or_default().min(MAX_RETRY_AFTER);
                let wait = asked.max(self.policy.min_refetch);
                entry.next_fetch = Some(now.saturating_add(wait));
                entry.last_failure = Some(failure.message);
            }
        }
    }

    /// [`fetched`](Self::fetched), a failure logged (naming the broker's answer, never a
    /// token).
    pub fn record(&self, issuer: &str, outcome: std::result::Result<JwkSet, FetchFailure>, now: Timestamp) {
        if let Err(failure) = &outcome {
            tracing::warn!(issuer, failure = %failure.message, "cannot fetch the identity broker's keys");
        }
        self.fetched(issuer, outcome, now);
    }

    /// After a fetch (by this caller or another): the keys to verify `kid` with, or why not.
    ///
    /// # Errors
    /// The refusal [`after_fetch`](Self::after_fetch) decided.
    pub fn settled(
        &self,
        issuer: &str,
        kid: &str,
        now: Timestamp,
    ) -> std::result::Result<Arc<JwkSet>, JwsError> {
        match self.after_fetch(issuer, kid, now) {
            KeyLookup::Ready(keys) => Ok(keys),
            KeyLookup::Refused(e) => Err(e),
            KeyLookup::Fetch | KeyLookup::Refresh(_) => {
                Err(JwsError::KeysUnavailable("the keys could not be fetched".into()))
            }
        }
    }

    /// After a fetch (by this caller or another): the keys to verify with, or the refusal.
    pub fn after_fetch(&self, issuer: &str, kid: &str, now: Timestamp) -> KeyLookup {
        let entries = self.entries();
        let Some(entry) = entries.get(issuer) else {
            return KeyLookup::Refused(JwsError::KeysUnavailable("the keys were never fetched".into()));
        };
        let fresh = entry.fetched_at.is_some_and(|at| now < at.saturating_add(self.policy.refresh_every));
        match &entry.keys {
            Some(keys) if fresh && keys.key(kid).is_some() => KeyLookup::Ready(keys.clone()),
            Some(_) if fresh => KeyLookup::Refused(unknown_kid(entry)),
            _ => self.stale(entry, kid, now),
        }
    }

    /// Keys past fresh while the broker fails: used up to `max_stale`.
    fn stale(&self, entry: &Entry, kid: &str, now: Timestamp) -> KeyLookup {
        let failure =
            || entry.last_failure.clone().unwrap_or_else(|| "the identity broker is not answering".into());
        match (&entry.keys, entry.fetched_at) {
            (Some(keys), Some(at))
                if now
                    < at.saturating_add(self.policy.refresh_every).saturating_add(self.policy.max_stale) =>
            {
                match keys.key(kid) {
                    Some(_) => KeyLookup::Ready(keys.clone()),
                    None => KeyLookup::Refused(JwsError::UnknownKey),
                }
            }
            (Some(_), Some(_)) => KeyLookup::Refused(JwsError::KeysUnavailable(format!(
                "{}; the cached keys are too old",
                failure()
            ))),
            _ => KeyLookup::Refused(JwsError::KeysUnavailable(failure())),
        }
    }
}

#[cfg(test)]
#[path = "jws_tests.rs"]
mod tests;
