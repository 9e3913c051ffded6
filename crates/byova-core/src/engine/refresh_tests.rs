use std::time::Duration;

use super::*;
use crate::cache::Unsaved;
use crate::config::ByovaConfig;
use crate::credentials::{IntegrationCredentials, ServiceAppCredentials};
use crate::engine::{IntegrationEngine, ServiceAppEngine};
use crate::error::{StorageError, TokenSubject};
use crate::http::HttpResponse;
use crate::key::OrgId;
use crate::storage::{BlockingCoordinatedTokenStorage, InMemoryTokenStorage};

const NOW: Timestamp = Timestamp::from_unix_secs(1_800_000_000);

/// No token budget: most tests here drive runs by hand and look at their token calls alone;
/// the budget's own tests below use [`budget_engine`].
fn config() -> ByovaConfig {
    let mut config = ByovaConfig::with_base_url("https://webex.test/v1").unwrap();
    config.token_budget = None;
    config
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

/// Whose tokens a run refreshes.
#[derive(Clone, Copy)]
enum Who {
    Integration,
    ServiceApp,
}

fn engine(who: Who) -> Arc<Engine> {
    match who {
        Who::Integration => IntegrationEngine::new(int_creds(), config()).token_engine().clone(),
        Who::ServiceApp => {
            ServiceAppEngine::new(sa_creds(), config(), Default::default()).token_engine().clone()
        }
    }
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
    who: Who,
    key: TokenKey,
    mode: Mode,
    respond: impl FnMut(&HttpRequest, &InMemoryTokenStorage) -> Result<HttpResponse>,
) -> (Outcome, Trace) {
    drive_with(storage, &engine(who), key, mode, respond)
}

/// [`drive`] over any blocking store and engine (whose cache may hold unsaved tokens).
fn drive_with<S: BlockingCoordinatedTokenStorage + ?Sized>(
    storage: &S,
    engine: &Arc<Engine>,
    key: TokenKey,
    mode: Mode,
    mut respond: impl FnMut(&HttpRequest, &S) -> Result<HttpResponse>,
) -> (Outcome, Trace) {
    let mut trace = Trace::default();
    let mut step = Run::new(engine.clone(), key, mode, 42).start();
    for _ in 0..10_000 {
        step = match step {
            Step::Sleep(d, then) => {
                trace.sleeps.push(d);
                then.resume((), NOW)
            }
            Step::IntegrationToken(then) => {
                trace.integration_tokens_asked += 1;
                then.resume(Ok(AccessToken::new("INT-BEARER")), NOW)
            }
            Step::Send(req, then) => {
                let resp = respond(&req, storage);
                trace.sent.push(req);
                then.resume(Sent::new(resp, NOW), NOW)
            }
            Step::Storage(StorageCall::Store(k, t, expect, then)) => {
                trace.stores += 1;
                then.resume(storage.store(&k, &t, expect), NOW)
            }
            Step::Storage(call) => call.perform_blocking(storage, || NOW),
            Step::Done(outcome) => return (outcome.expect("a run always ends with an outcome"), trace),
            other => panic!("a refresh run asked for {other:?}"),
        };
    }
    panic!("the run did not finish");
}

fn seeded(key: &TokenKey, t: OAuthTokens) -> InMemoryTokenStorage {
    let s = InMemoryTokenStorage::new();
    BlockingCoordinatedTokenStorage::store(&s, key, &t, Expect::Absent).unwrap();
    s
}

fn never(_: &HttpRequest, _: &InMemoryTokenStorage) -> Result<HttpResponse> {
    panic!("no request was expected")
}

#[test]
fn a_fresh_token_needs_no_request() {
    let key = TokenKey::Integration;
    let s = seeded(&key, tokens("A", Some("R"), NOW, 3600));
    let (out, trace) = drive(&s, Who::Integration, key, Mode::GetValid, never);
    assert!(out.result.unwrap().value.access_token.ct_eq_str("A"));
    assert!(!out.refreshed);
    assert_eq!(trace.stores, 0);
}

#[test]
fn an_expired_token_is_refreshed_stored_and_returned() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R1"));
    let (out, trace) = drive(&s, Who::Integration, key.clone(), Mode::GetValid, |req, _| {
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
    let (out, _) = drive(&s, Who::Integration, key.clone(), Mode::GetValid, |_, _| Ok(ok_body("NEW", None)));
    assert!(out.result.unwrap().value.refresh_token.unwrap().ct_eq_str("KEEP-ME"));
    assert!(s.load(&key).unwrap().unwrap().value.refresh_token.unwrap().ct_eq_str("KEEP-ME"));
}

#[test]
fn server_errors_are_retried_with_backoff_then_succeed() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R"));
    let mut n = 0;
    let (out, trace) = drive(&s, Who::Integration, key, Mode::GetValid, |_, _| {
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
    let mut n = 0;
    let (out, trace) = drive(&s, Who::Integration, key, Mode::GetValid, |_, _| {
        n += 1;
        if n == 1 {
            Ok(status(429, &[("Retry-After", "2")], &OrgId::from_static("<html>")))
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
    let (out, trace) =
        drive(&s, Who::Integration, key.clone(), Mode::GetValid, |_, _| Ok(status(500, &[], "")));
    assert!(out.result.unwrap().value.access_token.ct_eq_str("STILL-GOOD"));
    assert!(matches!(out.served_stale_after, Some(Error::Server(_))));
    assert_eq!(trace.sent.len(), 4, "the retry budget was spent first");
    assert!(s.load(&key).unwrap().unwrap().value.refresh_token.unwrap().ct_eq_str("R"), "nothing dropped");
}

#[test]
fn a_failed_refresh_of_a_dead_token_is_an_error_and_keeps_the_record() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R"));
    let (out, _) = drive(&s, Who::Integration, key.clone(), Mode::GetValid, |_, _| {
        Err(Error::Transport { message: "reset".into(), maybe_sent: true })
    });
    assert!(matches!(out.result, Err(Error::Transport { .. })));
    assert!(s.load(&key).unwrap().is_some());
}

#[test]
fn invalid_grant_for_the_stored_token_requires_reauthorization_and_keeps_the_record() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "DEAD"));
    let (out, trace) = drive(&s, Who::Integration, key.clone(), Mode::GetValid, |_, _| {
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
    let (out, trace) = drive(&s, Who::Integration, key.clone(), Mode::GetValid, |req, storage| {
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
    let key = TokenKey::org(&OrgId::from_static("o1"));
    let s = seeded(&key, expired("OLD", "DEAD"));
    let (out, trace) = drive(&s, Who::ServiceApp, key.clone(), Mode::GetValid, |req, _| {
        if req.url.ends_with("/access_token") {
            Ok(status(400, &[], r#"{"message":"The refresh token is invalid.","errors":[]}"#))
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
    let (out, _) = drive(&s, Who::Integration, TokenKey::Integration, Mode::GetValid, never);
    assert!(matches!(out.result, Err(Error::NotAuthorized)));
    let (out, _) = drive(&s, Who::ServiceApp, TokenKey::org(&OrgId::from_static("o")), Mode::GetValid, never);
    assert!(matches!(out.result, Err(Error::OrgNotRegistered { ref org_id }) if org_id == "o"));
    let (out, trace) =
        drive(&s, Who::ServiceApp, TokenKey::org(&OrgId::from_static("o")), Mode::Force(None), |_, _| {
            Ok(ok_body("F", Some("R")))
        });
    assert!(out.result.is_ok());
    assert_eq!(trace.integration_tokens_asked, 1);
    let (out, _) = drive(
        &s,
        Who::Integration,
        TokenKey::Integration,
        Mode::Force(Some(RefreshToken::new("EXPLICIT"))),
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
    let mut step = Run::new(engine(Who::Integration), key.clone(), Mode::GetValid, 1).start();
    let mut polls = 0;
    let out = loop {
        step = match step {
            Step::Storage(StorageCall::Load(k, then)) => then.resume(s.load(&k), NOW),
            Step::Storage(StorageCall::AcquireLease(k, ttl, then)) => {
                then.resume(s.try_acquire_lease(&k, ttl), NOW)
            }
            Step::Sleep(_, then) => {
                polls += 1;
                if polls == 3 {
                    // The other process finishes its refresh.
                    let cur = s.load(&key).unwrap().unwrap();
                    s.store(&key, &tokens("BY-OTHER", Some("R"), NOW, 3600), Expect::Version(cur.version))
                        .unwrap();
                    s.release_lease(&other).unwrap();
                }
                then.resume((), NOW)
            }
            Step::Done(o) => break o.unwrap(),
            other => panic!("unexpected step {other:?}"),
        };
    };
    assert!(out.result.unwrap().value.access_token.ct_eq_str("BY-OTHER"));
    assert_eq!(polls, 3);
}

#[test]
fn a_waiter_accepts_any_newer_record_that_is_not_really_expired() {
    // A 10 s token written by the other process, half gone: newer than what the waiter saw and
    // still valid, so it is taken at once.
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R"));
    let _other = s.try_acquire_lease(&key, Duration::from_secs(60)).unwrap().unwrap();
    let mut step = Run::new(engine(Who::Integration), key.clone(), Mode::GetValid, 1).start();
    let mut polls = 0;
    let out = loop {
        step = match step {
            Step::Storage(StorageCall::Load(k, then)) => then.resume(s.load(&k), NOW),
            Step::Storage(StorageCall::AcquireLease(k, ttl, then)) => {
                then.resume(s.try_acquire_lease(&k, ttl), NOW)
            }
            Step::Sleep(_, then) => {
                polls += 1;
                if polls == 1 {
                    let cur = s.load(&key).unwrap().unwrap();
                    let short = tokens("SHORT", Some("R"), NOW.saturating_sub(Duration::from_secs(5)), 10);
                    s.store(&key, &short, Expect::Version(cur.version)).unwrap();
                }
                then.resume((), NOW)
            }
            Step::Done(o) => break o.unwrap(),
            other => panic!("unexpected step {other:?}"),
        };
    };
    assert!(out.result.unwrap().value.access_token.ct_eq_str("SHORT"));
    assert_eq!(polls, 1, "taken at the first poll that saw it");
}

#[test]
fn a_lease_held_elsewhere_with_a_still_valid_token_returns_it_at_once() {
    let key = TokenKey::Integration;
    let s = seeded(&key, refresh_ahead("OK-FOR-NOW", "R"));
    let _other = s.try_acquire_lease(&key, Duration::from_secs(60)).unwrap().unwrap();
    let (out, trace) = drive(&s, Who::Integration, key, Mode::GetValid, never);
    assert!(out.result.unwrap().value.access_token.ct_eq_str("OK-FOR-NOW"));
    assert!(trace.sleeps.is_empty());
}

#[test]
fn a_holder_that_lost_its_lease_does_not_spend_the_refresh_token() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R1"));
    let mut step = Run::new(engine(Who::Integration), key.clone(), Mode::GetValid, 1).start();
    let mut sent = 0;
    let out = loop {
        step = match step {
            Step::Storage(StorageCall::Load(k, then)) => then.resume(s.load(&k), NOW),
            Step::Storage(StorageCall::AcquireLease(k, _, then)) => {
                // Our lease is so short it lapses before we send; a successor takes over.
                let ours = s.try_acquire_lease(&k, Duration::from_millis(1)).unwrap();
                std::thread::sleep(Duration::from_millis(5));
                let successor = s.try_acquire_lease(&k, Duration::from_secs(60)).unwrap().unwrap();
                let cur = s.load(&k).unwrap().unwrap();
                s.store(&k, &tokens("BY-SUCCESSOR", Some("R2"), NOW, 3600), Expect::Version(cur.version))
                    .unwrap();
                s.release_lease(&successor).unwrap();
                then.resume(Ok(ours), NOW)
            }
            Step::Storage(StorageCall::ExtendLease(lease, ttl, then)) => {
                then.resume(s.extend_lease(&lease, ttl), NOW)
            }
            Step::Send(_, then) => {
                sent += 1;
                then.resume(Sent::new(Ok(ok_body("NEVER", None)), NOW), NOW)
            }
            Step::Sleep(_, then) => then.resume((), NOW),
            Step::Storage(StorageCall::ReleaseLease(lease, then)) => {
                then.resume(s.release_lease(&lease), NOW)
            }
            Step::Done(o) => break o.unwrap(),
            other => panic!("unexpected step {other:?}"),
        };
    };
    assert_eq!(sent, 0, "R1 was not sent after the lease was lost");
    assert!(out.result.unwrap().value.access_token.ct_eq_str("BY-SUCCESSOR"));
}

#[test]
fn a_run_dropped_while_holding_its_lease_has_it_released_by_the_next_run() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R1"));
    let engine = engine(Who::Integration);
    let mut step = Run::new(engine.clone(), key.clone(), Mode::GetValid, 1).start();
    // Drive until the request is about to be sent, then abandon the run (a cancelled task).
    loop {
        step = match step {
            Step::Storage(StorageCall::Load(k, then)) => then.resume(s.load(&k), NOW),
            Step::Storage(StorageCall::AcquireLease(k, ttl, then)) => {
                then.resume(s.try_acquire_lease(&k, ttl), NOW)
            }
            Step::Storage(StorageCall::ExtendLease(lease, ttl, then)) => {
                then.resume(s.extend_lease(&lease, ttl), NOW)
            }
            Step::Send(..) => break,
            other => panic!("unexpected step {other:?}"),
        };
    }
    drop(step);
    assert!(s.try_acquire_lease(&key, Duration::from_secs(1)).unwrap().is_none(), "still held in the store");
    let (out, trace) =
        drive_with(&s, &engine, key.clone(), Mode::GetValid, |_, _| Ok(ok_body("NEW", Some("R2"))));
    assert!(out.result.unwrap().value.access_token.ct_eq_str("NEW"), "the next run got the lease");
    assert_eq!(trace.sent.len(), 1);
    assert!(s.try_acquire_lease(&key, Duration::from_secs(1)).unwrap().is_some(), "and nothing is left held");
}

#[test]
fn a_rejected_refresh_token_is_marked_and_never_sent_again() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "DEAD"));
    let (out, trace) = drive(&s, Who::Integration, key.clone(), Mode::GetValid, |_, _| {
        Ok(status(400, &[], r#"{"error":"invalid_grant"}"#))
    });
    assert!(matches!(out.result, Err(Error::ReauthorizationRequired { .. })));
    assert_eq!(trace.sent.len(), 1);
    let stored = s.load(&key).unwrap().unwrap().value;
    assert!(stored.reauthorization_required, "the mark is stored with the record");
    assert!(stored.refresh_token.unwrap().ct_eq_str("DEAD"), "the record is kept");
    // Any later run, in this process or another, fails at once without a call.
    for mode in [Mode::GetValid, Mode::Force(None)] {
        let (out, trace) = drive(&s, Who::Integration, key.clone(), mode, never);
        assert!(matches!(out.result, Err(Error::ReauthorizationRequired { .. })));
        assert!(trace.sent.is_empty());
    }
    // New tokens arrive (an explicit refresh token, as authorize or save_registration bring).
    let explicit = Mode::Force(Some(RefreshToken::new("NEW-R")));
    let (out, _) =
        drive(&s, Who::Integration, key.clone(), explicit, |_, _| Ok(ok_body("NEW", Some("NEW-R2"))));
    assert!(!out.result.unwrap().value.reauthorization_required);
    assert!(!s.load(&key).unwrap().unwrap().value.reauthorization_required, "the mark is gone");
}

/// A marked org (Webex rejected its refresh token) is fetched anew with the Integration's
/// bearer by any caller who needs a token, and its dead refresh token is never spent.
#[test]
fn a_marked_org_is_fetched_again_and_its_dead_refresh_token_never_spent() {
    for mode in [Mode::GetValid, Mode::Force(None)] {
        let key = TokenKey::org(&OrgId::from_static("o"));
        let s = seeded(&key, expired("OLD", "DEAD").rejected());
        let (out, trace) = drive(&s, Who::ServiceApp, key.clone(), mode.clone(), |req, _| {
            assert!(!req.url.ends_with("/access_token"), "the dead refresh token is not spent");
            Ok(ok_body("FETCHED", Some("R2")))
        });
        assert!(out.result.unwrap().value.access_token.ct_eq_str("FETCHED"), "{mode:?}");
        assert_eq!(trace.integration_tokens_asked, 1);
        assert!(!s.load(&key).unwrap().unwrap().value.reauthorization_required, "the fetch clears the mark");
    }
}

/// A marked org whose fetch Webex refused (a deauthorization the webhook never reported) is
/// not fetched for again by every caller: the next ones get the rejection without a call,
/// for a while; an explicit fetch still goes ahead.
#[test]
fn a_refused_fetch_for_a_marked_org_is_not_repeated_by_every_caller() {
    let key = TokenKey::org(&OrgId::from_static("o"));
    let s = seeded(&key, expired("OLD", "DEAD").rejected());
    let engine = engine(Who::ServiceApp);
    let refused =
        |_: &HttpRequest, _: &InMemoryTokenStorage| Ok(status(403, &[], r#"{"message":"not authorized"}"#));
    let (out, trace) = drive_with(&s, &engine, key.clone(), Mode::GetValid, refused);
    assert!(matches!(out.result, Err(Error::ServiceAppNotAuthorized { .. })), "{:?}", out.result);
    assert_eq!(trace.sent.len(), 1);
    for _ in 0..5 {
        let (out, trace) = drive_with(&s, &engine, key.clone(), Mode::GetValid, never);
        assert!(matches!(out.result, Err(Error::ReauthorizationRequired { .. })), "{:?}", out.result);
        assert!(trace.sent.is_empty(), "no call while paused");
    }
    let (out, trace) =
        drive_with(&s, &engine, key.clone(), Mode::Fetch(None), |_, _| Ok(ok_body("NEW", Some("R2"))));
    assert!(out.result.is_ok() && trace.sent.len() == 1, "an explicit fetch goes ahead");
}

/// The "refresh token rejected" mark survives a writer that changed the record meanwhile (a
/// 401's invalidation, say): it is written on the new version while the record still holds
/// the rejected token.
#[test]
fn the_mark_survives_a_concurrent_write() {
    let key = TokenKey::Integration;
    let s = BumpsOnLoad { inner: seeded(&key, expired("OLD", "DEAD")), loads: 0.into(), bump_at: 3 };
    let (out, _) = drive_with(&s, &engine(Who::Integration), key.clone(), Mode::GetValid, |_, _| {
        Ok(status(400, &[], r#"{"error":"invalid_grant"}"#))
    });
    assert!(matches!(out.result, Err(Error::ReauthorizationRequired { .. })), "{:?}", out.result);
    let stored = BlockingCoordinatedTokenStorage::load(&s.inner, &key).unwrap().unwrap().value;
    assert!(stored.reauthorization_required, "marked all the same");
}

/// Delegates to memory; right after its `bump_at`th load another writer rewrites the record
/// (same tokens, a new version), as a concurrent invalidation would.
struct BumpsOnLoad {
    inner: InMemoryTokenStorage,
    loads: std::sync::atomic::AtomicU32,
    bump_at: u32,
}

impl crate::storage::BlockingCoordinatedTokenStorage for BumpsOnLoad {
    fn load(&self, key: &TokenKey) -> Result<Option<Versioned<OAuthTokens>>, StorageError> {
        let loaded = BlockingCoordinatedTokenStorage::load(&self.inner, key);
        if self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == self.bump_at
            && let Ok(Some(current)) = &loaded
        {
            BlockingCoordinatedTokenStorage::store(
                &self.inner,
                key,
                &current.value,
                Expect::Version(current.version),
            )?;
        }
        loaded
    }
    fn store(&self, key: &TokenKey, t: &OAuthTokens, e: Expect) -> Result<u64, StorageError> {
        BlockingCoordinatedTokenStorage::store(&self.inner, key, t, e)
    }
    fn delete_org(&self, org: &OrgId, expect: Expect) -> Result<(), StorageError> {
        BlockingCoordinatedTokenStorage::delete_org(&self.inner, org, expect)
    }
    fn list_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
        BlockingCoordinatedTokenStorage::list_orgs(&self.inner)
    }
    fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<Lease>, StorageError> {
        BlockingCoordinatedTokenStorage::try_acquire_lease(&self.inner, key, ttl)
    }
    fn release_lease(&self, lease: &Lease) -> Result<(), StorageError> {
        BlockingCoordinatedTokenStorage::release_lease(&self.inner, lease)
    }
    fn extend_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StorageError> {
        BlockingCoordinatedTokenStorage::extend_lease(&self.inner, lease, ttl)
    }
}

/// Delegates to memory, but `store` fails while `down` says so.
struct Flaky {
    inner: InMemoryTokenStorage,
    down: std::sync::atomic::AtomicBool,
}

impl crate::storage::BlockingCoordinatedTokenStorage for Flaky {
    fn load(&self, key: &TokenKey) -> Result<Option<Versioned<OAuthTokens>>, StorageError> {
        BlockingCoordinatedTokenStorage::load(&self.inner, key)
    }
    fn store(&self, key: &TokenKey, t: &OAuthTokens, e: Expect) -> Result<u64, StorageError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StorageError::unavailable("the store is down"));
        }
        BlockingCoordinatedTokenStorage::store(&self.inner, key, t, e)
    }
    fn delete_org(&self, org: &OrgId, expect: Expect) -> Result<(), StorageError> {
        BlockingCoordinatedTokenStorage::delete_org(&self.inner, org, expect)
    }
    fn list_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
        BlockingCoordinatedTokenStorage::list_orgs(&self.inner)
    }
    fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<Lease>, StorageError> {
        BlockingCoordinatedTokenStorage::try_acquire_lease(&self.inner, key, ttl)
    }
    fn release_lease(&self, lease: &Lease) -> Result<(), StorageError> {
        BlockingCoordinatedTokenStorage::release_lease(&self.inner, lease)
    }
    fn extend_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StorageError> {
        BlockingCoordinatedTokenStorage::extend_lease(&self.inner, lease, ttl)
    }
}

/// Runs an Integration refresh over any blocking store with `engine`'s cache, counting token
/// calls (a run keeps what it could not store in the cache itself).
fn drive_on(
    storage: &dyn BlockingCoordinatedTokenStorage,
    engine: &Arc<Engine>,
    respond: &mut dyn FnMut() -> HttpResponse,
) -> (Outcome, usize) {
    let (outcome, trace) =
        drive_with(storage, engine, TokenKey::Integration, Mode::GetValid, |_, _| Ok(respond()));
    (outcome, trace.sent.len())
}

#[test]
fn tokens_that_could_not_be_stored_are_stored_by_the_next_run_not_lost() {
    let key = TokenKey::Integration;
    let flaky =
        Flaky { inner: seeded(&key, expired("OLD", "R1")), down: std::sync::atomic::AtomicBool::new(true) };
    let engine = engine(Who::Integration);
    // Webex rotates R1 -> R2, but the store is down through every retry.
    let (first, sent) = drive_on(&flaky, &engine, &mut || ok_body("NEW", Some("R2")));
    assert_eq!(sent, 1);
    assert!(matches!(first.result, Err(Error::Storage(ref e)) if e.is_retryable()), "{:?}", first.result);
    let unsaved = engine.cache().peek_unsaved(&key).expect("the new tokens are kept, not dropped");
    assert!(unsaved.tokens.refresh_token.as_ref().unwrap().ct_eq_str("R2"));
    assert!(
        flaky.inner.load(&key).unwrap().unwrap().value.refresh_token.unwrap().ct_eq_str("R1"),
        "nothing half-written"
    );
    // Still down: the next run keeps them and still hands nothing out.
    let (second, sent) =
        drive_on(&flaky, &engine, &mut || panic!("no token call while tokens wait to be stored"));
    assert_eq!(sent, 0);
    assert!(second.result.is_err() && engine.cache().peek_unsaved(&key).is_some(), "still kept");
    // The store is back: the next run stores them first and serves them, with no token call.
    flaky.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let (third, sent) = drive_on(&flaky, &engine, &mut || panic!("R1 must not be spent again"));
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
    let engine = engine(Who::Integration);
    engine
        .cache()
        .keep_unsaved(&key, Unsaved::new(tokens("MINE", Some("R2"), NOW, 3600), stale_expect, None));
    let (out, sent) = drive_on(&s, &engine, &mut || panic!("no call needed"));
    assert_eq!(sent, 0);
    assert!(out.result.unwrap().value.access_token.ct_eq_str("BY-OTHER"));
}

#[test]
fn a_store_conflict_yields_to_the_other_writer() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R"));
    let (out, _) = drive(&s, Who::Integration, key.clone(), Mode::GetValid, |_, storage| {
        // While our request is in flight another writer (whose lease outlived ours) commits.
        storage.store(&TokenKey::Integration, &tokens("WINNER", Some("RW"), NOW, 3600), Expect::Any).unwrap();
        Ok(ok_body("LOSER", Some("RL")))
    });
    assert!(out.result.unwrap().value.access_token.ct_eq_str("WINNER"));
    assert!(s.load(&key).unwrap().unwrap().value.access_token.ct_eq_str("WINNER"));
}

#[test]
fn an_unreadable_response_body_never_drops_the_stored_token() {
    let key = TokenKey::org(&OrgId::from_static("o"));
    let s = seeded(&key, expired("OLD", "R"));
    let (out, _) =
        drive(&s, Who::ServiceApp, key.clone(), Mode::GetValid, |_, _| Ok(status(200, &[], "<html>")));
    assert!(matches!(out.result, Err(Error::InvalidResponse { .. })));
    assert!(s.load(&key).unwrap().unwrap().value.refresh_token.unwrap().ct_eq_str("R"));
}

#[test]
fn unsaved_tokens_replace_a_record_marked_meanwhile() {
    // Replica A refreshed R0 -> R1 but could not store it. Replica B then spent R0, got
    // invalid_grant and marked the record. A's next run must store R1, not give up on it.
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R0"));
    let v0 = s.load(&key).unwrap().unwrap().version;
    let engine = engine(Who::Integration);
    let r1 = tokens("NEW", Some("R1"), NOW, 3600);
    engine.cache().keep_unsaved(&key, Unsaved::new(r1, Expect::Version(v0), Some(RefreshToken::new("R0"))));
    s.store(&key, &expired("OLD", "R0").rejected(), Expect::Version(v0)).unwrap();
    let (out, trace) =
        drive_with(&s, &engine, key.clone(), Mode::GetValid, |_, _| panic!("no call: R1 is in hand"));
    assert!(out.result.unwrap().value.access_token.ct_eq_str("NEW"));
    assert!(trace.sent.is_empty());
    let stored = s.load(&key).unwrap().unwrap().value;
    assert!(stored.refresh_token.unwrap().ct_eq_str("R1") && !stored.reauthorization_required);
}

#[test]
fn fresh_tokens_replace_a_record_that_still_holds_the_token_they_were_bought_with() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R0"));
    let (out, _) = drive(&s, Who::Integration, key.clone(), Mode::GetValid, |_, storage| {
        // While our call is in flight someone rewrites the same old record (version moves on).
        let old = storage.load(&TokenKey::Integration).unwrap().unwrap();
        storage.store(&TokenKey::Integration, &old.value, Expect::Version(old.version)).unwrap();
        Ok(ok_body("NEW", Some("R1")))
    });
    assert!(out.result.unwrap().value.access_token.ct_eq_str("NEW"));
    assert!(s.load(&key).unwrap().unwrap().value.refresh_token.unwrap().ct_eq_str("R1"), "R1 is not lost");
}

/// Webex's `invalid_grant` for the stored refresh token is remembered whatever the fallback
/// fetch says (a 503, a 403): no later run spends that token again; the runs that follow only
/// fetch, and a fetch that succeeds clears the mark.
#[test]
fn a_service_app_refresh_token_webex_rejected_is_marked_whatever_the_fallback_fetch_says() {
    let key = TokenKey::org(&OrgId::from_static("o"));
    let s = seeded(&key, expired("OLD", "DEAD"));
    let (out, _) = drive(&s, Who::ServiceApp, key.clone(), Mode::GetValid, |req, _| {
        if req.url.ends_with("/access_token") {
            Ok(status(400, &[("trackingId", "ROUTER_DEAD")], r#"{"error":"invalid_grant"}"#))
        } else {
            Ok(status(503, &[], ""))
        }
    });
    assert!(matches!(out.result, Err(Error::Server(_))), "{:?}", out.result);
    let marked = s.load(&key).unwrap().unwrap().value;
    assert!(marked.reauthorization_required, "the refresh token is dead whatever the fetch said");
    assert_eq!(marked.rejection.and_then(|r| r.tracking_id).as_deref(), Some("ROUTER_DEAD"));
    let (out, _) = drive(&s, Who::ServiceApp, key.clone(), Mode::GetValid, |req, _| {
        assert!(!req.url.ends_with("/access_token"), "the rejected refresh token is never sent again");
        Ok(status(403, &[], r#"{"message":"not authorized"}"#))
    });
    assert!(matches!(out.result, Err(Error::ServiceAppNotAuthorized { .. })), "{:?}", out.result);
    assert!(s.load(&key).unwrap().unwrap().value.reauthorization_required);
    let (out, _) = drive(&s, Who::ServiceApp, key.clone(), Mode::GetValid, |req, _| {
        assert!(!req.url.ends_with("/access_token"));
        Ok(ok_body("FETCHED", Some("R2")))
    });
    assert!(out.result.unwrap().value.access_token.ct_eq_str("FETCHED"));
    assert!(!s.load(&key).unwrap().unwrap().value.reauthorization_required);
}

#[test]
fn an_explicit_refresh_token_is_used_even_after_waiting_for_another_process() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R"));
    let other = s.try_acquire_lease(&key, Duration::from_secs(60)).unwrap().unwrap();
    let mode = Mode::Force(Some(RefreshToken::new("EXPLICIT")));
    let mut step = Run::new(engine(Who::Integration), key.clone(), mode, 1).start();
    let mut sent = Vec::new();
    let out = loop {
        step = match step {
            Step::Storage(StorageCall::Load(k, then)) => then.resume(s.load(&k), NOW),
            Step::Storage(StorageCall::AcquireLease(k, ttl, then)) => {
                then.resume(s.try_acquire_lease(&k, ttl), NOW)
            }
            Step::Storage(StorageCall::ExtendLease(lease, ttl, then)) => {
                then.resume(s.extend_lease(&lease, ttl), NOW)
            }
            Step::Storage(StorageCall::ReleaseLease(lease, then)) => {
                then.resume(s.release_lease(&lease), NOW)
            }
            Step::Storage(StorageCall::Store(k, t, e, then)) => then.resume(s.store(&k, &t, e), NOW),
            Step::Sleep(_, then) => {
                if s.load(&key).unwrap().unwrap().value.access_token.ct_eq_str("OLD") {
                    // The other process finishes its own refresh and lets go.
                    let cur = s.load(&key).unwrap().unwrap();
                    s.store(&key, &tokens("BY-OTHER", Some("R2"), NOW, 3600), Expect::Version(cur.version))
                        .unwrap();
                    s.release_lease(&other).unwrap();
                }
                then.resume((), NOW)
            }
            Step::Send(req, then) => {
                sent.push(form_field(&req, "refresh_token").unwrap_or_default());
                then.resume(Sent::new(Ok(ok_body("MINE", None)), NOW), NOW)
            }
            Step::Done(o) => break o.unwrap(),
            other => panic!("unexpected step {other:?}"),
        };
    };
    assert_eq!(sent, ["EXPLICIT"], "the caller's own token, not the other process's record");
    let stored = s.load(&key).unwrap().unwrap().value;
    assert!(out.result.unwrap().value.access_token.ct_eq_str("MINE"));
    assert!(
        stored.refresh_token.unwrap().ct_eq_str("EXPLICIT"),
        "a response without one keeps the token sent"
    );
}

#[test]
fn tokens_obtained_by_a_run_dropped_before_they_were_stored_are_kept() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R0"));
    let engine = engine(Who::Integration);
    let mut step = Run::new(engine.clone(), key.clone(), Mode::GetValid, 1).start();
    loop {
        step = match step {
            Step::Storage(StorageCall::Load(k, then)) => then.resume(s.load(&k), NOW),
            Step::Storage(StorageCall::AcquireLease(k, ttl, then)) => {
                then.resume(s.try_acquire_lease(&k, ttl), NOW)
            }
            Step::Storage(StorageCall::ExtendLease(lease, ttl, then)) => {
                then.resume(s.extend_lease(&lease, ttl), NOW)
            }
            Step::Send(_, then) => then.resume(Sent::new(Ok(ok_body("NEW", Some("R1"))), NOW), NOW),
            // The store is about to be asked: the task is cancelled right here.
            Step::Storage(StorageCall::Store(..)) => break,
            other => panic!("unexpected step {other:?}"),
        };
    }
    drop(step);
    let kept = engine.cache().peek_unsaved(&key).expect("kept for the next run");
    assert!(kept.tokens.refresh_token.unwrap().ct_eq_str("R1"));
    let (out, trace) =
        drive_with(&s, &engine, key.clone(), Mode::GetValid, |_, _| panic!("R0 must not be spent again"));
    assert!(out.result.unwrap().value.access_token.ct_eq_str("NEW"));
    assert!(trace.sent.is_empty());
}

#[test]
fn an_integration_without_a_refresh_token_is_served_until_it_expires() {
    let key = TokenKey::Integration;
    let s = seeded(&key, tokens("NO-RT", None, NOW.saturating_sub(Duration::from_secs(3240)), 3600));
    let (out, trace) = drive(&s, Who::Integration, key.clone(), Mode::GetValid, never);
    assert!(out.result.unwrap().value.access_token.ct_eq_str("NO-RT"), "usable at 90 % of its life");
    assert!(trace.sent.is_empty());
    let s = seeded(&key, tokens("NO-RT", None, NOW.saturating_sub(Duration::from_secs(3600)), 3600));
    let (out, _) = drive(&s, Who::Integration, key, Mode::GetValid, never);
    assert!(matches!(out.result, Err(Error::NoRefreshToken { .. })), "{:?}", out.result);
}

// ---- the token budget ----

fn budget_engine(calls: u32) -> Arc<Engine> {
    let mut config = config();
    config.token_budget =
        Some(crate::budget::TokenBudget { calls, per: Duration::from_secs(60), background_percent: 80 });
    IntegrationEngine::new(int_creds(), config).token_engine().clone()
}

fn spent_budget(s: &InMemoryTokenStorage) {
    let state = crate::budget::BudgetState {
        milli_calls: 0,
        updated_at_ms: NOW.as_unix_millis(),
        paused_until_ms: 0,
    };
    BlockingCoordinatedTokenStorage::store_state(
        s,
        crate::budget::TOKEN_BUDGET_STATE,
        &state.to_json(),
        Expect::Absent,
    )
    .unwrap();
}

fn stored_budget(s: &InMemoryTokenStorage) -> crate::budget::BudgetState {
    let stored =
        BlockingCoordinatedTokenStorage::load_state(s, crate::budget::TOKEN_BUDGET_STATE).unwrap().unwrap();
    crate::budget::BudgetState::from_json(&stored.value).unwrap()
}

#[test]
fn a_token_call_takes_one_call_from_the_stored_budget() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R"));
    let (out, trace) =
        drive_with(&s, &budget_engine(240), key, Mode::GetValid, |_, _| Ok(ok_body("NEW", Some("R2"))));
    assert_eq!(out.result.unwrap().value.access_token.expose_secret(), "NEW");
    assert_eq!(trace.sent.len(), 1);
    // A full bucket holds 24 calls (a tenth of the minute's 240); one is gone.
    assert_eq!(stored_budget(&s).milli_calls, 23_000);
}

#[test]
fn a_spent_budget_serves_a_still_valid_token_and_defers_the_refresh() {
    let key = TokenKey::Integration;
    let s = seeded(&key, refresh_ahead("STILL-GOOD", "R"));
    spent_budget(&s);
    let (out, trace) = drive_with(&s, &budget_engine(240), key, Mode::GetValid, |_, _| panic!("no call"));
    assert!(trace.sent.is_empty(), "no token call while the budget is spent");
    assert_eq!(out.result.unwrap().value.access_token.expose_secret(), "STILL-GOOD");
    let until = out.deferred_until.expect("the refresh is deferred");
    assert!(until > NOW, "deferred to when the budget has room");
}

#[test]
fn a_spent_budget_makes_an_expired_token_wait_then_call() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R"));
    spent_budget(&s);
    // The synchronous driver's clock stands still, so the bucket never refills: the run waits
    // in slices and asks again; once another process's refill shows up in the store, it calls.
    let engine = budget_engine(240);
    let mut step = Run::new(engine, key, Mode::GetValid, 7).start();
    let (mut sleeps, mut sent) = (0, 0);
    let out = loop {
        step = match step {
            Step::Storage(StorageCall::Load(k, then)) => then.resume(s.load(&k), NOW),
            Step::Storage(StorageCall::AcquireLease(k, ttl, then)) => {
                then.resume(s.try_acquire_lease(&k, ttl), NOW)
            }
            Step::Storage(StorageCall::ExtendLease(lease, ttl, then)) => {
                then.resume(s.extend_lease(&lease, ttl), NOW)
            }
            Step::Storage(StorageCall::ReleaseLease(lease, then)) => {
                then.resume(s.release_lease(&lease), NOW)
            }
            Step::Storage(StorageCall::LoadState(name, then)) => then.resume(s.load_state(&name), NOW),
            Step::Storage(StorageCall::StoreState(name, bytes, expect, then)) => {
                then.resume(s.store_state(&name, &bytes, expect), NOW)
            }
            Step::Sleep(d, then) => {
                sleeps += 1;
                assert!(
                    d <= Duration::from_secs(10),
                    "waits a slice at a time (a third of the lease): {d:?}"
                );
                if sleeps == 3 {
                    let cur = s.load_state(crate::budget::TOKEN_BUDGET_STATE).unwrap().unwrap();
                    let refilled = crate::budget::BudgetState { milli_calls: 5_000, ..stored_budget(&s) };
                    s.store_state(
                        crate::budget::TOKEN_BUDGET_STATE,
                        &refilled.to_json(),
                        Expect::Version(cur.version),
                    )
                    .unwrap();
                }
                then.resume((), NOW)
            }
            Step::Send(_, then) => {
                sent += 1;
                then.resume(Sent::new(Ok(ok_body("NEW", Some("R2"))), NOW), NOW)
            }
            Step::Storage(StorageCall::Store(k, t, expect, then)) => {
                then.resume(s.store(&k, &t, expect), NOW)
            }
            Step::Done(o) => break o.unwrap(),
            other => panic!("unexpected {other:?}"),
        };
    };
    assert_eq!(sleeps, 3);
    assert_eq!(sent, 1);
    assert_eq!(out.result.unwrap().value.access_token.expose_secret(), "NEW");
    assert_eq!(stored_budget(&s).milli_calls, 4_000);
}

#[test]
fn a_429_with_retry_after_pauses_the_stored_budget() {
    let key = TokenKey::Integration;
    let s = seeded(&key, expired("OLD", "R"));
    // A driver whose clock moves with every sleep.
    let mut now = NOW;
    let (mut sent, mut slept) = (Vec::new(), Duration::ZERO);
    let mut step = Run::new(budget_engine(240), key, Mode::GetValid, 7).start();
    let out = loop {
        step = match step {
            Step::Storage(StorageCall::Load(k, then)) => then.resume(s.load(&k), now),
            Step::Storage(StorageCall::AcquireLease(k, ttl, then)) => {
                then.resume(s.try_acquire_lease(&k, ttl), now)
            }
            Step::Storage(StorageCall::ExtendLease(lease, ttl, then)) => {
                then.resume(s.extend_lease(&lease, ttl), now)
            }
            Step::Storage(StorageCall::ReleaseLease(lease, then)) => {
                then.resume(s.release_lease(&lease), now)
            }
            Step::Storage(StorageCall::LoadState(name, then)) => then.resume(s.load_state(&name), now),
            Step::Storage(StorageCall::StoreState(name, bytes, expect, then)) => {
                then.resume(s.store_state(&name, &bytes, expect), now)
            }
            Step::Sleep(d, then) => {
                slept += d;
                now = now.saturating_add(d);
                then.resume((), now)
            }
            Step::Send(_, then) => {
                sent.push(now);
                let response = if sent.len() == 1 {
                    status(429, &[("Retry-After", "30")], "")
                } else {
                    assert_eq!(
                        stored_budget(&s).paused_until_ms,
                        NOW.as_unix_millis() + 30_000,
                        "every process sees the pause"
                    );
                    ok_body("NEW", Some("R2"))
                };
                then.resume(Sent::new(Ok(response), now), now)
            }
            Step::Storage(StorageCall::Store(k, t, expect, then)) => {
                then.resume(s.store(&k, &t, expect), now)
            }
            Step::Done(o) => break o.unwrap(),
            other => panic!("unexpected {other:?}"),
        };
    };
    assert!(out.result.unwrap().value.access_token.ct_eq_str("NEW"));
    assert_eq!(sent.len(), 2);
    assert!(
        sent[1] >= NOW.saturating_add(Duration::from_secs(30)),
        "the retry waits out Retry-After: {slept:?}"
    );
}

#[test]
fn a_store_without_shared_state_keeps_the_budget_in_the_process() {
    use crate::storage::BlockingCoordinatedTokenStorage as Primitives;
    /// A team's store that implements only the primitives: no shared state.
    struct NoState(InMemoryTokenStorage);
    impl Primitives for NoState {
        fn load(&self, key: &TokenKey) -> Result<Option<Versioned<OAuthTokens>>, StorageError> {
            Primitives::load(&self.0, key)
        }
        fn store(&self, key: &TokenKey, tokens: &OAuthTokens, expect: Expect) -> Result<u64, StorageError> {
            Primitives::store(&self.0, key, tokens, expect)
        }
        fn delete_org(&self, org_id: &OrgId, expect: Expect) -> Result<(), StorageError> {
            Primitives::delete_org(&self.0, org_id, expect)
        }
        fn list_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
            Primitives::list_orgs(&self.0)
        }
        fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<Lease>, StorageError> {
            Primitives::try_acquire_lease(&self.0, key, ttl)
        }
        fn release_lease(&self, lease: &Lease) -> Result<(), StorageError> {
            Primitives::release_lease(&self.0, lease)
        }
        fn extend_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StorageError> {
            Primitives::extend_lease(&self.0, lease, ttl)
        }
    }
    let key = TokenKey::Integration;
    let s = NoState(seeded(&key, expired("OLD", "R")));
    let engine = budget_engine(10);
    // A bucket of one call (a tenth of 10, at least one): the first run calls, the second,
    // on a still-valid token, is deferred by this process's own budget.
    let (first, _) =
        drive_with(&s, &engine, key.clone(), Mode::GetValid, |_, _| Ok(ok_body("NEW", Some("R2"))));
    assert!(first.refreshed);
    let cur = BlockingCoordinatedTokenStorage::load(&s, &key).unwrap().unwrap();
    BlockingCoordinatedTokenStorage::store(
        &s,
        &key,
        &refresh_ahead("AHEAD", "R2"),
        Expect::Version(cur.version),
    )
    .unwrap();
    let (second, trace) = drive_with(&s, &engine, key, Mode::GetValid, |_, _| panic!("no call"));
    assert!(trace.sent.is_empty());
    assert!(second.deferred_until.is_some());
}
