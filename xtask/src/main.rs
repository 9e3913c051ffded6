//! byova's project automation, with no dependencies beyond std.
//!
//! - `cargo xtask ci`: fmt check, clippy (warnings denied), the dependency-boundary check,
//!   services, every test, 400,000 executions of each fuzz target, docs (warnings denied),
//!   cargo-deny (advisories, offline against the RustSec snapshot in `../shared/advisory-db`;
//!   licenses, bans, sources).
//! - `cargo xtask test`: services, then every test.
//! - `cargo xtask services`: checks PostgreSQL, MariaDB and Redis on their loopback ports,
//!   starts any that is installed but down, and prints the `BYOVA_TEST_*_URL` values.
//! - `cargo xtask deps`: the dependency-boundary check alone.
//! - `cargo xtask deny`: cargo-deny alone (advisories offline, licenses, bans, sources).
//! - `cargo xtask fuzz [--seconds N | --runs N] [--seed N] [--fresh] [TARGET…]`: builds the
//!   coverage-guided fuzz targets of `fuzz/` and runs each for N seconds (default 60) or N
//!   executions; see `fuzz.rs`.
//! - `cargo xtask chaos [--seconds N]`: the multi-replica chaos run alone (three `byova serve`
//!   replicas killed, frozen, their store killed), N seconds per store (CI runs 60).
//! - `cargo xtask api [--bless]`: each library crate's public API, one line per item, compared
//!   with the snapshot in `api/` (see `api.rs`).
//! - `cargo xtask resolutions`: the library crates as a user's build resolves them: tested
//!   against the newest versions the manifests allow (a fresh resolution) and built against
//!   the oldest (direct dependencies at their declared minimums), warnings denied.
//! - `cargo xtask ci` also packs every published crate (`cargo package --no-verify`) and checks
//!   that each package holds its sources, manifest, README and licenses only.

mod api;
mod fuzz;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

type Result<T = (), E = String> = std::result::Result<T, E>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("test") => test(&args[1..]),
        Some("services") => services().map(|envs| {
            for (name, value) in envs {
                println!("{name}={value}");
            }
        }),
        Some("deps") => dependency_boundaries(),
        Some("deny") => deny(),
        Some("package") => package(),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        Some("chaos") => chaos(&args[1..]),
        Some("resolutions") => resolutions(),
        Some("api") => api::api(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <ci|test|services|deps|deny|package|fuzz|chaos|resolutions|api>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn step(name: &str) {
    println!("\n==> {name}");
}

fn run(cmd: &mut Command) -> Result {
    run_in(&root(), cmd)
}

fn run_in(dir: &Path, cmd: &mut Command) -> Result {
    let shown = format!("{cmd:?}");
    let status = cmd.current_dir(dir).status().map_err(|e| format!("could not run {shown}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{shown} failed ({status})")) }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn ci() -> Result {
    let started = Instant::now();
    step("cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    step("cargo clippy (warnings denied)");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--features",
        DEMO,
        "--",
        "-D",
        "warnings",
    ]))?;
    step("dependency boundaries");
    dependency_boundaries()?;
    test(&[])?;
    // Each fuzz target briefly: a fixed number of executions from a fixed seed and the
    // committed seeds alone, as on a clean checkout (see xtask/src/fuzz.rs). A crash fails the
    // run and is kept in fuzz/regressions. Longer, wider runs: `cargo xtask fuzz`.
    fuzz::fuzz(&["--runs", CI_FUZZ_RUNS, "--seed", "1", "--fresh"].map(str::to_owned))?;
    step("cargo doc (warnings denied)");
    run(cargo().args(["doc", "--workspace", "--no-deps"]).env("RUSTDOCFLAGS", "-D warnings"))?;
    api::api(&[])?;
    resolutions()?;
    deny()?;
    package()?;
    println!("\nci: all green in {:.0?}", started.elapsed());
    Ok(())
}

/// Executions per fuzz target in `cargo xtask ci` (5–10 s each here).
const CI_FUZZ_RUNS: &str = "400000";

fn test(extra: &[String]) -> Result {
    step("services");
    let envs = services()?;
    step("cargo test --workspace");
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--features", DEMO]).args(extra);
    for (name, value) in envs {
        cmd.env(name, value);
    }
    run(&mut cmd)
}

/// The CLI's `demo` feature: tested and linted, though off in the binary a provider installs
/// (`cargo doc` and the dependency boundaries see the binary without it).
const DEMO: &str = "byova-cli/demo";

/// `cargo xtask chaos [--seconds N]`: the chaos test of byova-cli, N seconds per store.
fn chaos(args: &[String]) -> Result {
    let seconds = match args {
        [] => "300".to_owned(),
        [flag, n] if flag == "--seconds" && n.parse::<u64>().is_ok() => n.clone(),
        _ => return Err("usage: cargo xtask chaos [--seconds N]".into()),
    };
    step(&format!("chaos: {seconds} s per store"));
    run(cargo()
        .args(["test", "-p", "byova-cli", "--test", "cli", "chaos_across", "--", "--nocapture"])
        .env("BYOVA_CHAOS_SECONDS", seconds))
}

/// The published library crates (every published crate but the CLI).
fn libraries() -> impl Iterator<Item = &'static str> {
    PUBLISHED.iter().copied().filter(|c| *c != "byova-cli")
}

/// The library crates as a user's project resolves them, which is not what the lock file
/// pins: a fresh resolution picks the newest compatible versions (tested, warnings denied),
/// and a user may hold older ones the manifests allow (direct dependencies at their declared
/// minimums, built with warnings denied). Each runs in a scratch copy of the checkout under
/// `target/resolutions`, sharing one target directory, so the repository's lock file is
/// never touched.
fn resolutions() -> Result {
    let scratch = root().join("target/resolutions");
    let target = scratch.join("target");
    let packages: Vec<String> = libraries().flat_map(|c| ["-p".to_owned(), c.to_owned()]).collect();

    step("newest compatible versions: a fresh resolution, the library crates' tests");
    let newest = scratch.join("newest");
    copy_checkout(&newest)?;
    run_in(&newest, cargo().args(["update"]))?;
    let mut cmd = cargo();
    cmd.args(["test"]).args(&packages).env("CARGO_TARGET_DIR", &target).env("RUSTFLAGS", "-D warnings");
    for (name, value) in services()? {
        cmd.env(name, value);
    }
    run_in(&newest, &mut cmd)?;

    step("declared minimum versions: direct dependencies at their minimums, the library crates");
    let minimal = scratch.join("minimal");
    copy_checkout(&minimal)?;
    // `-Z direct-minimal-versions` is unstable: RUSTC_BOOTSTRAP lets the stable toolchain run it.
    run_in(&minimal, cargo().args(["update", "-Z", "direct-minimal-versions"]).env("RUSTC_BOOTSTRAP", "1"))?;
    run_in(
        &minimal,
        cargo()
            .args(["check", "--lib"])
            .args(&packages)
            .env("CARGO_TARGET_DIR", &target)
            .env("RUSTFLAGS", "-D warnings"),
    )
}

/// The checkout's files (tracked, and untracked ones git does not ignore) copied to `dest`,
/// which is emptied first.
fn copy_checkout(dest: &Path) -> Result {
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(|e| format!("cannot empty {}: {e}", dest.display()))?;
    }
    let out = Command::new("git")
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .current_dir(root())
        .output()
        .map_err(|e| format!("git ls-files: {e}"))?;
    if !out.status.success() {
        return Err(format!("git ls-files failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    for file in out.stdout.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let file = Path::new(std::str::from_utf8(file).map_err(|_| "a file name that is not UTF-8")?);
        let from = root().join(file);
        if !from.is_file() {
            continue; // deleted in the working tree
        }
        let to = dest.join(file);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::copy(&from, &to).map_err(|e| format!("cannot copy {}: {e}", file.display()))?;
    }
    Ok(())
}

/// The crates a user installs.
const PUBLISHED: &[&str] = &[
    "byova-core",
    "byova-async",
    "byova-blocking",
    "byova-axum",
    "byova-storage-file",
    "byova-storage-redis",
    "byova-storage-sql",
    "byova-testkit",
    "byova-cli",
];

/// `cargo package --no-verify` for each published crate, and what it packs: sources, the
/// manifest, the README and the licenses, nothing else.
fn package() -> Result {
    step("cargo package (published crates)");
    let mut cmd = cargo();
    cmd.args(["package", "--no-verify", "--allow-dirty"]);
    for krate in PUBLISHED {
        cmd.args(["-p", krate]);
    }
    run(&mut cmd)?;
    for krate in PUBLISHED {
        let out = cargo()
            .args(["package", "--list", "--allow-dirty", "-p", krate])
            .current_dir(root())
            .output()
            .map_err(|e| format!("cargo package --list: {e}"))?;
        let list = String::from_utf8_lossy(&out.stdout);
        let expected = [
            "Cargo.toml",
            "Cargo.toml.orig",
            "Cargo.lock",
            ".cargo_vcs_info.json",
            "README.md",
            "LICENSE-MIT",
            "LICENSE-APACHE",
        ];
        let stray: Vec<&str> =
            list.lines().filter(|f| !f.starts_with("src/") && !expected.contains(f)).collect();
        let missing: Vec<&&str> =
            expected[..1].iter().chain(&expected[4..]).filter(|f| !list.lines().any(|l| l == **f)).collect();
        if !out.status.success() || !stray.is_empty() || !missing.is_empty() {
            return Err(format!("{krate}'s package: stray {stray:?}, missing {missing:?}"));
        }
    }
    println!("packaged: {}", PUBLISHED.join(", "));
    Ok(())
}

fn deny() -> Result {
    step("cargo deny check (advisories offline, licenses, bans, sources)");
    ensure_cargo_deny()?;
    materialize_advisory_db()?;
    // cargo-deny reads the metadata of every target's dependencies (Windows crates too),
    // which a build on this machine never downloads; the registry is reachable, so fetch them
    // first, then check without any other network.
    run(cargo().args(["fetch", "--locked"]))?;
    run(cargo().args(["deny", "--offline", "check", "advisories", "licenses", "bans", "sources"]))
}

fn ensure_cargo_deny() -> Result {
    let present = cargo().args(["deny", "--version"]).output().is_ok_and(|o| o.status.success());
    if !present {
        println!("cargo-deny is missing; installing it from crates.io (a few minutes, once per machine)");
        run(cargo().args(["install", "cargo-deny", "--locked"]))?;
    }
    Ok(())
}

/// Where cargo-deny looks for the RustSec database of `db-urls` under `db-path` (deny.toml):
/// `<name>-<hash of the URL>`.
const ADVISORY_DB_DIR: &str = "target/advisory-dbs/advisory-db-3157b0e258782691";

/// cargo-deny reads the advisory database from a git checkout (the HEAD commit's date is its
/// age). These machines cannot fetch it; an offline snapshot sits next to the project. Copy
/// it into a throwaway repository committed at the snapshot's own date (once per snapshot).
fn materialize_advisory_db() -> Result {
    let source = std::env::var_os("BYOVA_ADVISORY_DB")
        .map_or_else(|| root().join("../shared/advisory-db"), PathBuf::from);
    let snapshot = std::fs::read_to_string(source.join("SNAPSHOT")).map_err(|e| {
        format!(
            "the offline RustSec database is missing ({}: {e}); set BYOVA_ADVISORY_DB to a copy",
            source.join("SNAPSHOT").display()
        )
    })?;
    let dir = root().join(ADVISORY_DB_DIR);
    if std::fs::read_to_string(dir.join("SNAPSHOT")).is_ok_and(|s| s == snapshot) {
        return Ok(());
    }
    let date = snapshot.split_whitespace().nth(1).ok_or("SNAPSHOT has no date")?.to_owned();
    let _ = std::fs::remove_dir_all(&dir);
    copy_tree(&source, &dir).map_err(|e| format!("copying the advisory database: {e}"))?;
    let git = |args: &[&str]| {
        run(Command::new("git")
            .arg("-C")
            .arg(&dir)
            .args(["-c", "user.name=byova-ci", "-c", "user.email=ci@byova.invalid"])
            .args(args)
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date))
    };
    git(&["init", "-q"])?;
    git(&["add", "-A"])?;
    git(&["commit", "-q", "-m", &format!("RustSec snapshot {snapshot}")])?;
    println!("advisory database: snapshot of {date} at {}", dir.display());
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            if entry.file_name() != ".git" {
                copy_tree(&entry.path(), &target)?;
            }
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Crates that must not appear in a crate's normal dependency tree.
const BOUNDARIES: &[(&str, &[&str])] = &[
    ("byova-core", &["tokio", "reqwest", "ureq", "hyper", "redis", "sqlx", "rusqlite", "mio", "socket2"]),
    ("byova-blocking", &["tokio", "reqwest", "hyper", "mio", "byova-async"]),
    ("byova-async", &["ureq", "byova-blocking"]),
    ("byova-storage-file", &["byova-async", "byova-blocking", "reqwest", "ureq", "hyper"]),
    ("byova-storage-redis", &["byova-async", "byova-blocking", "reqwest", "ureq", "hyper"]),
    ("byova-storage-sql", &["byova-async", "byova-blocking", "reqwest", "ureq", "hyper"]),
    // The binary a provider installs carries no fake Webex (`demo` is a feature) and one TLS
    // crypto provider (aws-lc-rs; see the workspace manifest).
    ("byova-cli", &["byova-testkit", "ring"]),
];

fn dependency_boundaries() -> Result {
    for (krate, banned) in BOUNDARIES {
        let out = cargo()
            .args(["tree", "-p", krate, "-e", "normal", "--prefix", "none", "--format", "{p}"])
            .current_dir(root())
            .output()
            .map_err(|e| format!("cargo tree: {e}"))?;
        if !out.status.success() {
            return Err(format!("cargo tree -p {krate} failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let tree = String::from_utf8_lossy(&out.stdout);
        let mut names: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
        names.sort_unstable();
        names.dedup();
        let found: Vec<&str> = names.iter().copied().filter(|n| banned.contains(n)).collect();
        if !found.is_empty() {
            return Err(format!(
                "{krate}'s normal dependencies must not include {} (see BOUNDARIES in xtask)",
                found.join(", ")
            ));
        }
        println!(
            "{krate}: {} crates in the normal dependency tree, none of {}",
            names.len(),
            banned.join(", ")
        );
    }
    Ok(())
}

struct Service {
    name: &'static str,
    port: u16,
    env: &'static str,
    url: &'static str,
    binary: &'static str,
    start: &'static str,
}

const SERVICES: &[Service] = &[
    Service {
        name: "PostgreSQL",
        port: 5432,
        env: "BYOVA_TEST_POSTGRES_URL",
        url: "postgres://postgres@127.0.0.1:5432/test",
        binary: "/usr/bin/pg_ctlcluster",
        start: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -n1) main start",
    },
    Service {
        name: "MariaDB",
        port: 3306,
        env: "BYOVA_TEST_MYSQL_URL",
        url: "mysql://root@127.0.0.1:3306/test",
        binary: "/usr/sbin/mariadbd",
        start: "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
    },
    Service {
        name: "Redis",
        port: 6379,
        env: "BYOVA_TEST_REDIS_URL",
        url: "redis://127.0.0.1:6379/0",
        binary: "/usr/bin/redis-server",
        start: "mkdir -p /var/lib/redis /var/log/redis && redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
                --save '' --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log",
    },
];

fn is_up(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

const REDIS_TLS_PORT: u16 = 16380;
const POSTGRES_TLS_PORT: u16 = 15433;

fn sh(script: &str) -> Result {
    let status = Command::new("sh").args(["-c", script]).status().map_err(|e| format!("sh: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("`{script}` failed ({status})")) }
}

fn wait_up(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !is_up(port) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    is_up(port)
}

/// A Redis that speaks only TLS and a PostgreSQL cluster that accepts only TLS (`hostssl`), on
/// their own ports, with a CA generated here (and a second, unrelated CA for the "wrong CA"
/// tests). Everything lives in one directory under the system's temp dir, so it survives
/// `cargo clean`; servers started with an older CA are restarted.
fn tls_services() -> Result<Vec<(&'static str, String)>> {
    let dir = std::env::temp_dir().join("byova-ci-tls");
    let d = dir.display();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{d}: {e}"))?;
    let fresh_ca = !dir.join("ca.pem").exists()
        || !dir.join("server.pem").exists()
        || !dir.join("wrong-ca.pem").exists();
    if fresh_ca {
        println!("TLS services: generating a test CA in {d}");
        sh(&format!(
            "cd {d} && rm -f *.pem *.key *.srl *.csr \
             && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 -subj '/CN=byova test CA' 2>/dev/null \
             && openssl req -x509 -newkey rsa:2048 -nodes -keyout wrong-ca.key -out wrong-ca.pem -days 3650 -subj '/CN=byova unrelated CA' 2>/dev/null \
             && openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj '/CN=127.0.0.1' 2>/dev/null \
             && printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ext.cnf \
             && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 3650 -extfile ext.cnf 2>/dev/null \
             && chmod 644 ca.pem wrong-ca.pem server.pem && chmod 600 server.key"
        ))?;
    }
    // Redis, TLS only.
    if fresh_ca && is_up(REDIS_TLS_PORT) {
        // Redis retitles its process, so it is stopped through its own protocol, not by name.
        let _ = sh(&format!(
            "redis-cli --tls --insecure -p {REDIS_TLS_PORT} shutdown nosave >/dev/null 2>&1; sleep 0.5"
        ));
    }
    if !is_up(REDIS_TLS_PORT) {
        println!("Redis (TLS): starting on 127.0.0.1:{REDIS_TLS_PORT}");
        sh(&format!(
            "redis-server --daemonize yes --bind 127.0.0.1 --port 0 --tls-port {REDIS_TLS_PORT} \
             --tls-cert-file {d}/server.pem --tls-key-file {d}/server.key --tls-ca-cert-file {d}/ca.pem \
             --tls-auth-clients no --save '' --appendonly no --dir {d} --logfile {d}/redis.log --pidfile {d}/redis.pid"
        ))?;
    }
    if !wait_up(REDIS_TLS_PORT) {
        return Err(format!("the TLS Redis did not come up (see {d}/redis.log)"));
    }
    println!("Redis (TLS): up on 127.0.0.1:{REDIS_TLS_PORT}");
    // PostgreSQL, hostssl only; run as the postgres user when this is root.
    let bin = [
        "/usr/lib/postgresql/17/bin",
        "/usr/lib/postgresql/16/bin",
        "/usr/lib/postgresql/15/bin",
        "/usr/local/bin",
        "/usr/bin",
    ]
    .iter()
    .find(|b| Path::new(b).join("initdb").exists())
    .ok_or("initdb is not installed")?;
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    let as_pg = |cmd: &str| if is_root { format!("runuser -u postgres -- {cmd}") } else { cmd.to_owned() };
    let data = dir.join("pg");
    let pd = data.display();
    if fresh_ca && is_up(POSTGRES_TLS_PORT) {
        let _ = sh(&as_pg(&format!("{bin}/pg_ctl -D {pd} -m fast -w stop")));
    }
    if !data.join("PG_VERSION").exists() {
        println!("PostgreSQL (TLS only): creating a cluster in {pd}");
        let _ = std::fs::remove_dir_all(&data);
        sh(&format!("mkdir -p {pd} && chmod 700 {pd}"))?;
        if is_root {
            sh(&format!("chmod 755 {d} && chown postgres {pd}"))?;
        }
        sh(&as_pg(&format!("{bin}/initdb -D {pd} -A trust -U postgres >/dev/null")))?;
        sh(&format!(
            "printf \"port = {POSTGRES_TLS_PORT}\\nlisten_addresses = '127.0.0.1'\\nunix_socket_directories = '{pd}'\\nssl = on\\nssl_cert_file = 'server.pem'\\nssl_key_file = 'server.key'\\nfsync = off\\n\" >> {pd}/postgresql.conf \
             && printf 'hostssl all all 127.0.0.1/32 trust\\n' > {pd}/pg_hba.conf"
        ))?;
    }
    if !is_up(POSTGRES_TLS_PORT) {
        sh(&format!("cp {d}/server.pem {d}/server.key {pd}/ && chmod 600 {pd}/server.key"))?;
        if is_root {
            sh(&format!(
                "chown postgres {pd}/server.pem {pd}/server.key {pd}/postgresql.conf {pd}/pg_hba.conf"
            ))?;
        }
        println!("PostgreSQL (TLS only): starting on 127.0.0.1:{POSTGRES_TLS_PORT}");
        sh(&as_pg(&format!("{bin}/pg_ctl -D {pd} -l {pd}/log -w start >/dev/null")))?;
    }
    if !wait_up(POSTGRES_TLS_PORT) {
        return Err(format!("the TLS-only PostgreSQL did not come up (see {pd}/log)"));
    }
    println!("PostgreSQL (TLS only): up on 127.0.0.1:{POSTGRES_TLS_PORT}");
    Ok(vec![
        ("BYOVA_TEST_REDIS_TLS_URL", format!("rediss://127.0.0.1:{REDIS_TLS_PORT}/0")),
        (
            "BYOVA_TEST_POSTGRES_TLS_URL",
            format!("postgres://postgres@127.0.0.1:{POSTGRES_TLS_PORT}/postgres"),
        ),
        ("BYOVA_TEST_TLS_CA", format!("{d}/ca.pem")),
        ("BYOVA_TEST_TLS_WRONG_CA", format!("{d}/wrong-ca.pem")),
    ])
}

const CLUSTER_PORTS: [u16; 3] = [17001, 17002, 17003];

/// A three-node Redis Cluster (no replicas) on `CLUSTER_PORTS`; its state lives under the system's
/// temp dir. Nodes left over from an earlier run (a `nodes.conf` whose processes are gone, a
/// half-formed cluster) are not trusted: unless every node is up and the cluster reports
/// `cluster_state:ok`, all nodes are stopped, their directories wiped and the cluster formed anew.
fn redis_cluster() -> Result<String> {
    let dir = std::env::temp_dir().join("byova-ci-cluster");
    let state_ok = || {
        Command::new("redis-cli")
            .args(["-p", &CLUSTER_PORTS[0].to_string(), "cluster", "info"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
    };
    let wait_ok = |secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !state_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        state_ok()
    };
    if CLUSTER_PORTS.iter().all(|p| is_up(*p)) && wait_ok(10) {
        return Ok(cluster_url());
    }
    println!("Redis Cluster: forming it from scratch in {}", dir.display());
    for port in CLUSTER_PORTS {
        if is_up(port) {
            let _ = Command::new("redis-cli").args(["-p", &port.to_string(), "shutdown", "nosave"]).output();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while CLUSTER_PORTS.iter().any(|p| is_up(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(port) = CLUSTER_PORTS.iter().find(|p| is_up(**p)) {
        return Err(format!("the node on {port} does not stop; stop it by hand"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    for port in CLUSTER_PORTS {
        let node = dir.join(port.to_string());
        let n = node.display();
        println!("Redis Cluster: starting a node on 127.0.0.1:{port}");
        sh(&format!(
            "mkdir -p {n} && redis-server --daemonize yes --bind 127.0.0.1 --port {port} --cluster-enabled yes \
             --cluster-config-file {n}/nodes.conf --cluster-node-timeout 5000 --save '' --appendonly no \
             --dir {n} --logfile {n}/redis.log --pidfile {n}/redis.pid"
        ))?;
        if !wait_up(port) {
            return Err(format!("the node on {port} did not come up (see {n}/redis.log)"));
        }
    }
    let nodes: Vec<String> = CLUSTER_PORTS.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    sh(&format!(
        "redis-cli --cluster create {} --cluster-replicas 0 --cluster-yes >/dev/null",
        nodes.join(" ")
    ))?;
    if !wait_ok(30) {
        return Err("the cluster did not reach cluster_state:ok".into());
    }
    Ok(cluster_url())
}

fn cluster_url() -> String {
    println!("Redis Cluster: up on 127.0.0.1:{:?}", CLUSTER_PORTS);
    let hosts: Vec<String> = CLUSTER_PORTS.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    format!("redis+cluster://{}/", hosts.join(","))
}

/// The file store's power-loss test traces a real write's system calls with strace: installs
/// it from Debian's packages when missing (as root, or through sudo).
fn ensure_strace() -> Result {
    let works = || {
        Command::new("strace").args(["-qq", "-e", "trace=none", "true"]).status().is_ok_and(|s| s.success())
    };
    if works() {
        println!("strace: can trace");
        return Ok(());
    }
    println!("strace: missing; installing it (apt-get install strace)");
    sh(
        "S=$([ \"$(id -u)\" = 0 ] || echo sudo); ($S apt-get install -y -q strace || ($S apt-get update -q && $S apt-get install -y -q strace)) >/dev/null",
    )?;
    if works() { Ok(()) } else { Err("installed, but cannot trace (ptrace refused?)".into()) }
}

/// Makes every service reachable (starting installed ones that are down) and returns the
/// environment the tests read. In CI (`CI=true`) a service that cannot be made reachable is an
/// error; elsewhere its variable is left out and backend tests report that they skipped.
fn services() -> Result<Vec<(&'static str, String)>> {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let mut envs = Vec::new();
    let mut missing = Vec::new();
    for s in SERVICES {
        if let Ok(url) = std::env::var(s.env) {
            println!("{}: using {} from the environment", s.name, s.env);
            envs.push((s.env, url));
            continue;
        }
        if !is_up(s.port) {
            if Path::new(s.binary).exists() {
                println!("{}: down on 127.0.0.1:{}; starting it", s.name, s.port);
                let status = Command::new("sh").args(["-c", s.start]).status();
                if !status.is_ok_and(|st| st.success()) {
                    println!("{}: the start command failed", s.name);
                }
                let deadline = Instant::now() + Duration::from_secs(30);
                while !is_up(s.port) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(250));
                }
            } else {
                println!("{}: not installed ({} is missing)", s.name, s.binary);
            }
        }
        if is_up(s.port) {
            println!("{}: up on 127.0.0.1:{}", s.name, s.port);
            envs.push((s.env, s.url.to_owned()));
        } else {
            missing.push(s.name);
        }
    }
    match tls_services() {
        Ok(tls) => envs.extend(tls),
        Err(e) => {
            println!("TLS services: {e}");
            missing.push("the TLS Redis and PostgreSQL");
        }
    }
    if let Err(e) = ensure_strace() {
        println!("strace: {e}");
        missing.push("strace (the file store's power-loss test)");
    }
    match redis_cluster() {
        Ok(url) => envs.push(("BYOVA_TEST_REDIS_CLUSTER_URL", url)),
        Err(e) => {
            println!("Redis Cluster: {e}");
            missing.push("the Redis Cluster");
        }
    }
    if !missing.is_empty() {
        let msg = format!("{} could not be reached or started", missing.join(", "));
        if in_ci {
            return Err(format!("{msg}; CI needs every backend service"));
        }
        println!(
            "warning: {msg}; tests for those backends will report that they skipped (but the file store's power-loss test, which fails without strace)"
        );
    }
    Ok(envs)
}
