use std::time::Duration;

use super::*;
use crate::storage::{BlockingTokenStorage, InMemoryTokenStorage};

const NOW: Timestamp = Timestamp::from_unix_secs(1_800_000_000);

fn config() -> ByovaConfig {
    ByovaConfig::with_base_url("https://webex.test/v1").unwrap()
}

fn int_creds() -> IntegrationCredentials {
    IntegrationCredentials::new("Cint", "int-secret")
}

fn sa_creds() -> ServiceAppCredentials {
    ServiceAppCredentials::new("Csa", "sa-secret")
}

fn tokens(access: &str, refresh: Option<&str>, obtained: Timestamp, expires_in: u64) -> OAuthTokens {
    let t = OAuthTokens::new(AccessToken::new(access), expires_in, obtained);
    match refresh {
        Some(r) => t.with_refresh_token(RefreshToken::new(r), Some(7_775_999)),
        None => t,
    }
}

fn expired(access: &str, refresh: &str) -> OAuthTokens {
    tokens(access, Some(refresh), NOW.saturating_sub(Duration::from_secs(10_000)), 3600)
}

fn refresh_ahead(access: &str, refresh: &str) -> OAuthTokens {
    // 90 % of the lifetime gone: past refresh-ahead, not expired.
    tokens(access, Some(refresh), NOW.saturating_sub(Duration::from_secs(3240)), 3600)
}

fn ok_body(access: &str, refresh: Option<&str>) -> HttpResponse {
    let body = match refresh {
        Some(r) => format!(r#"{{"access_token":"{access}","expires_in":3600,"refresh_token":"{r}"}}"#),
        None => format!(r#"{{"access_token":"{access}","expires_in":3600}}"#),
    };
    HttpResponse::new(200, vec![], body.into_bytes())
}

fn status(code: u16, headers: &[(&str, &str)], body: &str) -> HttpResponse {
    HttpResponse::new(
        code,
        headers.iter().map(|(n, v)| ((*n).into(), (*v).into())).collect(),
        body.as_bytes().to_vec(),
    )
}

fn form_field(req: &HttpRequest, name: &str) -> Option<String> {
    form_urlencoded::parse(&req.body).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// What a run did, for assertions.
#[derive(Default)]
struct Trace {
    sent: Vec<HttpRequest>,
    sleeps: Vec<Duration>,
    integration_tokens_asked: u32,
    stores: u32,
}

/// A synchronous driver over the in-memory store; `respond` plays Webex.
fn drive(
    storage: &InMemoryTokenStorage,
    client: RefreshClient<'_>,
    key: TokenKey,
    mode: RefreshMode,
    respond: impl FnMut(&HttpRequest, &InMemoryTokenStorage) -> Result<HttpResponse>,
) -> (Outcome, Trace) {
    drive_with(storage, client, key, mode, None, respond)
}

/// [`drive`] over any blocking store, optionally with tokens an earlier run could not store.
fn drive_with<S: BlockingTokenStorage + ?Sized>(
    storage: &S,
    client: RefreshClient<'_>,
    key: TokenKey,
    mode: RefreshMode,
    unsaved: Option<(OAuthTokens, Expect)>,
    mut respond: impl FnMut(&HttpRequest, &S) -> Result<HttpResponse>,
) -> (Outcome, Trace) {
    let config = config();
    let mut m = RefreshMachine::new(&config, client, key, mode, 7, 42).with_unsaved(unsaved);
    let mut trace = Trace::default();
    let mut step = m.start();
    for _ in 0..10_000 {
        step = match step {
            Step::Load(k) => m.on_loaded(storage.load(&k), NOW),
            Step::AcquireLease(k, ttl) => m.on_lease(storage.try_acquire_lease(&k, ttl), NOW),
            Step::Sleep(d) => {
                trace.sleeps.push(d);
                m.on_slept()
            }
            Step::NeedIntegrationToken => {
                trace.integration_tokens_asked += 1;
                m.on_integration_token(Ok(AccessToken::new("INT-BEARER")))
            }
            Step::Send(req) => {
                let resp = respond(&req, storage);
                trace.sent.push(req);
                m.on_response(resp, NOW, NOW)
            }
            Step::Store(k, t, expect) => {
                trace.stores += 1;
                m.on_stored(storage.store(&k, &t, expect))
            }
            Step::Release(lease) => {
                storage.release_lease(&lease).unwrap();
                m.on_released()
            }
            Step::ExtendLease(lease, ttl) => m.on_lease_extended(storage.extend_lease(&lease, ttl), NOW),
            Step::Done(outcome) => return (outcome, trace),
        };
    }
    panic!("the machine did not finish");
}

fn seeded(key: &TokenKey, t: OAuthTokens) -> InMemoryTokenStorage {
    let s = InMemoryTokenStorage::new();
    s.store(key, &t, Expect::Absent).unwrap();
    s
}

fn never(_: &HttpRequest, _: &InMemoryTokenStorage) -> Result<HttpResponse> {
    panic!("no request was expected")
}

#[test]
fn a_fresh_token_needs_no_request() {
    let key = TokenKey::Integration;
    let s = seeded(&key, tokens("A", Some("R"), NOW, 3600));
    let creds = int_creds();
    let (out, trace) = drive(&s, RefreshClient::Integration(&creds), key, RefreshMode::GetValid, never);
    assert!(out.result.unwrap().value.access_token.ct_eq_str("A"));
    assert!(!out.refreshed);
    assert_eq!(trace.stores, 0);
}

#[test]
fn an_expired_token_is_refreshed_stored_and_returned() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R1"));
    let creds = int_creds();
    let (out, trace) =
        drive(&s, RefreshClient::Integration(&creds), key.clone(), RefreshMode::GetValid, |req, _| {
            assert_eq!(form_field(req, "refresh_token").as_deref(), Some("R1"));
            assert_eq!(form_field(req, "client_id").as_deref(), Some("Cint"));
            Ok(ok_body("NEW", Some("R2")))
        });
    let rec = out.result.unwrap();
    assert!(out.refreshed);
    assert!(rec.value.access_token.ct_eq_str("NEW"));
    let stored = s.load(&key).unwrap().unwrap();
    assert_eq!(stored.version, rec.version, "stored before it was returned");
    assert!(stored.value.refresh_token.unwrap().ct_eq_str("R2"));
    assert_eq!(trace.sent.len(), 1);
    assert!(s.try_acquire_lease(&key, Duration::from_secs(1)).unwrap().is_some(), "the lease was released");
}

#[test]
fn refresh_keeps_old_refresh_token_when_response_omits_it() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "KEEP-ME"));
    let creds = int_creds();
    let (out, _) =
        drive(&s, RefreshClient::Integration(&creds), key.clone(), RefreshMode::GetValid, |_, _| {
            Ok(ok_body("NEW", None))
        });
    assert!(out.result.unwrap().value.refresh_token.unwrap().ct_eq_str("KEEP-ME"));
    assert!(s.load(&key).unwrap().unwrap().value.refresh_token.unwrap().ct_eq_str("KEEP-ME"));
}

#[test]
fn server_errors_are_retried_with_backoff_then_succeed() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R"));
    let creds = int_creds();
    let mut n = 0;
    let (out, trace) = drive(&s, RefreshClient::Integration(&creds), key, RefreshMode::GetValid, |_, _| {
        n += 1;
        if n < 3 { Ok(status(503, &[], "")) } else { Ok(ok_body("NEW", Some("R"))) }
    });
    assert!(out.result.is_ok());
    assert_eq!(trace.sent.len(), 3);
    assert_eq!(trace.sleeps.len(), 2);
    assert!(
        trace.sleeps[1] >= trace.sleeps[0] / 2 && trace.sleeps.iter().all(|d| *d <= Duration::from_secs(5))
    );
}

#[test]
fn rate_limits_wait_exactly_retry_after() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R"));
    let creds = int_creds();
    let mut n = 0;
    let (out, trace) = drive(&s, RefreshClient::Integration(&creds), key, RefreshMode::GetValid, |_, _| {
        n += 1;
        if n == 1 {
            Ok(status(429, &[("Retry-After", "2")], "<html>"))
        } else {
            Ok(ok_body("NEW", Some("R")))
        }
    });
    assert!(out.result.is_ok());
    assert_eq!(trace.sleeps, [Duration::from_secs(2)]);
}

#[test]
fn a_failed_refresh_serves_the_old_token_while_it_is_really_valid() {
    let key = TokenKey::Integration;
    let s = seeded(&key, refresh_ahead("STILL-GOOD", "R"));
    let creds = int_creds();
    let (out, trace) =
        drive(&s, RefreshClient::Integration(&creds), key.clone(), RefreshMode::GetValid, |_, _| {
            Ok(status(500, &[], ""))
        });
    assert!(out.result.unwrap().value.access_token.ct_eq_str("STILL-GOOD"));
    assert!(matches!(out.served_stale_after, Some(Error::Server(_))));
    assert_eq!(trace.sent.len(), 4, "the retry budget was spent first");
    assert!(s.load(&key).unwrap().unwrap().value.refresh_token.unwrap().ct_eq_str("R"), "nothing dropped");
}

#[test]
fn a_failed_refresh_of_a_dead_token_is_an_error_and_keeps_the_record() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R"));
    let creds = int_creds();
    let (out, _) =
        drive(&s, RefreshClient::Integration(&creds), key.clone(), RefreshMode::GetValid, |_, _| {
            Err(Error::Transport { message: "reset".into(), maybe_sent: true })
        });
    assert!(matches!(out.result, Err(Error::Transport { .. })));
    assert!(s.load(&key).unwrap().is_some());
}

#[test]
fn invalid_grant_for_the_stored_token_requires_reauthorization_and_keeps_the_record() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "DEAD"));
    let creds = int_creds();
    let (out, trace) =
        drive(&s, RefreshClient::Integration(&creds), key.clone(), RefreshMode::GetValid, |_, _| {
            Ok(status(400, &[], r#"{"error":"invalid_grant"}"#))
        });
    assert!(matches!(
        out.result,
        Err(Error::ReauthorizationRequired { subject: TokenSubject::Integration, .. })
    ));
    assert_eq!(trace.sent.len(), 1, "invalid_grant is not retried");
    assert!(s.load(&key).unwrap().is_some(), "the record is kept");
}

#[test]
fn invalid_grant_after_another_replica_rotated_uses_the_stored_token() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R1"));
    let creds = int_creds();
    let (out, trace) =
        drive(&s, RefreshClient::Integration(&creds), key.clone(), RefreshMode::GetValid, |req, storage| {
            if form_field(req, "refresh_token").as_deref() == Some("R1") {
                // Another replica rotated R1 → R2 but stored an expired access token with it.
                let cur = storage.load(&TokenKey::Integration).unwrap().unwrap();
                storage
                    .store(&TokenKey::Integration, &expired("OTHER", "R2"), Expect::Version(cur.version))
                    .unwrap();
                Ok(status(400, &[], r#"{"error":"invalid_grant"}"#))
            } else {
                assert_eq!(form_field(req, "refresh_token").as_deref(), Some("R2"));
                Ok(ok_body("NEW", Some("R3")))
            }
        });
    assert!(out.result.unwrap().value.access_token.ct_eq_str("NEW"));
    assert_eq!(trace.sent.len(), 2);
}

#[test]
fn a_service_app_falls_back_to_fetching_with_the_integration_bearer() {
    let key = TokenKey::org("o1");
    let s = seeded(&key, expired("OLD", "DEAD"));
    let creds = sa_creds();
    let (out, trace) =
        drive(&s, RefreshClient::ServiceApp(&creds), key.clone(), RefreshMode::GetValid, |req, _| {
            if req.url.ends_with("/access_token") {
                Ok(status(400, &[], r#"{"message":"bad","errors":[]}"#))
            } else {
                assert_eq!(req.header_value("authorization"), Some("Bearer INT-BEARER"));
                Ok(ok_body("FETCHED", Some("NEWR")))
            }
        });
    assert!(out.result.unwrap().value.access_token.ct_eq_str("FETCHED"));
    assert_eq!(trace.integration_tokens_asked, 1);
    assert!(s.load(&key).unwrap().unwrap().value.refresh_token.unwrap().ct_eq_str("NEWR"));
}

#[test]
fn missing_records_are_typed_errors_and_force_refresh_of_an_org_fetches() {
    let s = InMemoryTokenStorage::new();
    let (i, sa) = (int_creds(), sa_creds());
    let (out, _) =
        drive(&s, RefreshClient::Integration(&i), TokenKey::Integration, RefreshMode::GetValid, never);
    assert!(matches!(out.result, Err(Error::NotAuthorized)));
    let (out, _) =
        drive(&s, RefreshClient::ServiceApp(&sa), TokenKey::org("o"), RefreshMode::GetValid, never);
    assert!(matches!(out.result, Err(Error::OrgNotRegistered { ref org_id }) if org_id == "o"));
    let (out, trace) =
        drive(&s, RefreshClient::ServiceApp(&sa), TokenKey::org("o"), RefreshMode::Force(None), |_, _| {
            Ok(ok_body("F", Some("R")))
        });
    assert!(out.result.is_ok());
    assert_eq!(trace.integration_tokens_asked, 1);
    let (out, _) = drive(
        &s,
        RefreshClient::Integration(&i),
        TokenKey::Integration,
        RefreshMode::Force(Some(RefreshToken::new("EXPLICIT"))),
        |req, _| {
            assert_eq!(form_field(req, "refresh_token").as_deref(), Some("EXPLICIT"));
            Ok(ok_body("X", None))
        },
    );
    let rec = out.result.unwrap();
    assert!(
        rec.value.refresh_token.unwrap().ct_eq_str("EXPLICIT"),
        "an explicit token is kept when none comes back"
    );
}

#[test]
fn a_lease_held_elsewhere_waits_for_the_other_refresh() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R"));
    let other = s.try_acquire_lease(&key, Duration::from_secs(60)).unwrap().unwrap();
    let config = config();
    let creds = int_creds();
    let mut m = RefreshMachine::new(
        &config,
        RefreshClient::Integration(&creds),
        key.clone(),
        RefreshMode::GetValid,
        1,
        1,
    );
    let mut step = m.start();
    let mut polls = 0;
    let out = loop {
        step = match step {
            Step::Load(k) => m.on_loaded(s.load(&k), NOW),
            Step::AcquireLease(k, ttl) => m.on_lease(s.try_acquire_lease(&k, ttl), NOW),
            Step::Sleep(_) => {
                polls += 1;
                if polls == 3 {
                    // The other process finishes its refresh.
                    let cur = s.load(&key).unwrap().unwrap();
                    s.store(&key, &tokens("BY-OTHER", Some("R"), NOW, 3600), Expect::Version(cur.version))
                        .unwrap();
                    s.release_lease(&other).unwrap();
                }
                m.on_slept()
            }
            Step::Done(o) => break o,
            other => panic!("unexpected step {other:?}"),
        };
    };
    assert!(out.result.unwrap().value.access_token.ct_eq_str("BY-OTHER"));
    assert_eq!(polls, 3);
}

#[test]
fn a_lease_held_elsewhere_with_a_still_valid_token_returns_it_at_once() {
    let key = TokenKey::Integration;
    let s = seeded(&key, refresh_ahead("OK-FOR-NOW", "R"));
    let _other = s.try_acquire_lease(&key, Duration::from_secs(60)).unwrap().unwrap();
    let creds = int_creds();
    let (out, trace) = drive(&s, RefreshClient::Integration(&creds), key, RefreshMode::GetValid, never);
    assert!(out.result.unwrap().value.access_token.ct_eq_str("OK-FOR-NOW"));
    assert!(trace.sleeps.is_empty());
}

#[test]
fn a_holder_that_lost_its_lease_does_not_spend_the_refresh_token() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R1"));
    let config = config();
    let creds = int_creds();
    let mut m = RefreshMachine::new(
        &config,
        RefreshClient::Integration(&creds),
        key.clone(),
        RefreshMode::GetValid,
        1,
        1,
    );
    let mut step = m.start();
    let mut sent = 0;
    let out = loop {
        step = match step {
            Step::Load(k) => m.on_loaded(s.load(&k), NOW),
            Step::AcquireLease(k, _) => {
                // Our lease is so short it lapses before we send; a successor takes over.
                let ours = s.try_acquire_lease(&k, Duration::from_millis(1)).unwrap();
                std::thread::sleep(Duration::from_millis(5));
                let successor = s.try_acquire_lease(&k, Duration::from_secs(60)).unwrap().unwrap();
                let cur = s.load(&k).unwrap().unwrap();
                s.store(&k, &tokens("BY-SUCCESSOR", Some("R2"), NOW, 3600), Expect::Version(cur.version))
                    .unwrap();
                s.release_lease(&successor).unwrap();
                m.on_lease(Ok(ours), NOW)
            }
            Step::ExtendLease(lease, ttl) => m.on_lease_extended(s.extend_lease(&lease, ttl), NOW),
            Step::Send(_) => {
                sent += 1;
                m.on_response(Ok(ok_body("NEVER", None)), NOW, NOW)
            }
            Step::Sleep(_) => m.on_slept(),
            Step::Release(lease) => {
                s.release_lease(&lease).unwrap();
                m.on_released()
            }
            Step::Done(o) => break o,
            other => panic!("unexpected step {other:?}"),
        };
    };
    assert_eq!(sent, 0, "R1 was not sent after the lease was lost");
    assert!(out.result.unwrap().value.access_token.ct_eq_str("BY-SUCCESSOR"));
}

/// Delegates to memory, but `store` fails while `down` says so.
struct Flaky {
    inner: InMemoryTokenStorage,
    down: std::sync::atomic::AtomicBool,
}

impl BlockingTokenStorage for Flaky {
    fn get_integration_tokens(&self) -> Result<Option<OAuthTokens>, StorageError> {
        self.inner.get_integration_tokens()
    }
    fn set_integration_tokens(&self, t: &OAuthTokens) -> Result<(), StorageError> {
        self.inner.set_integration_tokens(t)
    }
    fn get_service_app_tokens(&self, org: &str) -> Result<Option<OAuthTokens>, StorageError> {
        self.inner.get_service_app_tokens(org)
    }
    fn set_service_app_tokens(&self, org: &str, t: &OAuthTokens) -> Result<(), StorageError> {
        self.inner.set_service_app_tokens(org, t)
    }
    fn delete_service_app_tokens(&self, org: &str) -> Result<(), StorageError> {
        self.inner.delete_service_app_tokens(org)
    }
    fn list_registered_orgs(&self) -> Result<Vec<String>, StorageError> {
        self.inner.list_registered_orgs()
    }
    fn supports_coordination(&self) -> bool {
        true
    }
    fn load(&self, key: &TokenKey) -> Result<Option<Versioned<OAuthTokens>>, StorageError> {
        self.inner.load(key)
    }
    fn store(&self, key: &TokenKey, t: &OAuthTokens, e: Expect) -> Result<u64, StorageError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StorageError::unavailable("the store is down"));
        }
        self.inner.store(key, t, e)
    }
    fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<Lease>, StorageError> {
        self.inner.try_acquire_lease(key, ttl)
    }
    fn release_lease(&self, lease: &Lease) -> Result<(), StorageError> {
        self.inner.release_lease(lease)
    }
    fn extend_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StorageError> {
        self.inner.extend_lease(lease, ttl)
    }
}

/// Runs an Integration refresh over any blocking store, counting token calls.
fn drive_on(
    storage: &dyn BlockingTokenStorage,
    unsaved: Option<(OAuthTokens, Expect)>,
    respond: &mut dyn FnMut() -> HttpResponse,
) -> (Outcome, usize) {
    let creds = int_creds();
    let client = RefreshClient::Integration(&creds);
    let (outcome, trace) =
        drive_with(storage, client, TokenKey::Integration, RefreshMode::GetValid, unsaved, |_, _| {
            Ok(respond())
        });
    (outcome, trace.sent.len())
}

#[test]
fn tokens_that_could_not_be_stored_are_stored_by_the_next_run_not_lost() {
    let key = TokenKey::Integration;
    let flaky =
        Flaky { inner: seeded(&key, expired("OLD", "R1")), down: std::sync::atomic::AtomicBool::new(true) };
    // Webex rotates R1 -> R2, but the store is down through every retry.
    let (first, sent) = drive_on(&flaky, None, &mut || ok_body("NEW", Some("R2")));
    assert_eq!(sent, 1);
    assert!(matches!(first.result, Err(Error::Storage(ref e)) if e.is_retryable()), "{:?}", first.result);
    let unsaved = first.unsaved.expect("the new tokens are handed back, not dropped");
    assert!(unsaved.0.refresh_token.as_ref().unwrap().ct_eq_str("R2"));
    assert!(
        flaky.inner.load(&key).unwrap().unwrap().value.refresh_token.unwrap().ct_eq_str("R1"),
        "nothing half-written"
    );
    // Still down: the next run keeps them and still hands nothing out.
    let (second, sent) =
        drive_on(&flaky, Some(unsaved), &mut || panic!("no token call while tokens wait to be stored"));
    assert_eq!(sent, 0);
    let unsaved = second.unsaved.expect("still kept");
    // The store is back: the next run stores them first and serves them, with no token call.
    flaky.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let (third, sent) = drive_on(&flaky, Some(unsaved), &mut || panic!("R1 must not be spent again"));
    assert_eq!(sent, 0);
    assert!(third.result.unwrap().value.access_token.ct_eq_str("NEW"));
    assert!(
        flaky.inner.load(&key).unwrap().unwrap().value.refresh_token.unwrap().ct_eq_str("R2"),
        "R2 is durable"
    );
}

#[test]
fn unsaved_tokens_yield_to_a_newer_stored_record() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R1"));
    let stale_expect = Expect::Version(s.load(&key).unwrap().unwrap().version);
    s.store(&key, &tokens("BY-OTHER", Some("R9"), NOW, 3600), Expect::Any).unwrap();
    let unsaved = (tokens("MINE", Some("R2"), NOW, 3600), stale_expect);
    let (out, sent) = drive_on(&s, Some(unsaved), &mut || panic!("no call needed"));
    assert_eq!(sent, 0);
    assert!(out.result.unwrap().value.access_token.ct_eq_str("BY-OTHER"));
}

#[test]
fn a_store_conflict_yields_to_the_other_writer() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R"));
    let creds = int_creds();
    let (out, _) =
        drive(&s, RefreshClient::Integration(&creds), key.clone(), RefreshMode::GetValid, |_, storage| {
            // While our request is in flight another writer (whose lease outlived ours) commits.
            storage
                .store(&TokenKey::Integration, &tokens("WINNER", Some("RW"), NOW, 3600), Expect::Any)
                .unwrap();
            Ok(ok_body("LOSER", Some("RL")))
        });
    assert!(out.result.unwrap().value.access_token.ct_eq_str("WINNER"));
    assert!(s.load(&key).unwrap().unwrap().value.access_token.ct_eq_str("WINNER"));
}

#[test]
fn an_unreadable_response_body_never_drops_the_stored_token() {
    let key = TokenKey::org("o");
    let s = seeded(&key, expired("OLD", "R"));
    let creds = sa_creds();
    let (out, _) =
        drive(&s, RefreshClient::ServiceApp(&creds), key.clone(), RefreshMode::GetValid, |_, _| {
            Ok(status(200, &[], "<html>"))
        });
    assert!(matches!(out.result, Err(Error::InvalidResponse { .. })));
    assert!(s.load(&key).unwrap().unwrap().value.refresh_token.unwrap().ct_eq_str("R"));
}
