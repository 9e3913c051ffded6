//! `byova-bench SCENARIO [--flavour async|blocking] [--callers N] [--processes P]
//! [--storage URL] [--base-url URL] [--iterations N] [--ops N] [--orgs N]`
//!
//! Prints one JSON object per line with `scenario`, `flavour`, `storage` and the figures.
//!
//! - `hot`: `ns_per_call` of `get_access_token` on a fresh Integration token.
//! - `herd` / `sa-herd`: an expired Integration (or one org's Service App) token with a valid
//!   refresh token, then N concurrent callers (tasks or threads), spread over P processes that
//!   share `--storage`: `callers`, `token_endpoint_calls`, `seconds`, `errors`. Without
//!   `--base-url` the testkit's fake Webex serves and counts the calls; with it, the named
//!   server does (any credentials), and `token_endpoint_calls` is left to it.
//! - `storage-ops`: get and set operations per second through the storage adapter, and the time
//!   of `list_registered_orgs` with `--orgs` (100,000) orgs stored.
//! - `fleet`: `--orgs` orgs, none due: the refresh schedule's load time and memory (memory:),
//!   or `byova serve` on the store for `--seconds` (its first resync, resident memory, idle
//!   CPU); then a cohort of 1,000 orgs with 30-minute tokens under a 300/min limit, simulated
//!   on a virtual clock over two lifetimes (429s, tokens served expired, calls per renewal).
//! - `cohort-daemon`: the real `byova serve` (build it first) keeping `--orgs` orgs (40)
//!   registered together with 240 s tokens fresh on a budget of 25 calls a minute against a
//!   fake that answers 429 beyond 30, for `--seconds` (480: two lifetimes); the store looked
//!   at twice a second (orgs expired at worst, 429s, calls).
//! - `jws`: `verifications_per_second_per_core` of an inbound JWS (RS256, 2048-bit key) with
//!   the broker's keys cached, `--iterations` times on one thread (try 20000).

mod fleet;
mod herd;
mod hot;
mod jws;
mod storage;
mod storage_ops;

use std::process::ExitCode;

/// The command line.
#[derive(Clone, Debug)]
pub(crate) struct Args {
    scenario: String,
    flavour: String,
    callers: usize,
    processes: usize,
    storage: String,
    base_url: Option<String>,
    iterations: u64,
    ops: usize,
    orgs: usize,
    /// How long `fleet` watches the daemon idle.
    seconds: u64,
    /// Set on the child processes of a multi-process herd.
    child: bool,
}

const USAGE: &str = "usage: byova-bench hot|herd|sa-herd|storage-ops|fleet|cohort-daemon|jws [--flavour async|blocking] [--callers N] \
                     [--processes P] [--storage URL] [--base-url URL] [--iterations N] [--ops N] [--orgs N] [--seconds S]";

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().ok_or(USAGE)?;
    let mut parsed = Args {
        scenario,
        flavour: "async".into(),
        callers: 1000,
        processes: 1,
        storage: "memory:".into(),
        base_url: None,
        iterations: 20_000_000,
        ops: 2000,
        orgs: 100_000,
        seconds: 60,
        child: false,
    };
    let number = |v: String, flag: &str| v.parse::<u64>().map_err(|_| format!("{flag} takes a number"));
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--flavour" => parsed.flavour = value()?,
            "--callers" => parsed.callers = number(value()?, &flag)? as usize,
            "--processes" => parsed.processes = number(value()?, &flag)? as usize,
            "--storage" => parsed.storage = value()?,
            "--base-url" => parsed.base_url = Some(value()?),
            "--iterations" => parsed.iterations = number(value()?, &flag)?,
            "--ops" => parsed.ops = number(value()?, &flag)? as usize,
            "--orgs" => parsed.orgs = number(value()?, &flag)? as usize,
            "--seconds" => parsed.seconds = number(value()?, &flag)?,
            "--child" => parsed.child = true,
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    if !matches!(parsed.flavour.as_str(), "async" | "blocking") {
        return Err(format!("flavour {:?} is neither async nor blocking", parsed.flavour));
    }
    if parsed.processes == 0 || parsed.callers == 0 {
        return Err("--processes and --callers must be at least 1".into());
    }
    Ok(parsed)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("byova-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match args.scenario.as_str() {
        "hot" => hot::run(&args),
        "herd" => herd::run(&args, false),
        "sa-herd" => herd::run(&args, true),
        "storage-ops" => storage_ops::run(&args),
        "fleet" => fleet::run(&args),
        "cohort-daemon" => fleet::cohort_daemon(&args),
        "jws" => jws::run(&args),
        other => Err(format!("unknown scenario {other:?}\n{USAGE}")),
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("byova-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
