//! Secrets at rest: with storage keys configured (`BYOVA_STORAGE_KEY`), access and refresh
//! tokens are sealed (ChaCha20-Poly1305) before any store sees them, so whoever can read the
//! Redis, the database or the files cannot use them.
//!
//! [`SealedStorage`] wraps any store, both traits, so every backend (including one written
//! against the Python SDK's six methods) stores sealed tokens unchanged: a sealed token is an
//! ordinary string, `byova-sealed:v1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`, bound to
//! its record and field (the AEAD's associated data), so a sealed refresh token copied into
//! another org's record does not open. Records are sealed under the current key whenever they
//! are written; a record sealed under the previous key still opens (rotation), and a
//! plaintext record still reads (migration). A sealed record that cannot be opened (its key is
//! not configured, or no key is) is a [`StorageErrorKind::Sealing`] error naming the key id.
//! The hot path never sees any of it: the cache holds opened tokens.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::{Digest, Sha256};

use crate::error::{Error, StorageError, StorageErrorKind};
use crate::key::OrgId;
use crate::key::{Expect, Lease, TokenKey, Versioned};
use crate::pending::PendingAuthorization;
use crate::secret::{AccessToken, PkceCodeVerifier, RefreshToken};
use crate::storage::{BlockingCoordinatedTokenStorage, CoordinatedTokenStorage};
use crate::tokens::OAuthTokens;

const PREFIX: &str = "byova-sealed:v1:";
const NONCE_LEN: usize = 12;

/// One 32-byte key and its id (the first 8 hex digits of its SHA-256).
struct StorageKey {
    id: String,
    cipher: ChaCha20Poly1305,
}

/// The keys tokens are sealed with: the current one first, then at most one previous key
/// (during a rotation). `Debug` shows the key ids only.
#[derive(Clone)]
pub struct StorageKeys(Arc<Vec<StorageKey>>);

impl fmt::Debug for StorageKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StorageKeys").field(&self.ids()).finish()
    }
}

impl StorageKeys {
    /// Keys from `BYOVA_STORAGE_KEY`'s form: base64 32-byte keys, comma-separated, the current
    /// one first and at most one previous one after it.
    ///
    /// # Errors
    /// [`Error::Configuration`] for anything else (the message never shows a key).
    pub fn parse(text: &str) -> Result<Self, Error> {
        let parts: Vec<&str> = text.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
        if parts.is_empty() || parts.len() > 2 {
            return Err(Error::Configuration(
                "BYOVA_STORAGE_KEY holds one base64 32-byte key, or the current and the previous one, comma-separated"
                    .into(),
            ));
        }
        let keys = parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let bytes = STANDARD
                    .decode(part)
                    .or_else(|_| URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')))
                    .ok()
                    .filter(|b| b.len() == 32)
                    .ok_or_else(|| {
                        Error::Configuration(format!(
                            "BYOVA_STORAGE_KEY: key {} is not 32 bytes of base64 (make one with `openssl rand -base64 32`)",
                            i + 1
                        ))
                    })?;
                Ok(Self::key(&bytes))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        if keys.len() == 2 && keys[0].id == keys[1].id {
            return Err(Error::Configuration("BYOVA_STORAGE_KEY names the same key twice".into()));
        }
        Ok(Self(Arc::new(keys)))
    }

    fn key(bytes: &[u8]) -> StorageKey {
        let digest = Sha256::digest(bytes);
        let id = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        StorageKey { id, cipher: ChaCha20Poly1305::new(Key::from_slice(bytes)) }
    }

    /// The key ids, current first.
    pub fn ids(&self) -> Vec<&str> {
        self.0.iter().map(|k| k.id.as_str()).collect()
    }

    fn seal(&self, record: &dyn fmt::Display, field: &str, plain: &str) -> Result<String, StorageError> {
        let key = &self.0[0];
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| {
            StorageError::new(StorageErrorKind::Sealing, format!("no randomness to seal with: {e}"))
        })?;
        let aad = associated_data(record, field);
        let sealed = key
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain.as_bytes(), aad: aad.as_bytes() })
            .map_err(|_| {
                StorageError::new(StorageErrorKind::Sealing, format!("could not seal {field} of {record}"))
            })?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}:{}", key.id, URL_SAFE_NO_PAD.encode(blob)))
    }
}

fn associated_data(record: &dyn fmt::Display, field: &str) -> String {
    format!("byova/v1/{record}/{field}")
}

/// Opens `value` when it is sealed (with `keys`), else returns it as it is, unless sealed
/// values are required (`require_sealed`): a value in clear is then refused, so whoever can
/// write the store cannot plant tokens.
fn open(
    keys: Option<&StorageKeys>,
    require_sealed: bool,
    record: &dyn fmt::Display,
    field: &str,
    value: &str,
) -> Result<String, StorageError> {
    let unreadable = |why: String| StorageError::new(StorageErrorKind::Sealing, why);
    let Some(rest) = value.strip_prefix(PREFIX) else {
        if require_sealed {
            return Err(unreadable(format!(
                "the {field} of {record} is stored in clear, and sealed records are required \
                 (BYOVA_STORAGE_REQUIRE_SEALED): reseal it (byova org reseal, with the requirement unset \
                 for that run) or register it again"
            )));
        }
        return Ok(value.to_owned());
    };
    let (id, blob) = rest
        .split_once(':')
        .ok_or_else(|| unreadable(format!("the {field} of {record} is a malformed sealed value")))?;
    let key = keys.and_then(|k| k.0.iter().find(|k| k.id == id)).ok_or_else(|| {
        let configured = keys.map_or_else(|| "no key is configured".to_owned(), |k| format!("configured: {}", k.ids().join(", ")));
        unreadable(format!(
            "the {field} of {record} is sealed under storage key {id}, which BYOVA_STORAGE_KEY does not hold ({configured})"
        ))
    })?;
    let blob = URL_SAFE_NO_PAD
        .decode(blob)
        .ok()
        .filter(|b| b.len() > NONCE_LEN)
        .ok_or_else(|| unreadable(format!("the {field} of {record} is a malformed sealed value")))?;
    let (nonce, sealed) = blob.split_at(NONCE_LEN);
    let aad = associated_data(record, field);
    let plain = key
        .cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad: aad.as_bytes() })
        .map_err(|_| {
            unreadable(format!(
                "the {field} of {record} does not open under storage key {id} (altered, or copied from another record)"
            ))
        })?;
    String::from_utf8(plain).map_err(|_| unreadable(format!("the {field} of {record} opened to non-text")))
}

/// Seals a record's tokens under the current key (or leaves them when no key is configured).
fn seal_tokens(
    keys: Option<&StorageKeys>,
    record: &TokenKey,
    tokens: &OAuthTokens,
) -> Result<OAuthTokens, StorageError> {
    let Some(keys) = keys else { return Ok(tokens.clone()) };
    let mut sealed = tokens.clone();
    sealed.access_token =
        AccessToken::new(keys.seal(record, "access_token", tokens.access_token.expose_secret())?);
    if let Some(refresh) = &tokens.refresh_token {
        sealed.refresh_token =
            Some(RefreshToken::new(keys.seal(record, "refresh_token", refresh.expose_secret())?));
    }
    Ok(sealed)
}

/// Opens a stored record's tokens (plaintext ones pass through unless sealed ones are
/// required).
fn open_tokens(
    keys: Option<&StorageKeys>,
    require_sealed: bool,
    record: &TokenKey,
    mut tokens: OAuthTokens,
) -> Result<OAuthTokens, StorageError> {
    tokens.access_token = AccessToken::new(open(
        keys,
        require_sealed,
        record,
        "access_token",
        tokens.access_token.expose_secret(),
    )?);
    if let Some(refresh) = &tokens.refresh_token {
        tokens.refresh_token = Some(RefreshToken::new(open(
            keys,
            require_sealed,
            record,
            "refresh_token",
            refresh.expose_secret(),
        )?));
    }
    Ok(tokens)
}

/// What a pending authorization's verifier is bound to when sealed.
struct PendingRecord<'a>(&'a str);

impl fmt::Display for PendingRecord<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pending authorization {}", self.0)
    }
}

/// The shared-state name an unreadable record is kept under when it is replaced.
fn aside_name(key: &TokenKey) -> String {
    let digest = Sha256::digest(key.to_string().as_bytes());
    let tag: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("unreadable-{tag}-{:016x}", crate::secret::random_u64())
}

/// A store whose tokens are sealed at rest: every write seals, every read opens. With no keys
/// it only guards against handing out a sealed value as a token.
pub struct SealedStorage<S: ?Sized> {
    inner: Arc<S>,
    keys: Option<StorageKeys>,
    require_sealed: bool,
}

impl<S: ?Sized> fmt::Debug for SealedStorage<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedStorage").field("keys", &self.keys).finish_non_exhaustive()
    }
}

impl<S: ?Sized> SealedStorage<S> {
    /// `inner`, sealed with `keys` (`None`: nothing is sealed; sealed records are refused).
    pub fn new(inner: Arc<S>, keys: Option<StorageKeys>) -> Self {
        Self { inner, keys, require_sealed: false }
    }

    /// Refuses records whose tokens are stored in clear (a typed
    /// [`Sealing`](StorageErrorKind::Sealing) error), so whoever can write the store cannot
    /// plant tokens. Needs keys: without them nothing could be read.
    #[must_use]
    pub fn requiring_sealed(mut self, require: bool) -> Self {
        self.require_sealed = require;
        self
    }

    fn seal(&self, record: &TokenKey, tokens: &OAuthTokens) -> Result<OAuthTokens, StorageError> {
        seal_tokens(self.keys.as_ref(), record, tokens)
    }

    fn open_versioned(
        &self,
        record: &TokenKey,
        loaded: Option<Versioned<OAuthTokens>>,
    ) -> Result<Option<Versioned<OAuthTokens>>, StorageError> {
        loaded
            .map(|v| {
                let value = open_tokens(self.keys.as_ref(), self.require_sealed, record, v.value)?;
                Ok(Versioned { value, version: v.version })
            })
            .transpose()
    }

    /// A pending authorization with its verifier sealed (bound to its key).
    fn seal_pending(
        &self,
        key: &str,
        pending: &PendingAuthorization,
    ) -> Result<PendingAuthorization, StorageError> {
        let Some(keys) = &self.keys else {
            return Ok(PendingAuthorization::with_expiry(
                PkceCodeVerifier::new(pending.verifier.expose_secret()),
                pending.redirect_uri.clone(),
                pending.expires_at,
            ));
        };
        let sealed = keys.seal(&PendingRecord(key), "code_verifier", pending.verifier.expose_secret())?;
        Ok(PendingAuthorization::with_expiry(
            PkceCodeVerifier::new(sealed),
            pending.redirect_uri.clone(),
            pending.expires_at,
        ))
    }

    fn open_pending(
        &self,
        key: &str,
        pending: Option<PendingAuthorization>,
    ) -> Result<Option<PendingAuthorization>, StorageError> {
        pending
            .map(|p| {
                let verifier = open(
                    self.keys.as_ref(),
                    self.require_sealed,
                    &PendingRecord(key),
                    "code_verifier",
                    p.verifier.expose_secret(),
                )?;
                Ok(PendingAuthorization::with_expiry(
                    PkceCodeVerifier::new(verifier),
                    p.redirect_uri,
                    p.expires_at,
                ))
            })
            .transpose()
    }
}

/// Both flavours' primitives for [`SealedStorage`], written once (the six methods come with
/// them).
macro_rules! sealed_impl {
    ($(#[$attr:meta])* $trait:ident $(, $async_kw:ident, $await:tt)?) => {
        $(#[$attr])*
        impl $trait for SealedStorage<dyn $trait> {
            fn supports_coordination(&self) -> bool {
                self.inner.supports_coordination()
            }
            $($async_kw)? fn load(&self, key: &TokenKey) -> Result<Option<Versioned<OAuthTokens>>, StorageError> {
                self.open_versioned(key, self.inner.load(key)$(.$await)??)
            }
            $($async_kw)? fn store(&self, key: &TokenKey, tokens: &OAuthTokens, expect: Expect) -> Result<u64, StorageError> {
                let sealed = self.seal(key, tokens)?;
                if expect == Expect::Any {
                    // A record this store cannot open (sealed under a key no longer configured)
                    // is kept aside, for a person holding that key, before it is replaced.
                    if let Ok(Some(stored)) = self.inner.load(key)$(.$await)?
                        && self.open_versioned(key, Some(stored.clone())).is_err()
                    {
                        let name = aside_name(key);
                        match self.inner.store_state(&name, &stored.value.to_json(), Expect::Absent)$(.$await)? {
                            Ok(_) => tracing::warn!(key = %key, aside = %name, "an unreadable record is replaced; kept aside"),
                            Err(e) => tracing::warn!(key = %key, error = %e, "an unreadable record is replaced; it could not be kept aside"),
                        }
                    }
                }
                self.inner.store(key, &sealed, expect)$(.$await)?
            }
            $($async_kw)? fn delete_org(&self, org_id: &OrgId, expect: Expect) -> Result<(), StorageError> {
                self.inner.delete_org(org_id, expect)$(.$await)?
            }
            $($async_kw)? fn list_orgs(&self) -> Result<Vec<OrgId>, StorageError> {
                self.inner.list_orgs()$(.$await)?
            }
            $($async_kw)? fn try_acquire_lease(&self, key: &TokenKey, ttl: Duration) -> Result<Option<Lease>, StorageError> {
                self.inner.try_acquire_lease(key, ttl)$(.$await)?
            }
            $($async_kw)? fn release_lease(&self, lease: &Lease) -> Result<(), StorageError> {
                self.inner.release_lease(lease)$(.$await)?
            }
            $($async_kw)? fn extend_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StorageError> {
                self.inner.extend_lease(lease, ttl)$(.$await)?
            }
            $($async_kw)? fn save_pending_authorization(&self, key: &str, pending: &PendingAuthorization) -> Result<bool, StorageError> {
                let sealed = self.seal_pending(key, pending)?;
                self.inner.save_pending_authorization(key, &sealed)$(.$await)?
            }
            $($async_kw)? fn take_pending_authorization(&self, key: &str) -> Result<Option<PendingAuthorization>, StorageError> {
                let taken = self.inner.take_pending_authorization(key)$(.$await)??;
                self.open_pending(key, taken)
            }
            $($async_kw)? fn load_many(&self, keys: &[TokenKey]) -> Result<Vec<Option<Versioned<OAuthTokens>>>, StorageError> {
                let loaded = self.inner.load_many(keys)$(.$await)??;
                keys.iter().zip(loaded).map(|(key, record)| self.open_versioned(key, record)).collect()
            }
            $($async_kw)? fn load_state(&self, name: &str) -> Result<Option<Versioned<Vec<u8>>>, StorageError> {
                self.inner.load_state(name)$(.$await)?
            }
            $($async_kw)? fn store_state(&self, name: &str, bytes: &[u8], expect: Expect) -> Result<u64, StorageError> {
                self.inner.store_state(name, bytes, expect)$(.$await)?
            }
        }
    };
}

sealed_impl!(
    #[async_trait]
    CoordinatedTokenStorage,
    async,
    await
);
sealed_impl!(BlockingCoordinatedTokenStorage);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::OrgId;
    use crate::storage::{BlockingTokenStorage, InMemoryTokenStorage};
    use crate::time::Timestamp;

    fn key_text(byte: u8) -> String {
        STANDARD.encode([byte; 32])
    }

    fn tokens() -> OAuthTokens {
        OAuthTokens::new(AccessToken::new("ACCESS-CANARY"), 3600, Timestamp::from_unix_secs(1))
            .with_refresh_token(RefreshToken::new("REFRESH-CANARY"), Some(7_776_000))
    }

    fn sealed(
        keys: Option<StorageKeys>,
    ) -> (Arc<InMemoryTokenStorage>, SealedStorage<dyn BlockingCoordinatedTokenStorage>) {
        let raw = Arc::new(InMemoryTokenStorage::new());
        let inner: Arc<dyn BlockingCoordinatedTokenStorage> = raw.clone();
        (raw, SealedStorage::new(inner, keys))
    }

    #[test]
    fn keys_parse_strictly_and_never_show_themselves() {
        let keys = StorageKeys::parse(&format!("{}, {}", key_text(1), key_text(2))).unwrap();
        assert_eq!(keys.ids().len(), 2);
        assert!(!format!("{keys:?}").contains(&key_text(1)));
        for bad in [
            "",
            "short",
            &format!("{},{},{}", key_text(1), key_text(2), key_text(3)),
            &format!("{0},{0}", key_text(1)),
        ] {
            let e = StorageKeys::parse(bad).unwrap_err().to_string();
            assert!(!e.contains(&key_text(1)), "{e}");
        }
    }

    #[test]
    fn tokens_are_sealed_at_rest_and_opened_on_read() {
        let keys = StorageKeys::parse(&key_text(7)).unwrap();
        let (raw, store) = sealed(Some(keys.clone()));
        store.set_service_app_tokens(&OrgId::from_static("org-1"), &tokens()).unwrap();
        let at_rest =
            BlockingTokenStorage::get_service_app_tokens(raw.as_ref(), &OrgId::from_static("org-1"))
                .unwrap()
                .unwrap();
        let rest_text = format!(
            "{} {}",
            at_rest.access_token.expose_secret(),
            at_rest.refresh_token.as_ref().unwrap().expose_secret()
        );
        assert!(
            !rest_text.contains("CANARY") && rest_text.contains(&format!("{PREFIX}{}:", keys.ids()[0])),
            "{rest_text}"
        );
        let back = store.get_service_app_tokens(&OrgId::from_static("org-1")).unwrap().unwrap();
        assert!(back.access_token.ct_eq_str("ACCESS-CANARY"));
        assert!(back.refresh_token.unwrap().ct_eq_str("REFRESH-CANARY"));
        let versioned = store.load(&TokenKey::org(&OrgId::from_static("org-1"))).unwrap().unwrap();
        assert!(versioned.value.access_token.ct_eq_str("ACCESS-CANARY"));
    }

    /// Rule 12: with sealed records required, a record in clear (planted by whoever can
    /// write the store) is a typed sealing error, never a token; without, it is read.
    #[test]
    fn records_in_clear_are_refused_when_sealing_is_required() {
        let keys = StorageKeys::parse(&key_text(7)).unwrap();
        let raw = Arc::new(InMemoryTokenStorage::new());
        BlockingTokenStorage::set_service_app_tokens(raw.as_ref(), &OrgId::from_static("planted"), &tokens())
            .unwrap();
        let inner: Arc<dyn BlockingCoordinatedTokenStorage> = raw.clone();
        let strict = SealedStorage::new(inner.clone(), Some(keys.clone())).requiring_sealed(true);
        let err = strict.get_service_app_tokens(&OrgId::from_static("planted")).unwrap_err();
        assert_eq!(err.kind(), StorageErrorKind::Sealing);
        assert!(err.to_string().contains("stored in clear") && !err.to_string().contains("CANARY"), "{err}");
        assert!(
            SealedStorage::new(inner, Some(keys))
                .get_service_app_tokens(&OrgId::from_static("planted"))
                .unwrap()
                .is_some()
        );
        // What the strict store writes, it reads back.
        strict.set_service_app_tokens(&OrgId::from_static("sealed"), &tokens()).unwrap();
        assert!(strict.get_service_app_tokens(&OrgId::from_static("sealed")).unwrap().is_some());
    }

    /// A pending authorization's PKCE verifier is sealed at rest like a token.
    #[test]
    fn pending_authorizations_are_sealed_at_rest() {
        let keys = StorageKeys::parse(&key_text(7)).unwrap();
        let (raw, store) = sealed(Some(keys));
        let verifier = "V".repeat(43);
        let pending = PendingAuthorization::new(
            PkceCodeVerifier::new(verifier.clone()),
            "http://127.0.0.1:1/cb",
            Timestamp::from_unix_secs(1),
        );
        assert!(store.save_pending_authorization("k1", &pending).unwrap());
        // Read straight from the inner store: sealed.
        let at_rest =
            BlockingCoordinatedTokenStorage::take_pending_authorization(raw.as_ref(), "k1").unwrap().unwrap();
        assert!(!at_rest.verifier.expose_secret().contains(&verifier), "sealed at rest");
        BlockingCoordinatedTokenStorage::save_pending_authorization(raw.as_ref(), "k1", &at_rest).unwrap();
        let back = store.take_pending_authorization("k1").unwrap().unwrap();
        assert_eq!(back.verifier.expose_secret(), verifier);
        // Bound to its key: moved to another, it does not open.
        let again = PendingAuthorization::with_expiry(
            PkceCodeVerifier::new(at_rest.verifier.expose_secret()),
            "x",
            at_rest.expires_at,
        );
        BlockingCoordinatedTokenStorage::save_pending_authorization(raw.as_ref(), "k2", &again).unwrap();
        assert_eq!(store.take_pending_authorization("k2").unwrap_err().kind(), StorageErrorKind::Sealing);
    }

    /// Item 4 of the brief: a record sealed under a key no longer configured is kept aside
    /// (as a shared state, for a person holding that key) when new tokens replace it.
    #[test]
    fn an_unreadable_record_is_kept_aside_when_replaced() {
        let (raw, old_store) = sealed(Some(StorageKeys::parse(&key_text(1)).unwrap()));
        old_store.set_service_app_tokens(&OrgId::from_static("org-1"), &tokens()).unwrap();
        let inner: Arc<dyn BlockingCoordinatedTokenStorage> = raw.clone();
        let new_store = SealedStorage::new(inner, Some(StorageKeys::parse(&key_text(2)).unwrap()));
        assert_eq!(
            new_store.load(&TokenKey::org(&OrgId::from_static("org-1"))).unwrap_err().kind(),
            StorageErrorKind::Sealing
        );
        new_store.store(&TokenKey::org(&OrgId::from_static("org-1")), &tokens(), Expect::Any).unwrap();
        assert!(
            new_store.get_service_app_tokens(&OrgId::from_static("org-1")).unwrap().is_some(),
            "replaced"
        );
        let digest = Sha256::digest(TokenKey::org(&OrgId::from_static("org-1")).to_string().as_bytes());
        let tag: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let kept = raw
            .state_names()
            .into_iter()
            .find(|n| n.starts_with(&format!("unreadable-{tag}-")))
            .expect("kept aside");
        let bytes = BlockingCoordinatedTokenStorage::load_state(raw.as_ref(), &kept).unwrap().unwrap().value;
        let aside = OAuthTokens::from_json(&bytes).unwrap();
        let opened = open_tokens(
            Some(&StorageKeys::parse(&key_text(1)).unwrap()),
            false,
            &TokenKey::org(&OrgId::from_static("org-1")),
            aside,
        )
        .unwrap();
        assert!(opened.refresh_token.unwrap().ct_eq_str("REFRESH-CANARY"), "the old key still opens it");
    }

    #[test]
    fn a_sealed_token_copied_into_another_record_does_not_open() {
        let (raw, store) = sealed(Some(StorageKeys::parse(&key_text(7)).unwrap()));
        store.set_service_app_tokens(&OrgId::from_static("org-1"), &tokens()).unwrap();
        let stolen = BlockingTokenStorage::get_service_app_tokens(raw.as_ref(), &OrgId::from_static("org-1"))
            .unwrap()
            .unwrap();
        BlockingTokenStorage::set_service_app_tokens(raw.as_ref(), &OrgId::from_static("org-2"), &stolen)
            .unwrap();
        let e = store.get_service_app_tokens(&OrgId::from_static("org-2")).unwrap_err();
        assert_eq!(e.kind(), StorageErrorKind::Sealing);
        assert!(e.to_string().contains("copied from another record"), "{e}");
    }

    #[test]
    fn rotation_reads_the_previous_key_and_writes_the_current_one() {
        let old = StorageKeys::parse(&key_text(1)).unwrap();
        let (raw, store) = sealed(Some(old.clone()));
        store.set_integration_tokens(&tokens()).unwrap();
        let rotated = StorageKeys::parse(&format!("{},{}", key_text(2), key_text(1))).unwrap();
        let store = SealedStorage::new(
            raw.clone() as Arc<dyn BlockingCoordinatedTokenStorage>,
            Some(rotated.clone()),
        );
        let back = store.get_integration_tokens().unwrap().unwrap();
        assert!(back.access_token.ct_eq_str("ACCESS-CANARY"), "the previous key still opens");
        store.set_integration_tokens(&back).unwrap();
        let at_rest = BlockingTokenStorage::get_integration_tokens(raw.as_ref()).unwrap().unwrap();
        assert!(
            at_rest.access_token.expose_secret().contains(rotated.ids()[0]),
            "re-sealed under the current key"
        );
        let only_new = StorageKeys::parse(&key_text(2)).unwrap();
        let store = SealedStorage::new(raw as Arc<dyn BlockingCoordinatedTokenStorage>, Some(only_new));
        assert!(store.get_integration_tokens().is_ok(), "the old key is no longer needed");
    }

    #[test]
    fn unknown_keys_and_missing_keys_are_typed_errors_naming_the_key_id() {
        let keys = StorageKeys::parse(&key_text(1)).unwrap();
        let id = keys.ids()[0].to_owned();
        let (raw, store) = sealed(Some(keys));
        store.set_integration_tokens(&tokens()).unwrap();
        for other in [Some(StorageKeys::parse(&key_text(9)).unwrap()), None] {
            let store = SealedStorage::new(raw.clone() as Arc<dyn BlockingCoordinatedTokenStorage>, other);
            let e = store.get_integration_tokens().unwrap_err();
            assert_eq!(e.kind(), StorageErrorKind::Sealing);
            assert!(e.to_string().contains(&id) && !e.to_string().contains("CANARY"), "{e}");
        }
    }

    #[test]
    fn plaintext_records_stay_readable() {
        let (raw, _) = sealed(None);
        BlockingTokenStorage::set_integration_tokens(raw.as_ref(), &tokens()).unwrap();
        let store = SealedStorage::new(
            raw as Arc<dyn BlockingCoordinatedTokenStorage>,
            Some(StorageKeys::parse(&key_text(3)).unwrap()),
        );
        assert!(store.get_integration_tokens().unwrap().unwrap().access_token.ct_eq_str("ACCESS-CANARY"));
    }
}
