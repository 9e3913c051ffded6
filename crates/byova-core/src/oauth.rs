//! Integration OAuth and Service App token requests as values, and the parsing of their
//! responses, including what every error status means.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use crate::config::ByovaConfig;
use crate::credentials::{DEFAULT_INTEGRATION_SCOPES, IntegrationCredentials, ServiceAppCredentials};
use crate::error::{ApiFailure, Error, Result, TokenSubject};
use crate::http::{HttpRequest, HttpResponse, Method, RetryClass};
use crate::ids::{derive_application_id_in_region, encode_webex_id};
use crate::key::OrgId;
use crate::secret::{AccessToken, ClientSecret, RefreshToken};
use crate::time::Timestamp;
use crate::tokens::OAuthTokens;

pub use crate::secret::{AuthorizationCode, CsrfState, PkceCodeVerifier};

/// Token responses larger than this are refused unread.
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// RFC 3986 unreserved characters stay; everything else is percent-encoded.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A ready authorization request: the URL for the browser and what the redirect must match.
#[derive(Debug)]
#[non_exhaustive]
pub struct AuthorizationRequest {
    /// The URL to open in the browser.
    pub url: String,
    /// The `state` the redirect must carry back.
    pub state: CsrfState,
    /// The PKCE verifier to send with the code exchange, when PKCE is used.
    pub pkce_verifier: Option<PkceCodeVerifier>,
}

impl AuthorizationRequest {
    /// An authorization request with the defaults: [`DEFAULT_INTEGRATION_SCOPES`], a `state`
    /// of 128 random bits and PKCE S256 with a fresh 43-character verifier. For anything else,
    /// [`builder`](Self::builder).
    ///
    /// ```
    /// use byova_core::oauth::AuthorizationRequest;
    /// use byova_core::{ByovaConfig, IntegrationCredentials};
    ///
    /// let request = AuthorizationRequest::new(&ByovaConfig::default(), &IntegrationCredentials::new("C1", "s"))?;
    /// assert!(request.url.contains("code_challenge_method=S256"));
    /// # Ok::<(), byova_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// None with the defaults; the signature matches [`AuthorizationRequestBuilder::build`].
    pub fn new(config: &ByovaConfig, credentials: &IntegrationCredentials) -> Result<Self> {
        Self::builder(config, credentials).build()
    }

    /// A builder for an authorization request: scopes, a caller's `state`, a caller's PKCE
    /// verifier, or no PKCE.
    ///
    /// ```
    /// use byova_core::oauth::{AuthorizationRequest, CsrfState};
    /// use byova_core::{ByovaConfig, IntegrationCredentials};
    ///
    /// let (config, creds) = (ByovaConfig::default(), IntegrationCredentials::new("C1", "s"));
    /// let request = AuthorizationRequest::builder(&config, &creds)
    ///     .scopes(&["spark:all"])
    ///     .state(CsrfState::new("my-state"))
    ///     .build()?;
    /// assert!(request.url.contains("scope=spark%3Aall&state=my-state"));
    /// # Ok::<(), byova_core::Error>(())
    /// ```
    pub fn builder<'a>(
        config: &'a ByovaConfig,
        credentials: &'a IntegrationCredentials,
    ) -> AuthorizationRequestBuilder<'a> {
        AuthorizationRequestBuilder { config, credentials, scopes: None, state: None, pkce: Pkce::Random }
    }
}

/// Builds an [`AuthorizationRequest`]; see [`AuthorizationRequest::builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `build`"]
pub struct AuthorizationRequestBuilder<'a> {
    config: &'a ByovaConfig,
    credentials: &'a IntegrationCredentials,
    scopes: Option<&'a [&'a str]>,
    state: Option<CsrfState>,
    pkce: Pkce,
}

#[derive(Debug)]
enum Pkce {
    Random,
    Verifier(PkceCodeVerifier),
    Off,
}

impl<'a> AuthorizationRequestBuilder<'a> {
    /// The scopes to request (default: [`DEFAULT_INTEGRATION_SCOPES`]).
    pub fn scopes(mut self, scopes: &'a [&'a str]) -> Self {
        self.scopes = Some(scopes);
        self
    }

    /// The `state` the redirect must carry back (default: 128 random bits).
    pub fn state(mut self, state: CsrfState) -> Self {
        self.state = Some(state);
        self
    }

    /// The PKCE verifier whose S256 challenge the URL carries (default: a fresh random one).
    pub fn pkce_verifier(mut self, verifier: PkceCodeVerifier) -> Self {
        self.pkce = Pkce::Verifier(verifier);
        self
    }

    /// No PKCE: the URL carries no challenge and the code exchange sends no verifier.
    pub fn without_pkce(mut self) -> Self {
        self.pkce = Pkce::Off;
        self
    }

    /// The request.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty scope list or a scope containing whitespace.
    pub fn build(self) -> Result<AuthorizationRequest> {
        let scopes = self.scopes.unwrap_or(&DEFAULT_INTEGRATION_SCOPES);
        if scopes.is_empty() || scopes.iter().any(|s| s.is_empty() || s.contains(char::is_whitespace)) {
            return Err(Error::InvalidInput(
                "scopes must be a non-empty list of names without whitespace".into(),
            ));
        }
        let state = self.state.unwrap_or_else(CsrfState::new_random);
        let pkce_verifier = match self.pkce {
            Pkce::Random => Some(PkceCodeVerifier::new_random()),
            Pkce::Verifier(v) => Some(v),
            Pkce::Off => None,
        };
        let enc = |v: &str| utf8_percent_encode(v, QUERY).to_string();
        let mut url = format!(
            "{}?response_type=code&client_id={}&redirect_uri={}&scope={}&state={}",
            self.config.authorize_url,
            enc(&self.credentials.client_id),
            enc(&self.credentials.redirect_uri),
            enc(&scopes.join(" ")),
            enc(state.expose_secret()),
        );
        if let Some(v) = &pkce_verifier {
            url.push_str("&code_challenge=");
            url.push_str(&v.s256_challenge());
            url.push_str("&code_challenge_method=S256");
        }
        Ok(AuthorizationRequest { url, state, pkce_verifier })
    }
}

/// The token-endpoint call exchanging an authorization code (never retried once sent: codes
/// are single use).
pub fn code_exchange_request(
    config: &ByovaConfig,
    credentials: &IntegrationCredentials,
    code: &AuthorizationCode,
    pkce_verifier: Option<&PkceCodeVerifier>,
) -> HttpRequest {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.expose_secret()),
        ("redirect_uri", credentials.redirect_uri.as_str()),
        ("client_id", credentials.client_id.as_str()),
        ("client_secret", credentials.client_secret.expose_secret()),
    ];
    if let Some(v) = pkce_verifier {
        form.push(("code_verifier", v.expose_secret()));
    }
    token_endpoint(config, RetryClass::OnlyIfNotProcessed).form_body(&form)
}

/// The token-endpoint call refreshing with `refresh_token`, for an Integration or a Service App
/// (each uses its own client credentials).
pub fn refresh_request(
    config: &ByovaConfig,
    client_id: &str,
    client_secret: &ClientSecret,
    refresh_token: &RefreshToken,
) -> HttpRequest {
    token_endpoint(config, RetryClass::Idempotent).form_body(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose_secret()),
        ("client_id", client_id),
        ("client_secret", client_secret.expose_secret()),
    ])
}

fn token_endpoint(config: &ByovaConfig, retry: RetryClass) -> HttpRequest {
    HttpRequest::new(Method::Post, config.token_url.clone(), retry).header("Accept", "application/json")
}

/// `POST /applications/{applicationId}/token` with the Integration's bearer: mints Service App
/// tokens for `org_id` (a UUID; sent as the base64 Webex org id the API reference shows).
pub fn service_app_token_request(
    config: &ByovaConfig,
    credentials: &ServiceAppCredentials,
    org_id: &OrgId,
    integration_bearer: &AccessToken,
) -> HttpRequest {
    let application_id = derive_application_id_in_region(&config.region, &credentials.client_id);
    let body = serde_json::json!({
        "clientId": credentials.client_id,
        "clientSecret": credentials.client_secret.expose_secret(),
        "targetOrgId": encode_webex_id(&config.region, "ORGANIZATION", org_id),
    });
    HttpRequest::new(
        Method::Post,
        config.api_url(&format!("applications/{application_id}/token")),
        RetryClass::Idempotent,
    )
    .header("Accept", "application/json")
    .secret_header("Authorization", format!("Bearer {}", integration_bearer.expose_secret()))
    .json_body(&body)
}

/// Which call a token response answers; it decides what an error status means.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenCall {
    /// An authorization-code exchange.
    CodeExchange,
    /// A refresh of the subject's stored refresh token.
    Refresh(TokenSubject),
    /// A Service App token fetch for the org.
    ServiceAppFetch {
        /// The org asked for.
        org_id: OrgId,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Seconds {
    Number(u64),
    Text(String),
}

impl Seconds {
    fn get(&self) -> Option<u64> {
        match self {
            Seconds::Number(n) => Some(*n),
            Seconds::Text(s) => s.trim().parse().ok(),
        }
    }
}

#[derive(Deserialize)]
struct TokenBody {
    access_token: Option<String>,
    expires_in: Option<Seconds>,
    token_type: Option<String>,
    refresh_token: Option<String>,
    refresh_token_expires_in: Option<Seconds>,
    scope: Option<String>,
}

/// Parses a token-endpoint (or Service App token) response. `sent_at` is when the request was
/// sent: expiry is computed from it.
///
/// `access_token` and `expires_in` are required; everything else is optional; unknown keys are
/// ignored; `token_type` must be `Bearer` in any case.
///
/// # Errors
/// The [`Error`] the status means for `call` (see [`error_from_response`]), or
/// [`Error::InvalidResponse`] for a 2xx body that is not a usable token response.
pub fn parse_token_response(
    response: &HttpResponse,
    sent_at: Timestamp,
    call: &TokenCall,
) -> Result<OAuthTokens> {
    if !response.is_success() {
        return Err(error_from_response(response, call));
    }
    let invalid = |what: &str| Error::InvalidResponse { what: what.to_owned(), status: response.status };
    if response.body.len() > MAX_TOKEN_RESPONSE_BYTES {
        return Err(invalid("the token response is larger than 64 KiB"));
    }
    // serde's messages can quote values, so only the fact of failure is kept.
    let body: TokenBody = serde_json::from_slice(&response.body)
        .map_err(|_| invalid("the token response is not a JSON object of the expected shape"))?;
    let access =
        body.access_token.filter(|t| !t.is_empty()).ok_or_else(|| invalid("access_token is missing"))?;
    let expires_in = body
        .expires_in
        .as_ref()
        .and_then(Seconds::get)
        .ok_or_else(|| invalid("expires_in is missing or not a number of seconds"))?;
    if expires_in > MAX_LIFETIME_SECS {
        return Err(invalid("expires_in is longer than a century"));
    }
    let token_type = body.token_type.unwrap_or_else(|| "Bearer".to_owned());
    if !token_type.eq_ignore_ascii_case("bearer") {
        return Err(invalid("token_type is not Bearer"));
    }
    let mut tokens = OAuthTokens::new(AccessToken::new(access), expires_in, sent_at);
    tokens.token_type = "Bearer".to_owned();
    tokens.scope = body.scope;
    if let Some(refresh) = body.refresh_token.filter(|t| !t.is_empty()) {
        let rexp =
            body.refresh_token_expires_in.as_ref().and_then(Seconds::get).map(|s| s.min(MAX_LIFETIME_SECS));
        tokens = tokens.with_refresh_token(RefreshToken::new(refresh), rexp);
    }
    Ok(tokens)
}

/// No token lives longer than a century; a longer `expires_in` is a broken response.
const MAX_LIFETIME_SECS: u64 = 100 * 365 * 86_400;

/// The OAuth error codes of RFC 6749 §5.2 and §4.1.2.1 that byova recognises in a body.
const OAUTH_ERROR_CODES: [&str; 11] = [
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "access_denied",
    "server_error",
    "temporarily_unavailable",
    "unsupported_response_type",
    "login_required",
];

/// Returns the canonical static spelling of a known OAuth error code.
pub fn known_oauth_error(code: &str) -> Option<&'static str> {
    OAUTH_ERROR_CODES.iter().copied().find(|c| *c == code)
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    error: Option<serde_json::Value>,
    #[serde(rename = "trackingId")]
    tracking_id: Option<serde_json::Value>,
    message: Option<serde_json::Value>,
    #[serde(default)]
    errors: Option<Vec<serde_json::Value>>,
}

impl ErrorBody {
    /// Whether Webex's own error shape (`{message, errors[{description}]}`) says the refresh
    /// token (or the grant) is dead. Only the verdict is kept, never the text.
    fn names_a_dead_grant(&self) -> bool {
        let descriptions = self.errors.iter().flatten().filter_map(|e| e.get("description"));
        self.message.iter().chain(descriptions).filter_map(serde_json::Value::as_str).any(|text| {
            let text = text.to_ascii_lowercase();
            text.contains("invalid_grant")
                || ((text.contains("refresh token") || text.contains("refresh_token"))
                    && ["invalid", "expired", "revoked", "malformed"].iter().any(|w| text.contains(w)))
        })
    }
}

/// What a non-2xx answer means, for either Webex error body (`{message, errors, trackingId}`)
/// or an OAuth one (`{error, error_description}`), or no JSON at all (a 429 may come as HTML).
///
/// - 429 and 423 → [`Error::RateLimited`] with `Retry-After` in seconds;
/// - a refresh answered 400 or 401 with JSON naming the grant (OAuth `invalid_grant`, or
///   Webex's shape saying the refresh token is invalid, expired or revoked) →
///   [`Error::ReauthorizationRequired`]: the one answer that means a person must act;
/// - a token call (refresh, Service App fetch) answered 4xx without a JSON body (a proxy's or a
///   gateway's HTML page, an empty body), or a refresh answered 400 with JSON that names no
///   error byova knows → [`Error::UnrecognizedAnswer`], retryable: nothing is concluded from it;
/// - a Service App fetch answered 403 → [`Error::ServiceAppNotAuthorized`];
/// - `invalid_client`, 401 and 403 → [`Error::Authentication`]; 404 → [`Error::NotFound`];
///   400/409/415 → [`Error::Validation`]; 5xx → [`Error::Server`].
pub fn error_from_response(response: &HttpResponse, call: &TokenCall) -> Error {
    let parsed: Option<ErrorBody> = if response.body.len() <= MAX_TOKEN_RESPONSE_BYTES {
        serde_json::from_slice(&response.body).ok()
    } else {
        None
    };
    let json = parsed.is_some();
    let body = parsed.unwrap_or_default();
    let dead_grant = body.names_a_dead_grant();
    let oauth_error = body
        .error
        .as_ref()
        .and_then(|v| v.as_str())
        .and_then(known_oauth_error)
        .or(dead_grant.then_some("invalid_grant"));
    let tracking_id = tracking_id(response)
        .or_else(|| body.tracking_id.as_ref().and_then(|v| v.as_str()).map(sanitize_tracking_id));
    let failure = ApiFailure { status: response.status, tracking_id, oauth_error };
    classify(failure, json, response.header("Retry-After"), call)
}

fn classify(failure: ApiFailure, json: bool, retry_after: Option<&str>, call: &TokenCall) -> Error {
    let token_call = matches!(call, TokenCall::Refresh(_) | TokenCall::ServiceAppFetch { .. });
    match (failure.status, call) {
        (429 | 423, _) => Error::RateLimited { retry_after: parse_retry_after(retry_after), failure },
        (400..=499, _) if token_call && !json => Error::UnrecognizedAnswer(failure),
        (400 | 401, TokenCall::Refresh(subject)) if failure.oauth_error == Some("invalid_grant") => {
            Error::ReauthorizationRequired { subject: subject.clone(), failure }
        }
        (400 | 401, _) if failure.oauth_error == Some("invalid_client") => Error::Authentication(failure),
        (400, TokenCall::Refresh(_)) if failure.oauth_error.is_none() => Error::UnrecognizedAnswer(failure),
        (403, TokenCall::ServiceAppFetch { org_id }) => {
            Error::ServiceAppNotAuthorized { org_id: org_id.clone(), failure }
        }
        (401 | 403, _) => Error::Authentication(failure),
        (404, _) => Error::NotFound(failure),
        (400 | 409 | 415, _) => Error::Validation(failure),
        (500..=599, _) => Error::Server(failure),
        _ => Error::UnexpectedStatus(failure),
    }
}

/// The error for a non-2xx answer to a call that is not a token call (webhooks and the like).
pub fn api_error(response: &HttpResponse) -> Error {
    error_from_response(response, &TokenCall::CodeExchange)
}

/// `Retry-After` as delay-seconds. The HTTP-date form is not used by Webex, and Webex has sent
/// values such as `rand(30),add(30)`: anything but whole seconds yields `None`, which the retry
/// policy treats as its default wait.
pub fn parse_retry_after(value: Option<&str>) -> Option<std::time::Duration> {
    value?.trim().parse::<u64>().ok().map(std::time::Duration::from_secs)
}

/// The `trackingId` response header, when present.
pub fn tracking_id(response: &HttpResponse) -> Option<String> {
    response.header("trackingId").map(sanitize_tracking_id)
}

/// Tracking ids are quoted in errors and logs: keep them short and printable.
fn sanitize_tracking_id(raw: &str) -> String {
    raw.chars().filter(|c| c.is_ascii_graphic()).take(128).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ByovaConfig {
        ByovaConfig::with_base_url("https://webex.test/v1").unwrap()
    }

    fn creds() -> IntegrationCredentials {
        IntegrationCredentials::new("Cint", "INT-SECRET")
    }

    fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> HttpResponse {
        HttpResponse::new(
            status,
            headers.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect(),
            body.as_bytes().to_vec(),
        )
    }

    fn body(req: &HttpRequest) -> String {
        String::from_utf8(req.body.to_vec()).unwrap()
    }

    #[test]
    fn snapshot_authorization_url_with_pkce() {
        let verifier = PkceCodeVerifier::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        let req = AuthorizationRequest::builder(&config(), &creds())
            .state(CsrfState::new("st8"))
            .pkce_verifier(verifier)
            .build()
            .unwrap();
        assert_eq!(
            req.url,
            "https://webex.test/v1/authorize?response_type=code&client_id=Cint\
             &redirect_uri=http%3A%2F%2F127.0.0.1%3A8765%2Fcallback\
             &scope=spark%3Aall%20spark%3Aapplications_token%20application%3Awebhooks_write%20application%3Awebhooks_read\
             &state=st8&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256"
        );
    }

    #[test]
    fn authorization_url_generates_state_and_rejects_bad_scopes() {
        let req = AuthorizationRequest::builder(&config(), &creds()).scopes(&["spark:all"]).build().unwrap();
        assert_eq!(req.state.expose_secret().len(), 22);
        assert!(req.url.contains(&format!("state={}", req.state.expose_secret())));
        assert!(req.pkce_verifier.as_ref().unwrap().is_well_formed());
        let no_pkce = AuthorizationRequest::builder(&config(), &creds()).without_pkce().build().unwrap();
        assert!(!no_pkce.url.contains("code_challenge"));
        for bad in [&[][..], &[""], &["a b"]] {
            assert!(matches!(
                AuthorizationRequest::builder(&config(), &creds()).scopes(bad).build(),
                Err(Error::InvalidInput(_))
            ));
        }
    }

    #[test]
    fn snapshot_code_exchange() {
        let verifier = PkceCodeVerifier::new("v".repeat(43));
        let req =
            code_exchange_request(&config(), &creds(), &AuthorizationCode::new("the code"), Some(&verifier));
        assert_eq!(req.method, Method::Post);
        assert_eq!(req.url, "https://webex.test/v1/access_token");
        assert_eq!(req.retry, RetryClass::OnlyIfNotProcessed);
        assert_eq!(req.header_value("content-type"), Some("application/x-www-form-urlencoded"));
        assert_eq!(
            body(&req),
            format!(
                "grant_type=authorization_code&code=the+code&redirect_uri=http%3A%2F%2F127.0.0.1%3A8765%2Fcallback\
                 &client_id=Cint&client_secret=INT-SECRET&code_verifier={}",
                "v".repeat(43)
            )
        );
    }

    #[test]
    fn snapshot_refresh() {
        let req = refresh_request(&config(), "Csa", &ClientSecret::new("S&S"), &RefreshToken::new("R/1"));
        assert_eq!(req.retry, RetryClass::Idempotent);
        assert_eq!(
            body(&req),
            "grant_type=refresh_token&refresh_token=R%2F1&client_id=Csa&client_secret=S%26S"
        );
        assert!(req.header_value("authorization").is_none());
    }

    #[test]
    fn snapshot_service_app_fetch() {
        let sa = ServiceAppCredentials::new("Cf2e954e018f2de8c1403e2618323551df65", "SA-SECRET");
        let req = service_app_token_request(
            &config(),
            &sa,
            &OrgId::from_static("63b02f90-9cc6-43b8-aa6d-cad425ac554c"),
            &AccessToken::new("INT-BEARER"),
        );
        assert_eq!(
            req.url,
            "https://webex.test/v1/applications/Y2lzY29zcGFyazovL3VzL0FQUExJQ0FUSU9OL0NmMmU5NTRlMDE4ZjJkZThjMTQwM2UyNjE4MzIzNTUxZGY2NQ/token"
        );
        assert_eq!(req.header_value("Authorization"), Some("Bearer INT-BEARER"));
        assert_eq!(req.header_value("Content-Type"), Some("application/json"));
        assert_eq!(
            body(&req),
            r#"{"clientId":"Cf2e954e018f2de8c1403e2618323551df65","clientSecret":"SA-SECRET","targetOrgId":"Y2lzY29zcGFyazovL3VzL09SR0FOSVpBVElPTi82M2IwMmY5MC05Y2M2LTQzYjgtYWE2ZC1jYWQ0MjVhYzU1NGM"}"#
        );
        assert!(!format!("{req:?}").contains("INT-BEARER"));
    }

    #[test]
    fn parses_a_full_token_response() {
        let r = resp(
            200,
            &[],
            r#"{"access_token":"A","expires_in":1209599,"refresh_token":"R","refresh_token_expires_in":"7775999","token_type":"bearer","scope":"spark:all","id_token":"x"}"#,
        );
        let t = parse_token_response(&r, Timestamp::from_unix_secs(100), &TokenCall::CodeExchange).unwrap();
        assert!(t.access_token.ct_eq_str("A"));
        assert_eq!(t.expires_at(), Timestamp::from_unix_secs(100 + 1_209_599));
        assert!(t.refresh_token.as_ref().unwrap().ct_eq_str("R"));
        assert_eq!(t.refresh_token_expires_in, Some(7_775_999));
        assert_eq!(t.token_type, "Bearer");
        assert_eq!(t.scope.as_deref(), Some("spark:all"));
    }

    #[test]
    fn minimal_response_has_no_refresh_token() {
        let r = resp(200, &[], r#"{"access_token":"A","expires_in":60}"#);
        let t = parse_token_response(&r, Timestamp::EPOCH, &TokenCall::CodeExchange).unwrap();
        assert!(t.refresh_token.is_none());
        let empty = resp(200, &[], r#"{"access_token":"A","expires_in":60,"refresh_token":""}"#);
        assert!(
            parse_token_response(&empty, Timestamp::EPOCH, &TokenCall::CodeExchange)
                .unwrap()
                .refresh_token
                .is_none()
        );
    }

    #[test]
    fn bad_token_responses_are_typed_and_never_echo_the_body() {
        let cases = [
            r#"{"expires_in":60}"#,
            r#"{"access_token":"","expires_in":60}"#,
            r#"{"access_token":"SECRET-CANARY"}"#,
            r#"{"access_token":"SECRET-CANARY","expires_in":"soon"}"#,
            r#"{"access_token":"SECRET-CANARY","expires_in":-1}"#,
            r#"{"access_token":"SECRET-CANARY","expires_in":18446744073709551615}"#,
            r#"{"access_token":"SECRET-CANARY","expires_in":60,"token_type":"mac"}"#,
            r#"{"access_token":5,"expires_in":60,"x":"SECRET-CANARY"}"#,
            "<html>SECRET-CANARY</html>",
            "",
            "[]",
        ];
        for case in cases {
            let err = parse_token_response(&resp(200, &[], case), Timestamp::EPOCH, &TokenCall::CodeExchange)
                .unwrap_err();
            assert!(matches!(err, Error::InvalidResponse { status: 200, .. }), "{case}: {err:?}");
            assert!(!err.to_string().contains("SECRET-CANARY"));
            assert!(!format!("{err:?}").contains("SECRET-CANARY"));
        }
        let huge = format!(r#"{{"access_token":"{}","expires_in":1}}"#, "a".repeat(MAX_TOKEN_RESPONSE_BYTES));
        assert!(matches!(
            parse_token_response(&resp(200, &[], &huge), Timestamp::EPOCH, &TokenCall::CodeExchange),
            Err(Error::InvalidResponse { .. })
        ));
    }

    #[test]
    fn token_type_is_case_insensitive() {
        for tt in ["bearer", "Bearer", "BEARER"] {
            let r = resp(200, &[], &format!(r#"{{"access_token":"A","expires_in":1,"token_type":"{tt}"}}"#));
            assert!(parse_token_response(&r, Timestamp::EPOCH, &TokenCall::CodeExchange).is_ok());
        }
    }

    #[test]
    fn status_mapping() {
        let refresh = TokenCall::Refresh(TokenSubject::Integration);
        let fetch = TokenCall::ServiceAppFetch { org_id: OrgId::from_static("o1") };
        let webex_400 =
            r#"{"message":"SECRET-CANARY bad","errors":[{"description":"x"}],"trackingId":"ROUTER_B"}"#;
        let webex_dead_grant = r#"{"message":"SECRET-CANARY","errors":[{"description":"The refresh token provided is expired, revoked, malformed, or invalid."}],"trackingId":"ROUTER_B"}"#;
        type Check = fn(&Error) -> bool;
        let cases: Vec<(HttpResponse, &TokenCall, Check)> = vec![
            (
                resp(400, &[], r#"{"error":"invalid_grant","error_description":"SECRET-CANARY"}"#),
                &refresh,
                |e| matches!(e, Error::ReauthorizationRequired { .. }),
            ),
            (resp(400, &[], webex_400), &refresh, |e| matches!(e, Error::UnrecognizedAnswer(_))),
            (resp(400, &[], webex_dead_grant), &refresh, |e| {
                matches!(e, Error::ReauthorizationRequired { .. })
            }),
            (resp(401, &[], r#"{"error":"invalid_grant"}"#), &refresh, |e| {
                matches!(e, Error::ReauthorizationRequired { .. })
            }),
            (resp(401, &[], r#"{"error":"invalid_client"}"#), &refresh, |e| {
                matches!(e, Error::Authentication(_))
            }),
            (resp(400, &[], r#"{"error":"invalid_client"}"#), &refresh, |e| {
                matches!(e, Error::Authentication(_))
            }),
            (resp(400, &[], r#"{"error":"invalid_grant"}"#), &TokenCall::CodeExchange, |e| {
                matches!(e, Error::Validation(_))
            }),
            (resp(403, &[], webex_400), &fetch, |e| matches!(e, Error::ServiceAppNotAuthorized { .. })),
            (resp(403, &[], ""), &TokenCall::CodeExchange, |e| matches!(e, Error::Authentication(_))),
            (resp(401, &[], webex_400), &fetch, |e| matches!(e, Error::Authentication(_))),
            (resp(404, &[], webex_400), &fetch, |e| matches!(e, Error::NotFound(_))),
            (resp(409, &[], webex_400), &fetch, |e| matches!(e, Error::Validation(_))),
            (resp(415, &[], webex_400), &fetch, |e| matches!(e, Error::Validation(_))),
            (resp(502, &[], "<html>bad gateway</html>"), &refresh, |e| matches!(e, Error::Server(_))),
            (resp(418, &[], webex_400), &refresh, |e| matches!(e, Error::UnexpectedStatus(_))),
            (resp(418, &[], ""), &refresh, |e| matches!(e, Error::UnrecognizedAnswer(_))),
        ];
        for (r, call, check) in cases {
            let e = error_from_response(&r, call);
            assert!(check(&e), "{} {call:?} -> {e:?}", r.status);
            assert!(!e.to_string().contains("SECRET-CANARY"));
            assert!(!format!("{e:?}").contains("SECRET-CANARY"));
        }
    }

    /// Rule 10: only Webex's JSON naming the grant locks a subject out. A proxy's HTML 400,
    /// an empty 400, a 401 page from a firewall, or JSON that names nothing: retryable, and no
    /// `invalid_grant` is claimed that was never sent.
    #[test]
    fn only_a_json_answer_naming_the_grant_requires_reauthorization() {
        let refresh = TokenCall::Refresh(TokenSubject::Org(OrgId::from_static("o1")));
        let fetch = TokenCall::ServiceAppFetch { org_id: OrgId::from_static("o1") };
        let html = "<html><body>400 Bad Request</body></html>";
        for (status, body, call) in [
            (400, html, &refresh),
            (400, "", &refresh),
            (401, html, &refresh),
            (400, r#"{"message":"Bad request.","trackingId":"T"}"#, &refresh),
            (400, r#"{"unrelated":true}"#, &refresh),
            (403, html, &fetch),
            (404, "", &fetch),
            (400, "[1,2", &fetch),
        ] {
            let e = error_from_response(&resp(status, &[("Content-Type", "text/html")], body), call);
            assert!(matches!(e, Error::UnrecognizedAnswer(_)), "{status} {body:?}: {e:?}");
            assert!(e.is_retryable(), "{e:?}");
            assert_eq!(e.api_failure().and_then(|f| f.oauth_error), None, "{e:?}");
        }
        for body in [
            r#"{"error":"invalid_grant"}"#,
            r#"{"message":"The refresh token is invalid.","trackingId":"T"}"#,
            r#"{"message":"x","errors":[{"description":"refresh_token expired"}]}"#,
            r#"{"message":"invalid_grant"}"#,
        ] {
            let e = error_from_response(&resp(400, &[], body), &refresh);
            assert!(
                matches!(&e, Error::ReauthorizationRequired { failure, .. } if failure.oauth_error == Some("invalid_grant")),
                "{body}: {e:?}"
            );
        }
    }

    #[test]
    fn non_numeric_retry_after_falls_back_to_the_default_wait() {
        for value in ["rand(30),add(30)", "-5", "1.5", "", "soon"] {
            assert_eq!(parse_retry_after(Some(value)), None, "{value:?}");
        }
        assert_eq!(parse_retry_after(Some(" 30 ")), Some(std::time::Duration::from_secs(30)));
    }

    #[test]
    fn rate_limit_with_html_body_and_retry_after() {
        let r =
            resp(429, &[("retry-after", "3600"), ("Content-Type", "text/html")], "<html>slow down</html>");
        let e = error_from_response(&r, &TokenCall::CodeExchange);
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(3600)));
        let no_header = error_from_response(&resp(429, &[], ""), &TokenCall::CodeExchange);
        assert!(matches!(no_header, Error::RateLimited { retry_after: None, .. }));
        let date = error_from_response(
            &resp(423, &[("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")], ""),
            &TokenCall::CodeExchange,
        );
        assert!(matches!(date, Error::RateLimited { retry_after: None, .. }));
    }

    #[test]
    fn tracking_id_from_header_or_body() {
        let h = error_from_response(
            &resp(500, &[("TrackingId", "ROUTER_H")], r#"{"trackingId":"ROUTER_B"}"#),
            &TokenCall::CodeExchange,
        );
        assert_eq!(h.tracking_id(), Some("ROUTER_H"));
        let b =
            error_from_response(&resp(500, &[], r#"{"trackingId":"ROUTER_B"}"#), &TokenCall::CodeExchange);
        assert_eq!(b.tracking_id(), Some("ROUTER_B"));
        assert!(b.to_string().contains("ROUTER_B"));
    }
}
