//! The error type of byova-core, shared by both flavours.
//!
//! Variants map the seed's exceptions (`AuthenticationError`, `NotFoundError`,
//! `ValidationError`, `RateLimitError`, `OAuthRedirectError`, `OAuthRedirectTimeout`,
//! `OrgNotRegisteredError`) and add what the seed lacks. Messages never contain a secret or a
//! response body: a Webex failure carries its status, its `trackingId` and, when it is one of
//! the standard OAuth codes, the OAuth `error` code.

use std::fmt;
use std::time::Duration;

use crate::storage::StorageError;

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
    Org(String),
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
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// 401 or 403: the credentials or bearer token were refused (seed: `AuthenticationError`).
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
        org_id: String,
        /// What Webex answered.
        failure: ApiFailure,
    },
    /// 404 (seed: `NotFoundError`).
    #[error("Webex answered not found ({0})")]
    NotFound(ApiFailure),
    /// 400, 409 or 415 (seed: `ValidationError`).
    #[error("Webex rejected the request as invalid ({0})")]
    Validation(ApiFailure),
    /// 429 or 423 (seed: `RateLimitError`).
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
    /// The stored refresh token was rejected (`invalid_grant`): a person must authorize again.
    #[error("re-authorization required for {subject}: Webex rejected the refresh token ({failure})")]
    ReauthorizationRequired {
        /// Whose tokens need re-authorization.
        subject: TokenSubject,
        /// What Webex answered.
        failure: ApiFailure,
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
    /// (seed: `OAuthRedirectError`).
    #[error("authorization failed: {error}")]
    OAuthRedirect {
        /// The OAuth error code (`access_denied`, `invalid_scope`, …) or a description of the
        /// problem found in the redirect.
        error: String,
    },
    /// No redirect arrived in time (seed: `OAuthRedirectTimeout`).
    #[error("no OAuth redirect arrived within {0:?}")]
    OAuthRedirectTimeout(Duration),
    /// No tokens are stored for the org (seed: `OrgNotRegisteredError`).
    #[error(
        "org {org_id} is not registered: handle the serviceApp authorized webhook or call save_registration"
    )]
    OrgNotRegistered {
        /// The organization asked for.
        org_id: String,
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
    /// An argument was not acceptable (an org id that is not base64, say).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A webhook delivery's `X-Spark-Signature` was missing, malformed or wrong.
    #[error("webhook rejected: {0}")]
    WebhookSignature(#[from] crate::webhook::SignatureError),
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
            | Error::UnexpectedStatus(f) => Some(f),
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
            Error::RateLimited { .. } | Error::Server(_) | Error::Transport { .. } => true,
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

/// `Result` with byova-core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_status_tracking_id_and_oauth_code() {
        let failure = ApiFailure {
            status: 400,
            tracking_id: Some("ROUTER_1".into()),
            oauth_error: Some("invalid_grant"),
        };
        let e = Error::ReauthorizationRequired { subject: TokenSubject::Org("o-1".into()), failure };
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
