//! `serviceApp` deliveries: tolerant parsing, what a receiver answers, and the gate every
//! delivery passes (signature, shape, application) before anything happens.

use serde::Deserialize;

use super::signature::{MAX_WEBHOOK_BODY_BYTES, verify_signature};
use crate::error::{Error, Result};
use crate::ids::looks_like_uuid;
use crate::key::OrgId;
use crate::secret::WebhookSecret;
use crate::time::Timestamp;

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
    /// The customer org.
    pub org_id: OrgId,
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
            let org =
                if looks_like_uuid(value) { OrgId::new(value) } else { OrgId::from_webhook(value) }.ok();
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
        org_id: OrgId,
    },
    /// `deauthorized`: the org's tokens were removed (or there were none).
    Removed {
        /// The org.
        org_id: OrgId,
    },
    /// `deauthorized`, but the org was authorized again after it: nothing was removed.
    Superseded {
        /// The org.
        org_id: OrgId,
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
    pub fn org_id(&self) -> Option<&OrgId> {
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
