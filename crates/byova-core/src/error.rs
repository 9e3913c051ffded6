//! The error type of byova-core, shared by both flavours.
//!
//! Variants map the exceptions of the Python SDK `webex_byova` (`AuthenticationError`, `NotFoundError`,
//! `ValidationError`, `RateLimitError`, `OAuthRedirectError`, `OAuthRedirectTimeout`,
//! `OrgNotRegisteredError`) and add what it lacks. Messages never contain a secret or a
//! response body: a Webex failure carries its status, its `trackingId` and, when it is one of
//! the standard OAuth codes, the OAuth `error` code.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What Webex said when a request failed: enough to act on and to quote to Webex support.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApiFailure {
    /// The HTTP status code.
    pub status: u16,
    /// The `trackingId` from the response header or body, when present.
    pub tracking_id: Option<String>,
    /// The OAuth `error` code (`invalid_grant`, `invalid_client`, …) when the body carried one
    /// of the codes RFC 6749 defines. Free text from the body is never kept.
    pub oauth_error: Option<&'static str>,
}

impl ApiFailure {
    /// A failure with just a status code.
    pub fn new(status: u16) -> Self {
        Self { status, tracking_id: None, oauth_error: None }
    }
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if let Some(code) = self.oauth_error {
            write!(f, ", OAuth error {code}")?;
        }
        if let Some(id) = &self.tracking_id {
            write!(f, ", trackingId {id}")?;
        }
        Ok(())
    }
}

/// Which token a re-authorization is needed for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenSubject {
    /// The provider's Integration.
    Integration,
    /// A customer organization's Service App registration.
    Org(crate::key::OrgId),
}

impl fmt::Display for TokenSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSubject::Integration => f.write_str("the Integration"),
            TokenSubject::Org(org) => write!(f, "org {org}"),
        }
    }
}

/// Everything that can go wrong in byova.
///
/// `Clone`, so every caller waiting on one refresh gets its outcome, failures included.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// 401 or 403: the credentials or bearer token were refused (the Python SDK\'s `AuthenticationError`).
    #[error(
        "Webex refused the credentials ({0}); check the client id and secret, and that the Integration is authorized"
    )]
    Authentication(ApiFailure),
    /// 403 from the Service App token endpoint: the org's admin has not authorized the app.
    #[error(
        "the Service App is not authorized for org {org_id} ({failure}); a Full Admin must authorize it in Control Hub"
    )]
    ServiceAppNotAuthorized {
        /// The organization asked for.
        org_id: crate::key::OrgId,
        /// What Webex answered.
        failure: ApiFailure,
    },
    /// 404 (the Python SDK\'s `NotFoundError`).
    #[error("Webex answered not found ({0})")]
    NotFound(ApiFailure),
    /// 400, 409 or 415 (the Python SDK\'s `ValidationError`).
    #[error("Webex rejected the request as invalid ({0})")]
    Validation(ApiFailure),
    /// 429 or 423 (the Python SDK\'s `RateLimitError`).
    #[error("rate limited by Webex ({failure}){}", retry_after_text(.retry_after))]
    RateLimited {
        /// The `Retry-After` delay, when the response carried a valid one.
        retry_after: Option<Duration>,
        /// What Webex answered.
        failure: ApiFailure,
    },
    /// A 5xx answer.
    #[error("Webex server error ({0}); try again later")]
    Server(ApiFailure),
    /// A status code with no documented meaning for this endpoint.
    #[error("unexpected answer from Webex ({0})")]
    UnexpectedStatus(ApiFailure),
    /// A token call was refused with an answer that cannot be taken as Webex's verdict: a 4xx
    /// without a JSON body (a proxy's, a firewall's or a gateway's page, an empty body), or a
    /// 400 whose JSON names no error byova knows. Nothing is concluded from it: the stored
    /// tokens are kept (and served while valid), and the call is retried later.
    #[error(
        "an answer that does not read as Webex's ({0}): not a JSON error from the token endpoint \
         (a proxy or gateway in between?); the stored tokens are kept, try again later"
    )]
    UnrecognizedAnswer(ApiFailure),
    /// The stored refresh token was rejected (`invalid_grant`): a person must authorize again.
    #[error("re-authorization required for {subject}: Webex rejected the refresh token ({failure})")]
    ReauthorizationRequired {
        /// Whose tokens need re-authorization.
        subject: TokenSubject,
        /// What Webex answered.
        failure: ApiFailure,
    },
    /// The access token expired and its tokens came without a refresh token: a person must
    /// authorize again.
    #[error(
        "re-authorization required for {subject}: its access token expired and no refresh token came with it"
    )]
    NoRefreshToken {
        /// Whose tokens.
        subject: TokenSubject,
    },
    /// A 2xx answer whose body could not be understood.
    #[error("Webex sent a response byova cannot use: {what} (HTTP {status})")]
    InvalidResponse {
        /// What was wrong, without any of the body's content.
        what: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The authorization redirect carried an error, e.g. the user denied access
    /// (the Python SDK\'s `OAuthRedirectError`).
    #[error("authorization failed: {error}")]
    OAuthRedirect {
        /// The OAuth error code (`access_denied`, `invalid_scope`, …) or a description of the
        /// problem found in the redirect.
        error: String,
    },
    /// No redirect arrived in time (the Python SDK\'s `OAuthRedirectTimeout`).
    #[error("no OAuth redirect arrived within {0:?}")]
    OAuthRedirectTimeout(Duration),
    /// No tokens are stored for the org (the Python SDK\'s `OrgNotRegisteredError`).
    #[error(
        "org {org_id} is not registered: handle the serviceApp authorized webhook or call save_registration"
    )]
    OrgNotRegistered {
        /// The organization asked for.
        org_id: crate::key::OrgId,
    },
    /// No Integration tokens are stored.
    #[error("the Integration is not authorized yet: run the authorization flow (`byova authorize`) first")]
    NotAuthorized,
    /// The token store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The request could not be sent or no response arrived.
    #[error("could not reach Webex: {message}")]
    Transport {
        /// What happened, with no URL query string or header in it.
        message: String,
        /// Whether the request may have reached the server (false: connecting failed).
        maybe_sent: bool,
    },
    /// A setting is missing or wrong.
    #[error("configuration error: {0}")]
    Configuration(String),
    /// A listening socket (the OAuth redirect listener, the daemon) could not be opened.
    #[error("cannot listen on {address}: {source}; free the port or choose another address")]
    Listen {
        /// The address asked for.
        address: String,
        /// Why the operating system refused.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Work byova started did not finish: its task was cancelled or panicked (a runtime
    /// shutting down, a storage backend that panicked), or an internal invariant broke.
    #[error("internal error: {0}")]
    Internal(String),
    /// An argument was not acceptable (an org id that is not base64, say).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// `exchange_code_for_state` was given a `state` with no pending authorization: no
    /// authorization URL sharing this store was built with it, its code was already exchanged,
    /// or it is older than ten minutes. Start the authorization again.
    #[error(
        "no pending authorization for this state (never issued here, already used, or older than 10 minutes); start the authorization again"
    )]
    UnknownAuthorizationState,
    /// A webhook delivery's `X-Spark-Signature` was missing, malformed or wrong.
    #[error("webhook rejected: {0}")]
    WebhookSignature(#[from] SignatureError),
}

fn retry_after_text(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!("; retry after {}s", d.as_secs()),
        None => String::new(),
    }
}

impl Error {
    /// The Webex failure behind this error, when it came from a response.
    pub fn api_failure(&self) -> Option<&ApiFailure> {
        match self {
            Error::Authentication(f)
            | Error::NotFound(f)
            | Error::Validation(f)
            | Error::Server(f)
            | Error::UnexpectedStatus(f)
            | Error::UnrecognizedAnswer(f) => Some(f),
            Error::ServiceAppNotAuthorized { failure, .. }
            | Error::RateLimited { failure, .. }
            | Error::ReauthorizationRequired { failure, .. } => Some(failure),
            _ => None,
        }
    }

    /// The HTTP status code, when the error came from a response.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::InvalidResponse { status, .. } => Some(*status),
            other => other.api_failure().map(|f| f.status),
        }
    }

    /// The response's `trackingId`, when present.
    pub fn tracking_id(&self) -> Option<&str> {
        self.api_failure().and_then(|f| f.tracking_id.as_deref())
    }

    /// Whether trying the same request again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::RateLimited { .. }
            | Error::Server(_)
            | Error::UnrecognizedAnswer(_)
            | Error::Transport { .. } => true,
            Error::Storage(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// The server-requested delay before retrying, for rate-limit errors.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl Error {
    /// A listen failure for `address`.
    pub fn listen(address: impl Into<String>, source: std::io::Error) -> Self {
        Error::Listen { address: address.into(), source: Arc::new(source) }
    }
}

/// What kind of storage failure happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StorageErrorKind {
    /// The backend could not be reached or timed out. Retry later; nothing was lost.
    Unavailable,
    /// A versioned write lost to another writer. Re-read, then decide again.
    Conflict,
    /// A stored record does not parse. It is left in place for a person to inspect.
    Corrupt,
    /// Anything else (permissions, bad configuration, a bad key).
    Other,
    /// The store does not offer this (a default hook of a backend that keeps no shared
    /// state): the caller falls back to what one process can do.
    Unsupported,
    /// A record sealed at rest cannot be opened: its storage key is not configured (or none
    /// is), or the sealed value was altered. The message names the key id.
    Sealing,
}

impl fmt::Display for StorageErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageErrorKind::Unavailable => "unavailable",
            StorageErrorKind::Conflict => "conflict",
            StorageErrorKind::Corrupt => "corrupt",
            StorageErrorKind::Other => "other",
            StorageErrorKind::Sealing => "sealing",
            StorageErrorKind::Unsupported => "unsupported",
        })
    }
}

/// A token store failure. Messages name the key and the backend, never a token.
#[derive(Clone, Debug, thiserror::Error)]
#[error("token storage error ({kind}): {message}")]
pub struct StorageError {
    kind: StorageErrorKind,
    message: String,
    #[source]
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl StorageError {
    /// A new error of `kind`.
    pub fn new(kind: StorageErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    /// The backend is unreachable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StorageErrorKind::Unavailable, message)
    }

    /// A versioned write lost: the record for `key` changed since it was read.
    pub fn conflict(key: impl fmt::Display) -> Self {
        Self::new(StorageErrorKind::Conflict, format!("the record for {key} changed since it was read"))
    }

    /// A record does not parse.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(StorageErrorKind::Corrupt, message)
    }

    /// Anything else.
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(StorageErrorKind::Other, message)
    }

    /// Attaches the underlying error (it must not carry a secret in its message).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The kind.
    pub fn kind(&self) -> StorageErrorKind {
        self.kind
    }

    /// Whether the same operation may succeed later (unavailable) or after a re-read (conflict).
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, StorageErrorKind::Unavailable | StorageErrorKind::Conflict)
    }
}

/// Why a webhook delivery's signature was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// No `X-Spark-Signature` header (or an empty one).
    #[error("the X-Spark-Signature header is missing")]
    Missing,
    /// The header is not 40 hex digits.
    #[error("the X-Spark-Signature header is not a hex HMAC-SHA1")]
    Malformed,
    /// The signature does not match the body under the configured secret.
    #[error("the X-Spark-Signature does not match the body")]
    Mismatch,
    /// The body is larger than [`MAX_WEBHOOK_BODY_BYTES`](crate::webhook::MAX_WEBHOOK_BODY_BYTES).
    #[error("the delivery is larger than 64 KiB")]
    TooLarge,
}

/// `Result` with byova-core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::OrgId;

    #[test]
    fn messages_name_status_tracking_id_and_oauth_code() {
        let failure = ApiFailure {
            status: 400,
            tracking_id: Some("ROUTER_1".into()),
            oauth_error: Some("invalid_grant"),
        };
        let e =
            Error::ReauthorizationRequired { subject: TokenSubject::Org(OrgId::from_static("o-1")), failure };
        assert_eq!(
            e.to_string(),
            "re-authorization required for org o-1: Webex rejected the refresh token (HTTP 400, OAuth error invalid_grant, trackingId ROUTER_1)"
        );
        assert_eq!(e.status(), Some(400));
        assert_eq!(e.tracking_id(), Some("ROUTER_1"));
        assert!(!e.is_retryable());
    }

    #[test]
    fn retryable_kinds() {
        let rl =
            Error::RateLimited { retry_after: Some(Duration::from_secs(3)), failure: ApiFailure::new(429) };
        assert!(rl.is_retryable());
        assert_eq!(rl.retry_after(), Some(Duration::from_secs(3)));
        assert!(rl.to_string().ends_with("retry after 3s"));
        assert!(Error::Server(ApiFailure::new(503)).is_retryable());
        assert!(Error::Transport { message: "reset".into(), maybe_sent: true }.is_retryable());
        assert!(!Error::Authentication(ApiFailure::new(401)).is_retryable());
        assert!(!Error::Validation(ApiFailure::new(400)).is_retryable());
    }
}
