//! The loopback redirect listener (RFC 8252) on tokio. Every decision about a request is
//! byova-core's [`CallbackHandler`]; this module accepts, reads, writes and times out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use byova_core::{
    Error, Result,
    oauth::{AuthorizationCode, CsrfState},
    redirect::{
        BrowserOpener, CALLBACK_READ_TIMEOUT, CallbackConnection, CallbackHandler, CallbackVerdict,
        ConnectionStep, MAX_CALLBACK_CONNECTIONS, authorization_prompt, browser_launch,
    },
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

byova_core::__redirect_listener!(async, {async}, {.await});

impl RedirectListener {
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
                    if oldest_first.len() >= MAX_CALLBACK_CONNECTIONS
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
    let answer = tokio::time::timeout(CALLBACK_READ_TIMEOUT, async {
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
    let status = browser_launch(url, std::env::vars()).status()?;
    if status.success() { Ok(()) } else { Err(std::io::Error::other("the browser launcher failed")) }
}
