//! Plans: an operation as a chain of steps that a driver performs one at a time.
//!
//! A plan is its first [`Step`]. Each step is either finished ([`Step::Done`]) or one piece of
//! I/O together with the continuation ([`Then`]) that accepts exactly that piece's result, so
//! a driver cannot answer a step with the wrong kind of result, and there is no state to get
//! out of order. A driver is one loop:
//!
//! ```text
//! loop {
//!     step = match step {
//!         Step::Load(key, then) => then.resume(storage.load(&key)?, clock.now()),
//!         Step::Send(request, then) => { let sent_at = clock.now(); then.resume(Sent { response: http.send(&request), sent_at }, clock.now()) }
//!         …
//!         Step::Done(result) => return result,
//!     }
//! }
//! ```

use std::fmt;
use std::time::Duration;

use crate::engine::flight::{Flight, Held};
use crate::error::{Result, StorageError};
use crate::http::{HttpRequest, HttpResponse};
use crate::key::{Expect, Lease, TokenKey, Versioned};
use crate::pending::PendingAuthorization;
use crate::secret::AccessToken;
use crate::time::Timestamp;
use crate::tokens::OAuthTokens;

/// What a storage step answers.
pub type StorageResult<T> = std::result::Result<T, StorageError>;

/// The continuation of a step: give it the step's result and the time it finished.
#[must_use = "a plan does nothing until a driver resumes it"]
pub struct Then<T, I>(Box<dyn FnOnce(I, Timestamp) -> Step<T> + Send>);

impl<T, I> Then<T, I> {
    pub(crate) fn new(f: impl FnOnce(I, Timestamp) -> Step<T> + Send + 'static) -> Self {
        Then(Box::new(f))
    }

    /// Hands back the result of the step this continuation belongs to; `now` is the time
    /// after it finished. Returns the next step.
    pub fn resume(self, input: I, now: Timestamp) -> Step<T> {
        (self.0)(input, now)
    }
}

impl<T: Send + 'static, I: 'static> Then<T, I> {
    fn chain<U: Send + 'static>(
        self,
        f: Box<dyn FnOnce(Result<T>, Timestamp) -> Step<U> + Send>,
    ) -> Then<U, I> {
        Then::new(move |input, now| self.resume(input, now).then_boxed(now, f))
    }
}

impl<T, I> fmt::Debug for Then<T, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Then(..)")
    }
}

/// The answer to [`Step::Send`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Sent {
    /// The response, or the transport error.
    pub response: Result<HttpResponse>,
    /// When the request was sent (token lifetimes count from here).
    pub sent_at: Timestamp,
}

impl Sent {
    /// A response to a request sent at `sent_at`.
    pub fn new(response: Result<HttpResponse>, sent_at: Timestamp) -> Self {
        Self { response, sent_at }
    }
}

/// One step of a plan: a piece of I/O for the driver, or the end.
///
/// Deliberately not `#[non_exhaustive]`: a driver must handle every step, and a new kind of
/// step must break every driver's build rather than fall into a wildcard arm.
#[must_use = "a plan does nothing until a driver performs its steps"]
pub enum Step<T> {
    /// `storage.load(key)`.
    Load(TokenKey, Then<T, StorageResult<Option<Versioned<OAuthTokens>>>>),
    /// `storage.store(key, tokens, expect)`.
    Store(TokenKey, OAuthTokens, Expect, Then<T, StorageResult<u64>>),
    /// `storage.delete_org(org_id, expect)`.
    DeleteOrg(String, Expect, Then<T, StorageResult<()>>),
    /// `storage.list_registered_orgs()`.
    ListOrgs(Then<T, StorageResult<Vec<String>>>),
    /// `storage.save_pending_authorization(key, pending)`.
    SavePending(String, PendingAuthorization, Then<T, StorageResult<bool>>),
    /// `storage.take_pending_authorization(key)`.
    TakePending(String, Then<T, StorageResult<Option<PendingAuthorization>>>),
    /// `storage.load_many(keys)`.
    LoadMany(Vec<TokenKey>, Then<T, StorageResult<Vec<Option<Versioned<OAuthTokens>>>>>),
    /// `storage.load_state(name)`.
    LoadState(String, Then<T, StorageResult<Option<Versioned<Vec<u8>>>>>),
    /// `storage.store_state(name, bytes, expect)`.
    StoreState(String, Vec<u8>, Expect, Then<T, StorageResult<u64>>),
    /// `storage.try_acquire_lease(key, ttl)`.
    AcquireLease(TokenKey, Duration, Then<T, StorageResult<Option<Lease>>>),
    /// `storage.extend_lease(lease, ttl)`.
    ExtendLease(Lease, Duration, Then<T, StorageResult<bool>>),
    /// `storage.release_lease(lease)`.
    ReleaseLease(Lease, Then<T, StorageResult<()>>),
    /// Send the request and read the whole response.
    Send(HttpRequest, Then<T, Sent>),
    /// Wait this long.
    Sleep(Duration, Then<T, ()>),
    /// A valid Integration access token (the Integration manager's `get_access_token`).
    IntegrationToken(Then<T, Result<AccessToken>>),
    /// Run this plan to its end on its own, whatever becomes of the caller (the async
    /// flavour spawns it; the blocking flavour runs it on the calling thread), then resume.
    /// Refreshes run this way, so a caller that is dropped mid-refresh never cuts one short.
    Detach(Box<Step<()>>, Then<T, ()>),
    /// Wait for the flight's outcome.
    Wait(Flight, Then<T, Result<Held>>),
    /// Start each of these plans (resume it with `()` to get its first step) and run them, at
    /// most `usize` at a time, then resume. Plans start only when their turn comes.
    Concurrently(Vec<Then<(), ()>>, usize, Then<T, ()>),
    /// Finished.
    Done(Result<T>),
}

impl<T> fmt::Debug for Step<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Load(key, _) => write!(f, "Load({key})"),
            Step::Store(key, _, expect, _) => write!(f, "Store({key}, {expect:?})"),
            Step::DeleteOrg(org, expect, _) => write!(f, "DeleteOrg({org}, {expect:?})"),
            Step::ListOrgs(_) => f.write_str("ListOrgs"),
            Step::SavePending(key, _, _) => write!(f, "SavePending({key})"),
            Step::TakePending(key, _) => write!(f, "TakePending({key})"),
            Step::LoadMany(keys, _) => write!(f, "LoadMany({} keys)", keys.len()),
            Step::LoadState(name, _) => write!(f, "LoadState({name})"),
            Step::StoreState(name, _, expect, _) => write!(f, "StoreState({name}, {expect:?})"),
            Step::AcquireLease(key, ttl, _) => write!(f, "AcquireLease({key}, {ttl:?})"),
            Step::ExtendLease(lease, ttl, _) => write!(f, "ExtendLease({}, {ttl:?})", lease.key),
            Step::ReleaseLease(lease, _) => write!(f, "ReleaseLease({})", lease.key),
            Step::Send(request, _) => write!(f, "Send({request:?})"),
            Step::Sleep(d, _) => write!(f, "Sleep({d:?})"),
            Step::IntegrationToken(_) => f.write_str("IntegrationToken"),
            Step::Detach(..) => f.write_str("Detach"),
            Step::Wait(..) => f.write_str("Wait"),
            Step::Concurrently(plans, n, _) => {
                write!(f, "Concurrently({} plans, {n} at a time)", plans.len())
            }
            Step::Done(Ok(_)) => f.write_str("Done(Ok)"),
            Step::Done(Err(e)) => write!(f, "Done(Err({e}))"),
        }
    }
}

impl<T: Send + 'static> Step<T> {
    /// Continues with `f` once this plan is done; `now` is the current time, for a plan that
    /// is already done.
    pub(crate) fn then<U: Send + 'static>(
        self,
        now: Timestamp,
        f: impl FnOnce(Result<T>, Timestamp) -> Step<U> + Send + 'static,
    ) -> Step<U> {
        self.then_boxed(now, Box::new(f))
    }

    /// Maps the plan's success (`now`: the current time, for a plan that is already done).
    pub fn map<U: Send + 'static>(self, now: Timestamp, f: impl FnOnce(T) -> U + Send + 'static) -> Step<U> {
        self.then(now, |result, _| Step::Done(result.map(f)))
    }

    fn then_boxed<U: Send + 'static>(
        self,
        now: Timestamp,
        f: Box<dyn FnOnce(Result<T>, Timestamp) -> Step<U> + Send>,
    ) -> Step<U> {
        match self {
            Step::Load(key, k) => Step::Load(key, k.chain(f)),
            Step::Store(key, tokens, expect, k) => Step::Store(key, tokens, expect, k.chain(f)),
            Step::DeleteOrg(org, expect, k) => Step::DeleteOrg(org, expect, k.chain(f)),
            Step::ListOrgs(k) => Step::ListOrgs(k.chain(f)),
            Step::SavePending(key, pending, k) => Step::SavePending(key, pending, k.chain(f)),
            Step::TakePending(key, k) => Step::TakePending(key, k.chain(f)),
            Step::LoadMany(keys, k) => Step::LoadMany(keys, k.chain(f)),
            Step::LoadState(name, k) => Step::LoadState(name, k.chain(f)),
            Step::StoreState(name, bytes, expect, k) => Step::StoreState(name, bytes, expect, k.chain(f)),
            Step::AcquireLease(key, ttl, k) => Step::AcquireLease(key, ttl, k.chain(f)),
            Step::ExtendLease(lease, ttl, k) => Step::ExtendLease(lease, ttl, k.chain(f)),
            Step::ReleaseLease(lease, k) => Step::ReleaseLease(lease, k.chain(f)),
            Step::Send(request, k) => Step::Send(request, k.chain(f)),
            Step::Sleep(d, k) => Step::Sleep(d, k.chain(f)),
            Step::IntegrationToken(k) => Step::IntegrationToken(k.chain(f)),
            Step::Detach(plan, k) => Step::Detach(plan, k.chain(f)),
            Step::Wait(flight, k) => Step::Wait(flight, k.chain(f)),
            Step::Concurrently(plans, n, k) => Step::Concurrently(plans, n, k.chain(f)),
            Step::Done(result) => f(result, now),
        }
    }
}

/// A plan that is already finished.
pub(crate) fn done<T>(result: Result<T>) -> Step<T> {
    Step::Done(result)
}
