//! A deliberately small HTTP/1.1 client for tests: sends a byova-core [`HttpRequest`] to an
//! `http://` URL and returns the [`HttpResponse`], blocking or async. One request per
//! connection (`Connection: close`); no redirects are followed, so tests see every hop.
//!
//! It exists so tests can talk to the fake server and to loopback listeners without an HTTP
//! client crate, and so the bytes on the wire are exactly what the test wrote.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use byova_core::engine::{HttpRequest, HttpResponse, Method, RetryClass};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// An `http://host:port/path?query` URL split into its parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// `host:port` (the port defaults to 80).
    pub authority: String,
    /// The path and query, starting with `/`.
    pub path_and_query: String,
}

impl HttpUrl {
    /// Parses an `http://` URL.
    ///
    /// # Errors
    /// `InvalidInput` for anything but a plain `http://` URL.
    pub fn parse(url: &str) -> io::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "only http:// URLs are supported"))?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "URL has no host"));
        }
        let authority = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let path_and_query = if path.starts_with('?') { format!("/{path}") } else { path.to_owned() };
        Ok(Self { authority, path_and_query })
    }
}

/// A plain GET request for `url`.
pub fn get(url: &str) -> HttpRequest {
    request(Method::Get, url, Vec::new(), &[])
}

/// A request with the given method, body and headers.
pub fn request(method: Method, url: &str, body: Vec<u8>, headers: &[(&'static str, &str)]) -> HttpRequest {
    let req = HttpRequest::new(method, url.to_owned(), RetryClass::Idempotent).with_body(body.into());
    headers.iter().fold(req, |req, (name, value)| req.header(name, *value))
}

/// Encodes the request as HTTP/1.1 bytes.
pub fn encode(req: &HttpRequest, url: &HttpUrl) -> Vec<u8> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        req.method.as_str(),
        url.path_and_query,
        url.authority
    );
    for (name, value) in &req.headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value.expose());
        head.push_str("\r\n");
    }
    if !req.body.is_empty() || matches!(req.method, Method::Post | Method::Put) {
        head.push_str(&format!("Content-Length: {}\r\n", req.body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&req.body);
    bytes
}

/// Parses a complete HTTP/1.1 response (read until the server closed the connection).
///
/// # Errors
/// `InvalidData` when the bytes are not an HTTP response.
pub fn decode(raw: &[u8]) -> io::Result<HttpResponse> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status =
        status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let header =
        |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.truncate(len);
    }
    Ok(HttpResponse::new(status, headers, body))
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// The decoded value of query parameter `name` in `url` (a redirect's `code`, say).
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Sends `req` and waits for the whole response (blocking).
///
/// # Errors
/// Any I/O error, or `InvalidData` for a response that is not HTTP (including a connection
/// closed without a response, as the fake's `Drop` fault does).
pub fn send(req: &HttpRequest) -> io::Result<HttpResponse> {
    send_within(req, IO_TIMEOUT)
}

/// [`send`], giving up (and closing the connection) when a read or write waits longer than
/// `timeout`, as a webhook sender that stops waiting for a slow receiver does.
///
/// # Errors
/// As [`send`]; `WouldBlock` or `TimedOut` when it gave up.
pub fn send_within(req: &HttpRequest, timeout: Duration) -> io::Result<HttpResponse> {
    let url = HttpUrl::parse(&req.url)?;
    let mut stream = TcpStream::connect(&url.authority)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&encode(req, &url))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    decode(&raw)
}

/// Sends `req` and waits for the whole response (async, on tokio).
///
/// # Errors
/// As [`send`].
pub async fn send_async(req: &HttpRequest) -> io::Result<HttpResponse> {
    send_async_within(req, IO_TIMEOUT).await
}

/// [`send_async`], giving up after `timeout` (the connection is closed).
///
/// # Errors
/// As [`send`]; `TimedOut` when it gave up.
pub async fn send_async_within(req: &HttpRequest, timeout: Duration) -> io::Result<HttpResponse> {
    let url = HttpUrl::parse(&req.url)?;
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(&url.authority).await?;
        stream.write_all(&encode(req, &url)).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        decode(&raw)
    };
    tokio::time::timeout(timeout, io)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("no response in {timeout:?}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let u = HttpUrl::parse("http://127.0.0.1:8080/v1/x?y=1").unwrap();
        assert_eq!((u.authority.as_str(), u.path_and_query.as_str()), ("127.0.0.1:8080", "/v1/x?y=1"));
        assert_eq!(HttpUrl::parse("http://host").unwrap().authority, "host:80");
        assert_eq!(HttpUrl::parse("http://h:1?q").unwrap().path_and_query, "/?q");
        assert!(HttpUrl::parse("https://h/").is_err());
        assert!(HttpUrl::parse("http:///x").is_err());
    }

    #[test]
    fn decodes_lengths_and_chunks() {
        let r = decode(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhiEXTRA").unwrap();
        assert_eq!((r.status, &r.body[..], r.header("x-a")), (201, &b"hi"[..], Some("b")));
        let c =
            decode(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!(&c.body[..], b"abcde");
        assert!(decode(b"").is_err());
        assert!(decode(b"garbage\r\n\r\n").is_err());
    }
}
