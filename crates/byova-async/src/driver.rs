//! The async driver: performs the steps of byova-core's plans on tokio. The one place this
//! flavour waits, sleeps, spawns or touches storage.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use byova_core::backend::CoordinatedTokenStorage;
use byova_core::engine::{Sent, Step, Then};
use byova_core::{AccessToken, Result, TokenKey};

use crate::http::HttpClient;

/// A boxed future of a plan's result.
pub(crate) type Running<T> = Pin<Box<dyn Future<Output = Result<T>> + Send>>;

/// One manager's engine, storage, HTTP client and clock (and the Integration's, for a
/// Service App): core's [`Agent`](byova_core::engine::Agent), with this flavour's storage and client.
pub(crate) type Agent = byova_core::engine::Agent<dyn CoordinatedTokenStorage, HttpClient>;

/// Running plans on tokio.
pub(crate) trait Drive {
    /// Runs `plan` to its end. Dropping the future stops only this caller's part: refreshes
    /// the plan started run on in their own tasks.
    fn run<T: Send + 'static>(self: &Arc<Self>, plan: Step<T>) -> Running<T>;
    /// The Integration's access token: the hot path, else the Integration's plan.
    fn integration_token(self: &Arc<Self>) -> Running<AccessToken>;
    /// Runs `plan` in a task of its own, for a synchronous method; outside tokio there is
    /// nothing to run it on, so it is dropped and logged.
    fn start(self: &Arc<Self>, plan: Step<()>);
}

impl Drive for Agent {
    // Out of line: the hot path's caller only reaches it on a miss, and the drive future it
    // builds would otherwise widen that caller's stack frame.
    #[inline(never)]
    fn run<T: Send + 'static>(self: &Arc<Self>, plan: Step<T>) -> Running<T> {
        Box::pin(drive(self.clone(), plan))
    }

    fn start(self: &Arc<Self>, plan: Step<()>) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(self.run(plan))),
            Err(_) => tracing::warn!("called outside a tokio runtime: {plan:?} was not run"),
        }
    }

    fn integration_token(self: &Arc<Self>) -> Running<AccessToken> {
        let agent = self.integration_agent();
        let now = agent.now();
        match agent.engine.fresh_integration(now) {
            Some(token) => Box::pin(std::future::ready(Ok(token))),
            None => agent.run(agent.engine.access_token(TokenKey::Integration, now)),
        }
    }
}

async fn drive<T: Send + 'static>(agent: Arc<Agent>, mut step: Step<T>) -> Result<T> {
    let storage = agent.storage.as_ref();
    loop {
        step = match step {
            Step::Storage(call) => {
                let limit = agent.engine.config().storage_timeout;
                call.perform(storage, || agent.now(), limit, tokio::time::sleep(limit)).await
            }
            Step::Send(request, then) => {
                let sent_at = agent.now();
                tracing::debug!(url = request.url_for_logs(), "calling Webex");
                let response = agent.http.send(&request).await;
                then.resume(Sent::new(response, sent_at), agent.now())
            }
            Step::Sleep(d, then) => {
                tokio::time::sleep(d).await;
                then.resume((), agent.now())
            }
            Step::IntegrationToken(then) => then.resume(agent.integration_token().await, agent.now()),
            Step::Detach(plan, then) => {
                let detached = agent.run(*plan);
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => drop(runtime.spawn(detached)),
                    // Polled outside tokio: nothing to detach onto, so run it here.
                    Err(_) => drop(detached.await),
                }
                then.resume((), agent.now())
            }
            Step::Wait(flight, then) => then.resume(flight.wait().await, agent.now()),
            Step::Concurrently(plans, at_once, then) => {
                concurrently(&agent, plans, at_once).await;
                then.resume((), agent.now())
            }
            Step::Done(result) => return result,
        };
    }
}

/// Runs the plans, `at_once` at a time, each in its own task (a panic ends only its own).
async fn concurrently(agent: &Arc<Agent>, plans: Vec<Then<(), ()>>, at_once: usize) {
    let slots = Arc::new(tokio::sync::Semaphore::new(at_once.max(1)));
    let mut running = tokio::task::JoinSet::new();
    for start in plans {
        let Ok(slot) = slots.clone().acquire_owned().await else { break };
        let agent = agent.clone();
        running.spawn(async move {
            let _ = agent.run(start.resume((), agent.now())).await;
            drop(slot);
        });
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}
