//! The fake Webex identity broker: RSA keys (aws-lc-rs, independent of the verifier's RSA),
//! their JWKS at `{issuer}/oauth2/v2/keys/verificationjwk`, and JWS minted for a data source,
//! with any claims and headers a test wants, including forged ones.

use std::sync::Mutex;

use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// One RSA signing key and its id.
struct SigningKey {
    kid: String,
    pair: KeyPair,
    modulus: Vec<u8>,
    exponent: Vec<u8>,
}

impl SigningKey {
    fn generate(kid: String) -> Self {
        let pair = KeyPair::generate(KeySize::Rsa2048).expect("aws-lc-rs generates an RSA key");
        let public = pair.public_key();
        let (modulus, exponent) = (
            public.modulus().big_endian_without_leading_zero().to_vec(),
            public.exponent().big_endian_without_leading_zero().to_vec(),
        );
        Self { kid, pair, modulus, exponent }
    }

    fn jwk(&self) -> Value {
        json!({
            "kty": "RSA",
            "kid": self.kid,
            "use": "sig",
            "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(&self.modulus),
            "e": URL_SAFE_NO_PAD.encode(&self.exponent),
        })
    }

    fn sign(&self, signing_input: &[u8]) -> Vec<u8> {
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(&RSA_PKCS1_SHA256, &aws_lc_rs::rand::SystemRandom::new(), signing_input, &mut signature)
            .expect("aws-lc-rs signs");
        signature
    }
}

/// The broker's keys: the newest signs, all of them are published. Generated on first use
/// (most fakes never sign anything).
#[derive(Default)]
pub(crate) struct Broker {
    keys: Mutex<Vec<SigningKey>>,
    /// The next key, generated ahead so that a rotation is instant.
    staged: Mutex<Option<SigningKey>>,
    /// A key that is published nowhere, for signatures no JWKS verifies.
    foreign: std::sync::OnceLock<SigningKey>,
}

impl Broker {
    fn keys(&self) -> std::sync::MutexGuard<'_, Vec<SigningKey>> {
        let mut keys = self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if keys.is_empty() {
            keys.push(SigningKey::generate("fake-broker-1".into()));
        }
        keys
    }

    fn staged(&self) -> std::sync::MutexGuard<'_, Option<SigningKey>> {
        self.staged.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Generates the next key without publishing it, so that [`rotate`](Self::rotate) takes no
    /// time.
    pub(crate) fn stage(&self) {
        let kid = format!("fake-broker-{}", self.keys().len() + 1);
        let mut staged = self.staged();
        if staged.is_none() {
            *staged = Some(SigningKey::generate(kid));
        }
    }

    /// A new signing key (the staged one, if any; the old ones stay published); its kid.
    pub(crate) fn rotate(&self) -> String {
        let staged = self.staged().take();
        let mut keys = self.keys();
        let key = staged.unwrap_or_else(|| SigningKey::generate(format!("fake-broker-{}", keys.len() + 1)));
        let kid = key.kid.clone();
        keys.push(key);
        kid
    }

    /// The JWKS document.
    pub(crate) fn jwks(&self) -> Value {
        json!({ "keys": self.keys().iter().map(SigningKey::jwk).collect::<Vec<_>>() })
    }

    /// `header.claims.signature` signed RS256 by the newest key, whatever `header` says
    /// (`kid` is the newest key's unless `header` names one).
    pub(crate) fn sign(&self, header: &Value, claims: &Value) -> String {
        let keys = self.keys();
        let key = keys.last().expect("the broker has a key");
        Self::sign_with(key, header, claims)
    }

    /// Signed by a key no JWKS publishes, under the newest key's kid.
    pub(crate) fn sign_foreign(&self, claims: &Value) -> String {
        let kid = self.keys().last().map(|k| k.kid.clone()).unwrap_or_default();
        let foreign = self.foreign.get_or_init(|| SigningKey::generate("foreign".into()));
        Self::sign_with(foreign, &json!({"alg": "RS256", "kid": kid, "typ": "JWT"}), claims)
    }

    fn sign_with(key: &SigningKey, header: &Value, claims: &Value) -> String {
        let mut header = header.clone();
        if header.get("kid").is_none() {
            header["kid"] = key.kid.clone().into();
        }
        let input = signing_input(&header, claims);
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes())))
    }

    /// The key-confusion forgery: `alg: HS256`, the HMAC keyed with the newest key's
    /// published JWK (what a verifier that lets the token pick the algorithm would accept).
    pub(crate) fn forge_hs256(&self, claims: &Value) -> String {
        let keys = self.keys();
        let key = keys.last().expect("the broker has a key");
        let header = json!({"alg": "HS256", "kid": key.kid, "typ": "JWT"});
        let input = signing_input(&header, claims);
        let mut mac =
            Hmac::<Sha256>::new_from_slice(key.jwk().to_string().as_bytes()).expect("any key length");
        mac.update(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()))
}
