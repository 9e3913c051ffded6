//! `byova serve`: a webhook receiver on the public address; `/healthz`, `/status` and
//! `/metrics` on the admin address (loopback by default); the local token endpoint on the
//! token listeners (see [`crate::token`]); the injecting proxy (see [`crate::proxy`]); a
//! background refresher.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use byova_async::Byova;
use byova_async::core::webhook::{
    DeliveryBodyProblem, MAX_WEBHOOK_BODY_BYTES, SIGNATURE_HEADER, delivery_body_reply,
    delivery_method_reply, delivery_reply,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;

use byova_async::core::datasource::DataSourceSpec;
use byova_async::core::{Clock, SharedSecret, SystemClock, TokenKey};

use crate::keeper::{DataSourceBoard, Keeper};
use crate::proxy::{Proxy, ProxyStats};
use crate::schedule::{Refresher, StatusBoard, Touched};
use crate::sink::{Hook, Sink, SinkState, SinkWriter};
use crate::token::{self, RequestStats, TokenListen};
use crate::{Failure, failure, status_json};

pub(crate) type Resp = Response<Full<Bytes>>;

pub(crate) fn respond(status: StatusCode, body: serde_json::Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert("Content-Type", hyper::header::HeaderValue::from_static("application/json"));
    resp.headers_mut().insert("Cache-Control", hyper::header::HeaderValue::from_static("no-store"));
    resp
}

/// Which of the daemon's two listeners a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// The public address: `POST /webhook` only.
    Public,
    /// The operator's address (loopback by default): `/healthz`, `/ready`, `/status`,
    /// `/metrics`.
    Admin,
    /// A token listener (a Unix socket, or loopback TCP with the shared secret): `GET
    /// /v1/integration/token`, `GET /v1/orgs/{org}/token`.
    Token,
}

/// After the public listener has drained (10 s at most): how long the refresher and the
/// refreshes still running get to finish.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(15);

/// How long a connection may take to deliver its request, headers and body together.
const READ_DEADLINE: Duration = Duration::from_secs(10);
/// The most a connection may live, handling included.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(60);

/// What every request handler of the daemon shares.
pub(crate) struct Daemon {
    pub(crate) byova: Arc<Byova>,
    /// Orgs a delivery touched, for the refresher and the data-source keeper (the public
    /// listener's).
    pub(crate) touched: Vec<Touched>,
    /// What `/status` and `/metrics` read.
    pub(crate) board: Arc<StatusBoard>,
    /// The bearer token the admin listener asks for, when one is set.
    pub(crate) admin_token: Option<SharedSecret>,
    /// Whether `/metrics` labels a gauge with each key (customer org ids).
    pub(crate) metrics_per_key: bool,
    /// The shared secret a token listener asks for (TCP; a Unix socket's access control is its
    /// mode).
    pub(crate) token_secret: Option<SharedSecret>,
    /// The token endpoint's requests and latencies, for `/metrics`.
    pub(crate) token_stats: Arc<RequestStats>,
    /// The injecting proxy's figures, for `/metrics`.
    pub(crate) proxy_stats: Arc<ProxyStats>,
    /// The sinks' figures and the keys whose files are not current, for `/metrics` and
    /// `/ready`.
    pub(crate) sinks: Arc<SinkState>,
    /// Every org's data source, when the daemon keeps them (`--data-source-url`).
    pub(crate) data_sources: Option<Arc<DataSourceBoard>>,
}

/// Whether `headers` carry `Authorization: Bearer <token>` (the scheme in any case; the token
/// compared in constant time).
pub(crate) fn authorized(headers: &hyper::HeaderMap, token: &SharedSecret) -> bool {
    headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .is_some_and(|(_, given)| token.ct_eq_str(given.trim()))
}

/// Handles one request to the daemon; `read_by` is when its connection's reading time ends.
pub(crate) async fn handle(
    daemon: Arc<Daemon>,
    role: Role,
    read_by: tokio::time::Instant,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if role == Role::Admin
        && let Some(token) = &daemon.admin_token
        && !authorized(req.headers(), token)
    {
        let mut resp =
            respond(StatusCode::UNAUTHORIZED, json!({"error": "the admin listener needs its bearer token"}));
        resp.headers_mut().insert("WWW-Authenticate", hyper::header::HeaderValue::from_static("Bearer"));
        return Ok(resp);
    }
    if role == Role::Token
        && let Some(secret) = &daemon.token_secret
        && !authorized(req.headers(), secret)
    {
        daemon.token_stats.unauthorized();
        let mut resp = respond(
            StatusCode::UNAUTHORIZED,
            json!({"error": "unauthorized", "message": "the token listener needs its shared secret as a bearer token"}),
        );
        resp.headers_mut().insert("WWW-Authenticate", hyper::header::HeaderValue::from_static("Bearer"));
        return Ok(resp);
    }
    let resp = match (role, method.as_str(), path.as_str()) {
        (Role::Admin, "GET", "/healthz") => respond(StatusCode::OK, json!({"status": "ok"})),
        (Role::Admin, "GET", "/ready") => ready(&daemon.board, &daemon.sinks, daemon.data_sources.as_deref()),
        (Role::Admin, "GET", "/status") => match daemon.board.snapshot() {
            Some(statuses) => {
                let now = SystemClock.now();
                let entries = statuses.iter().map(|s| {
                    let mut entry = status_json(s);
                    if let (Some(board), TokenKey::Org(org)) = (&daemon.data_sources, &s.key) {
                        entry["data_source"] = board.json(org, now).unwrap_or(serde_json::Value::Null);
                    }
                    entry
                });
                respond(StatusCode::OK, json!(entries.collect::<Vec<_>>()))
            }
            None => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "the tokens' status is not known yet: the store could not be read since the start"}),
            ),
        },
        (Role::Admin, "GET", "/metrics") => {
            // From what the daemon holds: a scrape reads no store and unseals no record.
            let (statuses, known) = match daemon.board.snapshot() {
                Some(statuses) => (statuses, 1),
                None => (Vec::new(), 0),
            };
            let metrics = byova_async::core::metrics();
            let mut text = metrics.render_prometheus(&statuses, SystemClock.now(), daemon.metrics_per_key);
            text.push_str(&format!(
                "# HELP byova_store_readable Whether the tokens' status is known (the store was read since the start).\n\
                 # TYPE byova_store_readable gauge\nbyova_store_readable {known}\n\
                 # HELP byova_records_unreadable Records the last full resync could not read (corrupt, sealed under a key \
                 not configured, written by a newer byova); a delivery or a fetch replaces them, byova org reseal rewrites \
                 what the keys still open.\n# TYPE byova_records_unreadable gauge\nbyova_records_unreadable {}\n",
                daemon.board.unreadable()
            ));
            text.push_str(&daemon.token_stats.render());
            text.push_str(&daemon.proxy_stats.render());
            text.push_str(&daemon.sinks.render());
            if let Some(board) = &daemon.data_sources {
                text.push_str(&board.render(SystemClock.now()));
            }
            let mut resp = Response::new(Full::new(Bytes::from(text)));
            resp.headers_mut().insert(
                "Content-Type",
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (Role::Token, "GET", _) => token::answer(&daemon, &req).await,
        (Role::Token, _, _) => {
            daemon.token_stats.refused_method();
            let mut resp = respond(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method_not_allowed", "message": "GET only"}),
            );
            resp.headers_mut().insert("Allow", hyper::header::HeaderValue::from_static("GET"));
            resp
        }
        (Role::Public, "POST", "/webhook") => webhook(&daemon, read_by, req).await,
        (Role::Public, _, "/webhook") => {
            let mut resp = reply(delivery_method_reply());
            resp.headers_mut().insert("Allow", hyper::header::HeaderValue::from_static("POST"));
            resp
        }
        (_, "GET" | "POST", _) => respond(StatusCode::NOT_FOUND, json!({"error": "not found"})),
        _ => respond(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "method not allowed"})),
    };
    Ok(resp)
}

/// `/ready`: 200 when every registered key holds an access token that has not expired, every
/// sink file is current and no kept data source has lapsed or failed to register, else 503
/// naming the keys that are not (and why); 503 too while the store was never read.
fn ready(board: &StatusBoard, sinks: &SinkState, data_sources: Option<&DataSourceBoard>) -> Resp {
    let Some(statuses) = board.snapshot() else {
        return respond(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"ready": false, "error": "the tokens' status is not known yet: the store could not be read since the start"}),
        );
    };
    let now = SystemClock.now();
    let mut not_ready: Vec<_> = statuses
        .iter()
        .filter(|s| s.access_expires_at <= now)
        .map(|s| {
            let state = if s.refresh_token_rejected { "reauthorization_required" } else { "expired" };
            json!({"key": s.key.label(), "state": state})
        })
        .collect();
    not_ready
        .extend(sinks.failing().iter().map(|key| json!({"key": key.label(), "state": "sink_not_written"})));
    if let Some(data_sources) = data_sources {
        not_ready.extend(
            data_sources
                .not_ready(now)
                .into_iter()
                .map(|(org, state)| json!({"key": TokenKey::org(&org).label(), "state": state})),
        );
    }
    if not_ready.is_empty() {
        respond(StatusCode::OK, json!({"ready": true, "keys": statuses.len()}))
    } else {
        respond(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"ready": false, "keys": statuses.len(), "not_ready": not_ready}),
        )
    }
}

async fn webhook(daemon: &Daemon, read_by: tokio::time::Instant, req: Request<Incoming>) -> Resp {
    let byova = &daemon.byova;
    let signature = req.headers().get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    // The body is capped, and must arrive within the connection's reading time, before
    // anything else looks at it.
    let read = Limited::new(req.into_body(), MAX_WEBHOOK_BODY_BYTES).collect();
    let body = match tokio::time::timeout_at(read_by, read).await {
        Err(_) => return reply(delivery_body_reply(DeliveryBodyProblem::TooSlow)),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return reply(delivery_body_reply(DeliveryBodyProblem::TooLarge));
        }
        Ok(Err(_)) => return reply(delivery_body_reply(DeliveryBodyProblem::Unreadable)),
        Ok(Ok(body)) => body.to_bytes(),
    };
    let result = byova.handle_service_app_webhook(&body, signature.as_deref()).await;
    if let Ok(outcome) = &result
        && let Some(org) = outcome.org_id()
    {
        if let Ok(status) = byova.service_app().status(org).await {
            daemon.board.put(&byova_async::TokenKey::org(org), status.as_ref());
        }
        for touched in &daemon.touched {
            // Full: the next resync catches up.
            let _ = touched.try_send(org.clone());
        }
    }
    reply(delivery_reply(&result))
}

/// A JSON answer from core's `(status, body)`.
fn reply((status, body): (u16, String)) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert("Content-Type", hyper::header::HeaderValue::from_static("application/json"));
    resp.headers_mut().insert("Cache-Control", hyper::header::HeaderValue::from_static("no-store"));
    resp
}

/// How a listener holds up under load.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Connections open at once; beyond it, accepting pauses (the kernel's backlog queues).
    pub(crate) max_connections: usize,
}

/// Descriptors kept back from the public listener: the admin listener's connections, the
/// store's, outgoing calls to Webex, logs.
const RESERVED_DESCRIPTORS: usize = 96;

impl Limits {
    /// These limits within the process's descriptor budget (Linux: `/proc/self/limits`), so a
    /// flood of connections never takes the descriptors the admin listener, the store and
    /// Webex calls need.
    pub(crate) fn within_descriptor_budget(self) -> Self {
        let soft_limit = std::fs::read_to_string("/proc/self/limits").ok().and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<usize>().ok()
        });
        match soft_limit {
            Some(limit) => {
                let budget = limit.saturating_sub(RESERVED_DESCRIPTORS).max(limit / 2).max(1);
                Self { max_connections: self.max_connections.min(budget) }
            }
            None => self,
        }
    }
}

/// A listener `serve_http` accepts connections from: TCP or a Unix socket.
pub(crate) trait Accept: Send + 'static {
    /// A connection.
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    /// The next connection.
    fn next(&self) -> impl std::future::Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Accept for TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn next(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn next(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// Serves `listener` as `role` until `shutdown` resolves, then lets open connections finish
/// (10 s at most). Each connection serves one request, which must arrive within
/// [`READ_DEADLINE`].
pub(crate) async fn serve_http(
    daemon: Arc<Daemon>,
    listener: impl Accept,
    role: Role,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    accept_loop(listener, limits, shutdown, move |stream| {
        let daemon = daemon.clone();
        async move {
            let read_by = tokio::time::Instant::now() + READ_DEADLINE;
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req| handle(daemon.clone(), role, read_by, req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(READ_DEADLINE)
                .keep_alive(false)
                .serve_connection(io, service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, conn).await;
        }
    })
    .await;
}

/// Accepts connections from `listener` until `shutdown` resolves, each handled by `connection`
/// on its own task, then lets open connections finish (10 s at most). At most
/// `limits.max_connections` connections are open: accepting waits for a free slot, and an
/// accept error (out of descriptors, say) backs off instead of spinning.
pub(crate) async fn accept_loop<A: Accept, F, Fut>(
    listener: A,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
    connection: F,
) where
    F: Fn(A::Stream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut connections = tokio::task::JoinSet::new();
    let mut backoff = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.next() => accepted,
        };
        let stream = match accepted {
            Ok(stream) => {
                backoff = Duration::ZERO;
                stream
            }
            Err(e) => {
                // EMFILE and friends: wait for descriptors to come back instead of retrying at once.
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                tracing::warn!(error = %e, retry_in = ?backoff, "accept failed");
                drop(slot);
                tokio::select! {
                    _ = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => continue,
                }
            }
        };
        let served = connection(stream);
        connections.spawn(async move {
            served.await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

/// Tells systemd (the datagram socket in `NOTIFY_SOCKET`, a path or an abstract `@name`)
/// `message`; nothing when not run by systemd. A failure is logged, never fatal.
fn sd_notify(message: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|socket| {
        #[cfg(target_os = "linux")]
        if let Some(name) = target.as_encoded_bytes().strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            return socket.send_to_addr(message.as_bytes(), &addr);
        }
        socket.send_to(message.as_bytes(), &target)
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// systemd's watchdog interval for this process (`WATCHDOG_USEC`, when `WATCHDOG_PID` is
/// unset or names this process): the daemon pings at half of it.
fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok()?.parse::<u64>().ok().filter(|u| *u > 0)?;
    let for_us =
        std::env::var("WATCHDOG_PID").ok().is_none_or(|pid| pid.trim() == std::process::id().to_string());
    for_us.then(|| Duration::from_micros(usec) / 2)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

pub(crate) async fn bind(listen: &str) -> Result<TcpListener, Failure> {
    bind_flag(listen, "--listen").await
}

/// Binds `listen`, naming `flag` (the option it came from) in any error.
pub(crate) async fn bind_flag(listen: &str, flag: &str) -> Result<TcpListener, Failure> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| failure(3, format!("{flag} {listen:?} is not an address like 127.0.0.1:8080")))?;
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            failure(
                9,
                format!("{addr} is already in use: stop the other process or choose another {flag} address"),
            )
        } else {
            failure(3, format!("cannot listen on {addr} ({flag}): {e}"))
        }
    })
}

/// How `byova serve` runs, beyond its addresses.
pub(crate) struct Options {
    /// Between full resyncs of the schedule with the store.
    pub(crate) resync: Duration,
    /// Keys refreshed at once.
    pub(crate) concurrency: usize,
    /// The public listener's limits.
    pub(crate) limits: Limits,
    /// The admin listener's bearer token (required on an address that is not loopback).
    pub(crate) admin_token: Option<SharedSecret>,
    /// Label `/metrics` gauges with each key.
    pub(crate) metrics_per_key: bool,
    /// Where the local token endpoint listens (none: no token endpoint).
    pub(crate) token_listen: Vec<TokenListen>,
    /// The group a token socket is given (its mode is `0660`).
    pub(crate) token_socket_group: Option<u32>,
    /// The shared secret a TCP token listener asks for (required for one).
    pub(crate) token_secret: Option<SharedSecret>,
    /// Let a TCP token listener take an address that is not loopback.
    pub(crate) token_allow_remote: bool,
    /// Where the injecting proxy listens (loopback TCP, with the shared secret).
    pub(crate) proxy_listen: Option<String>,
    /// Files every key's token is written to.
    pub(crate) sinks: Vec<Sink>,
    /// Run after a key's sink files are current.
    pub(crate) on_rotate: Option<Hook>,
    /// The data source kept for every registered org (`--data-source-url`).
    pub(crate) data_source: Option<DataSourceSpec>,
}

/// The token listeners, bound; refused before anything is bound when one is on TCP without the
/// shared secret, or off loopback without the explicit allowance.
async fn bind_token_listeners(
    options: &Options,
) -> Result<(Vec<TcpListener>, Vec<(tokio::net::UnixListener, token::PlacedSocket)>), Failure> {
    for listen in &options.token_listen {
        if let TokenListen::Tcp(addr) = listen {
            if options.token_secret.is_none() {
                return Err(failure(
                    3,
                    format!(
                        "--token-listen {addr} is TCP: give --token-secret-file FILE (clients send Authorization:                          Bearer <its content>), or listen on unix:PATH"
                    ),
                ));
            }
            if !addr.ip().is_loopback() && !options.token_allow_remote {
                return Err(failure(
                    3,
                    format!(
                        "--token-listen {addr} is not a loopback address: tokens would cross the network in clear;                          listen on 127.0.0.1 or unix:PATH (or pass --token-allow-remote)"
                    ),
                ));
            }
        }
    }
    let (mut tcp, mut unix) = (Vec::new(), Vec::new());
    for listen in &options.token_listen {
        match listen {
            TokenListen::Tcp(addr) => tcp.push(bind_flag(&addr.to_string(), "--token-listen").await?),
            TokenListen::Unix(path) => unix.push(token::bind_unix(path, options.token_socket_group)?),
        }
    }
    Ok((tcp, unix))
}

/// `byova serve`.
pub(crate) async fn run(
    byova: Arc<Byova>,
    listen: &str,
    admin_listen: &str,
    options: Options,
) -> Result<(), Failure> {
    let (token_tcp, token_unix) = bind_token_listeners(&options).await?;
    let proxy_listener = match &options.proxy_listen {
        Some(listen) => Some(crate::proxy::bind(listen, options.token_secret.as_ref()).await?),
        None => None,
    };
    let Options {
        resync,
        concurrency,
        limits,
        admin_token,
        metrics_per_key,
        token_secret,
        sinks,
        on_rotate,
        data_source,
        ..
    } = options;
    let listener = bind(listen).await?;
    let admin = bind_flag(admin_listen, "--admin-listen").await?;
    let addr = listener.local_addr().map_err(|e| failure(3, e.to_string()))?;
    let admin_addr = admin.local_addr().map_err(|e| failure(3, e.to_string()))?;
    // Rule 12: /status and /metrics on an address others can reach need a credential.
    if !admin_addr.ip().is_loopback() && admin_token.is_none() {
        return Err(failure(
            3,
            format!(
                "--admin-listen {admin_addr} is not a loopback address: give --admin-token-file FILE (clients send \
                 Authorization: Bearer <its content>) or listen on 127.0.0.1"
            ),
        ));
    }
    // What /status and /metrics read, filled before anything listens; the refresher plans
    // from it. A store that cannot be read now is read by the refresher's resync later.
    let board = Arc::new(StatusBoard::default());
    let started = std::time::Instant::now();
    match board.resync(&byova).await {
        Ok(keys) => tracing::info!(keys, took = ?started.elapsed(), "refresh schedule resynced"),
        Err(e) => tracing::warn!(error = %e, "cannot read the tokens' status yet; the refresher tries again"),
    }
    let mut token_addrs = Vec::new();
    for l in &token_tcp {
        token_addrs.push(format!("http://{}", l.local_addr().map_err(|e| failure(3, e.to_string()))?));
    }
    token_addrs.extend(token_unix.iter().map(|(_, placed)| format!("unix:{}", placed.path.display())));
    let token_line = if token_addrs.is_empty() {
        String::new()
    } else {
        format!("; tokens on {} (GET /v1/integration/token, /v1/orgs/{{org}}/token)", token_addrs.join(" "))
    };
    let proxy_stats = Arc::new(ProxyStats::default());
    let (proxy, proxy_line) = match (proxy_listener, &token_secret) {
        (Some(listener), Some(secret)) => {
            let local = listener.local_addr().map_err(|e| failure(3, e.to_string()))?;
            let proxy = Proxy::new(byova.clone(), local, secret.clone(), proxy_stats.clone())?;
            (
                Some((listener, Arc::new(proxy))),
                format!("; proxy on http://{local} (the API, with X-Byova-Org)"),
            )
        }
        _ => (None, String::new()),
    };
    println!(
        "byova serve: listening on http://{addr} (POST /webhook); admin on http://{admin_addr} (GET /healthz, /ready, /status, /metrics){token_line}{proxy_line}"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let (touched, touched_rx) = tokio::sync::mpsc::channel(1024);
    let refresher = tokio::spawn(
        Refresher {
            byova: byova.clone(),
            concurrency,
            resync_every: resync,
            touched: touched_rx,
            stop: stop_rx.clone(),
            board: board.clone(),
        }
        .run(),
    );
    let mut touched = vec![touched];
    let (data_sources, keeper) = match data_source {
        Some(spec) => {
            let (keeper_touched, keeper_rx) = tokio::sync::mpsc::channel(1024);
            touched.push(keeper_touched);
            let board = Arc::new(DataSourceBoard::default());
            tracing::info!(url = %spec.url, lifetime_minutes = spec.lifetime_minutes, "keeping every org's data source");
            let keeper = Keeper {
                byova: byova.clone(),
                spec,
                concurrency,
                resync_every: resync,
                touched: keeper_rx,
                stop: stop_rx.clone(),
                board: board.clone(),
            };
            (Some(board), Some(tokio::spawn(keeper.run())))
        }
        None => (None, None),
    };
    let token_stats = Arc::new(RequestStats::token_endpoint());
    let sink_state = Arc::new(SinkState::default());
    // The sinks are written once before the daemon says it is ready.
    let sink_writer = if sinks.is_empty() {
        None
    } else {
        let mut writer = SinkWriter::new(byova.clone(), sinks, on_rotate, board.clone(), sink_state.clone());
        writer.pass().await;
        Some(tokio::spawn(writer.run(stopped(stop_rx.clone()))))
    };
    sd_notify("READY=1");
    let watchdog = watchdog_interval().map(|every| {
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                sd_notify("WATCHDOG=1");
                tokio::select! {
                    () = &mut stop => break,
                    () = tokio::time::sleep(every) => {}
                }
            }
        })
    });

    let daemon = |touched, token_secret| {
        Arc::new(Daemon {
            byova: byova.clone(),
            touched,
            board: board.clone(),
            admin_token: admin_token.clone(),
            metrics_per_key,
            token_secret,
            token_stats: token_stats.clone(),
            proxy_stats: proxy_stats.clone(),
            sinks: sink_state.clone(),
            data_sources: data_sources.clone(),
        })
    };
    let token_limits = Limits { max_connections: 256 }.within_descriptor_budget();
    let mut token_servers = Vec::new();
    for l in token_tcp {
        let served = serve_http(
            daemon(Vec::new(), token_secret.clone()),
            l,
            Role::Token,
            token_limits,
            stopped(stop_rx.clone()),
        );
        token_servers.push(tokio::spawn(served));
    }
    let mut sockets = Vec::new();
    for (l, placed) in token_unix {
        sockets.push(placed);
        let served =
            serve_http(daemon(Vec::new(), None), l, Role::Token, token_limits, stopped(stop_rx.clone()));
        token_servers.push(tokio::spawn(served));
    }
    if let Some((listener, proxy)) = proxy {
        let stop = stop_rx.clone();
        let served = accept_loop(
            listener,
            Limits { max_connections: crate::proxy::MAX_CONNECTIONS }.within_descriptor_budget(),
            stopped(stop_rx.clone()),
            move |stream| proxy.clone().connection(stream, stopped(stop.clone())),
        );
        token_servers.push(tokio::spawn(served));
    }
    let admin_server = tokio::spawn(serve_http(
        daemon(Vec::new(), None),
        admin,
        Role::Admin,
        Limits { max_connections: 64 },
        stopped(stop_rx.clone()),
    ));
    let limits = limits.within_descriptor_budget();
    tracing::info!(max_connections = limits.max_connections, "public listener");
    let public = serve_http(daemon(touched, None), listener, Role::Public, limits, async {
        shutdown_signal().await;
        sd_notify("STOPPING=1");
        let _ = stop_tx.send(true);
    });
    public.await;
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    // Deliveries in flight finished (or ran out of their 10 s) above. The refresher starts
    // nothing new now; let what runs finish, then any detached refresh or fetch, so no token
    // bought from Webex is dropped unsaved. All of it within SHUTDOWN_BUDGET (under the usual
    // 30 s grace period of a container orchestrator).
    let deadline = tokio::time::Instant::now() + SHUTDOWN_BUDGET;
    for task in std::iter::once(refresher).chain(keeper) {
        let abort = task.abort_handle();
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            abort.abort();
        }
    }
    let settled = tokio::time::timeout_at(deadline, async {
        while byova.work_in_progress() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if settled.is_err() {
        tracing::warn!("stopping with refreshes still running; their tokens are kept only if stored");
    }
    if let Some(writer) = sink_writer {
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    }
    // The token listeners and the proxy stopped accepting at the signal; what they still
    // serve (a proxied call already at Webex, say) finishes within the budget.
    for server in token_servers {
        let abort = server.abort_handle();
        if tokio::time::timeout_at(deadline, server).await.is_err() {
            abort.abort();
        }
    }
    admin_server.abort();
    for socket in sockets {
        socket.remove();
    }
    println!("byova serve: stopped");
    Ok(())
}
