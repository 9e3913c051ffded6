//! Coverage-guided fuzz targets for every parser of outside input, and what each must hold.
//!
//! Each target is a plain function of bytes, so the same checks run both under libFuzzer
//! (`cargo xtask fuzz`, the binaries in `fuzz_targets/`, built with the `libfuzzer` feature and
//! coverage instrumentation on the stable toolchain) and over the committed seed corpus and
//! every past crash in `cargo test` (this crate's tests). One input by hand, after a
//! `cargo xtask fuzz` build: `target/fuzz/<host triple>/release/<target> FILE`.
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
//! | `org_id` | an org id as a caller or a delivery gives it | [`OrgId::new`], [`OrgId::from_webhook`], [`decode_org_id`] |
//! | `storage_url` | a `BYOVA_STORAGE` URL | [`redact_url`], `RedisTokenStorage::open` |
//! | `jws` | a gateway's bearer: a JWS Webex's broker signed, or anything posing as one | [`JwsPolicy::inspect`], [`JwsPolicy::verify`], [`JwkSet::parse`] |

#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use sha1::Sha1;

use byova_core::{
    InMemoryTokenStorage, OAuthTokens, OrgId, SealedStorage, StorageKeys, Timestamp, TokenKey, TokenSubject,
    WebhookSecret,
    backend::{BlockingCoordinatedTokenStorage, decode_record, redact_url},
    engine::HttpResponse,
    ids::decode_org_id,
    jws::{JwkSet, JwsError, JwsPolicy},
    oauth::{CsrfState, TokenCall, parse_token_response},
    redirect::{
        CallbackConnection, CallbackHandler, CallbackVerdict, ConnectionStep, LoopbackRedirect,
        parse_request_head,
    },
    webhook::{WebhookGate, WebhookVerification, sign},
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
    Target { name: "jws", check: jws },
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

/// `body` with every secret field (as [`secret_values`] finds them) that holds `from` set to
/// `to` instead; other fields, which may hold the same text, stay as they are.
fn replaced(body: &[u8], from: &str, to: &str) -> Vec<u8> {
    fn walk(value: &mut serde_json::Value, from: &str, to: &str) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    if matches!(
                        key.as_str(),
                        "access_token" | "refresh_token" | "accessToken" | "refreshToken"
                    ) && v.as_str() == Some(from)
                    {
                        *v = serde_json::Value::String(to.to_owned());
                    } else {
                        walk(v, from, to);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| walk(v, from, to)),
            _ => {}
        }
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut value) => {
            walk(&mut value, from, to);
            serde_json::to_vec(&value).unwrap_or_else(|_| body.to_vec())
        }
        Err(_) => body.to_vec(),
    }
}

/// The `X-Spark-Signature` a delivery of `body` carries, computed without byova: HMAC-SHA1
/// of the raw body under the webhook secret, in hex.
fn expected_signature(body: &[u8]) -> String {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(WEBHOOK_SECRET.as_bytes()).expect("any key length");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// A delivery: admitted only under a valid signature, decided as an unsigned gate decides once
/// signed, and neither the secret nor the signature in any error.
pub fn webhook_delivery(data: &[u8]) {
    let (header, body) = first_line(data);
    let header = std::str::from_utf8(header).ok().filter(|h| !h.is_empty());
    let secret = WebhookSecret::new(WEBHOOK_SECRET);
    let signed_gate = WebhookGate::new(APPLICATION_ID, WebhookVerification::signed(vec![secret.clone()]));
    let open_gate = WebhookGate::new(APPLICATION_ID, WebhookVerification::UnsignedAllowed);

    let verdict = signed_gate.admit(body, header);
    match &verdict {
        Ok(_) => {
            let expected = expected_signature(body);
            let given = header.map(|h| h.trim().to_ascii_lowercase());
            assert_eq!(given.as_deref(), Some(expected.as_str()), "admitted without a valid signature");
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
        _ => TokenCall::ServiceAppFetch { org_id: OrgId::from_static("fuzz-org") },
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
                if let Some(CallbackVerdict::Code(_) | CallbackVerdict::Denied(_)) = verdict {
                    // The request line's query must carry exactly this state.
                    let end =
                        request.windows(4).position(|w| w == b"\r\n\r\n").map_or(request.len(), |i| i + 4);
                    let head = parse_request_head(&request[..end]).expect("a decided request has a head");
                    let query = head.target.split_once('?').map_or("", |(_, q)| q);
                    let states: Vec<&str> =
                        query.split('&').filter_map(|p| p.strip_prefix("state=")).collect();
                    assert!(
                        states.contains(&LISTENER_STATE),
                        "a redirect without the state was taken: {query:?}"
                    );
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
    let key = TokenKey::org(&OrgId::from_static("fuzz-org"));
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
    let inner: Arc<dyn BlockingCoordinatedTokenStorage> = Arc::new(memory);
    let sealed = SealedStorage::new(inner, Some(keys));
    match BlockingCoordinatedTokenStorage::load(&sealed, &key) {
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
    if let Ok(id) = OrgId::new(text) {
        assert!(!id.trim().is_empty(), "an org id normalized to nothing");
        let again = OrgId::new(&id).expect("a normalized org id normalizes");
        assert_eq!(again, id, "normalizing {text:?} twice gave two ids");
        let key = TokenKey::org(&id);
        assert_eq!(TokenKey::from_label(&key.label()), Some(key), "an org's label does not name it");
    }
    if let Ok(decoded) = decode_org_id(text) {
        let _ = decoded.len();
    }
    if let Ok(id) = OrgId::from_webhook(text) {
        assert_eq!(OrgId::new(&id).ok(), Some(id), "an org id from a delivery normalizes to another");
    }
}

/// Where a URL's secrets are, as a person writing it means them (whether or not it parses):
/// the password of the user info (after the first `:` of what precedes the authority's last
/// `@`), and the value of any query parameter whose name holds `pass`.
fn secret_ranges(url: &str) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    // Only a URL that starts with a scheme has an authority (a `://` later on, in the query
    // say, starts none).
    let Some(start) = url.find("://").map(|i| i + 3) else { return ranges };
    let scheme = &url.as_bytes()[..start - 3];
    let is_scheme = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme.iter().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b));
    if !is_scheme {
        return ranges;
    }
    let end = url[start..].find(['/', '?', '#']).map_or(url.len(), |i| start + i);
    if let Some(at) = url[start..end].rfind('@').map(|i| start + i)
        && let Some(colon) = url[start..at].find(':').map(|i| start + i)
        && colon + 1 < at
    {
        ranges.push(colon + 1..at);
    }
    if let Some(q) = url[end..].find('?').map(|i| end + i + 1) {
        let query_end = url[q..].find('#').map_or(url.len(), |i| q + i);
        let mut at = q;
        for pair in url[q..query_end].split('&') {
            if let Some((name, value)) = pair.split_once('=')
                && name.to_ascii_lowercase().contains("pass")
                && !value.is_empty()
            {
                let from = at + name.len() + 1;
                ranges.push(from..from + value.len());
            }
            at += pair.len() + 1;
        }
    }
    ranges
}

/// `url` with the characters in `ranges` replaced by other ASCII letters, but for those that
/// give a URL its shape (`@ / ? # : & =`): the redaction may rightly depend on where they are,
/// never on the rest.
fn with_other_secrets(url: &str, ranges: &[std::ops::Range<usize>]) -> String {
    url.char_indices()
        .map(|(i, c)| match ranges.iter().any(|r| r.contains(&i)) {
            true if "@/?#:&=".contains(c) => c,
            true if c == 'Q' => 'J',
            true => 'Q',
            false => c,
        })
        .collect()
}

/// A storage URL: nothing byova shows of it depends on its secrets. The redacted form is the
/// same whatever the password (non-interference: no coincidence between a password and the
/// rest of the URL can fool the check), and a Redis store's error or `Debug` never shows it.
pub fn storage_url(data: &[u8]) {
    let Ok(url) = std::str::from_utf8(data) else { return };
    let ranges = secret_ranges(url);
    let redacted = redact_url(url);
    if ranges.is_empty() {
        return;
    }
    let other = with_other_secrets(url, &ranges);
    assert_eq!(redacted, redact_url(&other), "the redacted form of {url:?} depends on its secrets");
    if url.starts_with("redis") {
        let shown = |url: &str| match byova_storage_redis::RedisTokenStorage::open(url) {
            Ok(store) => format!("{store:?}"),
            Err(e) => format!("{e} {e:?}"),
        };
        let text = shown(url);
        for range in &ranges {
            let secret = &url[range.clone()];
            assert_hidden(&text, secret, |replacement| {
                let mut again = url.to_owned();
                again.replace_range(range.clone(), replacement);
                shown(&again)
            });
        }
    }
}

#[cfg(test)]
mod tests;

/// The harness's own signing key (generated once per process, its private half never leaves
/// it) and the key set that publishes it.
struct Signer {
    pair: aws_lc_rs::rsa::KeyPair,
    keys: JwkSet,
}

fn signer() -> &'static Signer {
    use aws_lc_rs::signature::KeyPair as _;
    use base64::Engine as _;
    static SIGNER: std::sync::OnceLock<Signer> = std::sync::OnceLock::new();
    SIGNER.get_or_init(|| {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("an RSA key");
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let public = pair.public_key();
        let n = b64(public.modulus().big_endian_without_leading_zero());
        let e = b64(public.exponent().big_endian_without_leading_zero());
        let doc = format!(r#"{{"keys":[{{"kty":"RSA","kid":"fuzz","n":"{n}","e":"{e}"}}]}}"#);
        Signer { pair, keys: JwkSet::parse(doc.as_bytes()).expect("the harness's key set parses") }
    })
}

/// `claims` (raw bytes, as a broker could send them) signed RS256 by the harness's key.
fn signed(claims: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let input = format!("{}.{}", b64(br#"{"alg":"RS256","kid":"fuzz","typ":"JWT"}"#), b64(claims));
    let key = &signer().pair;
    let mut signature = vec![0; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut signature,
    )
    .expect("aws-lc-rs signs");
    format!("{input}.{}", b64(&signature))
}

/// The data source the `jws` target's policy expects.
const FUZZ_DATA_SOURCE: &str = "https://gateway.example.com/byova";
/// When the `jws` target verifies.
const FUZZ_NOW_SECS: u64 = 1_800_000_000;

/// A gateway's bearer, both ways. As a token: parsed and checked against Webex's issuers and
/// a key only the harness holds, it never passes. As the claims of a token the harness signs:
/// whatever passes holds every claim the policy requires (a trusted issuer, the data source's
/// URL and schema, an `exp` ahead, `aud`, `sub`, `jti`). No input panics; no refusal repeats
/// the input; any key set parses or is refused.
pub fn jws(data: &[u8]) {
    let _ = JwkSet::parse(data);
    let policy = JwsPolicy::new(FUZZ_DATA_SOURCE).expect("a data source URL");
    let now = Timestamp::from_unix_secs(FUZZ_NOW_SECS);
    let keys = &signer().keys;
    if let Ok(text) = std::str::from_utf8(data) {
        let refused = match policy.inspect(text) {
            Ok(jws) => {
                policy.verify(&jws, keys, now).expect_err("a token passed with a key only the harness holds")
            }
            Err(e) => e,
        };
        if text.trim().len() >= 24 {
            assert!(!refused.to_string().contains(text.trim()), "a refusal repeats the token: {refused}");
        }
    }
    // Signing costs a private-key operation: only claims that are a JSON object are worth it.
    if serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(data).is_err() {
        return;
    }
    let token = signed(data);
    match policy.inspect(&token).and_then(|jws| policy.verify(&jws, keys, now)) {
        Ok(claims) => {
            assert!(byova_core::jws::WEBEX_ISSUERS.contains(&claims.issuer.as_str()), "{claims:?}");
            assert_eq!(claims.data_source_url, FUZZ_DATA_SOURCE);
            assert!(claims.schema_id.eq_ignore_ascii_case(byova_core::jws::BYOVA_SCHEMA_ID));
            assert!(claims.expires_at.as_unix_secs() + 30 > FUZZ_NOW_SECS, "expired, yet passed: {claims:?}");
            assert!(!claims.jti.is_empty() && !claims.subject.is_empty() && !claims.audience.is_empty());
        }
        Err(refused) => {
            assert!(!matches!(refused, JwsError::KeysUnavailable(_) | JwsError::BadSignature), "{refused}");
        }
    }
}
