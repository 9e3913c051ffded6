//! Requests as values and responses as inputs: the sans-I/O boundary.
//!
//! Core builds an [`HttpRequest`]; a flavour sends it and hands the [`HttpResponse`] back to a
//! core parser. Neither type does any I/O. `Debug` never shows a secret header or the body.

use zeroize::Zeroizing;

/// An HTTP method byova uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// Responses larger than this are cut off and reported as transport errors by the drivers.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// The header every request carries so Webex support can find it: `TrackingID`.
pub const TRACKING_ID_HEADER: &str = "TrackingID";

/// A fresh value for [`TRACKING_ID_HEADER`]: `byova_<32 hex>`, correlating our logs with
/// Webex's.
pub fn new_tracking_id() -> String {
    let r = u128::from(crate::secret::random_u64()) | (u128::from(crate::secret::random_u64()) << 64);
    format!("byova_{r:032x}")
}

/// May a request be sent again after a failure?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryClass {
    /// Sending it twice does no harm (refresh, Service App fetch, reads, deletes).
    Idempotent,
    /// Must not be repeated once the server may have seen it (an authorization-code exchange,
    /// since a code is single use; creating a webhook). Retried only when the server
    /// certainly did not process it: a 429, or a connection that never opened.
    OnlyIfNotProcessed,
}

/// A header value; secret ones (`Authorization`) are zeroized and never printed.
#[derive(Clone)]
pub enum HeaderValue {
    /// A value that may be logged.
    Plain(String),
    /// A value that must not be logged.
    Secret(Zeroizing<String>),
}

impl HeaderValue {
    /// The value to put on the wire.
    pub fn expose(&self) -> &str {
        match self {
            HeaderValue::Plain(v) => v,
            HeaderValue::Secret(v) => v,
        }
    }
}

impl std::fmt::Debug for HeaderValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderValue::Plain(v) => v.fmt(f),
            HeaderValue::Secret(_) => f.write_str("[redacted]"),
        }
    }
}

/// A request core wants sent.
#[derive(Clone)]
pub struct HttpRequest {
    /// The method.
    pub method: Method,
    /// The absolute URL.
    pub url: String,
    /// Headers, in order.
    pub headers: Vec<(&'static str, HeaderValue)>,
    /// The body; zeroized on drop since it can hold client secrets or codes.
    pub body: Zeroizing<Vec<u8>>,
    /// Whether the flavour may retry it.
    pub retry: RetryClass,
}

impl HttpRequest {
    /// A request with no headers and an empty body. Endpoint requests come from core's
    /// builders; this is for tools and tests that need a free-form one.
    pub fn new(method: Method, url: String, retry: RetryClass) -> Self {
        Self { method, url, headers: Vec::new(), body: Zeroizing::new(Vec::new()), retry }
    }

    /// Adds a header that may be logged.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, HeaderValue::Plain(value.into())));
        self
    }

    pub(crate) fn secret_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, HeaderValue::Secret(Zeroizing::new(value))));
        self
    }

    /// A JSON API call with `token` as its bearer (kept out of `Debug`).
    pub(crate) fn api_bearer(self, token: &crate::secret::AccessToken) -> Self {
        self.header("Accept", "application/json")
            .secret_header("Authorization", format!("Bearer {}", token.expose_secret()))
    }

    pub(crate) fn form_body(self, pairs: &[(&str, &str)]) -> Self {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            ser.append_pair(k, v);
        }
        let body = Zeroizing::new(ser.finish().into_bytes());
        self.header("Content-Type", "application/x-www-form-urlencoded").with_body(body)
    }

    pub(crate) fn json_body(self, value: &serde_json::Value) -> Self {
        // Serializing a `Value` cannot fail.
        let body = Zeroizing::new(serde_json::to_vec(value).unwrap_or_default());
        self.header("Content-Type", "application/json").with_body(body)
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: Zeroizing<Vec<u8>>) -> Self {
        self.body = body;
        self
    }

    /// The first header with this name (case-insensitive).
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.expose())
    }

    /// The URL with its query string removed: what may appear in a log line.
    pub fn url_for_logs(&self) -> &str {
        self.url.split(['?', '#']).next().unwrap_or_default()
    }
}

impl std::fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("url", &self.url_for_logs())
            .field("headers", &self.headers)
            .field("body", &format_args!("[{} bytes]", self.body.len()))
            .field("retry", &self.retry)
            .finish()
    }
}

/// A response a flavour received, handed to a core parser.
#[derive(Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Headers as received (names in any case).
    pub headers: Vec<(String, String)>,
    /// The body; zeroized on drop since token responses hold secrets.
    pub body: Zeroizing<Vec<u8>>,
}

impl HttpResponse {
    /// Builds a response.
    pub fn new(status: u16, headers: Vec<(String, String)>, body: Vec<u8>) -> Self {
        Self { status, headers, body: Zeroizing::new(body) }
    }

    /// Builds a response from headers as an HTTP client hands them over (name, raw value);
    /// values that are not text are left out.
    pub fn from_wire<'a>(
        status: u16,
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        body: Vec<u8>,
    ) -> Self {
        let headers = headers
            .into_iter()
            .filter_map(|(n, v)| std::str::from_utf8(v).ok().map(|v| (n.to_owned(), v.to_owned())))
            .collect();
        Self::new(status, headers, body)
    }

    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

impl std::fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpResponse")
            .field("status", &self.status)
            .field("body", &format_args!("[{} bytes]", self.body.len()))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secret_headers_body_and_query() {
        let req = HttpRequest::new(
            Method::Post,
            "https://x.test/v1/a?code=SECRETCODE".into(),
            RetryClass::Idempotent,
        )
        .secret_header("Authorization", "Bearer SECRETTOKEN".into())
        .form_body(&[("client_secret", "SECRETVALUE")]);
        let printed = format!("{req:?}");
        for canary in ["SECRETCODE", "SECRETTOKEN", "SECRETVALUE"] {
            assert!(!printed.contains(canary), "{printed}");
        }
        assert!(printed.contains("https://x.test/v1/a"));
        assert!(printed.contains("[redacted]"));
        let resp = HttpResponse::new(200, vec![], b"{\"access_token\":\"SECRETTOKEN\"}".to_vec());
        assert!(!format!("{resp:?}").contains("SECRETTOKEN"));
    }
}
