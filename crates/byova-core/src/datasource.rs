//! Webex's data sources (`/v1/dataSources`), as request values and decisions: a customer org's
//! data source points Webex at the gateway (its URL, the BYOVA schema, the audience and
//! subject of the JWS Webex will sign), and carries a token Webex must keep extending. When it
//! lapses, Webex stops calling the gateway for that org. Every call uses the org's Service App
//! token.
//!
//! [`plan`] decides, from the org's data sources and what is wanted, whether to register one,
//! update one that drifted, extend one whose token is due, or leave it until
//! [`DataSource::extend_at`]. Each register or update sends a fresh nonce.
//!
//! ```
//! use byova_core::datasource::{DataSourcePlan, DataSourceSpec, plan};
//! use byova_core::Timestamp;
//!
//! let wanted = DataSourceSpec::new("https://gateway.example.com/byova")?.with_lifetime_minutes(60)?;
//! // An org without a data source gets one registered.
//! assert_eq!(plan(&[], &wanted, Timestamp::from_unix_secs(1_800_000_000)), DataSourcePlan::Register);
//! # Ok::<(), byova_core::Error>(())
//! ```

use std::time::Duration;

use percent_encoding::utf8_percent_encode;
use serde::Deserialize;

use crate::config::ByovaConfig;
use crate::error::{Error, Result};
use crate::http::{HttpRequest, HttpResponse, Method, RetryClass};
use crate::jws::BYOVA_SCHEMA_ID;
use crate::oauth::api_error;
use crate::secret::{AccessToken, random_bytes};
use crate::time::Timestamp;

/// The longest token lifetime Webex grants a data source (a day).
pub const MAX_LIFETIME_MINUTES: u32 = 1440;

/// The longest an extension waits before expiry: an hour (Webex's own gateway sample renews an
/// hour ahead), or a quarter of the lifetime when that is shorter.
const EXTEND_AHEAD: Duration = Duration::from_secs(3600);

/// What an org's data source should be.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DataSourceSpec {
    /// Where Webex calls the gateway (`url`).
    pub url: String,
    /// The schema (`schemaId`; BYOVA's by default).
    pub schema_id: String,
    /// `aud` of the JWS Webex signs (`audience`; `BYOVAGateway` by default).
    pub audience: String,
    /// `sub` of the JWS Webex signs (`subject`; `callAudioData` by default).
    pub subject: String,
    /// How long each token Webex issues for it lives (`tokenLifetimeMinutes`, 1 to 1,440;
    /// 1,440 by default).
    pub lifetime_minutes: u32,
}

impl DataSourceSpec {
    /// A BYOVA data source at `url` (`https://`), with the defaults above.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `url` is not an `https://` URL with a host.
    pub fn new(url: &str) -> Result<Self> {
        let url = url.trim();
        let host =
            url.strip_prefix("https://").map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
        if host.is_none_or(|h| h.is_empty() || h.contains('@')) {
            return Err(Error::InvalidInput(format!(
                "data source URL {url:?} must be an https:// URL with a host: Webex calls it"
            )));
        }
        Ok(Self {
            url: url.to_owned(),
            schema_id: BYOVA_SCHEMA_ID.to_owned(),
            audience: "BYOVAGateway".to_owned(),
            subject: "callAudioData".to_owned(),
            lifetime_minutes: MAX_LIFETIME_MINUTES,
        })
    }

    /// With the token lifetime `minutes`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] outside 1 to 1,440.
    pub fn with_lifetime_minutes(mut self, minutes: u32) -> Result<Self> {
        if !(1..=MAX_LIFETIME_MINUTES).contains(&minutes) {
            return Err(Error::InvalidInput(format!(
                "a data source's token lifetime is 1 to {MAX_LIFETIME_MINUTES} minutes, not {minutes}"
            )));
        }
        self.lifetime_minutes = minutes;
        Ok(self)
    }

    /// With schema `schema_id`.
    pub fn with_schema_id(mut self, schema_id: &str) -> Self {
        self.schema_id = schema_id.trim().to_owned();
        self
    }

    /// With `audience` and `subject` for the JWS Webex signs.
    pub fn with_audience_and_subject(mut self, audience: &str, subject: &str) -> Self {
        self.audience = audience.to_owned();
        self.subject = subject.to_owned();
        self
    }

    fn lifetime(&self) -> Duration {
        Duration::from_secs(u64::from(self.lifetime_minutes) * 60)
    }
}

/// A registered data source, as `/v1/dataSources` returns it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct DataSource {
    /// Its id.
    pub id: String,
    /// `schemaId`.
    #[serde(default)]
    pub schema_id: String,
    /// `url`.
    #[serde(default)]
    pub url: String,
    /// `audience`.
    #[serde(default)]
    pub audience: String,
    /// `subject`.
    #[serde(default)]
    pub subject: String,
    /// `status` (`active`, `disabled`).
    #[serde(default)]
    pub status: String,
    /// `tokenLifetimeMinutes`.
    #[serde(default)]
    pub token_lifetime_minutes: Option<u32>,
    /// `tokenExpiryTime` (RFC 3339), when given.
    #[serde(default)]
    pub token_expiry_time: Option<String>,
}

impl DataSource {
    /// When its token expires, when Webex said so in a form this reads.
    pub fn token_expiry(&self) -> Option<Timestamp> {
        self.token_expiry_time.as_deref().and_then(Timestamp::parse_rfc3339)
    }

    /// When to extend its token: an hour before expiry, or a quarter of `lifetime` when that
    /// is shorter; `None` without a known expiry.
    pub fn extend_at(&self, lifetime: Duration) -> Option<Timestamp> {
        let ahead = EXTEND_AHEAD.min(lifetime / 4);
        self.token_expiry().map(|expiry| expiry.saturating_sub(ahead))
    }

    /// Whether it is `spec`'s: the same URL and schema (the keys Webex's sample finds it by).
    pub fn is_for(&self, spec: &DataSourceSpec) -> bool {
        self.url == spec.url && self.schema_id.eq_ignore_ascii_case(&spec.schema_id)
    }

    /// Whether it differs from `spec` in what an update sets.
    fn drifted(&self, spec: &DataSourceSpec) -> bool {
        self.audience != spec.audience
            || self.subject != spec.subject
            || self.token_lifetime_minutes.is_some_and(|m| m != spec.lifetime_minutes)
            // A status Webex left out is not a disabled data source.
            || !(self.status.is_empty() || self.status.eq_ignore_ascii_case("active"))
    }
}

/// What to do about an org's data source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSourcePlan {
    /// None is registered for the spec's URL and schema: `POST` one.
    Register,
    /// It differs from the spec (audience, subject, lifetime, disabled): `PUT` the spec (which
    /// extends its token too).
    Update {
        /// Its id.
        id: String,
    },
    /// Its token is due (or its expiry unknown): `PUT` the spec with a fresh nonce.
    Extend {
        /// Its id.
        id: String,
    },
    /// Nothing to do until `extend_at`.
    Keep {
        /// Its id.
        id: String,
        /// When to extend it.
        extend_at: Timestamp,
    },
}

/// What to do, at `now`, about the org's data sources `existing` for `spec`.
pub fn plan(existing: &[DataSource], spec: &DataSourceSpec, now: Timestamp) -> DataSourcePlan {
    let Some(found) = existing.iter().find(|d| d.is_for(spec)) else { return DataSourcePlan::Register };
    let id = found.id.clone();
    if found.drifted(spec) {
        return DataSourcePlan::Update { id };
    }
    match found.extend_at(spec.lifetime()) {
        Some(extend_at) if now < extend_at => DataSourcePlan::Keep { id, extend_at },
        _ => DataSourcePlan::Extend { id },
    }
}

/// What [`ensure`](crate::engine::ServiceAppEngine::ensure_data_source) did, and the data
/// source as Webex answered (or as listed, when it was left).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DataSourceOutcome {
    /// What was done: registered, updated, extended, or left (`Keep`).
    pub action: DataSourcePlan,
    /// The data source.
    pub data_source: DataSource,
}

/// A fresh nonce for a register or an update (a random UUID, version 4).
pub fn new_nonce() -> String {
    nonce_from(random_bytes::<16>())
}

fn nonce_from(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

fn bearer(req: HttpRequest, token: &AccessToken) -> HttpRequest {
    req.header("Accept", "application/json")
        .secret_header("Authorization", format!("Bearer {}", token.expose_secret()))
}

fn body(spec: &DataSourceSpec, nonce: &str) -> serde_json::Value {
    serde_json::json!({
        "schemaId": spec.schema_id,
        "url": spec.url,
        "audience": spec.audience,
        "subject": spec.subject,
        "nonce": nonce,
        "tokenLifetimeMinutes": spec.lifetime_minutes,
    })
}

/// `GET /dataSources`: the org's data sources (the token's org).
pub fn list_request(config: &ByovaConfig, token: &AccessToken) -> HttpRequest {
    bearer(HttpRequest::new(Method::Get, config.api_url("dataSources"), RetryClass::Idempotent), token)
}

/// `POST /dataSources`: registers `spec` with `nonce`. Not repeated once Webex may have seen
/// it (a second one would register twice).
pub fn register_request(
    config: &ByovaConfig,
    token: &AccessToken,
    spec: &DataSourceSpec,
    nonce: &str,
) -> HttpRequest {
    bearer(
        HttpRequest::new(Method::Post, config.api_url("dataSources"), RetryClass::OnlyIfNotProcessed),
        token,
    )
    .json_body(&body(spec, nonce))
}

/// `PUT /dataSources/{id}`: sets `spec` and extends the token, with a fresh `nonce` (a
/// repeated update carries the same nonce, which Webex may refuse: not repeated once seen).
pub fn update_request(
    config: &ByovaConfig,
    token: &AccessToken,
    id: &str,
    spec: &DataSourceSpec,
    nonce: &str,
) -> HttpRequest {
    let id = utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
    let mut body = body(spec, nonce);
    body["status"] = "active".into();
    bearer(
        HttpRequest::new(
            Method::Put,
            config.api_url(&format!("dataSources/{id}")),
            RetryClass::OnlyIfNotProcessed,
        ),
        token,
    )
    .json_body(&body)
}

#[derive(Deserialize)]
struct Items {
    items: Vec<DataSource>,
}

/// Parses `GET /dataSources`.
///
/// # Errors
/// The status's [`Error`], or [`Error::InvalidResponse`] for an unusable body.
pub fn parse_list(response: &HttpResponse) -> Result<Vec<DataSource>> {
    if !response.is_success() {
        return Err(api_error(response));
    }
    let items: Items = serde_json::from_slice(&response.body).map_err(|_| Error::InvalidResponse {
        what: "the data source list is not {\"items\": [...]}".into(),
        status: response.status,
    })?;
    Ok(items.items)
}

/// Parses the answer to a register or an update.
///
/// # Errors
/// The status's [`Error`], or [`Error::InvalidResponse`] for an unusable body.
pub fn parse_one(response: &HttpResponse) -> Result<DataSource> {
    if !response.is_success() {
        return Err(api_error(response));
    }
    serde_json::from_slice(&response.body).map_err(|_| Error::InvalidResponse {
        what: "the data source is not a JSON object with an id".into(),
        status: response.status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://gateway.example.com/byova";

    fn registered(expiry: Option<&str>) -> DataSource {
        DataSource {
            id: "ds-1".into(),
            schema_id: BYOVA_SCHEMA_ID.to_uppercase(),
            url: URL.into(),
            audience: "BYOVAGateway".into(),
            subject: "callAudioData".into(),
            status: "active".into(),
            token_lifetime_minutes: Some(60),
            token_expiry_time: expiry.map(str::to_owned),
        }
    }

    fn spec() -> DataSourceSpec {
        DataSourceSpec::new(URL).unwrap().with_lifetime_minutes(60).unwrap()
    }

    fn at(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).unwrap()
    }

    #[test]
    fn the_plan_registers_updates_extends_or_keeps() {
        let now = at("2026-12-06T12:00:00Z");
        assert_eq!(plan(&[], &spec(), now), DataSourcePlan::Register);
        let mut elsewhere = registered(None);
        elsewhere.url = "https://other.example.com".into();
        assert_eq!(plan(&[elsewhere], &spec(), now), DataSourcePlan::Register, "found by URL and schema");
        // A 60-minute token extends a quarter of its life (15 minutes) before expiry.
        let fresh = registered(Some("2026-12-06T12:30:00Z"));
        assert_eq!(
            plan(std::slice::from_ref(&fresh), &spec(), now),
            DataSourcePlan::Keep { id: "ds-1".into(), extend_at: at("2026-12-06T12:15:00Z") }
        );
        assert_eq!(
            plan(&[fresh], &spec(), at("2026-12-06T12:15:00Z")),
            DataSourcePlan::Extend { id: "ds-1".into() }
        );
        assert_eq!(plan(&[registered(None)], &spec(), now), DataSourcePlan::Extend { id: "ds-1".into() });
        let mut terse = registered(Some("2026-12-06T12:30:00Z"));
        (terse.status, terse.token_lifetime_minutes) = (String::new(), None);
        assert!(
            matches!(plan(&[terse], &spec(), now), DataSourcePlan::Keep { .. }),
            "what Webex leaves out is no drift"
        );
        for drift in [
            |d: &mut DataSource| d.audience = "Other".into(),
            |d: &mut DataSource| d.status = "disabled".into(),
            |d: &mut DataSource| d.token_lifetime_minutes = Some(1440),
        ] {
            let mut d = registered(Some("2026-12-06T12:30:00Z"));
            drift(&mut d);
            assert_eq!(plan(&[d], &spec(), now), DataSourcePlan::Update { id: "ds-1".into() });
        }
        // A day-long token extends an hour ahead.
        let day = DataSourceSpec::new(URL).unwrap();
        let mut long = registered(Some("2026-12-07T12:00:00Z"));
        long.token_lifetime_minutes = Some(1440);
        assert_eq!(
            plan(&[long], &day, now),
            DataSourcePlan::Keep { id: "ds-1".into(), extend_at: at("2026-12-07T11:00:00Z") }
        );
    }

    #[test]
    fn specs_are_https_with_a_lifetime_webex_accepts() {
        for bad in ["http://gateway.example.com", "gateway.example.com", "https://", "https://u@h/x"] {
            assert!(DataSourceSpec::new(bad).is_err(), "{bad}");
        }
        assert!(spec().clone().with_lifetime_minutes(0).is_err());
        assert!(spec().clone().with_lifetime_minutes(1441).is_err());
        assert_eq!(spec().with_lifetime_minutes(1440).unwrap().lifetime_minutes, 1440);
    }

    #[test]
    fn requests_carry_the_spec_a_fresh_nonce_and_the_bearer() {
        let config = ByovaConfig::default();
        let token = AccessToken::new("ORG-TOKEN");
        let (a, b) = (new_nonce(), new_nonce());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(nonce_from([0; 16]), "00000000-0000-4000-8000-000000000000");
        let put = update_request(&config, &token, "ds/1", &spec(), &a);
        assert_eq!(put.url, "https://webexapis.com/v1/dataSources/ds%2F1");
        assert_eq!(put.retry, RetryClass::OnlyIfNotProcessed);
        let sent: serde_json::Value = serde_json::from_slice(&put.body).unwrap();
        assert_eq!(sent["nonce"], a.as_str());
        assert_eq!(sent["tokenLifetimeMinutes"], 60);
        assert_eq!(sent["schemaId"], BYOVA_SCHEMA_ID);
        assert_eq!(sent["status"], "active");
        assert!(!format!("{put:?}").contains("ORG-TOKEN"), "the bearer is not in Debug");
        assert_eq!(list_request(&config, &token).url, "https://webexapis.com/v1/dataSources");
        let post = register_request(&config, &token, &spec(), &b);
        assert_eq!(post.method, Method::Post);
    }

    #[test]
    fn answers_parse_or_name_the_problem() {
        let ok = HttpResponse::new(
            200,
            vec![],
            br#"{"items":[{"id":"ds-1","url":"https://gateway.example.com/byova","schemaId":"x","tokenExpiryTime":"2026-12-06T12:30:00.000Z","jwsToken":"eyJ..."}]}"#.to_vec(),
        );
        let list = parse_list(&ok).unwrap();
        assert_eq!(list[0].token_expiry(), Some(at("2026-12-06T12:30:00Z")));
        let not_json = HttpResponse::new(200, vec![], b"<html/>".to_vec());
        assert!(matches!(parse_list(&not_json), Err(Error::InvalidResponse { .. })));
        assert!(matches!(parse_one(&not_json), Err(Error::InvalidResponse { .. })));
        let denied = HttpResponse::new(403, vec![], br#"{"message":"no"}"#.to_vec());
        assert!(parse_one(&denied).is_err());
    }
}
