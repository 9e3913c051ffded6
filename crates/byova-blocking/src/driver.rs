//! The blocking driver of byova-core's refresh machine: the hot path, per-key single-flight
//! across threads, and the loop that performs each step the machine asks for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use byova_core::refresh::{Outcome, RefreshClient, RefreshMachine, RefreshMode, Step};
use byova_core::{
    AccessToken, BlockingTokenStorage, ByovaConfig, Clock, Error, HttpRequest, HttpResponse, KeyStatus,
    OAuthTokens, Result, RetryDecision, TokenCache, TokenKey,
};

use crate::http::HttpClient;
use crate::integration::IntegrationTokenManager;

/// Per-key state shared by a manager's callers: the cache and one mutex per key.
#[derive(Debug)]
pub(crate) struct Keys {
    pub(crate) cache: TokenCache,
    locks: Mutex<HashMap<TokenKey, Arc<Mutex<()>>>>,
}

impl Keys {
    pub(crate) fn new(config: &ByovaConfig) -> Self {
        Self {
            cache: TokenCache::new(
                config.refresh.clone(),
                byova_core::random_u64(),
                config.coordination.cache_revalidate,
            ),
            locks: Mutex::default(),
        }
    }

    fn lock_for(&self, key: &TokenKey) -> Arc<Mutex<()>> {
        self.locks.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default().clone()
    }
}

/// What a manager hands the driver.
pub(crate) struct Env<'a> {
    pub(crate) config: &'a ByovaConfig,
    pub(crate) storage: &'a dyn BlockingTokenStorage,
    pub(crate) http: &'a HttpClient,
    pub(crate) clock: &'a dyn Clock,
    pub(crate) keys: &'a Keys,
    pub(crate) integration: Option<&'a IntegrationTokenManager>,
}

impl Env<'_> {
    /// A valid access token for `key`: from the cache when fresh, else after one thread in
    /// this process has run the refresh machine.
    pub(crate) fn get_valid(&self, client: RefreshClient<'_>, key: &TokenKey) -> Result<AccessToken> {
        if let Some(token) = self.keys.cache.fresh(key, self.clock.now()) {
            return Ok(token);
        }
        let lock = self.keys.lock_for(key);
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(token) = self.keys.cache.fresh(key, self.clock.now()) {
            return Ok(token);
        }
        self.run(client, key, RefreshMode::GetValid).map(|t| t.access_token)
    }

    /// New tokens now, single-flight with every other thread for `key`.
    pub(crate) fn force(
        &self,
        client: RefreshClient<'_>,
        key: &TokenKey,
        mode: RefreshMode,
    ) -> Result<OAuthTokens> {
        let lock = self.keys.lock_for(key);
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.run(client, key, mode)
    }

    fn run(&self, client: RefreshClient<'_>, key: &TokenKey, mode: RefreshMode) -> Result<OAuthTokens> {
        let outcome = self.drive(client, key.clone(), mode);
        if let Some(error) = &outcome.served_stale_after {
            tracing::warn!(key = %key, error = %error, "refresh failed; serving the still-valid access token");
        }
        if outcome.refreshed {
            tracing::info!(key = %key, "tokens refreshed and stored");
        }
        let result = self.keys.cache.apply(key, outcome, self.clock.now());
        if let Err(error) = &result {
            tracing::debug!(key = %key, error = %error, "could not obtain a valid token");
        }
        result
    }

    fn drive(&self, client: RefreshClient<'_>, key: TokenKey, mode: RefreshMode) -> Outcome {
        let seed = self.keys.cache.jitter_seed(&key);
        let unsaved = self.keys.cache.take_unsaved(&key);
        let mut machine = RefreshMachine::new(self.config, client, key, mode, seed, byova_core::random_u64())
            .with_unsaved(unsaved);
        let mut step = machine.start();
        loop {
            step = match step {
                Step::Load(key) => machine.on_loaded(self.storage.load(&key), self.clock.now()),
                Step::AcquireLease(key, ttl) => {
                    machine.on_lease(self.storage.try_acquire_lease(&key, ttl), self.clock.now())
                }
                Step::Sleep(d) => {
                    std::thread::sleep(d);
                    machine.on_slept()
                }
                Step::NeedIntegrationToken => {
                    let token = match self.integration {
                        Some(integration) => integration.get_access_token(),
                        None => Err(Error::NotAuthorized),
                    };
                    machine.on_integration_token(token)
                }
                Step::Send(request) => {
                    let sent_at = self.clock.now();
                    tracing::debug!(url = request.url_for_logs(), "calling Webex");
                    let response = self.http.send(&request);
                    machine.on_response(response, sent_at, self.clock.now())
                }
                Step::Store(key, tokens, expect) => {
                    machine.on_stored(self.storage.store(&key, &tokens, expect))
                }
                Step::Release(lease) => {
                    if let Err(e) = self.storage.release_lease(&lease) {
                        tracing::warn!(key = %lease.key, error = %e, "could not release a refresh lease; it expires on its own");
                    }
                    machine.on_released()
                }
                Step::ExtendLease(lease, ttl) => {
                    machine.on_lease_extended(self.storage.extend_lease(&lease, ttl), self.clock.now())
                }
                Step::Done(outcome) => return outcome,
            };
        }
    }

    /// The status of `key` from storage.
    pub(crate) fn status(&self, key: &TokenKey) -> Result<Option<KeyStatus>> {
        let record = self.storage.load(key)?;
        Ok(record.map(|r| self.keys.cache.status(key, &r.value, self.clock.now())))
    }
}

/// Sends a request outside the refresh path (code exchange, webhooks), retrying as core's
/// retry policy decides, and parses the answer with `parse`.
pub(crate) fn send_with_retry<T>(
    http: &HttpClient,
    config: &ByovaConfig,
    request: &HttpRequest,
    parse: impl Fn(&HttpResponse) -> Result<T>,
) -> Result<T> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match http.send(request).and_then(|r| parse(&r)) {
            Ok(v) => return Ok(v),
            Err(error) => {
                let random = (byova_core::random_u64() >> 32) as u32;
                match config.retry.decide(request.retry, attempt, &error, random) {
                    RetryDecision::RetryAfter(d) => std::thread::sleep(d),
                    _ => return Err(error),
                }
            }
        }
    }
}
