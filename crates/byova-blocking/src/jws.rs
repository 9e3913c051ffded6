//! [`JwsVerifier`]: checks the JWS Webex sends with every request to a data source (a BYOVA
//! gateway), fetching the identity broker's keys when byova-core's `JwksCache` says so,
//! one fetch per issuer at a time.
//!
//! ```
//! use byova_blocking::jws::{JwsPolicy, JwsVerifier};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let fake = byova_testkit::FakeWebex::start();
//! let url = "https://gateway.example.com/byova";
//! let policy = JwsPolicy::new(url)?;
//! # let policy = policy.with_trusted_issuers([fake.broker_issuer()])?;
//! let verifier = JwsVerifier::new(policy)?;
//! # let token = fake.mint_jws(&fake.data_source_claims(url, "63b02f90-9cc6-43b8-aa6d-cad425ac554c"));
//! // `token`: the bearer of a request Webex made to the gateway.
//! let claims = verifier.verify(&token)?;
//! assert_eq!(claims.data_source_url, url);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use byova_core::jws::{JwkSet, JwksCache, KeyLookup, jwks_outcome, jwks_request};
pub use byova_core::jws::{JwksCachePolicy, JwsError, JwsPolicy, VerifiedClaims};
use byova_core::{Clock, SystemClock};

use crate::HttpClient;

/// Verifies inbound JWS against a [`JwsPolicy`], with the issuers' keys cached (fresh for an
/// hour, an unknown `kid` refetched at most once per 30 s, stale keys used for up to 6 hours
/// while the broker fails: [`JwksCachePolicy`]). Share one per process.
pub struct JwsVerifier {
    policy: JwsPolicy,
    cache: JwksCache,
    http: HttpClient,
    clock: Arc<dyn Clock>,
    /// One fetch per issuer at a time: the others wait for it, then read the cache.
    fetching: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl std::fmt::Debug for JwsVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwsVerifier").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl JwsVerifier {
    /// A verifier for `policy`, fetching keys with a 10 s timeout.
    ///
    /// # Errors
    /// [`Error::Configuration`](crate::Error::Configuration) when the HTTP client cannot be
    /// built.
    pub fn new(policy: JwsPolicy) -> crate::Result<Self> {
        Ok(Self::with_parts(
            policy,
            JwksCachePolicy::default(),
            HttpClient::new(Duration::from_secs(10))?,
            Arc::new(SystemClock),
        ))
    }

    /// A verifier with its cache policy, HTTP client and clock.
    pub fn with_parts(
        policy: JwsPolicy,
        cache: JwksCachePolicy,
        http: HttpClient,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { policy, cache: JwksCache::new(cache), http, clock, fetching: Mutex::new(HashMap::new()) }
    }

    /// What it accepts.
    pub fn policy(&self) -> &JwsPolicy {
        &self.policy
    }

    /// Verifies `token`: its form and issuer first (an untrusted issuer's keys are never
    /// fetched), then its signature with the key its `kid` names, then its claims.
    ///
    /// # Errors
    /// The [`JwsError`] naming the first check that failed.
    pub fn verify(&self, token: &str) -> Result<VerifiedClaims, JwsError> {
        let jws = self.policy.inspect(token)?;
        let keys = self.keys(jws.issuer(), jws.key_id())?;
        self.policy.verify(&jws, &keys, self.clock.now())
    }

    fn keys(&self, issuer: &str, kid: &str) -> Result<Arc<JwkSet>, JwsError> {
        let lock = {
            let mut fetching = self.fetching.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            fetching.entry(issuer.to_owned()).or_default().clone()
        };
        let _one_at_a_time = match self.cache.lookup(issuer, kid, self.clock.now()) {
            KeyLookup::Ready(keys) => return Ok(keys),
            KeyLookup::Refused(e) => return Err(e),
            // Past fresh: whoever finds no fetch running refreshes; the rest verify meanwhile.
            KeyLookup::Refresh(stale) => match lock.try_lock() {
                Ok(guard) => guard,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return Ok(stale),
            },
            KeyLookup::Fetch => lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        };
        // Another caller may have fetched while this one waited.
        match self.cache.lookup_after_wait(issuer, kid, self.clock.now()) {
            KeyLookup::Ready(keys) => return Ok(keys),
            KeyLookup::Refused(e) => return Err(e),
            KeyLookup::Fetch | KeyLookup::Refresh(_) => {}
        }
        self.cache.begin_fetch(issuer, self.clock.now());
        self.cache.record(issuer, jwks_outcome(self.http.send(&jwks_request(issuer))), self.clock.now());
        self.cache.settled(issuer, kid, self.clock.now())
    }
}
