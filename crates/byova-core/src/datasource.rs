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
//! Every process sharing a store coordinates through a [`DataSourceRecord`] per org and
//! spec (a few hundred bytes of shared state, written with versioned writes): what Webex last
//! answered, when the token expires, and which process is at it. [`DataSourceRecord::next`]
//! decides from it, with no call to Webex, whether the data source is fine until its
//! extension point, whether another process is extending it right now, or whether this one
//! should claim it and act: one extension per data source per period, however many replicas
//! wake for it. A process that dies holding a claim holds it for [`claim_ttl`] at most (half of
//! how far ahead of expiry the token is extended, 2 minutes at most), and a claim is marked before every register
//! or extension is sent, so whoever takes over reads Webex's list before sending anything.
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
use serde::{Deserialize, Serialize};

use crate::config::ByovaConfig;
use crate::error::{Error, Result};
use crate::http::{HttpRequest, HttpResponse, Method, RetryClass};
use crate::jws::BYOVA_SCHEMA_ID;
use crate::key::OrgId;
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
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when it is blank (it would match any data source Webex lists
    /// without one).
    pub fn with_schema_id(mut self, schema_id: &str) -> Result<Self> {
        let schema_id = schema_id.trim();
        if schema_id.is_empty() {
            return Err(Error::InvalidInput("a data source's schema id cannot be blank".into()));
        }
        self.schema_id = schema_id.to_owned();
        Ok(self)
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
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_lifetime_minutes: Option<u32>,
    /// `tokenExpiryTime` (RFC 3339), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
        self.token_expiry().map(|expiry| expiry.saturating_sub(extend_ahead(lifetime)))
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

/// How long before expiry a token of `lifetime` is extended.
fn extend_ahead(lifetime: Duration) -> Duration {
    EXTEND_AHEAD.min(lifetime / 4)
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

/// What [`ensure_data_source`](crate::engine::ServiceAppEngine::ensure_data_source) or
/// [`keep_data_source`](crate::engine::ServiceAppEngine::keep_data_source) did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DataSourceOutcome {
    /// What was done.
    pub action: DataSourceAction,
    /// The data source as Webex answered, or as last recorded (`None`: none is known yet,
    /// for instance while another process registers it or the budget deferred its
    /// registration).
    pub data_source: Option<DataSource>,
    /// When its token expires, when known (Webex's `tokenExpiryTime`, or the lifetime counted
    /// from the request when Webex left it out).
    pub expires_at: Option<Timestamp>,
    /// When to look at it again: its extension point or the hourly check against Webex's
    /// list, whichever comes first; for `Busy`, a few seconds; for `Deferred`, when the budget
    /// or Webex's `Retry-After` allows.
    pub next_check: Timestamp,
}

/// What was done about an org's data source. Every one is an `Ok` answer; with `Busy` and
/// `Deferred` nothing was sent, and the caller looks again at the outcome's `next_check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DataSourceAction {
    /// None was registered: one was (`POST`).
    Registered,
    /// It differed from the spec: it was updated, which extends its token too (`PUT`).
    Updated,
    /// Its token was due: it was extended (`PUT` with a fresh nonce).
    Extended,
    /// Nothing was due.
    Kept,
    /// Another process sharing the store is registering or extending it right now.
    Busy,
    /// Not now: the data-source budget has no room, or Webex answered 429 (every process
    /// sharing the store then waits), before `next_check`.
    Deferred,
}

impl DataSourceAction {
    /// `registered`, `updated`, `extended`, `kept`, `busy` or `deferred`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::Updated => "updated",
            Self::Extended => "extended",
            Self::Kept => "kept",
            Self::Busy => "busy",
            Self::Deferred => "deferred",
        }
    }

    /// Whether Webex was asked to register, update or extend.
    pub fn renewed(self) -> bool {
        matches!(self, Self::Registered | Self::Updated | Self::Extended)
    }
}

/// The shared state name the budget for `/v1/dataSources` calls is stored under.
pub const DATA_SOURCE_BUDGET_STATE: &str = "data-source-budget";

/// How often a record is checked against Webex's list even when nothing seems due (someone
/// may have changed or deleted the data source at Webex).
pub const RECONCILE_EVERY: Duration = Duration::from_secs(3600);

/// A process that found another's claim looks again after this (or when the claim ends, if
/// sooner): by then the other has usually written what it did.
pub const BUSY_RECHECK: Duration = Duration::from_secs(3);

/// How long a process's claim on a data source lasts: half of how far ahead of expiry it is
/// extended (a quarter of the lifetime, an hour at most), 5 s to 2 min; it is renewed before
/// each register or extension is sent. A process that dies holding one delays the extension by
/// this at most, and the token then has as long again to live (with a lifetime of one minute,
/// 7.5 s: keep short lifetimes for tests). A call slower than the claim (the request timeout is
/// 30 s by default) may be repeated by the process that takes over: one extension too many,
/// never a lapse.
pub fn claim_ttl(spec: &DataSourceSpec) -> Duration {
    (extend_ahead(spec.lifetime()) / 2).clamp(Duration::from_secs(5), Duration::from_secs(120))
}

/// The shared state name of `org`'s data source for `spec`: `data-source-` and 32 hex digits
/// of a SHA-256 of the org, URL and schema (letters, digits and `-`, as every store takes).
pub fn record_name(org: &OrgId, spec: &DataSourceSpec) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(
        format!("{}\n{}\n{}", org.as_str(), spec.url, spec.schema_id.to_ascii_lowercase()).as_bytes(),
    );
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("data-source-{hex}")
}

/// What every process sharing a store knows of one org's data source (stored as JSON under
/// [`record_name`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DataSourceRecord {
    /// What Webex last answered (`None`: none known; look it up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source: Option<DataSource>,
    /// When its token expires (unix ms): Webex's `tokenExpiryTime`, or the lifetime counted
    /// from the request when Webex left it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// When the record was last checked against Webex's list (unix ms).
    #[serde(default)]
    pub verified_at_ms: u64,
    /// A process is registering or extending it until then (unix ms).
    #[serde(default)]
    pub claimed_until_ms: u64,
    /// A register or an update is being sent, or was sent and its answer lost: Webex may have
    /// acted on it, so the list is read before anything else is sent.
    #[serde(default)]
    pub unsure: bool,
    /// Registrations, updates and extensions made, by every process.
    #[serde(default)]
    pub renewals: u64,
}

/// What a process should do about an org's data source, from its [`DataSourceRecord`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordDecision {
    /// Another process holds the claim until then.
    Busy(Timestamp),
    /// Nothing is due before then (the extension point, or the hourly check against Webex's
    /// list): no call to Webex.
    Keep(Timestamp),
    /// Claim it, read the list first when `list`, then act as [`plan`] decides.
    Claim {
        /// Read the org's data sources before acting (the record is missing, unsure, stale,
        /// or not the spec's).
        list: bool,
    },
}

impl DataSourceRecord {
    /// Parses the stored form (`None`: unreadable, start afresh).
    pub fn from_json(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    /// The stored form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// When its token expires, when known.
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.expires_at_ms.map(Timestamp::from_unix_millis)
    }

    /// When to extend it for `spec`, when known.
    pub fn extend_at(&self, spec: &DataSourceSpec) -> Option<Timestamp> {
        self.expires_at().map(|at| at.saturating_sub(extend_ahead(spec.lifetime())))
    }

    /// What to do at `now` (`reconcile`: read Webex's list whatever the record says, as an
    /// operator's `ensure` does).
    pub fn next(&self, spec: &DataSourceSpec, now: Timestamp, reconcile: bool) -> RecordDecision {
        let claimed_until = Timestamp::from_unix_millis(self.claimed_until_ms);
        if claimed_until > now {
            return RecordDecision::Busy(claimed_until);
        }
        let known = self.data_source.as_ref().filter(|d| d.is_for(spec) && !d.drifted(spec));
        let stale = now.saturating_duration_since(Timestamp::from_unix_millis(self.verified_at_ms))
            >= RECONCILE_EVERY;
        if reconcile || known.is_none() || self.unsure || stale {
            return RecordDecision::Claim { list: true };
        }
        match self.extend_at(spec) {
            Some(at) if now < at => RecordDecision::Keep(at.min(self.reconcile_at())),
            Some(_) => RecordDecision::Claim { list: false },
            None => RecordDecision::Claim { list: true },
        }
    }

    /// When the record is next checked against Webex's list.
    fn reconcile_at(&self) -> Timestamp {
        Timestamp::from_unix_millis(self.verified_at_ms).saturating_add(RECONCILE_EVERY)
    }

    /// When to look at it again after it was renewed or checked at `now`: its extension point
    /// or the hourly check, whichever comes first, and not before its claim would have run out
    /// (an expiry Webex set shorter than asked must not make every look an extension).
    pub fn next_check(&self, spec: &DataSourceSpec, now: Timestamp) -> Timestamp {
        let at = self.extend_at(spec).map_or(self.reconcile_at(), |at| at.min(self.reconcile_at()));
        at.max(now.saturating_add(claim_ttl(spec)))
    }

    /// Whether an attempt at `now` keeps a token alive that is due (or lapsed): it goes before
    /// registrations and checks in the budget.
    pub fn due(&self, spec: &DataSourceSpec, now: Timestamp) -> bool {
        self.extend_at(spec).is_some_and(|at| now >= at)
    }

    /// Gives the listed data source this record knows, when Webex's list leaves its
    /// `tokenExpiryTime` out, the expiry recorded when it was last renewed (else every
    /// `ensure` would extend it again).
    pub fn fill_in_expiry(&self, listed: &mut [DataSource]) {
        let (Some(known), Some(expiry)) = (&self.data_source, self.expires_at()) else { return };
        for d in listed.iter_mut().filter(|d| d.id == known.id && d.token_expiry_time.is_none()) {
            d.token_expiry_time = Some(expiry.to_rfc3339());
        }
    }

    /// This record claimed by a process until `until`.
    #[must_use]
    pub fn claimed(mut self, until: Timestamp) -> Self {
        self.claimed_until_ms = until.as_unix_millis();
        self
    }

    /// This record claimed until `until` by a process about to send a register or an
    /// extension: until its answer is recorded, whoever takes over reads the list first.
    #[must_use]
    pub fn sending(mut self, until: Timestamp) -> Self {
        self.claimed_until_ms = until.as_unix_millis();
        self.unsure = true;
        self
    }

    /// This record after Webex answered `data_source` to a request sent at `sent_at` for
    /// `spec` (its expiry counted from then when Webex left it out); `renewed`: it registered,
    /// updated or extended; `listed`: it came from (or after) reading the list.
    #[must_use]
    pub fn answered(
        mut self,
        data_source: DataSource,
        spec: &DataSourceSpec,
        sent_at: Timestamp,
        renewed: bool,
        listed: bool,
    ) -> Self {
        let expiry = data_source.token_expiry().or_else(|| {
            // Without Webex's word, count the lifetime from the request (early, never late);
            // a listed one of unknown expiry is extended now.
            renewed.then(|| sent_at.saturating_add(spec.lifetime()))
        });
        self.expires_at_ms = expiry.map(Timestamp::as_unix_millis);
        self.data_source = Some(data_source);
        if listed || renewed && self.verified_at_ms == 0 {
            self.verified_at_ms = sent_at.as_unix_millis();
        }
        self.renewals += u64::from(renewed);
        self.claimed_until_ms = 0;
        self.unsure = false;
        self
    }

    /// This record after a register or an extension failed with `error`, its claim released:
    /// `unsure` when Webex may have acted on it; a data source Webex no longer has is forgotten.
    #[must_use]
    pub fn failed(mut self, error: &Error) -> Self {
        self.claimed_until_ms = 0;
        self.unsure = may_have_acted(error);
        if matches!(error, Error::NotFound(_)) {
            self.data_source = None;
            self.unsure = true;
        }
        self
    }

    /// This record with its claim released and nothing else changed.
    #[must_use]
    pub fn released(mut self) -> Self {
        self.claimed_until_ms = 0;
        self
    }
}

/// Whether Webex may have acted on a request that ended in `error` (the answer was lost, was
/// a server error, or was not Webex's).
pub fn may_have_acted(error: &Error) -> bool {
    matches!(
        error,
        Error::Transport { maybe_sent: true, .. }
            | Error::Server(_)
            | Error::UnrecognizedAnswer(_)
            | Error::InvalidResponse { .. }
    )
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
    HttpRequest::new(Method::Get, config.api_url("dataSources"), RetryClass::Idempotent).api_bearer(token)
}

/// `POST /dataSources`: registers `spec` with `nonce`. Not repeated once Webex may have seen
/// it (a second one would register twice).
pub fn register_request(
    config: &ByovaConfig,
    token: &AccessToken,
    spec: &DataSourceSpec,
    nonce: &str,
) -> HttpRequest {
    HttpRequest::new(Method::Post, config.api_url("dataSources"), RetryClass::OnlyIfNotProcessed)
        .api_bearer(token)
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
    HttpRequest::new(
        Method::Put,
        config.api_url(&format!("dataSources/{id}")),
        RetryClass::OnlyIfNotProcessed,
    )
    .api_bearer(token)
    .json_body(&body)
}

/// `DELETE /dataSources/{id}`.
pub fn delete_request(config: &ByovaConfig, token: &AccessToken, id: &str) -> HttpRequest {
    let id = utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
    HttpRequest::new(Method::Delete, config.api_url(&format!("dataSources/{id}")), RetryClass::Idempotent)
        .api_bearer(token)
}

#[derive(Deserialize)]
struct Items {
    items: Vec<DataSource>,
}

/// The error of a non-2xx answer to a data-source call. A 4xx that is not in Webex's shape (a
/// proxy's or a firewall's HTML page, an empty body) is not Webex's verdict:
/// [`Error::UnrecognizedAnswer`] (tried again later, the list read first), never a 401 that
/// would renew the org's token, a 404 that would forget the data source or a 409. A 429 counts
/// whatever its body (Webex's own is HTML).
fn answer_error(response: &HttpResponse) -> Error {
    let error = crate::oauth::api_error(response);
    let webex_shaped =
        serde_json::from_slice::<serde_json::Value>(&response.body).is_ok_and(|v| v.is_object());
    let not_webex =
        (400..=499).contains(&response.status) && !matches!(response.status, 423 | 429) && !webex_shaped;
    match error.api_failure() {
        Some(failure) if not_webex => Error::UnrecognizedAnswer(failure.clone()),
        _ => error,
    }
}

/// Parses `GET /dataSources`.
///
/// # Errors
/// The status's [`Error`], or [`Error::InvalidResponse`] for an unusable body.
pub fn parse_list(response: &HttpResponse) -> Result<Vec<DataSource>> {
    if !response.is_success() {
        return Err(answer_error(response));
    }
    let items: Items = serde_json::from_slice(&response.body).map_err(|_| Error::InvalidResponse {
        what: "the data source list is not {\"items\": [...]}".into(),
        status: response.status,
    })?;
    Ok(items.items)
}

/// Parses the answer to a `DELETE`: `true` when it was deleted, `false` when Webex says there
/// is no such data source (a 404 in Webex's shape).
///
/// # Errors
/// The status's [`Error`]; a 4xx not in Webex's shape is [`Error::UnrecognizedAnswer`].
pub fn parse_deletion(response: &HttpResponse) -> Result<bool> {
    match (response.status, answer_error(response)) {
        (200..=299, _) => Ok(true),
        (404, Error::NotFound(_)) => Ok(false),
        (_, error) => Err(error),
    }
}

/// Parses the answer to a register or an update.
///
/// # Errors
/// The status's [`Error`], or [`Error::InvalidResponse`] for an unusable body.
pub fn parse_one(response: &HttpResponse) -> Result<DataSource> {
    if !response.is_success() {
        return Err(answer_error(response));
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

    fn record_of(expiry: &str, verified: &str) -> DataSourceRecord {
        DataSourceRecord {
            data_source: Some(registered(Some(expiry))),
            expires_at_ms: Some(at(expiry).as_unix_millis()),
            verified_at_ms: at(verified).as_unix_millis(),
            ..DataSourceRecord::default()
        }
    }

    #[test]
    fn the_shared_record_decides_without_calling_webex_while_it_is_fresh() {
        let spec = spec();
        let now = at("2026-12-06T12:00:00Z");
        let fresh = record_of("2026-12-06T12:30:00Z", "2026-12-06T11:50:00Z");
        assert_eq!(fresh.next(&spec, now, false), RecordDecision::Keep(at("2026-12-06T12:15:00Z")));
        assert!(!fresh.due(&spec, now) && fresh.due(&spec, at("2026-12-06T12:15:00Z")));
        // A day-long token is still checked against Webex's list hourly.
        let day = DataSourceSpec::new(URL).unwrap();
        let mut long = record_of("2026-12-07T11:00:00Z", "2026-12-06T11:50:00Z");
        long.data_source.as_mut().unwrap().token_lifetime_minutes = Some(1440);
        assert_eq!(long.next(&day, now, false), RecordDecision::Keep(at("2026-12-06T12:50:00Z")));
        assert_eq!(long.next_check(&day, now), at("2026-12-06T12:50:00Z"));
        // An expiry shorter than asked never makes the next look immediate.
        let short = record_of("2026-12-06T12:00:10Z", "2026-12-06T12:00:00Z");
        assert_eq!(
            short.next_check(&spec, now),
            at("2026-12-06T12:02:00Z"),
            "not before the claim would run out"
        );
        assert_eq!(
            fresh.next(&spec, now, true),
            RecordDecision::Claim { list: true },
            "an ensure reads the list"
        );
        assert_eq!(
            fresh.next(&spec, at("2026-12-06T12:15:00Z"), false),
            RecordDecision::Claim { list: false },
            "due: extended with no list"
        );
        let claimed = fresh.clone().claimed(at("2026-12-06T12:00:15Z"));
        assert_eq!(claimed.next(&spec, now, false), RecordDecision::Busy(at("2026-12-06T12:00:15Z")));
        assert_eq!(claimed.next(&spec, now, true), RecordDecision::Busy(at("2026-12-06T12:00:15Z")));
        assert_eq!(claimed.clone().released().next(&spec, now, false), fresh.next(&spec, now, false));
        let list = RecordDecision::Claim { list: true };
        assert_eq!(DataSourceRecord::default().next(&spec, now, false), list, "nothing known");
        let stale = record_of("2026-12-06T12:30:00Z", "2026-12-06T10:59:00Z");
        assert_eq!(stale.next(&spec, now, false), list, "not checked against Webex for an hour");
        let mut unsure = fresh.clone();
        unsure.unsure = true;
        assert_eq!(unsure.next(&spec, now, false), list, "an answer was lost");
        let other = spec.clone().with_lifetime_minutes(90).unwrap();
        assert_eq!(fresh.next(&other, now, false), list, "the spec changed");
    }

    #[test]
    fn answers_and_failures_update_the_record() {
        let spec = spec();
        let sent = at("2026-12-06T12:00:00Z");
        let claimed = DataSourceRecord::default().claimed(at("2026-12-06T12:00:15Z"));
        // Webex left tokenExpiryTime out: the lifetime counts from the request, so the next
        // call is not an extension again.
        let made = claimed.clone().answered(registered(None), &spec, sent, true, false);
        assert_eq!(made.expires_at(), Some(at("2026-12-06T13:00:00Z")));
        assert_eq!(
            (made.renewals, made.claimed_until_ms, made.verified_at_ms),
            (1, 0, sent.as_unix_millis())
        );
        assert!(matches!(made.next(&spec, sent, false), RecordDecision::Keep(_)));
        let listed = claimed.clone().answered(registered(None), &spec, sent, false, true);
        assert_eq!(listed.expires_at(), None, "a listed one of unknown expiry");
        assert_eq!(listed.next(&spec, sent, false), RecordDecision::Claim { list: true });
        let marked = made.clone().sending(at("2026-12-06T12:00:15Z"));
        assert!(marked.unsure, "whoever takes over a claim that was sending reads the list");
        assert_eq!(marked.clone().released().next(&spec, sent, false), RecordDecision::Claim { list: true });
        let lost = marked.clone().failed(&Error::Transport { message: "reset".into(), maybe_sent: true });
        assert!(lost.unsure && lost.claimed_until_ms == 0);
        let refused = marked.failed(&Error::Validation(crate::error::ApiFailure::new(400)));
        assert!(!refused.unsure, "Webex refused it: nothing was done");
        let gone = made.clone().failed(&Error::NotFound(crate::error::ApiFailure::new(404)));
        assert_eq!(gone.data_source, None);
        let again = gone.answered(registered(Some("2026-12-06T13:00:00Z")), &spec, sent, true, true);
        assert_eq!((again.renewals, again.unsure), (2, false));
        let mut listed = vec![registered(None)];
        made.fill_in_expiry(&mut listed);
        assert_eq!(listed[0].token_expiry(), made.expires_at(), "a terse list keeps the recorded expiry");
        assert!(matches!(plan(&listed, &spec, sent), DataSourcePlan::Keep { .. }));
        let stored = DataSourceRecord::from_json(&again.to_json()).unwrap();
        assert_eq!(stored, again);
        assert_eq!(DataSourceRecord::from_json(b"{not json"), None);
    }

    #[test]
    fn claims_end_well_inside_the_time_left_and_names_fit_every_store() {
        let lifetime = |m| DataSourceSpec::new(URL).unwrap().with_lifetime_minutes(m).unwrap();
        assert_eq!(claim_ttl(&lifetime(2)), Duration::from_secs(15), "half of the 30 s ahead");
        assert_eq!(claim_ttl(&lifetime(1)), Duration::from_millis(7500));
        assert_eq!(claim_ttl(&lifetime(1440)), Duration::from_secs(120));
        let org = OrgId::from_static("63b02f90-9cc6-43b8-aa6d-cad425ac554c");
        let name = record_name(&org, &spec());
        assert!(crate::storage::check_state_name(&name).is_ok(), "{name}");
        assert_eq!(name, record_name(&org, &spec().with_schema_id(&BYOVA_SCHEMA_ID.to_uppercase()).unwrap()));
        assert_ne!(name, record_name(&OrgId::from_static("other"), &spec()));
        assert_ne!(name, record_name(&org, &DataSourceSpec::new("https://other.example.com").unwrap()));
    }

    #[test]
    fn specs_are_https_with_a_lifetime_webex_accepts() {
        assert!(
            matches!(spec().with_schema_id("  "), Err(Error::InvalidInput(_))),
            "a blank schema is refused"
        );
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
        let gone = HttpResponse::new(404, vec![], br#"{"message":"not found","trackingId":"t"}"#.to_vec());
        assert!(matches!(parse_one(&gone), Err(Error::NotFound(_))), "Webex's 404");
        for status in [401, 404, 409] {
            for body in [&b"<html>blocked</html>"[..], b""] {
                let page = HttpResponse::new(status, vec![], body.to_vec());
                assert!(
                    matches!(parse_one(&page), Err(Error::UnrecognizedAnswer(_))),
                    "a {status} not in Webex's shape is not Webex's verdict"
                );
                assert!(matches!(parse_deletion(&page), Err(Error::UnrecognizedAnswer(_))));
            }
        }
        assert_eq!(parse_deletion(&gone).ok(), Some(false), "Webex says it is gone");
        assert_eq!(parse_deletion(&HttpResponse::new(204, vec![], Vec::new())).ok(), Some(true));
        let html_429 = HttpResponse::new(429, vec![("Retry-After".into(), "3".into())], b"<html/>".to_vec());
        assert!(matches!(parse_list(&html_429), Err(Error::RateLimited { .. })), "Webex's 429 is HTML");
    }
}
