//! The JWS checks that need no signature: form, algorithm, issuer, claims, key sets, and the
//! key cache's decisions. Signatures are checked end to end against the fake broker's keys
//! (signed by aws-lc-rs, an implementation independent of the one verifying here) in the
//! flavours' tests.

use super::*;
use proptest::prelude::*;

const URL: &str = "https://gateway.example.com/byova";
const ISSUER: &str = "https://idbroker.webex.com/idb";

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

fn token(header: &Value, claims: &Value) -> String {
    format!("{}.{}.{}", b64(header), b64(claims), URL_SAFE_NO_PAD.encode([7u8; 256]))
}

fn claims(now: u64) -> Value {
    serde_json::json!({
        "iss": ISSUER,
        "sub": "callAudioData",
        "aud": "BYOVAGateway",
        "jti": "3d0d4a4b-5f1e-4a0e-9e0a-7d8f2f6f1c11",
        "exp": now + 300,
        "iat": now - 5,
        "com.cisco.datasource.url": URL,
        "com.cisco.datasource.schema.uuid": BYOVA_SCHEMA_ID,
        "com.cisco.org.id": "63b02f90-9cc6-43b8-aa6d-cad425ac554c",
    })
}

fn header() -> Value {
    serde_json::json!({"alg": "RS256", "kid": "k1", "typ": "JWT"})
}

const NOW: u64 = 1_800_000_000;

fn at(secs: u64) -> Timestamp {
    Timestamp::from_unix_secs(secs)
}

fn policy() -> JwsPolicy {
    JwsPolicy::new(URL).unwrap()
}

/// The claims of `claims` under the policy (the signature is not looked at here).
fn check(claims: &Value, now: u64) -> std::result::Result<VerifiedClaims, JwsError> {
    let token = token(&header(), claims);
    let p = policy();
    let jws = p.inspect(&token)?;
    p.check_claims(&jws, at(now))
}

#[test]
fn a_well_formed_token_for_this_data_source_passes_its_claims() {
    let verified = check(&claims(NOW), NOW).unwrap();
    assert_eq!(verified.issuer, ISSUER);
    assert_eq!(verified.subject, "callAudioData");
    assert_eq!(verified.audience, ["BYOVAGateway"]);
    assert_eq!(verified.data_source_url, URL);
    assert_eq!(verified.expires_at, at(NOW + 300));
    assert_eq!(verified.claims["com.cisco.org.id"], "63b02f90-9cc6-43b8-aa6d-cad425ac554c");
}

#[test]
fn each_claim_problem_has_its_own_error() {
    let with = |f: &dyn Fn(&mut Map<String, Value>)| {
        let mut c = claims(NOW);
        f(c.as_object_mut().unwrap());
        check(&c, NOW).unwrap_err()
    };
    assert_eq!(with(&|c| drop(c.insert("exp".into(), (NOW - 31).into()))), JwsError::Expired);
    assert_eq!(with(&|c| drop(c.insert("nbf".into(), (NOW + 31).into()))), JwsError::NotYetValid);
    assert_eq!(with(&|c| drop(c.insert("iat".into(), (NOW + 600).into()))), JwsError::NotYetValid);
    assert_eq!(with(&|c| drop(c.remove("exp"))), JwsError::MissingClaim("exp"));
    assert_eq!(with(&|c| drop(c.insert("exp".into(), "soon".into()))), JwsError::MissingClaim("exp"));
    assert_eq!(with(&|c| drop(c.remove("jti"))), JwsError::MissingClaim("jti"));
    assert_eq!(with(&|c| drop(c.insert("jti".into(), "".into()))), JwsError::MissingClaim("jti"));
    assert_eq!(with(&|c| drop(c.remove("sub"))), JwsError::MissingClaim("sub"));
    assert_eq!(with(&|c| drop(c.insert("aud".into(), serde_json::json!([])))), JwsError::MissingClaim("aud"));
    assert_eq!(
        with(&|c| drop(c.insert(DATA_SOURCE_URL_CLAIM.into(), "https://other.example.com".into()))),
        JwsError::WrongDataSourceUrl
    );
    assert_eq!(
        with(&|c| drop(c.remove(DATA_SOURCE_URL_CLAIM))),
        JwsError::MissingClaim(DATA_SOURCE_URL_CLAIM)
    );
    assert_eq!(
        with(&|c| drop(c.insert(SCHEMA_CLAIM.into(), "78efc775-dd2b-4d5a-9f3b-1d0bd6d4b5a1".into()))),
        JwsError::WrongSchema
    );
}

#[test]
fn the_leeway_forgives_a_little_clock_skew_and_no_more() {
    let mut c = claims(NOW);
    c["exp"] = (NOW - 29).into();
    assert!(check(&c, NOW).is_ok(), "29 s past exp, within 30 s of leeway");
    c["exp"] = (NOW - 30).into();
    assert_eq!(check(&c, NOW).unwrap_err(), JwsError::Expired);
    let strict = policy().with_leeway(Duration::ZERO);
    let t = token(&header(), &claims(NOW));
    let jws = strict.inspect(&t).unwrap();
    assert_eq!(strict.check_claims(&jws, at(NOW + 300)).unwrap_err(), JwsError::Expired);
    assert_eq!(policy().with_leeway(Duration::from_secs(3600)).leeway, Duration::from_secs(300), "capped");
}

#[test]
fn the_form_algorithm_key_id_and_issuer_are_checked_before_any_key() {
    let p = policy();
    let refuse = |t: &str| p.inspect(t).unwrap_err();
    assert_eq!(refuse("a.b"), JwsError::Malformed("not three dot-separated parts"));
    assert_eq!(refuse("a.b.c.d"), JwsError::Malformed("not three dot-separated parts"));
    assert_eq!(refuse("!!.b.c"), JwsError::Malformed("the header is not base64url"));
    let not_json = format!("{}.{}.c2ln", URL_SAFE_NO_PAD.encode("[1]"), b64(&claims(NOW)));
    assert_eq!(refuse(&not_json), JwsError::Malformed("the header is not a JSON object"));
    for alg in ["none", "HS256", "RS512", "PS256", "ES256", "rs256"] {
        let t = token(&serde_json::json!({"alg": alg, "kid": "k1"}), &claims(NOW));
        assert_eq!(refuse(&t), JwsError::Algorithm, "{alg}");
    }
    let unsigned = format!("{}.{}.", b64(&serde_json::json!({"alg": "none"})), b64(&claims(NOW)));
    assert_eq!(refuse(&unsigned), JwsError::Algorithm);
    let empty_signature = format!("{}.{}.", b64(&header()), b64(&claims(NOW)));
    assert_eq!(refuse(&empty_signature), JwsError::Malformed("the signature is empty"));
    let no_kid = token(&serde_json::json!({"alg": "RS256"}), &claims(NOW));
    assert_eq!(refuse(&no_kid), JwsError::MissingKeyId);
    let crit = token(&serde_json::json!({"alg": "RS256", "kid": "k1", "crit": ["exp"]}), &claims(NOW));
    assert!(matches!(refuse(&crit), JwsError::Malformed(_)));
    let mut c = claims(NOW);
    c["iss"] = "https://attacker.example/idb".into();
    assert_eq!(refuse(&token(&header(), &c)), JwsError::UntrustedIssuer);
    c["iss"] = "https://idbroker.webex.com/idb.attacker.example".into();
    assert_eq!(refuse(&token(&header(), &c)), JwsError::UntrustedIssuer);
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(refuse(&token(&header(), &c)), JwsError::MissingClaim("iss"));
    assert_eq!(refuse(&"a".repeat(MAX_TOKEN_BYTES + 1)), JwsError::TooLarge);
    // A trailing slash on the issuer is the same issuer.
    let mut c = claims(NOW);
    c["iss"] = format!("{ISSUER}/").into();
    assert_eq!(p.inspect(&token(&header(), &c)).unwrap().issuer(), ISSUER);
}

#[test]
fn errors_never_echo_the_token() {
    let mut c = claims(NOW);
    c["iss"] = "https://SECRET-CANARY.example".into();
    let t = token(&header(), &c);
    let e = policy().inspect(&t).unwrap_err();
    assert!(!e.to_string().contains("CANARY") && !format!("{e:?}").contains("CANARY"));
    let jws = Jws::parse(&t).unwrap();
    assert!(!format!("{jws:?}").contains(&t[..20]), "Debug shows the issuer and kid, not the token");
}

#[test]
fn trusted_issuers_are_https_or_loopback_and_never_empty() {
    let p =
        policy().with_trusted_issuers(["https://idbroker.example/idb/", "http://127.0.0.1:9/idb"]).unwrap();
    assert_eq!(p.trusted_issuers(), ["https://idbroker.example/idb", "http://127.0.0.1:9/idb"]);
    for bad in
        ["http://idbroker.example/idb", "http://localhost:1@evil.example/idb", "ftp://x", "https://", ""]
    {
        assert!(policy().with_trusted_issuers([bad]).is_err(), "{bad}");
    }
    assert!(policy().with_trusted_issuers(Vec::<String>::new()).is_err());
    assert!(JwsPolicy::new(" ").is_err());
}

/// A key set with RSA keys `kids` (2048-bit moduli: the cache's tests need no real key).
fn key_set(kids: &[&str]) -> JwkSet {
    let n = URL_SAFE_NO_PAD.encode([0xC5u8; 256]);
    let keys: Vec<Value> = kids
        .iter()
        .map(|kid| serde_json::json!({"kty": "RSA", "kid": kid, "n": n, "e": "AQAB", "use": "sig"}))
        .collect();
    JwkSet::parse(&serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap()).unwrap()
}

#[test]
fn a_key_set_keeps_rsa_signing_keys_of_2048_bits_or_more() {
    let big = URL_SAFE_NO_PAD.encode([0xC5u8; 256]);
    let small = URL_SAFE_NO_PAD.encode([0xC5u8; 128]);
    let doc = serde_json::json!({"keys": [
        {"kty": "RSA", "kid": "ok", "n": big, "e": "AQAB", "alg": "RS256"},
        {"kty": "RSA", "kid": "small", "n": small, "e": "AQAB"},
        {"kty": "RSA", "kid": "enc", "n": big, "e": "AQAB", "use": "enc"},
        {"kty": "RSA", "kid": "ps", "n": big, "e": "AQAB", "alg": "PS256"},
        {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
    ]});
    let set = JwkSet::parse(&serde_json::to_vec(&doc).unwrap()).unwrap();
    assert_eq!(set.keys().iter().map(RsaKey::kid).collect::<Vec<_>>(), ["ok"]);
    assert!(set.key("small").is_none());
    for bad in [&b"not json"[..], b"{}", br#"{"keys":[]}"#] {
        assert!(matches!(JwkSet::parse(bad), Err(JwsError::KeysUnavailable(_))));
    }
}

#[test]
fn a_signature_that_is_not_the_keys_is_refused() {
    let p = policy();
    let t = token(&header(), &claims(NOW));
    let jws = p.inspect(&t).unwrap();
    assert_eq!(p.verify(&jws, &key_set(&["k1"]), at(NOW)).unwrap_err(), JwsError::BadSignature);
    assert_eq!(p.verify(&jws, &key_set(&["k2"]), at(NOW)).unwrap_err(), JwsError::UnknownKey);
}

fn ready(lookup: KeyLookup) -> bool {
    matches!(lookup, KeyLookup::Ready(_))
}

#[test]
fn the_cache_fetches_once_then_serves_until_the_keys_age() {
    let cache = JwksCache::new(JwksCachePolicy::default());
    assert!(matches!(cache.lookup(ISSUER, "k1", at(NOW)), KeyLookup::Fetch));
    cache.fetched(ISSUER, Ok(key_set(&["k1"])), at(NOW));
    assert!(ready(cache.after_fetch(ISSUER, "k1", at(NOW))));
    assert!(ready(cache.lookup(ISSUER, "k1", at(NOW + 3599))));
    assert!(
        matches!(cache.lookup(ISSUER, "k1", at(NOW + 3600)), KeyLookup::Refresh(_)),
        "an hour on: refetch, serving meanwhile"
    );
    assert!(matches!(cache.lookup("https://idbroker-eu.webex.com/idb", "k1", at(NOW)), KeyLookup::Fetch));
}

#[test]
fn unknown_kids_refetch_at_most_once_per_minimum_interval() {
    let cache = JwksCache::new(JwksCachePolicy::default());
    cache.fetched(ISSUER, Ok(key_set(&["k1"])), at(NOW));
    // Within 30 s of the fetch, any number of unknown kids are refused without a fetch.
    for i in 0..1000 {
        match cache.lookup(ISSUER, &format!("random-{i}"), at(NOW + 29)) {
            KeyLookup::Refused(JwsError::UnknownKey) => {}
            other => panic!("{other:?}"),
        }
    }
    // Then one fetch may happen: the broker rotated its key.
    assert!(matches!(cache.lookup(ISSUER, "k2", at(NOW + 30)), KeyLookup::Fetch));
    cache.fetched(ISSUER, Ok(key_set(&["k1", "k2"])), at(NOW + 30));
    assert!(ready(cache.after_fetch(ISSUER, "k2", at(NOW + 30))));
    assert!(matches!(
        cache.after_fetch(ISSUER, "k3", at(NOW + 30)),
        KeyLookup::Refused(JwsError::UnknownKey)
    ));
    assert!(matches!(cache.lookup(ISSUER, "k3", at(NOW + 31)), KeyLookup::Refused(JwsError::UnknownKey)));
}

#[test]
fn stale_keys_serve_while_the_broker_fails_then_a_clear_error() {
    let policy =
        JwksCachePolicy::new(Duration::from_secs(3600), Duration::from_secs(30), Duration::from_secs(600));
    let cache = JwksCache::new(policy);
    cache.fetched(ISSUER, Ok(key_set(&["k1"])), at(NOW));
    let aged = NOW + 3600;
    assert!(
        matches!(cache.lookup(ISSUER, "k1", at(aged)), KeyLookup::Refresh(_)),
        "refresh, the old keys serving meanwhile"
    );
    assert!(
        matches!(cache.lookup(ISSUER, "k2", at(aged)), KeyLookup::Fetch),
        "an unknown kid waits for the fetch"
    );
    let throttled = FetchFailure {
        message: "the identity broker answered 429".into(),
        retry_after: Some(Duration::from_secs(120)),
    };
    cache.fetched(ISSUER, Err(throttled), at(aged));
    assert!(ready(cache.after_fetch(ISSUER, "k1", at(aged))), "the stale keys serve");
    assert!(ready(cache.lookup(ISSUER, "k1", at(aged + 60))), "no fetch before Retry-After");
    assert!(matches!(cache.lookup(ISSUER, "k1", at(aged + 120)), KeyLookup::Refresh(_)));
    cache.fetched(
        ISSUER,
        Err(FetchFailure { message: "cannot connect".into(), retry_after: None }),
        at(aged + 120),
    );
    assert!(
        ready(cache.lookup(ISSUER, "k1", at(aged + 140))),
        "within the stale bound, before the next fetch"
    );
    match cache.lookup(ISSUER, "k1", at(aged + 600)) {
        KeyLookup::Fetch => {}
        other => panic!("{other:?}"),
    }
    cache.fetched(
        ISSUER,
        Err(FetchFailure { message: "cannot connect".into(), retry_after: None }),
        at(aged + 600),
    );
    match cache.after_fetch(ISSUER, "k1", at(aged + 600)) {
        KeyLookup::Refused(JwsError::KeysUnavailable(why)) => {
            assert!(why.contains("cannot connect") && why.contains("too old"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    // A first fetch that fails is refused at once, and not retried before the interval.
    let fresh = JwksCache::new(JwksCachePolicy::default());
    fresh.fetched(
        ISSUER,
        Err(FetchFailure { message: "the identity broker answered 503".into(), retry_after: None }),
        at(NOW),
    );
    assert!(matches!(
        fresh.after_fetch(ISSUER, "k1", at(NOW)),
        KeyLookup::Refused(JwsError::KeysUnavailable(_))
    ));
    assert!(matches!(
        fresh.lookup(ISSUER, "k1", at(NOW + 10)),
        KeyLookup::Refused(JwsError::KeysUnavailable(_))
    ));
    assert!(matches!(fresh.lookup(ISSUER, "k1", at(NOW + 30)), KeyLookup::Fetch));
}

#[test]
fn the_key_request_goes_to_the_issuers_verification_jwk_path() {
    let req = jwks_request("https://idbroker.webex.com/idb/");
    assert_eq!(req.url, "https://idbroker.webex.com/idb/oauth2/v2/keys/verificationjwk");
    let throttled = HttpResponse::new(429, vec![("Retry-After".into(), "90".into())], b"<html/>".to_vec());
    let failure = jwks_response(&throttled).unwrap_err();
    assert_eq!(failure.retry_after, Some(Duration::from_secs(90)));
    assert!(failure.message.contains("429"));
}

proptest! {
    #[test]
    fn any_text_is_parsed_or_refused_without_panicking(text in ".{0,400}") {
        let _ = policy().inspect(&text);
    }

    #[test]
    fn any_three_base64_parts_are_parsed_or_refused_without_panicking(
        header in proptest::collection::vec(any::<u8>(), 0..80),
        claims in proptest::collection::vec(any::<u8>(), 0..200),
        signature in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let t = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims),
            URL_SAFE_NO_PAD.encode(signature)
        );
        let _ = policy().inspect(&t);
    }

    #[test]
    fn tokens_keep_their_issuer_kid_and_claims(kid in "[A-Za-z0-9_-]{1,40}", jti in "[a-z0-9-]{1,36}", exp in 1u64..4_000_000_000) {
        let mut c = claims(NOW);
        c["jti"] = jti.clone().into();
        c["exp"] = exp.into();
        let t = token(&serde_json::json!({"alg": "RS256", "kid": kid}), &c);
        let p = policy();
        let jws = p.inspect(&t).unwrap();
        prop_assert_eq!(jws.key_id(), kid.as_str());
        prop_assert_eq!(jws.issuer(), ISSUER);
        match p.check_claims(&jws, at(NOW)) {
            Ok(v) => {
                prop_assert_eq!(v.jti, jti);
                prop_assert!(exp + 30 > NOW);
            }
            Err(e) => prop_assert!(e == JwsError::Expired && exp + 30 <= NOW, "{:?}", e),
        }
    }
}

#[test]
fn a_fetch_counts_from_its_start_and_retry_after_is_capped() {
    let cache = JwksCache::new(JwksCachePolicy::default());
    cache.fetched(ISSUER, Ok(key_set(&["k1"])), at(NOW));
    assert!(matches!(cache.lookup(ISSUER, "k9", at(NOW + 30)), KeyLookup::Fetch));
    // The caller that began this fetch never reports (its request was cancelled): no other
    // fetch before the interval.
    cache.begin_fetch(ISSUER, at(NOW + 30));
    assert!(
        matches!(cache.lookup(ISSUER, "k9", at(NOW + 31)), KeyLookup::Fetch),
        "wait for the fetch in flight"
    );
    assert!(matches!(
        cache.lookup_after_wait(ISSUER, "k9", at(NOW + 59)),
        KeyLookup::Refused(JwsError::UnknownKey)
    ));
    assert!(matches!(cache.lookup_after_wait(ISSUER, "k9", at(NOW + 60)), KeyLookup::Fetch));
    // One answer asking for a very long pause holds fetches back five minutes at most.
    let forever = FetchFailure {
        message: "the identity broker answered 429".into(),
        retry_after: Some(Duration::from_secs(999_999_999)),
    };
    cache.fetched(ISSUER, Err(forever), at(NOW + 60));
    assert!(matches!(cache.lookup(ISSUER, "k9", at(NOW + 359)), KeyLookup::Refused(_)));
    assert!(matches!(cache.lookup(ISSUER, "k9", at(NOW + 360)), KeyLookup::Fetch));
    // Retry-After counts on 429 and 503 only.
    let error = HttpResponse::new(500, vec![("Retry-After".into(), "90".into())], Vec::new());
    assert_eq!(jwks_response(&error).unwrap_err().retry_after, None);
}

#[test]
fn verify_checks_the_issuer_even_without_inspect() {
    let mut c = claims(NOW);
    c["iss"] = "https://attacker.example/idb".into();
    let t = token(&header(), &c);
    let jws = Jws::parse(&t).unwrap();
    assert_eq!(policy().verify(&jws, &key_set(&["k1"]), at(NOW)).unwrap_err(), JwsError::UntrustedIssuer);
}

#[test]
fn a_failed_fetch_for_a_new_kid_is_unavailable_not_unknown() {
    let cache = JwksCache::new(JwksCachePolicy::default());
    cache.fetched(ISSUER, Ok(key_set(&["k1"])), at(NOW));
    cache.begin_fetch(ISSUER, at(NOW + 30));
    let down = FetchFailure {
        message: "the identity broker answered 503".into(),
        retry_after: Some(Duration::from_secs(60)),
    };
    cache.fetched(ISSUER, Err(down), at(NOW + 30));
    // The broker was not asked about k2: a token signed with a key it rotated in may be real.
    match cache.after_fetch(ISSUER, "k2", at(NOW + 30)) {
        KeyLookup::Refused(JwsError::KeysUnavailable(why)) => assert!(why.contains("503"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        cache.lookup_after_wait(ISSUER, "k2", at(NOW + 60)),
        KeyLookup::Refused(JwsError::KeysUnavailable(_))
    ));
    assert!(ready(cache.lookup(ISSUER, "k1", at(NOW + 60))), "the keys it has still serve");
    assert!(
        matches!(cache.lookup(ISSUER, "k2", at(NOW + 90)), KeyLookup::Fetch),
        "503's Retry-After honoured"
    );
    cache.fetched(ISSUER, Ok(key_set(&["k1"])), at(NOW + 90));
    assert!(
        matches!(cache.after_fetch(ISSUER, "k2", at(NOW + 90)), KeyLookup::Refused(JwsError::UnknownKey)),
        "asked, and unknown"
    );
}

#[test]
fn keys_above_8192_bits_are_not_kept() {
    let huge = URL_SAFE_NO_PAD.encode(vec![0xC5u8; 1125]);
    let doc = serde_json::json!({"keys": [{"kty": "RSA", "kid": "huge", "n": huge, "e": "AQAB"}]});
    assert!(matches!(JwkSet::parse(&serde_json::to_vec(&doc).unwrap()), Err(JwsError::KeysUnavailable(_))));
    let unavailable = HttpResponse::new(503, vec![("Retry-After".into(), "90".into())], Vec::new());
    assert_eq!(jwks_response(&unavailable).unwrap_err().retry_after, Some(Duration::from_secs(90)));
}
