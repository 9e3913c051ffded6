//! The `/webhooks` API as request values: listing with `Link` pagination, creating,
//! updating and deleting registrations, and what `ensure` changes.

use percent_encoding::utf8_percent_encode;
use serde::Deserialize;

use super::delivery::ServiceAppEventKind;
use crate::config::ByovaConfig;
use crate::error::{Error, Result};
use crate::http::{HttpRequest, HttpResponse, Method, RetryClass};
use crate::oauth::api_error;
use crate::secret::{AccessToken, WebhookSecret};

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

/// `GET /webhooks?max=…`: the first page.
pub fn list_webhooks_request(config: &ByovaConfig, token: &AccessToken, max: u32) -> HttpRequest {
    let url = config.api_url(&format!("webhooks?max={}", max.clamp(1, 1000)));
    HttpRequest::new(Method::Get, url, RetryClass::Idempotent).api_bearer(token)
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
    Ok(HttpRequest::new(Method::Get, next_url.to_owned(), RetryClass::Idempotent).api_bearer(token))
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
    HttpRequest::new(Method::Post, config.api_url("webhooks"), RetryClass::OnlyIfNotProcessed)
        .api_bearer(token)
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
    HttpRequest::new(Method::Put, config.api_url(&format!("webhooks/{id}")), RetryClass::Idempotent)
        .api_bearer(token)
        .json_body(&body)
}

/// `DELETE /webhooks/{id}`.
pub fn delete_webhook_request(config: &ByovaConfig, token: &AccessToken, webhook_id: &str) -> HttpRequest {
    let id = utf8_percent_encode(webhook_id, percent_encoding::NON_ALPHANUMERIC);
    HttpRequest::new(Method::Delete, config.api_url(&format!("webhooks/{id}")), RetryClass::Idempotent)
        .api_bearer(token)
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
