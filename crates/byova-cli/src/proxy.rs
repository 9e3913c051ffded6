//! `byova serve --proxy-listen`: an injecting proxy, so an app calls Webex's API without ever
//! holding a token. The app sends its request to `http://127.0.0.1:PORT/v1/…` as it would to
//! `https://webexapis.com/v1/…`, with the daemon's shared secret as its bearer and the customer
//! org in `X-Byova-Org` (the Integration's token without it); the proxy swaps the secret for the
//! key's access token, drops the header, and sends the request to the API origin (TLS), through
//! [`BearerAuth`]: a 401 invalidates the token and is retried once with a fresh one, with the
//! same single flight, refresh floor and cool-down as the library's middleware.
//!
//! Bodies stream both ways. A request body of known length up to [`REPLAYABLE_BODY_BYTES`] is
//! read first, so the request can be sent again after a 401; a larger or chunked one streams
//! to Webex as it arrives, and its 401 is answered as it is (the token is invalidated, so the
//! app's own retry gets a fresh one). Only the standard methods pass (no `TRACE`, which would
//! echo the token). Links in Webex's answers (`Link` for the next page, `Location`) that point
//! at the API origin are rewritten to point at the proxy, so an app that follows them stays
//! behind it. Nothing waits forever: an exchange in which neither the app's body nor Webex's
//! answer moves for the API timeout is ended, and so is a body that stalls that long.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use byova_async::core::SharedSecret;
use byova_async::core::engine::{TRACKING_ID_HEADER, new_tracking_id};
use byova_async::{BearerAuth, Byova, OrgId};
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};

use crate::token::{Class, RequestStats, refuse};
use crate::{Failure, failure};

/// The header naming the customer org whose token a request carries.
pub(crate) const ORG_HEADER: &str = "x-byova-org";

/// The largest request body read whole before it is sent, so that a 401 can be retried with a
/// fresh token (1 MiB: every Webex API call but a file upload).
pub(crate) const REPLAYABLE_BODY_BYTES: u64 = 1 << 20;

/// How long a kept-alive connection may sit idle between requests, and how long a request's
/// head may take to arrive.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Connections open at once (each holds a second descriptor, to Webex).
pub(crate) const MAX_CONNECTIONS: usize = 128;

/// The methods forwarded: the ones Webex's API uses. `TRACE` would echo the token back.
const METHODS: [hyper::Method; 7] = [
    hyper::Method::GET,
    hyper::Method::HEAD,
    hyper::Method::POST,
    hyper::Method::PUT,
    hyper::Method::PATCH,
    hyper::Method::DELETE,
    hyper::Method::OPTIONS,
];

/// The proxy's latency buckets in `/metrics` (seconds, up to Webex's answer head).
const PROXY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Headers that belong to one hop (RFC 9110 §7.6.1), never forwarded either way.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The body of a proxy answer: the proxy's own JSON, or Webex's, streamed.
type ProxyBody = Either<Full<Bytes>, IdleBody<reqwest::Body>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// When the app's side of an exchange last moved, and whether its body failed.
struct Progress {
    start: Instant,
    last_millis: AtomicU64,
    app_body_failed: AtomicBool,
}

impl Progress {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_millis: AtomicU64::new(0),
            app_body_failed: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        let millis = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_millis.store(millis, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_millis.load(Ordering::Relaxed))
    }
}

/// A body stalled for longer than its idle limit.
#[derive(Debug)]
struct Stalled(Duration);

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no data for {} s", self.0.as_secs())
    }
}

impl std::error::Error for Stalled {}

/// A body that fails once its source has had nothing for `idle` while it was being read (time
/// the reader spends not reading does not count), and reports its progress.
pub(crate) struct IdleBody<B> {
    inner: B,
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    progress: Option<Arc<Progress>>,
}

impl<B> IdleBody<B> {
    fn new(inner: B, idle: Duration, progress: Option<Arc<Progress>>) -> Self {
        Self { inner, idle, timer: None, progress }
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                if let Some(progress) = &this.progress {
                    match &frame {
                        Some(Err(_)) => progress.app_body_failed.store(true, Ordering::Relaxed),
                        _ => progress.touch(),
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if let Some(progress) = &this.progress {
                    progress.app_body_failed.store(true, Ordering::Relaxed);
                }
                Poll::Ready(Some(Err(Box::new(Stalled(idle)))))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

/// The proxy's figures for `/metrics`: its answers (`ok` is forwarded, whatever Webex said)
/// and latency up to Webex's response head, and Webex's answers by status class.
pub(crate) struct ProxyStats {
    requests: RequestStats,
    upstream: [AtomicU64; 5],
}

impl Default for ProxyStats {
    fn default() -> Self {
        Self {
            requests: RequestStats::new("proxy", "the injecting proxy", PROXY_BUCKETS),
            upstream: Default::default(),
        }
    }
}

impl ProxyStats {
    fn forwarded(&self, status: StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.upstream[class].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text of these figures.
    pub(crate) fn render(&self) -> String {
        let mut text = self.requests.render();
        text.push_str(
            "# HELP byova_proxy_upstream_responses_total Webex's answers to proxied requests, by status class \
             (after a 401's one retry).\n# TYPE byova_proxy_upstream_responses_total counter\n",
        );
        for (i, count) in self.upstream.iter().enumerate() {
            text.push_str(&format!(
                "byova_proxy_upstream_responses_total{{status=\"{}xx\"}} {}\n",
                i + 1,
                count.load(Ordering::Relaxed)
            ));
        }
        text
    }
}

/// The injecting proxy: where requests go, and the client that sends them.
pub(crate) struct Proxy {
    byova: Arc<Byova>,
    client: reqwest::Client,
    /// `scheme://authority` of the configured API base URL.
    origin: String,
    /// `http://IP:PORT`: where the proxy listens, for links in Webex's answers.
    local: String,
    /// How long an exchange, or a body, may stand still (the API timeout).
    idle: Duration,
    secret: SharedSecret,
    stats: Arc<ProxyStats>,
}

/// Why the proxy answers a request itself.
struct Refusal {
    class: Class,
    message: String,
    retry_after: Option<Duration>,
}

impl Refusal {
    fn new(class: Class, message: impl Into<String>) -> Self {
        Self { class, message: message.into(), retry_after: None }
    }
}

impl Proxy {
    /// A proxy listening on `local` to `byova`'s API origin that asks its clients for
    /// `secret`.
    pub(crate) fn new(
        byova: Arc<Byova>,
        local: SocketAddr,
        secret: SharedSecret,
        stats: Arc<ProxyStats>,
    ) -> Result<Self, Failure> {
        let config = byova.integration().config();
        let origin = origin_of(&config.base_url)
            .ok_or_else(|| failure(3, format!("the API base URL {:?} has no origin", config.base_url)))?;
        let idle = config.timeout;
        let client = reqwest::Client::builder()
            .connect_timeout(idle.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(32)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("byova-proxy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| failure(3, format!("cannot build the proxy's HTTP client: {e}")))?;
        Ok(Self { byova, client, origin, local: format!("http://{local}"), idle, secret, stats })
    }

    /// Serves one connection: kept alive between requests (idle for [`IDLE_TIMEOUT`] at
    /// most), closed after the request in flight once `stop` resolves.
    pub(crate) async fn connection(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let io = hyper_util::rt::TokioIo::new(stream);
        let service = hyper::service::service_fn(move |req| self.clone().forward(req));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(IDLE_TIMEOUT)
            .keep_alive(true)
            .serve_connection(io, service);
        tokio::pin!(conn, stop);
        tokio::select! {
            _ = conn.as_mut() => return,
            () = &mut stop => {}
        }
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }

    async fn forward(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let (class, resp) = match self.send(req).await {
            Ok(resp) => {
                self.stats.forwarded(resp.status());
                (Class::Ok, resp.map(Either::Right))
            }
            Err(Refusal { class, message, retry_after }) => {
                let mut resp = refuse(class, message, retry_after);
                if class == Class::Unauthorized {
                    // Whoever lacks the secret keeps no connection open.
                    resp.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
                }
                if class == Class::MethodNotAllowed {
                    let allow = HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");
                    resp.headers_mut().insert(hyper::header::ALLOW, allow);
                }
                (class, resp.map(Either::Left))
            }
        };
        self.stats.requests.record(class, started.elapsed());
        Ok(resp)
    }

    async fn send(&self, req: Request<Incoming>) -> Result<Response<IdleBody<reqwest::Body>>, Refusal> {
        let (parts, body) = req.into_parts();
        if !crate::serve::authorized(&parts.headers, &self.secret) {
            return Err(Refusal::new(
                Class::Unauthorized,
                "the proxy needs the daemon's shared secret as the bearer token; it puts the real one in its place",
            ));
        }
        if !METHODS.contains(&parts.method) {
            return Err(Refusal::new(
                Class::MethodNotAllowed,
                format!("{}: the proxy forwards the API's methods only", parts.method),
            ));
        }
        let target = match parts.uri.path_and_query() {
            Some(path) if parts.uri.authority().is_none() && path.as_str().starts_with('/') => {
                format!("{}{}", self.origin, path.as_str())
            }
            _ => {
                return Err(Refusal::new(
                    Class::BadRequest,
                    "send requests to the proxy as to the API (GET /v1/people/me), not as to a forward proxy",
                ));
            }
        };
        let auth = match subject(&parts.headers)? {
            Some(org) => BearerAuth::org(self.byova.clone(), org),
            None => BearerAuth::integration(self.byova.clone()),
        };
        let progress = Arc::new(Progress::new());
        let body = match body.size_hint().exact() {
            Some(len) if len <= REPLAYABLE_BODY_BYTES => {
                // Read whole, so BearerAuth can send it again after a 401 (REPLAYABLE_BODY_BYTES
                // fits any usize).
                let read = Limited::new(IdleBody::new(body, self.idle, None), REPLAYABLE_BODY_BYTES as usize);
                match read.collect().await {
                    Ok(body) => reqwest::Body::from(body.to_bytes()),
                    Err(e) => {
                        return Err(Refusal::new(
                            Class::BadRequest,
                            format!("the request body could not be read: {e}"),
                        ));
                    }
                }
            }
            _ => reqwest::Body::wrap(IdleBody::new(body, self.idle, Some(progress.clone()))),
        };
        progress.touch();
        let mut headers = forwarded(&parts.headers);
        for name in [hyper::header::HOST, hyper::header::AUTHORIZATION, hyper::header::CONTENT_LENGTH] {
            headers.remove(name);
        }
        headers.remove(ORG_HEADER);
        // hyper's client does not wait for a 100 Continue: the body follows the head at once.
        headers.remove(hyper::header::EXPECT);
        if !headers.contains_key(TRACKING_ID_HEADER)
            && let Ok(value) = HeaderValue::from_str(&new_tracking_id())
        {
            headers.insert(TRACKING_ID_HEADER, value);
        }
        let client = reqwest_middleware::ClientBuilder::new(self.client.clone()).with(auth).build();
        let sent = client.request(parts.method, target).headers(headers).body(body).send();
        tokio::pin!(sent);
        // Ended only when neither the app's body nor Webex's answer has moved for `idle`.
        let sent = loop {
            tokio::select! {
                sent = &mut sent => break sent,
                () = tokio::time::sleep_until((progress.last() + self.idle).into()) => {
                    if progress.last() + self.idle <= Instant::now() {
                        return Err(Refusal::new(
                            Class::Webex,
                            format!("Webex did not answer within {} s", self.idle.as_secs()),
                        ));
                    }
                }
            }
        };
        let response = sent.map_err(|e| {
            if progress.app_body_failed.load(Ordering::Relaxed) {
                Refusal::new(Class::BadRequest, "the request body was cut off, or stalled, on its way in")
            } else {
                refusal_of(e)
            }
        })?;
        let response: Response<reqwest::Body> = response.into();
        let (mut head, body) = response.into_parts();
        head.headers = forwarded(&head.headers);
        self.point_links_here(&mut head.headers);
        Ok(Response::from_parts(head, IdleBody::new(body, self.idle, None)))
    }

    /// `Link` and `Location` values that point at the API origin, pointed at the proxy.
    fn point_links_here(&self, headers: &mut HeaderMap) {
        for name in [hyper::header::LINK, hyper::header::LOCATION] {
            let values: Vec<HeaderValue> = headers
                .get_all(&name)
                .iter()
                .map(|value| {
                    value
                        .to_str()
                        .ok()
                        .and_then(|text| rewrite_origin(text, &self.origin, &self.local))
                        .and_then(|text| HeaderValue::from_str(&text).ok())
                        .unwrap_or_else(|| value.clone())
                })
                .collect();
            headers.remove(&name);
            for value in values {
                headers.append(&name, value);
            }
        }
    }
}

/// `text` with every URL on `origin` (`origin/…`, `origin?…` or `origin` alone) on `local`
/// instead; `None` when it names none.
fn rewrite_origin(text: &str, origin: &str, local: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let origin = origin.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    let mut found = false;
    let mut from = 0;
    while let Some(at) = lower[from..].find(&origin).map(|i| i + from) {
        let end = at + origin.len();
        let bounded = matches!(
            lower.as_bytes().get(end),
            None | Some(b'/' | b'?' | b'>' | b'#' | b'"' | b' ' | b';' | b',')
        );
        if bounded {
            out.push_str(&text[rest..at]);
            out.push_str(local);
            rest = end;
            found = true;
        }
        from = end;
    }
    out.push_str(&text[rest..]);
    found.then_some(out)
}

/// The org `X-Byova-Org` names, `None` without the header (the Integration).
fn subject(headers: &HeaderMap) -> Result<Option<OrgId>, Refusal> {
    let mut values = headers.get_all(ORG_HEADER).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(Refusal::new(Class::BadRequest, "one X-Byova-Org header at most"));
    }
    let value = value.to_str().map_err(|_| Refusal::new(Class::BadRequest, "X-Byova-Org is not text"))?;
    OrgId::new(value.trim())
        .map(Some)
        .map_err(|e| Refusal::new(Class::BadRequest, format!("X-Byova-Org: {e}")))
}

/// `headers` without the hop-by-hop ones, nor those the `Connection` header names.
fn forwarded(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let mut kept = headers.clone();
    for name in HOP_BY_HOP {
        kept.remove(name);
    }
    for name in named {
        kept.remove(name);
    }
    kept
}

/// A failure to get a token or to reach Webex, as the proxy's answer: a library error keeps
/// its class (an org not registered is 404, an exhausted budget 429 with `Retry-After`); a
/// transport error is 502, named without the URL (its query may carry anything).
fn refusal_of(error: reqwest_middleware::Error) -> Refusal {
    match error {
        reqwest_middleware::Error::Middleware(e) => match e.downcast_ref::<byova_async::Error>() {
            Some(e) => Refusal { class: Class::of(e), message: e.to_string(), retry_after: e.retry_after() },
            None => Refusal::new(Class::Webex, format!("the proxy could not send the request: {e}")),
        },
        reqwest_middleware::Error::Reqwest(e) => {
            let what = if e.is_timeout() {
                "Webex did not answer in time"
            } else if e.is_connect() {
                "cannot connect to Webex"
            } else if e.is_body() {
                "the request body was cut off on its way to Webex"
            } else {
                "the request to Webex failed"
            };
            Refusal::new(Class::Webex, format!("{what}: {}", e.without_url()))
        }
    }
}

/// `scheme://authority` of `url`.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().filter(|a| !a.is_empty())?;
    Some(format!("{scheme}://{authority}"))
}

/// The proxy's listener: a loopback address only (the app's secret and Webex's answers cross
/// it in clear), and only with the shared secret.
pub(crate) async fn bind(
    listen: &str,
    secret: Option<&SharedSecret>,
) -> Result<tokio::net::TcpListener, Failure> {
    let addr: SocketAddr = listen.parse().map_err(|_| {
        failure(3, format!("--proxy-listen {listen:?} is not an address like 127.0.0.1:8091"))
    })?;
    if secret.is_none() {
        return Err(failure(
            3,
            format!(
                "--proxy-listen {addr} lends every org's token to whoever connects: give --token-secret-file FILE \
                 (apps send Authorization: Bearer <its content>)"
            ),
        ));
    }
    if !addr.ip().is_loopback() {
        return Err(failure(
            3,
            format!(
                "--proxy-listen {addr} is not a loopback address: the proxy listens on 127.0.0.1 or [::1] only"
            ),
        ));
    }
    crate::serve::bind_flag(&addr.to_string(), "--proxy-listen").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_is_the_scheme_and_authority_of_the_base_url() {
        assert_eq!(origin_of("https://webexapis.com/v1").as_deref(), Some("https://webexapis.com"));
        assert_eq!(origin_of("http://127.0.0.1:8080/v1/").as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(origin_of("https://h:443?x").as_deref(), Some("https://h:443"));
        assert_eq!(origin_of("webexapis.com/v1"), None);
        assert_eq!(origin_of("https:///v1"), None);
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_stay_behind() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic abc"),
            ("content-type", "application/json"),
            ("trackingid", "T1"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        let kept = forwarded(&headers);
        let mut names: Vec<&str> = kept.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "trackingid"]);
    }

    #[test]
    fn the_org_header_names_one_org_or_is_refused() {
        let with = |values: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(ORG_HEADER, HeaderValue::from_static(v));
            }
            subject(&headers)
        };
        assert!(with(&[]).ok().is_some_and(|s| s.is_none()));
        let org = "63b02f90-9cc6-43b8-aa6d-cad425ac554c";
        assert_eq!(with(&["63b02f90-9cc6-43b8-aa6d-cad425ac554c"]).ok().flatten().unwrap().as_str(), org);
        for bad in [&["a", "b"][..], &[""], &["  "]] {
            assert_eq!(with(bad).err().map(|r| r.class), Some(Class::BadRequest), "{bad:?}");
        }
    }

    #[test]
    fn links_to_the_api_origin_point_at_the_proxy() {
        let (origin, local) = ("https://webexapis.com", "http://127.0.0.1:8091");
        assert_eq!(
            rewrite_origin(r#"<https://webexapis.com/v1/people?cursor=a>; rel="next""#, origin, local)
                .as_deref(),
            Some(r#"<http://127.0.0.1:8091/v1/people?cursor=a>; rel="next""#)
        );
        assert_eq!(
            rewrite_origin("HTTPS://WebexAPIs.com/v1/x", origin, local).as_deref(),
            Some("http://127.0.0.1:8091/v1/x")
        );
        assert_eq!(rewrite_origin("https://webexapis.com.evil.test/v1", origin, local), None);
        assert_eq!(rewrite_origin("https://other.test/v1", origin, local), None);
        assert_eq!(rewrite_origin("/v1/relative", origin, local), None);
    }

    #[test]
    fn webex_answers_are_counted_by_status_class() {
        let stats = ProxyStats::default();
        stats.forwarded(StatusCode::OK);
        stats.forwarded(StatusCode::UNAUTHORIZED);
        stats.forwarded(StatusCode::TOO_MANY_REQUESTS);
        let text = stats.render();
        assert!(text.contains("byova_proxy_upstream_responses_total{status=\"2xx\"} 1"), "{text}");
        assert!(text.contains("byova_proxy_upstream_responses_total{status=\"4xx\"} 2"), "{text}");
        assert!(text.contains("byova_proxy_requests_total{answer=\"ok\"} 0"), "{text}");
    }
}
