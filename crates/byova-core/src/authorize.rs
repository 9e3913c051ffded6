//! The browser flow's options ([`AuthorizeOptions`], [`RedirectOptions`]) and what the
//! flavours need to open a browser: the system command and the prompt printed instead.

use std::sync::Arc;
use std::time::Duration;

/// An authorization URL and the `state` its redirect must carry back: what
/// `get_authorization_url` and `start_authorization` answer (the Python SDK's `(url, state)`
/// pair, with names).
///
/// Its `Debug` leaves `state` out, as [`CsrfState`](crate::oauth::CsrfState)'s does: with a
/// code, the state redeems the pending authorization from the shared store.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthorizationUrl {
    /// The URL to open in the browser (with `state` and a PKCE S256 challenge).
    pub url: String,
    /// The `state` the redirect must carry back; `exchange_code_for_state` takes it.
    pub state: String,
}

impl std::fmt::Debug for AuthorizationUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizationUrl")
            .field("url", &"[has the state]")
            .field("state", &"[redacted]")
            .finish()
    }
}

/// Opens a URL for the user (a browser). Tests inject one that plays the browser.
pub type BrowserOpener = Arc<dyn Fn(&str) -> std::io::Result<()> + Send + Sync>;

/// Options for `IntegrationTokenManager::authorize`.
#[derive(Clone)]
#[non_exhaustive]
pub struct AuthorizeOptions {
    /// Scopes to request; `None` requests [`DEFAULT_INTEGRATION_SCOPES`](crate::DEFAULT_INTEGRATION_SCOPES).
    pub scopes: Option<Vec<String>>,
    /// Open the authorization URL in a browser; otherwise it is printed to stderr.
    pub open_browser: bool,
    /// How long to wait for the redirect.
    pub timeout: Duration,
    /// The `state` to use; a 128-bit random one by default.
    pub state: Option<String>,
    /// Opens the URL; defaults to the system browser.
    pub browser: Option<BrowserOpener>,
}

impl Default for AuthorizeOptions {
    fn default() -> Self {
        Self {
            scopes: None,
            open_browser: true,
            timeout: Duration::from_secs(300),
            state: None,
            browser: None,
        }
    }
}

impl std::fmt::Debug for AuthorizeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizeOptions")
            .field("scopes", &self.scopes)
            .field("open_browser", &self.open_browser)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl AuthorizeOptions {
    /// Plays the browser with `opener` instead of launching one.
    pub fn with_browser(
        mut self,
        opener: impl Fn(&str) -> std::io::Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.browser = Some(Arc::new(opener));
        self.open_browser = true;
        self
    }

    /// Waits at most `timeout` for the redirect.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Prints the URL instead of opening a browser.
    pub fn without_browser(mut self) -> Self {
        self.open_browser = false;
        self
    }

    /// Requests these scopes.
    pub fn with_scopes(mut self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.scopes = Some(scopes.into_iter().map(Into::into).collect());
        self
    }
}

/// Options for `wait_for_redirect`.
#[derive(Clone)]
#[non_exhaustive]
pub struct RedirectOptions {
    /// How long to wait for the redirect.
    pub timeout: Duration,
    /// Whether to open `authorization_url` in a browser (otherwise it is printed).
    pub open_browser: bool,
    /// The URL to open once the listener is ready.
    pub authorization_url: Option<String>,
    /// The `state` the redirect must carry. Required: byova never accepts a redirect it cannot
    /// tie to its own request.
    pub expected_state: Option<String>,
    /// Opens the URL; defaults to the system browser.
    pub browser: Option<BrowserOpener>,
}

impl Default for RedirectOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            open_browser: true,
            authorization_url: None,
            expected_state: None,
            browser: None,
        }
    }
}

impl RedirectOptions {
    /// The `state` the redirect must carry.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) without one: a redirect that cannot
    /// be tied to its request is refused.
    pub fn required_state(&self) -> crate::Result<crate::oauth::CsrfState> {
        self.expected_state.as_deref().map(crate::oauth::CsrfState::new).ok_or_else(|| {
            crate::Error::InvalidInput(
                "expected_state is required: a redirect that cannot be tied to its request is refused".into(),
            )
        })
    }
}

impl std::fmt::Debug for RedirectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedirectOptions")
            .field("timeout", &self.timeout)
            .field("open_browser", &self.open_browser)
            .finish_non_exhaustive()
    }
}

/// The program (and leading arguments) that opens a URL in the user's browser on this OS; the
/// URL goes last, as one argument. The flavours spawn it.
pub fn system_browser_command() -> (&'static str, &'static [&'static str]) {
    browser_command_for(std::env::consts::OS)
}

/// The command that opens `url` in the system browser ([`system_browser_command`]), to run
/// as it is: the launcher gets only a desktop session's variables out of `vars` (see
/// [`browser_environment`]), none of this process's secrets, and its output is discarded.
/// Building it runs nothing.
pub fn browser_launch(url: &str, vars: impl IntoIterator<Item = (String, String)>) -> std::process::Command {
    let (program, args) = system_browser_command();
    let mut command = std::process::Command::new(program);
    command
        .env_clear()
        .envs(browser_environment(vars))
        .args(args)
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    command
}

/// [`system_browser_command`] for `os` (a `std::env::consts::OS` value). No shell sees the
/// URL: on Windows `cmd /C start` would cut it at the first `&` (the authorization URL has
/// several), so the URL goes to the shell's URL handler through `rundll32`.
pub fn browser_command_for(os: &str) -> (&'static str, &'static [&'static str]) {
    match os {
        "macos" => ("open", &[]),
        "windows" => ("rundll32", &["url.dll,FileProtocolHandler"]),
        _ => ("xdg-open", &[]),
    }
}

/// The environment the browser launcher is started with: what a desktop session needs to
/// show a window and find the user's browser, and nothing else. The parent's environment holds
/// client secrets, `BYOVA_STORAGE_KEY`, storage URLs with passwords, and whatever else the
/// operator exported; a browser (and every helper it starts) has no business with them.
pub fn browser_environment(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    const KEEP: [&str; 22] = [
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "DISPLAY",
        "WAYLAND_DISPLAY",
        "XAUTHORITY",
        "DBUS_SESSION_BUS_ADDRESS",
        "BROWSER",
        "DESKTOP_SESSION",
        "SYSTEMROOT",
        "WINDIR",
        "USERPROFILE",
        "APPDATA",
        "LOCALAPPDATA",
        "PROGRAMFILES",
        "TEMP",
        "TMP",
    ];
    vars.into_iter()
        .filter(|(name, _)| {
            KEEP.contains(&name.as_str()) || name.starts_with("LC_") || name.starts_with("XDG_")
        })
        .collect()
}

/// What to print when the URL is not (or could not be) opened in a browser.
pub fn authorization_prompt(url: &str, browser_failed: bool) -> String {
    let lead =
        if browser_failed { "Could not open a browser. Open this URL" } else { "Open this URL in a browser" };
    format!("{lead} to authorize byova:\n\n  {url}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_launch_carries_the_url_whole_and_no_secret() {
        let url = "https://webexapis.com/v1/authorize?client_id=C&state=S&scope=a%20b";
        let vars =
            [("PATH", "/usr/bin"), ("WEBEX_INTEGRATION_CLIENT_SECRET", "SECRET-CANARY"), ("DISPLAY", ":0")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let command = browser_launch(url, vars);
        let (program, args) = system_browser_command();
        assert_eq!(command.get_program(), program);
        let mut expected: Vec<&str> = args.to_vec();
        expected.push(url);
        assert_eq!(command.get_args().collect::<Vec<_>>(), expected);
        let env: Vec<_> = command.get_envs().map(|(k, v)| (k.to_owned(), v.map(ToOwned::to_owned))).collect();
        assert!(env.iter().any(|(k, v)| k == "PATH" && v.as_deref() == Some("/usr/bin".as_ref())), "{env:?}");
        assert!(!format!("{env:?}").contains("SECRET-CANARY"), "{env:?}");
    }

    #[test]
    fn an_authorization_url_prints_without_its_state() {
        let auth = AuthorizationUrl {
            url: "https://webex.test/v1/authorize?state=THE-STATE".into(),
            state: "THE-STATE".into(),
        };
        let printed = format!("{auth:?}");
        assert!(!printed.contains("THE-STATE"), "{printed}");
        assert!(printed.contains("redacted"), "{printed}");
    }

    #[test]
    fn the_browser_gets_a_desktop_environment_and_no_secrets() {
        let vars = [
            ("PATH", "/usr/bin"),
            ("DISPLAY", ":0"),
            ("LC_ALL", "C.UTF-8"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
            ("WEBEX_INTEGRATION_CLIENT_SECRET", "SECRET-CANARY"),
            ("BYOVA_STORAGE_KEY", "SECRET-CANARY"),
            ("BYOVA_STORAGE", "postgres://u:SECRET-CANARY@db/x"),
            ("AWS_SECRET_ACCESS_KEY", "SECRET-CANARY"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let kept = browser_environment(vars);
        let names: Vec<&str> = kept.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["PATH", "DISPLAY", "LC_ALL", "XDG_RUNTIME_DIR"]);
        assert!(kept.iter().all(|(_, v)| !v.contains("SECRET-CANARY")));
    }

    #[test]
    fn no_shell_parses_the_url_on_any_os() {
        assert_eq!(browser_command_for("windows"), ("rundll32", &["url.dll,FileProtocolHandler"][..]));
        assert_eq!(browser_command_for("macos"), ("open", &[][..]));
        assert_eq!(browser_command_for("linux"), ("xdg-open", &[][..]));
        for os in ["windows", "macos", "linux", "freebsd"] {
            let (program, _) = browser_command_for(os);
            assert!(!["cmd", "sh", "bash", "powershell"].contains(&program), "{os}: {program}");
        }
    }
}
