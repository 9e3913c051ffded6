//! PKCE verifiers of authorization URLs handed out by `get_authorization_url`, waiting for
//! their code.

use std::sync::Mutex;

use crate::config::ByovaConfig;
use crate::credentials::IntegrationCredentials;
use crate::error::Result;
use crate::oauth::AuthorizationRequest;
use crate::secret::{CsrfState, PkceCodeVerifier};

/// How many authorization URLs may await their code at once; the oldest is dropped beyond.
const MAX_PENDING: usize = 32;

/// PKCE verifiers of authorization URLs handed out by `get_authorization_url`, waiting for
/// their code.
#[derive(Debug, Default)]
pub struct PendingAuthorizations(Mutex<Vec<(CsrfState, PkceCodeVerifier)>>);

impl PendingAuthorizations {
    /// Builds an authorization URL (state + PKCE S256), remembers its verifier, and returns
    /// `(url, state)`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for a bad scope list.
    pub fn issue(
        &self,
        config: &ByovaConfig,
        credentials: &IntegrationCredentials,
        scopes: Option<&[&str]>,
        state: Option<&str>,
    ) -> Result<(String, String)> {
        let request =
            AuthorizationRequest::new(config, credentials, scopes, state.map(CsrfState::new), true)?;
        let state = request.state.expose_secret().to_owned();
        if let Some(verifier) = request.pkce_verifier {
            let mut pending = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if pending.len() >= MAX_PENDING {
                pending.remove(0);
            }
            pending.push((request.state, verifier));
        }
        Ok((request.url, state))
    }

    /// The verifier of the most recent URL.
    pub fn take_latest(&self) -> Option<PkceCodeVerifier> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop().map(|(_, v)| v)
    }

    /// The verifier of the URL issued with `state`.
    pub fn take_for_state(&self, state: &str) -> Option<PkceCodeVerifier> {
        let mut pending = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let pos = pending.iter().position(|(s, _)| s.ct_eq_str(state));
        pos.map(|i| pending.remove(i).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_verifiers_are_taken_by_state_or_latest() {
        let config = ByovaConfig::default();
        let creds = IntegrationCredentials::new("C", "s");
        let pending = PendingAuthorizations::default();
        let (url_a, a) = pending.issue(&config, &creds, None, Some("A")).unwrap();
        let (_, b) = pending.issue(&config, &creds, None, None).unwrap();
        assert!(url_a.contains("state=A") && url_a.contains("code_challenge="));
        let va = pending.take_for_state(&a).unwrap();
        assert!(url_a.contains(&va.s256_challenge()));
        assert!(pending.take_for_state(&a).is_none(), "single use");
        assert!(pending.take_latest().is_some());
        assert!(pending.take_for_state(&b).is_none());
        for i in 0..40 {
            pending.issue(&config, &creds, None, Some(&format!("s{i}"))).unwrap();
        }
        assert!(pending.take_for_state("s0").is_none(), "the oldest are dropped beyond 32");
        assert!(pending.take_for_state("s39").is_some());
    }
}
