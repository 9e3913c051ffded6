//! The loopback redirect listener (RFC 8252) on tokio. Every decision about a request is
//! byova-core's [`CallbackHandler`]; this module accepts, reads, writes and times out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use byova_core::{
    Error, RedirectOptions, Result,
    oauth::{AuthorizationCode, CsrfState},
    redirect::{
        BrowserOpener, CallbackConnection, CallbackHandler, CallbackVerdict, ConnectionStep,
        LoopbackRedirect, authorization_prompt, system_browser_command,
    },
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long one connection may take to send its request head.
const CONNECTION_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; a new one beyond it closes the oldest, so idle connections can
/// never turn the real redirect away.
const MAX_CONNECTIONS: usize = 64;

/// A listener bound on the redirect URI's loopback address, waiting for one redirect.
///
/// Bind it before opening the browser (so the port is ready), read back
/// [`redirect_uri`](Self::redirect_uri) (the port may have been chosen by the OS), then
/// [`wait`](Self::wait). The port closes when `wait` returns or the listener is dropped.
#[derive(Debug)]
pub struct RedirectListener {
    listener: TcpListener,
    redirect: LoopbackRedirect,
    port: u16,
}

impl RedirectListener {
    /// Binds the loopback address of `redirect_uri` (port 0 picks a free port).
    ///
    /// # Errors
    /// [`Error::Configuration`] for a non-loopback URI, [`Error::Listen`] for a port already
    /// in use.
    /// Cancel safety: dropped, nothing is bound.
    pub async fn bind(redirect_uri: &str) -> Result<Self> {
        let redirect = LoopbackRedirect::parse(redirect_uri)?;
        let listen = |e| Error::listen(redirect.listen_address(), e);
        let listener = TcpListener::bind((redirect.bind_host(), redirect.port)).await.map_err(listen)?;
        let port = listener.local_addr().map_err(listen)?.port();
        Ok(Self { listener, redirect, port })
    }

    /// The redirect URI with the bound port.
    pub fn redirect_uri(&self) -> String {
        self.redirect.uri_with_port(self.port)
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits for the redirect carrying `expected_state`.
    ///
    /// # Errors
    /// [`Error::OAuthRedirect`] when the redirect carried `error=`,
    /// [`Error::OAuthRedirectTimeout`] when none arrived in time.
    /// Cancel safety: dropped, the port closes and the flow ends.
    pub async fn wait(self, expected_state: CsrfState, timeout: Duration) -> Result<AuthorizationCode> {
        let handler = Arc::new(Mutex::new(CallbackHandler::new(&self.redirect, self.port, expected_state)));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<CallbackVerdict>(4);
        let mut connections = tokio::task::JoinSet::new();
        let mut oldest_first = std::collections::VecDeque::new();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut backoff = Duration::ZERO;
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    return Err(handler.lock().unwrap_or_else(|e| e.into_inner()).timed_out(timeout));
                }
                Some(verdict) = rx.recv() => match verdict {
                    CallbackVerdict::Code(code) => return Ok(code),
                    CallbackVerdict::Denied(error) => return Err(Error::OAuthRedirect { error }),
                    CallbackVerdict::KeepWaiting => {}
                },
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => {
                            backoff = Duration::ZERO;
                            accepted
                        }
                        Err(_) => {
                            // Out of descriptors, say: wait for some to come back instead of
                            // spinning on the error (bounded: the deadline still ends the flow).
                            backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_millis(500));
                            tokio::time::sleep(backoff).await;
                            continue;
                        }
                    };
                    if !peer.ip().is_loopback() {
                        continue;
                    }
                    oldest_first.retain(|c: &tokio::task::AbortHandle| !c.is_finished());
                    if oldest_first.len() >= MAX_CONNECTIONS
                        && let Some(oldest) = oldest_first.pop_front()
                    {
                        oldest.abort();
                    }
                    let (handler, tx) = (handler.clone(), tx.clone());
                    oldest_first.push_back(connections.spawn(async move { serve(stream, &handler, &tx).await }));
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }
}

/// Reads one request (within the connection's time limit), answers it, and passes a final
/// verdict on; every decision is the core's [`CallbackConnection`].
async fn serve(
    mut stream: TcpStream,
    handler: &Mutex<CallbackHandler>,
    tx: &tokio::sync::mpsc::Sender<CallbackVerdict>,
) {
    let mut connection = CallbackConnection::new();
    let mut chunk = [0u8; 1024];
    let answer = tokio::time::timeout(CONNECTION_READ_TIMEOUT, async {
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            match connection.push(&chunk[..n], handler) {
                ConnectionStep::Read => {}
                ConnectionStep::Answer(reply, verdict) => return Some((reply, verdict)),
                ConnectionStep::Close => return None,
            }
        }
    });
    let Ok(Some((reply, verdict))) = answer.await else { return };
    let _ = stream.write_all(&reply).await;
    let _ = stream.shutdown().await;
    if let Some(verdict) = verdict {
        let _ = tx.send(verdict).await;
    }
}

/// Waits for the OAuth redirect on `redirect_uri` (the Python SDK's `wait_for_redirect`): binds the
/// listener, opens (or prints) the authorization URL, and returns `(code, state)`.
///
/// # Errors
/// As [`RedirectListener::bind`] and [`RedirectListener::wait`]; [`Error::InvalidInput`]
/// without `expected_state`.
/// Cancel safety: dropped, the port closes and the flow ends.
pub async fn wait_for_redirect(
    redirect_uri: &str,
    options: RedirectOptions,
) -> Result<(String, Option<String>)> {
    let state = options.required_state()?;
    let listener = RedirectListener::bind(redirect_uri).await?;
    if let Some(url) = &options.authorization_url {
        present_url(url, options.open_browser, options.browser.clone());
    }
    let code = listener.wait(state.clone(), options.timeout).await?;
    Ok((code.expose_secret().to_owned(), Some(state.expose_secret().to_owned())))
}

/// Opens `url` with `browser` (or the system browser) on a blocking thread, without waiting
/// for it, so the listener accepts from the start; prints it when not opening or when opening
/// fails.
pub(crate) fn present_url(url: &str, open: bool, browser: Option<BrowserOpener>) {
    if !open {
        eprintln!("{}", authorization_prompt(url, false));
        return;
    }
    let opener = browser.unwrap_or_else(|| Arc::new(open_system_browser));
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        if opener(&url).is_err() {
            eprintln!("{}", authorization_prompt(&url, true));
        }
    });
}

fn open_system_browser(url: &str) -> std::io::Result<()> {
    let (program, args) = system_browser_command();
    // The launcher gets a desktop session's variables, none of this process's secrets.
    let status = std::process::Command::new(program)
        .env_clear()
        .envs(byova_core::redirect::browser_environment(std::env::vars()))
        .args(args)
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    if status.success() { Ok(()) } else { Err(std::io::Error::other("the browser launcher failed")) }
}
