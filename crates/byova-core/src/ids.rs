//! Webex ids: `base64("ciscospark://<region>/<TYPE>/<uuid>")`, padding stripped.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

use crate::error::{Error, Result};

/// Derives the Service App application id from its client id: base64url, unpadded, of
/// `ciscospark://us/APPLICATION/{client_id}`.
///
/// ```
/// assert_eq!(
///     byova_core::ids::derive_application_id("C279cb30ab49470aa3eba80cd82f1175"),
///     "Y2lzY29zcGFyazovL3VzL0FQUExJQ0FUSU9OL0MyNzljYjMwYWI0OTQ3MGFhM2ViYTgwY2Q4MmYxMTc1",
/// );
/// ```
pub fn derive_application_id(service_app_client_id: &str) -> String {
    derive_application_id_in_region("us", service_app_client_id)
}

/// [`derive_application_id`] for another Webex region.
pub fn derive_application_id_in_region(region: &str, service_app_client_id: &str) -> String {
    encode_webex_id(region, "APPLICATION", service_app_client_id)
}

/// Encodes `ciscospark://{region}/{kind}/{id}` as a Webex id (base64url, unpadded).
pub fn encode_webex_id(region: &str, kind: &str, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("ciscospark://{region}/{kind}/{id}"))
}

/// Decodes base64 in any of the forms Webex ids come in: padded or not, URL-safe or standard
/// alphabet.
///
/// # Errors
/// [`Error::InvalidInput`] when the input is not base64 or does not decode to UTF-8.
pub fn decode_webex_id(encoded: &str) -> Result<String> {
    let trimmed = encoded.trim().trim_end_matches('=');
    if trimmed.is_empty() {
        return Err(Error::InvalidInput("an empty string is not a Webex id".into()));
    }
    let bytes = if trimmed.contains(['+', '/']) {
        STANDARD_NO_PAD.decode(trimmed)
    } else {
        URL_SAFE_NO_PAD.decode(trimmed)
    }
    .map_err(|_| Error::InvalidInput(format!("{} is not base64", shorten(encoded))))?;
    String::from_utf8(bytes)
        .map_err(|_| Error::InvalidInput(format!("{} does not decode to text", shorten(encoded))))
}

/// Decodes an organization id from a webhook `orgId` value.
///
/// Returns the UUID, the last path segment of `ciscospark://<region>/ORGANIZATION/<uuid>` (the
/// region may itself contain slashes-free `urn:` text, so the position is counted from the
/// end). When the decoded text is not such a URI, the whole decoded string is returned, as the
/// Python SDK does (Webex has sent base64 of a bare UUID).
///
/// ```
/// let id = "Y2lzY29zcGFyazovL3VzL09SR0FOSVpBVElPTi82M2IwMmY5MC05Y2M2LTQzYjgtYWE2ZC1jYWQ0MjVhYzU1NGM";
/// assert_eq!(byova_core::ids::decode_org_id(id)?, "63b02f90-9cc6-43b8-aa6d-cad425ac554c");
/// assert!(byova_core::ids::decode_org_id("not base64!").is_err());
/// # Ok::<(), byova_core::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidInput`] when the input is not base64 or not UTF-8.
pub fn decode_org_id(encoded_org_id: &str) -> Result<String> {
    let decoded = decode_webex_id(encoded_org_id)?;
    Ok(org_uuid_from_uri(&decoded).map(str::to_owned).unwrap_or(decoded))
}

fn org_uuid_from_uri(uri: &str) -> Option<&str> {
    let path = uri.strip_prefix("ciscospark://")?;
    let mut segments = path.rsplit('/');
    let uuid = segments.next().filter(|s| !s.is_empty())?;
    (segments.next()? == "ORGANIZATION").then_some(uuid)
}

/// Accepts an org id as either a UUID-like plain id or a base64 Webex id, returning the plain
/// id ([`OrgId::new`](crate::OrgId::new) keeps it).
pub(crate) fn normalize_org_id(org_id: &str) -> Result<String> {
    let trimmed = org_id.trim();
    if trimmed.is_empty() {
        return Err(Error::InvalidInput("the org id is empty".into()));
    }
    if looks_like_uuid(trimmed) {
        return Ok(trimmed.to_owned());
    }
    match decode_webex_id(trimmed) {
        Ok(decoded) if looks_like_uuid(&decoded) => Ok(decoded),
        Ok(decoded) if decoded.starts_with("ciscospark://") => {
            org_uuid_from_uri(&decoded).filter(|id| is_plain_org_id(id)).map(str::to_owned).ok_or_else(|| {
                Error::InvalidInput(format!("{} is a Webex id but not an organization id", shorten(trimmed)))
            })
        }
        _ => Ok(trimmed.to_owned()),
    }
}

/// Whether `id` is already in the form [`normalize_org_id`] returns (so normalizing it again
/// changes nothing): no surrounding space, and not itself a Webex id of an org.
fn is_plain_org_id(id: &str) -> bool {
    !id.is_empty()
        && id.trim() == id
        && (looks_like_uuid(id)
            || !matches!(decode_webex_id(id), Ok(d) if looks_like_uuid(&d) || d.starts_with("ciscospark://")))
}

pub(crate) fn looks_like_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(24).collect();
    if s.chars().count() > 24 {
        out.push('…');
    }
    format!("{out:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OrgId;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    use proptest::prelude::*;

    const ORG_URI: &str = "ciscospark://us/ORGANIZATION/63b02f90-9cc6-43b8-aa6d-cad425ac554c";
    const ORG_UUID: &str = "63b02f90-9cc6-43b8-aa6d-cad425ac554c";

    #[test]
    fn derive_application_id_golden() {
        assert_eq!(
            derive_application_id("Cf2e954e018f2de8c1403e2618323551df65"),
            "Y2lzY29zcGFyazovL3VzL0FQUExJQ0FUSU9OL0NmMmU5NTRlMDE4ZjJkZThjMTQwM2UyNjE4MzIzNTUxZGY2NQ"
        );
        assert_eq!(
            decode_webex_id(&derive_application_id("Cf2e954e018f2de8c1403e2618323551df65")).unwrap(),
            "ciscospark://us/APPLICATION/Cf2e954e018f2de8c1403e2618323551df65"
        );
    }

    #[test]
    fn decode_org_id_accepts_every_padding_and_alphabet() {
        let forms = [
            STANDARD.encode(ORG_URI),
            STANDARD_NO_PAD.encode(ORG_URI),
            URL_SAFE.encode(ORG_URI),
            URL_SAFE_NO_PAD.encode(ORG_URI),
        ];
        assert!(forms[0].ends_with('='), "the vector should exercise padding: {}", forms[0]);
        for form in forms {
            assert_eq!(decode_org_id(&form).unwrap(), ORG_UUID, "{form}");
        }
    }

    #[test]
    fn decode_org_id_handles_alphabet_specific_characters() {
        // Bytes chosen so the encodings contain '+'/'/' and '-'/'_'.
        let uri = "ciscospark://us/ORGANIZATION/ab>?~\u{7f}";
        assert!(STANDARD.encode(uri).contains(['+', '/']));
        assert_eq!(decode_org_id(&STANDARD.encode(uri)).unwrap(), "ab>?~\u{7f}");
        assert_eq!(decode_org_id(&URL_SAFE_NO_PAD.encode(uri)).unwrap(), "ab>?~\u{7f}");
    }

    #[test]
    fn other_decoded_strings_are_returned_whole() {
        assert_eq!(decode_org_id(&URL_SAFE_NO_PAD.encode(ORG_UUID)).unwrap(), ORG_UUID);
        let room = "ciscospark://us/ROOM/1234";
        assert_eq!(decode_org_id(&URL_SAFE_NO_PAD.encode(room)).unwrap(), room);
        let fedramp = "ciscospark://urn:TEAM:us-gov-west-1_a1/ORGANIZATION/abc";
        assert_eq!(decode_org_id(&URL_SAFE_NO_PAD.encode(fedramp)).unwrap(), "abc");
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        for bad in ["", "   ", "!!!!", "a", "Y2lz Y29z", "%%%"] {
            assert!(matches!(decode_org_id(bad), Err(Error::InvalidInput(_))), "{bad:?}");
        }
        let not_utf8 = URL_SAFE_NO_PAD.encode([0xff, 0xfe, 0xfd]);
        assert!(matches!(decode_org_id(&not_utf8), Err(Error::InvalidInput(_))));
    }

    #[test]
    fn normalize_accepts_uuid_or_encoded() {
        assert_eq!(normalize_org_id(ORG_UUID).unwrap(), ORG_UUID);
        assert_eq!(normalize_org_id(&URL_SAFE_NO_PAD.encode(ORG_URI)).unwrap(), ORG_UUID);
        assert!(normalize_org_id(&URL_SAFE_NO_PAD.encode("ciscospark://us/ROOM/x")).is_err());
        assert!(normalize_org_id("").is_err());
        assert_eq!(normalize_org_id(&URL_SAFE_NO_PAD.encode(ORG_UUID)).unwrap(), ORG_UUID);
        assert_eq!(normalize_org_id("org-1").unwrap(), "org-1");
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        // Found by the org_id fuzz target: the org part of a Webex id with a trailing control
        // character normalized to an id that normalizes again to another (trimmed) one.
        let torn = URL_SAFE_NO_PAD.encode("ciscospark://us/ORGANIZATION/63b02f90-9cc6-43b8\u{c}");
        assert!(normalize_org_id(&torn).is_err());
        // An org part that is itself a Webex id is refused as well: it would decode again.
        let nested = URL_SAFE_NO_PAD
            .encode(format!("ciscospark://us/ORGANIZATION/{}", URL_SAFE_NO_PAD.encode(ORG_UUID)));
        assert!(normalize_org_id(&nested).is_err());
        let plain = URL_SAFE_NO_PAD.encode("ciscospark://us/ORGANIZATION/org-7");
        assert_eq!(normalize_org_id(&plain).unwrap(), "org-7");
    }

    #[test]
    fn an_org_id_is_one_key_whatever_its_spelling() {
        let forms = [
            ORG_UUID.to_owned(),
            format!("  {ORG_UUID}\t"),
            URL_SAFE_NO_PAD.encode(ORG_URI),
            STANDARD.encode(ORG_URI),
            URL_SAFE_NO_PAD.encode(ORG_UUID),
        ];
        let ids: Vec<OrgId> = forms.iter().map(|f| OrgId::new(f).unwrap()).collect();
        assert!(ids.iter().all(|id| *id == ids[0] && id.as_str() == ORG_UUID), "{ids:?}");
        // A map keyed by ids is read with a plain string (Borrow<str> agrees with Hash/Eq).
        let map: std::collections::HashMap<OrgId, u8> = [(ids[1].clone(), 7)].into();
        assert_eq!(map.get(ORG_UUID), Some(&7));
        assert_eq!(format!("{} {:?}", ids[0], ids[0]), format!("{ORG_UUID} OrgId({ORG_UUID:?})"));
        assert_eq!(ids[0].parse::<OrgId>().unwrap(), ids[0]);
    }

    #[test]
    fn a_bad_org_id_is_a_typed_error_on_every_path_in() {
        for bad in ["", "   ", &URL_SAFE_NO_PAD.encode("ciscospark://us/ROOM/x")] {
            assert!(matches!(OrgId::new(bad), Err(Error::InvalidInput(_))), "{bad:?}");
            assert!(bad.parse::<OrgId>().is_err() && OrgId::try_from(bad.to_owned()).is_err());
            let json = serde_json::to_string(bad).unwrap();
            assert!(serde_json::from_str::<OrgId>(&json).is_err(), "{bad:?}");
        }
        assert!(OrgId::from_webhook("not base64!").is_err());
        assert_eq!(OrgId::from_webhook(&STANDARD.encode(ORG_URI)).unwrap(), ORG_UUID);
        let id: OrgId = serde_json::from_str(&format!("\"{}\"", URL_SAFE_NO_PAD.encode(ORG_URI))).unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{ORG_UUID}\""));
    }

    #[test]
    #[should_panic(expected = "is not an org id")]
    fn a_malformed_literal_is_a_programming_error() {
        let _ = OrgId::from_static(" ");
    }

    proptest! {
        #[test]
        fn org_ids_round_trip(uuid in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", region in "[a-z]{2,5}") {
            let encoded = encode_webex_id(&region, "ORGANIZATION", &uuid);
            prop_assert!(!encoded.contains('='));
            prop_assert_eq!(decode_org_id(&encoded).unwrap(), uuid.clone());
            prop_assert_eq!(decode_org_id(&STANDARD.encode(format!("ciscospark://{region}/ORGANIZATION/{uuid}"))).unwrap(), uuid);
        }

        #[test]
        fn decode_never_panics(input in "\\PC{0,200}") {
            let _ = decode_org_id(&input);
            let _ = normalize_org_id(&input);
        }
    }
}
