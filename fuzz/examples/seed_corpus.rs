//! Writes the seed corpus from the fake Webex server's real outputs:
//! `cargo run -p byova-fuzz --example seed_corpus` (then commit `fuzz/corpus`).
//!
//! Token responses are the fake's own answers on the wire (success, `invalid_grant`, 429 with
//! `Retry-After`); deliveries are its `serviceApp` bodies in every shape, signed; listener
//! heads are the requests a browser sends after the fake's authorize redirect; records are the
//! tokens the fake issued, plain and sealed, as the stores write them.

use std::path::{Path, PathBuf};

use byova_core::{
    InMemoryTokenStorage, OAuthTokens, SealedStorage, StorageKeys, TokenKey, WebhookSecret,
    backend::{BlockingCoordinatedTokenStorage, Expect},
    ids::encode_webex_id,
    webhook::ServiceAppEventKind,
};
use byova_fuzz::{LISTENER_STATE, STORAGE_KEY, WEBHOOK_SECRET};
use byova_testkit::wire;
use byova_testkit::{DeliveryShape, FakeWebex, Settings};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("the corpus folder");
    std::fs::write(dir.join(name), bytes).expect("a corpus file");
}

fn response_input(status: u16, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{status}\n").into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\n").as_bytes());
    }
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let fake = FakeWebex::start();
    let base = fake.base_url().to_owned();
    let creds = fake.integration_credentials();

    // Token responses, as the fake sends them.
    let dir = root.join("token_response");
    let issued = fake.issue_integration_tokens();
    let refresh = |token: &str| {
        let body = format!(
            "grant_type=refresh_token&client_id={}&client_secret={}&refresh_token={token}",
            creds.client_id,
            creds.client_secret.expose_secret()
        );
        let request = wire::request(
            byova_core::engine::Method::Post,
            &format!("{base}/access_token"),
            body.into_bytes(),
            &[("content-type", "application/x-www-form-urlencoded")],
        );
        wire::send(&request).expect("the fake answers")
    };
    let ok = refresh(&issued.refresh_token);
    write(&dir, "refresh-ok", &response_input(ok.status, &ok.headers, &ok.body));
    let dead = refresh("no-such-refresh-token");
    write(&dir, "refresh-invalid-grant", &response_input(dead.status, &dead.headers, &dead.body));
    let org = encode_webex_id("us", "ORGANIZATION", "63b02f90-9cc6-43b8-aa6d-cad425ac554c");
    let sa = fake.issue_service_app_tokens(&org);
    let sa_body = format!(
        "{{\"access_token\":\"{}\",\"expires_in\":{},\"refresh_token\":\"{}\",\"token_type\":\"Bearer\"}}",
        sa.access_token, sa.expires_in, sa.refresh_token
    );
    write(&dir, "service-app-ok", &response_input(200, &[], sa_body.as_bytes()));
    fake.update_settings(|s: &mut Settings| {
        s.token_rate_limit = Some((1, std::time::Duration::from_secs(60)))
    });
    let _ = refresh("warm-up");
    let limited = refresh("limited");
    write(&dir, "rate-limited", &response_input(limited.status, &limited.headers, &limited.body));

    // Stored records: the tokens above, as a store writes them, plain and sealed.
    let dir = root.join("stored_record");
    let tokens = byova_core::oauth::parse_token_response(
        &byova_core::engine::HttpResponse::new(ok.status, ok.headers.clone(), ok.body.to_vec()),
        byova_core::Timestamp::from_unix_secs(1_764_000_000),
        &byova_core::oauth::TokenCall::Refresh(byova_core::TokenSubject::Integration),
    )
    .expect("the fake's response parses");
    write(&dir, "integration", &tokens.to_json());
    let memory = std::sync::Arc::new(InMemoryTokenStorage::new());
    let keys = StorageKeys::parse(STORAGE_KEY).expect("the fuzz key");
    let inner: std::sync::Arc<dyn BlockingCoordinatedTokenStorage> = memory.clone();
    let sealed = SealedStorage::new(inner, Some(keys));
    let key = TokenKey::org(&byova_core::OrgId::from_static("fuzz-org"));
    BlockingCoordinatedTokenStorage::store(&sealed, &key, &tokens, Expect::Any).expect("stored");
    let raw =
        BlockingCoordinatedTokenStorage::load(&*memory, &key).expect("readable").expect("the sealed record");
    write(&dir, "sealed", &raw.value.to_json());
    let bare: OAuthTokens =
        OAuthTokens::from_json(br#"{"access_token":"a","expires_in":60,"obtained_at":0}"#)
            .unwrap_or_else(|_| tokens.clone());
    write(&dir, "minimal", &bare.to_json());

    // Deliveries in every shape the fake can send, signed with the fuzz secret.
    let dir = root.join("webhook_delivery");
    let secret = WebhookSecret::new(WEBHOOK_SECRET);
    for (shape, name) in [
        (DeliveryShape::Guide, "guide"),
        (DeliveryShape::CiscoSample, "cisco"),
        (DeliveryShape::Reconstruction, "recon"),
    ] {
        fake.update_settings(|s: &mut Settings| s.delivery_shape = shape);
        for kind in [ServiceAppEventKind::Authorized, ServiceAppEventKind::Deauthorized] {
            let (body, sig) = fake.service_app_delivery(kind, &org, Some(&secret));
            let mut input = sig.unwrap_or_default().into_bytes();
            input.push(b'\n');
            input.extend_from_slice(&body);
            write(&dir, &format!("{name}-{}", kind.as_str()), &input);
        }
    }

    // Org ids as deliveries carry them.
    let dir = root.join("org_id");
    write(&dir, "encoded", org.as_bytes());
    write(&dir, "uuid", b"63b02f90-9cc6-43b8-aa6d-cad425ac554c");
    write(&dir, "provider", fake.provider_org_id().as_bytes());

    // What a browser sends after the fake's authorize redirect.
    let dir = root.join("listener_head");
    let location = format!("/callback?code=fake-code-1&state={LISTENER_STATE}");
    for (i, target) in
        [location.as_str(), "/callback?error=access_denied&state=wrong", "/favicon.ico"].iter().enumerate()
    {
        let head = format!(
            "\u{7}GET {target} HTTP/1.1\r\nHost: 127.0.0.1:8765\r\nUser-Agent: Mozilla/5.0\r\nAccept: text/html\r\n\r\n"
        );
        write(&dir, &format!("browser-{i}"), head.as_bytes());
    }

    // Storage URLs of every scheme.
    let dir = root.join("storage_url");
    for (i, url) in [
        "memory:",
        "file:///var/lib/byova",
        "redis://:s3cretpass@127.0.0.1:6379/0?prefix=app",
        "rediss+cluster://user:pa%40ss@a:7001,b:7002/?prefix=x",
        "postgres://app:pgpass@db:5432/test?sslmode=verify-full&table=t",
        "mysql://root@127.0.0.1:3306/test?password=hunter22",
        "sqlite:///tmp/byova.db",
    ]
    .iter()
    .enumerate()
    {
        write(&dir, &format!("url-{i}"), url.as_bytes());
    }
    println!("seed corpus written under {}", root.display());
}
