//! Sinks: every key's access token written where other programs read it (`--sink`), each file
//! replaced atomically at start and at every rotation, and a program run after a key's files
//! are current (`--on-rotate`).
//!
//! A sink is a template, `file:///run/byova/{org}.json?format=json&mode=0640`: `{org}` is the
//! org id, or `integration` for the Integration's file; `format` is `json` (the token and its
//! expiry, as the token endpoint answers), `env` (dotenv lines) or `raw` (the token alone);
//! `mode` is the file's (`0600` by default). A file is written to a temporary name in its
//! directory, flushed to disk, renamed over the old one and the directory flushed, so a reader
//! sees the old token or the new one, never a partial or empty file.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use byova_async::core::{Clock, SystemClock, Timestamp};
use byova_async::{AccessToken, Byova, OAuthTokens, TokenKey};

use crate::schedule::StatusBoard;
use crate::{Failure, failure};

/// What a sink file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Env,
    Raw,
}

/// One `--sink`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sink {
    /// The path, with `{org}` where the key goes.
    template: String,
    format: Format,
    mode: u32,
}

impl Sink {
    /// Parses `file:///dir/{org}.json?format=json&mode=0640`.
    pub(crate) fn parse(text: &str) -> Result<Self, Failure> {
        let bad = |why: &str| failure(3, format!("--sink {text:?}: {why}"));
        let rest =
            text.strip_prefix("file://").ok_or_else(|| bad("only file:///PATH sinks are supported"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if !path.starts_with('/') {
            return Err(bad("the path must be absolute (file:///dir/{org}.json)"));
        }
        if !path.contains("{org}") {
            return Err(bad("the path needs {org}, so each key has its own file"));
        }
        let (mut format, mut mode) = (Format::Json, 0o600);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("format", "json")) => format = Format::Json,
                Some(("format", "env")) => format = Format::Env,
                Some(("format", "raw")) => format = Format::Raw,
                Some(("mode", m)) => {
                    mode = u32::from_str_radix(m, 8)
                        .ok()
                        .filter(|m| *m <= 0o777 && m & 0o007 == 0)
                        .ok_or_else(|| bad("mode must be octal, like 0640, with no access for others"))?;
                }
                _ => return Err(bad("only format=json|env|raw and mode=OCTAL are understood")),
            }
        }
        Ok(Sink { template: path.to_owned(), format, mode })
    }

    /// The file for `key`; `None` for an org id that is not a plain file name (a `/`, `..`,
    /// or the Integration's own name), which would write outside the sink's directory or over
    /// another key's file.
    pub(crate) fn path(&self, key: &TokenKey) -> Option<PathBuf> {
        let name = match key.org_id() {
            Some(org) => {
                let org = org.as_str();
                let plain =
                    org.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=');
                if !plain || org == "integration" {
                    return None;
                }
                org.to_owned()
            }
            None => "integration".to_owned(),
        };
        Some(PathBuf::from(self.template.replace("{org}", &name)))
    }

    /// The file's content for `tokens`.
    fn content(&self, tokens: &OAuthTokens) -> Vec<u8> {
        let expires_at = tokens.expires_at();
        let token = tokens.access_token.expose_secret();
        match self.format {
            Format::Json => {
                let mut json = serde_json::json!({
                    "access_token": token,
                    "token_type": "Bearer",
                    "expires_at": expires_at.to_rfc3339(),
                })
                .to_string();
                json.push('\n');
                json.into_bytes()
            }
            Format::Env => {
                format!("BYOVA_ACCESS_TOKEN={token}\nBYOVA_EXPIRES_AT={}\n", expires_at.to_rfc3339())
                    .into_bytes()
            }
            Format::Raw => token.as_bytes().to_vec(),
        }
    }
}

/// Writes `content` to `path` atomically: a temporary file in the same directory, flushed,
/// renamed over `path`, the directory flushed.
pub(crate) fn write_atomically(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary =
        dir.join(format!(".{name}.{}.{:x}.tmp", std::process::id(), byova_async::core::engine::random_u64()));
    let written = (|| {
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(mode & 0o600).open(&temporary)?;
        // The mode asked for, whatever the umask took away (owner-only until now).
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        file.write_all(content)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// `--on-rotate`: a program and its arguments (split on spaces, no shell), run after a key's
/// sink files are current, at most `timeout`.
#[derive(Clone, Debug)]
pub(crate) struct Hook {
    argv: Vec<String>,
    timeout: Duration,
}

impl Hook {
    pub(crate) fn parse(command: &str, timeout: Duration) -> Result<Self, Failure> {
        let argv: Vec<String> = command.split_ascii_whitespace().map(str::to_owned).collect();
        if argv.is_empty() {
            return Err(failure(3, "--on-rotate needs a program"));
        }
        Ok(Hook { argv, timeout })
    }

    /// Runs the hook for `key`, whose files are `paths`, with an environment of its own:
    /// `BYOVA_KEY` and `BYOVA_SINK_PATH` (the first file; `BYOVA_SINK_PATHS` all of them, one
    /// per line), and `PATH`, `HOME`, the locale and the user from the daemon's; never the
    /// token or any other secret. Says whether it exited 0 in time; one that runs too long is
    /// killed (the program itself; what it started is its own).
    async fn run(&self, key: &TokenKey, paths: &[PathBuf]) -> bool {
        let mut command = tokio::process::Command::new(&self.argv[0]);
        // Only what a hook needs: the daemon's environment holds client secrets, the webhook
        // secret and a storage URL that may carry a password.
        command.env_clear();
        for name in ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME"] {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command
            .args(&self.argv[1..])
            .env("BYOVA_KEY", key.label())
            .env("BYOVA_SINK_PATH", paths.first().map(|p| p.as_os_str().to_owned()).unwrap_or_default())
            .env(
                "BYOVA_SINK_PATHS",
                paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join("\n"),
            )
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                tracing::warn!(key = %key, program = %self.argv[0], error = %e, "cannot run the rotation hook");
                return false;
            }
        };
        match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(Ok(status)) if status.success() => true,
            Ok(Ok(status)) => {
                tracing::warn!(key = %key, %status, "the rotation hook failed");
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(key = %key, error = %e, "the rotation hook could not be waited for");
                false
            }
            Err(_) => {
                let _ = child.kill().await;
                tracing::warn!(key = %key, timeout = ?self.timeout, "the rotation hook ran too long; killed");
                false
            }
        }
    }
}

/// What the sink writer reports: to `/metrics` and `/ready`.
#[derive(Default)]
pub(crate) struct SinkState {
    /// Keys whose files could not be written at their last attempt.
    failing: std::sync::Mutex<BTreeSet<TokenKey>>,
    pub(crate) writes: AtomicU64,
    pub(crate) write_failures: AtomicU64,
    pub(crate) hook_runs: AtomicU64,
    pub(crate) hook_failures: AtomicU64,
}

impl SinkState {
    /// Keys whose sink files are not current.
    pub(crate) fn failing(&self) -> Vec<TokenKey> {
        self.failing.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    fn set_failing(&self, key: &TokenKey, failing: bool) {
        let mut set = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        if failing {
            set.insert(key.clone());
        } else {
            set.remove(key);
        }
    }

    /// The Prometheus text of these figures.
    pub(crate) fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "# HELP byova_sink_writes_total Sink files written (atomically).\n# TYPE byova_sink_writes_total counter\n\
             byova_sink_writes_total {}\n\
             # HELP byova_sink_write_failures_total Sink files that could not be written.\n\
             # TYPE byova_sink_write_failures_total counter\nbyova_sink_write_failures_total {}\n\
             # HELP byova_rotation_hook_runs_total Rotation hooks run.\n# TYPE byova_rotation_hook_runs_total counter\n\
             byova_rotation_hook_runs_total {}\n\
             # HELP byova_rotation_hook_failures_total Rotation hooks that failed or ran too long.\n\
             # TYPE byova_rotation_hook_failures_total counter\nbyova_rotation_hook_failures_total {}\n",
            get(&self.writes),
            get(&self.write_failures),
            get(&self.hook_runs),
            get(&self.hook_failures)
        )
    }
}

/// Keeps every key's sink files current.
pub(crate) struct SinkWriter {
    pub(crate) byova: Arc<Byova>,
    pub(crate) sinks: Vec<Sink>,
    pub(crate) hook: Option<Hook>,
    pub(crate) board: Arc<StatusBoard>,
    pub(crate) state: Arc<SinkState>,
    /// The access token each key's files hold now, and when the board said it expires.
    written: BTreeMap<TokenKey, (AccessToken, Timestamp)>,
    /// Keys off the board whose files stay until the store says they are gone: when the
    /// store may be asked about each again (not at every tick: it may be slow or down).
    recheck_at: BTreeMap<TokenKey, Timestamp>,
}

/// How often the writer looks for rotations (the cache answers; the store is read only when
/// the cache revalidates).
pub(crate) const SINK_TICK: Duration = Duration::from_millis(500);

/// How long a key off the board whose record the store still holds (or could not say) waits
/// before the store is asked about it again.
const GONE_RECHECK: Duration = Duration::from_secs(30);

impl SinkWriter {
    pub(crate) fn new(
        byova: Arc<Byova>,
        sinks: Vec<Sink>,
        hook: Option<Hook>,
        board: Arc<StatusBoard>,
        state: Arc<SinkState>,
    ) -> Self {
        Self { byova, sinks, hook, board, state, written: BTreeMap::new(), recheck_at: BTreeMap::new() }
    }

    /// One pass: every key the board knows whose token is valid gets its files rewritten when
    /// its token changed (and the hook run); a key no longer registered loses its files.
    /// Returns how many keys could not be brought up to date.
    ///
    /// The writer never makes a refresh happen: it asks for a key's tokens only when the
    /// board shows a token other than the one written, and only while that token is before
    /// its refresh point (so the cache or the store answers). Renewing is the refresher's,
    /// with its backoff and the shared budget; once it has renewed, the board shows the new
    /// token and the writer follows.
    pub(crate) async fn pass(&mut self) -> usize {
        let Some(statuses) = self.board.snapshot() else { return 0 };
        let now = SystemClock.now();
        let mut behind = 0;
        let keys: BTreeSet<TokenKey> = statuses.iter().map(|s| s.key.clone()).collect();
        for status in &statuses {
            let key = &status.key;
            if self.written.get(key).is_some_and(|(_, expires)| *expires == status.access_expires_at) {
                continue;
            }
            let before_refresh_point = status.refresh_at.is_none_or(|at| at > now);
            if status.access_expires_at <= now || !before_refresh_point {
                // Nothing this writer may ask for without causing a refresh; the refresher
                // works on it (and /ready says so once a token has expired).
                behind += usize::from(status.access_expires_at <= now);
                continue;
            }
            let tokens = match crate::token::valid_tokens(&self.byova, key, Duration::ZERO).await {
                Ok(tokens) => tokens,
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "cannot read the key's token for its sinks");
                    behind += 1;
                    continue;
                }
            };
            if let Some((held, _)) = self.written.get(key)
                && held.ct_eq(&tokens.access_token)
            {
                self.written.insert(key.clone(), (tokens.access_token.clone(), status.access_expires_at));
                continue;
            }
            if self.write(key, &tokens).await {
                self.written.insert(key.clone(), (tokens.access_token.clone(), status.access_expires_at));
                self.state.set_failing(key, false);
                if let Some(hook) = &self.hook {
                    let paths: Vec<_> = self.sinks.iter().filter_map(|s| s.path(key)).collect();
                    self.state.hook_runs.fetch_add(1, Ordering::Relaxed);
                    if !hook.run(key, &paths).await {
                        self.state.hook_failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            } else {
                self.state.set_failing(key, true);
                behind += 1;
            }
        }
        let gone: Vec<TokenKey> = self.written.keys().filter(|k| !keys.contains(*k)).cloned().collect();
        for key in gone {
            // Off the board is not removed (an unreadable record leaves the board too): the
            // files go once the store says the org is gone.
            if self.recheck_at.get(&key).is_some_and(|at| *at > now) {
                continue;
            }
            if let Some(org) = key.org_id()
                && !matches!(self.byova.service_app().status(org).await, Ok(None))
            {
                self.recheck_at.insert(key, now.saturating_add(GONE_RECHECK));
                continue;
            }
            self.recheck_at.remove(&key);
            for path in self.sinks.iter().filter_map(|s| s.path(&key)) {
                if let Err(e) = std::fs::remove_file(&path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(key = %key, file = %path.display(), error = %e, "cannot remove a removed key's sink file");
                }
            }
            self.written.remove(&key);
            self.state.set_failing(&key, false);
        }
        behind
    }

    /// Writes every sink file of `key`; says whether all were written.
    async fn write(&self, key: &TokenKey, tokens: &OAuthTokens) -> bool {
        let mut files: Vec<(PathBuf, Vec<u8>, u32)> = Vec::new();
        for sink in &self.sinks {
            let Some(path) = sink.path(key) else {
                tracing::warn!(key = %key, "the org id is not a plain file name; no sink file is written for it");
                return false;
            };
            files.push((path, sink.content(tokens), sink.mode));
        }
        let state = self.state.clone();
        let key_label = key.to_string();
        tokio::task::spawn_blocking(move || {
            let mut all = true;
            for (path, content, mode) in files {
                match write_atomically(&path, &content, mode) {
                    Ok(()) => {
                        state.writes.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        state.write_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(key = %key_label, file = %path.display(), error = %e, "cannot write a sink file");
                        all = false;
                    }
                }
            }
            all
        })
        .await
        .unwrap_or(false)
    }

    /// Keeps the files current until `stop` resolves.
    pub(crate) async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            self.pass().await;
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(SINK_TICK) => {}
            }
        }
    }
}

/// `byova sync`: every key brought up to date (refreshed when due), every sink file written
/// and the hook run for every key (this process has written none before). The first key that could not be brought up to
/// date decides the exit code (its class's); sink files that could not be written exit 3.
pub(crate) async fn sync(byova: Arc<Byova>, sinks: Vec<Sink>, hook: Option<Hook>) -> Result<(), Failure> {
    let report = byova.status_report().await?;
    let mut first_error = None;
    for status in &report.keys {
        if let Err(e) = crate::token::valid_tokens(&byova, &status.key, Duration::ZERO).await {
            tracing::warn!(key = %status.key, error = %e, "cannot bring the key up to date");
            first_error.get_or_insert(e);
        }
    }
    let board = Arc::new(StatusBoard::default());
    board.resync(&byova).await?;
    let state = Arc::new(SinkState::default());
    let files = sinks.len();
    let mut writer = SinkWriter::new(byova, sinks, hook, board, state.clone());
    writer.pass().await;
    let failing = state.failing();
    println!(
        "byova sync: {} keys; {} files written ({} per key); {} hooks run, {} failed",
        report.keys.len(),
        state.writes.load(Ordering::Relaxed),
        files,
        state.hook_runs.load(Ordering::Relaxed),
        state.hook_failures.load(Ordering::Relaxed)
    );
    if let Some(e) = first_error {
        return Err(e.into());
    }
    if !failing.is_empty() {
        return Err(failure(
            3,
            format!("the sink files of {} keys could not be written (see the log)", failing.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use byova_async::OrgId;
    use byova_async::core::Timestamp;

    #[test]
    fn templates_name_a_file_per_key_and_refuse_what_could_collide_or_leak() {
        let sink = Sink::parse("file:///run/byova/{org}.env?format=env&mode=0640").unwrap();
        assert_eq!(sink.format, Format::Env);
        assert_eq!(sink.mode, 0o640);
        let org = OrgId::from_static("63b02f90-9cc6-43b8-aa6d-cad425ac554c");
        assert_eq!(sink.path(&TokenKey::org(&org)), Some(PathBuf::from(format!("/run/byova/{org}.env"))));
        assert_eq!(sink.path(&TokenKey::Integration), Some(PathBuf::from("/run/byova/integration.env")));
        for unsafe_id in ["../../etc/x", "a/b", "integration", ".."] {
            if let Ok(org) = OrgId::new(unsafe_id) {
                assert_eq!(sink.path(&TokenKey::org(&org)), None, "{unsafe_id}");
            }
        }
        for bad in [
            "/run/{org}.json",
            "file://relative/{org}.json",
            "file:///run/token.json",
            "file:///run/{org}?format=xml",
            "file:///run/{org}?mode=0666",
            "file:///run/{org}?mode=0644",
            "file:///run/{org}?mode=rw",
        ] {
            assert!(Sink::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_format_holds_the_token_and_json_and_env_its_expiry() {
        let tokens = OAuthTokens::new(AccessToken::new("TOKEN-A"), 3600, Timestamp::from_unix_secs(0));
        let json = Sink::parse("file:///x/{org}").unwrap().content(&tokens);
        let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(json["access_token"], "TOKEN-A");
        assert_eq!(json["expires_at"], "1970-01-01T01:00:00.000Z");
        let env = Sink::parse("file:///x/{org}?format=env").unwrap().content(&tokens);
        assert_eq!(env, b"BYOVA_ACCESS_TOKEN=TOKEN-A\nBYOVA_EXPIRES_AT=1970-01-01T01:00:00.000Z\n");
        assert_eq!(Sink::parse("file:///x/{org}?format=raw").unwrap().content(&tokens), b"TOKEN-A");
    }

    #[test]
    fn an_atomic_write_replaces_the_file_with_its_mode_and_leaves_no_temporary() {
        use std::os::unix::fs::PermissionsExt;
        let dir =
            std::env::temp_dir().join(format!("byova-sink-{:x}", byova_async::core::engine::random_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.json");
        write_atomically(&path, b"one", 0o640).unwrap();
        write_atomically(&path, b"two", 0o640).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
        assert!(write_atomically(&dir.join("missing/a.json"), b"x", 0o600).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
