//! A fake Webex server: real HTTP on `127.0.0.1`, an ephemeral port, its own tokio runtime on a
//! background thread (so blocking and async tests use it alike), faithful to
//! `shared/reference/webex-api.md` and tolerant where Webex is uncertain, with switches for
//! every fault a client meets.
//!
//! Endpoints: `GET /v1/authorize`, `POST /v1/access_token`,
//! `POST /v1/applications/{id}/token`, `/v1/webhooks` CRUD with `Link` pagination; it also
//! delivers signed `serviceApp` webhooks to registered targets.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use byova_core::{
    AccessToken, ByovaConfig, Clock, DEFAULT_INTEGRATION_SCOPES, IntegrationCredentials, OAuthTokens,
    RefreshToken, ServiceAppCredentials, SystemClock, Timestamp, WebhookSecret,
    engine::Method,
    ids::{derive_application_id, encode_webex_id},
    webhook::ServiceAppEventKind,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::wire;

/// The org the fake's provider (the owner of the webhooks) belongs to: never a customer.
const PROVIDER_ORG_ID: &str = "0f0f0f0f-1111-4222-8333-444455556666";

/// The endpoints the fake serves, for faults and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// `GET /v1/authorize`
    Authorize,
    /// `POST /v1/access_token`
    AccessToken,
    /// `POST /v1/applications/{id}/token`
    ApplicationToken,
    /// `/v1/webhooks` and `/v1/webhooks/{id}`
    Webhooks,
    /// `GET /v1/people/me`: an authenticated API call (401 to a revoked, expired or unknown
    /// bearer)
    PeopleMe,
    /// `GET /v1/devices`: a resource the tokens' scopes do not cover, answering 401 whatever
    /// the bearer (a 401 that no fresh token cures)
    ScopeMissing,
    /// `/v1/testkit/echo`: not Webex, an instrument for what stands between a client and
    /// Webex (byova's injecting proxy). Authenticated like any API call (401 to a bad bearer);
    /// `POST` or `PUT` answers the request body as it came, `GET ?bytes=N` answers
    /// [`echo_pattern`]`(N)`; every answer says in `X-Echo-Org` whose token came (the org, or
    /// `integration`), in `X-Echo-Headers` the request's header names, and in
    /// `X-Echo-Chunked` whether its body came chunked.
    Echo,
    /// `GET {issuer}/oauth2/v2/keys/verificationjwk`: the fake identity broker's keys (the
    /// issuer is [`FakeWebex::broker_issuer`]).
    Jwks,
    /// `/v1/dataSources` and `/v1/dataSources/{id}`, with an org's Service App token: list,
    /// get, register (`POST`), update and extend (`PUT`, a fresh nonce each time). A token
    /// that expired before its extension counts as a lapse
    /// ([`FakeWebex::data_source_lapses`]).
    DataSources,
}

/// A data source the fake holds.
#[derive(Clone, Debug)]
struct DataSourceRecord {
    id: String,
    org: String,
    schema_id: String,
    url: String,
    audience: String,
    subject: String,
    status: String,
    lifetime_minutes: u32,
    expires_at: Timestamp,
}

impl DataSourceRecord {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "orgId": self.org,
            "schemaId": self.schema_id,
            "url": self.url,
            "audience": self.audience,
            "subject": self.subject,
            "status": self.status,
            "tokenLifetimeMinutes": self.lifetime_minutes,
            "tokenExpiryTime": self.expires_at.to_rfc3339(),
        })
    }
}

/// `len` bytes of the fixed pattern [`Endpoint::Echo`] answers a `GET ?bytes=N` with.
pub fn echo_pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// The most [`Endpoint::Echo`] answers a `GET` with (64 MiB).
const MAX_ECHO_BYTES: usize = 64 << 20;

/// A fault injected into one request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Wait this long, then answer normally.
    Latency(Duration),
    /// Answer with this status: a Webex error body, or HTML with `html`; 429 and 503 carry
    /// `Retry-After` when given.
    Status {
        /// The status code.
        status: u16,
        /// `Retry-After` in seconds.
        retry_after: Option<u64>,
        /// Send an HTML body instead of JSON (as Webex's 429 page does).
        html: bool,
    },
    /// Close the connection without answering.
    Drop,
    /// Process the request, then close the connection instead of sending the answer (the
    /// server's state changed; the client never learns how).
    DropAfterProcessing,
    /// Answer 400 `invalid_grant` whatever the request.
    InvalidGrant,
    /// Answer exactly this, as something between the client and Webex might (a proxy's or a
    /// firewall's HTML page, an empty body, a `Retry-After` that is not a number): no
    /// `trackingId`, nothing of Webex's shape.
    Raw {
        /// The status code.
        status: u16,
        /// The `Content-Type` (none when empty).
        content_type: &'static str,
        /// The body.
        body: &'static str,
        /// A `Retry-After` value, sent as it is.
        retry_after: Option<&'static str>,
    },
}

impl Fault {
    /// `Status` with a JSON body and no `Retry-After`.
    pub fn status(status: u16) -> Self {
        Fault::Status { status, retry_after: None, html: false }
    }

    /// A 429 with `Retry-After: secs` and an HTML body.
    pub fn rate_limited(secs: u64) -> Self {
        Fault::Status { status: 429, retry_after: Some(secs), html: true }
    }

    /// A proxy's or a web application firewall's HTML page with `status`.
    pub fn proxy_page(status: u16) -> Self {
        Fault::Raw {
            status,
            content_type: "text/html",
            body: "<html><head><title>Bad Request</title></head><body>Request blocked by policy.</body></html>",
            retry_after: None,
        }
    }

    /// `status` with an empty body and no content type.
    pub fn empty(status: u16) -> Self {
        Fault::Raw { status, content_type: "", body: "", retry_after: None }
    }

    /// A 429 whose `Retry-After` is `value` as it is (Webex has sent `rand(30),add(30)`).
    pub fn rate_limited_with(value: &'static str) -> Self {
        Fault::Raw { status: 429, content_type: "text/html", body: "", retry_after: Some(value) }
    }
}

/// Whether `/v1/authorize` approves or denies.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthorizeMode {
    /// Redirect with `code` and `state`.
    Approve,
    /// Redirect with `error=<code>` and `state` (e.g. `access_denied`).
    Deny(String),
}

/// How the fake shapes `serviceApp` deliveries. Webex publishes no example of one, so the fake
/// can send each shape the reference knows of (`shared/reference/webex-api.md` §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryShape {
    /// Per the webhooks guide's field definitions: the envelope `orgId` is the org that owns
    /// the webhook (the provider's, [`FakeWebex::provider_org_id`]), `created` is when the
    /// webhook was created, `appId` is the Integration that created it, and the customer org
    /// is in `data.authorizerOrgId`.
    Guide,
    /// Per Cisco's sample: the envelope `orgId` is the customer org; no `authorizerOrgId`.
    CiscoSample,
    /// Every org field names the customer org (the reference's reconstruction).
    Reconstruction,
}

/// Behaviour switches that last until changed.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Settings {
    /// Issue a new refresh token on every refresh (the old one stops working).
    pub rotate_refresh_tokens: bool,
    /// With rotation: presenting an already-rotated refresh token revokes its whole family
    /// (RFC 9700 §4.14.2).
    pub strict_rotation: bool,
    /// Leave `refresh_token` out of refresh responses.
    pub omit_refresh_token: bool,
    /// Integration access-token lifetime in seconds.
    pub expires_in: u64,
    /// Refresh-token lifetime in seconds.
    pub refresh_token_expires_in: u64,
    /// Service App access-token lifetime in seconds.
    pub service_app_expires_in: u64,
    /// What `/v1/authorize` does.
    pub authorize_mode: AuthorizeMode,
    /// Use OAuth-shaped error bodies (`{"error": …}`) instead of Webex ones.
    pub oauth_error_bodies: bool,
    /// The largest page `/v1/webhooks` returns, whatever `max` asks.
    pub max_page_size: usize,
    /// Consecutive failed deliveries after which a webhook becomes inactive.
    pub webhook_failure_limit: u32,
    /// The shape of `serviceApp` deliveries.
    pub delivery_shape: DeliveryShape,
    /// Deliveries carry the event's own time (`data.authorizationDate`).
    pub delivery_event_time: bool,
    /// With an event time: `deauthorized` deliveries name it `data.deauthorizationDate`
    /// instead of `data.authorizationDate`.
    pub deauthorization_date_field: bool,
    /// Deliveries carry the Service App's id (`data.id`).
    pub delivery_application_id: bool,
    /// An error redirect from `/v1/authorize` carries the request's `state`.
    pub denial_echoes_state: bool,
    /// How long a delivery waits for the receiver's answer before giving up (and counting a
    /// failure). Webex does not document it; the default is 15 s.
    pub delivery_timeout: Duration,
    /// Rate-limit the token endpoints (`/v1/access_token` and the Service App's) together:
    /// at most this many admitted calls in any window of this length (a sliding window, real
    /// time); beyond it a 429 with `Retry-After` (whole seconds until a call leaves the window).
    pub token_rate_limit: Option<(u32, Duration)>,
    /// Rate-limit `/v1/dataSources` the same way (its own window).
    pub data_source_rate_limit: Option<(u32, Duration)>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            rotate_refresh_tokens: false,
            strict_rotation: false,
            omit_refresh_token: false,
            expires_in: 1_209_599,
            refresh_token_expires_in: 7_775_999,
            service_app_expires_in: 1_209_599,
            authorize_mode: AuthorizeMode::Approve,
            oauth_error_bodies: false,
            max_page_size: 100,
            webhook_failure_limit: 100,
            delivery_shape: DeliveryShape::Guide,
            delivery_event_time: true,
            deauthorization_date_field: false,
            delivery_application_id: true,
            denial_echoes_state: true,
            delivery_timeout: Duration::from_secs(15),
            token_rate_limit: None,
            data_source_rate_limit: None,
        }
    }
}

/// Calls a rate limit admitted: when each arrived, and those still inside its window.
#[derive(Default)]
struct RateWindow {
    admitted: Vec<std::time::Instant>,
    window: std::collections::VecDeque<std::time::Instant>,
}

impl RateWindow {
    /// Admits a call under `limit` (at most this many in any window of this length; `None`:
    /// no limit), recording when, or returns the `Retry-After` seconds of the 429.
    fn admit(&mut self, limit: Option<(u32, Duration)>) -> Option<u64> {
        let now = std::time::Instant::now();
        if let Some((limit, window)) = limit {
            while self.window.front().is_some_and(|t| *t + window <= now) {
                self.window.pop_front();
            }
            let limit = limit.max(1) as usize;
            if self.window.len() >= limit {
                let frees_at = self.window[self.window.len() - limit] + window;
                return Some(frees_at.saturating_duration_since(now).as_secs_f64().ceil().max(1.0) as u64);
            }
            self.window.push_back(now);
        }
        self.admitted.push(now);
        None
    }

    /// The most calls admitted in any window of `window`.
    fn busiest(&self, window: Duration) -> usize {
        let times = &self.admitted;
        let (mut best, mut from) = (0, 0);
        for (i, t) in times.iter().enumerate() {
            while times[from] + window <= *t {
                from += 1;
            }
            best = best.max(i + 1 - from);
        }
        best
    }
}

/// A successful register or update of a data source at the fake.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DataSourceRenewal {
    /// The data source.
    pub id: String,
    /// Its org.
    pub org: String,
    /// When (the fake's clock).
    pub at: Timestamp,
    /// When its token would have expired without it (`None`: it was registered).
    pub previous_expiry: Option<Timestamp>,
    /// Its token's lifetime, in minutes.
    pub lifetime_minutes: u32,
}

/// Every time a refresh token was presented to `/v1/access_token`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Redemption {
    /// The refresh token presented.
    pub refresh_token: String,
    /// The client that presented it.
    pub client_id: String,
    /// It had already been rotated away (a reuse).
    pub reused: bool,
    /// It was accepted.
    pub accepted: bool,
    /// The org whose Service App tokens it belongs to (`None`: the Integration's, or unknown).
    pub org: Option<String>,
}

/// What the fake knows of an access token it was shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AccessTokenStatus {
    /// Live: Webex would accept it.
    Valid,
    /// Past its expiry.
    Expired,
    /// Revoked before its expiry (by an admin, or with its family when a rotated refresh
    /// token was presented again).
    Revoked,
    /// Never issued (or revoked one by one with [`FakeWebex::revoke_access_token`]).
    Unknown,
}

/// Tokens the fake issued outside a flow, for seeding storage.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct IssuedTokens {
    /// The access token.
    pub access_token: String,
    /// The refresh token.
    pub refresh_token: String,
    /// The access token's lifetime in seconds.
    pub expires_in: u64,
}

impl IssuedTokens {
    /// As a stored record obtained at `obtained_at` (choose a past moment to make it expired).
    pub fn to_oauth_tokens(&self, obtained_at: Timestamp) -> OAuthTokens {
        OAuthTokens::new(AccessToken::new(self.access_token.clone()), self.expires_in, obtained_at)
            .with_refresh_token(RefreshToken::new(self.refresh_token.clone()), Some(7_775_999))
    }

    /// As a stored record that expired long ago at `now`, with a refresh token the fake accepts.
    pub fn expired_at(&self, now: Timestamp) -> OAuthTokens {
        self.to_oauth_tokens(
            now.saturating_sub(Duration::from_secs(self.expires_in.saturating_mul(2) + 3600)),
        )
    }
}

/// What happened when the fake delivered a webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliveryOutcome {
    /// The webhook's id.
    pub webhook_id: String,
    /// Where it went.
    pub target_url: String,
    /// The receiver's status, or `None` when it could not be reached.
    pub status: Option<u16>,
}

#[derive(Clone)]
struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    scopes: Vec<String>,
    challenge: Option<(String, String)>,
    used: bool,
    issued_at: Timestamp,
    family: Option<u64>,
}

#[derive(Clone)]
struct AccessGrant {
    scopes: Vec<String>,
    org: Option<String>,
    expires_at: Timestamp,
    family: u64,
}

#[derive(Clone)]
struct RefreshGrant {
    family: u64,
    current: bool,
}

struct Family {
    client_id: String,
    scopes: Vec<String>,
    org: Option<String>,
    revoked: bool,
}

#[derive(Clone)]
struct WebhookRecord {
    id: String,
    name: String,
    target_url: String,
    resource: String,
    event: String,
    filter: Option<String>,
    secret: Option<String>,
    status: String,
    created: String,
    failures: u32,
}

impl WebhookRecord {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "id": self.id, "name": self.name, "targetUrl": self.target_url, "resource": self.resource,
            "event": self.event, "status": self.status, "created": self.created, "ownedBy": "creator",
        });
        if let Some(f) = &self.filter {
            v["filter"] = f.as_str().into();
        }
        if let Some(s) = &self.secret {
            v["secret"] = s.as_str().into();
        }
        v
    }
}

#[derive(Default)]
struct FaultQueue {
    queued: VecDeque<(Fault, Option<usize>)>,
    /// Before a request is looked at.
    latency: Duration,
    /// After it was processed, before the answer: the server's state has changed whether or
    /// not the client is still there to hear how.
    answer_latency: Duration,
}

struct State {
    integration: IntegrationCredentials,
    allowed_scopes: HashSet<String>,
    service_app: ServiceAppCredentials,
    authorized_orgs: HashSet<String>,
    codes: HashMap<String, CodeGrant>,
    access: HashMap<String, AccessGrant>,
    refresh: HashMap<String, RefreshGrant>,
    families: HashMap<u64, Family>,
    webhooks: Vec<WebhookRecord>,
    /// Registered data sources, every org's.
    data_sources: Vec<DataSourceRecord>,
    /// Every nonce a data-source register or update carried.
    data_source_nonces: HashSet<String>,
    /// Extensions that came after the data source's token had expired.
    data_source_lapses: u64,
    /// Every successful register and update of a data source.
    data_source_renewals: Vec<DataSourceRenewal>,
    /// `/v1/dataSources` calls the rate limit admitted, and those it answered 429.
    data_source_calls: RateWindow,
    data_source_rate_limited: u64,
    faults: HashMap<Endpoint, FaultQueue>,
    settings: Settings,
    calls: HashMap<Endpoint, u64>,
    redemptions: Vec<Redemption>,
    /// Service App token fetches, per org.
    org_fetches: HashMap<String, u64>,
    /// Token-endpoint calls the rate limit admitted.
    token_calls: RateWindow,
    /// Token-endpoint calls answered 429 by the rate limit.
    rate_limited: u64,
    counter: u64,
    /// When each org's latest (de)authorization happened, strictly increasing.
    org_events: HashMap<String, Timestamp>,
    last_event: Timestamp,
}

impl State {
    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    fn token(&mut self, kind: &str) -> String {
        let n = self.next();
        let mut rand = [0u8; 12];
        if getrandom::fill(&mut rand).is_err() {
            // Uniqueness comes from the counter; the random part only makes tokens unguessable.
            rand[..8].copy_from_slice(&n.to_le_bytes());
        }
        format!("fake{kind}{n}_{}", URL_SAFE_NO_PAD.encode(rand))
    }

    fn answer_latency(&self, endpoint: Endpoint) -> Duration {
        self.faults.get(&endpoint).map_or(Duration::ZERO, |q| q.answer_latency)
    }

    /// Records a (de)authorization of `org` at `now`, later than every earlier one.
    fn record_event(&mut self, org: &str, now: Timestamp) {
        let at = now.max(self.last_event.saturating_add(Duration::from_millis(1)));
        self.last_event = at;
        self.org_events.insert(org.to_owned(), at);
    }

    /// A `serviceApp` delivery body for `org`, shaped as the settings say.
    fn delivery_body(&self, webhook: &WebhookRecord, kind: ServiceAppEventKind, org: &str) -> Vec<u8> {
        let customer = encode_webex_id("us", "ORGANIZATION", org);
        let provider = encode_webex_id("us", "ORGANIZATION", PROVIDER_ORG_ID);
        let sa_app = derive_application_id(&self.service_app.client_id);
        let integration_app = derive_application_id(&self.integration.client_id);
        let settings = &self.settings;
        let mut data = serde_json::Map::new();
        if settings.delivery_application_id {
            data.insert("id".into(), sa_app.clone().into());
        }
        let envelope_org = match settings.delivery_shape {
            DeliveryShape::Guide => {
                data.insert("authorizerOrgId".into(), customer.into());
                provider
            }
            DeliveryShape::CiscoSample => customer,
            DeliveryShape::Reconstruction => {
                data.insert("authorizerOrgId".into(), customer.clone().into());
                data.insert("orgId".into(), customer.clone().into());
                customer
            }
        };
        if settings.delivery_event_time {
            let at = self.org_events.get(org).copied().unwrap_or(self.last_event);
            let field = if settings.deauthorization_date_field && kind == ServiceAppEventKind::Deauthorized {
                "deauthorizationDate"
            } else {
                "authorizationDate"
            };
            data.insert(field.into(), at.to_rfc3339().into());
        }
        serde_json::to_vec(&json!({
            "id": webhook.id,
            "name": format!("serviceApp {}", kind.as_str()),
            "targetUrl": webhook.target_url,
            "resource": "serviceApp",
            "event": kind.as_str(),
            "filter": format!("id={sa_app}"),
            "orgId": envelope_org,
            "createdBy": encode_webex_id("us", "PEOPLE", "fake-admin"),
            "appId": integration_app,
            "ownedBy": "creator",
            "status": "active",
            "created": webhook.created,
            "actorId": encode_webex_id("us", "PEOPLE", "fake-admin"),
            "data": data,
        }))
        .unwrap_or_default()
    }

    /// Admits a token-endpoint call (recording when), or returns the `Retry-After` seconds of
    /// the 429 the rate limit answers.
    fn over_token_rate_limit(&mut self) -> Option<u64> {
        let limit = self.settings.token_rate_limit;
        self.token_calls.admit(limit)
    }

    fn take_fault(&mut self, endpoint: Endpoint) -> (Duration, Option<Fault>) {
        let Some(q) = self.faults.get_mut(&endpoint) else { return (Duration::ZERO, None) };
        let latency = q.latency;
        let fault = match q.queued.front_mut() {
            None => None,
            Some((fault, remaining)) => {
                let fault = fault.clone();
                if let Some(n) = remaining {
                    *n -= 1;
                    if *n == 0 {
                        q.queued.pop_front();
                    }
                }
                Some(fault)
            }
        };
        (latency, fault)
    }

    /// Issues an access token (and a refresh token unless `refresh` is `Some(existing)`).
    fn issue(&mut self, family: u64, now: Timestamp, expires_in: u64) -> String {
        let access = self.token("AT");
        let fam = &self.families[&family];
        let grant = AccessGrant {
            scopes: fam.scopes.clone(),
            org: fam.org.clone(),
            expires_at: now.saturating_add(Duration::from_secs(expires_in)),
            family,
        };
        self.access.insert(access.clone(), grant);
        access
    }

    fn new_family(&mut self, client_id: &str, scopes: Vec<String>, org: Option<String>) -> u64 {
        let id = self.next();
        self.families.insert(id, Family { client_id: client_id.to_owned(), scopes, org, revoked: false });
        id
    }

    fn new_refresh(&mut self, family: u64) -> String {
        let token = self.token("RT");
        self.refresh.insert(token.clone(), RefreshGrant { family, current: true });
        token
    }

    fn bearer_grant(&self, req_auth: Option<&str>, now: Timestamp) -> Option<&AccessGrant> {
        let token = req_auth?.strip_prefix("Bearer ")?.trim();
        let grant = self.access.get(token)?;
        (grant.expires_at > now && !self.families.get(&grant.family).is_some_and(|f| f.revoked))
            .then_some(grant)
    }
}

struct Shared {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
    base_url: String,
    broker: crate::broker::Broker,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Builds a [`FakeWebex`].
#[derive(Debug)]
pub struct FakeWebexBuilder {
    integration: IntegrationCredentials,
    service_app: ServiceAppCredentials,
    clock: Arc<dyn Clock>,
    settings: Settings,
}

impl Default for FakeWebexBuilder {
    fn default() -> Self {
        Self {
            integration: IntegrationCredentials::new(
                "C0fake0integration0000000000000000000000000000000000000000000001",
                "fake-integration-secret",
            ),
            service_app: ServiceAppCredentials::new(
                "C0fake0serviceapp00000000000000000000000000000000000000000000001",
                "fake-service-app-secret",
            ),
            clock: Arc::new(SystemClock),
            settings: Settings::default(),
        }
    }
}

impl FakeWebexBuilder {
    /// The Integration the fake knows (its redirect URI is the registered one).
    pub fn integration(mut self, credentials: IntegrationCredentials) -> Self {
        self.integration = credentials;
        self
    }

    /// The Service App the fake knows.
    pub fn service_app(mut self, credentials: ServiceAppCredentials) -> Self {
        self.service_app = credentials;
        self
    }

    /// The clock the fake judges token expiry by.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Initial settings.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Starts the server.
    ///
    /// # Panics
    /// When no loopback port can be bound or the runtime cannot start: test infrastructure
    /// cannot continue without them.
    pub fn start(self) -> FakeWebex {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for the fake Webex");
        std_listener.set_nonblocking(true).expect("nonblocking listener");
        let addr = std_listener.local_addr().expect("listener address");
        let base_url = format!("http://{addr}/v1");
        let state = State {
            allowed_scopes: DEFAULT_INTEGRATION_SCOPES
                .iter()
                .chain(&["openid", "email", "profile", "spark:people_read", "spark:kms"])
                .map(|s| (*s).to_owned())
                .collect(),
            integration: self.integration,
            service_app: self.service_app,
            authorized_orgs: HashSet::new(),
            codes: HashMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            families: HashMap::new(),
            webhooks: Vec::new(),
            data_sources: Vec::new(),
            data_source_nonces: HashSet::new(),
            data_source_lapses: 0,
            data_source_renewals: Vec::new(),
            data_source_calls: RateWindow::default(),
            data_source_rate_limited: 0,
            faults: HashMap::new(),
            settings: self.settings,
            calls: HashMap::new(),
            redemptions: Vec::new(),
            org_fetches: HashMap::new(),
            token_calls: RateWindow::default(),
            rate_limited: 0,
            counter: 0,
            org_events: HashMap::new(),
            last_event: Timestamp::EPOCH,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            clock: self.clock,
            base_url: base_url.clone(),
            broker: crate::broker::Broker::default(),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-webex")
            .enable_all()
            .build()
            .expect("tokio runtime for the fake Webex");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server_shared = shared.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
            serve(listener, server_shared, stop_rx).await;
        });
        FakeWebex { shared, addr, base_url, runtime: Some(runtime), stop: Some(stop_tx) }
    }
}

/// A running fake Webex server. Dropping it stops the server.
pub struct FakeWebex {
    shared: Arc<Shared>,
    addr: SocketAddr,
    base_url: String,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for FakeWebex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeWebex").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

impl Drop for FakeWebex {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl FakeWebex {
    /// Starts a fake with default credentials and settings.
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// A builder for non-default credentials, clock or settings.
    pub fn builder() -> FakeWebexBuilder {
        FakeWebexBuilder::default()
    }

    /// `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The fake identity broker's issuer (`iss` of the JWS it mints): `http://{addr}/idb`.
    pub fn broker_issuer(&self) -> String {
        format!("http://{}/idb", self.addr())
    }

    /// Claims of a JWS Webex sends to the data source at `url` for `org_id`: the broker's
    /// issuer, the BYOVA schema, `aud` `BYOVAGateway`, `sub` `callAudioData`, a fresh `jti`,
    /// five minutes of life from the fake's clock.
    pub fn data_source_claims(&self, url: &str, org_id: &str) -> serde_json::Value {
        let now = self.shared.clock.now().as_unix_secs();
        let jti = format!("{:016x}", byova_core::engine::random_u64());
        serde_json::json!({
            "iss": self.broker_issuer(),
            "sub": "callAudioData",
            "aud": "BYOVAGateway",
            "jti": jti,
            "iat": now,
            "exp": now + 300,
            "com.cisco.datasource.url": url,
            "com.cisco.datasource.schema.uuid": byova_core::jws::BYOVA_SCHEMA_ID,
            "com.cisco.org.id": org_id,
        })
    }

    /// A JWS of `claims` signed RS256 by the broker's newest key.
    pub fn mint_jws(&self, claims: &serde_json::Value) -> String {
        self.mint_jws_with_header(&serde_json::json!({"alg": "RS256", "typ": "JWT"}), claims)
    }

    /// A JWS with this `header` (its `kid` defaults to the newest key's), signed RS256 by the
    /// newest key whatever the header says.
    pub fn mint_jws_with_header(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        self.shared.broker.sign(header, claims)
    }

    /// A JWS of `claims` under the newest key's kid, signed by a key the broker never published.
    pub fn mint_jws_with_foreign_key(&self, claims: &serde_json::Value) -> String {
        self.shared.broker.sign_foreign(claims)
    }

    /// The key-confusion forgery of `claims`: `alg: HS256`, keyed with the published JWK.
    pub fn forge_hs256_jws(&self, claims: &serde_json::Value) -> String {
        self.shared.broker.forge_hs256(claims)
    }

    /// The broker signs with a new key from now on (the old ones stay published); its kid.
    /// Instant after [`stage_broker_key`](Self::stage_broker_key); otherwise the key is
    /// generated first.
    pub fn rotate_broker_key(&self) -> String {
        self.shared.broker.rotate()
    }

    /// Generates the broker's next key now, so that the next
    /// [`rotate_broker_key`](Self::rotate_broker_key) is instant.
    pub fn stage_broker_key(&self) {
        self.shared.broker.stage();
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A [`ByovaConfig`] pointing at the fake.
    pub fn config(&self) -> ByovaConfig {
        ByovaConfig::with_base_url(&self.base_url).unwrap_or_default()
    }

    /// The Integration credentials the fake accepts.
    pub fn integration_credentials(&self) -> IntegrationCredentials {
        self.shared.lock().integration.clone()
    }

    /// The Service App credentials the fake accepts.
    pub fn service_app_credentials(&self) -> ServiceAppCredentials {
        self.shared.lock().service_app.clone()
    }

    /// Changes the settings.
    pub fn update_settings(&self, f: impl FnOnce(&mut Settings)) {
        f(&mut self.shared.lock().settings);
    }

    /// Queues `fault` for the next request to `endpoint`.
    pub fn inject(&self, endpoint: Endpoint, fault: Fault) {
        self.inject_times(endpoint, fault, 1);
    }

    /// Queues `fault` for the next `times` requests to `endpoint`.
    pub fn inject_times(&self, endpoint: Endpoint, fault: Fault, times: usize) {
        if times > 0 {
            self.with_queue(endpoint, |q| q.queued.push_back((fault, Some(times))));
        }
    }

    /// Applies `fault` to every request to `endpoint` until [`clear_faults`](Self::clear_faults).
    pub fn inject_always(&self, endpoint: Endpoint, fault: Fault) {
        self.with_queue(endpoint, |q| q.queued.push_back((fault, None)));
    }

    /// Delays every request to `endpoint` by `latency` (zero to stop).
    pub fn set_latency(&self, endpoint: Endpoint, latency: Duration) {
        self.with_queue(endpoint, |q| q.latency = latency);
    }

    /// Processes every request to `endpoint` at once, then waits `latency` before answering
    /// (zero to stop): a client that gives up meanwhile has still, for example, spent its
    /// refresh token.
    pub fn set_answer_latency(&self, endpoint: Endpoint, latency: Duration) {
        self.with_queue(endpoint, |q| q.answer_latency = latency);
    }

    /// Removes every queued fault and latency.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    fn with_queue(&self, endpoint: Endpoint, f: impl FnOnce(&mut FaultQueue)) {
        let mut s = self.shared.lock();
        f(s.faults.entry(endpoint).or_default());
    }

    /// Requests received by `endpoint` (faulted ones included).
    pub fn calls(&self, endpoint: Endpoint) -> u64 {
        self.shared.lock().calls.get(&endpoint).copied().unwrap_or(0)
    }

    /// Token-endpoint calls the rate limit ([`Settings::token_rate_limit`]) answered 429.
    pub fn rate_limited(&self) -> u64 {
        self.shared.lock().rate_limited
    }

    /// The most token-endpoint calls admitted in any window of `window` so far (all calls
    /// are recorded, with or without a rate limit).
    pub fn busiest_token_window(&self, window: Duration) -> usize {
        self.shared.lock().token_calls.busiest(window)
    }

    /// `/v1/dataSources` calls the rate limit ([`Settings::data_source_rate_limit`]) answered
    /// 429.
    pub fn data_source_rate_limited(&self) -> u64 {
        self.shared.lock().data_source_rate_limited
    }

    /// The most `/v1/dataSources` calls admitted in any window of `window` so far.
    pub fn busiest_data_source_window(&self, window: Duration) -> usize {
        self.shared.lock().data_source_calls.busiest(window)
    }

    /// Refresh-grant requests received by `/v1/access_token`.
    pub fn refresh_calls(&self) -> usize {
        self.shared.lock().redemptions.len()
    }

    /// Every refresh token presented, in order.
    pub fn redemptions(&self) -> Vec<Redemption> {
        self.shared.lock().redemptions.clone()
    }

    /// How many presented refresh tokens had already been rotated away.
    pub fn reused_refresh_tokens(&self) -> usize {
        self.shared.lock().redemptions.iter().filter(|r| r.reused).count()
    }

    /// Zeroes the counters and the redemption log.
    pub fn reset_counters(&self) {
        let mut s = self.shared.lock();
        s.calls.clear();
        s.redemptions.clear();
        s.org_fetches.clear();
    }

    /// Marks `org_id` (UUID) as having authorized the Service App (no webhook is sent).
    pub fn authorize_org(&self, org_id: &str) {
        let now = self.shared.clock.now();
        let mut s = self.shared.lock();
        s.authorized_orgs.insert(org_id.to_owned());
        s.record_event(org_id, now);
    }

    /// Withdraws the org's authorization and revokes its Service App tokens.
    pub fn deauthorize_org(&self, org_id: &str) {
        let now = self.shared.clock.now();
        let mut s = self.shared.lock();
        s.authorized_orgs.remove(org_id);
        s.record_event(org_id, now);
        for fam in s.families.values_mut() {
            if fam.org.as_deref() == Some(org_id) {
                fam.revoked = true;
            }
        }
    }

    /// The provider's own org (the webhooks' owner): the guide-shaped envelope `orgId`. It is
    /// never a customer and must never be registered.
    pub fn provider_org_id(&self) -> &'static str {
        PROVIDER_ORG_ID
    }

    /// Whether the org has authorized the Service App.
    pub fn is_org_authorized(&self, org_id: &str) -> bool {
        self.shared.lock().authorized_orgs.contains(org_id)
    }

    /// Issues Integration tokens with the default scopes, as if the flow had run.
    pub fn issue_integration_tokens(&self) -> IssuedTokens {
        let now = self.shared.clock.now();
        let mut s = self.shared.lock();
        let client = s.integration.client_id.clone();
        let scopes = DEFAULT_INTEGRATION_SCOPES.iter().map(|x| (*x).to_owned()).collect();
        let family = s.new_family(&client, scopes, None);
        let expires_in = s.settings.expires_in;
        let access_token = s.issue(family, now, expires_in);
        let refresh_token = s.new_refresh(family);
        IssuedTokens { access_token, refresh_token, expires_in }
    }

    /// Issues Service App tokens for `org_id` (authorizing the org), as if fetched.
    pub fn issue_service_app_tokens(&self, org_id: &str) -> IssuedTokens {
        let now = self.shared.clock.now();
        let mut s = self.shared.lock();
        s.authorized_orgs.insert(org_id.to_owned());
        let client = s.service_app.client_id.clone();
        let family = s.new_family(&client, vec!["spark:all".into()], Some(org_id.to_owned()));
        let expires_in = s.settings.service_app_expires_in;
        let access_token = s.issue(family, now, expires_in);
        let refresh_token = s.new_refresh(family);
        IssuedTokens { access_token, refresh_token, expires_in }
    }

    /// The org a live access token belongs to (`None` for Integration tokens or unknown ones).
    pub fn org_of_access_token(&self, access_token: &str) -> Option<String> {
        self.shared.lock().access.get(access_token).and_then(|g| g.org.clone())
    }

    /// Revokes an access token early (as an admin, or a re-authorization elsewhere, would):
    /// Webex answers 401 to it from now on. Returns whether the fake knew it.
    pub fn revoke_access_token(&self, access_token: &str) -> bool {
        self.shared.lock().access.remove(access_token).is_some()
    }

    /// What the fake knows of `access_token` now.
    pub fn access_token_status(&self, access_token: &str) -> AccessTokenStatus {
        let now = self.shared.clock.now();
        let s = self.shared.lock();
        match s.access.get(access_token) {
            None => AccessTokenStatus::Unknown,
            Some(g) if s.families.get(&g.family).is_some_and(|f| f.revoked) => AccessTokenStatus::Revoked,
            Some(g) if g.expires_at <= now => AccessTokenStatus::Expired,
            Some(_) => AccessTokenStatus::Valid,
        }
    }

    /// When the fake made `access_token` expire (`None`: it never issued it).
    pub fn access_token_expiry(&self, access_token: &str) -> Option<Timestamp> {
        self.shared.lock().access.get(access_token).map(|g| g.expires_at)
    }

    /// Token calls made for each org: refresh-token redemptions and Service App fetches.
    pub fn token_calls_per_org(&self) -> HashMap<String, u64> {
        let s = self.shared.lock();
        let mut calls = s.org_fetches.clone();
        for org in s.redemptions.iter().filter_map(|r| r.org.clone()) {
            *calls.entry(org).or_insert(0) += 1;
        }
        calls
    }

    /// Data-source tokens that lapsed: extensions that came after the token had expired
    /// (Webex would have stopped calling the gateway in between), and data sources whose
    /// token has expired now.
    pub fn data_source_lapses(&self) -> u64 {
        let now = self.shared.clock.now();
        let s = self.shared.lock();
        s.data_source_lapses + s.data_sources.iter().filter(|d| d.expires_at <= now).count() as u64
    }

    /// Deletes `org_id`'s data sources, as someone else might at Webex.
    pub fn forget_data_sources_of(&self, org_id: &str) {
        self.shared.lock().data_sources.retain(|d| d.org != org_id);
    }

    /// Every successful register and update of a data source, in order.
    pub fn data_source_renewals(&self) -> Vec<DataSourceRenewal> {
        self.shared.lock().data_source_renewals.clone()
    }

    /// `org_id`'s data sources, as `GET /v1/dataSources` answers them.
    pub fn data_sources_of(&self, org_id: &str) -> Vec<serde_json::Value> {
        let s = self.shared.lock();
        s.data_sources.iter().filter(|d| d.org == org_id).map(DataSourceRecord::to_json).collect()
    }

    /// Whether the access token is currently valid at the fake.
    pub fn is_access_token_valid(&self, access_token: &str) -> bool {
        let now = self.shared.clock.now();
        self.shared.lock().bearer_grant(Some(&format!("Bearer {access_token}")), now).is_some()
    }

    /// A `serviceApp` delivery body for `org_id` and its `X-Spark-Signature` under `secret`,
    /// shaped as [`Settings::delivery_shape`] and the other delivery switches say.
    pub fn service_app_delivery(
        &self,
        kind: ServiceAppEventKind,
        org_id: &str,
        secret: Option<&WebhookSecret>,
    ) -> (Vec<u8>, Option<String>) {
        let mut s = self.shared.lock();
        let webhook = WebhookRecord {
            id: encode_webex_id("us", "WEBHOOK", "00000000-0000-4000-8000-0000000000ff"),
            name: "unregistered".into(),
            target_url: "https://unused.invalid".into(),
            resource: "serviceApp".into(),
            event: kind.as_str().into(),
            filter: None,
            secret: None,
            status: "active".into(),
            created: "2025-06-01T00:00:00.000Z".into(),
            failures: 0,
        };
        if !s.org_events.contains_key(org_id) {
            let now = self.shared.clock.now();
            s.record_event(org_id, now);
        }
        let body = s.delivery_body(&webhook, kind, org_id);
        let sig = secret.map(|sec| byova_core::webhook::sign(sec, &body));
        (body, sig)
    }

    /// Authorizes (or deauthorizes) `org_id` as a customer admin would, and delivers the
    /// `serviceApp` event to every matching active webhook, signed with its secret.
    pub fn admin_event(&self, kind: ServiceAppEventKind, org_id: &str) -> Vec<DeliveryOutcome> {
        match kind {
            ServiceAppEventKind::Authorized => self.authorize_org(org_id),
            ServiceAppEventKind::Deauthorized => self.deauthorize_org(org_id),
        }
        self.deliver(kind, org_id)
    }

    /// [`admin_event`](Self::admin_event) for async tests: the deliveries run on the fake's own
    /// runtime while the caller's runtime keeps serving the receiver.
    pub async fn admin_event_async(&self, kind: ServiceAppEventKind, org_id: &str) -> Vec<DeliveryOutcome> {
        match kind {
            ServiceAppEventKind::Authorized => self.authorize_org(org_id),
            ServiceAppEventKind::Deauthorized => self.deauthorize_org(org_id),
        }
        let plan = self.delivery_plan(kind, org_id);
        let timeout = self.shared.lock().settings.delivery_timeout;
        let mut outcomes = Vec::new();
        for (id, url, req) in plan {
            let status = wire::send_async_within(&req, timeout).await.ok().map(|r| r.status);
            outcomes.push(self.record_delivery(id, url, status));
        }
        outcomes
    }

    /// Delivers without changing the org's authorization (a repeated delivery, say).
    pub fn deliver(&self, kind: ServiceAppEventKind, org_id: &str) -> Vec<DeliveryOutcome> {
        let timeout = self.shared.lock().settings.delivery_timeout;
        self.delivery_plan(kind, org_id)
            .into_iter()
            .map(|(id, url, req)| {
                let status = wire::send_within(&req, timeout).ok().map(|r| r.status);
                self.record_delivery(id, url, status)
            })
            .collect()
    }

    fn delivery_plan(
        &self,
        kind: ServiceAppEventKind,
        org_id: &str,
    ) -> Vec<(String, String, byova_core::engine::HttpRequest)> {
        let s = self.shared.lock();
        let app = derive_application_id(&s.service_app.client_id);
        let targets: Vec<WebhookRecord> = s
            .webhooks
            .iter()
            .filter(|w| w.resource == "serviceApp" && w.event == kind.as_str() && w.status == "active")
            .filter(|w| w.filter.as_deref().is_none_or(|f| filter_matches(f, &app)))
            .cloned()
            .collect();
        targets
            .into_iter()
            .map(|w| {
                let body = s.delivery_body(&w, kind, org_id);
                let sig = w
                    .secret
                    .as_ref()
                    .map(|sec| byova_core::webhook::sign(&WebhookSecret::new(sec.clone()), &body));
                let mut headers = vec![("Content-Type", "application/json".to_owned())];
                if let Some(sig) = sig {
                    headers.push((byova_core::webhook::SIGNATURE_HEADER, sig));
                }
                let header_refs: Vec<(&'static str, &str)> =
                    headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                (
                    w.id.clone(),
                    w.target_url.clone(),
                    wire::request(Method::Post, &w.target_url, body, &header_refs),
                )
            })
            .collect()
    }

    fn record_delivery(
        &self,
        webhook_id: String,
        target_url: String,
        status: Option<u16>,
    ) -> DeliveryOutcome {
        let mut s = self.shared.lock();
        let limit = s.settings.webhook_failure_limit;
        if let Some(w) = s.webhooks.iter_mut().find(|w| w.id == webhook_id) {
            if status.is_some_and(|c| (200..300).contains(&c)) {
                w.failures = 0;
            } else {
                w.failures += 1;
                if w.failures >= limit {
                    w.status = "inactive".into();
                }
            }
        }
        DeliveryOutcome { webhook_id, target_url, status }
    }

    /// Plays the browser: GETs the authorization URL and returns the `Location` the fake
    /// redirected to (the loopback redirect URI with `code`/`error` and `state`).
    ///
    /// # Errors
    /// I/O errors, or `InvalidData` when the fake did not redirect.
    pub fn browser_visit(&self, authorization_url: &str) -> std::io::Result<String> {
        location(wire::send(&wire::get(authorization_url))?)
    }

    /// Redeems `refresh_token` at `/v1/access_token` as another client holding it would
    /// (another replica, a copy of the store): with rotation on, the stored copy is then spent.
    /// Returns the status code.
    ///
    /// # Errors
    /// I/O errors.
    pub async fn redeem_refresh_token(
        &self,
        client_id: &str,
        client_secret: &str,
        refresh_token: &str,
    ) -> std::io::Result<u16> {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "refresh_token")
            .append_pair("refresh_token", refresh_token)
            .append_pair("client_id", client_id)
            .append_pair("client_secret", client_secret)
            .finish();
        let url = format!("{}/access_token", self.base_url());
        let request = wire::request(
            Method::Post,
            &url,
            body.into_bytes(),
            &[("Content-Type", "application/x-www-form-urlencoded")],
        );
        Ok(wire::send_async(&request).await?.status)
    }

    /// [`browser_visit`](Self::browser_visit) for async tests.
    ///
    /// # Errors
    /// As [`browser_visit`](Self::browser_visit).
    pub async fn browser_visit_async(&self, authorization_url: &str) -> std::io::Result<String> {
        location(wire::send_async(&wire::get(authorization_url)).await?)
    }
}

fn location(resp: byova_core::engine::HttpResponse) -> std::io::Result<String> {
    match (resp.status, resp.header("Location")) {
        (302 | 303, Some(loc)) => Ok(loc.to_owned()),
        (status, _) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the fake's /authorize answered {status} instead of redirecting"),
        )),
    }
}

fn filter_matches(filter: &str, app_id: &str) -> bool {
    filter.split('&').all(|clause| match clause.split_once('=') {
        Some(("id", v)) => v == app_id,
        _ => true,
    })
}

type Resp = Response<Full<Bytes>>;

async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

/// The connection is dropped by returning an error to hyper.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fault: drop connection")
    }
}

impl std::error::Error for DropConnection {}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, DropConnection> {
    let tracking = req.headers().get("TrackingID").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let headers = req.headers().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(DropConnection),
    };
    let endpoint = match (method.as_str(), path.as_str()) {
        (_, "/v1/authorize") => Some(Endpoint::Authorize),
        (_, "/v1/access_token") => Some(Endpoint::AccessToken),
        (_, p) if p.starts_with("/v1/applications/") && p.ends_with("/token") => {
            Some(Endpoint::ApplicationToken)
        }
        (_, p) if p == "/v1/webhooks" || p.starts_with("/v1/webhooks/") => Some(Endpoint::Webhooks),
        (_, "/v1/people/me") => Some(Endpoint::PeopleMe),
        (_, "/v1/devices") => Some(Endpoint::ScopeMissing),
        (_, "/v1/testkit/echo") => Some(Endpoint::Echo),
        (_, "/idb/oauth2/v2/keys/verificationjwk") => Some(Endpoint::Jwks),
        (_, p) if p == "/v1/dataSources" || p.starts_with("/v1/dataSources/") => Some(Endpoint::DataSources),
        _ => None,
    };
    let tracking_id = {
        let mut s = shared.lock();
        let n = s.next();
        tracking.unwrap_or_else(|| format!("FAKE_{n:08}"))
    };
    let Some(endpoint) = endpoint else {
        return Ok(finish(
            error(404, "The requested resource could not be found.", &tracking_id),
            &tracking_id,
        ));
    };
    let (latency, fault, oauth_bodies) = {
        let mut s = shared.lock();
        *s.calls.entry(endpoint).or_insert(0) += 1;
        let over = match endpoint {
            Endpoint::AccessToken | Endpoint::ApplicationToken => {
                s.over_token_rate_limit().inspect(|_| s.rate_limited += 1)
            }
            Endpoint::DataSources => {
                let limit = s.settings.data_source_rate_limit;
                s.data_source_calls.admit(limit).inspect(|_| s.data_source_rate_limited += 1)
            }
            _ => None,
        };
        if let Some(retry_after) = over {
            drop(s);
            let mut resp = error(429, "Too many requests.", &tracking_id);
            resp.headers_mut()
                .insert("Retry-After", retry_after.to_string().parse().unwrap_or_else(|_| unreachable!()));
            return Ok(finish(resp, &tracking_id));
        }
        let (latency, fault) = s.take_fault(endpoint);
        (latency, fault, s.settings.oauth_error_bodies)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut drop_after = false;
    match fault {
        Some(Fault::Latency(d)) => tokio::time::sleep(d).await,
        Some(Fault::Drop) => return Err(DropConnection),
        Some(Fault::DropAfterProcessing) => drop_after = true,
        Some(Fault::Status { status, retry_after, html }) => {
            let mut resp = if html {
                html_page(status, "<html><body>Too many requests or service unavailable</body></html>")
            } else {
                error(status, "Fault injected by the fake Webex server.", &tracking_id)
            };
            if let Some(secs) = retry_after {
                resp.headers_mut()
                    .insert("Retry-After", secs.to_string().parse().unwrap_or_else(|_| unreachable!()));
            }
            return Ok(finish(resp, &tracking_id));
        }
        Some(Fault::Raw { status, content_type, body, retry_after }) => {
            let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if !content_type.is_empty()
                && let Ok(v) = content_type.parse()
            {
                resp.headers_mut().insert("Content-Type", v);
            }
            if let Some(v) = retry_after.and_then(|v| v.parse().ok()) {
                resp.headers_mut().insert("Retry-After", v);
            }
            return Ok(resp);
        }
        Some(Fault::InvalidGrant) => {
            return Ok(finish(
                oauth_error(
                    400,
                    "invalid_grant",
                    "The refresh token is invalid.",
                    &tracking_id,
                    oauth_bodies,
                ),
                &tracking_id,
            ));
        }
        None => {}
    }
    let ctx = Ctx { shared: &shared, tracking_id: &tracking_id, now: shared.clock.now(), oauth_bodies };
    let resp = match endpoint {
        Endpoint::Authorize if method == hyper::Method::GET => ctx.authorize(&query),
        Endpoint::AccessToken if method == hyper::Method::POST => ctx.access_token(&headers, &body),
        Endpoint::ApplicationToken if method == hyper::Method::POST => {
            ctx.application_token(&path, &headers, &body)
        }
        Endpoint::Webhooks => ctx.webhooks(&method, &path, &query, &headers, &body),
        Endpoint::DataSources => ctx.data_sources(&method, &path, &headers, &body),
        Endpoint::PeopleMe => ctx.people_me(&method, &headers),
        Endpoint::Echo => ctx.echo(&method, &query, &headers, body.clone()),
        Endpoint::Jwks if method == hyper::Method::GET => json_response(200, &shared.broker.jwks()),
        Endpoint::ScopeMissing => {
            ctx.err(401, "The request requires a valid access token set in the Authorization request header.")
        }
        _ => error(405, "Method not allowed.", &tracking_id),
    };
    if drop_after {
        return Err(DropConnection);
    }
    let answer_latency = shared.lock().answer_latency(endpoint);
    if !answer_latency.is_zero() {
        tokio::time::sleep(answer_latency).await;
    }
    Ok(finish(resp, &tracking_id))
}

fn finish(mut resp: Resp, tracking_id: &str) -> Resp {
    if let Ok(v) = tracking_id.parse() {
        resp.headers_mut().insert("trackingId", v);
    }
    resp
}

fn json_response(status: u16, value: &Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(serde_json::to_vec(value).unwrap_or_default())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert("Content-Type", hyper::header::HeaderValue::from_static("application/json;charset=UTF-8"));
    resp
}

fn html_page(status: u16, html: &'static str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from_static(html.as_bytes())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert("Content-Type", hyper::header::HeaderValue::from_static("text/html"));
    resp
}

/// A Webex-shaped error: `{message, errors[{description}], trackingId}`.
fn error(status: u16, message: &str, tracking_id: &str) -> Resp {
    json_response(
        status,
        &json!({ "message": message, "errors": [{ "description": message }], "trackingId": tracking_id }),
    )
}

/// A token-endpoint error in the configured shape: Webex (default) or OAuth.
fn oauth_error(status: u16, code: &str, message: &str, tracking_id: &str, oauth_bodies: bool) -> Resp {
    if oauth_bodies {
        json_response(
            status,
            &json!({ "error": code, "error_description": message, "trackingId": tracking_id }),
        )
    } else {
        error(status, message, tracking_id)
    }
}

fn redirect(location: &str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::FOUND;
    if let Ok(v) = location.parse() {
        resp.headers_mut().insert("Location", v);
    }
    resp
}

fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn header<'h>(headers: &'h hyper::HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn is_loopback_uri(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("http://")?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit_once(':').map(|(h, _)| h).unwrap_or(authority);
    matches!(host, "127.0.0.1" | "[::1]" | "localhost").then_some((host, path))
}

/// RFC 8252 §7.3: exact match, except that a loopback URI may use any port.
fn redirect_uri_allowed(registered: &str, presented: &str) -> bool {
    if registered == presented {
        return true;
    }
    match (is_loopback_uri(registered), is_loopback_uri(presented)) {
        (Some((rh, rp)), Some((ph, pp))) => rh == ph && rp == pp,
        _ => false,
    }
}

fn pkce_matches(method: &str, challenge: &str, verifier: &str) -> bool {
    match method {
        "S256" => URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) == challenge,
        "plain" => verifier == challenge,
        _ => false,
    }
}

struct Ctx<'a> {
    shared: &'a Shared,
    tracking_id: &'a str,
    now: Timestamp,
    /// Read before any handler locks the state, so error helpers never lock it again.
    oauth_bodies: bool,
}

impl Ctx<'_> {
    fn err(&self, status: u16, message: &str) -> Resp {
        error(status, message, self.tracking_id)
    }

    fn oauth_err(&self, status: u16, code: &str, message: &str) -> Resp {
        oauth_error(status, code, message, self.tracking_id, self.oauth_bodies)
    }

    fn authorize(&self, query: &str) -> Resp {
        let q = form(query.as_bytes());
        let mut s = self.shared.lock();
        if q.get("client_id") != Some(&s.integration.client_id) {
            return html_page(400, "<html><body>Invalid client id</body></html>");
        }
        let Some(redirect_uri) = q.get("redirect_uri").cloned() else {
            return html_page(400, "<html><body>redirect_uri is required</body></html>");
        };
        if !redirect_uri_allowed(&s.integration.redirect_uri, &redirect_uri) {
            return html_page(400, "<html><body>redirect_uri does not match a registered one</body></html>");
        }
        let sep = if redirect_uri.contains('?') { '&' } else { '?' };
        let mut back = form_urlencoded::Serializer::new(String::new());
        let state = q.get("state").cloned();
        let echo_state = s.settings.denial_echoes_state;
        let error_redirect = |code: &str, state: &Option<String>| {
            let mut ser = form_urlencoded::Serializer::new(String::new());
            ser.append_pair("error", code);
            if let Some(st) = state.as_ref().filter(|_| echo_state) {
                ser.append_pair("state", st);
            }
            redirect(&format!("{redirect_uri}{sep}{}", ser.finish()))
        };
        if q.get("response_type").map(String::as_str) != Some("code") {
            return error_redirect("unsupported_response_type", &state);
        }
        let scopes: Vec<String> = q
            .get("scope")
            .map(|s| s.split(' ').filter(|x| !x.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        if scopes.is_empty() || scopes.iter().any(|sc| !s.allowed_scopes.contains(sc)) {
            return error_redirect("invalid_scope", &state);
        }
        let challenge = match (q.get("code_challenge"), q.get("code_challenge_method").map(String::as_str)) {
            (None, _) => None,
            (Some(c), None | Some("plain")) => Some(("plain".to_owned(), c.clone())),
            (Some(c), Some("S256")) => Some(("S256".to_owned(), c.clone())),
            (Some(_), Some(_)) => return error_redirect("invalid_request", &state),
        };
        if let AuthorizeMode::Deny(code) = s.settings.authorize_mode.clone() {
            return error_redirect(&code, &state);
        }
        let code = s.token("CODE");
        let client_id = s.integration.client_id.clone();
        s.codes.insert(
            code.clone(),
            CodeGrant {
                client_id,
                redirect_uri: redirect_uri.clone(),
                scopes,
                challenge,
                used: false,
                issued_at: self.now,
                family: None,
            },
        );
        back.append_pair("code", &code);
        if let Some(st) = &state {
            back.append_pair("state", st);
        }
        redirect(&format!("{redirect_uri}{sep}{}", back.finish()))
    }

    fn client_credentials(
        &self,
        headers: &hyper::HeaderMap,
        f: &HashMap<String, String>,
    ) -> Option<(String, String)> {
        if let (Some(id), Some(secret)) = (f.get("client_id"), f.get("client_secret")) {
            return Some((id.clone(), secret.clone()));
        }
        let basic = header(headers, "authorization")?.strip_prefix("Basic ")?;
        let decoded = String::from_utf8(STANDARD.decode(basic.trim()).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        Some((id.to_owned(), secret.to_owned()))
    }

    fn access_token(&self, headers: &hyper::HeaderMap, body: &[u8]) -> Resp {
        let content_type = header(headers, "content-type").unwrap_or_default();
        if !content_type.starts_with("application/x-www-form-urlencoded") {
            return self.err(415, "The token endpoint takes application/x-www-form-urlencoded.");
        }
        let f = form(body);
        let Some((client_id, client_secret)) = self.client_credentials(headers, &f) else {
            return self.oauth_err(401, "invalid_client", "Client credentials are missing.");
        };
        let mut s = self.shared.lock();
        let known = (client_id == s.integration.client_id
            && s.integration.client_secret.ct_eq_str(&client_secret))
            || (client_id == s.service_app.client_id
                && s.service_app.client_secret.ct_eq_str(&client_secret));
        if !known {
            return self.oauth_err(401, "invalid_client", "Client Id or secret is invalid.");
        }
        match f.get("grant_type").map(String::as_str) {
            Some("authorization_code") => self.code_grant(&mut s, &client_id, &f),
            Some("refresh_token") => self.refresh_grant(&mut s, &client_id, &f),
            _ => self.oauth_err(400, "unsupported_grant_type", "The grant type is not supported."),
        }
    }

    fn code_grant(&self, s: &mut State, client_id: &str, f: &HashMap<String, String>) -> Resp {
        let Some(code) = f.get("code") else {
            return self.oauth_err(400, "invalid_request", "code is required.");
        };
        let Some(grant) = s.codes.get(code).cloned() else {
            return self.oauth_err(400, "invalid_grant", "The authorization code is invalid.");
        };
        if grant.used {
            // RFC 6749 §4.1.2: a second use is denied and the tokens issued from it revoked.
            if let Some(fam) = grant.family.and_then(|id| s.families.get_mut(&id)) {
                fam.revoked = true;
            }
            return self.oauth_err(400, "invalid_grant", "The authorization code was already used.");
        }
        if grant.client_id != client_id
            || self.now.saturating_duration_since(grant.issued_at) > Duration::from_secs(600)
            || f.get("redirect_uri") != Some(&grant.redirect_uri)
        {
            return self.oauth_err(400, "invalid_grant", "The authorization code is invalid.");
        }
        match (&grant.challenge, f.get("code_verifier")) {
            (Some((method, challenge)), Some(verifier)) if pkce_matches(method, challenge, verifier) => {}
            (None, None) => {}
            _ => return self.oauth_err(400, "invalid_grant", "The PKCE code verifier does not match."),
        }
        let family = s.new_family(client_id, grant.scopes.clone(), None);
        if let Some(g) = s.codes.get_mut(code) {
            g.used = true;
            g.family = Some(family);
        }
        let expires_in = s.settings.expires_in;
        self.token_response(s, family, expires_in, None)
    }

    fn refresh_grant(&self, s: &mut State, client_id: &str, f: &HashMap<String, String>) -> Resp {
        let Some(token) = f.get("refresh_token").cloned() else {
            return self.oauth_err(400, "invalid_request", "refresh_token is required.");
        };
        let grant = s.refresh.get(&token).cloned();
        let reused = grant.as_ref().is_some_and(|g| !g.current);
        let fam = grant.as_ref().and_then(|g| s.families.get(&g.family));
        let valid = grant.as_ref().is_some_and(|g| g.current)
            && fam.is_some_and(|fam| !fam.revoked && fam.client_id == client_id);
        let org = grant.as_ref().and_then(|g| s.families.get(&g.family)).and_then(|f| f.org.clone());
        s.redemptions.push(Redemption {
            refresh_token: token.clone(),
            client_id: client_id.to_owned(),
            reused,
            accepted: valid,
            org,
        });
        let Some(grant) = grant.filter(|_| valid) else {
            if reused && s.settings.strict_rotation {
                let family = s.refresh.get(&token).map(|g| g.family);
                if let Some(fam) = family.and_then(|id| s.families.get_mut(&id)) {
                    fam.revoked = true;
                }
            }
            return self.oauth_err(
                400,
                "invalid_grant",
                "The refresh token provided is expired, revoked, malformed, or invalid.",
            );
        };
        let expires_in = if s.families[&grant.family].org.is_some() {
            s.settings.service_app_expires_in
        } else {
            s.settings.expires_in
        };
        let keep = if s.settings.rotate_refresh_tokens {
            if let Some(g) = s.refresh.get_mut(&token) {
                g.current = false;
            }
            None
        } else {
            Some(token)
        };
        self.token_response(s, grant.family, expires_in, keep)
    }

    /// Issues tokens for `family`; `keep_refresh` reuses that refresh token instead of minting one.
    fn token_response(
        &self,
        s: &mut State,
        family: u64,
        expires_in: u64,
        keep_refresh: Option<String>,
    ) -> Resp {
        let access = s.issue(family, self.now, expires_in);
        let refresh = keep_refresh.unwrap_or_else(|| s.new_refresh(family));
        let scope = s.families[&family].scopes.join(" ");
        let mut body = json!({
            "access_token": access,
            "expires_in": expires_in,
            "token_type": "Bearer",
            "scope": scope,
        });
        if !s.settings.omit_refresh_token {
            body["refresh_token"] = refresh.into();
            body["refresh_token_expires_in"] = s.settings.refresh_token_expires_in.into();
        }
        json_response(200, &body)
    }

    fn application_token(&self, path: &str, headers: &hyper::HeaderMap, body: &[u8]) -> Resp {
        let mut s = self.shared.lock();
        let Some(grant) = s.bearer_grant(header(headers, "authorization"), self.now) else {
            return self.err(
                401,
                "The request requires a valid access token set in the Authorization request header.",
            );
        };
        if !grant.scopes.iter().any(|sc| sc == "spark:applications_token") {
            return self.err(403, "The access token lacks the spark:applications_token scope.");
        }
        let content_type = header(headers, "content-type").unwrap_or_default();
        let fields: HashMap<String, String> = if content_type.starts_with("application/json") {
            match serde_json::from_slice::<HashMap<String, Value>>(body) {
                Ok(m) => m.into_iter().filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned()))).collect(),
                Err(_) => return self.err(400, "The request body is not valid JSON."),
            }
        } else {
            form(body)
        };
        let (Some(client_id), Some(secret), Some(target)) =
            (fields.get("clientId"), fields.get("clientSecret"), fields.get("targetOrgId"))
        else {
            return self.err(400, "clientId, clientSecret and targetOrgId are required.");
        };
        let app_in_path = path.trim_start_matches("/v1/applications/").trim_end_matches("/token");
        let decoded_path = byova_core::ids::decode_webex_id(app_in_path).unwrap_or_default();
        if client_id != &s.service_app.client_id
            || decoded_path != format!("ciscospark://us/APPLICATION/{client_id}")
        {
            return self.err(404, "Service App not found.");
        }
        if !s.service_app.client_secret.ct_eq_str(secret) {
            return self.err(401, "The Service App credentials are invalid.");
        }
        let Ok(org) = byova_core::OrgId::new(target).map(|org| org.to_string()) else {
            return self.err(400, "targetOrgId is invalid.");
        };
        if !s.authorized_orgs.contains(&org) {
            return self.err(403, "Service App not authorized by Full Admin in Control Hub.");
        }
        let client = s.service_app.client_id.clone();
        *s.org_fetches.entry(org.clone()).or_insert(0) += 1;
        let family = s.new_family(&client, vec!["spark:all".into()], Some(org));
        let expires_in = s.settings.service_app_expires_in;
        let omit = std::mem::replace(&mut s.settings.omit_refresh_token, false);
        let resp = self.token_response(&mut s, family, expires_in, None);
        s.settings.omit_refresh_token = omit;
        resp
    }

    /// Whose valid bearer `headers` carry: `Some(None)` the Integration's, `Some(Some(org))` an
    /// org's; `None` when it is not valid.
    fn bearer_org(&self, headers: &hyper::HeaderMap) -> Option<Option<String>> {
        let s = self.shared.lock();
        s.bearer_grant(header(headers, "authorization"), self.now).map(|grant| grant.org.clone())
    }

    /// Webex's 401 to a missing, expired or revoked bearer.
    fn unauthenticated(&self) -> Resp {
        self.err(401, "The request requires a valid access token set in the Authorization request header.")
    }

    fn people_me(&self, method: &hyper::Method, headers: &hyper::HeaderMap) -> Resp {
        let Some(org) = self.bearer_org(headers) else { return self.unauthenticated() };
        let org = org.unwrap_or_else(|| "fake-provider-org".to_owned());
        if method != hyper::Method::GET {
            return self.err(405, "Method not allowed.");
        }
        json_response(
            200,
            &serde_json::json!({ "id": "fake-person", "orgId": org, "displayName": "Fake Person" }),
        )
    }

    fn echo(&self, method: &hyper::Method, query: &str, headers: &hyper::HeaderMap, body: Bytes) -> Resp {
        let Some(org) = self.bearer_org(headers) else { return self.unauthenticated() };
        let org = org.unwrap_or_else(|| "integration".to_owned());
        let answer = match *method {
            hyper::Method::POST | hyper::Method::PUT => body,
            hyper::Method::GET => {
                let len = form(query.as_bytes()).get("bytes").and_then(|n| n.parse::<usize>().ok());
                match len.filter(|n| *n <= MAX_ECHO_BYTES) {
                    Some(len) => Bytes::from(echo_pattern(len)),
                    None => return self.err(400, "bytes must be a length up to 64 MiB."),
                }
            }
            _ => return self.err(405, "Method not allowed."),
        };
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        let chunked = header(headers, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let mut resp = Response::new(Full::new(answer));
        resp.headers_mut()
            .insert("Content-Type", hyper::header::HeaderValue::from_static("application/octet-stream"));
        for (name, value) in [
            ("X-Echo-Org", org),
            ("X-Echo-Headers", names.join(",")),
            ("X-Echo-Chunked", chunked.to_string()),
        ] {
            if let Ok(value) = value.parse() {
                resp.headers_mut().insert(name, value);
            }
        }
        resp
    }

    fn data_sources(
        &self,
        method: &hyper::Method,
        path: &str,
        headers: &hyper::HeaderMap,
        body: &[u8],
    ) -> Resp {
        let Some(org) = self.bearer_org(headers) else { return self.unauthenticated() };
        let Some(org) = org else {
            return self.err(403, "Data sources are managed with an org's Service App token.");
        };
        let id = path.strip_prefix("/v1/dataSources/").map(percent_decode);
        let mut s = self.shared.lock();
        let now = self.now;
        match (method.as_str(), id) {
            ("GET", None) => {
                let items: Vec<Value> =
                    s.data_sources.iter().filter(|d| d.org == org).map(DataSourceRecord::to_json).collect();
                json_response(200, &json!({ "items": items }))
            }
            ("GET", Some(id)) => match s.data_sources.iter().find(|d| d.id == id && d.org == org) {
                Some(d) => json_response(200, &d.to_json()),
                None => self.err(404, "The data source was not found."),
            },
            ("POST", None) | ("PUT", Some(_)) => {
                let Ok(Value::Object(v)) = serde_json::from_slice::<Value>(body) else {
                    return self.err(400, "The request body is not a JSON object.");
                };
                let text =
                    |k: &str| v.get(k).and_then(Value::as_str).filter(|t| !t.is_empty()).map(str::to_owned);
                let lifetime =
                    v.get("tokenLifetimeMinutes").and_then(Value::as_u64).filter(|m| (1..=1440).contains(m));
                let (Some(schema_id), Some(url), Some(audience), Some(subject), Some(nonce), Some(lifetime)) = (
                    text("schemaId"),
                    text("url"),
                    text("audience"),
                    text("subject"),
                    text("nonce"),
                    lifetime,
                ) else {
                    return self.err(
                        400,
                        "schemaId, url, audience, subject, nonce and tokenLifetimeMinutes (1-1440) are required.",
                    );
                };
                if !s.data_source_nonces.insert(nonce) {
                    return self.err(400, "The nonce was used before.");
                }
                let lifetime = u32::try_from(lifetime).unwrap_or(1440);
                let expires_at = now.saturating_add(Duration::from_secs(u64::from(lifetime) * 60));
                if let Some(id) = path.strip_prefix("/v1/dataSources/").map(percent_decode) {
                    let Some(index) = s.data_sources.iter().position(|d| d.id == id && d.org == org) else {
                        return self.err(404, "The data source was not found.");
                    };
                    let previous_expiry = s.data_sources[index].expires_at;
                    if previous_expiry <= now {
                        s.data_source_lapses += 1;
                    }
                    let record = &mut s.data_sources[index];
                    (record.schema_id, record.url, record.audience, record.subject) =
                        (schema_id, url, audience, subject);
                    record.status = text("status").unwrap_or_else(|| "active".into());
                    (record.lifetime_minutes, record.expires_at) = (lifetime, expires_at);
                    let out = record.to_json();
                    s.data_source_renewals.push(DataSourceRenewal {
                        id,
                        org,
                        at: now,
                        previous_expiry: Some(previous_expiry),
                        lifetime_minutes: lifetime,
                    });
                    return json_response(200, &out);
                }
                if s.data_sources.iter().any(|d| d.org == org && d.url == url && d.schema_id == schema_id) {
                    return self.err(409, "A data source with this URL and schema is registered.");
                }
                let n = s.next();
                let record = DataSourceRecord {
                    id: format!("fake-data-source-{n:06}"),
                    org,
                    schema_id,
                    url,
                    audience,
                    subject,
                    status: "active".into(),
                    lifetime_minutes: lifetime,
                    expires_at,
                };
                let out = record.to_json();
                s.data_source_renewals.push(DataSourceRenewal {
                    id: record.id.clone(),
                    org: record.org.clone(),
                    at: now,
                    previous_expiry: None,
                    lifetime_minutes: lifetime,
                });
                s.data_sources.push(record);
                json_response(200, &out)
            }
            ("DELETE", Some(id)) => {
                let before = s.data_sources.len();
                s.data_sources.retain(|d| !(d.id == id && d.org == org));
                if s.data_sources.len() == before {
                    return self.err(404, "The data source was not found.");
                }
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = hyper::StatusCode::NO_CONTENT;
                resp
            }
            _ => self.err(405, "Method not allowed."),
        }
    }

    fn webhooks(
        &self,
        method: &hyper::Method,
        path: &str,
        query: &str,
        headers: &hyper::HeaderMap,
        body: &[u8],
    ) -> Resp {
        let mut s = self.shared.lock();
        if s.bearer_grant(header(headers, "authorization"), self.now).is_none() {
            return self.err(
                401,
                "The request requires a valid access token set in the Authorization request header.",
            );
        }
        let id = path.strip_prefix("/v1/webhooks/").map(percent_decode);
        match (method.as_str(), id) {
            ("GET", None) => {
                let q = form(query.as_bytes());
                let max = q
                    .get("max")
                    .and_then(|m| m.parse::<usize>().ok())
                    .unwrap_or(100)
                    .clamp(1, s.settings.max_page_size);
                let cursor = q.get("cursor").and_then(|c| c.parse::<usize>().ok()).unwrap_or(0);
                let items: Vec<Value> =
                    s.webhooks.iter().skip(cursor).take(max).map(WebhookRecord::to_json).collect();
                let mut resp = json_response(200, &json!({ "items": items }));
                if cursor + max < s.webhooks.len() {
                    let next = format!(
                        "<{}/webhooks?max={max}&cursor={}>; rel=\"next\"",
                        self.shared.base_url,
                        cursor + max
                    );
                    if let Ok(v) = next.parse() {
                        resp.headers_mut().insert("Link", v);
                    }
                }
                resp
            }
            ("POST", None) => {
                let Ok(v) = serde_json::from_slice::<Value>(body) else {
                    return self.err(400, "The request body is not valid JSON.");
                };
                let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
                let (Some(name), Some(target_url), Some(resource), Some(event)) =
                    (field("name"), field("targetUrl"), field("resource"), field("event"))
                else {
                    return self.err(400, "name, targetUrl, resource and event are required.");
                };
                let n = s.next();
                let record = WebhookRecord {
                    id: encode_webex_id("us", "WEBHOOK", &format!("00000000-0000-4000-8000-{n:012}")),
                    name,
                    target_url,
                    resource,
                    event,
                    filter: field("filter"),
                    secret: field("secret"),
                    status: "active".into(),
                    created: format!("2026-01-01T00:00:00.{:03}Z", n % 1000),
                    failures: 0,
                };
                let out = record.to_json();
                s.webhooks.push(record);
                json_response(200, &out)
            }
            ("GET", Some(id)) => match s.webhooks.iter().find(|w| w.id == id) {
                Some(w) => json_response(200, &w.to_json()),
                None => self.err(404, "The requested resource could not be found."),
            },
            ("PUT", Some(id)) => {
                let Ok(v) = serde_json::from_slice::<Value>(body) else {
                    return self.err(400, "The request body is not valid JSON.");
                };
                let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
                let (Some(name), Some(target_url)) = (field("name"), field("targetUrl")) else {
                    return self.err(400, "name and targetUrl are required.");
                };
                let Some(w) = s.webhooks.iter_mut().find(|w| w.id == id) else {
                    return self.err(404, "The requested resource could not be found.");
                };
                w.name = name;
                w.target_url = target_url;
                if let Some(secret) = field("secret") {
                    w.secret = Some(secret);
                }
                if field("status").as_deref() == Some("active") {
                    w.status = "active".into();
                    w.failures = 0;
                }
                json_response(200, &w.to_json())
            }
            ("DELETE", Some(id)) => {
                let before = s.webhooks.len();
                s.webhooks.retain(|w| w.id != id);
                if s.webhooks.len() == before {
                    return self.err(404, "The requested resource could not be found.");
                }
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = StatusCode::NO_CONTENT;
                resp
            }
            _ => self.err(405, "Method not allowed."),
        }
    }
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}
