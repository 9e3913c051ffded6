//! [`HttpClient`]: the flavour's shared ureq agent. It sends byova-core request values and
//! returns response values; it makes no OAuth decision.

use std::time::Duration;

use byova_core::{
    Error, Result,
    engine::{HttpRequest, HttpResponse, MAX_RESPONSE_BYTES, TRACKING_ID_HEADER, new_tracking_id},
};

/// The shared HTTP client: ureq with rustls and Mozilla's roots (webpki-roots), the configured
/// timeout, no redirect following, proxies from the environment, a `byova/<version>` user
/// agent, and a fresh `TrackingID` on every request.
#[doc = byova_core::__tls_provider_doc!()]
#[derive(Clone, Debug)]
pub struct HttpClient {
    agent: ureq::Agent,
}

impl HttpClient {
    /// A client whose requests time out after `timeout`, installing the aws-lc-rs crypto
    /// provider as the process default unless one is installed.
    ///
    /// # Errors
    /// Never today; the signature matches the async flavour's.
    pub fn new(timeout: Duration) -> Result<Self> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(10))))
            .max_redirects(0)
            .http_status_as_error(false)
            .user_agent(concat!("byova/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Self { agent })
    }

    /// Sends `request` and reads the whole response.
    ///
    /// # Errors
    /// [`Error::Transport`] when no complete response arrived; `maybe_sent` is false only when
    /// connecting failed.
    pub fn send(&self, request: &HttpRequest) -> Result<HttpResponse> {
        let mut builder = ureq::http::Request::builder()
            .method(request.method.as_str())
            .uri(&request.url)
            .header(TRACKING_ID_HEADER, new_tracking_id());
        for (name, value) in &request.headers {
            builder = builder.header(*name, value.expose());
        }
        let built = builder.body(request.body.to_vec()).map_err(|_| {
            Error::Configuration("the request could not be built (a bad URL or header)".into())
        })?;
        let response = self.agent.run(built).map_err(transport)?;
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        let body = response
            .into_body()
            .with_config()
            .limit(MAX_RESPONSE_BYTES as u64)
            .read_to_vec()
            .map_err(transport)?;
        Ok(HttpResponse::from_wire(status, headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())), body))
    }
}

/// A ureq error as a transport error, without the URL.
fn transport(e: ureq::Error) -> Error {
    let maybe_sent = !matches!(e, ureq::Error::ConnectionFailed | ureq::Error::HostNotFound);
    let message = match &e {
        ureq::Error::Timeout(_) => "timed out".to_owned(),
        ureq::Error::ConnectionFailed => "could not connect".to_owned(),
        ureq::Error::HostNotFound => "the host was not found".to_owned(),
        ureq::Error::BodyExceedsLimit(_) => "the response is larger than 1 MiB".to_owned(),
        ureq::Error::Io(io) => format!("the request failed: {io}"),
        _ => "the request failed".to_owned(),
    };
    Error::Transport { message, maybe_sent }
}

/// Building a client installs the provider whose first key exchange is post-quantum.
#[test]
fn handshakes_prefer_post_quantum_key_exchange() {
    HttpClient::new(Duration::from_secs(5)).unwrap();
    byova_testkit::tls::assert_prefers_post_quantum_key_exchange();
}
