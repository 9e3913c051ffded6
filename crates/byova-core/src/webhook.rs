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
    /// The webhook's id, when present.
    pub webhook_id: Option<String>,
    /// The Service App's application id (`data.id`, or `data.applicationId`), when present.
    pub application_id: Option<String>,
    /// Identifies this delivery for de-duplication: repeated deliveries of one event share it.
    pub delivery_key: String,
}

#[derive(Deserialize)]
struct Envelope {
    id: Option<String>,
    resource: Option<String>,
    event: Option<String>,
    #[serde(rename = "orgId")]
    org_id: Option<String>,
    created: Option<String>,
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
    created: Option<String>,
}

/// Parses a `serviceApp` delivery tolerantly: the org comes from the envelope `orgId`, else
/// `data.authorizerOrgId`, else `data.orgId`, each either a base64 Webex id or a plain UUID.
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
    let candidates =
        [env.org_id.as_deref(), env.data.authorizer_org_id.as_deref(), env.data.org_id.as_deref()];
    let org_id = candidates
        .into_iter()
        .flatten()
        .filter(|c| !c.trim().is_empty())
        .find_map(
            |c| if looks_like_uuid(c.trim()) { Some(c.trim().to_owned()) } else { decode_org_id(c).ok() },
        )
        .ok_or_else(|| Error::InvalidInput("the serviceApp delivery carries no usable org id".into()))?;
    let application_id = env.data.id.or(env.data.application_id);
    let moment = env.data.authorization_date.or(env.data.created).or(env.created).unwrap_or_default();
    let delivery_key =
        format!("{}|{}|{}|{}", env.id.as_deref().unwrap_or_default(), kind.as_str(), org_id, moment);
    Ok(ServiceAppEvent { kind, org_id, webhook_id: env.id, application_id, delivery_key })
}

/// What handling a `serviceApp` delivery did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebhookOutcome {
    /// `authorized`: tokens were fetched and stored for the org.
    Registered {
        /// The org.
        org_id: String,
    },
    /// `deauthorized`: the org's tokens were removed.
    Removed {
        /// The org.
        org_id: String,
    },
    /// A repeated delivery of an event already handled; nothing was done.
    Duplicate {
        /// The org.
        org_id: String,
    },
    /// A delivery for another Service App; nothing was done.
    OtherApplication,
}

/// The gate every delivery passes before anything happens: signature, shape, application,
/// repetition. The flavours only carry out what it admits.
#[derive(Debug)]
pub struct WebhookGate {
    secret: Option<WebhookSecret>,
    application_id: String,
    seen: std::sync::Mutex<(std::collections::HashSet<String>, std::collections::VecDeque<String>)>,
}

/// What the gate decided about a delivery.
#[derive(Debug)]
pub enum Admission {
    /// Act on it: fetch tokens (authorized) or remove them (deauthorized).
    Act(ServiceAppEvent),
    /// Already handled (or being handled): answer 2xx, do nothing.
    Done(WebhookOutcome),
}

/// How many delivery keys the gate remembers.
pub const WEBHOOK_DEDUP_CAPACITY: usize = 10_000;

impl WebhookGate {
    /// A gate for the Service App `application_id`; with `secret`, deliveries must carry a valid
    /// `X-Spark-Signature` under it.
    pub fn new(application_id: impl Into<String>, secret: Option<WebhookSecret>) -> Self {
        Self { secret, application_id: application_id.into(), seen: std::sync::Mutex::default() }
    }

    /// Verifies, parses and de-duplicates one delivery.
    ///
    /// # Errors
    /// [`Error::WebhookSignature`] for a missing or wrong signature (when a secret is set),
    /// [`Error::InvalidInput`] for a malformed delivery.
    pub fn admit(&self, raw_body: &[u8], signature_header: Option<&str>) -> Result<Admission> {
        if let Some(secret) = &self.secret {
            verify_signature(secret, raw_body, signature_header)?;
        }
        let event = parse_service_app_event(raw_body)?;
        if event.application_id.as_deref().is_some_and(|app| app.trim_end_matches('=') != self.application_id)
        {
            return Ok(Admission::Done(WebhookOutcome::OtherApplication));
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if !seen.0.insert(event.delivery_key.clone()) {
            return Ok(Admission::Done(WebhookOutcome::Duplicate { org_id: event.org_id }));
        }
        seen.1.push_back(event.delivery_key.clone());
        if seen.1.len() > WEBHOOK_DEDUP_CAPACITY
            && let Some(old) = seen.1.pop_front()
        {
            seen.0.remove(&old);
        }
        Ok(Admission::Act(event))
    }

    /// Carrying out `event` failed: forget it, so Webex's redelivery is acted on.
    pub fn failed(&self, event: &ServiceAppEvent) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.0.remove(&event.delivery_key);
        seen.1.retain(|k| *k != event.delivery_key);
    }

    /// The outcome of carrying out `event` successfully.
    pub fn outcome(event: &ServiceAppEvent) -> WebhookOutcome {
        match event.kind {
            ServiceAppEventKind::Authorized => WebhookOutcome::Registered { org_id: event.org_id.clone() },
            ServiceAppEventKind::Deauthorized => WebhookOutcome::Removed { org_id: event.org_id.clone() },
        }
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

    /// Whether `existing` already covers this webhook (same resource, event, target and
    /// filter, and active).
    pub fn is_covered_by(&self, existing: &Webhook) -> bool {
        existing.resource == self.resource
            && existing.event == self.event
            && existing.target_url == self.target_url
            && existing.filter == self.filter
            && existing.status.as_deref().unwrap_or("active") == "active"
    }
}

/// Of `wanted`, the webhooks `existing` does not cover: what `ensure_service_app_webhooks`
/// must create.
pub fn missing_webhooks<'a>(wanted: &'a [NewWebhook], existing: &[Webhook]) -> Vec<&'a NewWebhook> {
    wanted.iter().filter(|w| !existing.iter().any(|e| w.is_covered_by(e))).collect()
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
    fn org_falls_back_to_authorizer_then_data_org() {
        let a = format!(
            r#"{{"resource":"serviceApp","event":"deauthorized","data":{{"authorizerOrgId":"{}","orgId":"{}"}}}}"#,
            org("aaaa"),
            org("bbbb")
        );
        let e = parse_service_app_event(a.as_bytes()).unwrap();
        assert_eq!((e.kind, e.org_id.as_str()), (ServiceAppEventKind::Deauthorized, "aaaa"));
        let b = format!(
            r#"{{"resource":"serviceApp","event":"authorized","orgId":"","data":{{"orgId":"{}"}}}}"#,
            org("bbbb")
        );
        assert_eq!(parse_service_app_event(b.as_bytes()).unwrap().org_id, "bbbb");
        let plain = r#"{"resource":"serviceApp","event":"authorized","orgId":"12345678-9abc-4def-8123-456789abcdef"}"#;
        assert_eq!(
            parse_service_app_event(plain.as_bytes()).unwrap().org_id,
            "12345678-9abc-4def-8123-456789abcdef"
        );
    }

    #[test]
    fn repeated_deliveries_share_a_key_and_distinct_events_do_not() {
        let body = |event: &str, created: &str| {
            format!(
                r#"{{"id":"W","resource":"serviceApp","event":"{event}","created":"{created}","orgId":"{}"}}"#,
                org("o")
            )
        };
        let k = |b: String| parse_service_app_event(b.as_bytes()).unwrap().delivery_key;
        assert_eq!(k(body("authorized", "t1")), k(body("authorized", "t1")));
        assert_ne!(k(body("authorized", "t1")), k(body("deauthorized", "t1")));
        assert_ne!(k(body("authorized", "t1")), k(body("authorized", "t2")));
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
    fn the_gate_verifies_dedupes_and_filters_applications() {
        let secret = WebhookSecret::new("s");
        let gate = WebhookGate::new("APP", Some(secret.clone()));
        let body = format!(
            r#"{{"id":"W","resource":"serviceApp","event":"authorized","orgId":"{}","data":{{"id":"APP"}}}}"#,
            org("o")
        );
        let sig = sign(&secret, body.as_bytes());
        assert!(matches!(
            gate.admit(body.as_bytes(), None),
            Err(Error::WebhookSignature(SignatureError::Missing))
        ));
        let Admission::Act(event) = gate.admit(body.as_bytes(), Some(&sig)).unwrap() else {
            panic!("first delivery acts")
        };
        assert!(matches!(
            gate.admit(body.as_bytes(), Some(&sig)).unwrap(),
            Admission::Done(WebhookOutcome::Duplicate { .. })
        ));
        gate.failed(&event);
        assert!(
            matches!(gate.admit(body.as_bytes(), Some(&sig)).unwrap(), Admission::Act(_)),
            "a failed event is acted on again"
        );
        assert_eq!(WebhookGate::outcome(&event), WebhookOutcome::Registered { org_id: "o".into() });
        let other = body.replace("\"APP\"", "\"OTHER\"");
        let sig = sign(&secret, other.as_bytes());
        assert!(matches!(
            gate.admit(other.as_bytes(), Some(&sig)).unwrap(),
            Admission::Done(WebhookOutcome::OtherApplication)
        ));
        let open = WebhookGate::new("APP", None);
        assert!(matches!(open.admit(body.as_bytes(), None).unwrap(), Admission::Act(_)));
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
    fn ensure_creates_only_what_is_missing() {
        let wanted = NewWebhook::service_app_pair("APPID", "https://hook.test/x", None);
        let existing: Vec<Webhook> = serde_json::from_str(
            r#"[{"id":"1","targetUrl":"https://hook.test/x","resource":"serviceApp","event":"authorized","filter":"id=APPID","status":"active"},
                {"id":"2","targetUrl":"https://other/x","resource":"serviceApp","event":"deauthorized","filter":"id=APPID"},
                {"id":"3","targetUrl":"https://hook.test/x","resource":"serviceApp","event":"deauthorized","filter":"id=APPID","status":"inactive"}]"#,
        ).unwrap();
        let missing = missing_webhooks(&wanted, &existing);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].event, "deauthorized");
        assert!(missing_webhooks(&wanted, &[]).len() == 2);
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
