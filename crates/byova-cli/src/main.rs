//! `byova`: Webex BYOVA tokens from the command line, and a daemon that keeps them fresh.
//!
//! Configuration comes from the Python SDK's `WEBEX_*` variables plus `BYOVA_BASE_URL`,
//! `BYOVA_STORAGE` and `BYOVA_WEBHOOK_SECRET`; flags override the environment. Without
//! `BYOVA_STORAGE`, tokens are kept in files under `$XDG_DATA_HOME/byova` (or
//! `~/.local/share/byova`).
//!
//! Logs go to stderr (`BYOVA_LOG=debug|info|warn|error`; `serve` defaults to `info`; other
//! commands to `error`, so a failing command prints its one line and nothing else).
//!
//! Exit codes: 0 success, 2 bad usage, 3 configuration, 4 storage, 5 not authorized (or
//! re-authorization required, or the org is not registered), 6 Webex or the network,
//! 7 a rejected webhook delivery, 8 the authorization was denied or timed out, 9 the listen
//! address is in use.

#[cfg(feature = "demo")]
mod demo;
mod keeper;
mod progress;
mod proxy;
mod schedule;
mod serve;
mod sink;
mod storage;
mod token;
mod transfer;

use std::io::{IsTerminal, Read};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use byova_async::{AuthorizeOptions, Byova, ByovaConfig, Error, KeyStatus, OrgId, TokenKey};
use byova_core::{EnvSettings, WebhookSecret, oauth::CsrfState};
use clap::{Parser, Subcommand};
use serde_json::json;

/// Webex BYOVA tokens: authorize the Integration, keep per-org Service App tokens, serve webhooks.
#[derive(Parser, Debug)]
#[command(name = "byova", version, about, long_about = None)]
struct Cli {
    /// Token storage URL: memory:, file:///dir, redis://host:port/db?prefix=NAME, postgres://…,
    /// mysql://…, sqlite:///path.db [default: files under ~/.local/share/byova]
    #[arg(long, global = true, env = "BYOVA_STORAGE")]
    storage: Option<String>,
    /// Webex API base URL.
    #[arg(long, global = true, env = "BYOVA_BASE_URL")]
    base_url: Option<String>,
    /// Allow a plain http:// base URL on a host that is not loopback (secrets then cross the
    /// network in clear text; for a test network only).
    #[arg(long, global = true, env = "BYOVA_ALLOW_INSECURE_HTTP", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    allow_insecure_http: bool,
    /// Allow a plain redis:// store on a host that is not loopback (tokens then cross the
    /// network in clear text; for a network you trust only).
    #[arg(long, global = true, env = "BYOVA_ALLOW_INSECURE_STORAGE", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    allow_insecure_storage: bool,
    /// Token-endpoint calls a minute that every process sharing the store may make together,
    /// under Webex's rate limit; 0 turns the budget off [default: 240].
    #[arg(long, global = true, env = "BYOVA_MAX_TOKEN_CALLS_PER_MINUTE", value_name = "CALLS")]
    max_token_calls_per_minute: Option<u32>,
    /// Seconds during which 401s on a token renew nothing once a request retried with a
    /// renewed token was refused too (Webex caps a user's live tokens at about 750; every
    /// refresh mints one); doubles while it repeats; 0 turns it off [default: 600].
    #[arg(long, global = true, env = "BYOVA_REJECTION_COOLDOWN", value_name = "SECONDS")]
    rejection_cooldown: Option<u64>,
    /// Where tokens from Webex are kept on this host until a shared store (Redis, SQL)
    /// confirmed them, replayed at the next start; `off` for none [default: a directory per
    /// store under $XDG_STATE_HOME/byova/journal].
    #[arg(long, global = true, env = "BYOVA_JOURNAL", value_name = "DIR")]
    journal: Option<String>,
    /// Print JSON for scripts instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Authorize the Integration in a browser (loopback redirect, PKCE) and store its tokens.
    Authorize {
        /// Print the URL instead of opening a browser, then wait for the redirect.
        #[arg(long)]
        no_browser: bool,
        /// Seconds to wait for the redirect.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Scopes to request, comma-separated [default: the four BYOVA scopes].
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
        /// For a redirect URI you serve yourself (WEBEX_INTEGRATION_REDIRECT_URI): keep the PKCE
        /// verifier in the storage for ten minutes, print the URL and its state, and exit.
        /// Finish with --code-file and --state, from any process sharing the storage.
        #[arg(long, conflicts_with_all = ["no_browser", "code_file"])]
        print_url: bool,
        /// A file holding the code your redirect URI received for a URL from --print-url
        /// (`-` reads stdin).
        #[arg(long, requires = "state")]
        code_file: Option<String>,
        /// The state of that URL.
        #[arg(long, value_parser = secret::<CsrfState>)]
        state: Option<CsrfState>,
        #[arg(long, hide = true, value_parser = on_command_line)]
        code: Option<Hidden>,
    },
    /// Print a valid Integration access token (refreshed when needed) and nothing else.
    Token,
    /// Per-org Service App tokens.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Apply one serviceApp webhook delivery (from a file or stdin).
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Webhook registrations.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Status of the Integration and every org: valid, refresh soon, expired, re-authorization required.
    Status,
    /// Run the daemon: a webhook receiver, a background refresher, and /healthz, /status and
    /// /metrics on a separate admin address.
    Serve {
        /// Address to receive webhooks on (POST /webhook only).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Address for operators: GET /healthz, /status (org ids and expiry) and /metrics
        /// (Prometheus). Keep it off the public network.
        #[arg(long, default_value = "127.0.0.1:8089")]
        admin_listen: String,
        /// Connections open at once on the public address; beyond it, accepting pauses.
        #[arg(long, default_value_t = 256)]
        max_connections: usize,
        /// Seconds between full resyncs of the refresh schedule with the store (what other
        /// replicas and tools changed); between them the refresher sleeps until the next
        /// token is due.
        #[arg(long, default_value_t = 600, alias = "refresh-interval")]
        resync_interval: u64,
        /// Orgs refreshed at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Accept deliveries without a verified X-Spark-Signature (only for webhooks created
        /// without a secret; anyone who can reach the port could then register or remove orgs).
        #[arg(long)]
        allow_unsigned: bool,
        /// A file holding the webhook secret(s) [default: BYOVA_WEBHOOK_SECRET]: the current
        /// one first, then the previous one during a rotation (one per line or comma-separated).
        #[arg(long)]
        secret_file: Option<String>,
        /// A file holding the bearer token the admin listener asks for (`Authorization: Bearer
        /// …`); required when --admin-listen is not a loopback address.
        #[arg(long)]
        admin_token_file: Option<String>,
        /// Label a gauge in /metrics with each key (customer org ids then reach whoever scrapes).
        #[arg(long)]
        metrics_per_key: bool,
        /// Serve valid tokens to local programs (repeatable): `unix:PATH` (a socket created
        /// 0660) or a loopback `IP:PORT` (with --token-secret-file). GET /v1/integration/token
        /// and /v1/orgs/{org}/token, optional ?min_valid=SECONDS.
        #[arg(long, value_name = "unix:PATH|IP:PORT")]
        token_listen: Vec<String>,
        /// The group a token socket is given (a name or a numeric id), so its members connect.
        #[arg(long, value_name = "GROUP")]
        token_socket_group: Option<String>,
        /// A file holding the shared secret a TCP token listener and the proxy ask for
        /// (`Authorization: Bearer …`); required for them.
        #[arg(long)]
        token_secret_file: Option<String>,
        /// Let a TCP token listener take an address that is not loopback (tokens then cross
        /// the network in clear).
        #[arg(long)]
        token_allow_remote: bool,
        /// Forward requests to the Webex API with the bearer attached (a loopback `IP:PORT`,
        /// with --token-secret-file): apps call http://IP:PORT/v1/… with `Authorization:
        /// Bearer <the secret>` and `X-Byova-Org: ORG` (the Integration's token without it); a
        /// 401 renews the token once.
        #[arg(long, value_name = "IP:PORT")]
        proxy_listen: Option<String>,
        #[command(flatten)]
        sinks: Box<SinkArgs>,
        #[command(flatten)]
        data_source: Box<DataSourceArgs>,
    },
    /// Bring every token up to date (refreshing what is due) and write the sinks, then exit:
    /// for init containers and cron. Exits non-zero (with the class's code) when a key could
    /// not be brought up to date.
    Sync {
        #[command(flatten)]
        sinks: SinkArgs,
    },
    /// Webex's side of the call: the JWS Webex sends with every request to a gateway.
    #[command(subcommand)]
    Jws(JwsCommand),
    /// An org's data sources (`/v1/dataSources`): what points Webex at the gateway.
    #[command(subcommand)]
    Datasource(DatasourceCommand),
    /// Walk through the whole lifecycle against a local fake Webex (no credentials, no network;
    /// in a binary built with the `demo` feature).
    Demo,
}

/// The data source `serve` keeps for every registered org.
#[derive(clap::Args, Debug)]
struct DataSourceArgs {
    /// Keep every registered org's data source at this https:// URL registered, and its token
    /// extended before it lapses (Webex stops calling the gateway for an org whose token lapsed).
    #[arg(long, value_name = "URL")]
    data_source_url: Option<String>,
    /// The data source's schema id [default: BYOVA's].
    #[arg(long, value_name = "ID", requires = "data_source_url")]
    data_source_schema: Option<String>,
    /// How long each token Webex issues for the data source lives (1-1440 minutes).
    #[arg(long, value_name = "N", default_value_t = 1440)]
    data_source_lifetime_minutes: u32,
    /// Remove an org's data source from Webex when a deauthorized delivery removes the org.
    #[arg(long, requires = "data_source_url")]
    data_source_remove_on_deauthorize: bool,
    /// /v1/dataSources calls every replica sharing the store may make a minute (0: no budget,
    /// and a 429 then holds back only the call that met it).
    #[arg(long, value_name = "N", default_value_t = 240)]
    data_source_calls_per_minute: u32,
}

impl DataSourceArgs {
    /// The data source to keep, when one is asked for.
    fn spec(&self) -> Result<Option<byova_core::datasource::DataSourceSpec>, Failure> {
        let Some(url) = &self.data_source_url else { return Ok(None) };
        let mut spec = byova_core::datasource::DataSourceSpec::new(url)
            .and_then(|spec| spec.with_lifetime_minutes(self.data_source_lifetime_minutes))
            .map_err(|e| failure(3, format!("--data-source-url / --data-source-lifetime-minutes: {e}")))?;
        if let Some(schema) = &self.data_source_schema {
            spec =
                spec.with_schema_id(schema).map_err(|e| failure(3, format!("--data-source-schema: {e}")))?;
        }
        Ok(Some(spec))
    }
}

/// Where tokens are written for other programs, and what runs after.
#[derive(clap::Args, Debug)]
struct SinkArgs {
    /// Write every key's token to a file (repeatable), replaced atomically at every rotation:
    /// `file:///run/byova/{org}.json?format=json|env|raw&mode=0640` (`{org}` is the org id, or
    /// `integration`).
    #[arg(long, value_name = "TEMPLATE")]
    sink: Vec<String>,
    /// A program (and its arguments, split on spaces, no shell) run after a key's sink files
    /// are current, with BYOVA_KEY and BYOVA_SINK_PATH in its environment (never the token).
    #[arg(long, value_name = "COMMAND")]
    on_rotate: Option<String>,
    /// Seconds a rotation hook may run before it is killed (a failure, not retried).
    #[arg(long, default_value_t = 30)]
    on_rotate_timeout: u64,
}

impl SinkArgs {
    fn parse(&self) -> Result<(Vec<sink::Sink>, Option<sink::Hook>), Failure> {
        let sinks = self.sink.iter().map(|s| sink::Sink::parse(s)).collect::<Result<Vec<_>, _>>()?;
        let hook = self
            .on_rotate
            .as_deref()
            .map(|c| sink::Hook::parse(c, Duration::from_secs(self.on_rotate_timeout.max(1))))
            .transpose()?;
        if hook.is_some() && sinks.is_empty() {
            return Err(failure(
                3,
                "--on-rotate runs after sink files are written: give at least one --sink",
            ));
        }
        Ok((sinks, hook))
    }
}

#[derive(Subcommand, Debug)]
enum OrgCommand {
    /// Register an org from an existing Service App refresh token.
    Register {
        /// The org id (a UUID, or a base64 Webex id).
        org: OrgId,
        /// A file holding the Service App refresh token (`-` reads stdin); or set
        /// BYOVA_REFRESH_TOKEN.
        #[arg(long)]
        refresh_token_file: Option<String>,
        #[arg(long, hide = true, value_parser = on_command_line)]
        refresh_token: Option<Hidden>,
    },
    /// Fetch new tokens for an org with the Integration's bearer.
    Fetch {
        /// The org id (a UUID, or a base64 Webex id).
        org: OrgId,
    },
    /// Print a valid access token for an org and nothing else.
    Token {
        /// The org id (a UUID, or a base64 Webex id).
        org: OrgId,
    },
    /// List registered orgs with expiry and status.
    List,
    /// Remove an org's tokens.
    Remove {
        /// The org id (a UUID, or a base64 Webex id).
        org: OrgId,
    },
    /// Write every stored record (the Integration's and each org's) as JSON lines to FILE
    /// (`-`: stdout). The file holds secrets and is created readable by its owner only.
    Export {
        /// Where to write.
        file: String,
    },
    /// Store the records of an export (or of converted Python SDK token dicts) from FILE
    /// (`-`: stdin); a record replaces a stored one only when it is newer. Safe to repeat.
    Import {
        /// What to read.
        file: String,
    },
    /// Write every record again under the current storage key (BYOVA_STORAGE_KEY's first),
    /// marked ones included, so a key rotation can finish; records no configured key opens
    /// are reported. Exits 4 if any could not be rewritten.
    Reseal,
    /// Refresh every org now, honouring Retry-After. Tokens obtained in the last 10 minutes
    /// are left as they are (each refresh mints a token Webex counts against a per-user cap).
    RefreshAll {
        /// Orgs refreshed at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Refresh tokens obtained moments ago too.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum DatasourceCommand {
    /// Register the org's data source for URL, update it when it differs, or extend its token
    /// when due (with a fresh nonce); prints what was done and when the token expires. `busy`
    /// (another process sharing the store is at it) exits 0; `deferred` (the data-source budget
    /// has no room, or Webex answered 429; nothing was sent) exits 6.
    Ensure {
        /// The org id (a UUID, or a base64 Webex id).
        org: OrgId,
        /// Where Webex calls the gateway (https://).
        #[arg(long)]
        url: String,
        /// The data-source schema [default: BYOVA's, 5397013b-7920-4ffc-807c-e8a3e0a18f43].
        #[arg(long)]
        schema: Option<String>,
        /// How long each token Webex issues for it lives, 1 to 1,440 minutes.
        #[arg(long, default_value_t = 1440)]
        lifetime_minutes: u32,
    },
    /// The org's data sources.
    List {
        /// The org id.
        org: OrgId,
    },
}

#[derive(Subcommand, Debug)]
enum JwsCommand {
    /// Verify a JWS read from stdin (a gateway's bearer, with or without `Bearer `): prints its
    /// verified claims as JSON, or one line naming why it was refused (exit 7). Needs no
    /// credentials: it fetches only the trusted issuer's public keys.
    Verify {
        /// The data source's URL, as registered with Webex (`com.cisco.datasource.url`).
        #[arg(long)]
        data_source_url: String,
        /// The data-source schema [default: BYOVA's, 5397013b-7920-4ffc-807c-e8a3e0a18f43].
        #[arg(long)]
        schema: Option<String>,
        /// An identity broker to trust (repeatable) instead of Webex's production and test
        /// brokers of every region.
        #[arg(long = "trusted-issuer", value_name = "URL")]
        trusted_issuers: Vec<String>,
        /// Seconds of clock skew forgiven on exp and nbf (at most 300).
        #[arg(long, default_value_t = 30)]
        leeway: u64,
    },
}

#[derive(Subcommand, Debug)]
enum WebhookCommand {
    /// Verify and apply one delivery.
    Handle {
        /// The raw delivery body; `-` or nothing reads stdin.
        file: Option<String>,
        /// The X-Spark-Signature header value.
        #[arg(long)]
        signature: Option<String>,
        /// A file holding the webhook secret [default: BYOVA_WEBHOOK_SECRET]; during a rotation
        /// the current and the previous one, one per line or comma-separated.
        #[arg(long)]
        secret_file: Option<String>,
        /// Apply the delivery without a verified signature when no secret is set (for webhooks
        /// created without one).
        #[arg(long)]
        allow_unsigned: bool,
        #[arg(long, hide = true, value_parser = on_command_line)]
        secret: Option<Hidden>,
    },
}

#[derive(Subcommand, Debug)]
enum WebhooksCommand {
    /// Create the serviceApp authorized/deauthorized webhooks for URL unless they exist.
    Ensure {
        /// Where Webex should deliver.
        url: String,
        /// A file holding the secret deliveries are to be signed with (`-` reads stdin)
        /// [default: BYOVA_WEBHOOK_SECRET, whose first entry is the current secret]; webhooks
        /// signed with another one are moved to it.
        #[arg(long)]
        secret_file: Option<String>,
        /// Create the webhooks without a secret when none is set. Unsafe: anyone who can reach
        /// the receiver could then register or remove orgs.
        #[arg(long)]
        unsigned: bool,
        #[arg(long, hide = true, value_parser = on_command_line)]
        secret: Option<Hidden>,
    },
}

/// That a secret was given on the command line (its value is not kept).
#[derive(Clone, Debug)]
struct Hidden;

/// The value parser of a flag that would put a secret in `/proc/PID/cmdline`: the value is
/// dropped unseen (clap would echo it in a parse error), and [`refuse_secret_flags`] refuses
/// the command, saying where the secret goes instead.
fn on_command_line(_: &str) -> Result<Hidden, String> {
    Ok(Hidden)
}

/// Fails when a secret was given on the command line.
fn refuse_secret_flags(command: &Command) -> Result<(), Failure> {
    let instead = match command {
        Command::Authorize { code: Some(_), .. } => "--code-file PATH (- reads stdin)",
        Command::Org(OrgCommand::Register { refresh_token: Some(_), .. }) => {
            "--refresh-token-file PATH (- reads stdin) or BYOVA_REFRESH_TOKEN"
        }
        Command::Webhook(WebhookCommand::Handle { secret: Some(_), .. })
        | Command::Webhooks(WebhooksCommand::Ensure { secret: Some(_), .. }) => {
            "--secret-file PATH (- reads stdin) or BYOVA_WEBHOOK_SECRET"
        }
        _ => return Ok(()),
    };
    Err(failure(
        3,
        format!(
            "secrets are not taken on the command line, where every local user can read them \
             (/proc/PID/cmdline, ps); use {instead}"
        ),
    ))
}

/// Reads a secret from `path` (`-` = stdin), trimmed; `what` names it in errors.
fn read_secret(path: &str, what: &str) -> Result<String, Failure> {
    let mut text = String::new();
    let read = if path == "-" {
        std::io::stdin().read_to_string(&mut text).map(drop)
    } else {
        std::fs::read_to_string(path).map(|t| text = t)
    };
    read.map_err(|e| failure(3, format!("cannot read the {what} from {path}: {e}")))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(failure(3, format!("the {what} file {path} is empty")));
    }
    Ok(text.to_owned())
}

/// Parses a command-line value straight into a secret type, so the parsed command's `Debug`
/// never shows it.
fn secret<T: From<String>>(value: &str) -> Result<T, String> {
    let value = value.trim();
    if value.is_empty() { Err("must not be empty".into()) } else { Ok(T::from(value.to_owned())) }
}

/// A failure with its exit code and one line for stderr (which names no secret).
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Listen { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse => 9,
            Error::Configuration(_) | Error::Listen { .. } => 3,
            Error::Storage(_) => 4,
            Error::NotAuthorized
            | Error::OrgNotRegistered { .. }
            | Error::ReauthorizationRequired { .. }
            | Error::NoRefreshToken { .. }
            | Error::Authentication(_)
            | Error::ServiceAppNotAuthorized { .. } => 5,
            Error::WebhookSignature(_) | Error::InvalidInput(_) => 7,
            Error::OAuthRedirect { .. }
            | Error::OAuthRedirectTimeout(_)
            | Error::UnknownAuthorizationState => 8,
            _ => 6,
        };
        Failure { code, message: e.to_string() }
    }
}

impl From<byova_core::StorageError> for Failure {
    fn from(e: byova_core::StorageError) -> Self {
        Failure { code: 4, message: e.to_string() }
    }
}

pub(crate) fn failure(code: u8, message: impl Into<String>) -> Failure {
    Failure { code, message: message.into() }
}

type Outcome = Result<(), Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon reports what it does; a one-shot command's outcome is its output or its one
    // error line.
    let default_level = if matches!(cli.command, Command::Serve { .. }) { "info" } else { "error" };
    let log_level = std::env::var("BYOVA_LOG").unwrap_or_else(|_| default_level.into());
    let level = log_level.parse::<tracing::Level>().unwrap_or(tracing::Level::WARN);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("byova: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("byova: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn run(cli: Cli) -> Outcome {
    refuse_secret_flags(&cli.command)?;
    if let Command::Demo = &cli.command {
        #[cfg(feature = "demo")]
        return demo::run(cli.json).await;
        #[cfg(not(feature = "demo"))]
        return Err(failure(
            2,
            "this byova was built without the demo, so that the binary a provider installs carries no \
             fake Webex server: in the repository, run `cargo run --release --bin byova --features demo -- demo`; \
             or install with `cargo install byova-cli --features demo`",
        ));
    }
    if let Command::Jws(JwsCommand::Verify { data_source_url, schema, trusted_issuers, leeway }) =
        &cli.command
    {
        return jws_verify(data_source_url, schema.as_deref(), trusted_issuers, *leeway).await;
    }
    let byova = connect(&cli).await?;
    match cli.command {
        Command::Authorize { print_url: true, scopes, .. } => {
            let scopes: Option<Vec<&str>> = scopes.as_ref().map(|s| s.iter().map(String::as_str).collect());
            let byova_core::AuthorizationUrl { url, state, .. } =
                byova.integration().start_authorization(scopes.as_deref(), None).await?;
            print_line(cli.json, json!({"url": url, "state": state}), || {
                format!("{url}\nstate: {state}\nthen: byova authorize --code-file FILE --state {state}")
            });
        }
        Command::Authorize { code_file: Some(file), state: Some(state), .. } => {
            let code = read_secret(&file, "authorization code")?;
            let tokens = byova.integration().exchange_code_for_state(&code, state.expose_secret()).await?;
            print_line(
                cli.json,
                json!({"authorized": true, "expires_at_ms": tokens.expires_at().as_unix_millis()}),
                || format!("Authorized. The access token expires at {}.", when(tokens.expires_at())),
            );
        }
        Command::Authorize { state: Some(_), .. } => {
            return Err(failure(3, "--state goes with --code-file (the code your redirect URI received)"));
        }
        Command::Authorize { no_browser, timeout, scopes, .. } => {
            let mut options = AuthorizeOptions::default().with_timeout(Duration::from_secs(timeout));
            if no_browser {
                options = options.without_browser();
            }
            if let Some(scopes) = scopes {
                options = options.with_scopes(scopes);
            }
            let tokens = byova.integration().authorize(options).await?;
            print_line(
                cli.json,
                json!({"authorized": true, "expires_at_ms": tokens.expires_at().as_unix_millis()}),
                || format!("Authorized. The access token expires at {}.", when(tokens.expires_at())),
            );
        }
        Command::Token => {
            let token = byova.integration().get_access_token().await?;
            println!("{}", token.expose_secret());
        }
        Command::Org(cmd) => org(&byova, cmd, cli.json).await?,
        Command::Webhook(WebhookCommand::Handle { file, signature, .. }) => {
            let body = read_body(file.as_deref())?;
            let outcome = byova.handle_service_app_webhook(&body, signature.as_deref()).await?;
            print_line(cli.json, json!({"outcome": outcome.as_str(), "org_id": outcome.org_id()}), || {
                format!("{} {}", outcome.as_str(), outcome.org_id().map_or("", |org| org.as_str()))
            });
        }
        Command::Webhooks(WebhooksCommand::Ensure { url, .. }) => {
            // The secret (or the explicit --unsigned) was taken by `connect`.
            let changed = byova.ensure_service_app_webhooks(&url, None).await?;
            print_line(
                cli.json,
                json!({"changed": changed.iter().map(|w| &w.id).collect::<Vec<_>>()}),
                || format!("{} webhook(s) created or updated for {url}", changed.len()),
            );
        }
        Command::Datasource(DatasourceCommand::Ensure { org, url, schema, lifetime_minutes }) => {
            let mut spec = byova_core::datasource::DataSourceSpec::new(&url)
                .and_then(|spec| spec.with_lifetime_minutes(lifetime_minutes))
                .map_err(|e| failure(3, e.to_string()))?;
            if let Some(schema) = schema {
                spec = spec.with_schema_id(&schema).map_err(|e| failure(3, format!("--schema: {e}")))?;
            }
            let outcome = byova.ensure_data_source(&org, &spec).await?;
            let action = match outcome.action {
                byova_core::datasource::DataSourceAction::Kept => "up to date",
                other => other.as_str(),
            };
            let (id, expiry) = match &outcome.data_source {
                Some(ds) => (Some(ds.id.as_str()), outcome.expires_at.map(byova_core::Timestamp::to_rfc3339)),
                None => (None, None),
            };
            let line = json!({"action": action, "id": id, "url": spec.url, "token_expiry_time": expiry,
                              "next_check": outcome.next_check.to_rfc3339()});
            if outcome.action == byova_core::datasource::DataSourceAction::Deferred {
                if cli.json {
                    println!("{line}");
                }
                return Err(failure(
                    6,
                    format!(
                        "deferred: the data-source budget has no room, or Webex answered 429; nothing was sent; \
                         try again after {}",
                        outcome.next_check.to_rfc3339()
                    ),
                ));
            }
            print_line(cli.json, line, || match (id, outcome.action) {
                (_, byova_core::datasource::DataSourceAction::Busy) => format!(
                    "busy: another process is registering or extending the data source for {}; look again after {}",
                    spec.url,
                    outcome.next_check.to_rfc3339()
                ),
                (id, _) => format!(
                    "{action}: data source {} for {} (token expires {})",
                    id.unwrap_or("-"),
                    spec.url,
                    expiry.as_deref().unwrap_or("unknown")
                ),
            });
        }
        Command::Datasource(DatasourceCommand::List { org }) => {
            for ds in byova.list_data_sources(&org).await? {
                print_line(
                    cli.json,
                    json!({"id": ds.id, "url": ds.url, "schema_id": ds.schema_id, "status": ds.status,
                           "token_expiry_time": ds.token_expiry_time}),
                    || {
                        format!(
                            "{}\t{}\t{}\t{}",
                            ds.id,
                            ds.url,
                            ds.status,
                            ds.token_expiry_time.as_deref().unwrap_or("-")
                        )
                    },
                );
            }
        }
        Command::Sync { sinks } => {
            let (sinks, hook) = sinks.parse()?;
            sink::sync(Arc::new(byova), sinks, hook).await?;
        }
        Command::Status => {
            let report = byova.status_report().await?;
            print_statuses(&report.keys, cli.json);
            report_unreadable(&report);
        }
        Command::Serve {
            listen,
            admin_listen,
            resync_interval,
            concurrency,
            max_connections,
            admin_token_file,
            metrics_per_key,
            token_listen,
            token_socket_group,
            token_secret_file,
            token_allow_remote,
            proxy_listen,
            sinks,
            data_source,
            ..
        } => {
            let (sinks, on_rotate) = sinks.parse()?;
            let data_source = data_source.spec()?;
            let admin_token = admin_token_file
                .map(|file| read_secret(&file, "admin token").map(byova_core::SharedSecret::new))
                .transpose()?;
            let token_listen =
                token_listen.iter().map(|l| token::TokenListen::parse(l)).collect::<Result<Vec<_>, _>>()?;
            let token_secret = token_secret_file
                .map(|file| read_secret(&file, "token secret").map(byova_core::SharedSecret::new))
                .transpose()?;
            let token_socket_group = token_socket_group.as_deref().map(token::group_id).transpose()?;
            let options = serve::Options {
                resync: Duration::from_secs(resync_interval.max(1)),
                concurrency,
                limits: serve::Limits { max_connections },
                admin_token,
                metrics_per_key,
                token_listen,
                token_socket_group,
                token_secret,
                token_allow_remote,
                proxy_listen,
                sinks,
                on_rotate,
                data_source,
            };
            serve::run(Arc::new(byova), &listen, &admin_listen, options).await?;
        }
        Command::Demo | Command::Jws(_) => {}
    }
    Ok(())
}

/// `byova jws verify`: the token from stdin, its claims as JSON on stdout, or the reason.
async fn jws_verify(url: &str, schema: Option<&str>, issuers: &[String], leeway: u64) -> Outcome {
    use byova_async::jws::{JwsPolicy, JwsVerifier};
    let mut policy = JwsPolicy::new(url)?.with_leeway(Duration::from_secs(leeway));
    if let Some(schema) = schema {
        policy = policy.with_schema_id(schema);
    }
    if !issuers.is_empty() {
        policy = policy.with_trusted_issuers(issuers)?;
    }
    let mut input = String::new();
    // Read one byte past the longest token (and its `Bearer ` and newline), to tell a token too
    // long from one cut short.
    let limit = byova_core::jws::MAX_TOKEN_BYTES as u64 + 64;
    std::io::stdin()
        .take(limit + 1)
        .read_to_string(&mut input)
        .map_err(|e| failure(3, format!("cannot read the token from stdin: {e}")))?;
    if input.len() as u64 > limit {
        return Err(failure(7, format!("the JWS is refused: {}", byova_core::jws::JwsError::TooLarge)));
    }
    let token = input.trim();
    let token = token.strip_prefix("Bearer ").or_else(|| token.strip_prefix("bearer ")).unwrap_or(token);
    let verifier = JwsVerifier::new(policy)?;
    let claims = verifier.verify(token).await.map_err(|e| failure(7, format!("the JWS is refused: {e}")))?;
    println!("{}", serde_json::to_string_pretty(&claims).unwrap_or_default());
    Ok(())
}

/// Builds the SDK from the environment and flags.
async fn connect(cli: &Cli) -> Result<Byova, Failure> {
    let allow_insecure_http = cli.allow_insecure_http;
    let mut env = EnvSettings::from_lookup(|name| match name {
        byova_core::env::ALLOW_INSECURE_HTTP if allow_insecure_http => Some("1".into()),
        _ => std::env::var(name).ok(),
    })?;
    if let Some(url) = &cli.base_url {
        let mut config = if cli.allow_insecure_http {
            ByovaConfig::with_insecure_base_url(url)?
        } else {
            ByovaConfig::with_base_url(url)?
        };
        config.timeout = env.config.timeout;
        config.storage_timeout = env.config.storage_timeout;
        config.token_budget = env.config.token_budget.take();
        env.config = config;
    }
    if let Some(secs) = cli.rejection_cooldown {
        env.config.refresh.rejection_cooldown = Duration::from_secs(secs);
    }
    if let Command::Org(OrgCommand::RefreshAll { force: true, .. }) = &cli.command {
        env.config.refresh.forced_refresh_floor = Duration::ZERO;
    }
    if let Some(calls) = cli.max_token_calls_per_minute {
        env.config.token_budget = (calls > 0).then(|| byova_core::TokenBudget::per_minute(calls));
    }
    if let Command::Serve { data_source, .. } = &cli.command {
        let calls = data_source.data_source_calls_per_minute;
        env.config.data_source_budget = (calls > 0).then(|| byova_core::TokenBudget::per_minute(calls));
        if data_source.data_source_remove_on_deauthorize {
            env.config.remove_data_source_on_deauthorize = data_source.spec()?;
        }
    }
    let (secrets, allow_unsigned) = webhook_settings(&cli.command, env.webhook_secrets.clone())?;
    let url = cli.storage.clone().unwrap_or_else(storage::default_url);
    let from_environment = std::env::var("BYOVA_STORAGE").is_ok_and(|v| v == url);
    if !from_environment && storage::has_password(&url) {
        return Err(failure(
            3,
            "--storage holds a password, which every local user could read on the command line: set BYOVA_STORAGE instead",
        ));
    }
    storage::check_plaintext_redis(&url, cli.allow_insecure_storage).map_err(|e| failure(3, e))?;
    let store = storage::with_journal(storage::open(&url).await?, &url, cli.journal.as_deref()).await?;
    let builder = Byova::builder(env.integration, env.service_app).config(env.config).storage(store);
    let builder = match env.storage_keys {
        Some(keys) => builder.storage_keys(keys),
        None => builder,
    };
    let builder = if env.require_sealed { builder.require_sealed_storage() } else { builder };
    let builder = if allow_unsigned { builder.allow_unsigned_webhooks() } else { builder };
    Ok(builder.webhook_secrets(secrets).build()?)
}

/// The webhook secrets a command verifies or signs with (its `--secret-file`, else
/// `BYOVA_WEBHOOK_SECRET`) and whether it allows unsigned webhooks by name. Rule 12: a list
/// that holds no secret is refused, and so is a daemon or a registration without any secret
/// unless `--allow-unsigned` / `--unsigned` says so.
fn webhook_settings(
    command: &Command,
    from_env: Vec<WebhookSecret>,
) -> Result<(Vec<WebhookSecret>, bool), Failure> {
    let from_file = |file: &str| -> Result<Vec<WebhookSecret>, Failure> {
        let text = read_secret(file, "webhook secret")?;
        Ok(byova_core::webhook::parse_webhook_secrets(&text, &format!("the webhook secret file {file}"))?)
    };
    match command {
        Command::Webhook(WebhookCommand::Handle { secret_file, file: body, allow_unsigned, .. }) => {
            let secrets = match secret_file {
                Some(file) if file == "-" && body.as_deref().is_none_or(|b| b == "-") => {
                    return Err(failure(
                        3,
                        "stdin cannot hold both the delivery and the secret: give one of them as a file",
                    ));
                }
                Some(file) => from_file(file)?,
                None => from_env,
            };
            Ok((secrets, *allow_unsigned))
        }
        Command::Serve { secret_file, allow_unsigned, .. } => {
            let secrets = match secret_file {
                Some(file) => from_file(file)?,
                None => from_env,
            };
            if secrets.is_empty() && !allow_unsigned {
                return Err(failure(
                    3,
                    "serve verifies webhook signatures: set BYOVA_WEBHOOK_SECRET (or --secret-file) to the secret the \
                     webhooks were created with (or pass --allow-unsigned, unsafe on a reachable port)",
                ));
            }
            Ok((secrets, *allow_unsigned))
        }
        Command::Webhooks(WebhooksCommand::Ensure { secret_file, unsigned, .. }) => {
            let secrets = match secret_file {
                Some(file) => from_file(file)?,
                None => from_env,
            };
            if secrets.is_empty() && !unsigned {
                return Err(failure(
                    3,
                    "webhooks are created with a secret: set BYOVA_WEBHOOK_SECRET (or --secret-file), or pass \
                     --unsigned to create them without one (unsafe: anyone reaching the receiver could remove orgs)",
                ));
            }
            Ok((secrets, *unsigned))
        }
        _ => Ok((from_env, false)),
    }
}

fn read_body(file: Option<&str>) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    match file {
        None | Some("-") => std::io::stdin().read_to_end(&mut body).map(drop),
        Some(path) => std::fs::read(path).map(|b| body = b),
    }
    .map_err(|e| failure(7, format!("cannot read the webhook delivery: {e}")))?;
    Ok(body)
}

async fn org(byova: &Byova, cmd: OrgCommand, as_json: bool) -> Outcome {
    let sa = byova.service_app();
    match cmd {
        OrgCommand::Register { org, refresh_token_file, .. } => {
            let refresh_token = match refresh_token_file {
                Some(file) => read_secret(&file, "refresh token")?,
                None => std::env::var("BYOVA_REFRESH_TOKEN")
                    .ok()
                    .filter(|t| !t.trim().is_empty())
                    .ok_or_else(|| failure(3, "give the refresh token with --refresh-token-file PATH (- reads stdin) or BYOVA_REFRESH_TOKEN"))?,
            };
            let t = sa.save_registration(&org, refresh_token.trim()).await?;
            print_line(
                as_json,
                json!({"org": org, "expires_at_ms": t.expires_at().as_unix_millis()}),
                || format!("Registered org {org}."),
            );
        }
        OrgCommand::Fetch { org } => {
            let t = sa.fetch_token_for_org(&org).await?;
            print_line(
                as_json,
                json!({"org": org, "expires_at_ms": t.expires_at().as_unix_millis()}),
                || format!("Fetched tokens for org {org}; they expire at {}.", when(t.expires_at())),
            );
        }
        OrgCommand::Token { org } => println!("{}", sa.get_access_token(&org).await?.expose_secret()),
        OrgCommand::List => {
            let report = byova.status_report().await?;
            let orgs: Vec<KeyStatus> =
                report.keys.iter().filter(|s| matches!(s.key, TokenKey::Org(_))).cloned().collect();
            print_statuses(&orgs, as_json);
            report_unreadable(&report);
        }
        OrgCommand::Reseal => reseal(byova, as_json).await?,
        OrgCommand::Remove { org } => {
            sa.remove_org(&org).await?;
            print_line(as_json, json!({"removed": org}), || format!("Removed org {org}."));
        }
        OrgCommand::RefreshAll { concurrency, .. } => refresh_all(byova, concurrency, as_json).await?,
        OrgCommand::Export { file } => {
            transfer::export(byova.integration().storage(), &file, as_json).await?
        }
        OrgCommand::Import { file } => {
            transfer::import(byova.integration().storage(), &file, as_json).await?
        }
    }
    Ok(())
}

/// Records that cannot be read, on stderr (the statuses leave them out).
fn report_unreadable(report: &byova_async::StatusReport) {
    if !report.unreadable.is_empty() {
        let keys: Vec<String> = report.unreadable.iter().map(ToString::to_string).collect();
        eprintln!(
            "byova: {} record(s) cannot be read and are left out: {} (an authorized delivery or `org fetch` \
             replaces an org's; `org reseal` rewrites what the configured keys still open)",
            keys.len(),
            keys.join(", ")
        );
    }
}

/// `org reseal`: every record (the Integration's and each org's, marked ones included) read
/// through the configured keys and written again, version-checked, under the current one.
async fn reseal(byova: &Byova, as_json: bool) -> Outcome {
    let storage = byova.integration().storage();
    let mut keys = vec![TokenKey::Integration];
    keys.extend(storage.list_orgs().await?.into_iter().map(TokenKey::Org));
    let (mut rewritten, mut failed) = (0usize, Vec::new());
    for key in keys {
        let result = match storage.load(&key).await {
            Ok(None) => continue,
            Ok(Some(record)) => {
                storage.store(&key, &record.value, byova_core::backend::Expect::Version(record.version)).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => rewritten += 1,
            Err(e) => {
                if as_json {
                    println!(
                        "{}",
                        json!({"key": key.to_string(), "resealed": false, "error": e.to_string()})
                    );
                } else {
                    eprintln!("  {key}: {e}");
                }
                failed.push(key);
            }
        }
    }
    print_line(as_json, json!({"resealed": rewritten, "failed": failed.len()}), || {
        format!("{rewritten} record(s) written again under the current storage key")
    });
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failure(4, format!("{} record(s) could not be resealed (see above)", failed.len())))
    }
}

/// Refreshes every org with bounded concurrency, showing progress: a bar on a terminal, one
/// line per org otherwise.
async fn refresh_all(byova: &Byova, concurrency: usize, as_json: bool) -> Outcome {
    let live = std::io::stderr().is_terminal() && !as_json;
    let progress: Arc<std::sync::Mutex<Option<progress::Progress>>> = Arc::new(std::sync::Mutex::new(None));
    let reporter = progress.clone();
    let results = byova
        .refresh_all_orgs_with_progress(concurrency, move |p| {
            let mut progress = reporter.lock().unwrap_or_else(|e| e.into_inner());
            let progress =
                progress.get_or_insert_with(|| progress::Progress::new("refreshing orgs", p.total, as_json));
            let verb = if p.ok { "refreshed" } else { "failed" };
            progress.step(|| format!("{verb} {}", p.org_id));
        })
        .await?;
    if let Some(progress) = progress.lock().unwrap_or_else(|e| e.into_inner()).take() {
        progress.finish();
    }
    let total = results.len();
    let mut failed = 0;
    for r in &results {
        match &r.result {
            Ok(_) if as_json => println!("{}", json!({"org": r.org_id, "refreshed": true})),
            Err(e) if as_json => {
                println!("{}", json!({"org": r.org_id, "refreshed": false, "error": e.to_string()}))
            }
            Ok(_) => {}
            Err(e) if !live => println!("  {}: {e}", r.org_id),
            Err(e) => eprintln!("failed {}: {e}", r.org_id),
        }
        failed += usize::from(r.result.is_err());
    }
    if failed > 0 {
        return Err(failure(6, format!("{failed} of {total} orgs could not be refreshed")));
    }
    Ok(())
}

/// `2026-05-06 07:08:09 UTC`: core's RFC 3339 form, made for reading.
fn when(t: byova_core::Timestamp) -> String {
    let text = t.to_rfc3339();
    format!("{} UTC", text.get(..19).unwrap_or(&text).replacen('T', " ", 1))
}

pub(crate) fn print_line(as_json: bool, value: serde_json::Value, text: impl FnOnce() -> String) {
    if as_json {
        println!("{value}");
    } else {
        println!("{}", text());
    }
}

pub(crate) fn status_json(s: &KeyStatus) -> serde_json::Value {
    json!({
        "key": s.key.label(),
        "state": s.state.as_str(),
        "access_expires_at_ms": s.access_expires_at.as_unix_millis(),
        "refresh_expires_at_ms": s.refresh_expires_at.map(|t| t.as_unix_millis()),
        "refresh_at_ms": s.refresh_at.map(|t| t.as_unix_millis()),
        "refresh_token_rejected": s.refresh_token_rejected,
        "action": remedy(s),
    })
}

/// What a person must do about a key, when anything.
pub(crate) fn remedy(s: &KeyStatus) -> Option<&'static str> {
    match (&s.key, s.refresh_token_rejected) {
        (TokenKey::Integration, true) => Some("authorize the Integration again: byova authorize"),
        (TokenKey::Org(_), true) => Some(
            "its refresh token was rejected: authorize the Integration (byova fetches the org anew), or register \
             the org again (byova org fetch ORG / org register ORG)",
        ),
        _ => None,
    }
}

fn print_statuses(statuses: &[KeyStatus], as_json: bool) {
    if as_json {
        println!("{}", json!(statuses.iter().map(status_json).collect::<Vec<_>>()));
        return;
    }
    if statuses.is_empty() {
        println!("Nothing stored yet: run `byova authorize`, then register orgs.");
        return;
    }
    println!("{:<44} {:<26} {:<24} REFRESH EXPIRES", "KEY", "STATE", "ACCESS EXPIRES");
    for s in statuses {
        let key = match &s.key {
            TokenKey::Integration => "integration".to_owned(),
            TokenKey::Org(o) => format!("org {o}"),
        };
        let refresh = s.refresh_expires_at.map(when).unwrap_or_else(|| "-".into());
        println!("{key:<44} {:<26} {:<24} {refresh}", s.state.as_str(), when(s.access_expires_at));
        if let Some(remedy) = remedy(s) {
            println!("  {key}: {remedy}");
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    #[test]
    fn parsed_commands_never_show_secrets_in_debug() {
        for args in [
            &["byova", "org", "register", "o1", "--refresh-token", "RT-CANARY"][..],
            &["byova", "webhook", "handle", "-", "--secret", "WH-CANARY"],
            &["byova", "webhooks", "ensure", "https://h.test/x", "--secret", "WH-CANARY"],
            &["byova", "authorize", "--code", "CODE-CANARY", "--state", "STATE-CANARY"],
        ] {
            let parsed = Cli::try_parse_from(args).unwrap();
            assert!(!format!("{parsed:?}").contains("CANARY"), "{parsed:?}");
            let refused = super::refuse_secret_flags(&parsed.command).expect_err("refused").message;
            assert!(!refused.contains("CANARY"), "{refused}");
            assert!(refused.contains("not taken on the command line"), "{refused}");
            assert!(refused.contains("-file PATH"), "{refused}");
        }
        let parsed =
            Cli::try_parse_from(["byova", "authorize", "--code-file", "-", "--state", "STATE-CANARY"]);
        let printed = format!("{:?}", parsed.unwrap());
        assert!(!printed.contains("CANARY") && printed.contains("[redacted]"), "{printed}");
    }
}
