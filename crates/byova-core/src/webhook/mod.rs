//! Webex webhooks, by concern: the `X-Spark-Signature` (`signature.rs`), `serviceApp`
//! deliveries and the gate they pass (`delivery.rs`), and the `/webhooks` API as request values
//! (`registration.rs`).

mod delivery;
mod registration;
mod signature;

pub use crate::builder::{parse_webhook_secrets, webhook_secrets};
pub use delivery::*;
pub use registration::*;
pub use signature::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByovaConfig;
    use crate::error::{Error, SignatureError};
    use crate::http::{HttpResponse, Method, RetryClass};
    use crate::ids::encode_webex_id;
    use crate::secret::{AccessToken, WebhookSecret};
    use crate::time::Timestamp;

    const VECTOR_SIG: &str = "9e3f8035dcfe0c9b0c40f10cab7c44b505bd746a";

    #[test]
    fn signature_vector_and_case() {
        let secret = WebhookSecret::new("example-secret");
        assert_eq!(sign(&secret, br#"{"id":"x"}"#), VECTOR_SIG);
        assert_eq!(verify_signature(&secret, br#"{"id":"x"}"#, Some(VECTOR_SIG)), Ok(()));
        assert_eq!(verify_signature(&secret, br#"{"id":"x"}"#, Some(&VECTOR_SIG.to_uppercase())), Ok(()));
        assert_eq!(
            verify_signature(&secret, br#"{"id": "x"}"#, Some(VECTOR_SIG)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(&WebhookSecret::new("other"), br#"{"id":"x"}"#, Some(VECTOR_SIG)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn malformed_signature_headers() {
        let secret = WebhookSecret::new("example-secret");
        let body = br#"{"id":"x"}"#;
        assert_eq!(verify_signature(&secret, body, None), Err(SignatureError::Missing));
        assert_eq!(verify_signature(&secret, body, Some("  ")), Err(SignatureError::Missing));
        for bad in [
            &VECTOR_SIG[..38],
            &format!("{VECTOR_SIG}00")[..],
            "zz3f8035dcfe0c9b0c40f10cab7c44b505bd746a",
            "é3f8035dcfe0c9b0c40f10cab7c44b505bd746a",
        ] {
            assert_eq!(verify_signature(&secret, body, Some(bad)), Err(SignatureError::Malformed), "{bad}");
        }
        let big = vec![b' '; MAX_WEBHOOK_BODY_BYTES + 1];
        assert_eq!(verify_signature(&secret, &big, Some(VECTOR_SIG)), Err(SignatureError::TooLarge));
    }

    fn org(uuid: &str) -> String {
        encode_webex_id("us", "ORGANIZATION", uuid)
    }

    #[test]
    fn parses_the_reference_delivery() {
        let body = format!(
            r#"{{"id":"WH1","name":"n","targetUrl":"https://x","resource":"serviceApp","event":"authorized",
               "orgId":"{}","createdBy":"p","appId":"a","ownedBy":"creator","status":"active",
               "created":"2026-01-02T03:04:05.678Z","actorId":"p","data":{{"id":"APP","orgId":"{}"}}}}"#,
            org("12345678-9abc-4def-8123-456789abcdef"),
            org("12345678-9abc-4def-8123-456789abcdef")
        );
        let e = parse_service_app_event(body.as_bytes()).unwrap();
        assert_eq!(e.kind, ServiceAppEventKind::Authorized);
        assert_eq!(e.org_id, "12345678-9abc-4def-8123-456789abcdef");
        assert_eq!(e.webhook_id.as_deref(), Some("WH1"));
        assert_eq!(e.application_id.as_deref(), Some("APP"));
    }

    #[test]
    fn the_unambiguous_authorizer_org_comes_first_then_the_envelope_then_data() {
        // The guide's shape: the envelope names the provider (the webhook's owner).
        let guide = format!(
            r#"{{"resource":"serviceApp","event":"authorized","orgId":"{}","created":"2025-01-01T00:00:00Z",
               "data":{{"authorizerOrgId":"{}","authorizationDate":"2026-05-06T07:08:09.123Z"}}}}"#,
            org("00000000-0000-0000-0000-00000000abcd"),
            org("12345678-9abc-4def-8123-456789abcdef")
        );
        let e = parse_service_app_event(guide.as_bytes()).unwrap();
        assert_eq!(
            (e.org_id.as_str(), e.org_source),
            ("12345678-9abc-4def-8123-456789abcdef", "data.authorizerOrgId")
        );
        assert_eq!(
            e.occurred_at,
            Timestamp::parse_rfc3339("2026-05-06T07:08:09.123Z"),
            "the event's own time"
        );
        // Cisco's sample: the customer in the envelope, no per-event time (never `created`).
        let sample = format!(
            r#"{{"resource":"serviceApp","event":"deauthorized","orgId":"{}","created":"2025-01-01T00:00:00Z"}}"#,
            org("aaaa")
        );
        let e = parse_service_app_event(sample.as_bytes()).unwrap();
        assert_eq!(
            (e.kind, e.org_id.as_str(), e.org_source),
            (ServiceAppEventKind::Deauthorized, "aaaa", "orgId")
        );
        assert_eq!(e.occurred_at, None);
        let data_only = format!(
            r#"{{"resource":"serviceApp","event":"authorized","orgId":"","data":{{"orgId":"{}"}}}}"#,
            org("bbbb")
        );
        assert_eq!(parse_service_app_event(data_only.as_bytes()).unwrap().org_source, "data.orgId");
        let padded = format!("{}==", org("12345678-9abc-4def-8123-456789abcde"));
        let plain = format!(
            r#"{{"resource":"serviceApp","event":"authorized","orgId":"{padded}","data":{{"authorizerOrgId":" 12345678-9abc-4def-8123-456789abcdef "}}}}"#
        );
        assert_eq!(
            parse_service_app_event(plain.as_bytes()).unwrap().org_id,
            "12345678-9abc-4def-8123-456789abcdef"
        );
    }

    #[test]
    fn malformed_deliveries_are_typed_errors() {
        let cases = [
            "".to_owned(),
            "not json".to_owned(),
            "[]".to_owned(),
            r#"{"resource":"messages","event":"created","orgId":"x"}"#.to_owned(),
            format!(r#"{{"resource":"serviceApp","event":"updated","orgId":"{}"}}"#, org("o")),
            r#"{"resource":"serviceApp","event":"authorized"}"#.to_owned(),
            r#"{"resource":"serviceApp","event":"authorized","orgId":"!!!"}"#.to_owned(),
            r#"{"resource":"serviceApp","event":"authorized","orgId":5}"#.to_owned(),
            " ".repeat(MAX_WEBHOOK_BODY_BYTES + 1),
        ];
        for case in cases {
            assert!(
                matches!(parse_service_app_event(case.as_bytes()), Err(Error::InvalidInput(_))),
                "{case:.60}"
            );
        }
    }

    #[test]
    fn the_gate_verifies_with_any_current_secret_remembers_nothing_and_filters_applications() {
        let (new, old) = (WebhookSecret::new("new"), WebhookSecret::new("old"));
        let gate = WebhookGate::new("APP", WebhookVerification::signed(vec![new.clone(), old.clone()]));
        let body = format!(
            r#"{{"id":"W","resource":"serviceApp","event":"authorized","orgId":"{}","data":{{"id":"APP"}}}}"#,
            org("o")
        );
        assert!(matches!(
            gate.admit(body.as_bytes(), None),
            Err(Error::WebhookSignature(SignatureError::Missing))
        ));
        for secret in [&new, &old] {
            let sig = sign(secret, body.as_bytes());
            for _ in 0..2 {
                assert!(
                    matches!(gate.admit(body.as_bytes(), Some(&sig)).unwrap(), Admission::Act(_)),
                    "repeats act"
                );
            }
        }
        let stranger = sign(&WebhookSecret::new("retired long ago"), body.as_bytes());
        assert!(matches!(
            gate.admit(body.as_bytes(), Some(&stranger)),
            Err(Error::WebhookSignature(SignatureError::Mismatch))
        ));
        let other = body.replace("\"APP\"", "\"OTHER\"");
        let sig = sign(&new, other.as_bytes());
        assert!(matches!(
            gate.admit(other.as_bytes(), Some(&sig)).unwrap(),
            Admission::Done(WebhookOutcome::OtherApplication)
        ));
        let open = WebhookGate::new("APP", WebhookVerification::UnsignedAllowed);
        assert!(matches!(open.admit(body.as_bytes(), None).unwrap(), Admission::Act(_)));
    }

    /// Rule 12: leaving the secret out never turns verification off.
    #[test]
    fn a_gate_without_a_secret_refuses_everything_unless_unsigned_is_allowed_by_name() {
        let body =
            format!(r#"{{"id":"W","resource":"serviceApp","event":"deauthorized","orgId":"{}"}}"#, org("o"));
        for gate in [
            WebhookGate::new("APP", WebhookVerification::default()),
            WebhookGate::new("APP", WebhookVerification::signed(Vec::new())),
        ] {
            for signature in [None, Some("0".repeat(40))] {
                let err = gate.admit(body.as_bytes(), signature.as_deref()).unwrap_err();
                assert!(
                    matches!(&err, Error::Configuration(m) if m.contains("allow_unsigned_webhooks")),
                    "{err}"
                );
            }
            assert!(gate.verification().current_secret().is_none());
        }
        let open = WebhookGate::new("APP", WebhookVerification::UnsignedAllowed);
        assert!(matches!(open.admit(body.as_bytes(), None).unwrap(), Admission::Act(_)));
        assert!(open.verification().allows_unsigned());
    }

    #[test]
    fn link_header_parsing() {
        assert_eq!(
            next_link(r#"<https://w.test/v1/webhooks?max=2&cursor=abc>; rel="next""#).as_deref(),
            Some("https://w.test/v1/webhooks?max=2&cursor=abc")
        );
        assert_eq!(
            next_link(r#"<https://a>; rel="first", <https://b>; rel="next""#).as_deref(),
            Some("https://b")
        );
        assert_eq!(next_link(r#"<https://a>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn snapshot_webhook_requests() {
        let config = ByovaConfig::with_base_url("https://w.test/v1").unwrap();
        let token = AccessToken::new("BEARER-CANARY");
        let list = list_webhooks_request(&config, &token, 100);
        assert_eq!((list.method, list.url.as_str()), (Method::Get, "https://w.test/v1/webhooks?max=100"));
        assert_eq!(list.header_value("authorization"), Some("Bearer BEARER-CANARY"));
        assert!(next_page_request(&config, &token, "https://w.test/v1/webhooks?cursor=x").is_ok());
        assert!(next_page_request(&config, &token, "https://evil.test/v1/webhooks?cursor=x").is_err());
        assert!(next_page_request(&config, &token, "https://w.test/v1x/steal").is_err());
        let [auth, _deauth] =
            NewWebhook::service_app_pair("APPID", "https://hook.test/x", Some(&WebhookSecret::new("S")));
        let create = create_webhook_request(&config, &token, &auth);
        assert_eq!(create.retry, RetryClass::OnlyIfNotProcessed);
        assert_eq!(
            String::from_utf8(create.body.to_vec()).unwrap(),
            r#"{"event":"authorized","filter":"id=APPID","name":"byova serviceApp authorized","resource":"serviceApp","secret":"S","targetUrl":"https://hook.test/x"}"#
        );
        let del = delete_webhook_request(&config, &token, "a/b");
        assert_eq!((del.method, del.url.as_str()), (Method::Delete, "https://w.test/v1/webhooks/a%2Fb"));
    }

    #[test]
    fn ensure_creates_what_is_missing_reactivates_and_moves_to_the_current_secret() {
        let current = WebhookSecret::new("new");
        let wanted = NewWebhook::service_app_pair("APPID", "https://hook.test/x", Some(&current));
        let existing: Vec<Webhook> = serde_json::from_str(
            r#"[{"id":"1","targetUrl":"https://hook.test/x","resource":"serviceApp","event":"authorized","filter":"id=APPID","status":"active","secret":"new"},
                {"id":"2","targetUrl":"https://other/x","resource":"serviceApp","event":"deauthorized","filter":"id=APPID"}]"#,
        ).unwrap();
        let changes = webhook_changes(&wanted, &existing);
        assert!(matches!(changes.as_slice(), [WebhookChange::Create(w)] if w.event == "deauthorized"));
        let disabled_or_old: Vec<Webhook> = serde_json::from_str(
            r#"[{"id":"1","targetUrl":"https://hook.test/x","resource":"serviceApp","event":"authorized","filter":"id=APPID","status":"inactive","secret":"new"},
                {"id":"2","targetUrl":"https://hook.test/x","resource":"serviceApp","event":"deauthorized","filter":"id=APPID","status":"active","secret":"old"}]"#,
        ).unwrap();
        let ids: Vec<String> = webhook_changes(&wanted, &disabled_or_old)
            .into_iter()
            .map(|c| match c {
                WebhookChange::Update { id, .. } => id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, ["1", "2"]);
        assert!(format!("{:?}", disabled_or_old[1]).contains("[redacted]"), "an echoed secret never prints");
        let unsigned = NewWebhook::service_app_pair("APPID", "https://hook.test/x", None);
        let ok: Vec<Webhook> = serde_json::from_str(
            r#"[{"id":"1","targetUrl":"https://hook.test/x","resource":"serviceApp","event":"authorized","filter":"id=APPID"},
                {"id":"2","targetUrl":"https://hook.test/x","resource":"serviceApp","event":"deauthorized","filter":"id=APPID","status":"active"}]"#,
        ).unwrap();
        assert!(webhook_changes(&unsigned, &ok).is_empty());
        let duplicates: Vec<Webhook> = serde_json::from_str(
            r#"[{"id":"1","targetUrl":"https://hook.test/x","resource":"serviceApp","event":"authorized","filter":"id=APPID","status":"active","secret":"new"},
                {"id":"3","targetUrl":"https://hook.test/x","resource":"serviceApp","event":"authorized","filter":"id=APPID","status":"active","secret":"old"},
                {"id":"2","targetUrl":"https://hook.test/x","resource":"serviceApp","event":"deauthorized","filter":"id=APPID","status":"active"}]"#,
        ).unwrap();
        let ids: Vec<String> = webhook_changes(&wanted, &duplicates)
            .into_iter()
            .map(|c| match c {
                WebhookChange::Update { id, .. } => id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, ["3", "2"], "a duplicate on the old secret and one that does not show its secret");
        let update = update_webhook_request(
            &ByovaConfig::with_base_url("https://w.test/v1").unwrap(),
            &AccessToken::new("T"),
            "a/b",
            &wanted[0],
        );
        assert_eq!((update.method, update.url.as_str()), (Method::Put, "https://w.test/v1/webhooks/a%2Fb"));
    }

    #[test]
    fn webhook_page_and_deletion_parsing() {
        let page = HttpResponse::new(
            200,
            vec![("link".into(), r#"<https://w/v1/webhooks?cursor=2>; rel="next""#.into())],
            br#"{"items":[{"id":"1"}]}"#.to_vec(),
        );
        let p = parse_webhook_page(&page).unwrap();
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.next.as_deref(), Some("https://w/v1/webhooks?cursor=2"));
        assert!(parse_webhook_page(&HttpResponse::new(200, vec![], b"{}".to_vec())).is_err());
        assert!(matches!(
            parse_webhook_page(&HttpResponse::new(401, vec![], vec![])),
            Err(Error::Authentication(_))
        ));
        assert!(parse_webhook_deletion(&HttpResponse::new(204, vec![], vec![])).is_ok());
        assert!(parse_webhook_deletion(&HttpResponse::new(404, vec![], vec![])).is_ok());
        assert!(parse_webhook_deletion(&HttpResponse::new(500, vec![], vec![])).is_err());
    }
}
