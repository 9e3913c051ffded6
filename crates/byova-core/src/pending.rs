//! Pending authorizations: what `get_authorization_url` hands out and `exchange_code_for_state`
//! needs back (the PKCE verifier and the redirect URI), kept for ten minutes under a key
//! derived from the `state`, so the code can be exchanged by another process that shares the
//! store (a web app's callback on another replica).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::secret::PkceCodeVerifier;
use crate::time::Timestamp;

/// How long an authorization URL's verifier is kept waiting for its code.
pub const PENDING_AUTHORIZATION_TTL: Duration = Duration::from_secs(600);

/// The storage schema version [`PendingAuthorization`] serializes with.
const PENDING_SCHEMA_VERSION: u32 = 1;

/// An authorization URL waiting for its code: the PKCE verifier, the redirect URI the URL
/// named (the code exchange must name the same), and when it stops being accepted.
#[non_exhaustive]
pub struct PendingAuthorization {
    /// The PKCE verifier whose S256 challenge the URL carried.
    pub verifier: PkceCodeVerifier,
    /// The redirect URI the URL carried.
    pub redirect_uri: String,
    /// When it expires ([`PENDING_AUTHORIZATION_TTL`] after the URL was built).
    pub expires_at: Timestamp,
}

impl fmt::Debug for PendingAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingAuthorization")
            .field("verifier", &self.verifier)
            .field("redirect_uri", &self.redirect_uri)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[derive(Serialize)]
struct WireOut<'a> {
    schema: u32,
    code_verifier: &'a str,
    redirect_uri: &'a str,
    expires_at_ms: u64,
}

#[derive(Deserialize)]
struct WireIn {
    schema: u32,
    code_verifier: String,
    redirect_uri: String,
    expires_at_ms: u64,
}

impl PendingAuthorization {
    /// A pending authorization issued at `now`.
    pub fn new(verifier: PkceCodeVerifier, redirect_uri: impl Into<String>, now: Timestamp) -> Self {
        Self {
            verifier,
            redirect_uri: redirect_uri.into(),
            expires_at: now.saturating_add(PENDING_AUTHORIZATION_TTL),
        }
    }

    /// A pending authorization that expires at `expires_at` (a stored one, read back).
    pub fn with_expiry(
        verifier: PkceCodeVerifier,
        redirect_uri: impl Into<String>,
        expires_at: Timestamp,
    ) -> Self {
        Self { verifier, redirect_uri: redirect_uri.into(), expires_at }
    }

    /// Whether it is no longer accepted at `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        now >= self.expires_at
    }

    /// How long it has left at `now` (what a backend with expiring keys gives the record).
    pub fn remaining(&self, now: Timestamp) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }

    /// The stored form: JSON with a schema version; the verifier is included.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&WireOut {
            schema: PENDING_SCHEMA_VERSION,
            code_verifier: self.verifier.expose_secret(),
            redirect_uri: &self.redirect_uri,
            expires_at_ms: self.expires_at.as_unix_millis(),
        })
        // Serializing strings and an integer cannot fail.
        .unwrap_or_default()
    }

    /// Parses the stored form.
    ///
    /// # Errors
    /// What is wrong (never the content) when the bytes are not a pending authorization of a
    /// schema this version understands.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let w: WireIn = serde_json::from_slice(bytes)
            .map_err(|e| format!("not a byova pending authorization ({:?} error)", e.classify()))?;
        if w.schema == 0 || w.schema > PENDING_SCHEMA_VERSION {
            return Err(format!("pending authorization schema {} is not supported", w.schema));
        }
        Ok(Self {
            verifier: PkceCodeVerifier::new(w.code_verifier),
            redirect_uri: w.redirect_uri,
            expires_at: Timestamp::from_unix_millis(w.expires_at_ms),
        })
    }
}

/// The key a pending authorization is stored under: the hex SHA-256 of its `state` (64
/// characters of `[0-9a-f]`), so the state itself never names a file, a Redis key or a row.
pub fn pending_key(state: &str) -> String {
    Sha256::digest(state.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_form_round_trips_and_expires() {
        let now = Timestamp::from_unix_secs(1_000);
        let p =
            PendingAuthorization::new(PkceCodeVerifier::new("V".repeat(43)), "http://127.0.0.1:8/cb", now);
        let back = PendingAuthorization::from_json(&p.to_json()).unwrap();
        assert!(back.verifier.ct_eq(&p.verifier));
        assert_eq!((back.redirect_uri.as_str(), back.expires_at), ("http://127.0.0.1:8/cb", p.expires_at));
        assert!(!back.is_expired(now.saturating_add(Duration::from_secs(599))));
        assert!(back.is_expired(now.saturating_add(PENDING_AUTHORIZATION_TTL)));
        assert_eq!(back.remaining(now), PENDING_AUTHORIZATION_TTL);
        assert!(!format!("{back:?}").contains("VVVV"), "the verifier is redacted");
    }

    #[test]
    fn bad_records_are_refused_without_echoing_content() {
        for bad in [
            &b"{"[..],
            b"null",
            br#"{"schema":2,"code_verifier":"SECRET","redirect_uri":"x","expires_at_ms":1}"#,
        ] {
            let why = PendingAuthorization::from_json(bad).unwrap_err();
            assert!(!why.contains("SECRET"), "{why}");
        }
    }

    #[test]
    fn keys_are_hex_digests_of_the_state() {
        let k = pending_key("some state");
        assert_eq!(k.len(), 64);
        assert!(k.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(k, pending_key("some state "));
    }
}
