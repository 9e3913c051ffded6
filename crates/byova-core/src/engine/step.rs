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
//!         Step::Storage(call) => call.perform_blocking(storage, || clock.now()),
//!         Step::Send(request, then) => { let sent_at = clock.now(); then.resume(Sent { response: http.send(&request), sent_at }, clock.now()) }
//!         …
//!         Step::Done(result) => return result,
//!     }
//! }
//! ```

use std::fmt;
use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use crate::engine::flight::{Flight, Held};
use crate::error::{Result, StorageError};
use crate::http::{HttpRequest, HttpResponse};
use crate::key::OrgId;
use crate::key::{Expect, Lease, TokenKey, Versioned};
use crate::pending::PendingAuthorization;
use crate::secret::AccessToken;
use crate::storage::{BlockingCoordinatedTokenStorage, CoordinatedTokenStorage};
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
    /// A call to the token storage. Core performs it
    /// ([`perform`](StorageCall::perform), [`perform_blocking`](StorageCall::perform_blocking)),
    /// so a driver has one arm for every storage operation.
    Storage(StorageCall<T>),
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

/// A storage call of a plan: one of the store's operations with the continuation that takes
/// its answer. [`perform_blocking`](Self::perform_blocking) and [`perform`](Self::perform) do
/// it against a store; a test harness may match a variant to answer it itself. Adding a
/// storage operation adds a variant here and a method to the storage traits, and touches no
/// driver.
#[must_use = "a plan does nothing until a driver performs its steps"]
pub enum StorageCall<T> {
    /// `storage.load(key)`.
    Load(TokenKey, Then<T, StorageResult<Option<Versioned<OAuthTokens>>>>),
    /// `storage.store(key, tokens, expect)`.
    Store(TokenKey, OAuthTokens, Expect, Then<T, StorageResult<u64>>),
    /// `storage.delete_org(org_id, expect)`.
    DeleteOrg(OrgId, Expect, Then<T, StorageResult<()>>),
    /// `storage.list_registered_orgs()`.
    ListOrgs(Then<T, StorageResult<Vec<OrgId>>>),
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
    /// `storage.release_lease(lease)` (a failure is logged: the lease expires on its own).
    ReleaseLease(Lease, Then<T, StorageResult<()>>),
}

impl<T> fmt::Debug for Step<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Storage(call) => call.fmt(f),
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

impl<T> fmt::Debug for StorageCall<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageCall::Load(key, _) => write!(f, "Load({key})"),
            StorageCall::Store(key, _, expect, _) => write!(f, "Store({key}, {expect:?})"),
            StorageCall::DeleteOrg(org, expect, _) => write!(f, "DeleteOrg({org}, {expect:?})"),
            StorageCall::ListOrgs(_) => f.write_str("ListOrgs"),
            StorageCall::SavePending(key, _, _) => write!(f, "SavePending({key})"),
            StorageCall::TakePending(key, _) => write!(f, "TakePending({key})"),
            StorageCall::LoadMany(keys, _) => write!(f, "LoadMany({} keys)", keys.len()),
            StorageCall::LoadState(name, _) => write!(f, "LoadState({name})"),
            StorageCall::StoreState(name, _, expect, _) => write!(f, "StoreState({name}, {expect:?})"),
            StorageCall::AcquireLease(key, ttl, _) => write!(f, "AcquireLease({key}, {ttl:?})"),
            StorageCall::ExtendLease(lease, ttl, _) => write!(f, "ExtendLease({}, {ttl:?})", lease.key),
            StorageCall::ReleaseLease(lease, _) => write!(f, "ReleaseLease({})", lease.key),
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
            Step::Storage(call) => Step::Storage(call.chain(f)),
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

impl<T: Send + 'static> StorageCall<T> {
    fn chain<U: Send + 'static>(
        self,
        f: Box<dyn FnOnce(Result<T>, Timestamp) -> Step<U> + Send>,
    ) -> StorageCall<U> {
        use StorageCall as C;
        match self {
            C::Load(key, k) => C::Load(key, k.chain(f)),
            C::Store(key, tokens, expect, k) => C::Store(key, tokens, expect, k.chain(f)),
            C::DeleteOrg(org, expect, k) => C::DeleteOrg(org, expect, k.chain(f)),
            C::ListOrgs(k) => C::ListOrgs(k.chain(f)),
            C::SavePending(key, pending, k) => C::SavePending(key, pending, k.chain(f)),
            C::TakePending(key, k) => C::TakePending(key, k.chain(f)),
            C::LoadMany(keys, k) => C::LoadMany(keys, k.chain(f)),
            C::LoadState(name, k) => C::LoadState(name, k.chain(f)),
            C::StoreState(name, bytes, expect, k) => C::StoreState(name, bytes, expect, k.chain(f)),
            C::AcquireLease(key, ttl, k) => C::AcquireLease(key, ttl, k.chain(f)),
            C::ExtendLease(lease, ttl, k) => C::ExtendLease(lease, ttl, k.chain(f)),
            C::ReleaseLease(lease, k) => C::ReleaseLease(lease, k.chain(f)),
        }
    }

    /// Performs the call against a blocking store and resumes its continuation at `now()`,
    /// read once the store has answered.
    pub fn perform_blocking<S: BlockingCoordinatedTokenStorage + ?Sized>(
        self,
        store: &S,
        now: impl Fn() -> Timestamp,
    ) -> Step<T> {
        use StorageCall as C;
        match self {
            C::Load(key, then) => then.resume(store.load(&key), now()),
            C::Store(key, tokens, expect, then) => then.resume(store.store(&key, &tokens, expect), now()),
            C::DeleteOrg(org, expect, then) => then.resume(store.delete_org(&org, expect), now()),
            C::ListOrgs(then) => then.resume(store.list_orgs(), now()),
            C::SavePending(key, pending, then) => {
                then.resume(store.save_pending_authorization(&key, &pending), now())
            }
            C::TakePending(key, then) => then.resume(store.take_pending_authorization(&key), now()),
            C::LoadMany(keys, then) => then.resume(store.load_many(&keys), now()),
            C::LoadState(name, then) => then.resume(store.load_state(&name), now()),
            C::StoreState(name, bytes, expect, then) => {
                then.resume(store.store_state(&name, &bytes, expect), now())
            }
            C::AcquireLease(key, ttl, then) => then.resume(store.try_acquire_lease(&key, ttl), now()),
            C::ExtendLease(lease, ttl, then) => then.resume(store.extend_lease(&lease, ttl), now()),
            C::ReleaseLease(lease, then) => then.resume(released(&lease, store.release_lease(&lease)), now()),
        }
    }

    /// Performs the call against an async store and resumes its continuation at `now()`, read
    /// once the store has answered. A call still running when `timer` (a sleep of `limit`,
    /// from the driver's runtime) completes fails as
    /// [`Unavailable`](crate::StorageErrorKind::Unavailable), which is retryable: a hung store
    /// never stalls a caller or the refresher.
    pub async fn perform<S: CoordinatedTokenStorage + ?Sized>(
        self,
        store: &S,
        now: impl Fn() -> Timestamp,
        limit: Duration,
        timer: impl Future<Output = ()>,
    ) -> Step<T> {
        use StorageCall as C;
        let timer = (limit, timer);
        match self {
            C::Load(key, then) => then.resume(within(timer, store.load(&key)).await, now()),
            C::Store(key, tokens, expect, then) => {
                then.resume(within(timer, store.store(&key, &tokens, expect)).await, now())
            }
            C::DeleteOrg(org, expect, then) => {
                then.resume(within(timer, store.delete_org(&org, expect)).await, now())
            }
            C::ListOrgs(then) => then.resume(within(timer, store.list_orgs()).await, now()),
            C::SavePending(key, pending, then) => {
                then.resume(within(timer, store.save_pending_authorization(&key, &pending)).await, now())
            }
            C::TakePending(key, then) => {
                then.resume(within(timer, store.take_pending_authorization(&key)).await, now())
            }
            C::LoadMany(keys, then) => then.resume(within(timer, store.load_many(&keys)).await, now()),
            C::LoadState(name, then) => then.resume(within(timer, store.load_state(&name)).await, now()),
            C::StoreState(name, bytes, expect, then) => {
                then.resume(within(timer, store.store_state(&name, &bytes, expect)).await, now())
            }
            C::AcquireLease(key, ttl, then) => {
                then.resume(within(timer, store.try_acquire_lease(&key, ttl)).await, now())
            }
            C::ExtendLease(lease, ttl, then) => {
                then.resume(within(timer, store.extend_lease(&lease, ttl)).await, now())
            }
            C::ReleaseLease(lease, then) => {
                let result = within(timer, store.release_lease(&lease)).await;
                then.resume(released(&lease, result), now())
            }
        }
    }
}

/// A release that failed is logged: the lease expires on its own.
fn released(lease: &Lease, result: StorageResult<()>) -> StorageResult<()> {
    if let Err(e) = &result {
        tracing::warn!(key = %lease.key, error = %e, "could not release a refresh lease; it expires on its own");
    }
    result
}

/// `call`, or an `Unavailable` error once the timer (a sleep of the limit) completes first.
async fn within<X>(
    (limit, timer): (Duration, impl Future<Output = ()>),
    call: impl Future<Output = StorageResult<X>>,
) -> StorageResult<X> {
    let mut call = std::pin::pin!(call);
    let mut timer = std::pin::pin!(timer);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = call.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(StorageError::unavailable(format!(
                "the token storage did not answer within {limit:?}"
            )))),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// A plan that is already finished.
pub(crate) fn done<T>(result: Result<T>) -> Step<T> {
    Step::Done(result)
}
