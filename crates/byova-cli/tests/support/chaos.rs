//! The multi-replica chaos run (item 11 of the brief): three `byova serve` replicas on one
//! store keep 20 orgs' 90 s tokens fresh under strict refresh-token rotation, while replicas
//! are SIGKILLed and restarted, one is frozen (SIGSTOP) past a refresh, and the store itself is
//! killed (`kill -9`) and restarted; a client asks `byova org token` for a random org's token
//! every 0.3 s and uses it at the fake. The store is a private server this run starts on its
//! own port (Redis with `appendfsync always`, or a PostgreSQL cluster with `fsync` on), so
//! killing it touches nothing else.
//!
//! Afterwards every org must still refresh (`org refresh-all --force` and a valid token each),
//! no token may have been served expired, and no spent refresh token may have been sent more
//! than once (each loss costs the one call that finds it dead; the mark then stops every
//! process). The Integration is authorized, so an org whose token died in flight is fetched
//! anew.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use byova_core::{Clock, SystemClock};
use byova_testkit::{AccessTokenStatus, FakeWebex};

/// Which store the run kills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoreKind {
    Redis,
    Postgres,
}

/// A private store server this run owns.
struct StoreServer {
    kind: StoreKind,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    /// For PostgreSQL run by root: the postgres user's ids.
    run_as: Option<(u32, u32)>,
    bin: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

fn is_up(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).is_ok()
}

fn wait_up(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if is_up(port) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn find_binary(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    dirs.iter().map(|d| Path::new(d).join(name)).find(|p| p.exists())
}

/// The uid and gid of `user`, from /etc/passwd.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.split(':').next() == Some(user))?;
    let mut fields = line.split(':').skip(2);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"))
}

impl StoreServer {
    /// Starts a private server of `kind` in `dir`, or says why it cannot.
    fn start(kind: StoreKind, dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let port = free_port();
        let mut server = match kind {
            StoreKind::Redis => {
                let bin = find_binary("redis-server", &["/usr/bin", "/usr/local/bin"])
                    .ok_or("redis-server is not installed")?;
                Self { kind, dir: dir.to_owned(), port, child: None, run_as: None, bin }
            }
            StoreKind::Postgres => {
                let bins = [
                    "/usr/lib/postgresql/17/bin",
                    "/usr/lib/postgresql/16/bin",
                    "/usr/lib/postgresql/15/bin",
                    "/usr/local/bin",
                    "/usr/bin",
                ];
                let initdb = find_binary("initdb", &bins).ok_or("initdb is not installed")?;
                let bin = initdb.with_file_name("postgres");
                let run_as = if is_root() {
                    Some(user_ids("postgres").ok_or("running as root, and there is no postgres user")?)
                } else {
                    None
                };
                let data = dir.join("pg");
                std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
                let mut init = Command::new(&initdb);
                init.args(["-D", &data.display().to_string(), "-A", "trust", "-U", "postgres"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                if let Some((uid, gid)) = run_as {
                    chown(dir, uid, gid)?;
                    chown(&data, uid, gid)?;
                    use std::os::unix::process::CommandExt;
                    init.uid(uid).gid(gid);
                }
                let status = init.status().map_err(|e| format!("initdb: {e}"))?;
                if !status.success() {
                    return Err(format!("initdb failed ({status})"));
                }
                Self { kind, dir: dir.to_owned(), port, child: None, run_as, bin }
            }
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(&self.bin);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .map_err(|e| e.to_string())?;
        match self.kind {
            StoreKind::Redis => {
                cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
                    .args(["--appendonly", "yes", "--appendfsync", "always"])
                    .args(["--dir", &self.dir.display().to_string()]);
            }
            StoreKind::Postgres => {
                let data = self.dir.join("pg");
                cmd.args(["-D", &data.display().to_string(), "-p", &self.port.to_string()])
                    .args(["-k", &data.display().to_string(), "-c", "listen_addresses=127.0.0.1"])
                    .args(["-c", "fsync=on", "-c", "max_connections=200"]);
                if let Some((uid, gid)) = self.run_as {
                    use std::os::unix::process::CommandExt;
                    cmd.uid(uid).gid(gid);
                }
            }
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        if !wait_up(self.port, Duration::from_secs(60)) {
            return Err(format!("the private {:?} did not come up (see {})", self.kind, self.dir.display()));
        }
        Ok(())
    }

    fn url(&self) -> String {
        match self.kind {
            StoreKind::Redis => format!("redis://127.0.0.1:{}/0?prefix=chaos", self.port),
            StoreKind::Postgres => {
                format!("postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable", self.port)
            }
        }
    }

    /// `kill -9` the server (and, for PostgreSQL, every process of it).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            let _ = child.kill();
            let _ = child.wait();
            if self.kind == StoreKind::Postgres {
                for orphan in children_of(pid) {
                    let _ = Command::new("kill").args(["-9", &orphan.to_string()]).status();
                }
                // The backends notice their postmaster is gone; wait for them to go.
                let deadline = Instant::now() + Duration::from_secs(10);
                while !children_of(pid).is_empty() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

impl Drop for StoreServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", path.display()))
}

/// Processes whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                // `pid (comm) state ppid …`: the comm may hold spaces, so read after the last ')'.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|ppid| ppid.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// One `byova serve` replica.
struct Replica {
    child: Option<Child>,
    journal: PathBuf,
    log: PathBuf,
}

/// Everything the run's processes share.
pub(crate) struct Run {
    fake: Arc<FakeWebex>,
    bin: PathBuf,
    home: PathBuf,
    storage: String,
}

impl Run {
    fn cmd(&self) -> Command {
        let (int, sa) = (self.fake.integration_credentials(), self.fake.service_app_credentials());
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("WEBEX_INTEGRATION_CLIENT_ID", &int.client_id)
            .env("WEBEX_INTEGRATION_CLIENT_SECRET", int.client_secret.expose_secret())
            .env("WEBEX_SA_CLIENT_ID", &sa.client_id)
            .env("WEBEX_SA_CLIENT_SECRET", sa.client_secret.expose_secret())
            .env("BYOVA_BASE_URL", self.fake.base_url())
            .env("BYOVA_STORAGE", &self.storage)
            .env("BYOVA_WEBHOOK_SECRET", "chaos-secret");
        cmd
    }

    fn start_replica(&self, replica: &mut Replica) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&replica.log).unwrap();
        let mut child = self
            .cmd()
            .env("BYOVA_LOG", "info")
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--resync-interval", "20", "--journal", &replica.journal.display().to_string()])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        // The first line says it listens (or the process failed: a store down at start).
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line);
        replica.child = Some(child);
    }

    fn stop_replica(replica: &mut Replica) {
        if let Some(mut child) = replica.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn replica_alive(replica: &mut Replica) -> bool {
        replica.child.as_mut().is_some_and(|c| c.try_wait().is_ok_and(|s| s.is_none()))
    }
}

/// The run's figures.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) store: String,
    pub(crate) seconds: u64,
    pub(crate) kills: u64,
    pub(crate) freezes: u64,
    pub(crate) store_restarts: u64,
    pub(crate) tokens_served: u64,
    pub(crate) client_errors: u64,
    pub(crate) expired_served: u64,
    pub(crate) revoked_served: u64,
    pub(crate) orgs_lost: Vec<String>,
    /// Orgs `byova status` says need registering again (their refresh token was rejected).
    pub(crate) flagged: Vec<String>,
    pub(crate) refresh_tokens_lost: usize,
    pub(crate) spent_sent_more_than_once: usize,
    pub(crate) token_calls_per_org_per_lifetime: f64,
}

const ORGS: usize = 20;
const LIFETIME_SECS: u64 = 90;

fn org(i: usize) -> String {
    format!("{i:08x}-c4a0-4000-8000-00000000c4a0")
}

/// Runs the chaos for `seconds` against a private store of `kind` in `dir`, with the
/// Integration authorized or not. `Err` when the store's server is not installed.
pub(crate) fn run(
    kind: StoreKind,
    integration: bool,
    seconds: u64,
    bin: &Path,
    dir: &Path,
) -> Result<Report, String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut store = StoreServer::start(kind, &dir.join("store"))?;
    let fake = Arc::new(FakeWebex::start());
    fake.update_settings(|s| {
        s.rotate_refresh_tokens = true;
        s.strict_rotation = true;
        s.service_app_expires_in = LIFETIME_SECS;
    });
    // A refresh in flight for a while after Webex processed it: a kill then loses its answer.
    fake.set_answer_latency(byova_testkit::Endpoint::AccessToken, Duration::from_millis(1500));
    let run = Run { fake: fake.clone(), bin: bin.to_owned(), home: dir.join("home"), storage: store.url() };
    std::fs::create_dir_all(&run.home).map_err(|e| e.to_string())?;
    // The Integration authorized and 20 orgs registered, all in one import.
    let now = SystemClock.now();
    let mut lines = Vec::new();
    if integration {
        let tokens = fake.issue_integration_tokens().to_oauth_tokens(now);
        lines.push(format!(
            r#"{{"byova_export":1,"key":"integration","record":{}}}"#,
            String::from_utf8(tokens.to_json()).unwrap()
        ));
    }
    for i in 0..ORGS {
        fake.authorize_org(&org(i));
        // Of every age, so refreshes come due all through the run, not in one burst.
        let age = Duration::from_secs(LIFETIME_SECS * i as u64 / ORGS as u64);
        let tokens = fake.issue_service_app_tokens(&org(i)).to_oauth_tokens(now.saturating_sub(age));
        lines.push(format!(
            r#"{{"byova_export":1,"key":"org:{}","record":{}}}"#,
            org(i),
            String::from_utf8(tokens.to_json()).unwrap()
        ));
    }
    let import = dir.join("fleet.jsonl");
    std::fs::write(&import, lines.join("\n")).map_err(|e| e.to_string())?;
    let imported = run.cmd().args(["org", "import", &import.display().to_string()]).output().unwrap();
    if !imported.status.success() {
        return Err(format!("import failed: {}", String::from_utf8_lossy(&imported.stderr)));
    }
    fake.reset_counters();

    let mut replicas: Vec<Replica> = (0..3)
        .map(|i| Replica {
            child: None,
            journal: dir.join(format!("journal-{i}")),
            log: dir.join(format!("replica-{i}.log")),
        })
        .collect();
    for replica in &mut replicas {
        run.start_replica(replica);
    }

    // The client: a random org's token every 0.3 s, used at once.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let expired = Arc::new(AtomicU64::new(0));
    let revoked = Arc::new(AtomicU64::new(0));
    let client = {
        let (stop, served, errors, expired, revoked) =
            (stop.clone(), served.clone(), errors.clone(), expired.clone(), revoked.clone());
        let client_run = run_clone(&run);
        let fake = fake.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let org = org((byova_core::engine::random_u64() as usize) % ORGS);
                let mut cmd = client_run.cmd();
                cmd.env("BYOVA_STORAGE_TIMEOUT", "5").args(["org", "token", &org]);
                match output_within(cmd, Duration::from_secs(20)) {
                    Some((true, stdout)) => {
                        let token = stdout.trim().to_owned();
                        match fake.access_token_status(&token) {
                            AccessTokenStatus::Valid => {
                                served.fetch_add(1, Ordering::SeqCst);
                            }
                            AccessTokenStatus::Expired => {
                                expired.fetch_add(1, Ordering::SeqCst);
                            }
                            _ => {
                                revoked.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };

    let mut report = Report {
        store: format!("{kind:?}{}", if integration { "" } else { ", no Integration" }),
        seconds,
        ..Report::default()
    };
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let mut next_kill = started + Duration::from_secs(10);
    let freeze_at = started + Duration::from_secs(seconds / 3);
    let store_kill_at = started + Duration::from_secs(seconds / 2);
    let mut frozen: Option<(usize, Instant)> = None;
    let mut store_down_until: Option<Instant> = None;
    let mut froze = false;
    let mut killed_store = false;
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_kill {
            let victim = (byova_core::engine::random_u64() as usize) % replicas.len();
            if frozen.is_none_or(|(f, _)| f != victim) {
                Run::stop_replica(&mut replicas[victim]);
                report.kills += 1;
                std::thread::sleep(Duration::from_millis(500));
                run.start_replica(&mut replicas[victim]);
            }
            next_kill = now + Duration::from_secs(10);
        }
        if !froze && now >= freeze_at {
            let victim = (byova_core::engine::random_u64() as usize) % replicas.len();
            if let Some(child) = &replicas[victim].child {
                let _ = Command::new("kill").args(["-STOP", &child.id().to_string()]).status();
                frozen = Some((victim, now + Duration::from_secs(30.min(seconds / 3))));
                report.freezes += 1;
            }
            froze = true;
        }
        if let Some((victim, until)) = frozen
            && now >= until
        {
            if let Some(child) = &replicas[victim].child {
                let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
            }
            frozen = None;
        }
        if !killed_store && now >= store_kill_at {
            store.kill();
            report.store_restarts += 1;
            store_down_until = Some(now + Duration::from_secs(3));
            killed_store = true;
        }
        if let Some(until) = store_down_until
            && now >= until
        {
            store.spawn()?;
            store_down_until = None;
        }
        // A replica that could not start while the store was down is started again.
        if store_down_until.is_none() {
            for (i, replica) in replicas.iter_mut().enumerate() {
                if frozen.is_none_or(|(f, _)| f != i) && !Run::replica_alive(replica) {
                    run.start_replica(replica);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some((victim, _)) = frozen
        && let Some(child) = &replicas[victim].child
    {
        let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
    }
    if store_down_until.is_some() {
        store.spawn()?;
    }
    stop.store(true, Ordering::SeqCst);
    let _ = client.join();
    report.tokens_served = served.load(Ordering::SeqCst);
    report.client_errors = errors.load(Ordering::SeqCst);
    report.expired_served = expired.load(Ordering::SeqCst);
    report.revoked_served = revoked.load(Ordering::SeqCst);

    let calls: u64 = fake.token_calls_per_org().values().sum();
    let lifetimes = seconds as f64 / LIFETIME_SECS as f64;
    report.token_calls_per_org_per_lifetime = calls as f64 / ORGS as f64 / lifetimes;
    // Every org still refreshes: a forced refresh of all, then a valid token each.
    let mut lost = Vec::new();
    let refreshed = run.cmd().args(["org", "refresh-all", "--force", "--json"]).output().unwrap();
    let failed: Vec<String> = String::from_utf8_lossy(&refreshed.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["refreshed"] == false)
        .map(|v| format!("{} ({})", v["org"].as_str().unwrap_or("?"), v["error"].as_str().unwrap_or("?")))
        .collect();
    for i in 0..ORGS {
        let out = run.cmd().args(["org", "token", &org(i)]).output().unwrap();
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || fake.access_token_status(&token) != AccessTokenStatus::Valid {
            lost.push(format!("{}: {}", org(i), String::from_utf8_lossy(&out.stderr).trim()));
        }
    }
    if !failed.is_empty() {
        println!("  refresh-all failures: {failed:?}");
    }
    // What an operator sees of the orgs that need registering again.
    let status = run.cmd().args(["status", "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
    report.flagged = status
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["refresh_token_rejected"] == true)
        .filter_map(|s| s["key"].as_str().map(|k| k.trim_start_matches("org:").to_owned()))
        .collect();
    report.orgs_lost = lost;
    for replica in &mut replicas {
        if let Some(child) = &replica.child {
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
        }
        Run::stop_replica(replica);
    }
    let mut reused: HashMap<String, usize> = HashMap::new();
    for r in fake.redemptions().into_iter().filter(|r| r.reused) {
        *reused.entry(r.refresh_token).or_insert(0) += 1;
    }
    report.refresh_tokens_lost = reused.len();
    report.spent_sent_more_than_once = reused.values().filter(|n| **n > 1).count();
    if (integration && !report.orgs_lost.is_empty())
        || report.spent_sent_more_than_once > 0
        || report.expired_served > 0
    {
        for replica in &replicas {
            let log = std::fs::read_to_string(&replica.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            println!(
                "--- {} (last lines)\n{}",
                replica.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    } else {
        let _ = std::fs::remove_dir_all(dir.join("home"));
    }
    drop(store);
    Ok(report)
}

/// The client's command line (a copy of the run's, for its thread).
fn run_clone(run: &Run) -> Run {
    Run { fake: run.fake.clone(), bin: run.bin.clone(), home: run.home.clone(), storage: run.storage.clone() }
}

/// Runs `cmd` for at most `limit` (killed after): whether it succeeded, and its stdout.
fn output_within(mut cmd: Command, limit: Duration) -> Option<(bool, String)> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().ok()?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut out = String::new();
                let _ = std::io::Read::read_to_string(child.stdout.as_mut()?, &mut out);
                return Some((status.success(), out));
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Seconds the chaos runs per store: `BYOVA_CHAOS_SECONDS`, else a bounded run for CI.
pub(crate) fn seconds() -> u64 {
    std::env::var("BYOVA_CHAOS_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60)
}
