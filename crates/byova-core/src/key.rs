//! The vocabulary of token storage: which record ([`TokenKey`]), at which version
//! ([`Versioned`]), under which condition a write applies ([`Expect`]), and who may refresh it
//! ([`Lease`]). The storage traits, the refresh path and the cache all speak it.

use std::fmt;

use crate::error::TokenSubject;

/// Whose tokens a record holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TokenKey {
    /// The provider's Integration.
    Integration,
    /// A customer organization's Service App tokens, by its normalized (UUID) org id.
    Org(String),
}

impl TokenKey {
    /// The key for an org.
    pub fn org(org_id: impl Into<String>) -> Self {
        TokenKey::Org(org_id.into())
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
    /// use byova_core::TokenKey;
    /// assert_eq!(TokenKey::org("o-1").label(), "org:o-1");
    /// assert_eq!(TokenKey::from_label("org:o-1"), Some(TokenKey::org("o-1")));
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
            _ => text.strip_prefix("org:").filter(|o| !o.trim().is_empty()).map(TokenKey::org),
        }
    }

    /// The org id, for an org's key.
    pub fn org_id(&self) -> Option<&str> {
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
