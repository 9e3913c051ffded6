//! Webex webhooks: `serviceApp` `authorized`/`deauthorized` deliveries (tolerant parsing,
//! `X-Spark-Signature` verification) and the `/webhooks` API as request values.

use hmac::{Hmac, Mac};
use percent_encoding::utf8_percent_encode;
use serde::Deserialize;
use sha1::Sha1;

use crate::config::ByovaConfig;
use crate::error::{Error, Result, SignatureError};
use crate::http::{HttpRequest, HttpResponse, Method, RetryClass};
use crate::ids::{decode_org_id, looks_like_uuid};
use crate::oauth::api_error;
use crate::secret::{AccessToken, WebhookSecret};
use crate::time::Timestamp;

/// Deliveries larger than this are refused before any HMAC work.
pub const MAX_WEBHOOK_BODY_BYTES: usize = 64 * 1024;

/// The header carrying the delivery's HMAC-SHA1.
pub const SIGNATURE_HEADER: &str = "X-Spark-Signature";

/// Verifies `X-Spark-Signature`: lowercase or uppercase hex of HMAC-SHA1 over the raw body,
/// keyed by the webhook secret, compared in constant time.
///
/// ```
/// use byova_core::{verify_signature, WebhookSecret};
/// let secret = WebhookSecret::new("example-secret");
/// assert!(verify_signature(&secret, br#"{"id":"x"}"#, Some("9e3f8035dcfe0c9b0c40f10cab7c44b505bd746a")).is_ok());
/// ```
///
/// # Errors
/// A [`SignatureError`] saying what was wrong.
pub fn verify_signature(
    secret: &WebhookSecret,
    raw_body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    if raw_body.len() > MAX_WEBHOOK_BODY_BYTES {
        return Err(SignatureError::TooLarge);
    }
    let header = header.map(str::trim).filter(|h| !h.is_empty()).ok_or(SignatureError::Missing)?;
    let expected = decode_hex_20(header).ok_or(SignatureError::Malformed)?;
    let mut mac = hmac_for(secret);
    mac.update(raw_body);
    mac.verify_slice(&expected).map_err(|_| SignatureError::Mismatch)
}

/// The `X-Spark-Signature` value for `raw_body` under `secret` (lowercase hex), as Webex sends.
pub fn sign(secret: &WebhookSecret, raw_body: &[u8]) -> String {
    let mut mac = hmac_for(secret);
    mac.update(raw_body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac_for(secret: &WebhookSecret) -> Hmac<Sha1> {
    // HMAC accepts keys of any length.
    <Hmac<Sha1> as Mac>::new_from_slice(secret.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
}

fn decode_hex_20(s: &str) -> Option<[u8; 20]> {
    let bytes = s.as_bytes();
    if bytes.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// What a `serviceApp` delivery announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceAppEventKind {
    /// A customer admin authorized the Service App: fetch tokens for the org.
    Authorized,
    /// The authorization was withdrawn: remove the org's tokens.
    Deauthorized,
}

impl ServiceAppEventKind {
    /// The event name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceAppEventKind::Authorized => "authorized",
            ServiceAppEventKind::Deauthorized => "deauthorized",
        }
    }
}

/// A parsed `serviceApp` delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceAppEvent {
    /// Authorized or deauthorized.
    pub kind: ServiceAppEventKind,
    /// The customer org's UUID.
    pub org_id: String,
    /// Which field named it: `data.authorizerOrgId`, `orgId` (the envelope's) or `data.orgId`.
    pub org_source: &'static str,
    /// The webhook's id, when present.
    pub webhook_id: Option<String>,
    /// The Service App's application id (`data.id`, or `data.applicationId`), when present.
    pub application_id: Option<String>,
    /// When the (de)authorization happened, when the delivery says (`data.authorizationDate`,
    /// `data.deauthorizationDate`). Never the envelope's `created`: that is when the webhook
    /// was created.
    pub occurred_at: Option<Timestamp>,
}

#[derive(Deserialize)]
struct Envelope {
    id: Option<String>,
    resource: Option<String>,
    event: Option<String>,
    #[serde(rename = "orgId")]
    org_id: Option<String>,
    #[serde(default)]
    data: EnvelopeData,
}

#[derive(Deserialize, Default)]
struct EnvelopeData {
    id: Option<String>,
    #[serde(rename = "applicationId")]
    application_id: Option<String>,
    #[serde(rename = "authorizerOrgId")]
    authorizer_org_id: Option<String>,
    #[serde(rename = "orgId")]
    org_id: Option<String>,
    #[serde(rename = "authorizationDate")]
    authorization_date: Option<String>,
    #[serde(rename = "deauthorizationDate")]
    deauthorization_date: Option<String>,
}

/// Parses a `serviceApp` delivery tolerantly. The org comes from `data.authorizerOrgId` (it is
/// unambiguous), else the envelope `orgId` (per the webhooks guide the webhook owner's org, per
/// Cisco's sample the customer's), else `data.orgId`; each may be a base64 Webex id (padded or
/// not) or a plain UUID.
///
/// Verify the signature first ([`verify_signature`]) over the same raw bytes.
///
/// # Errors
/// [`Error::InvalidInput`] when the body is too large, not JSON, not a `serviceApp`
/// delivery, has an unknown event, or carries no usable org id.
pub fn parse_service_app_event(raw_body: &[u8]) -> Result<ServiceAppEvent> {
    if raw_body.len() > MAX_WEBHOOK_BODY_BYTES {
        return Err(Error::InvalidInput("the webhook delivery is larger than 64 KiB".into()));
    }
    let env: Envelope = serde_json::from_slice(raw_body).map_err(|_| {
        Error::InvalidInput("the webhook delivery is not a JSON object of the Webex webhook shape".into())
    })?;
    if env.resource.as_deref() != Some("serviceApp") {
        return Err(Error::InvalidInput("the webhook delivery is not for the serviceApp resource".into()));
    }
    let kind = match env.event.as_deref() {
        Some("authorized") => ServiceAppEventKind::Authorized,
        Some("deauthorized") => ServiceAppEventKind::Deauthorized,
        _ => {
            return Err(Error::InvalidInput(
                "the serviceApp delivery's event is neither authorized nor deauthorized".into(),
            ));
        }
    };
    let candidates = [
        ("data.authorizerOrgId", env.data.authorizer_org_id.as_deref()),
        ("orgId", env.org_id.as_deref()),
        ("data.orgId", env.data.org_id.as_deref()),
    ];
    let (org_source, org_id) = candidates
        .into_iter()
        .filter_map(|(field, value)| value.map(|v| (field, v.trim())))
        .filter(|(_, value)| !value.is_empty())
        .find_map(|(field, value)| {
            let org = if looks_like_uuid(value) { Some(value.to_owned()) } else { decode_org_id(value).ok() };
            org.map(|org| (field, org))
        })
        .ok_or_else(|| Error::InvalidInput("the serviceApp delivery carries no usable org id".into()))?;
    let application_id = env.data.id.or(env.data.application_id);
    // The event's own time, by kind. A `deauthorized` may instead carry the time of the
    // authorization it revokes; the removal rule (remove what is not newer) holds either way.
    let occurred_at = match kind {
        ServiceAppEventKind::Authorized => env.data.authorization_date,
        ServiceAppEventKind::Deauthorized => env.data.deauthorization_date.or(env.data.authorization_date),
    }
    .and_then(|date| Timestamp::parse_rfc3339(&date));
    Ok(ServiceAppEvent { kind, org_id, org_source, webhook_id: env.id, application_id, occurred_at })
}

/// What handling a `serviceApp` delivery did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebhookOutcome {
    /// `authorized`: the org holds tokens for this authorization (fetched now, or already).
    Registered {
        /// The org.
        org_id: String,
    },
    /// `deauthorized`: the org's tokens were removed (or there were none).
    Removed {
        /// The org.
        org_id: String,
    },
    /// `deauthorized`, but the org was authorized again after it: nothing was removed.
    Superseded {
        /// The org.
        org_id: String,
    },
    /// A delivery for another Service App; nothing was done.
    OtherApplication,
}

impl WebhookOutcome {
    /// A stable lowercase name: `registered`, `removed`, `superseded`, `other_application`.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Registered { .. } => "registered",
            Self::Removed { .. } => "removed",
            Self::Superseded { .. } => "superseded",
            Self::OtherApplication => "other_application",
        }
    }

    /// The org the delivery was about, when it was for this application.
    #[must_use]
    pub fn org_id(&self) -> Option<&str> {
        match self {
            Self::Registered { org_id } | Self::Removed { org_id } | Self::Superseded { org_id } => {
                Some(org_id)
            }
            Self::OtherApplication => None,
        }
    }
}

/// Why a delivery's body could not be taken, before any byova code looked at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryBodyProblem {
    /// Larger than [`MAX_WEBHOOK_BODY_BYTES`].
    TooLarge,
    /// It did not arrive within the receiver's reading time.
    TooSlow,
    /// The connection failed while it was read.
    Unreadable,
}

/// How a webhook receiver answers a delivery whose body it could not take: status and JSON
/// body. `byova serve` and byova-axum's route answer alike.
pub fn delivery_body_reply(problem: DeliveryBodyProblem) -> (u16, String) {
    let (status, error) = match problem {
        DeliveryBodyProblem::TooLarge => (413, "the delivery is larger than 64 KiB"),
        DeliveryBodyProblem::TooSlow => (408, "the delivery arrived too slowly"),
        DeliveryBodyProblem::Unreadable => (400, "the delivery's body could not be read"),
    };
    crate::metrics::metrics().record_webhook("invalid");
    (status, serde_json::json!({ "error": error }).to_string())
}

/// How a webhook receiver answers a request to the webhook path with another method than
/// `POST` (it also sends `Allow: POST`).
pub fn delivery_method_reply() -> (u16, String) {
    (405, serde_json::json!({ "error": "method not allowed: deliveries are POSTed" }).to_string())
}

/// How a webhook receiver answers a delivery byova handled (or refused): status and JSON body,
/// counted in the metrics and logged. `byova serve` and byova-axum's route answer alike: 200
/// with the outcome; 401 for a signature that does not verify; 400 for a body that is not a
/// `serviceApp` delivery; 500 (and a log line, not details anyone who can reach the port
/// reads) for anything else, so that Webex delivers it again.
pub fn delivery_reply(result: &crate::error::Result<WebhookOutcome>) -> (u16, String) {
    let metrics = crate::metrics::metrics();
    match result {
        Ok(outcome) => {
            metrics.record_webhook(outcome.as_str());
            (200, serde_json::json!({ "outcome": outcome.as_str(), "org_id": outcome.org_id() }).to_string())
        }
        Err(e @ crate::error::Error::WebhookSignature(_)) => {
            metrics.record_webhook("rejected");
            tracing::warn!(error = %e, "rejected a webhook delivery");
            (401, serde_json::json!({ "error": e.to_string() }).to_string())
        }
        Err(e @ crate::error::Error::InvalidInput(_)) => {
            metrics.record_webhook("invalid");
            (400, serde_json::json!({ "error": e.to_string() }).to_string())
        }
        Err(e) => {
            metrics.record_webhook("failed");
            tracing::warn!(error = %e, "could not apply a webhook delivery");
            (500, serde_json::json!({ "error": "the delivery could not be applied now; deliver it again later" }).to_string())
        }
    }
}

/// How deliveries are verified. There is no way to turn verification off by leaving a
/// setting out: without a secret, deliveries are refused until one is configured or unsigned
/// deliveries are allowed by name.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum WebhookVerification {
    /// No secret is configured and unsigned deliveries were not allowed: every delivery is
    /// refused with [`Error::Configuration`] (a 500 to Webex, and a log line).
    #[default]
    Unconfigured,
    /// Deliveries must carry a valid `X-Spark-Signature` under one of these: the current
    /// secret first, then those being retired.
    Signed(Vec<WebhookSecret>),
    /// Deliveries are taken without a signature. Unsafe on any port others can reach: anyone
    /// who reaches it can register or remove orgs. For webhooks created without a secret.
    UnsignedAllowed,
}

impl WebhookVerification {
    /// Signed with `secrets` (the current one first); no secrets at all is
    /// [`Unconfigured`](Self::Unconfigured), never "unsigned".
    pub fn signed(secrets: Vec<WebhookSecret>) -> Self {
        if secrets.is_empty() { Self::Unconfigured } else { Self::Signed(secrets) }
    }

    /// The secret new webhooks are created with, when one is configured.
    pub fn current_secret(&self) -> Option<&WebhookSecret> {
        match self {
            Self::Signed(secrets) => secrets.first(),
            Self::Unconfigured | Self::UnsignedAllowed => None,
        }
    }

    /// Whether unsigned deliveries (and webhooks created without a secret) were allowed by name.
    pub fn allows_unsigned(&self) -> bool {
        matches!(self, Self::UnsignedAllowed)
    }
}

/// What a receiver without a secret says.
fn unconfigured() -> Error {
    Error::Configuration(
        "no webhook secret is configured, so deliveries cannot be verified: set the secret the webhooks \
         were created with (BYOVA_WEBHOOK_SECRET, ByovaBuilder::webhook_secret), or allow unsigned deliveries \
         by name (ByovaBuilder::allow_unsigned_webhooks, `--allow-unsigned`; unsafe on a reachable port)"
            .into(),
    )
}

/// The gate every delivery passes before anything happens: signature, shape, application.
/// It remembers nothing: repeated, late and out-of-order deliveries are made harmless by the
/// store (a fetch satisfied by a registration at least as new, a removal that spares a newer
/// one), not by a list of deliveries seen.
#[derive(Debug)]
pub struct WebhookGate {
    verification: WebhookVerification,
    application_id: String,
}

/// What the gate decided about a delivery.
#[derive(Debug)]
pub enum Admission {
    /// Act on it: fetch tokens (authorized) or remove them (deauthorized).
    Act(ServiceAppEvent),
    /// Nothing to do (another application's delivery): answer 2xx.
    Done(WebhookOutcome),
}

impl WebhookGate {
    /// A gate for the Service App `application_id`, verifying as `verification` says.
    pub fn new(application_id: impl Into<String>, verification: WebhookVerification) -> Self {
        Self { verification, application_id: application_id.into() }
    }

    /// How this gate verifies.
    pub fn verification(&self) -> &WebhookVerification {
        &self.verification
    }

    /// Verifies and parses one delivery.
    ///
    /// # Errors
    /// [`Error::WebhookSignature`] for a missing or wrong signature,
    /// [`Error::Configuration`] when no secret is configured and unsigned deliveries were not
    /// allowed, [`Error::InvalidInput`] for a malformed delivery.
    pub fn admit(&self, raw_body: &[u8], signature_header: Option<&str>) -> Result<Admission> {
        match &self.verification {
            WebhookVerification::Unconfigured => return Err(unconfigured()),
            WebhookVerification::UnsignedAllowed => {}
            WebhookVerification::Signed(secrets) => {
                if !secrets.iter().any(|s| verify_signature(s, raw_body, signature_header).is_ok()) {
                    let first = secrets.first().ok_or_else(unconfigured)?;
                    verify_signature(first, raw_body, signature_header)?;
                }
            }
        }
        let event = parse_service_app_event(raw_body)?;
        if event.application_id.as_deref().is_some_and(|app| app.trim_end_matches('=') != self.application_id)
        {
            return Ok(Admission::Done(WebhookOutcome::OtherApplication));
        }
        Ok(Admission::Act(event))
    }
}

/// A registered webhook, as the `/webhooks` API returns it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Webhook {
    /// The webhook's id.
    pub id: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// Where deliveries go.
    #[serde(default)]
    pub target_url: String,
    /// The resource (`serviceApp`, …).
    #[serde(default)]
    pub resource: String,
    /// The event (`authorized`, …).
    #[serde(default)]
    pub event: String,
    /// The filter, when set.
    #[serde(default)]
    pub filter: Option<String>,
    /// `active` or `inactive`.
    #[serde(default)]
    pub status: Option<String>,
    /// When it was created.
    #[serde(default)]
    pub created: Option<String>,
    /// The secret it signs deliveries with, when the API echoes it.
    #[serde(default, deserialize_with = "secret_from_text")]
    pub secret: Option<WebhookSecret>,
}

fn secret_from_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<WebhookSecret>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()).map(WebhookSecret::new))
}

/// A webhook to create.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NewWebhook {
    /// Its name.
    pub name: String,
    /// Where deliveries go.
    pub target_url: String,
    /// The resource.
    pub resource: String,
    /// The event.
    pub event: String,
    /// An optional filter.
    pub filter: Option<String>,
    /// The secret deliveries are signed with.
    pub secret: Option<WebhookSecret>,
}

impl NewWebhook {
    /// The two webhooks a provider needs: `serviceApp` `authorized` and `deauthorized` for its
    /// application, delivered to `target_url`.
    pub fn service_app_pair(
        application_id: &str,
        target_url: &str,
        secret: Option<&WebhookSecret>,
    ) -> [NewWebhook; 2] {
        [ServiceAppEventKind::Authorized, ServiceAppEventKind::Deauthorized].map(|kind| NewWebhook {
            name: format!("byova serviceApp {}", kind.as_str()),
            target_url: target_url.to_owned(),
            resource: "serviceApp".to_owned(),
            event: kind.as_str().to_owned(),
            filter: Some(format!("id={application_id}")),
            secret: secret.cloned(),
        })
    }

    /// Whether `existing` delivers this webhook's events: same resource, event, target and
    /// filter (active or not, whatever its secret).
    pub fn matches(&self, existing: &Webhook) -> bool {
        existing.resource == self.resource
            && existing.event == self.event
            && existing.target_url == self.target_url
            && existing.filter == self.filter
    }
}

/// What making `wanted` true of `existing` takes, one webhook at a time.
#[derive(Debug)]
#[non_exhaustive]
pub enum WebhookChange<'a> {
    /// Nothing delivers it: create it.
    Create(&'a NewWebhook),
    /// One delivers it but is inactive (Webex disabled it after failed deliveries) or signs
    /// with another secret (or does not say which): update it, active, with the wanted secret.
    Update {
        /// The existing webhook's id.
        id: String,
        /// What it should be.
        webhook: &'a NewWebhook,
    },
}

/// The changes `ensure_service_app_webhooks` makes: create what is missing, re-activate what
/// Webex disabled, move webhooks to the current secret (secret rotation).
///
/// Every matching webhook is brought up to date, duplicates included: one left on an old
/// secret would fail once that secret is retired. A webhook whose listing does not show its
/// secret is updated too (Webex does not document whether it echoes it; an extra `PUT` is
/// harmless, a webhook left on a retired secret is not).
pub fn webhook_changes<'a>(wanted: &'a [NewWebhook], existing: &[Webhook]) -> Vec<WebhookChange<'a>> {
    let mut changes = Vec::new();
    for w in wanted {
        let mut matching = existing.iter().filter(|e| w.matches(e)).peekable();
        if matching.peek().is_none() {
            changes.push(WebhookChange::Create(w));
        }
        for e in matching {
            let inactive = e.status.as_deref().is_some_and(|s| s != "active");
            let stale_secret = match (&w.secret, &e.secret) {
                (Some(wanted), Some(has)) => !wanted.ct_eq(has),
                (Some(_), None) => true,
                (None, _) => false,
            };
            if inactive || stale_secret {
                changes.push(WebhookChange::Update { id: e.id.clone(), webhook: w });
            }
        }
    }
    changes
}

/// One page of `GET /webhooks`.
#[derive(Debug)]
#[non_exhaustive]
pub struct WebhookPage {
    /// The webhooks on this page.
    pub items: Vec<Webhook>,
    /// The next page's URL (from the `Link` header), verbatim.
    pub next: Option<String>,
}

fn bearer(req: HttpRequest, token: &AccessToken) -> HttpRequest {
    req.header("Accept", "application/json")
        .secret_header("Authorization", format!("Bearer {}", token.expose_secret()))
}

/// `GET /webhooks?max=…`: the first page.
pub fn list_webhooks_request(config: &ByovaConfig, token: &AccessToken, max: u32) -> HttpRequest {
    let url = config.api_url(&format!("webhooks?max={}", max.clamp(1, 1000)));
    bearer(HttpRequest::new(Method::Get, url, RetryClass::Idempotent), token)
}

/// `GET` of a `Link: rel="next"` URL, verbatim.
///
/// # Errors
/// [`Error::InvalidResponse`] when the URL points outside the configured API base: the bearer
/// token is never sent to another host.
pub fn next_page_request(config: &ByovaConfig, token: &AccessToken, next_url: &str) -> Result<HttpRequest> {
    let base = format!("{}/", config.base_url);
    if !next_url.starts_with(&base) {
        return Err(Error::InvalidResponse {
            what: "a pagination link points outside the configured API base".into(),
            status: 200,
        });
    }
    Ok(bearer(HttpRequest::new(Method::Get, next_url.to_owned(), RetryClass::Idempotent), token))
}

/// `POST /webhooks`.
pub fn create_webhook_request(
    config: &ByovaConfig,
    token: &AccessToken,
    webhook: &NewWebhook,
) -> HttpRequest {
    let mut body = serde_json::json!({
        "name": webhook.name,
        "targetUrl": webhook.target_url,
        "resource": webhook.resource,
        "event": webhook.event,
    });
    if let Some(filter) = &webhook.filter {
        body["filter"] = filter.as_str().into();
    }
    if let Some(secret) = &webhook.secret {
        body["secret"] = secret.expose_secret().into();
    }
    bearer(HttpRequest::new(Method::Post, config.api_url("webhooks"), RetryClass::OnlyIfNotProcessed), token)
        .json_body(&body)
}

/// `PUT /webhooks/{id}`: the webhook's name, target and secret, and `status: active`.
pub fn update_webhook_request(
    config: &ByovaConfig,
    token: &AccessToken,
    webhook_id: &str,
    webhook: &NewWebhook,
) -> HttpRequest {
    let id = utf8_percent_encode(webhook_id, percent_encoding::NON_ALPHANUMERIC);
    let mut body =
        serde_json::json!({ "name": webhook.name, "targetUrl": webhook.target_url, "status": "active" });
    if let Some(secret) = &webhook.secret {
        body["secret"] = secret.expose_secret().into();
    }
    bearer(
        HttpRequest::new(Method::Put, config.api_url(&format!("webhooks/{id}")), RetryClass::Idempotent),
        token,
    )
    .json_body(&body)
}

/// `DELETE /webhooks/{id}`.
pub fn delete_webhook_request(config: &ByovaConfig, token: &AccessToken, webhook_id: &str) -> HttpRequest {
    let id = utf8_percent_encode(webhook_id, percent_encoding::NON_ALPHANUMERIC);
    bearer(
        HttpRequest::new(Method::Delete, config.api_url(&format!("webhooks/{id}")), RetryClass::Idempotent),
        token,
    )
}

#[derive(Deserialize)]
struct Items {
    items: Vec<Webhook>,
}

/// Parses a page of `GET /webhooks`.
///
/// # Errors
/// The status's [`Error`], or [`Error::InvalidResponse`] for an unusable body.
pub fn parse_webhook_page(response: &HttpResponse) -> Result<WebhookPage> {
    if !response.is_success() {
        return Err(api_error(response));
    }
    let items: Items = serde_json::from_slice(&response.body).map_err(|_| Error::InvalidResponse {
        what: "the webhook list is not {\"items\": [...]}".into(),
        status: response.status,
    })?;
    Ok(WebhookPage { items: items.items, next: response.header("Link").and_then(next_link) })
}

/// Parses the answer to `POST /webhooks`.
///
/// # Errors
/// The status's [`Error`], or [`Error::InvalidResponse`] for an unusable body.
pub fn parse_webhook(response: &HttpResponse) -> Result<Webhook> {
    if !response.is_success() {
        return Err(api_error(response));
    }
    serde_json::from_slice(&response.body).map_err(|_| Error::InvalidResponse {
        what: "the webhook is not a JSON object with an id".into(),
        status: response.status,
    })
}

/// Checks the answer to `DELETE /webhooks/{id}`. A 404 counts as done: it is already gone.
///
/// # Errors
/// The status's [`Error`].
pub fn parse_webhook_deletion(response: &HttpResponse) -> Result<()> {
    match response.status {
        200..=299 | 404 => Ok(()),
        _ => Err(api_error(response)),
    }
}

/// The `rel="next"` URL of an RFC 8288 `Link` header.
pub fn next_link(link_header: &str) -> Option<String> {
    link_header.split(',').find_map(|part| {
        let (url, params) = part.trim().split_once(';')?;
        let url = url.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            })
            .then(|| url.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::encode_webex_id;

    const VECTOR_SIG: &str = "9e3f8035dcfe0c9b0c40f10cab7c44b505bd746a";

    #[test]
    fn signature_vector_and_case() {
        let secret = WebhookSecret::new("example-secret");
        assert_eq!(sign(&secret, br#"{"id":"x"}"#), VECTOR_SIG);
        assert_eq!(verify_signature(&secret, br#"{"id":"x"}"#, Some(VECTOR_SIG)), Ok(()));
        assert_eq!(verify_signature(&secret, br#"{"id":"x"}"#, Some(&VECTOR_SIG.to_uppercase())), Ok(()));
        assert_eq!(
            verify_signature(&secret, br#"{"id": "x"}"#, Some(VECTOR_SIG)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(&WebhookSecret::new("other"), br#"{"id":"x"}"#, Some(VECTOR_SIG)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn malformed_signature_headers() {
        let secret = WebhookSecret::new("example-secret");
        let body = br#"{"id":"x"}"#;
        assert_eq!(verify_signature(&secret, body, None), Err(SignatureError::Missing));
        assert_eq!(verify_signature(&secret, body, Some("  ")), Err(SignatureError::Missing));
        for bad in [
            &VECTOR_SIG[..38],
            &format!("{VECTOR_SIG}00")[..],
            "zz3f8035dcfe0c9b0c40f10cab7c44b505bd746a",
            "é3f8035dcfe0c9b0c40f10cab7c44b505bd746a",
        ] {
            assert_eq!(verify_signature(&secret, body, Some(bad)), Err(SignatureError::Malformed), "{bad}");
        }
        let big = vec![b' '; MAX_WEBHOOK_BODY_BYTES + 1];
        assert_eq!(verify_signature(&secret, &big, Some(VECTOR_SIG)), Err(SignatureError::TooLarge));
    }

    fn org(uuid: &str) -> String {
        encode_webex_id("us", "ORGANIZATION", uuid)
    }

    #[test]
    fn parses_the_reference_delivery() {
        let body = format!(
            r#"{{"id":"WH1","name":"n","targetUrl":"https://x","resource":"serviceApp","event":"authorized",
               "orgId":"{}","createdBy":"p","appId":"a","ownedBy":"creator","status":"active",
               "created":"2026-01-02T03:04:05.678Z","actorId":"p","data":{{"id":"APP","orgId":"{}"}}}}"#,
            org("12345678-9abc-4def-8123-456789abcdef"),
            org("12345678-9abc-4def-8123-456789abcdef")
        );
        let e = parse_service_app_event(body.as_bytes()).unwrap();
        assert_eq!(e.kind, ServiceAppEventKind::Authorized);
        assert_eq!(e.org_id, "12345678-9abc-4def-8123-456789abcdef");
        assert_eq!(e.webhook_id.as_deref(), Some("WH1"));
        assert_eq!(e.application_id.as_deref(), Some("APP"));
    }

    #[test]
    fn the_unambiguous_authorizer_org_comes_first_then_the_envelope_then_data() {
        // The guide's shape: the envelope names the provider (the webhook's owner).
        let guide = format!(
            r#"{{"resource":"serviceApp","event":"authorized","orgId":"{}","created":"2025-01-01T00:00:00Z",
               "data":{{"authorizerOrgId":"{}","authorizationDate":"2026-05-06T07:08:09.123Z"}}}}"#,
            org("00000000-0000-0000-0000-00000000abcd"),
            org("12345678-9abc-4def-8123-456789abcdef")
        );
        let e = parse_service_app_event(guide.as_bytes()).unwrap();
        assert_eq!(
            (e.org_id.as_str(), e.org_source),
            ("12345678-9abc-4def-8123-456789abcdef", "data.authorizerOrgId")
        );
        assert_eq!(
            e.occurred_at,
            Timestamp::parse_rfc3339("2026-05-06T07:08:09.123Z"),
            "the event's own time"
        );
        // Cisco's sample: the customer in the envelope, no per-event time (never `created`).
        let sample = format!(
            r#"{{"resource":"serviceApp","event":"deauthorized","orgId":"{}","created":"2025-01-01T00:00:00Z"}}"#,
            org("aaaa")
        );
        let e = parse_service_app_event(sample.as_bytes()).unwrap();
        assert_eq!(
            (e.kind, e.org_id.as_str(), e.org_source),
            (ServiceAppEventKind::Deauthorized, "aaaa", "orgId")
        );
        assert_eq!(e.occurred_at, None);
        let data_only = format!(
            r#"{{"resource":"serviceApp","event":"authorized","orgId":"","data":{{"orgId":"{}"}}}}"#,
            org("bbbb")
        );
        assert_eq!(parse_service_app_event(data_only.as_bytes()).unwrap().org_source, "data.orgId");
        let padded = format!("{}==", org("12345678-9abc-4def-8123-456789abcde"));
        let plain = format!(
            r#"{{"resource":"serviceApp","event":"authorized","orgId":"{padded}","data":{{"authorizerOrgId":" 12345678-9abc-4def-8123-456789abcdef "}}}}"#
        );
        assert_eq!(
            parse_service_app_event(plain.as_bytes()).unwrap().org_id,
            "12345678-9abc-4def-8123-456789abcdef"
        );
    }

    #[test]
    fn malformed_deliveries_are_typed_errors() {
        let cases = [
            "".to_owned(),
            "not json".to_owned(),
            "[]".to_owned(),
            r#"{"resource":"messages","event":"created","orgId":"x"}"#.to_owned(),
            format!(r#"{{"resource":"serviceApp","event":"updated","orgId":"{}"}}"#, org("o")),
            r#"{"resource":"serviceApp","event":"authorized"}"#.to_owned(),
            r#"{"resource":"serviceApp","event":"authorized","orgId":"!!!"}"#.to_owned(),
            r#"{"resource":"serviceApp","event":"authorized","orgId":5}"#.to_owned(),
            " ".repeat(MAX_WEBHOOK_BODY_BYTES + 1),
        ];
        for case in cases {
            assert!(
                matches!(parse_service_app_event(case.as_bytes()), Err(Error::InvalidInput(_))),
                "{case:.60}"
            );
        }
    }

    #[test]
    fn the_gate_verifies_with_any_current_secret_remembers_nothing_and_filters_applications() {
        let (new, old) = (WebhookSecret::new("new"), WebhookSecret::new("old"));
        let gate = WebhookGate::new("APP", WebhookVerification::signed(vec![new.clone(), old.clone()]));
        let body = format!(
            r#"{{"id":"W","resource":"serviceApp","event":"authorized","orgId":"{}","data":{{"id":"APP"}}}}"#,
            org("o")
        );
        assert!(matches!(
            gate.admit(body.as_bytes(), None),
            Err(Error::WebhookSignature(SignatureError::Missing))
        ));
        for secret in [&new, &old] {
            let sig = sign(secret, body.as_bytes());
            for _ in 0..2 {
                assert!(
                    matches!(gate.admit(body.as_bytes(), Some(&sig)).unwrap(), Admission::Act(_)),
                    "repeats act"
                );
            }
        }
        let stranger = sign(&WebhookSecret::new("retired long ago"), body.as_bytes());
        assert!(matches!(
            gate.admit(body.as_bytes(), Some(&stranger)),
            Err(Error::WebhookSignature(SignatureError::Mismatch))
        ));
        let other = body.replace("\"APP\"", "\"OTHER\"");
        let sig = sign(&new, other.as_bytes());
        assert!(matches!(
            gate.admit(other.as_bytes(), Some(&sig)).unwrap(),
            Admission::Done(WebhookOutcome::OtherApplication)
        ));
        let open = WebhookGate::new("APP", WebhookVerification::UnsignedAllowed);
        assert!(matches!(open.admit(body.as_bytes(), None).unwrap(), Admission::Act(_)));
    }

    /// Rule 12: leaving the secret out never turns verification off.
    #[test]
    fn a_gate_without_a_secret_refuses_everything_unless_unsigned_is_allowed_by_name() {
        let body =
            format!(r#"{{"id":"W","resource":"serviceApp","event":"deauthorized","orgId":"{}"}}"#, org("o"));
        for gate in [
            WebhookGate::new("APP", WebhookVerification::default()),
            WebhookGate::new("APP", WebhookVerification::signed(Vec::new())),
        ] {
            for signature in [None, Some("0".repeat(40))] {
                let err = gate.admit(body.as_bytes(), signature.as_deref()).unwrap_err();
                assert!(
                    matches!(&err, Error::Configuration(m) if m.contains("allow_unsigned_webhooks")),
                    "{err}"
                );
            }
            assert!(gate.verification().current_secret().is_none());
        }
        let open = WebhookGate::new("APP", WebhookVerification::UnsignedAllowed);
        assert!(matches!(open.admit(body.as_bytes(), None).unwrap(), Admission::Act(_)));
        assert!(open.verification().allows_unsigned());
    }

    #[test]
    fn link_header_parsing() {
        assert_eq!(
            next_link(r#"<https://w.test/v1/webhooks?max=2&cursor=abc>; rel="next""#).as_deref(),
            Some("https://w.test/v1/webhooks?max=2&cursor=abc")
        );
        assert_eq!(
            next_link(r#"<https://a>; rel="first", <https://b>; rel="next""#).as_deref(),
            Some("https://b")
        );
        assert_eq!(next_link(r#"<https://a>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn snapshot_webhook_requests() {
        let config = ByovaConfig::with_base_url("https://w.test/v1").unwrap();
        let token = AccessToken::new("BEARER-CANARY");
        let list = list_webhooks_request(&config, &token, 100);
        assert_eq!((list.method, list.url.as_str()), (Method::Get, "https://w.test/v1/webhooks?max=100"));
        assert_eq!(list.header_value("authorization"), Some("Bearer BEARER-CANARY"));
        assert!(next_page_request(&config, &token, "https://w.test/v1/webhooks?cursor=x").is_ok());
        assert!(next_page_request(&config, &token, "https://evil.test/v1/webhooks?cursor=x").is_err());
        assert!(next_page_request(&config, &token, "https://w.test/v1x/steal").is_err());
        let [auth, _deauth] =
            NewWebhook::service_app_pair("APPID", "https://hook.test/x", Some(&WebhookSecret::new("S")));
        let create = create_webhook_request(&config, &token, &auth);
        assert_eq!(create.retry, RetryClass::OnlyIfNotProcessed);
        assert_eq!(
            String::from_utf8(create.body.to_vec()).unwrap(),
            r#"{"event":"authorized","filter":"id=APPID","name":"byova serviceApp authorized","resource":"serviceApp","secret":"S","targetUrl":"https://hook.test/x"}"#
        );
        let del = delete_webhook_request(&config, &token, "a/b");
        assert_eq!((del.method, del.url.as_str()), (Method::Delete, "https://w.test/v1/webhooks/a%2Fb"));
    }

    #[test]
    fn ensure_creates_what_is_missing_reactivates_and_moves_to_the_current_secret() {
        let current = WebhookSecret::new("new");
        let wanted = NewWebhook::service_app_pair("APPID", "https://hook.test/x", Some(&current));
        let existing: Vec<Webhook> = serde_json::from_str(
            r#"[{"id":"1","targetUrl":"https://hook.test/x","resource":"serviceApp","event":"authorized","filter":"id=APPID","status":"active","secret":"new"},
                {"id":"2","targetUrl":"https://other/x","resource":"serviceApp","event":"deauthorized","filter":"id=APPID"}]"#,
        ).unwrap();
        let changes = webhook_changes(&wanted, &existing);
        assert!(matches!(changes.as_slice(), [WebhookChange::Create(w)] if w.event == "deauthorized"));
        let disabled_or_old: Vec<Webhook> = serde_json::from_str(
            r#"[{"id":"1","targetUrl":"https://hook.test/x","resource":"serviceApp","event":"authorized","filter":"id=APPID","status":"inactive","secret":"new"},
                {"id":"2","targetUrl":"https://hook.test/x","resource":"serviceApp","event":"deauthorized","filter":"id=APPID","status":"active","secret":"old"}]"#,
        ).unwrap();
        let ids: Vec<String> = webhook_changes(&wanted, &disabled_or_old)
            .into_iter()
            .map(|c| match c {
                WebhookChange::Update { id, .. } => id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, ["1", "2"]);
        assert!(format!("{:?}", disabled_or_old[1]).contains("[redacted]"), "an echoed secret never prints");
        let unsigned = NewWebhook::service_app_pair("APPID", "https://hook.test/x", None);
        let ok: Vec<Webhook> = serde_json::from_str(
            r#"[{"id":"1","targetUrl":"https://hook.test/x","resource":"serviceApp","event":"authorized","filter":"id=APPID"},
                {"id":"2","targetUrl":"https://hook.test/x","resource":"serviceApp","event":"deauthorized","filter":"id=APPID","status":"active"}]"#,
        ).unwrap();
        assert!(webhook_changes(&unsigned, &ok).is_empty());
        let duplicates: Vec<Webhook> = serde_json::from_str(
            r#"[{"id":"1","targetUrl":"https://hook.test/x","resource":"serviceApp","event":"authorized","filter":"id=APPID","status":"active","secret":"new"},
                {"id":"3","targetUrl":"https://hook.test/x","resource":"serviceApp","event":"authorized","filter":"id=APPID","status":"active","secret":"old"},
                {"id":"2","targetUrl":"https://hook.test/x","resource":"serviceApp","event":"deauthorized","filter":"id=APPID","status":"active"}]"#,
        ).unwrap();
        let ids: Vec<String> = webhook_changes(&wanted, &duplicates)
            .into_iter()
            .map(|c| match c {
                WebhookChange::Update { id, .. } => id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, ["3", "2"], "a duplicate on the old secret and one that does not show its secret");
        let update = update_webhook_request(
            &ByovaConfig::with_base_url("https://w.test/v1").unwrap(),
            &AccessToken::new("T"),
            "a/b",
            &wanted[0],
        );
        assert_eq!((update.method, update.url.as_str()), (Method::Put, "https://w.test/v1/webhooks/a%2Fb"));
    }

    #[test]
    fn webhook_page_and_deletion_parsing() {
        let page = HttpResponse::new(
            200,
            vec![("link".into(), r#"<https://w/v1/webhooks?cursor=2>; rel="next""#.into())],
            br#"{"items":[{"id":"1"}]}"#.to_vec(),
        );
        let p = parse_webhook_page(&page).unwrap();
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.next.as_deref(), Some("https://w/v1/webhooks?cursor=2"));
        assert!(parse_webhook_page(&HttpResponse::new(200, vec![], b"{}".to_vec())).is_err());
        assert!(matches!(
            parse_webhook_page(&HttpResponse::new(401, vec![], vec![])),
            Err(Error::Authentication(_))
        ));
        assert!(parse_webhook_deletion(&HttpResponse::new(204, vec![], vec![])).is_ok());
        assert!(parse_webhook_deletion(&HttpResponse::new(404, vec![], vec![])).is_ok());
        assert!(parse_webhook_deletion(&HttpResponse::new(500, vec![], vec![])).is_err());
    }
}
