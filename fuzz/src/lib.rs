//! Coverage-guided fuzz targets for every parser of outside input, and what each must hold.
//!
//! Each target is a plain function of bytes, so the same checks run three ways: under libFuzzer
//! (`cargo xtask fuzz`, the binaries in `fuzz_targets/`, built with the `libfuzzer` feature and
//! coverage instrumentation on the stable toolchain), over the committed seed corpus and every
//! past crash in `cargo test` (this crate's tests), and by hand on one file
//! (`cargo xtask fuzz --replay FILE`).
//!
//! What holds for every input, whatever the target: no panic; a typed error or a value that
//! round-trips; no secret from the input in an error's text or a value's `Debug`.
//!
//! | target | input | parser |
//! |---|---|---|
//! | `webhook_delivery` | first line: the `X-Spark-Signature` header (empty: none); then the body | [`WebhookGate::admit`] |
//! | `token_response` | first line: the status; then `Name: value` lines; a blank line; the body | [`parse_token_response`] |
//! | `listener_head` | first byte: the read size; then what the browser sent | [`CallbackConnection`], [`parse_request_head`] |
//! | `stored_record` | a record as a store holds it | [`decode_record`], [`SealedStorage`] |
//! | `org_id` | an org id as a caller or a delivery gives it | [`normalize_org_id`], [`decode_org_id`] |
//! | `storage_url` | a `BYOVA_STORAGE` URL | [`redact_url`], `RedisTokenStorage::open` |

#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex};

use byova_core::{
    BlockingTokenStorage, CallbackConnection, CallbackHandler, CallbackVerdict, ConnectionStep, CsrfState,
    HttpResponse, InMemoryTokenStorage, LoopbackRedirect, OAuthTokens, SealedStorage, StorageKeys, Timestamp,
    TokenCall, TokenKey, TokenSubject, WebhookGate, WebhookSecret, decode_org_id, decode_record,
    normalize_org_id, parse_request_head, parse_token_response, redact_url, sign, verify_signature,
};

/// One fuzz target: its name (the binary's and the corpus folder's) and its check.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// The name.
    pub name: &'static str,
    /// Runs one input; panics when something that must hold does not.
    pub check: fn(&[u8]),
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target { name: "webhook_delivery", check: webhook_delivery },
    Target { name: "token_response", check: token_response },
    Target { name: "listener_head", check: listener_head },
    Target { name: "stored_record", check: stored_record },
    Target { name: "org_id", check: org_id },
    Target { name: "storage_url", check: storage_url },
];

/// The webhook secret deliveries are checked against.
pub const WEBHOOK_SECRET: &str = "fuzz-webhook-secret-5d1c09a7e3";
/// The Service App the gate admits deliveries for.
pub const APPLICATION_ID: &str = "fuzz-application";
/// The `state` the listener waits for.
pub const LISTENER_STATE: &str = "fuzzstate0123456789abc";
/// The storage key sealed records are opened with (base64 of 32 bytes).
pub const STORAGE_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Splits off the first line (without its `\n`).
fn first_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Panics when `text` shows `secret`, unless the text shows it even when the input carries a
/// different secret of the same length (the value then coincides with fixed wording).
fn assert_hidden(text: &str, secret: &str, same_text_without: impl FnOnce(&str) -> String) {
    if secret.len() < 8 || !text.contains(secret) {
        return;
    }
    let other: String = secret.chars().map(|c| if c == 'Q' { 'J' } else { 'Q' }).collect();
    let control = same_text_without(&other);
    assert!(control.contains(secret), "a secret from the input shows in {text:?}");
}

/// The values a JSON body gives its secret fields (`access_token`, `refresh_token`) wherever
/// they are nested.
fn secret_values(body: &[u8]) -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    if matches!(
                        key.as_str(),
                        "access_token" | "refresh_token" | "accessToken" | "refreshToken"
                    ) && let Some(s) = v.as_str()
                    {
                        out.push(s.to_owned());
                    }
                    walk(v, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        walk(&value, &mut out);
    }
    out
}

/// Replaces every occurrence of `from` in `bytes` by `to` (same length: offsets stay).
fn replaced(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    if text.as_bytes() == bytes { text.replace(from, to).into_bytes() } else { bytes.to_vec() }
}

/// A delivery: admitted only under a valid signature, decided as an unsigned gate decides once
/// signed, and neither the secret nor the signature in any error.
pub fn webhook_delivery(data: &[u8]) {
    let (header, body) = first_line(data);
    let header = std::str::from_utf8(header).ok().filter(|h| !h.is_empty());
    let secret = WebhookSecret::new(WEBHOOK_SECRET);
    let signed_gate = WebhookGate::new(APPLICATION_ID, vec![secret.clone()]);
    let open_gate = WebhookGate::new(APPLICATION_ID, Vec::new());

    let verdict = signed_gate.admit(body, header);
    match &verdict {
        Ok(_) => {
            assert!(verify_signature(&secret, body, header).is_ok(), "admitted without a valid signature")
        }
        Err(e) => {
            let text = format!("{e} {e:?}");
            assert!(!text.contains(WEBHOOK_SECRET), "the webhook secret shows in {text:?}");
        }
    }
    let good = sign(&secret, body);
    let resigned = signed_gate.admit(body, Some(&good));
    let unsigned = open_gate.admit(body, None);
    assert_eq!(format!("{resigned:?}"), format!("{unsigned:?}"), "a signed delivery decided differently");
    if let Err(e) = &resigned {
        let text = format!("{e} {e:?}");
        assert!(!text.contains(&good), "the signature shows in {text:?}");
    }
}

/// Builds the response a `token_response` input describes.
fn response_of(data: &[u8]) -> HttpResponse {
    let (status, mut rest) = first_line(data);
    let status = std::str::from_utf8(status).ok().and_then(|s| s.trim().parse::<u16>().ok()).unwrap_or(200);
    let mut headers = Vec::new();
    loop {
        let (line, after) = first_line(rest);
        rest = after;
        if line.is_empty() {
            break;
        }
        let line = String::from_utf8_lossy(line);
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    HttpResponse::new(status, headers, rest.to_vec())
}

const SENT_AT: Timestamp = Timestamp::from_unix_millis(1_764_000_000_000);

fn token_call(data: &[u8]) -> TokenCall {
    match data.len() % 3 {
        0 => TokenCall::CodeExchange,
        1 => TokenCall::Refresh(TokenSubject::Integration),
        _ => TokenCall::ServiceAppFetch { org_id: "fuzz-org".into() },
    }
}

/// Asserts a token set survives the store's encoding, and its `Debug` hides the tokens.
fn assert_round_trips(tokens: &OAuthTokens) {
    let json = tokens.to_json();
    let again = OAuthTokens::from_json(&json).expect("a token set's own JSON reads back");
    assert_eq!(again.to_json(), json, "a token set changed through the store's encoding");
    // Debug must not change with the tokens' values: the same set with other values prints
    // the same, so nothing of the values shows.
    let mut other = tokens.clone();
    let swap = |s: &str| s.chars().map(|c| if c == 'Q' { 'J' } else { 'Q' }).collect::<String>();
    other.access_token = byova_core::AccessToken::new(swap(tokens.access_token.expose_secret()));
    other.refresh_token =
        tokens.refresh_token.as_ref().map(|r| byova_core::RefreshToken::new(swap(r.expose_secret())));
    assert_eq!(format!("{tokens:?}"), format!("{other:?}"), "Debug shows a token");
}

/// A token-endpoint response: tokens that round-trip through the store's encoding, or an
/// error that shows no token from the body.
pub fn token_response(data: &[u8]) {
    let response = response_of(data);
    let call = token_call(data);
    match parse_token_response(&response, SENT_AT, &call) {
        Ok(tokens) => {
            assert!(!tokens.access_token.expose_secret().is_empty(), "an empty access token was accepted");
            assert!(tokens.expires_at() >= SENT_AT, "a token expired before it was asked for");
            assert_round_trips(&tokens);
        }
        Err(e) => {
            let text = format!("{e} {e:?}");
            for secret in secret_values(&response.body) {
                // Only the body's copy changes: a header may carry the same text.
                assert_hidden(&text, &secret, |other| {
                    let body = replaced(&response.body, &secret, other);
                    let again = HttpResponse::new(response.status, response.headers.clone(), body);
                    match parse_token_response(&again, SENT_AT, &call) {
                        Ok(_) => String::new(),
                        Err(e) => format!("{e} {e:?}"),
                    }
                });
            }
        }
    }
}

/// What the browser sends the loopback listener, read in pieces of the size the first byte
/// gives: a complete static reply or a close, never a panic; a code only for the right
/// `state`; and a head that parses parses the same once written out again.
pub fn listener_head(data: &[u8]) {
    let Some((size, request)) = data.split_first() else { return };
    let size = usize::from(*size % 64) + 1;
    let redirect = LoopbackRedirect::parse("http://127.0.0.1:8765/callback").expect("a valid redirect");
    let handler = Mutex::new(CallbackHandler::new(&redirect, 8765, CsrfState::new(LISTENER_STATE)));
    let replies = [200, 400, 403, 404, 405, 421, 431];
    let mut connection = CallbackConnection::new();
    for piece in request.chunks(size).chain(std::iter::once(&[][..])) {
        match connection.push(piece, &handler) {
            ConnectionStep::Read => {}
            ConnectionStep::Close => break,
            ConnectionStep::Answer(reply, verdict) => {
                let text = String::from_utf8(reply).expect("replies are text");
                let status: u16 = text.get(9..12).and_then(|s| s.parse().ok()).expect("a status line");
                assert!(text.starts_with("HTTP/1.1 ") && replies.contains(&status), "odd reply {text:?}");
                let sent = String::from_utf8_lossy(request);
                if let Some(CallbackVerdict::Code(_) | CallbackVerdict::Denied(_)) = verdict {
                    assert!(sent.contains(LISTENER_STATE), "a redirect without the state was taken");
                }
                break;
            }
        }
    }
    if let Some(head) = parse_request_head(request) {
        let host = head.host.as_deref().map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
        let again = format!("{} {} HTTP/1.1\r\n{host}\r\n", head.method, head.target);
        if !head.method.contains(' ') && !head.target.contains(' ') && !host.contains("\r\n\r\n") {
            assert_eq!(parse_request_head(again.as_bytes()), Some(head), "a request head did not round-trip");
        }
    }
}

/// A stored record, plain and through the sealing layer: tokens that round-trip, or a
/// corrupt-record error that shows no token.
pub fn stored_record(data: &[u8]) {
    let key = TokenKey::org("fuzz-org");
    match decode_record(data, &key, "fuzz") {
        Ok(tokens) => assert_round_trips(&tokens),
        Err(e) => {
            let text = format!("{e} {e:?}");
            for secret in secret_values(data) {
                assert_hidden(&text, &secret, |other| {
                    match decode_record(&replaced(data, &secret, other), &key, "fuzz") {
                        Ok(_) => String::new(),
                        Err(e) => format!("{e} {e:?}"),
                    }
                });
            }
        }
    }
    let memory = InMemoryTokenStorage::new();
    memory.put_raw_record(&key, data.to_vec());
    let keys = StorageKeys::parse(STORAGE_KEY).expect("a valid key");
    let inner: Arc<dyn BlockingTokenStorage> = Arc::new(memory);
    let sealed = SealedStorage::new(inner, Some(keys));
    match BlockingTokenStorage::load(&sealed, &key) {
        Ok(Some(record)) => assert_round_trips(&record.value),
        Ok(None) => panic!("a record put in the store was not found"),
        Err(e) => {
            let text = format!("{e} {e:?}");
            assert!(!text.contains(STORAGE_KEY), "the storage key shows in {text:?}");
        }
    }
}

/// An org id: normalizing is idempotent and never yields an empty id; decoding a Webex id
/// gives text or a typed error.
pub fn org_id(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = normalize_org_id(text) {
        assert!(!id.trim().is_empty(), "an org id normalized to nothing");
        let again = normalize_org_id(&id).expect("a normalized org id normalizes");
        assert_eq!(again, id, "normalizing {text:?} twice gave two ids");
        let _ = TokenKey::org(id);
    }
    if let Ok(decoded) = decode_org_id(text) {
        let _ = decoded.len();
    }
}

/// A storage URL: its redacted form (and any error or `Debug` a store gives for it) never
/// shows the password, whether in the URL's user info or its query.
pub fn storage_url(data: &[u8]) {
    let Ok(url) = std::str::from_utf8(data) else { return };
    let redacted = redact_url(url);
    let mut secrets = Vec::new();
    if let Ok(parsed) = url::Url::parse(url) {
        if let Some(password) = parsed.password() {
            secrets.push(password.to_owned());
            if let Ok(decoded) = percent_decode(password) {
                secrets.push(decoded);
            }
        }
        for (name, value) in parsed.query_pairs() {
            if name.contains("pass") {
                secrets.push(value.into_owned());
            }
        }
    }
    // A secret also written outside the user info and query (as the scheme or the host, say)
    // may show; a very short one matches fixed text by chance.
    let visible = {
        let scheme = url.split(':').next().unwrap_or_default();
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        format!("{scheme} {}", rest.split(['?', '#']).next().unwrap_or_default())
    };
    let secrets: Vec<String> =
        secrets.into_iter().filter(|s| s.len() >= 5 && !visible.contains(s.as_str())).collect();
    let mut texts = vec![redacted];
    if url.starts_with("redis") {
        match byova_storage_redis::RedisTokenStorage::open(url) {
            Ok(store) => texts.push(format!("{store:?}")),
            Err(e) => texts.push(format!("{e} {e:?}")),
        }
    }
    for text in &texts {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "the password shows in {text:?}");
        }
    }
}

fn percent_decode(text: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
}

#[cfg(test)]
mod tests;
