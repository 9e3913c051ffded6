//! `X-Spark-Signature`: HMAC-SHA1 over a delivery's raw bytes under the webhook secret.

use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::error::SignatureError;
use crate::secret::WebhookSecret;

/// Deliveries larger than this are refused before any HMAC work.
pub const MAX_WEBHOOK_BODY_BYTES: usize = 64 * 1024;

/// The header carrying the delivery's HMAC-SHA1.
pub const SIGNATURE_HEADER: &str = "X-Spark-Signature";

/// Verifies `X-Spark-Signature`: lowercase or uppercase hex of HMAC-SHA1 over the raw body,
/// keyed by the webhook secret, compared in constant time.
///
/// ```
/// use byova_core::webhook::verify_signature;
/// use byova_core::WebhookSecret;
/// let secret = WebhookSecret::new("example-secret");
/// assert!(verify_signature(&secret, br#"{"id":"x"}"#, Some("9e3f8035dcfe0c9b0c40f10cab7c44b505bd746a")).is_ok());
/// ```
///
/// # Errors
/// A [`SignatureError`] saying what was wrong.
pub fn verify_signature(
    secret: &WebhookSecret,
    raw_body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    if raw_body.len() > MAX_WEBHOOK_BODY_BYTES {
        return Err(SignatureError::TooLarge);
    }
    let header = header.map(str::trim).filter(|h| !h.is_empty()).ok_or(SignatureError::Missing)?;
    let expected = decode_hex_20(header).ok_or(SignatureError::Malformed)?;
    let mut mac = hmac_for(secret);
    mac.update(raw_body);
    mac.verify_slice(&expected).map_err(|_| SignatureError::Mismatch)
}

/// The `X-Spark-Signature` value for `raw_body` under `secret` (lowercase hex), as Webex sends.
pub fn sign(secret: &WebhookSecret, raw_body: &[u8]) -> String {
    let mut mac = hmac_for(secret);
    mac.update(raw_body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac_for(secret: &WebhookSecret) -> Hmac<Sha1> {
    // HMAC accepts keys of any length.
    <Hmac<Sha1> as Mac>::new_from_slice(secret.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
}

fn decode_hex_20(s: &str) -> Option<[u8; 20]> {
    let bytes = s.as_bytes();
    if bytes.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}
