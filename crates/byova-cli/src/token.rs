//! `byova serve`'s local token endpoint: a gateway in any language asks the daemon for a valid
//! token over a Unix socket (access control: the socket's mode and group) or a loopback TCP
//! port (access control: a shared secret sent as `Authorization: Bearer …`), and gets it from
//! the same engine, cache, single flight and token budget as the library.
//!
//! `GET /v1/integration/token` and `GET /v1/orgs/{org}/token`, with an optional
//! `?min_valid=SECONDS`, answer `{"access_token", "token_type", "expires_at", "expires_in"}`
//! with `Cache-Control: no-store`; an error is `{"error": CODE, "message": …}` with a stable
//! code per class, the classes of the CLI's exit codes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use byova_async::core::{Clock, SystemClock};
use byova_async::{Byova, Error, OAuthTokens, OrgId, TokenKey};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use crate::serve::{Daemon, Resp, respond};
use crate::{Failure, failure};

/// The longest `min_valid` a caller may ask for (a day: Webex's access tokens live at most
/// fourteen days, and asking for more than a token's life only costs a refresh).
const MAX_MIN_VALID: Duration = Duration::from_secs(86_400);

/// Where a token listener listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TokenListen {
    /// `unix:PATH`: a Unix socket, created `0660`.
    Unix(PathBuf),
    /// `IP:PORT`: TCP, with the shared secret.
    Tcp(SocketAddr),
}

impl TokenListen {
    /// Parses `--token-listen`: `unix:PATH` or `IP:PORT`.
    pub(crate) fn parse(text: &str) -> Result<Self, Failure> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(failure(3, "--token-listen unix: needs a path, like unix:/run/byova/token.sock"));
            }
            return Ok(TokenListen::Unix(PathBuf::from(path)));
        }
        text.parse().map(TokenListen::Tcp).map_err(|_| {
            failure(
                3,
                format!("--token-listen {text:?} is neither unix:PATH nor an address like 127.0.0.1:8090"),
            )
        })
    }
}

/// What a token (or proxied) request may go wrong with, each with its stable `error` code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Ok,
    BadRequest,
    NotFound,
    NotRegistered,
    NotAuthorized,
    Reauthorization,
    StoreUnavailable,
    RateLimited,
    Webex,
    Unauthorized,
    MethodNotAllowed,
}

const CLASSES: [Class; 11] = [
    Class::Ok,
    Class::BadRequest,
    Class::NotFound,
    Class::NotRegistered,
    Class::NotAuthorized,
    Class::Reauthorization,
    Class::StoreUnavailable,
    Class::RateLimited,
    Class::Webex,
    Class::Unauthorized,
    Class::MethodNotAllowed,
];

impl Class {
    pub(crate) fn code(self) -> &'static str {
        match self {
            Class::Ok => "ok",
            Class::BadRequest => "invalid_request",
            Class::NotFound => "not_found",
            Class::NotRegistered => "org_not_registered",
            Class::NotAuthorized => "not_authorized",
            Class::Reauthorization => "reauthorization_required",
            Class::StoreUnavailable => "store_unavailable",
            Class::RateLimited => "budget_exhausted",
            Class::Webex => "webex_unavailable",
            Class::Unauthorized => "unauthorized",
            Class::MethodNotAllowed => "method_not_allowed",
        }
    }

    pub(crate) fn status(self) -> StatusCode {
        match self {
            Class::Ok => StatusCode::OK,
            Class::BadRequest => StatusCode::BAD_REQUEST,
            Class::NotFound | Class::NotRegistered | Class::NotAuthorized => StatusCode::NOT_FOUND,
            Class::Reauthorization => StatusCode::CONFLICT,
            Class::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Class::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Class::Webex => StatusCode::BAD_GATEWAY,
            Class::Unauthorized => StatusCode::UNAUTHORIZED,
            Class::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// The class of a library error: the same grouping as the CLI's exit codes (4 the store,
    /// 5 a person must act, 6 Webex or the network).
    pub(crate) fn of(error: &Error) -> Class {
        match error {
            Error::OrgNotRegistered { .. } => Class::NotRegistered,
            Error::NotAuthorized => Class::NotAuthorized,
            Error::ReauthorizationRequired { .. }
            | Error::NoRefreshToken { .. }
            | Error::Authentication(_)
            | Error::ServiceAppNotAuthorized { .. } => Class::Reauthorization,
            Error::Storage(_) => Class::StoreUnavailable,
            Error::RateLimited { .. } => Class::RateLimited,
            Error::InvalidInput(_) => Class::BadRequest,
            _ => Class::Webex,
        }
    }
}

/// The token endpoint's latency buckets in `/metrics` (seconds): it answers from memory.
const TOKEN_BUCKETS: &[f64] = &[0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.25, 1.0];

/// Requests to one of the daemon's local endpoints (the token endpoint, the proxy) by answer,
/// and their latency: for `/metrics`, as `byova_{name}_requests_total` and
/// `byova_{name}_request_seconds`.
pub(crate) struct RequestStats {
    name: &'static str,
    what: &'static str,
    by_class: [AtomicU64; CLASSES.len()],
    bounds: &'static [f64],
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    micros: AtomicU64,
}

impl RequestStats {
    /// The token endpoint's figures.
    pub(crate) fn token_endpoint() -> Self {
        Self::new("token", "the local token endpoint", TOKEN_BUCKETS)
    }

    /// Figures named `byova_{name}_…`, described as requests to `what`, latencies in buckets
    /// bounded by `bounds` (seconds, ascending).
    pub(crate) fn new(name: &'static str, what: &'static str, bounds: &'static [f64]) -> Self {
        Self {
            name,
            what,
            by_class: Default::default(),
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            micros: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, class: Class, took: Duration) {
        let index = CLASSES.iter().position(|c| *c == class).unwrap_or(0);
        self.by_class[index].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(self.bounds) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.micros.fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Counts an answer refused for a missing or wrong secret (no latency: nothing was asked).
    pub(crate) fn unauthorized(&self) {
        self.record(Class::Unauthorized, Duration::ZERO);
    }

    /// Counts an answer refused for its method (anything but `GET`).
    pub(crate) fn refused_method(&self) {
        self.record(Class::MethodNotAllowed, Duration::ZERO);
    }

    /// The Prometheus text of these figures.
    pub(crate) fn render(&self) -> String {
        let (name, what) = (self.name, self.what);
        let mut text = format!(
            "# HELP byova_{name}_requests_total Requests to {what}, by answer.\n\
             # TYPE byova_{name}_requests_total counter\n"
        );
        for (class, count) in CLASSES.iter().zip(&self.by_class) {
            text.push_str(&format!(
                "byova_{name}_requests_total{{answer=\"{}\"}} {}\n",
                class.code(),
                count.load(Ordering::Relaxed)
            ));
        }
        text.push_str(&format!(
            "# HELP byova_{name}_request_seconds How long {what} took to answer.\n\
             # TYPE byova_{name}_request_seconds histogram\n"
        ));
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            text.push_str(&format!(
                "byova_{name}_request_seconds_bucket{{le=\"{bound}\"}} {}\n",
                bucket.load(Ordering::Relaxed)
            ));
        }
        let count = self.count.load(Ordering::Relaxed);
        text.push_str(&format!("byova_{name}_request_seconds_bucket{{le=\"+Inf\"}} {count}\n"));
        let sum = self.micros.load(Ordering::Relaxed) as f64 / 1e6;
        text.push_str(&format!(
            "byova_{name}_request_seconds_sum {sum}\nbyova_{name}_request_seconds_count {count}\n"
        ));
        text
    }
}

/// An error answer: its class's status and code, and a message that names no secret (the
/// library's errors never carry one); `Retry-After` (whole seconds, at least 1) when given.
pub(crate) fn refuse(class: Class, message: impl Into<String>, retry_after: Option<Duration>) -> Resp {
    let mut resp = respond(class.status(), json!({"error": class.code(), "message": message.into()}));
    if let Some(after) = retry_after {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        if let Ok(value) = hyper::header::HeaderValue::from_str(&secs.max(1).to_string()) {
            resp.headers_mut().insert(hyper::header::RETRY_AFTER, value);
        }
    }
    if class == Class::Unauthorized {
        resp.headers_mut().insert("WWW-Authenticate", hyper::header::HeaderValue::from_static("Bearer"));
    }
    resp
}

/// Which key a path names: `None` for the Integration, `Some` for an org; `Err` for a path
/// that is not a token path, or an org id that is not one.
fn key_of(path: &str) -> Result<Option<OrgId>, (Class, String)> {
    if path == "/v1/integration/token" {
        return Ok(None);
    }
    let Some(org) = path.strip_prefix("/v1/orgs/").and_then(|rest| rest.strip_suffix("/token")) else {
        return Err((
            Class::NotFound,
            "not a token path: GET /v1/integration/token or /v1/orgs/{org}/token".to_owned(),
        ));
    };
    OrgId::new(org).map(Some).map_err(|e| (Class::BadRequest, e.to_string()))
}

/// `?min_valid=SECONDS`, zero when absent.
fn min_valid(query: Option<&str>) -> Result<Duration, (Class, String)> {
    let mut min_valid = Duration::ZERO;
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "min_valid" {
            return Err((Class::BadRequest, format!("unknown parameter {name:?}: only min_valid=SECONDS")));
        }
        let secs = value.parse::<u64>().ok().filter(|s| *s <= MAX_MIN_VALID.as_secs()).ok_or_else(|| {
            (
                Class::BadRequest,
                format!("min_valid must be whole seconds from 0 to {}", MAX_MIN_VALID.as_secs()),
            )
        })?;
        min_valid = Duration::from_secs(secs);
    }
    Ok(min_valid)
}

/// The answer for tokens: the access token and its expiry, never the refresh token.
fn grant(tokens: &OAuthTokens) -> Resp {
    let now = SystemClock.now();
    let expires_at = tokens.expires_at();
    respond(
        StatusCode::OK,
        json!({
            "access_token": tokens.access_token.expose_secret(),
            "token_type": "Bearer",
            "expires_at": expires_at.to_rfc3339(),
            "expires_in": expires_at.saturating_duration_since(now).as_secs(),
        }),
    )
}

/// Answers one `GET` on a token listener.
pub(crate) async fn answer(daemon: &Daemon, req: &Request<Incoming>) -> Resp {
    let started = Instant::now();
    let (class, resp) = match ask(daemon, req).await {
        Ok(tokens) => (Class::Ok, grant(&tokens)),
        Err((class, message, retry_after)) => (class, refuse(class, message, retry_after)),
    };
    daemon.token_stats.record(class, started.elapsed());
    resp
}

type Refusal = (Class, String, Option<Duration>);

/// `key`'s tokens with at least `min_valid` left, from the Integration's manager or the
/// Service App's: what the endpoint, the sink writer and `byova sync` all ask.
pub(crate) async fn valid_tokens(
    byova: &Byova,
    key: &TokenKey,
    min_valid: Duration,
) -> Result<OAuthTokens, Error> {
    match key.org_id() {
        None => byova.integration().get_valid_tokens(min_valid).await,
        Some(org) => byova.service_app().get_valid_tokens(org, min_valid).await,
    }
}

async fn ask(daemon: &Daemon, req: &Request<Incoming>) -> Result<OAuthTokens, Refusal> {
    let plain = |(class, message): (Class, String)| (class, message, None);
    let key = key_of(req.uri().path()).map_err(plain)?;
    let min_valid = min_valid(req.uri().query()).map_err(plain)?;
    let key = key.as_ref().map_or(TokenKey::Integration, TokenKey::org);
    valid_tokens(&daemon.byova, &key, min_valid).await.map_err(|e| {
        let retry_after = e.retry_after();
        (Class::of(&e), e.to_string(), retry_after)
    })
}

/// A token socket this process placed: removed at shutdown only if it is still the one placed
/// (another instance may have taken the path since).
pub(crate) struct PlacedSocket {
    pub(crate) path: PathBuf,
    dev: u64,
    ino: u64,
}

impl PlacedSocket {
    /// Removes the socket if the path still names it.
    pub(crate) fn remove(&self) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && meta.dev() == self.dev
            && meta.ino() == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds a Unix socket at `path` with mode `0660` (and `group`, when given) that nobody can
/// reach before it has them: it is bound inside a fresh directory only this process can enter
/// (`0700`), given its mode and group there (no one can swap it for a link meanwhile), then
/// renamed into place. What is at `path` already is replaced only when it is a socket nobody
/// answers on (its process died); a live one exits 9, anything else (a file, a socket this
/// process may not check) exits 3.
pub(crate) fn bind_unix(
    path: &Path,
    group: Option<u32>,
) -> Result<(tokio::net::UnixListener, PlacedSocket), Failure> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(failure(
                    9,
                    format!(
                        "{shown} is already in use: stop the other process or choose another --token-listen"
                    ),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
                .map_err(|e| failure(3, format!("cannot replace the stale socket {shown}: {e}")))?,
            Err(e) => {
                return Err(failure(
                    3,
                    format!(
                        "{shown} is a socket byova cannot check ({e}): remove it or choose another --token-listen"
                    ),
                ));
            }
        },
        Ok(_) => {
            return Err(failure(
                3,
                format!("{shown} exists and is not a socket: choose another --token-listen"),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failure(3, format!("cannot check {shown} (--token-listen): {e}"))),
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let private = parent.join(format!(
        ".byova-token-{}-{:x}",
        std::process::id(),
        byova_async::core::engine::random_u64()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| failure(3, format!("cannot listen on {shown} (--token-listen): {e}")))?;
    let inner = private.join("token.sock");
    let placed = (|| {
        let listener = tokio::net::UnixListener::bind(&inner)?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o660))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(&inner, None, Some(gid))?;
        }
        std::fs::rename(&inner, path)?;
        let meta = std::fs::symlink_metadata(path)?;
        Ok::<_, std::io::Error>((
            listener,
            PlacedSocket { path: path.to_owned(), dev: meta.dev(), ino: meta.ino() },
        ))
    })();
    let _ = std::fs::remove_file(&inner);
    let _ = std::fs::remove_dir(&private);
    placed.map_err(|e| failure(3, format!("cannot set up the token socket {shown}: {e}")))
}

/// The id of the group named `name` (from `/etc/group`), or of a numeric id.
pub(crate) fn group_id(name: &str) -> Result<u32, Failure> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    groups
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let group = fields.next()?;
            let gid = fields.nth(1)?.parse::<u32>().ok()?;
            (group == name).then_some(gid)
        })
        .next()
        .ok_or_else(|| failure(3, format!("--token-socket-group {name:?}: no such group")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_a_key_or_are_refused_with_a_class() {
        assert_eq!(key_of("/v1/integration/token"), Ok(None));
        let org = "63b02f90-9cc6-43b8-aa6d-cad425ac554c";
        assert_eq!(key_of(&format!("/v1/orgs/{org}/token")).unwrap().unwrap().as_str(), org);
        assert_eq!(key_of("/v1/orgs//token").unwrap_err().0, Class::BadRequest);
        assert_eq!(key_of("/v1/orgs/x/tokens").unwrap_err().0, Class::NotFound);
        assert_eq!(key_of("/token").unwrap_err().0, Class::NotFound);
    }

    #[test]
    fn min_valid_is_whole_seconds_within_a_day() {
        assert_eq!(min_valid(None), Ok(Duration::ZERO));
        assert_eq!(min_valid(Some("min_valid=300")), Ok(Duration::from_secs(300)));
        for bad in ["min_valid=-1", "min_valid=1.5", "min_valid=86401", "min_valid=", "other=1"] {
            assert_eq!(min_valid(Some(bad)).unwrap_err().0, Class::BadRequest, "{bad}");
        }
    }

    #[test]
    fn listen_addresses_are_a_socket_path_or_an_ip_and_port() {
        assert_eq!(
            TokenListen::parse("unix:/run/b.sock").ok(),
            Some(TokenListen::Unix("/run/b.sock".into()))
        );
        assert_eq!(
            TokenListen::parse("127.0.0.1:9").ok(),
            Some(TokenListen::Tcp("127.0.0.1:9".parse().unwrap()))
        );
        assert!(TokenListen::parse("unix:").is_err());
        assert!(TokenListen::parse("localhost:9").is_err());
    }

    #[test]
    fn every_class_has_its_own_code_and_the_metrics_name_them() {
        let stats = RequestStats::token_endpoint();
        stats.record(Class::Ok, Duration::from_micros(300));
        stats.unauthorized();
        let text = stats.render();
        assert!(text.contains("byova_token_requests_total{answer=\"ok\"} 1"), "{text}");
        assert!(text.contains("byova_token_requests_total{answer=\"unauthorized\"} 1"), "{text}");
        assert!(text.contains("byova_token_request_seconds_bucket{le=\"0.0005\"} 2"), "{text}");
        assert!(text.contains("byova_token_request_seconds_count 2"), "{text}");
        let codes: std::collections::HashSet<_> = CLASSES.iter().map(|c| c.code()).collect();
        assert_eq!(codes.len(), CLASSES.len());
    }
}
