//! The vocabulary of token storage: which record ([`TokenKey`]), at which version
//! ([`Versioned`]), under which condition a write applies ([`Expect`]), and who may refresh it
//! ([`Lease`]). The storage traits, the refresh path and the cache all speak it.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, Result, TokenSubject};
use crate::ids::{decode_org_id, normalize_org_id};

/// A customer organization's id, normalized when it is built: the plain id (a UUID) whether
/// it was given as one or as a base64 Webex id (`ciscospark://<region>/ORGANIZATION/<uuid>`),
/// trimmed. Other non-empty text is kept as given, trimmed; an empty id and the base64 id of
/// something other than an organization are refused. Every API that names an org takes one, so an org is normalized once, where its
/// id enters the program, and two spellings of one org are one key everywhere.
///
/// It is cheap to clone (a shared string) and reads as a `str`.
///
/// ```
/// use byova_core::OrgId;
/// let plain: OrgId = "63b02f90-9cc6-43b8-aa6d-cad425ac554c".parse()?;
/// let encoded = OrgId::new("Y2lzY29zcGFyazovL3VzL09SR0FOSVpBVElPTi82M2IwMmY5MC05Y2M2LTQzYjgtYWE2ZC1jYWQ0MjVhYzU1NGM")?;
/// assert_eq!(plain, encoded);
/// assert_eq!(encoded.as_str(), "63b02f90-9cc6-43b8-aa6d-cad425ac554c");
/// assert!(OrgId::new("  ").is_err());
/// # Ok::<(), byova_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgId(Arc<str>);

impl OrgId {
    /// Normalizes `org_id`: a UUID-like plain id or a base64 Webex id of an organization.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when it is empty, or a Webex id of something other than an
    /// organization.
    pub fn new(org_id: &str) -> Result<Self> {
        normalize_org_id(org_id).map(|id| Self(id.into()))
    }

    /// The org a `serviceApp` webhook's `orgId` names: always base64, decoded as
    /// [`decode_org_id`](crate::ids::decode_org_id) does (the whole decoded text when it is not an organization URI, as
    /// the Python SDK does), then normalized.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when it is not base64 of a usable id.
    pub fn from_webhook(encoded_org_id: &str) -> Result<Self> {
        Self::new(&decode_org_id(encoded_org_id)?)
    }

    /// An org id known when the program is written (tests, examples).
    ///
    /// # Panics
    /// When `org_id` is not a valid org id, as [`new`](Self::new) would refuse it: a
    /// programming error, like a malformed literal.
    pub fn from_static(org_id: &'static str) -> Self {
        match Self::new(org_id) {
            Ok(id) => id,
            Err(e) => panic!("{org_id:?} is not an org id: {e}"),
        }
    }

    /// The normalized id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for OrgId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for OrgId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for OrgId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An org id is not a secret: it shows, as in errors and logs.
impl fmt::Debug for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OrgId({:?})", &*self.0)
    }
}

impl FromStr for OrgId {
    type Err = Error;
    fn from_str(org_id: &str) -> Result<Self> {
        Self::new(org_id)
    }
}

impl TryFrom<&str> for OrgId {
    type Error = Error;
    fn try_from(org_id: &str) -> Result<Self> {
        Self::new(org_id)
    }
}

impl TryFrom<String> for OrgId {
    type Error = Error;
    fn try_from(org_id: String) -> Result<Self> {
        Self::new(&org_id)
    }
}

impl PartialEq<str> for OrgId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for OrgId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl serde::Serialize for OrgId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for OrgId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::new(&text).map_err(serde::de::Error::custom)
    }
}

/// Whose tokens a record holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TokenKey {
    /// The provider's Integration.
    Integration,
    /// A customer organization's Service App tokens.
    Org(OrgId),
}

impl TokenKey {
    /// The key for an org.
    pub fn org(org_id: &OrgId) -> Self {
        TokenKey::Org(org_id.clone())
    }

    /// The subject used in errors.
    pub fn subject(&self) -> TokenSubject {
        match self {
            TokenKey::Integration => TokenSubject::Integration,
            TokenKey::Org(org) => TokenSubject::Org(org.clone()),
        }
    }

    /// The key as a stable label: `integration`, or `org:<id>` (export lines, journal entries,
    /// status JSON, metrics labels and SQL row names all use it).
    ///
    /// ```
    /// use byova_core::{OrgId, TokenKey};
    /// let org = OrgId::from_static("o-1");
    /// assert_eq!(TokenKey::org(&org).label(), "org:o-1");
    /// assert_eq!(TokenKey::from_label("org:o-1"), Some(TokenKey::org(&org)));
    /// assert_eq!(TokenKey::from_label(&TokenKey::Integration.label()), Some(TokenKey::Integration));
    /// assert_eq!(TokenKey::from_label("org: "), None);
    /// ```
    pub fn label(&self) -> String {
        match self {
            TokenKey::Integration => "integration".to_owned(),
            TokenKey::Org(org) => format!("org:{org}"),
        }
    }

    /// The key a [`label`](Self::label) names (`None` for anything else).
    pub fn from_label(text: &str) -> Option<Self> {
        match text {
            "integration" => Some(TokenKey::Integration),
            _ => text.strip_prefix("org:").and_then(|o| OrgId::new(o).ok()).map(TokenKey::Org),
        }
    }

    /// The org id, for an org's key.
    pub fn org_id(&self) -> Option<&OrgId> {
        match self {
            TokenKey::Org(org) => Some(org),
            TokenKey::Integration => None,
        }
    }
}

impl fmt::Display for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenKey::Integration => f.write_str("integration"),
            TokenKey::Org(org) => write!(f, "org {org}"),
        }
    }
}

/// A record with the version it was read at. Versions only grow; a backend without
/// coordination reports [`UNVERSIONED`].
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    /// The record.
    pub value: T,
    /// Its version.
    pub version: u64,
}

/// The version a backend without coordination reports.
pub const UNVERSIONED: u64 = 0;

/// The condition a versioned write checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// No record may exist.
    Absent,
    /// The stored record must have this version.
    Version(u64),
    /// Write unconditionally.
    Any,
}

impl Expect {
    /// Whether a write under this condition applies when the stored record has version
    /// `current` (`None`: no record). Every backend that checks in Rust asks this; backends
    /// that check inside the database (a Lua script, a `WHERE` clause) follow the same table.
    ///
    /// ```
    /// use byova_core::backend::Expect;
    /// assert!(Expect::Absent.admits(None) && !Expect::Absent.admits(Some(3)));
    /// assert!(Expect::Version(3).admits(Some(3)) && !Expect::Version(3).admits(Some(4)));
    /// assert!(!Expect::Version(3).admits(None) && Expect::Any.admits(Some(9)));
    /// ```
    pub fn admits(self, current: Option<u64>) -> bool {
        match self {
            Expect::Any => true,
            Expect::Absent => current.is_none(),
            Expect::Version(v) => current == Some(v),
        }
    }
}

/// A lease on one key, held by one owner until it is released or its time-to-live passes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The key it covers.
    pub key: TokenKey,
    /// The owner's random token; only the owner can release the lease.
    pub owner: u128,
}

impl Lease {
    /// A lease with a fresh random owner token.
    pub fn new(key: TokenKey) -> Self {
        Self { key, owner: u128::from_le_bytes(crate::secret::random_bytes::<16>()) }
    }
}
