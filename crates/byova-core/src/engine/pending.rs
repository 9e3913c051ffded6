//! Authorization URLs handed out by `get_authorization_url`, waiting for their code: kept in
//! this process (for `exchange_code`, which takes the latest) and written to the store (for
//! `exchange_code_for_state` in any process sharing it).

use std::sync::Mutex;

use crate::config::ByovaConfig;
use crate::credentials::IntegrationCredentials;
use crate::error::{Error, Result};
use crate::oauth::AuthorizationRequest;
use crate::pending::PendingAuthorization;
use crate::secret::{CsrfState, PkceCodeVerifier};
use crate::time::Timestamp;

/// How many authorization URLs this process remembers at once; the oldest is dropped beyond
/// (the store keeps its copies until they expire).
const MAX_PENDING: usize = 32;

/// Authorization URLs of this process waiting for their code.
#[derive(Debug, Default)]
pub struct PendingAuthorizations(Mutex<Vec<(CsrfState, PendingAuthorization)>>);

/// An authorization URL just built: the URL, its `state`, and the pending authorization to
/// write to the store.
pub(crate) struct Issued {
    pub url: String,
    pub state: String,
    pub pending: PendingAuthorization,
}

impl PendingAuthorizations {
    /// Builds an authorization URL (state + PKCE S256) at `now` and remembers its verifier.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for a bad scope list.
    pub(crate) fn issue(
        &self,
        config: &ByovaConfig,
        credentials: &IntegrationCredentials,
        scopes: Option<&[&str]>,
        state: Option<&str>,
        now: Timestamp,
    ) -> Result<Issued> {
        let mut request = AuthorizationRequest::builder(config, credentials);
        if let Some(scopes) = scopes {
            request = request.scopes(scopes);
        }
        if let Some(state) = state {
            request = request.state(CsrfState::new(state));
        }
        let request = request.build()?;
        let Some(verifier) = request.pkce_verifier else {
            return Err(Error::Internal("an authorization URL was built without PKCE".into()));
        };
        let copy = PkceCodeVerifier::new(verifier.expose_secret());
        let state = request.state.expose_secret().to_owned();
        let mut pending = self.lock();
        // A state issued again (a caller's own, reused) means the newest URL: the store keeps
        // only that one too.
        pending.retain(|(s, p)| !p.is_expired(now) && !s.ct_eq(&request.state));
        if pending.len() >= MAX_PENDING {
            pending.remove(0);
        }
        pending.push((request.state, PendingAuthorization::new(verifier, &credentials.redirect_uri, now)));
        Ok(Issued {
            url: request.url,
            state,
            pending: PendingAuthorization::new(copy, &credentials.redirect_uri, now),
        })
    }

    /// The most recent URL's pending authorization and its `state`.
    pub(crate) fn take_latest(&self) -> Option<(String, PendingAuthorization)> {
        self.lock().pop().map(|(s, p)| (s.expose_secret().to_owned(), p))
    }

    /// The pending authorization of the URL issued with `state`.
    pub(crate) fn take_for_state(&self, state: &str) -> Option<PendingAuthorization> {
        let mut pending = self.lock();
        let pos = pending.iter().position(|(s, _)| s.ct_eq_str(state));
        pos.map(|i| pending.remove(i).1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(CsrfState, PendingAuthorization)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn pending_verifiers_are_taken_by_state_or_latest_and_expire() {
        let config = ByovaConfig::default();
        let creds = IntegrationCredentials::new("C", "s");
        let pending = PendingAuthorizations::default();
        let now = Timestamp::from_unix_secs(1_000);
        let a = pending.issue(&config, &creds, None, Some("A"), now).unwrap();
        let b = pending.issue(&config, &creds, None, None, now).unwrap();
        assert!(a.url.contains("state=A") && a.url.contains("code_challenge="));
        assert_eq!(a.pending.redirect_uri, creds.redirect_uri);
        let va = pending.take_for_state(&a.state).unwrap();
        assert!(a.url.contains(&va.verifier.s256_challenge()));
        assert!(va.verifier.ct_eq(&a.pending.verifier), "the store's copy is the same verifier");
        assert!(pending.take_for_state(&a.state).is_none(), "single use");
        assert_eq!(pending.take_latest().map(|(s, _)| s), Some(b.state.clone()));
        assert!(pending.take_for_state(&b.state).is_none());
        for i in 0..40 {
            pending.issue(&config, &creds, None, Some(&format!("s{i}")), now).unwrap();
        }
        assert!(pending.take_for_state("s0").is_none(), "the oldest are dropped beyond 32");
        assert!(pending.take_for_state("s39").is_some());
        let first = pending.issue(&config, &creds, None, Some("again"), now).unwrap();
        let second = pending.issue(&config, &creds, None, Some("again"), now).unwrap();
        let taken = pending.take_for_state("again").unwrap();
        assert!(
            taken.verifier.ct_eq(&second.pending.verifier) && !taken.verifier.ct_eq(&first.pending.verifier)
        );
        assert!(pending.take_for_state("again").is_none(), "a reissued state replaces the older URL");
        let later = now.saturating_add(Duration::from_secs(601));
        pending.issue(&config, &creds, None, Some("fresh"), later).unwrap();
        assert!(pending.take_for_state("s38").is_none(), "expired ones are dropped");
        assert!(pending.take_for_state("fresh").is_some());
    }
}
