//! [`HttpClient`]: the flavour's shared reqwest client. It sends byova-core request values and
//! returns response values; it makes no OAuth decision.

use std::time::Duration;

use byova_core::{
    Error, Result,
    engine::{HttpRequest, HttpResponse, MAX_RESPONSE_BYTES, TRACKING_ID_HEADER, new_tracking_id},
};

/// The shared HTTP client: rustls with the platform's trust store, the configured timeout, no
/// redirect following (a token endpoint that redirects is an error, not something to chase),
/// proxies from the environment, a `byova/<version>` user agent, and a fresh `TrackingID` on
/// every request.
#[doc = byova_core::__tls_provider_doc!()]
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: reqwest::Client,
}

impl HttpClient {
    /// A client whose requests time out after `timeout`, installing the aws-lc-rs crypto
    /// provider as the process default unless one is installed.
    ///
    /// # Errors
    /// [`Error::Configuration`] when the TLS stack cannot be set up.
    pub fn new(timeout: Duration) -> Result<Self> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("byova/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Configuration(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { client })
    }

    /// Sends `request` and reads the whole response.
    ///
    /// # Errors
    /// [`Error::Transport`] when no complete response arrived; `maybe_sent` is false only when
    /// connecting failed.
    pub async fn send(&self, request: &HttpRequest) -> Result<HttpResponse> {
        let method = reqwest::Method::from_bytes(request.method.as_str().as_bytes())
            .map_err(|_| Error::InvalidInput("an unsupported HTTP method".into()))?;
        let mut builder =
            self.client.request(method, &request.url).header(TRACKING_ID_HEADER, new_tracking_id());
        for (name, value) in &request.headers {
            builder = builder.header(*name, value.expose());
        }
        if !request.body.is_empty() {
            builder = builder.body(request.body.to_vec());
        }
        let mut response = builder.send().await.map_err(transport)?;
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(Error::Transport {
                    message: "the response is larger than 1 MiB".into(),
                    maybe_sent: true,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse::from_wire(status, headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())), body))
    }
}

/// A reqwest error as a transport error, without the URL (it may carry a query string).
fn transport(e: reqwest::Error) -> Error {
    let maybe_sent = !e.is_connect();
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the response was cut off"
    } else {
        "the request failed"
    };
    let mut message = kind.to_owned();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    Error::Transport { message, maybe_sent }
}

/// Building a client installs the provider whose first key exchange is post-quantum.
#[test]
fn handshakes_prefer_post_quantum_key_exchange() {
    HttpClient::new(Duration::from_secs(5)).unwrap();
    byova_testkit::tls::assert_prefers_post_quantum_key_exchange();
}
