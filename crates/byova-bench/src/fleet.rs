//! `fleet`: a fleet of `--orgs` orgs (100,000), none due.
//!
//! - In memory: the time to read every org's status and build the refresh schedule, and what
//!   the schedule costs in resident memory.
//! - On a shared store (`--storage redis://…`, `postgres://…`): `byova serve` (the binary next
//!   to this one) against that store and the testkit's fake Webex; the time its first resync
//!   took (from its log), its resident memory after it and at the end, and the CPU it used
//!   over `--seconds` (60) of idling.
//!
//! Then, in both cases, a cohort simulation on a virtual clock (no real waiting): 1,000 orgs
//! registered in the same second with 30-minute tokens, the daemon's schedule and budget
//! (240 a minute) against a Webex that allows 300 token calls a minute, callers asking for
//! every org's token once a minute, over two lifetimes; prints the 429s received, the tokens
//! served after their real expiry, and the refresh calls per renewal.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use byova_core::Clock as _;
use byova_core::backend::BlockingCoordinatedTokenStorage;
use byova_core::engine::{FlightWait, Held, Sent, ServiceAppEngine, Step, Then};
use byova_core::{
    AccessToken, BlockingTokenStorage, ByovaConfig, InMemoryTokenStorage, OAuthTokens, OrgId, RefreshToken,
    Result as CoreResult, ServiceAppCredentials, SystemClock, Timestamp, TokenKey,
    engine::{HttpRequest, HttpResponse, RefreshSchedule},
    webhook::WebhookVerification,
};
use serde_json::{Value, json};

use crate::Args;
use crate::storage;

fn org(i: usize) -> OrgId {
    OrgId::new(&format!("00000000-0000-4000-8000-{i:012}")).expect("a UUID is an org id")
}

/// Tokens good for two weeks from `now`: nothing comes due while the bench runs.
fn long_lived(i: usize, now: Timestamp) -> OAuthTokens {
    OAuthTokens::new(AccessToken::new(format!("fleet-access-{i:08}-{}", "a".repeat(60))), 1_209_599, now)
        .with_refresh_token(
            RefreshToken::new(format!("fleet-refresh-{i:08}-{}", "r".repeat(60))),
            Some(7_775_999),
        )
}

pub(crate) fn run(args: &Args) -> Result<String, String> {
    let fleet = if args.storage == "memory:" { in_memory(args)? } else { daemon(args)? };
    let wide = cohort(1_000, 1_800, 300, None, true)?;
    // A tight cohort: a budget of 25 a minute under a Webex limit of 30; the control runs the
    // schedule without planning against the budget (each key at its own point).
    let tight = cohort(40, 240, 30, Some(25), true)?;
    let control = cohort(40, 240, 30, Some(25), false)?;
    Ok(format!("{fleet}\n{wide}\n{tight}\n{control}"))
}

/// This process's resident memory, in MB (Linux).
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 =
        status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}

/// CPU seconds (user + system) a process has used (Linux; clock ticks of 10 ms).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn in_memory(args: &Args) -> Result<Value, String> {
    let now = SystemClock.now();
    let storage = InMemoryTokenStorage::new();
    for i in 0..args.orgs {
        storage.set_service_app_tokens(&org(i), &long_lived(i, now)).map_err(|e| e.to_string())?;
    }
    let engine = ServiceAppEngine::new(
        ServiceAppCredentials::new("Cfleet", "fleet-secret"),
        ByovaConfig::default(),
        WebhookVerification::default(),
    );
    let before = rss_mb(std::process::id());
    let started = Instant::now();
    let mut schedule = RefreshSchedule::default();
    // As the daemon's resync reads them: listed, then in batches of 200.
    let keys: Vec<TokenKey> =
        storage.list_registered_orgs().map_err(|e| e.to_string())?.into_iter().map(TokenKey::Org).collect();
    for batch in keys.chunks(200) {
        for (key, record) in batch.iter().zip(storage.load_many(batch).map_err(|e| e.to_string())?) {
            if let Some(record) = record {
                let status = engine.token_engine().cache().status(key, &record.value, now);
                schedule.apply(key.clone(), Some(&status), now);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = rss_mb(std::process::id());
    Ok(json!({
        "scenario": "fleet",
        "storage": "memory:",
        "orgs": args.orgs,
        "scheduled": schedule.len(),
        "schedule_load_seconds": (seconds * 1000.0).round() / 1000.0,
        "schedule_rss_mb": before.zip(after).map(|(b, a)| ((a - b) * 10.0).round() / 10.0),
    }))
}

/// Seeds the store, runs `byova serve` on it and watches it idle.
fn daemon(args: &Args) -> Result<Value, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let byova = exe.with_file_name("byova");
    if !byova.exists() {
        return Err(format!(
            "{} is missing: build it with `cargo build --release -p byova-cli`",
            byova.display()
        ));
    }
    // A store of our own inside the one named: a Redis prefix or a SQL table for this run.
    let sep = if args.storage.contains('?') { '&' } else { '?' };
    let run_id = format!("fleet{}", std::process::id());
    let url = if args.storage.starts_with("redis") {
        format!("{}{sep}prefix={run_id}", args.storage)
    } else if ["postgres", "mysql", "mariadb"].iter().any(|p| args.storage.starts_with(p)) {
        format!("{}{sep}table={run_id}", args.storage)
    } else {
        args.storage.clone()
    };
    let stores = storage::open(&url)?;
    let now = SystemClock.now();
    let seed_started = Instant::now();
    let writers = 16;
    std::thread::scope(|scope| {
        for t in 0..writers {
            let stores = &stores;
            scope.spawn(move || {
                for i in (t..args.orgs).step_by(writers) {
                    stores.blocking.set_service_app_tokens(&org(i), &long_lived(i, now)).expect("seed");
                }
            });
        }
    });
    let seed_seconds = seed_started.elapsed().as_secs_f64();
    eprintln!("fleet: {} orgs stored in {seed_seconds:.1} s; starting byova serve", args.orgs);
    let fake = byova_testkit::FakeWebex::start();
    let (int, sa) = (fake.integration_credentials(), fake.service_app_credentials());
    stores.blocking.set_integration_tokens(&long_lived(usize::MAX >> 1, now)).map_err(|e| e.to_string())?;
    let mut child = Command::new(&byova)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--resync-interval",
            "600",
        ])
        .env("BYOVA_STORAGE", &url)
        .env("BYOVA_BASE_URL", fake.base_url())
        .env("BYOVA_WEBHOOK_SECRET", "fleet-secret")
        .env("BYOVA_LOG", "info")
        .env("WEBEX_INTEGRATION_CLIENT_ID", &int.client_id)
        .env("WEBEX_INTEGRATION_CLIENT_SECRET", int.client_secret.expose_secret())
        .env("WEBEX_SA_CLIENT_ID", &sa.client_id)
        .env("WEBEX_SA_CLIENT_SECRET", sa.client_secret.expose_secret())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", byova.display()))?;
    let pid = child.id();
    let (resynced_tx, resynced_rx) = mpsc::channel();
    let stderr = child.stderr.take().ok_or("no stderr")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(std::io::Result::ok) {
            if line.contains("refresh schedule resynced") {
                let _ = resynced_tx.send(line);
            }
        }
    });
    let started = Instant::now();
    let line = resynced_rx
        .recv_timeout(Duration::from_secs(600))
        .map_err(|_| "serve never finished its first resync")?;
    let first_resync_wall = started.elapsed().as_secs_f64();
    let took = line.split("took=").nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_owned);
    let rss_after_resync = rss_mb(pid);
    let cpu_at_start = cpu_seconds(pid);
    let mut rss_max = rss_after_resync.unwrap_or(0.0);
    let idle = Duration::from_secs(args.seconds);
    let idle_started = Instant::now();
    while idle_started.elapsed() < idle {
        std::thread::sleep(Duration::from_secs(1));
        rss_max = rss_max.max(rss_mb(pid).unwrap_or(0.0));
    }
    let cpu_idle = cpu_seconds(pid).zip(cpu_at_start).map(|(end, start)| end - start);
    let rss_end = rss_mb(pid);
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = child.wait();
    eprintln!("fleet: removing the {} orgs", args.orgs);
    std::thread::scope(|scope| {
        for t in 0..writers {
            let stores = &stores;
            scope.spawn(move || {
                for i in (t..args.orgs).step_by(writers) {
                    let _ = stores.blocking.delete_service_app_tokens(&org(i));
                }
            });
        }
    });
    if let Some(rt) = &stores.runtime
        && !url.starts_with("sqlite:")
    {
        // The run's own table goes too.
        let dropped = rt
            .block_on(async { byova_storage_sql::SqlTokenStorage::connect(&url).await?.drop_table().await });
        if let Err(e) = dropped {
            eprintln!("fleet: could not drop the run's table: {e}");
        }
    }
    Ok(json!({
        "scenario": "fleet",
        "storage": args.storage.split('?').next().unwrap_or_default(),
        "orgs": args.orgs,
        "seed_seconds": (seed_seconds * 10.0).round() / 10.0,
        "first_resync_took": took,
        "first_resync_wall_seconds": (first_resync_wall * 100.0).round() / 100.0,
        "cpu_seconds_to_first_resync": cpu_at_start,
        "resync_cpu_percent_of_a_core_amortized": cpu_at_start.map(|c| (c / 600.0 * 1000.0).round() / 10.0),
        "rss_mb_after_resync": rss_after_resync,
        "rss_mb_max": rss_max,
        "rss_mb_end": rss_end,
        "idle_seconds": args.seconds,
        "idle_cpu_seconds": cpu_idle.map(|c| (c * 100.0).round() / 100.0),
        "idle_cpu_percent_of_a_core": cpu_idle.map(|c| (c / args.seconds.max(1) as f64 * 1000.0).round() / 10.0),
        "token_calls": fake.calls(byova_testkit::Endpoint::AccessToken),
    }))
}

// ---- the cohort simulation ----

/// Webex as the simulation sees it: a token endpoint with a sliding-window rate limit.
struct Webex {
    limit: usize,
    window_ms: u64,
    admitted: VecDeque<u64>,
    calls: u64,
    rate_limited: u64,
    /// Access token -> when it really expires.
    expiry: HashMap<String, Timestamp>,
    /// Org -> when its last refresh was answered.
    last_refresh: HashMap<String, Timestamp>,
    premature: u64,
    lifetime_s: u64,
    issued: u64,
    /// When every admitted call came (ms).
    history: Vec<u64>,
}

impl Webex {
    fn answer(&mut self, request: &HttpRequest, now: Timestamp) -> HttpResponse {
        self.calls += 1;
        let now_ms = now.as_unix_millis();
        while self.admitted.front().is_some_and(|t| *t + self.window_ms <= now_ms) {
            self.admitted.pop_front();
        }
        if self.admitted.len() >= self.limit {
            self.rate_limited += 1;
            let frees =
                self.admitted.front().map_or(1, |t| (t + self.window_ms - now_ms).div_ceil(1000).max(1));
            return HttpResponse::new(429, vec![("Retry-After".into(), frees.to_string())], Vec::new());
        }
        self.admitted.push_back(now_ms);
        self.history.push(now_ms);
        let body = String::from_utf8_lossy(&request.body);
        let refresh = body
            .split('&')
            .find_map(|pair| pair.strip_prefix("refresh_token="))
            .unwrap_or_default()
            .to_owned();
        let org = refresh.trim_start_matches("R-").to_owned();
        if let Some(last) = self.last_refresh.insert(org.clone(), now)
            && now.saturating_duration_since(last) < Duration::from_secs(self.lifetime_s / 2)
        {
            self.premature += 1;
        }
        self.issued += 1;
        let access = format!("A-{org}-{}", self.issued);
        self.expiry.insert(access.clone(), now.saturating_add(Duration::from_secs(self.lifetime_s)));
        let body = json!({
            "access_token": access, "expires_in": self.lifetime_s, "token_type": "Bearer",
            "refresh_token": refresh, "refresh_token_expires_in": 7_775_999,
        });
        HttpResponse::new(
            200,
            vec![("Content-Type".into(), "application/json".into())],
            body.to_string().into_bytes(),
        )
    }
}

/// Everything the simulated process holds.
struct Sim {
    now: Timestamp,
    storage: InMemoryTokenStorage,
    webex: Webex,
    engine: Arc<ServiceAppEngine>,
    schedule: RefreshSchedule,
    daemon_running: usize,
    served: u64,
    served_expired: u64,
}

/// How a simulated task stands.
enum State {
    Done,
    Sleeping(Timestamp),
    Waiting,
}

trait Task {
    fn advance(&mut self, sim: &mut Sim, spawned: &mut Vec<Box<dyn Task>>) -> State;
}

type Finish<T> = Box<dyn FnOnce(CoreResult<T>, &mut Sim)>;
/// A plan waiting for a flight, and what accepts the flight's outcome.
type Waiting<T> = (Pin<Box<FlightWait>>, Then<T, CoreResult<Held>>);

/// One plan, driven step by step on the virtual clock.
struct PlanTask<T> {
    step: Option<Step<T>>,
    sleeping: Option<(Timestamp, Then<T, ()>)>,
    waiting: Option<Waiting<T>>,
    finish: Option<Finish<T>>,
}

impl<T: Send + 'static> PlanTask<T> {
    fn boxed(step: Step<T>, finish: Option<Finish<T>>) -> Box<dyn Task> {
        Box::new(Self { step: Some(step), sleeping: None, waiting: None, finish })
    }
}

impl<T: Send + 'static> Task for PlanTask<T> {
    fn advance(&mut self, sim: &mut Sim, spawned: &mut Vec<Box<dyn Task>>) -> State {
        if let Some((at, then)) = self.sleeping.take() {
            if sim.now < at {
                self.sleeping = Some((at, then));
                return State::Sleeping(at);
            }
            self.step = Some(then.resume((), sim.now));
        }
        if let Some((mut wait, then)) = self.waiting.take() {
            match wait.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(held) => self.step = Some(then.resume(held, sim.now)),
                Poll::Pending => {
                    self.waiting = Some((wait, then));
                    return State::Waiting;
                }
            }
        }
        let now = sim.now;
        loop {
            let Some(step) = self.step.take() else { return State::Done };
            self.step = Some(match step {
                Step::Storage(call) => call.perform_blocking(&sim.storage, || now),
                Step::Send(request, then) => {
                    let response = sim.webex.answer(&request, now);
                    then.resume(Sent::new(Ok(response), now), now)
                }
                Step::Sleep(d, then) => {
                    let at = now.saturating_add(d.max(Duration::from_millis(1)));
                    self.sleeping = Some((at, then));
                    return State::Sleeping(at);
                }
                Step::IntegrationToken(then) => then.resume(Ok(AccessToken::new("INTEGRATION")), now),
                Step::Detach(plan, then) => {
                    spawned.push(PlanTask::boxed(*plan, None));
                    then.resume((), now)
                }
                Step::Wait(flight, then) => {
                    self.waiting = Some((Box::pin(flight.wait()), then));
                    return State::Waiting;
                }
                Step::Concurrently(_, _, then) => then.resume((), now),
                Step::Done(result) => {
                    if let Some(finish) = self.finish.take() {
                        finish(result, sim);
                    }
                    return State::Done;
                }
            });
        }
    }
}

/// A simulated cohort: `orgs` orgs registered together with `lifetime_s` tokens, against a
/// Webex that allows `limit_per_min` token calls a minute, over two lifetimes, with the
/// daemon's budget (`budget_per_min`, the default 240 when `None`), its schedule planned
/// against the budget (`planned`) or each key at its own point.
fn cohort(
    orgs: usize,
    lifetime_s: u64,
    limit_per_min: usize,
    budget_per_min: Option<u32>,
    planned: bool,
) -> Result<Value, String> {
    let wall = Instant::now();
    let t0 = Timestamp::from_unix_secs(1_800_000_000);
    let mut config = ByovaConfig::with_base_url("https://webex.test/v1").map_err(|e| e.to_string())?;
    if let Some(calls) = budget_per_min {
        config.token_budget = Some(byova_core::TokenBudget::per_minute(calls));
    }
    let budget = config.token_budget.clone();
    let spacing = budget.as_ref().filter(|_| planned).map_or(Duration::ZERO, RefreshSchedule::spacing_for);
    let engine = ServiceAppEngine::new(
        ServiceAppCredentials::new("Csim", "sim-secret"),
        config,
        WebhookVerification::default(),
    );
    let mut sim = Sim {
        now: t0,
        storage: InMemoryTokenStorage::new(),
        webex: Webex {
            limit: limit_per_min,
            window_ms: 60_000,
            admitted: VecDeque::new(),
            calls: 0,
            rate_limited: 0,
            expiry: HashMap::new(),
            last_refresh: HashMap::new(),
            premature: 0,
            lifetime_s,
            issued: 0,
            history: Vec::new(),
        },
        engine: engine.clone(),
        schedule: RefreshSchedule::with_spacing(spacing),
        daemon_running: 0,
        served: 0,
        served_expired: 0,
    };
    let mut expired_at_worst = 0usize;
    let names: Vec<OrgId> = (0..orgs).map(org).collect();
    for name in &names {
        let access = format!("A-{name}-0");
        sim.webex.expiry.insert(access.clone(), t0.saturating_add(Duration::from_secs(lifetime_s)));
        let tokens = OAuthTokens::new(AccessToken::new(access), lifetime_s, t0)
            .with_refresh_token(RefreshToken::new(format!("R-{name}")), Some(7_775_999));
        sim.storage.set_service_app_tokens(name, &tokens).map_err(|e| e.to_string())?;
        let key = TokenKey::org(name);
        let status = engine.token_engine().cache().status(&key, &tokens, t0);
        sim.schedule.apply(key, Some(&status), t0);
    }
    // Callers: every org's token is asked for once a minute, at a per-org offset.
    let mut callers: BinaryHeap<std::cmp::Reverse<(Timestamp, usize)>> = (0..orgs)
        .map(|i| {
            std::cmp::Reverse((t0.saturating_add(Duration::from_millis((i as u64 * 7_919) % 60_000)), i))
        })
        .collect();
    let end = t0.saturating_add(Duration::from_secs(lifetime_s * 2));
    let mut tasks: Vec<(Box<dyn Task>, State)> = Vec::new();
    while sim.now < end {
        // Start what is due now.
        while let Some(std::cmp::Reverse((at, i))) = callers.peek().copied()
            && at <= sim.now
        {
            callers.pop();
            callers.push(std::cmp::Reverse((at.saturating_add(Duration::from_secs(60)), i)));
            let plan = sim.engine.access_token(&names[i], sim.now);
            let finish: Finish<AccessToken> = Box::new(|token, sim: &mut Sim| {
                if let Ok(token) = token {
                    sim.served += 1;
                    if sim.webex.expiry.get(token.expose_secret()).is_none_or(|exp| *exp <= sim.now) {
                        sim.served_expired += 1;
                    }
                }
            });
            tasks.push((PlanTask::boxed(plan, Some(finish)), State::Waiting));
        }
        let free = 8usize.saturating_sub(sim.daemon_running);
        for due in sim.schedule.take_due(sim.now, free) {
            let (key, ahead) = (due.key, due.ahead);
            let TokenKey::Org(name) = key.clone() else { continue };
            sim.daemon_running += 1;
            // As `byova serve`'s refresher: a key planned ahead of its window is refreshed.
            let plan = match ahead {
                Some(_) => sim.engine.refresh_for_org(&name, sim.now).map(sim.now, |t| t.access_token),
                None => sim.engine.access_token(&name, sim.now),
            };
            let finish: Finish<AccessToken> = Box::new(move |token, sim: &mut Sim| {
                sim.daemon_running -= 1;
                let after = if token.is_ok() { Duration::from_secs(5) } else { Duration::from_secs(30) };
                let not_before = sim.now.saturating_add(after);
                match sim.storage.load(&key) {
                    Ok(Some(record)) => {
                        let status = sim.engine.token_engine().cache().status(&key, &record.value, sim.now);
                        let own =
                            status.refresh_at.map(|at| at.saturating_add(byova_core::engine::WAKE_SLACK));
                        match ahead {
                            Some(point) if own == Some(point) => sim.schedule.set(key, point),
                            _ => sim.schedule.apply(key, Some(&status), not_before),
                        }
                    }
                    _ => sim.schedule.set(key, not_before),
                }
            });
            tasks.push((PlanTask::boxed(plan, Some(finish)), State::Waiting));
        }
        // Run every task as far as it goes at this instant.
        for _round in 0..1_000 {
            let mut spawned = Vec::new();
            let mut changed = false;
            for (task, state) in &mut tasks {
                if matches!(state, State::Done) {
                    continue;
                }
                let runnable = match state {
                    State::Sleeping(at) => *at <= sim.now,
                    _ => true,
                };
                if runnable {
                    let next = task.advance(&mut sim, &mut spawned);
                    changed |= !matches!((&*state, &next), (State::Waiting, State::Waiting));
                    *state = next;
                }
            }
            changed |= !spawned.is_empty();
            tasks.extend(spawned.into_iter().map(|t| (t, State::Waiting)));
            if !changed {
                break;
            }
        }
        tasks.retain(|(_, s)| !matches!(s, State::Done));
        // How many orgs hold a token that has really expired in the store right now.
        let expired_now = names
            .iter()
            .filter(|name| {
                sim.storage.get_service_app_tokens(name).ok().flatten().is_none_or(|t| {
                    sim.webex.expiry.get(t.access_token.expose_secret()).is_none_or(|exp| *exp <= sim.now)
                })
            })
            .count();
        expired_at_worst = expired_at_worst.max(expired_now);
        // Move the clock to the next thing that happens.
        let next_sleeper = tasks
            .iter()
            .filter_map(|(_, s)| match s {
                State::Sleeping(at) => Some(*at),
                _ => None,
            })
            .min();
        let next_caller = callers.peek().map(|std::cmp::Reverse((at, _))| *at);
        let next_due = if sim.daemon_running < 8 { sim.schedule.next_due() } else { None };
        let next = [next_sleeper, next_caller, next_due].into_iter().flatten().min().unwrap_or(end);
        // At most a second at a time, so the store is looked at every simulated second.
        let next = next.min(sim.now.saturating_add(Duration::from_secs(1)));
        sim.now = if next > sim.now { next } else { sim.now.saturating_add(Duration::from_millis(1)) };
    }
    let renewals = sim.webex.calls - sim.webex.rate_limited - sim.webex.premature;
    Ok(json!({
        "scenario": "cohort",
        "planned_against_the_budget": planned,
        "orgs": orgs,
        "token_lifetime_seconds": lifetime_s,
        "webex_limit_per_minute": limit_per_min,
        "budget_per_minute": budget.map(|b| b.calls),
        "simulated_seconds": lifetime_s * 2,
        "token_calls": sim.webex.calls,
        "rate_limited_429": sim.webex.rate_limited,
        "premature_refreshes": sim.webex.premature,
        "calls_per_renewal": if renewals == 0 { f64::NAN } else { ((sim.webex.calls as f64 / renewals as f64) * 1000.0).round() / 1000.0 },
        "tokens_served": sim.served,
        "tokens_served_after_real_expiry": sim.served_expired,
        "orgs_expired_in_the_store_at_worst": expired_at_worst,
        "busiest_minute": busiest_minute(&sim.webex),
        "wall_seconds": (wall.elapsed().as_secs_f64() * 100.0).round() / 100.0,
    }))
}

/// The most admitted calls in any 60 s.
fn busiest_minute(webex: &Webex) -> usize {
    let times = &webex.history;
    let mut best = 0;
    let mut from = 0;
    for (i, t) in times.iter().enumerate() {
        while times[from] + 60_000 <= *t {
            from += 1;
        }
        best = best.max(i + 1 - from);
    }
    best
}

/// `cohort-daemon`: the real daemon on a tight budget. `--orgs` orgs (use 40) registered in the
/// same second with 240 s tokens, `byova serve` with `--max-token-calls-per-minute 25` against
/// a fake Webex that answers 429 beyond 30 token calls a minute, for `--seconds` (use 480: two
/// lifetimes); the store is looked at twice a second: how many orgs held a token that had
/// really expired, at worst.
pub(crate) fn cohort_daemon(args: &Args) -> Result<String, String> {
    const LIFETIME: u64 = 240;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let byova = exe.with_file_name("byova");
    if !byova.exists() {
        return Err(format!(
            "{} is missing: build it with `cargo build --release -p byova-cli`",
            byova.display()
        ));
    }
    let dir = std::env::temp_dir().join(format!("byova-cohort-{}", std::process::id()));
    let url = format!("file://{}", dir.display());
    let stores = storage::open(&url)?;
    let fake = byova_testkit::FakeWebex::start();
    fake.update_settings(|s| {
        s.service_app_expires_in = LIFETIME;
        s.token_rate_limit = Some((30, Duration::from_secs(60)));
    });
    let now = SystemClock.now();
    stores.blocking.set_integration_tokens(&long_lived(usize::MAX >> 1, now)).map_err(|e| e.to_string())?;
    let names: Vec<OrgId> = (0..args.orgs).map(org).collect();
    for name in &names {
        fake.authorize_org(name);
        let tokens = fake.issue_service_app_tokens(name).to_oauth_tokens(now);
        stores.blocking.set_service_app_tokens(name, &tokens).map_err(|e| e.to_string())?;
    }
    fake.reset_counters();
    let (int, sa) = (fake.integration_credentials(), fake.service_app_credentials());
    let mut child = Command::new(&byova)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--max-token-calls-per-minute", "25"])
        .env("BYOVA_STORAGE", &url)
        .env("BYOVA_BASE_URL", fake.base_url())
        .env("BYOVA_WEBHOOK_SECRET", "cohort-secret")
        .env("BYOVA_LOG", "warn")
        .env("HOME", &dir)
        .env("WEBEX_INTEGRATION_CLIENT_ID", &int.client_id)
        .env("WEBEX_INTEGRATION_CLIENT_SECRET", int.client_secret.expose_secret())
        .env("WEBEX_SA_CLIENT_ID", &sa.client_id)
        .env("WEBEX_SA_CLIENT_SECRET", sa.client_secret.expose_secret())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", byova.display()))?;
    let started = Instant::now();
    let mut worst = 0usize;
    let mut samples = 0u64;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        std::thread::sleep(Duration::from_millis(500));
        let expired = names
            .iter()
            .filter(|name| {
                stores.blocking.get_service_app_tokens(name).ok().flatten().is_none_or(|t| {
                    fake.access_token_status(t.access_token.expose_secret())
                        != byova_testkit::AccessTokenStatus::Valid
                })
            })
            .count();
        worst = worst.max(expired);
        samples += 1;
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    let calls: u64 = fake.token_calls_per_org().values().sum();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(json!({
        "scenario": "cohort-daemon",
        "orgs": args.orgs,
        "token_lifetime_seconds": LIFETIME,
        "budget_per_minute": 25,
        "webex_limit_per_minute": 30,
        "seconds": args.seconds,
        "store_samples": samples,
        "orgs_expired_in_the_store_at_worst": worst,
        "rate_limited_429": fake.rate_limited(),
        "token_calls": calls,
        "busiest_minute": fake.busiest_token_window(Duration::from_secs(60)),
    })
    .to_string())
}
