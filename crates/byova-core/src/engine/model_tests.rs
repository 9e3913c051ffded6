//! Coordination under every interleaving: a stateless model checker over the engine's plans.
//!
//! Every caller is a plan; each step it asks for (a storage call, a token call, a sleep, a wait
//! for a flight, a detached refresh) is one event, and the checker chooses which task's event
//! happens next. Runs are replayed from scratch along a recorded prefix of choices and then
//! extended, depth first, so each schedule is explored once; sleeps end in virtual time once
//! nothing else can run (I/O takes no time), and a bound on preemptions keeps the search
//! finite (most concurrency bugs need few, CHESS's finding). Random schedules cover the larger
//! worlds. Processes are separate engines (their own cache and flight table) over one shared
//! in-memory store with versions and leases; Webex rotates refresh tokens strictly.
//!
//! Besides the order, the checker chooses faults where worlds allow them: a caller dropped
//! while it waits (where a driver awaits: callers only wait, all I/O runs in detached plans,
//! which a dropped caller does not stop); a token call that never reaches Webex; a storage
//! call that fails; a stall of the whole machine past the lease's lifetime (the store judges
//! leases by the model's clock). After each schedule every process asks once more, without
//! faults, so that what a fault left behind is seen.
//!
//! What is explored is the order of steps. Inside a step, the engine's own lock regions run
//! as one piece, as they do for a caller holding the lock; interleavings between two lock
//! regions of one continuation are not explored (loom would be needed for those, and the
//! cache's `arc-swap` has no loom model). One key (the Integration's) is modelled; keys share
//! no state beyond the budget.
//!
//! After every schedule: no refresh token spent twice; at most one token call per expiry
//! (without stalls); every caller's tokens were valid when handed out and never older than
//! one it had already seen (nor one it had invalidated); an error only where a fault was
//! injected; no lease held and no flight left once every task is gone; the store holds the
//! newest tokens and Webex's live refresh token.
//!
//! `BYOVA_MODEL_SCHEDULES` sets the random schedules per world (default 2,000), and
//! `BYOVA_MODEL_PREEMPTIONS` the preemption bound of the exhaustive search (default 1 or 2 by
//! world).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::*;
use crate::config::ByovaConfig;
use crate::credentials::IntegrationCredentials;
use crate::http::{HttpRequest, HttpResponse};
use crate::storage::{BlockingCoordinatedTokenStorage, InMemoryTokenStorage};

const START: Timestamp = Timestamp::from_unix_secs(1_800_000_000);
const LIFETIME: u64 = 3600;

/// What a caller does, in order.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// `access_token`.
    Get,
    /// `invalidate` the newest token this caller has been handed (the initial one if none).
    InvalidateSeen,
}

/// How a scenario starts and who takes part.
#[derive(Clone)]
struct World {
    name: &'static str,
    /// Callers per process, each with its script.
    processes: Vec<Vec<Vec<Op>>>,
    /// How long ago the stored token was obtained.
    age: Duration,
    /// How many callers the checker may cancel (drop mid-plan) in one schedule.
    cancels: u32,
    /// With the default token budget (its shared state is then part of every refresh).
    budget: bool,
    /// The preemption bound of the exhaustive search (`BYOVA_MODEL_PREEMPTIONS` overrides).
    bound: u32,
    /// Failed token or storage calls the checker may inject in one schedule.
    faults: u32,
    /// Whole-machine stalls past the lease's lifetime it may inject.
    stalls: u32,
    /// Process 1 on a store of its own (the control: coordination cannot work).
    split: bool,
}

impl World {
    fn new(name: &'static str, processes: Vec<Vec<Vec<Op>>>, age: Duration) -> Self {
        World { name, processes, age, cancels: 0, budget: true, bound: 1, faults: 0, stalls: 0, split: false }
    }
}

/// The model's clock, which the store judges leases by.
#[derive(Debug)]
struct ModelClock(Arc<std::sync::atomic::AtomicU64>);

impl crate::time::Clock for ModelClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_unix_millis(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// A stall: longer than a lease lives.
const STALL: Duration = Duration::from_secs(61);

/// Webex's token endpoint under strict rotation.
#[derive(Default)]
struct Webex {
    serial: u64,
    live: String,
    spent: HashSet<String>,
    calls: u32,
    reused: u32,
    issued_at: HashMap<u64, Timestamp>,
}

impl Webex {
    fn answer(&mut self, request: &HttpRequest, now: Timestamp) -> HttpResponse {
        self.calls += 1;
        let refresh = form_urlencoded::parse(&request.body)
            .find(|(k, _)| k == "refresh_token")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if refresh != self.live {
            if self.spent.contains(&refresh) {
                self.reused += 1;
            }
            let body = br#"{"error":"invalid_grant","error_description":"refresh token spent"}"#;
            return HttpResponse::new(400, Vec::new(), body.to_vec());
        }
        self.spent.insert(refresh);
        self.serial += 1;
        let n = self.serial;
        self.live = format!("RT-{n}");
        self.issued_at.insert(n, now);
        let body = format!(
            r#"{{"access_token":"AT-{n}","expires_in":{LIFETIME},"refresh_token":"RT-{n}","token_type":"Bearer"}}"#
        );
        HttpResponse::new(200, Vec::new(), body.into_bytes())
    }
}

fn serial(token: &AccessToken) -> u64 {
    token.expose_secret().strip_prefix("AT-").and_then(|n| n.parse().ok()).expect("a model token")
}

/// Where a plan stands between events. A few of them live at a time: their size is no concern.
#[allow(clippy::large_enum_variant)]
enum Slot<T> {
    Step(Step<T>),
    Sleep(Timestamp, Then<T, ()>),
    Wait(Flight, Then<T, Result<Held>>),
}

enum Work {
    Get(Slot<AccessToken>),
    Unit(Slot<()>),
}

struct Task {
    process: usize,
    work: Option<Work>,
    /// A caller's remaining script; empty for detached plans.
    script: std::collections::VecDeque<Op>,
    caller: bool,
    /// The newest token serial handed to this caller, and any it invalidated.
    seen: u64,
    invalidated: Vec<u64>,
    cancelled: bool,
    /// For an invalidation in progress: the serial being invalidated.
    invalidating: Option<u64>,
}

fn flight_outcome(flight: &Flight) -> Option<Result<Held>> {
    let mut wait = flight.wait();
    let mut cx = Context::from_waker(Waker::noop());
    match std::pin::Pin::new(&mut wait).poll(&mut cx) {
        Poll::Ready(outcome) => Some(outcome),
        Poll::Pending => None,
    }
}

struct Run {
    world: World,
    /// Each process's store (the same one but in the control).
    stores: Vec<Arc<InMemoryTokenStorage>>,
    clock: Arc<std::sync::atomic::AtomicU64>,
    faults_left: u32,
    stalls_left: u32,
    /// Whether a fault or a stall was injected (errors are then allowed).
    disturbed: bool,
    stalled: bool,
    /// Token calls the expiries in this schedule justify.
    expected_calls: u32,
    engines: Vec<Arc<TokenEngine>>,
    webex: Webex,
    now: Timestamp,
    tasks: Vec<Task>,
    events: u32,
    cancels_left: u32,
    violations: Vec<String>,
    /// Every event, when a broken schedule is replayed to show it.
    log: Option<Vec<String>>,
}

/// How the checker chooses among the options at each point.
trait Chooser {
    fn choose(&mut self, options: usize) -> usize;
}

/// Follows a recorded prefix, then takes the first option, recording every point.
struct Replay {
    path: Vec<(usize, usize)>,
    at: usize,
}

impl Chooser for Replay {
    fn choose(&mut self, options: usize) -> usize {
        let choice = match self.path.get(self.at) {
            Some(&(choice, recorded)) => {
                assert_eq!(recorded, options, "a replayed schedule diverged: the model is not deterministic");
                choice
            }
            None => {
                self.path.push((0, options));
                0
            }
        };
        self.at += 1;
        choice
    }
}

/// SplitMix64: uniform choices from a seed.
struct Random(u64);

impl Chooser for Random {
    fn choose(&mut self, options: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        usize::try_from(z % options as u64).unwrap_or(0)
    }
}

const MAX_EVENTS: u32 = 5_000;

impl Run {
    fn new(world: &World) -> Self {
        let clock = Arc::new(std::sync::atomic::AtomicU64::new(START.as_unix_millis()));
        let initial = OAuthTokens::new(AccessToken::new("AT-0"), LIFETIME, START.saturating_sub(world.age))
            .with_refresh_token(RefreshToken::new("RT-0"), Some(7_775_999));
        let new_store = || {
            let store = Arc::new(InMemoryTokenStorage::with_clock(Arc::new(ModelClock(clock.clone()))));
            BlockingCoordinatedTokenStorage::store(
                store.as_ref(),
                &TokenKey::Integration,
                &initial,
                Expect::Any,
            )
            .expect("the initial record");
            store
        };
        let shared = new_store();
        let stores = (0..world.processes.len())
            .map(|p| if world.split && p == 1 { new_store() } else { shared.clone() })
            .collect();
        let engines = world
            .processes
            .iter()
            .map(|_| {
                let mut config = ByovaConfig::with_base_url("https://webex.test/v1").expect("a base URL");
                if !world.budget {
                    config.token_budget = None;
                }
                IntegrationEngine::new(IntegrationCredentials::new("Cint", "int-secret"), config)
                    .token_engine()
                    .clone()
            })
            .collect();
        let mut webex = Webex { live: "RT-0".into(), ..Webex::default() };
        webex.issued_at.insert(0, START.saturating_sub(world.age));
        let mut tasks = Vec::new();
        for (process, callers) in world.processes.iter().enumerate() {
            for script in callers {
                tasks.push(Task {
                    process,
                    work: None,
                    script: script.iter().copied().collect(),
                    caller: true,
                    seen: 0,
                    invalidated: Vec::new(),
                    cancelled: false,
                    invalidating: None,
                });
            }
        }
        let mut run = Run {
            world: world.clone(),
            stores,
            clock,
            faults_left: world.faults,
            stalls_left: world.stalls,
            disturbed: false,
            stalled: false,
            expected_calls: u32::from(world.age.as_secs() >= LIFETIME * 9 / 10),
            engines,
            webex,
            now: START,
            tasks,
            events: 0,
            cancels_left: world.cancels,
            violations: Vec::new(),
            log: None,
        };
        for id in 0..run.tasks.len() {
            run.next_op(id);
        }
        run
    }

    /// Starts the caller's next operation, if any.
    fn next_op(&mut self, id: usize) {
        let task = &mut self.tasks[id];
        let engine = self.engines[task.process].clone();
        task.work = match task.script.pop_front() {
            Some(Op::Get) => {
                Some(Work::Get(Slot::Step(engine.access_token(TokenKey::Integration, self.now))))
            }
            Some(Op::InvalidateSeen) => {
                let serial = task.seen;
                // Invalidating the newest token costs a refresh; an older one, none.
                self.expected_calls += u32::from(serial == self.webex.serial);
                task.invalidating = Some(serial);
                let token = AccessToken::new(format!("AT-{serial}"));
                Some(Work::Unit(Slot::Step(
                    engine.invalidate(TokenKey::Integration, token, self.now).map(self.now, drop),
                )))
            }
            None => None,
        };
    }

    fn runnable(&self, id: usize) -> bool {
        fn ready<T>(slot: &Slot<T>, run: &Run) -> bool {
            match slot {
                Slot::Step(_) => true,
                Slot::Sleep(until, _) => run.now >= *until,
                Slot::Wait(flight, _) => flight_outcome(flight).is_some(),
            }
        }
        match &self.tasks[id].work {
            None => false,
            Some(Work::Get(slot)) => ready(slot, self),
            Some(Work::Unit(slot)) => ready(slot, self),
        }
    }

    fn earliest_wake(&self) -> Option<Timestamp> {
        fn wake<T>(slot: &Slot<T>) -> Option<Timestamp> {
            match slot {
                Slot::Sleep(until, _) => Some(*until),
                _ => None,
            }
        }
        self.tasks
            .iter()
            .filter_map(|t| match &t.work {
                Some(Work::Get(slot)) => wake(slot),
                Some(Work::Unit(slot)) => wake(slot),
                None => None,
            })
            .min()
    }

    /// One event of one plan: performs the step's I/O against the model and resumes it.
    fn event<T: Send + 'static>(
        &mut self,
        id: usize,
        slot: Slot<T>,
    ) -> std::result::Result<Slot<T>, Result<T>> {
        let process = self.tasks[id].process;
        let now = self.now;
        let store = self.stores[process].clone();
        let storage = store.as_ref();
        let step = match slot {
            Slot::Step(step) => step,
            Slot::Sleep(_, then) => then.resume((), now),
            Slot::Wait(flight, then) => then.resume(flight_outcome(&flight).expect("a finished flight"), now),
        };
        let next = match step {
            Step::Storage(call) => call.perform_blocking(storage, || now),
            Step::Send(request, then) => {
                let response = self.webex.answer(&request, now);
                then.resume(Sent::new(Ok(response), now), now)
            }
            Step::Sleep(d, then) => return Ok(Slot::Sleep(now.saturating_add(d), then)),
            Step::Wait(flight, then) => return Ok(Slot::Wait(flight, then)),
            Step::Detach(plan, then) => {
                self.tasks.push(Task {
                    process,
                    work: Some(Work::Unit(Slot::Step(*plan))),
                    script: std::collections::VecDeque::new(),
                    caller: false,
                    seen: 0,
                    invalidated: Vec::new(),
                    cancelled: false,
                    invalidating: None,
                });
                // As the async flavour: spawned, and the caller goes on at once (the blocking
                // flavour runs it inline first, a subset of these schedules).
                then.resume((), now)
            }
            Step::Done(result) => return Err(result),
            other => {
                self.violations.push(format!("a token plan asked for {other:?}"));
                return Err(Err(Error::Internal("unexpected step".into())));
            }
        };
        match next {
            Step::Done(result) => Err(result),
            step => Ok(Slot::Step(step)),
        }
    }

    /// Performs `id`'s next step as a failure: a token call that never reached Webex, or a
    /// storage call the store could not serve.
    fn fail_task(&mut self, id: usize) {
        fn fail<T: Send + 'static>(slot: Slot<T>, now: Timestamp) -> Slot<T> {
            let down = || crate::error::StorageError::unavailable("model: the store is unreachable");
            let next = match slot {
                Slot::Step(Step::Send(_, then)) => then.resume(
                    Sent::new(
                        Err(Error::Transport {
                            message: "model: connection refused".into(),
                            maybe_sent: false,
                        }),
                        now,
                    ),
                    now,
                ),
                Slot::Step(Step::Storage(StorageCall::Load(_, then))) => then.resume(Err(down()), now),
                Slot::Step(Step::Storage(StorageCall::Store(_, _, _, then))) => then.resume(Err(down()), now),
                Slot::Step(Step::Storage(StorageCall::AcquireLease(_, _, then))) => {
                    then.resume(Err(down()), now)
                }
                Slot::Step(Step::Storage(StorageCall::ExtendLease(_, _, then))) => {
                    then.resume(Err(down()), now)
                }
                Slot::Step(Step::Storage(StorageCall::LoadState(_, then))) => then.resume(Err(down()), now),
                Slot::Step(Step::Storage(StorageCall::StoreState(_, _, _, then))) => {
                    then.resume(Err(down()), now)
                }
                other => return other,
            };
            Slot::Step(next)
        }
        self.events += 1;
        self.note(|run| format!("FAIL {}", run.describe(id)));
        self.faults_left -= 1;
        self.disturbed = true;
        let now = self.now;
        let work = self.tasks[id].work.take();
        self.tasks[id].work = match work {
            Some(Work::Get(slot)) => Some(Work::Get(fail(slot, now))),
            Some(Work::Unit(slot)) => Some(Work::Unit(fail(slot, now))),
            None => None,
        };
        // A step that finished at once is handed on by the next event.
    }

    /// Whether `id`'s next step is a call that can fail.
    fn can_fail(&self, id: usize) -> bool {
        fn io<T>(slot: &Slot<T>) -> bool {
            matches!(
                slot,
                Slot::Step(
                    Step::Send(..)
                        | Step::Storage(StorageCall::Load(..))
                        | Step::Storage(StorageCall::Store(..))
                        | Step::Storage(StorageCall::AcquireLease(..))
                        | Step::Storage(StorageCall::ExtendLease(..))
                        | Step::Storage(StorageCall::LoadState(..))
                        | Step::Storage(StorageCall::StoreState(..))
                )
            )
        }
        match &self.tasks[id].work {
            Some(Work::Get(slot)) => io(slot),
            Some(Work::Unit(slot)) => io(slot),
            None => false,
        }
    }

    fn set_now(&mut self, now: Timestamp) {
        self.now = now;
        self.clock.store(now.as_unix_millis(), std::sync::atomic::Ordering::SeqCst);
    }

    fn describe(&self, id: usize) -> String {
        fn what<T>(slot: &Slot<T>) -> String {
            match slot {
                Slot::Step(step) => format!("{step:?}"),
                Slot::Sleep(until, _) => format!("wakes (slept until {})", until.as_unix_millis()),
                Slot::Wait(..) => "its flight ended".into(),
            }
        }
        let task = &self.tasks[id];
        let kind = if task.caller { "caller" } else { "detached" };
        let step = match &task.work {
            Some(Work::Get(slot)) => what(slot),
            Some(Work::Unit(slot)) => what(slot),
            None => "nothing".into(),
        };
        format!(
            "+{}ms p{} {kind} {id}: {step}",
            self.now.as_unix_millis() - START.as_unix_millis(),
            task.process
        )
    }

    fn note(&mut self, line: impl FnOnce(&Self) -> String) {
        if self.log.is_some() {
            let line = line(self);
            if let Some(log) = &mut self.log {
                log.push(line);
            }
        }
    }

    fn step_task(&mut self, id: usize) {
        self.events += 1;
        self.note(|run| run.describe(id));
        match self.tasks[id].work.take() {
            None => {}
            Some(Work::Get(slot)) => match self.event(id, slot) {
                Ok(slot) => self.tasks[id].work = Some(Work::Get(slot)),
                Err(result) => {
                    self.handed(id, result);
                    self.next_op(id);
                }
            },
            Some(Work::Unit(slot)) => match self.event(id, slot) {
                Ok(slot) => self.tasks[id].work = Some(Work::Unit(slot)),
                Err(result) => {
                    let task = &mut self.tasks[id];
                    if let Some(serial) = task.invalidating.take() {
                        if let Err(e) = result {
                            self.violations.push(format!("invalidating AT-{serial} failed: {e}"));
                        }
                        self.tasks[id].invalidated.push(serial);
                    }
                    if self.tasks[id].caller {
                        self.next_op(id);
                    }
                }
            },
        }
    }

    /// Checks what a caller was handed.
    fn handed(&mut self, id: usize, result: Result<AccessToken>) {
        let now = self.now;
        let token = match result {
            Ok(token) => token,
            Err(e) if self.disturbed && e.is_retryable() => return,
            // A holder stalled past its lease after Webex answered it: another process spends
            // the same refresh token, and under strict rotation Webex refuses it. The lease is
            // for efficiency, the version check for correctness: that caller may hear
            // `invalid_grant`, but the stalled holder's tokens still win the record (checked
            // after the recovery round).
            Err(Error::ReauthorizationRequired { .. }) if self.stalled => return,
            Err(e) => {
                self.violations.push(format!("caller {id} got an error: {e}"));
                return;
            }
        };
        let n = serial(&token);
        let task = &mut self.tasks[id];
        if n < task.seen {
            self.violations.push(format!("caller {id} was handed AT-{n} after AT-{}", task.seen));
        }
        if task.invalidated.contains(&n) {
            self.violations.push(format!("caller {id} was handed AT-{n}, which it had invalidated"));
        }
        task.seen = task.seen.max(n);
        let issued = self.webex.issued_at.get(&n).copied().unwrap_or(Timestamp::EPOCH);
        if issued.saturating_add(Duration::from_secs(LIFETIME)) <= now {
            self.violations.push(format!("caller {id} was handed AT-{n}, expired"));
        }
    }

    /// Runs one schedule to its end.
    fn run(&mut self, chooser: &mut dyn Chooser, preemption_bound: Option<u32>) {
        let mut last: Option<usize> = None;
        let mut preemptions = 0;
        loop {
            let runnable: Vec<usize> = (0..self.tasks.len()).filter(|&id| self.runnable(id)).collect();
            if runnable.is_empty() {
                match self.earliest_wake() {
                    Some(wake) => {
                        self.set_now(self.now.max(wake));
                        continue;
                    }
                    None if self.tasks.iter().any(|t| t.work.is_some()) => {
                        self.violations.push("deadlock: tasks left, none can run".into());
                        return;
                    }
                    None => return,
                }
            }
            if self.events >= MAX_EVENTS {
                self.violations.push(format!("no end after {MAX_EVENTS} events"));
                return;
            }
            let cancellable: Vec<usize> = if self.cancels_left > 0 {
                // A caller is dropped only where a driver awaits: never between a plan handing
                // out a `Detach` and the driver spawning it (no await lies between them).
                (0..self.tasks.len())
                    .filter(|&id| {
                        let task = &self.tasks[id];
                        task.caller
                            && !task.cancelled
                            && match &task.work {
                                None => false,
                                Some(Work::Get(slot)) => !matches!(slot, Slot::Step(Step::Detach(..))),
                                Some(Work::Unit(slot)) => !matches!(slot, Slot::Step(Step::Detach(..))),
                            }
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let last_runnable = last.filter(|l| runnable.contains(l));
            let failable: Vec<usize> = if self.faults_left > 0 {
                runnable.iter().copied().filter(|&id| self.can_fail(id)).collect()
            } else {
                Vec::new()
            };
            let options: Vec<Choice> = match (last_runnable, preemption_bound) {
                (Some(l), Some(bound)) if preemptions >= bound => vec![Choice::Run(l)],
                _ => runnable
                    .iter()
                    .map(|&id| Choice::Run(id))
                    .chain(cancellable.iter().map(|&id| Choice::Cancel(id)))
                    .chain(failable.iter().map(|&id| Choice::Fail(id)))
                    .chain((self.stalls_left > 0).then_some(Choice::Stall))
                    .collect(),
            };
            let choice = if options.len() == 1 { options[0] } else { options[chooser.choose(options.len())] };
            match choice {
                Choice::Run(id) => {
                    if last_runnable.is_some_and(|l| l != id) {
                        preemptions += 1;
                    }
                    last = Some(id);
                    self.step_task(id);
                }
                Choice::Fail(id) => {
                    last = Some(id);
                    self.fail_task(id);
                }
                Choice::Stall => {
                    self.note(|_| format!("STALL {} s", STALL.as_secs()));
                    self.stalls_left -= 1;
                    self.stalled = true;
                    self.disturbed = true;
                    self.set_now(self.now.saturating_add(STALL));
                }
                Choice::Cancel(id) => {
                    self.note(|run| format!("DROP {}", run.describe(id)));
                    // The caller's future is dropped: its plan (and any wait) goes, mid-step.
                    self.cancels_left -= 1;
                    let task = &mut self.tasks[id];
                    task.cancelled = true;
                    task.script.clear();
                    task.work = None;
                    task.invalidating = None;
                }
            }
        }
    }

    /// What must hold once every task is gone.
    fn check_end(&mut self) {
        if self.webex.reused > 0 && !self.stalled {
            self.violations.push(format!("{} refresh token(s) spent twice", self.webex.reused));
        }
        if !self.stalled && self.webex.calls > self.expected_calls.max(1) {
            self.violations
                .push(format!("{} token calls for {} expiries", self.webex.calls, self.expected_calls));
        }
        for (p, engine) in self.engines.iter().enumerate() {
            if engine.flights_in_progress() > 0 {
                self.violations.push(format!("process {p} left a flight"));
            }
        }
        let storage = self.stores[0].clone();
        match BlockingCoordinatedTokenStorage::try_acquire_lease(
            storage.as_ref(),
            &TokenKey::Integration,
            Duration::from_secs(60),
        ) {
            Ok(Some(_)) => {}
            other => self.violations.push(format!("a lease was left held: {other:?}")),
        }
        let stored = BlockingCoordinatedTokenStorage::load(storage.as_ref(), &TokenKey::Integration);
        match stored {
            Ok(Some(record)) => {
                let refresh = record.value.refresh_token.as_ref().map(|r| r.expose_secret().to_owned());
                if refresh.as_deref() != Some(self.webex.live.as_str()) {
                    self.violations.push(format!(
                        "the store holds {refresh:?}, Webex's live one is {}",
                        self.webex.live
                    ));
                }
                if serial(&record.value.access_token) != self.webex.serial {
                    self.violations.push("the store does not hold the newest access token".into());
                }
            }
            other => self.violations.push(format!("the record is gone: {other:?}")),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Choice {
    Run(usize),
    Cancel(usize),
    Fail(usize),
    Stall,
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

impl Run {
    /// One schedule to its end, then the recovery round (every process asks once more, with
    /// no fault), then the final checks.
    fn complete(&mut self, chooser: &mut dyn Chooser, preemption_bound: Option<u32>) {
        self.run(chooser, preemption_bound);
        if !self.violations.is_empty() {
            self.check_end();
            return;
        }
        self.cancels_left = 0;
        self.faults_left = 0;
        self.stalls_left = 0;
        for process in 0..self.world.processes.len() {
            let id = self.tasks.len();
            self.tasks.push(Task {
                process,
                work: None,
                script: [Op::Get].into_iter().collect(),
                caller: true,
                seen: 0,
                invalidated: Vec::new(),
                cancelled: false,
                invalidating: None,
            });
            self.next_op(id);
            // Errors are no longer excused: whatever a fault left, this call must overcome.
            self.disturbed = false;
            self.run(&mut First, None);
        }
        self.check_end();
    }
}

/// Always the first option: the recovery round's one order.
struct First;

impl Chooser for First {
    fn choose(&mut self, _options: usize) -> usize {
        0
    }
}

/// Explores `world` depth first under the preemption bound. Returns the schedules run, or
/// the first that breaks a rule, with what it broke.
fn exhaustive(world: &World, bound: u32) -> std::result::Result<u64, String> {
    let mut path: Vec<(usize, usize)> = Vec::new();
    let mut schedules = 0u64;
    loop {
        let mut chooser = Replay { path, at: 0 };
        let mut run = Run::new(world);
        run.complete(&mut chooser, Some(bound));
        schedules += 1;
        if !run.violations.is_empty() {
            let choices: Vec<usize> = chooser.path.iter().map(|(c, _)| *c).collect();
            let mut again = Run::new(world);
            again.log = Some(Vec::new());
            again.complete(&mut Replay { path: chooser.path, at: 0 }, Some(bound));
            return Err(format!(
                "{}: schedule {choices:?} breaks: {:#?}\nevents:\n{}",
                world.name,
                run.violations,
                again.log.unwrap_or_default().join("\n")
            ));
        }
        path = chooser.path;
        while let Some((choice, options)) = path.pop() {
            if choice + 1 < options {
                path.push((choice + 1, options));
                break;
            }
        }
        if path.is_empty() {
            return Ok(schedules);
        }
    }
}

/// Runs `count` random schedules of `world`.
fn random(world: &World, count: u64) -> std::result::Result<u64, String> {
    for seed in 0..count {
        let mut run = Run::new(world);
        run.complete(&mut Random(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xB0BA), None);
        if !run.violations.is_empty() {
            return Err(format!("{}: random schedule {seed} breaks: {:#?}", world.name, run.violations));
        }
    }
    Ok(count)
}

fn gets(n: usize) -> Vec<Op> {
    vec![Op::Get; n]
}

const EXPIRED: Duration = Duration::from_secs(10_000);
/// Past the refresh-ahead point (90 % of the life gone), not expired.
const AHEAD: Duration = Duration::from_secs(3300);

fn worlds() -> Vec<World> {
    vec![
        World {
            bound: 2,
            ..World::new(
                "one process, three callers, expired",
                vec![vec![gets(2), gets(2), gets(1)]],
                EXPIRED,
            )
        },
        World::new(
            "two processes, three callers, expired",
            vec![vec![gets(2), gets(1)], vec![gets(2)]],
            EXPIRED,
        ),
        World {
            budget: false,
            ..World::new(
                "two processes, refresh-ahead, no budget",
                vec![vec![gets(2), gets(1)], vec![gets(2)]],
                AHEAD,
            )
        },
        World {
            cancels: 1,
            ..World::new(
                "two processes, expired, a caller dropped",
                vec![vec![gets(2), gets(1)], vec![gets(2)]],
                EXPIRED,
            )
        },
        World::new(
            "invalidation racing a refresh-ahead, two processes",
            vec![vec![vec![Op::Get, Op::InvalidateSeen, Op::Get]], vec![gets(2)]],
            AHEAD,
        ),
        World {
            faults: 1,
            ..World::new(
                "two processes, expired, one failed call",
                vec![vec![gets(1)], vec![gets(1)]],
                EXPIRED,
            )
        },
        World {
            stalls: 1,
            ..World::new(
                "two processes, expired, a stall past the lease",
                vec![vec![gets(1)], vec![gets(1)]],
                EXPIRED,
            )
        },
    ]
}

#[test]
fn coordination_holds_under_every_explored_schedule() {
    let bound = std::env::var("BYOVA_MODEL_PREEMPTIONS").ok().and_then(|v| v.parse::<u32>().ok());
    let count = env_number("BYOVA_MODEL_SCHEDULES", 2_000);
    let mut total = 0;
    for world in worlds() {
        let started = std::time::Instant::now();
        let bound = bound.unwrap_or(world.bound);
        let dfs = exhaustive(&world, bound).unwrap_or_else(|broken| panic!("{broken}"));
        let rnd = random(&world, count).unwrap_or_else(|broken| panic!("{broken}"));
        total += dfs + rnd;
        println!(
            "model: {:<52} {dfs:>7} schedules (all, ≤{bound} preemptions) + {rnd} random, {:.1?}",
            world.name,
            started.elapsed()
        );
        assert!(dfs > 10, "{}: the search found too few schedules ({dfs}) to mean anything", world.name);
    }
    println!("model: {total} schedules, no violation");
}

#[test]
fn the_checker_finds_what_breaks_coordination() {
    // Two processes on separate stores cannot coordinate: the exhaustive search must find a
    // schedule where the second spends the refresh token the first already spent.
    let world = World {
        budget: false,
        split: true,
        ..World::new("control", vec![vec![gets(1)], vec![gets(1)]], EXPIRED)
    };
    let broken = exhaustive(&world, 1).expect_err("the search missed a double spend");
    assert!(broken.contains("spent twice"), "{broken}");
}
