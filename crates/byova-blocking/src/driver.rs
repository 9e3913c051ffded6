//! The blocking driver: performs the steps of byova-core's plans on the calling thread. The
//! one place this flavour waits, sleeps, starts threads or touches storage.

use std::sync::Mutex;

use byova_core::backend::BlockingCoordinatedTokenStorage;
use byova_core::engine::{Sent, Step, Then};
use byova_core::{AccessToken, Result, TokenKey};

use crate::http::HttpClient;

/// One manager's engine, storage, HTTP client and clock (and the Integration's, for a
/// Service App): core's [`Agent`](byova_core::engine::Agent), with this flavour's storage and client.
pub(crate) type Agent = byova_core::engine::Agent<dyn BlockingCoordinatedTokenStorage, HttpClient>;

/// Running plans on the calling thread.
pub(crate) trait Drive {
    /// Runs `plan` to its end on this thread. A refresh it starts is finished here even when
    /// it was started on behalf of other threads; if this thread panics, the refresh's flight
    /// completes with an error for them and its lease is released by the next run.
    fn run<T: Send + 'static>(&self, plan: Step<T>) -> Result<T>;
    /// The Integration's access token: the hot path, else the Integration's plan.
    fn integration_token(&self) -> Result<AccessToken>;
    /// Runs `plan` here: what the async flavour runs in the background, this one finishes
    /// before returning.
    fn start(&self, plan: Step<()>) {
        let _ = self.run(plan);
    }
}

impl Drive for Agent {
    fn integration_token(&self) -> Result<AccessToken> {
        let agent = self.integration.as_deref().unwrap_or(self);
        let now = agent.now();
        if let Some(token) = agent.engine.fresh_integration(now) {
            return Ok(token);
        }
        agent.run(agent.engine.access_token(TokenKey::Integration, now))
    }

    fn run<T: Send + 'static>(&self, mut step: Step<T>) -> Result<T> {
        let storage = self.storage.as_ref();
        loop {
            step = match step {
                Step::Storage(call) => call.perform_blocking(storage, || self.now()),
                Step::Send(request, then) => {
                    let sent_at = self.now();
                    tracing::debug!(url = request.url_for_logs(), "calling Webex");
                    let response = self.http.send(&request);
                    then.resume(Sent::new(response, sent_at), self.now())
                }
                Step::Sleep(d, then) => {
                    std::thread::sleep(d);
                    then.resume((), self.now())
                }
                Step::IntegrationToken(then) => then.resume(self.integration_token(), self.now()),
                Step::Detach(plan, then) => {
                    // A blocking caller cannot be dropped mid-call: the plan runs right here.
                    let _ = self.run(*plan);
                    then.resume((), self.now())
                }
                Step::Wait(flight, then) => then.resume(flight.wait_blocking(), self.now()),
                Step::Concurrently(plans, at_once, then) => {
                    concurrently(self, plans, at_once);
                    then.resume((), self.now())
                }
                Step::Done(result) => return result,
            };
        }
    }
}

/// Runs the plans on `at_once` scoped threads, each started when a thread is free; a panic
/// ends only its own plan.
fn concurrently(agent: &Agent, plans: Vec<Then<(), ()>>, at_once: usize) {
    let workers = at_once.min(plans.len());
    let queue = Mutex::new(plans.into_iter());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                    let Some(start) = next else { break };
                    // A panic ends only this org's plan (its flight reports it); the others
                    // go on.
                    let run = std::panic::AssertUnwindSafe(|| agent.run(start.resume((), agent.now())));
                    let _ = std::panic::catch_unwind(run);
                }
            });
        }
    });
}
