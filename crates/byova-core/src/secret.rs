//! Secret newtypes: client secrets, tokens, authorization codes, PKCE verifiers, `state` and
//! webhook secrets.
//!
//! Every type here prints `Name([redacted])` for `Debug`, has no `Display`, no `PartialEq` (use
//! [`ct_eq`](ClientSecret::ct_eq), which compares SHA-256 digests in constant time), and wipes
//! its buffer when dropped. The only way to read the value is the explicitly named
//! `expose_secret()`, so every place a secret leaves the type is easy to find in review.
//!
//! Clones share one buffer (an `Arc`, as aws-credential-types does), so a token handed to many
//! callers exists once in memory, cloning it costs an atomic increment, and it is wiped when
//! the last clone is dropped.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

macro_rules! secret_type {
    ($(#[$meta:meta])* $name:ident, clone: $clone:tt) => {
        $(#[$meta])*
        pub struct $name(Arc<Zeroizing<String>>);

        impl $name {
            /// Wraps a secret value.
            pub fn new(value: impl Into<String>) -> Self {
                Self(Arc::new(Zeroizing::new(value.into())))
            }

            /// The secret value. Leaking it may compromise the OAuth flow: never log it.
            pub fn expose_secret(&self) -> &str {
                &self.0
            }

            /// Compares two secrets in constant time (over SHA-256 digests, so the length of
            /// the values does not leak either).
            pub fn ct_eq(&self, other: &Self) -> bool {
                crate::secret::ct_eq_str(&self.0, &other.0)
            }

            /// Compares the secret with a plain string in constant time.
            pub fn ct_eq_str(&self, other: &str) -> bool {
                crate::secret::ct_eq_str(&self.0, other)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($name), "([redacted])"))
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self::new(value)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self::new(value)
            }
        }

        secret_type!(@clone $name, $clone);
    };
    (@clone $name:ident, true) => {
        impl Clone for $name {
            fn clone(&self) -> Self {
                Self(self.0.clone())
            }
        }
    };
    (@clone $name:ident, false) => {};
}

pub(crate) fn ct_eq_str(a: &str, b: &str) -> bool {
    let da = Sha256::digest(a.as_bytes());
    let db = Sha256::digest(b.as_bytes());
    da.ct_eq(&db).into()
}

secret_type!(
    /// An OAuth client secret (Integration or Service App).
    ClientSecret, clone: true
);
secret_type!(
    /// A bearer access token.
    AccessToken, clone: true
);
secret_type!(
    /// A refresh token. Losing one can lock a customer out; byova never drops one on a
    /// transient error.
    RefreshToken, clone: true
);
secret_type!(
    /// An authorization code from the OAuth redirect. Single use.
    AuthorizationCode, clone: false
);
secret_type!(
    /// A PKCE code verifier (RFC 7636). Deliberately not `Clone`.
    PkceCodeVerifier, clone: false
);
secret_type!(
    /// The OAuth `state` parameter: a single-use CSRF token.
    CsrfState, clone: true
);
secret_type!(
    /// The secret a webhook was registered with; keys the `X-Spark-Signature` HMAC.
    WebhookSecret, clone: true
);
secret_type!(
    /// A shared secret a local client presents as `Authorization: Bearer …` to the daemon
    /// (its admin listener, say); compared in constant time.
    SharedSecret, clone: true
);

/// Fills `buf` from the operating system's random source.
///
/// This is the one system call in byova-core. Every function that needs randomness also has
/// a form taking the random bytes as an argument, so the logic is testable without it.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // The OS random source failing is not a condition a token library can recover from, and
    // falling back to weaker randomness would be worse than stopping.
    getrandom::fill(&mut buf).expect("the operating system's random source is unavailable");
    buf
}

/// 64 random bits from the operating system: seeds for jitter and backoff in the drivers.
pub fn random_u64() -> u64 {
    u64::from_le_bytes(random_bytes::<8>())
}

impl CsrfState {
    /// A fresh `state` of 128 random bits, base64url without padding (22 characters).
    pub fn new_random() -> Self {
        Self::from_random_bytes(random_bytes::<16>())
    }

    /// Builds a `state` from caller-supplied random bytes.
    pub fn from_random_bytes(bytes: [u8; 16]) -> Self {
        use base64::Engine as _;
        Self::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }
}

impl PkceCodeVerifier {
    /// A fresh verifier from 32 random octets: 43 base64url characters (RFC 7636 §4.1).
    pub fn new_random() -> Self {
        Self::from_random_bytes(random_bytes::<32>())
    }

    /// Builds a verifier from caller-supplied random bytes.
    pub fn from_random_bytes(bytes: [u8; 32]) -> Self {
        use base64::Engine as _;
        Self::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// `BASE64URL(SHA256(verifier))`, the S256 code challenge.
    pub fn s256_challenge(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(self.expose_secret().as_bytes()))
    }

    /// Whether the verifier has the length and alphabet RFC 7636 §4.1 requires.
    pub fn is_well_formed(&self) -> bool {
        let v = self.expose_secret();
        (43..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_for_every_secret_type() {
        let canary = "CANARY-d41d8cd98f00b204";
        let printed = [
            format!("{:?}", ClientSecret::new(canary)),
            format!("{:?}", AccessToken::new(canary)),
            format!("{:?}", RefreshToken::new(canary)),
            format!("{:?}", AuthorizationCode::new(canary)),
            format!("{:?}", PkceCodeVerifier::new(canary)),
            format!("{:?}", CsrfState::new(canary)),
            format!("{:?}", WebhookSecret::new(canary)),
        ];
        assert_eq!(
            printed,
            [
                "ClientSecret([redacted])",
                "AccessToken([redacted])",
                "RefreshToken([redacted])",
                "AuthorizationCode([redacted])",
                "PkceCodeVerifier([redacted])",
                "CsrfState([redacted])",
                "WebhookSecret([redacted])",
            ]
        );
        assert!(printed.iter().all(|p| !p.contains(canary)));
    }

    #[test]
    fn constant_time_comparison_distinguishes_values_and_lengths() {
        let a = RefreshToken::new("abc");
        assert!(a.ct_eq(&RefreshToken::new("abc")));
        assert!(!a.ct_eq(&RefreshToken::new("abd")));
        assert!(!a.ct_eq(&RefreshToken::new("abcd")));
        assert!(a.ct_eq_str("abc"));
    }

    #[test]
    fn rfc7636_appendix_b_vector() {
        let verifier = PkceCodeVerifier::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(verifier.s256_challenge(), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        assert!(verifier.is_well_formed());
        // The appendix's octets produce the appendix's verifier.
        let octets = [
            116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186, 22, 212, 37, 77, 105,
            214, 191, 240, 91, 88, 5, 88, 83, 132, 141, 121,
        ];
        assert_eq!(
            PkceCodeVerifier::from_random_bytes(octets).expose_secret(),
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        );
    }

    #[test]
    fn random_verifiers_and_states_are_well_formed_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let v = PkceCodeVerifier::new_random();
            assert!(v.is_well_formed());
            assert!(seen.insert(v.expose_secret().to_owned()));
        }
        let s = CsrfState::new_random();
        assert_eq!(s.expose_secret().len(), 22);
        assert!(!s.ct_eq(&CsrfState::new_random()));
    }

    #[test]
    fn malformed_verifiers_are_detected() {
        assert!(!PkceCodeVerifier::new("short").is_well_formed());
        assert!(!PkceCodeVerifier::new("a".repeat(129)).is_well_formed());
        assert!(!PkceCodeVerifier::new(format!("{}!", "a".repeat(42))).is_well_formed());
    }
}
