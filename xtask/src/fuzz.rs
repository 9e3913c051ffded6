//! `cargo xtask fuzz [--seconds N | --runs N] [--seed N] [--fresh] [TARGET…]`: builds the
//! libFuzzer targets of `fuzz/` and runs each for N seconds (default 60) or N executions, then
//! prints the executions each made. `--seed` fixes libFuzzer's random seed; `--fresh` starts
//! from the committed seeds alone, as a clean checkout does. CI runs
//! `--runs 400000 --seed 1 --fresh`: bounded by executions rather than time, so a slow machine
//! does not fuzz less. Runs are not exactly repeatable even so: the code under test hashes with
//! per-process random keys, which changes the paths libFuzzer sees.
//!
//! How, on the stable toolchain alone: the targets are ordinary binaries of the `byova-fuzz`
//! crate (feature `libfuzzer`, which links libFuzzer through `libfuzzer-sys`), compiled with
//! LLVM's SanitizerCoverage through stable codegen flags (`-Cpasses=sancov-module` and its
//! `-Cllvm-args`), for an explicit `--target` so that build scripts and proc macros stay
//! uninstrumented, into `target/fuzz`. No nightly, no `cargo fuzz`, no sanitizer runtime:
//! byova's crates forbid `unsafe`, so AddressSanitizer would watch only dependencies; debug
//! assertions and overflow checks stay on, so an overflow is a crash.
//!
//! Each run reads the committed seeds (`fuzz/corpus/<target>`) and a working corpus kept in
//! `target/fuzz/corpus/<target>` between runs. A crashing input is copied to
//! `fuzz/regressions/<target>/`, where `cargo test -p byova-fuzz` replays it from then on.

use std::path::Path;
use std::process::Command;

use crate::{Result, cargo, root, step};

/// The targets (binaries of `fuzz/`).
pub(crate) const TARGETS: &[&str] =
    &["webhook_delivery", "token_response", "listener_head", "stored_record", "org_id", "storage_url", "jws"];

const COVERAGE_FLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg=fuzzing",
    "-Cdebug-assertions",
    "-Coverflow-checks",
    "-Ccodegen-units=16",
];

fn host_triple() -> Result<String> {
    let out = Command::new("rustc").arg("-vV").output().map_err(|e| format!("rustc -vV: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .ok_or_else(|| "rustc -vV names no host".to_owned())
}

/// What one target's run gave.
struct Outcome {
    target: &'static str,
    executions: u64,
    corpus: usize,
    crash: Option<String>,
}

pub(crate) fn fuzz(args: &[String]) -> Result {
    let mut seconds = 60u64;
    let mut runs: Option<u64> = None;
    let mut seed: Option<u64> = None;
    let mut fresh = false;
    let mut only: Vec<&str> = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s| *s > 0)
                    .ok_or("--seconds takes a number of seconds above 0")?;
            }
            "--runs" => {
                runs = Some(
                    args.next()
                        .and_then(|s| s.parse().ok())
                        .filter(|r| *r > 0)
                        .ok_or("--runs takes a number of executions above 0")?,
                );
            }
            "--seed" => {
                seed = Some(args.next().and_then(|s| s.parse().ok()).ok_or("--seed takes a number")?);
            }
            "--fresh" => fresh = true,
            name => {
                let known = TARGETS.iter().find(|t| **t == name).ok_or_else(|| {
                    format!("{name:?} is not a fuzz target (targets: {})", TARGETS.join(", "))
                })?;
                only.push(known);
            }
        }
    }
    let targets: Vec<&'static str> =
        TARGETS.iter().copied().filter(|t| only.is_empty() || only.contains(t)).collect();
    let triple = host_triple()?;
    let dir = root().join("target").join("fuzz");
    step(&format!("fuzz: build {} targets (coverage-instrumented, {triple})", targets.len()));
    let mut build = cargo();
    build
        .args([
            "build",
            "--release",
            "-p",
            "byova-fuzz",
            "--features",
            "libfuzzer",
            "--bins",
            "--target",
            &triple,
        ])
        .arg("--target-dir")
        .arg(&dir)
        .env("RUSTFLAGS", COVERAGE_FLAGS.join(" "))
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    crate::run(&mut build).map_err(|e| {
        format!("{e} (libfuzzer-sys builds libFuzzer from C++: it needs g++ or clang++ on the PATH)")
    })?;

    let mut outcomes = Vec::new();
    for target in targets {
        let budget = runs.map_or(format!("{seconds} s"), |r| format!("{r} executions"));
        step(&format!("fuzz: {target} for {budget}"));
        let binary = dir.join(&triple).join("release").join(target);
        outcomes.push(run_target(&binary, target, &Options { seconds, runs, seed, fresh }, &dir)?);
    }
    let budget = runs.map_or(format!("{seconds} s"), |r| format!("{r} executions"));
    println!("\nfuzz: {budget} per target (seed {})", seed.map_or("random".to_owned(), |s| s.to_string()));
    println!("{:<18} {:>12} {:>8}  result", "target", "executions", "corpus");
    for o in &outcomes {
        let result = o.crash.as_deref().map_or("no crash".to_owned(), |c| format!("CRASH, saved as {c}"));
        println!("{:<18} {:>12} {:>8}  {result}", o.target, o.executions, o.corpus);
    }
    let crashed: Vec<&str> = outcomes.iter().filter(|o| o.crash.is_some()).map(|o| o.target).collect();
    if crashed.is_empty() {
        Ok(())
    } else {
        Err(format!("fuzz: {} crashed; the inputs are in fuzz/regressions", crashed.join(", ")))
    }
}

/// How each target runs.
struct Options {
    seconds: u64,
    runs: Option<u64>,
    seed: Option<u64>,
    fresh: bool,
}

fn run_target(binary: &Path, target: &'static str, options: &Options, dir: &Path) -> Result<Outcome> {
    let work = dir.join(if options.fresh { "fresh-corpus" } else { "corpus" }).join(target);
    if options.fresh {
        let _ = std::fs::remove_dir_all(&work);
    }
    let artifacts = dir.join("artifacts").join(target);
    let seeds = root().join("fuzz").join("corpus").join(target);
    for d in [&work, &artifacts] {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    let before: Vec<_> = list(&artifacts);
    let mut fuzzer = Command::new(binary);
    if let Some(seed) = options.seed {
        fuzzer.arg(format!("-seed={seed}"));
    }
    match options.runs {
        Some(runs) => fuzzer.arg(format!("-runs={runs}")),
        None => fuzzer.arg(format!("-max_total_time={}", options.seconds)),
    };
    let out = fuzzer
        .arg("-max_len=16384")
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&work)
        .arg(&seeds)
        .current_dir(root())
        .output()
        .map_err(|e| format!("could not run {}: {e}", binary.display()))?;
    let log = String::from_utf8_lossy(&out.stderr);
    let stat = |name: &str| {
        log.lines().find_map(|l| {
            l.strip_prefix(name).and_then(|v| v.trim().trim_start_matches(':').trim().parse().ok())
        })
    };
    let executions = stat("stat::number_of_executed_units").unwrap_or(0);
    let corpus = list(&work).len();
    let new_artifacts: Vec<_> = list(&artifacts).into_iter().filter(|a| !before.contains(a)).collect();
    let crash = if out.status.success() && new_artifacts.is_empty() {
        None
    } else {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        let regressions = root().join("fuzz").join("regressions").join(target);
        std::fs::create_dir_all(&regressions)
            .map_err(|e| format!("cannot create {}: {e}", regressions.display()))?;
        let mut saved = Vec::new();
        for artifact in &new_artifacts {
            let name = artifact.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let to = regressions.join(&name);
            std::fs::copy(artifact, &to).map_err(|e| format!("cannot copy {}: {e}", artifact.display()))?;
            saved.push(format!("fuzz/regressions/{target}/{name}"));
        }
        Some(if saved.is_empty() {
            format!("(no input: exit {:?})", out.status.code())
        } else {
            saved.join(", ")
        })
    };
    Ok(Outcome { target, executions, corpus, crash })
}

fn list(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default()
}
