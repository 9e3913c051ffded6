//! The async driver: performs the steps of byova-core's plans on tokio. The one place this
//! flavour waits, sleeps, spawns or touches storage.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use byova_core::engine::{Sent, Step, Then, TokenEngine};
use byova_core::{AccessToken, Clock, Result, Timestamp, TokenKey, TokenStorage};

use crate::http::HttpClient;

/// A boxed future of a plan's result.
pub(crate) type Running<T> = Pin<Box<dyn Future<Output = Result<T>> + Send>>;

/// One manager's engine with what its plans need: storage, HTTP, a clock, and for a Service
/// App the Integration's agent (whose bearer fetches org tokens).
pub(crate) struct Agent {
    pub(crate) tokens: Arc<TokenEngine>,
    pub(crate) storage: Arc<dyn TokenStorage>,
    pub(crate) http: HttpClient,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) integration: Option<Arc<Agent>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("tokens", &self.tokens).finish_non_exhaustive()
    }
}

impl Agent {
    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The Integration's access token: the hot path, else the Integration's plan.
    pub(crate) async fn integration_token(self: &Arc<Self>) -> Result<AccessToken> {
        let agent = self.integration.as_ref().unwrap_or(self);
        let now = agent.now();
        if let Some(token) = agent.tokens.fresh_integration(now) {
            return Ok(token);
        }
        agent.run(agent.tokens.access_token(TokenKey::Integration, now)).await
    }

    /// Runs `plan` to its end. Dropping the future stops only this caller's part: refreshes
    /// the plan started run on in their own tasks.
    pub(crate) fn run<T: Send + 'static>(self: &Arc<Self>, plan: Step<T>) -> Running<T> {
        Box::pin(self.clone().drive(plan))
    }

    async fn drive<T: Send + 'static>(self: Arc<Self>, mut step: Step<T>) -> Result<T> {
        let storage = self.storage.as_ref();
        loop {
            step = match step {
                Step::Load(key, then) => then.resume(storage.load(&key).await, self.now()),
                Step::Store(key, tokens, expect, then) => {
                    then.resume(storage.store(&key, &tokens, expect).await, self.now())
                }
                Step::DeleteOrg(org, then) => {
                    then.resume(storage.delete_service_app_tokens(&org).await, self.now())
                }
                Step::ListOrgs(then) => then.resume(storage.list_registered_orgs().await, self.now()),
                Step::AcquireLease(key, ttl, then) => {
                    then.resume(storage.try_acquire_lease(&key, ttl).await, self.now())
                }
                Step::ExtendLease(lease, ttl, then) => {
                    then.resume(storage.extend_lease(&lease, ttl).await, self.now())
                }
                Step::ReleaseLease(lease, then) => {
                    let released = storage.release_lease(&lease).await;
                    if let Err(e) = &released {
                        tracing::warn!(key = %lease.key, error = %e, "could not release a refresh lease; it expires on its own");
                    }
                    then.resume(released, self.now())
                }
                Step::Send(request, then) => {
                    let sent_at = self.now();
                    tracing::debug!(url = request.url_for_logs(), "calling Webex");
                    let response = self.http.send(&request).await;
                    then.resume(Sent::new(response, sent_at), self.now())
                }
                Step::Sleep(d, then) => {
                    tokio::time::sleep(d).await;
                    then.resume((), self.now())
                }
                Step::IntegrationToken(then) => then.resume(self.integration_token().await, self.now()),
                Step::Detach(plan, then) => {
                    let detached = self.run(*plan);
                    match tokio::runtime::Handle::try_current() {
                        Ok(runtime) => drop(runtime.spawn(detached)),
                        // Polled outside tokio: nothing to detach onto, so run it here.
                        Err(_) => drop(detached.await),
                    }
                    then.resume((), self.now())
                }
                Step::Wait(flight, then) => then.resume(flight.wait().await, self.now()),
                Step::Concurrently(plans, at_once, then) => {
                    self.concurrently(plans, at_once).await;
                    then.resume((), self.now())
                }
                Step::Done(result) => return result,
            };
        }
    }

    /// Runs the plans, `at_once` at a time, each started when a worker is free.
    async fn concurrently(self: &Arc<Self>, plans: Vec<Then<(), ()>>, at_once: usize) {
        let workers = at_once.min(plans.len());
        let queue = Arc::new(Mutex::new(plans.into_iter()));
        let mut running = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let (agent, queue) = (self.clone(), queue.clone());
            running.spawn(async move {
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                    let Some(start) = next else { break };
                    let _ = agent.run(start.resume((), agent.now())).await;
                }
            });
        }
        while running.join_next().await.is_some() {}
    }
}
