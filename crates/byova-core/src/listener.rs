//! The loopback redirect listener's decisions (RFC 8252), sans I/O: which address to bind,
//! what each request to the listener means, and the exact page to answer with.
//!
//! A flavour accepts connections, reads one request head (at most
//! [`MAX_CALLBACK_HEAD_BYTES`], with a read timeout), hands it to [`CallbackHandler::handle`],
//! writes the reply, closes the connection, and stops once the verdict is final. Everything
//! else (paths, methods, `Host`, `state`, `error=`, page headers) is decided here, once, for
//! both flavours.

use std::fmt;

use crate::error::{Error, Result};
use crate::secret::{AuthorizationCode, CsrfState};

/// Request heads longer than this get 431 and the connection is closed.
pub const MAX_CALLBACK_HEAD_BYTES: usize = 8 * 1024;

/// How long one connection to the listener may take to send its request head.
pub const CALLBACK_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connections a listener serves at once; a new one beyond it closes the oldest, so idle
/// connections can never turn the real redirect away.
pub const MAX_CALLBACK_CONNECTIONS: usize = 64;

/// A parsed loopback redirect URI: `http://127.0.0.1:<port>/<path>` (or `[::1]`, or
/// `localhost`, which is bound as `127.0.0.1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopbackRedirect {
    /// The host as written in the URI (`127.0.0.1`, `[::1]` or `localhost`).
    pub host: String,
    /// The port; `0` asks for an ephemeral port (RFC 8252 §7.3 lets the port vary).
    pub port: u16,
    /// The callback path, starting with `/`.
    pub path: String,
}

impl LoopbackRedirect {
    /// Parses a redirect URI, refusing anything that is not plain `http` on a loopback host.
    ///
    /// # Errors
    /// [`Error::Configuration`] naming the problem: byova never listens beyond loopback.
    pub fn parse(redirect_uri: &str) -> Result<Self> {
        let bad = |why: &str| Error::Configuration(format!("redirect URI {redirect_uri:?} {why}"));
        let rest = redirect_uri
            .strip_prefix("http://")
            .ok_or_else(|| bad("must start with http:// (a loopback listener cannot serve https)"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if path.contains(['?', '#']) {
            return Err(bad("must not carry a query or fragment"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, p) = v6.split_once(']').ok_or_else(|| bad("has an unterminated IPv6 literal"))?;
            (format!("[{h}]"), p.strip_prefix(':').unwrap_or(""))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p),
                None => (authority.to_owned(), ""),
            }
        };
        if !matches!(host.as_str(), "127.0.0.1" | "[::1]" | "localhost") {
            return Err(bad("is not on a loopback host; use http://127.0.0.1:<port>/<path>"));
        }
        let port = if port.is_empty() { 80 } else { port.parse().map_err(|_| bad("has an invalid port"))? };
        Ok(Self { host, port, path: path.to_owned() })
    }

    /// The address to bind: the IP literal (`localhost` binds `127.0.0.1`, never a name).
    pub fn bind_host(&self) -> &str {
        match self.host.as_str() {
            "[::1]" => "::1",
            _ => "127.0.0.1",
        }
    }

    /// The address to listen on, for messages: `127.0.0.1:8765 (the OAuth redirect URI)`.
    pub fn listen_address(&self) -> String {
        format!("{}:{} (the OAuth redirect URI)", self.bind_host(), self.port)
    }

    /// The redirect URI for the port actually bound.
    pub fn uri_with_port(&self, port: u16) -> String {
        format!("http://{}:{port}{}", self.host, self.path)
    }
}

impl fmt::Display for LoopbackRedirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.path)
    }
}

/// Accumulates bytes from a connection until the request head is complete, refusing heads
/// longer than [`MAX_CALLBACK_HEAD_BYTES`]. The flavours only read bytes into it.
#[derive(Debug, Default)]
pub struct HeadReader {
    buf: Vec<u8>,
}

/// Where reading a request head stands.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadProgress {
    /// Keep reading.
    NeedMore,
    /// The head, up to and including the blank line (anything after it is dropped).
    Complete(Vec<u8>),
    /// Longer than the cap: answer [`CallbackReply::too_large`] and close.
    TooLarge,
}

impl HeadReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self { buf: Vec::with_capacity(1024) }
    }

    /// Adds bytes just read.
    pub fn push(&mut self, bytes: &[u8]) -> HeadProgress {
        // Only the new bytes (and the three before them) can complete the terminator.
        let from = self.buf.len().saturating_sub(3);
        self.buf.extend_from_slice(bytes);
        if let Some(end) = self.buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let mut head = std::mem::take(&mut self.buf);
            head.truncate(from + end + 4);
            return HeadProgress::Complete(head);
        }
        if self.buf.len() > MAX_CALLBACK_HEAD_BYTES { HeadProgress::TooLarge } else { HeadProgress::NeedMore }
    }
}

/// One connection to the loopback listener, sans I/O: a flavour feeds it what each read
/// returned and writes what it answers. It reads the head (capped), asks the handler, and
/// builds the reply.
#[derive(Debug, Default)]
pub struct CallbackConnection {
    head: HeadReader,
}

/// What to do with a connection after the bytes just read.
#[derive(Debug)]
pub enum ConnectionStep {
    /// Read more.
    Read,
    /// Write these bytes and close; hand the verdict (a code or a denial) to the flow.
    Answer(Vec<u8>, Option<CallbackVerdict>),
    /// The peer closed before sending a whole request head: close without answering.
    Close,
}

impl CallbackConnection {
    /// A new connection.
    pub fn new() -> Self {
        Self { head: HeadReader::new() }
    }

    /// Takes what one read returned (empty: the peer closed) and says what to do next.
    pub fn push(&mut self, bytes: &[u8], handler: &std::sync::Mutex<CallbackHandler>) -> ConnectionStep {
        if bytes.is_empty() {
            return ConnectionStep::Close;
        }
        let head = match self.head.push(bytes) {
            HeadProgress::NeedMore => return ConnectionStep::Read,
            HeadProgress::TooLarge => {
                return ConnectionStep::Answer(CallbackReply::too_large().to_bytes(), None);
            }
            HeadProgress::Complete(head) => head,
        };
        let Some(head) = parse_request_head(&head) else {
            return ConnectionStep::Answer(CallbackReply::bad_request().to_bytes(), None);
        };
        let (reply, verdict) = handler.lock().unwrap_or_else(|e| e.into_inner()).handle(&head);
        let verdict = (!matches!(verdict, CallbackVerdict::KeepWaiting)).then_some(verdict);
        ConnectionStep::Answer(reply.to_bytes(), verdict)
    }
}

/// The parts of a request head the handler needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// The method.
    pub method: String,
    /// The request target (path and query).
    pub target: String,
    /// The `Host` header, when present.
    pub host: Option<String>,
}

/// Parses an HTTP/1.x request head (the bytes up to and including the blank line).
///
/// # Errors
/// `None` when the bytes are not a request head.
pub fn parse_request_head(head: &[u8]) -> Option<RequestHead> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next().filter(|m| !m.is_empty())?.to_owned();
    let target = request_line.next().filter(|t| !t.is_empty())?.to_owned();
    if !request_line.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let host = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.trim().to_owned());
    Some(RequestHead { method, target, host })
}

/// The reply to write: a complete, static HTTP/1.1 response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallbackReply {
    /// The status code.
    pub status: u16,
    /// The HTML body (static text; nothing from the request is echoed).
    pub body: &'static str,
}

impl CallbackReply {
    fn new(status: u16, body: &'static str) -> Self {
        Self { status, body }
    }

    /// The whole response as bytes, with the headers RFC 9700 §4.2.4 asks for.
    pub fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            410 => "Gone",
            431 => "Request Header Fields Too Large",
            _ => "Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nPragma: no-cache\r\nReferrer-Policy: no-referrer\r\n\
             Content-Security-Policy: default-src 'none'\r\nX-Content-Type-Options: nosniff\r\n\
             X-Frame-Options: DENY\r\nConnection: close\r\n",
            self.status,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("Allow: GET\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }

    /// The reply for a head larger than [`MAX_CALLBACK_HEAD_BYTES`].
    pub fn too_large() -> Self {
        Self::new(431, PAGE_BAD_REQUEST)
    }

    /// The reply for bytes that are not an HTTP request, or that arrived too slowly.
    pub fn bad_request() -> Self {
        Self::new(400, PAGE_BAD_REQUEST)
    }
}

const PAGE_SUCCESS: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>byova: authorized</title></head>\
<body><h1>Authorization complete</h1><p>You can close this window and return to the terminal.</p></body></html>";
const PAGE_DENIED: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>byova: not authorized</title></head>\
<body><h1>Authorization was not granted</h1><p>You can close this window; the terminal says what happened.</p></body></html>";
const PAGE_BAD_REQUEST: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>byova</title></head>\
<body><h1>Bad request</h1></body></html>";
const PAGE_NOT_FOUND: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>byova</title></head>\
<body><h1>Not found</h1></body></html>";
const PAGE_GONE: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>byova</title></head>\
<body><h1>This authorization has already completed</h1></body></html>";

/// What a request to the listener means for the flow.
#[derive(Debug)]
pub enum CallbackVerdict {
    /// Not the callback (another path, a probe, a wrong `state`): keep waiting.
    KeepWaiting,
    /// The redirect with the matching `state` carried a code.
    Code(AuthorizationCode),
    /// The redirect with the matching `state` carried `error=`.
    Denied(String),
}

/// What [`CallbackHandler::decide`] concluded.
enum Decision {
    Final(CallbackReply, CallbackVerdict),
    StatelessError(String),
}

/// Decides what each request to the loopback listener means. One per authorization flow.
#[derive(Debug)]
pub struct CallbackHandler {
    path: String,
    expected_state: CsrfState,
    allowed_hosts: Vec<String>,
    finished: bool,
    rejected: u32,
    /// An `error=` redirect that carried no `state`: anyone could have sent it, so the flow
    /// keeps waiting, and reports it if nothing better arrives before the timeout.
    stateless_error: Option<String>,
}

impl CallbackHandler {
    /// A handler for `redirect` bound on `port`, expecting `state`.
    pub fn new(redirect: &LoopbackRedirect, port: u16, expected_state: CsrfState) -> Self {
        let mut allowed_hosts = vec![format!("{}:{port}", redirect.host)];
        if redirect.host == "localhost" {
            allowed_hosts.push(format!("127.0.0.1:{port}"));
        }
        if port == 80 {
            allowed_hosts.push(redirect.host.clone());
        }
        Self {
            path: redirect.path.clone(),
            expected_state,
            allowed_hosts,
            finished: false,
            rejected: 0,
            stateless_error: None,
        }
    }

    /// How many requests were refused so far (wrong path, method, host or `state`).
    pub fn rejected(&self) -> u32 {
        self.rejected
    }

    /// Decides one request. After a final verdict ([`CallbackVerdict::Code`] or
    /// [`CallbackVerdict::Denied`]) every later request gets 410.
    pub fn handle(&mut self, head: &RequestHead) -> (CallbackReply, CallbackVerdict) {
        let (reply, verdict) = match self.decide(head) {
            Decision::Final(reply, verdict) => (reply, verdict),
            Decision::StatelessError(error) => {
                self.stateless_error.get_or_insert(error);
                (CallbackReply::new(200, PAGE_DENIED), CallbackVerdict::KeepWaiting)
            }
        };
        match verdict {
            CallbackVerdict::KeepWaiting => self.rejected += 1,
            _ => self.finished = true,
        }
        (reply, verdict)
    }

    /// The error for a flow that reached its timeout: the state-less `error=` redirect seen
    /// meanwhile, if any ([`Error::OAuthRedirect`](crate::Error::OAuthRedirect)), else
    /// [`Error::OAuthRedirectTimeout`](crate::Error::OAuthRedirectTimeout).
    pub fn timed_out(&self, timeout: std::time::Duration) -> crate::Error {
        match &self.stateless_error {
            Some(error) => crate::Error::OAuthRedirect { error: error.clone() },
            None => crate::Error::OAuthRedirectTimeout(timeout),
        }
    }

    fn decide(&self, head: &RequestHead) -> Decision {
        let decision = self.decide_final(head);
        match decision {
            (_, CallbackVerdict::Denied(error)) if !self.state_in(head) => Decision::StatelessError(error),
            (reply, verdict) => Decision::Final(reply, verdict),
        }
    }

    fn state_in(&self, head: &RequestHead) -> bool {
        let query = head.target.split_once('?').map_or("", |(_, q)| q);
        form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "state")
    }

    fn decide_final(&self, head: &RequestHead) -> (CallbackReply, CallbackVerdict) {
        let keep = |status, body| (CallbackReply::new(status, body), CallbackVerdict::KeepWaiting);
        if self.finished {
            return keep(410, PAGE_GONE);
        }
        if !head.host.as_deref().is_some_and(|h| self.allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(h)))
        {
            return keep(400, PAGE_BAD_REQUEST);
        }
        let (path, query) = head.target.split_once('?').unwrap_or((&head.target, ""));
        if path != self.path {
            return keep(404, PAGE_NOT_FOUND);
        }
        if head.method != "GET" {
            return keep(405, PAGE_BAD_REQUEST);
        }
        let mut state = None;
        let mut code = None;
        let mut error = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "state" if state.is_none() => state = Some(v.into_owned()),
                "code" if code.is_none() => code = Some(v.into_owned()),
                "error" if error.is_none() => error = Some(v.into_owned()),
                _ => {}
            }
        }
        let state_matches = state.as_deref().is_some_and(|s| self.expected_state.ct_eq_str(s));
        // Webex may leave `state` off an error redirect (the reference cannot say): an `error=`
        // without any `state` is kept (see `timed_out`) but ends nothing, since any web page
        // could send it; a wrong `state` is refused.
        if !state_matches && (state.is_some() || error.is_none()) {
            return keep(400, PAGE_BAD_REQUEST);
        }
        if let Some(error) = error {
            let code = if !error.is_empty()
                && error.len() <= 64
                && error.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            {
                error
            } else {
                "an unrecognised error code".to_owned()
            };
            return (CallbackReply::new(200, PAGE_DENIED), CallbackVerdict::Denied(code));
        }
        match code.filter(|c| !c.is_empty()) {
            Some(code) => {
                (CallbackReply::new(200, PAGE_SUCCESS), CallbackVerdict::Code(AuthorizationCode::new(code)))
            }
            None => keep(400, PAGE_BAD_REQUEST),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, target: &str, host: &str) -> RequestHead {
        RequestHead { method: method.into(), target: target.into(), host: Some(host.into()) }
    }

    #[test]
    fn a_connection_reads_a_head_in_pieces_answers_once_and_closes_on_eof() {
        let handler = std::sync::Mutex::new(handler());
        let mut c = CallbackConnection::new();
        let request = b"GET /callback?state=S1&code=C HTTP/1.1\r\nHost: 127.0.0.1:8765\r\n\r\n";
        let (first, rest) = request.split_at(9);
        assert!(matches!(c.push(first, &handler), ConnectionStep::Read));
        let ConnectionStep::Answer(reply, Some(CallbackVerdict::Code(code))) = c.push(rest, &handler) else {
            panic!("the whole head completes the flow")
        };
        assert!(code.expose_secret() == "C" && reply.starts_with(b"HTTP/1.1 200"));
        assert!(matches!(CallbackConnection::new().push(b"", &handler), ConnectionStep::Close));
        let mut big = CallbackConnection::new();
        let step = big.push(&vec![b'a'; MAX_CALLBACK_HEAD_BYTES + 1], &handler);
        assert!(matches!(step, ConnectionStep::Answer(r, None) if r.starts_with(b"HTTP/1.1 431")));
        let mut junk = CallbackConnection::new();
        let step = junk.push(b"\x00\x01 nonsense\r\n\r\n", &handler);
        assert!(matches!(step, ConnectionStep::Answer(r, None) if r.starts_with(b"HTTP/1.1 400")));
    }

    fn handler() -> CallbackHandler {
        let r = LoopbackRedirect::parse("http://127.0.0.1:8765/callback").unwrap();
        CallbackHandler::new(&r, 8765, CsrfState::new("S1"))
    }

    #[test]
    fn redirect_uris_must_be_loopback_http() {
        let r = LoopbackRedirect::parse("http://127.0.0.1:8765/callback").unwrap();
        assert_eq!((r.bind_host(), r.port, r.path.as_str()), ("127.0.0.1", 8765, "/callback"));
        assert_eq!(LoopbackRedirect::parse("http://[::1]:9/cb").unwrap().bind_host(), "::1");
        assert_eq!(LoopbackRedirect::parse("http://localhost:0/cb").unwrap().bind_host(), "127.0.0.1");
        assert_eq!(
            LoopbackRedirect::parse("http://127.0.0.1:0/cb").unwrap().uri_with_port(4321),
            "http://127.0.0.1:4321/cb"
        );
        for bad in [
            "https://127.0.0.1:1/cb",
            "http://0.0.0.0:1/cb",
            "http://example.com/cb",
            "http://192.168.1.2:80/x",
            "http://127.0.0.1:99999/x",
            "http://127.0.0.1:1/x?y",
            "ftp://127.0.0.1/",
        ] {
            assert!(matches!(LoopbackRedirect::parse(bad), Err(Error::Configuration(_))), "{bad}");
        }
    }

    #[test]
    fn heads_are_assembled_across_reads_and_capped() {
        let mut r = HeadReader::new();
        assert_eq!(r.push(b"GET / HTTP/1.1\r\nHost: x\r"), HeadProgress::NeedMore);
        assert_eq!(r.push(b"\n\r"), HeadProgress::NeedMore);
        assert_eq!(r.push(b"\nBODY"), HeadProgress::Complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()));
        let mut big = HeadReader::new();
        let chunk = [b'a'; 1024];
        let outcomes: Vec<HeadProgress> = (0..9).map(|_| big.push(&chunk)).collect();
        assert_eq!(outcomes.last(), Some(&HeadProgress::TooLarge));
    }

    #[test]
    fn request_heads_parse() {
        let h = parse_request_head(b"GET /callback?code=1 HTTP/1.1\r\nHOST: 127.0.0.1:8765\r\nX: y\r\n\r\n")
            .unwrap();
        assert_eq!(h, head("GET", "/callback?code=1", "127.0.0.1:8765"));
        assert!(parse_request_head(b"garbage").is_none());
        assert!(parse_request_head(b"GET /x SPDY/3\r\n\r\n").is_none());
        assert!(parse_request_head(&[0xff, 0xfe]).is_none());
    }

    #[test]
    fn other_paths_methods_and_hosts_are_refused_without_ending_the_flow() {
        let mut h = handler();
        for (m, t, host, status) in [
            ("GET", "/favicon.ico", "127.0.0.1:8765", 404),
            ("GET", "/", "127.0.0.1:8765", 404),
            ("HEAD", "/callback?code=c&state=S1", "127.0.0.1:8765", 405),
            ("POST", "/callback?code=c&state=S1", "127.0.0.1:8765", 405),
            ("GET", "/callback?code=c&state=S1", "evil.example:8765", 400),
            ("GET", "/callback?code=c&state=WRONG", "127.0.0.1:8765", 400),
            ("GET", "/callback?code=c", "127.0.0.1:8765", 400),
            ("GET", "/callback?error=access_denied&state=WRONG", "127.0.0.1:8765", 400),
            ("GET", "/callback?state=S1", "127.0.0.1:8765", 400),
        ] {
            let (reply, verdict) = h.handle(&head(m, t, host));
            assert_eq!(reply.status, status, "{m} {t} {host}");
            assert!(matches!(verdict, CallbackVerdict::KeepWaiting));
        }
        assert_eq!(h.rejected(), 9);
        let (reply, verdict) = h.handle(&head("GET", "/callback?code=THE-CODE&state=S1", "127.0.0.1:8765"));
        assert_eq!(reply.status, 200);
        assert!(matches!(verdict, CallbackVerdict::Code(c) if c.expose_secret() == "THE-CODE"));
        let (reply, verdict) = h.handle(&head("GET", "/callback?code=THE-CODE&state=S1", "127.0.0.1:8765"));
        assert_eq!(reply.status, 410, "a replayed callback is refused");
        assert!(matches!(verdict, CallbackVerdict::KeepWaiting));
    }

    #[test]
    fn an_error_with_the_matching_state_ends_the_flow() {
        let mut h = handler();
        let (reply, verdict) = h.handle(&head(
            "GET",
            "/callback?error=access_denied&state=S1&error_description=%3Cscript%3E",
            "127.0.0.1:8765",
        ));
        assert_eq!(reply.status, 200);
        assert!(matches!(verdict, CallbackVerdict::Denied(ref e) if e == "access_denied"));
        let bytes = String::from_utf8(reply.to_bytes()).unwrap();
        assert!(!bytes.contains("script"));
        let mut h = handler();
        let (_, verdict) = h.handle(&head("GET", "/callback?error=%3Cb%3E&state=S1", "127.0.0.1:8765"));
        assert!(matches!(verdict, CallbackVerdict::Denied(ref e) if !e.contains('<')));
    }

    #[test]
    fn an_error_without_state_ends_nothing_but_is_reported_at_the_timeout() {
        let timeout = std::time::Duration::from_secs(1);
        let mut h = handler();
        let (_, verdict) =
            h.handle(&head("GET", "/callback?error=access_denied&state=WRONG", "127.0.0.1:8765"));
        assert!(matches!(verdict, CallbackVerdict::KeepWaiting));
        assert!(
            matches!(h.timed_out(timeout), crate::Error::OAuthRedirectTimeout(_)),
            "a wrong state is no answer"
        );
        let (_, verdict) = h.handle(&head("GET", "/callback?code=C", "127.0.0.1:8765"));
        assert!(matches!(verdict, CallbackVerdict::KeepWaiting), "a code never counts without the state");
        let (reply, verdict) = h.handle(&head("GET", "/callback?error=access_denied", "127.0.0.1:8765"));
        assert_eq!(reply.status, 200, "the user sees the denial page");
        assert!(matches!(verdict, CallbackVerdict::KeepWaiting), "any page could send it: the flow goes on");
        assert!(
            matches!(h.timed_out(timeout), crate::Error::OAuthRedirect { ref error } if error == "access_denied")
        );
        let (_, verdict) = h.handle(&head("GET", "/callback?code=C&state=S1", "127.0.0.1:8765"));
        assert!(matches!(verdict, CallbackVerdict::Code(_)), "the real redirect still completes the flow");
    }

    #[test]
    fn pages_carry_the_protective_headers_and_no_external_references() {
        let mut h = handler();
        let (reply, _) = h.handle(&head("GET", "/callback?code=SECRET-CODE&state=S1", "127.0.0.1:8765"));
        let text = String::from_utf8(reply.to_bytes()).unwrap();
        for header in [
            "Cache-Control: no-store",
            "Referrer-Policy: no-referrer",
            "Content-Security-Policy: default-src 'none'",
            "Content-Type: text/html; charset=utf-8",
            "Connection: close",
        ] {
            assert!(text.contains(header), "{header}");
        }
        assert!(!text.contains("SECRET-CODE") && !text.contains("S1"));
        assert!(!text.contains("http://") && !text.contains("https://") && !text.contains("<script"));
    }
}
