//! The loopback redirect listener (RFC 8252) on std threads. Every decision about a request is
//! byova-core's [`CallbackHandler`]; this module accepts, reads, writes and times out.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use byova_core::{
    Error, Result,
    oauth::{AuthorizationCode, CsrfState},
    redirect::{
        BrowserOpener, CALLBACK_READ_TIMEOUT, CallbackConnection, CallbackHandler, CallbackVerdict,
        ConnectionStep, MAX_CALLBACK_CONNECTIONS, authorization_prompt, browser_launch,
    },
};

const POLL: Duration = Duration::from_millis(5);

/// Refuses to block an async runtime's worker thread for a whole authorization flow: on a
/// current-thread runtime nothing else would run, and anything the flow waits for (a browser
/// played on that runtime) would never come.
pub(crate) fn refuse_async_worker(operation: &str) -> Result<()> {
    // tokio names its threads `tokio-runtime-worker` (older) or `tokio-rt-worker` unless told
    // otherwise; a renamed runtime is not detected, and is documented as such.
    let thread = std::thread::current();
    if thread.name().is_some_and(|n| n == "tokio-runtime-worker" || n == "tokio-rt-worker") {
        return Err(Error::Configuration(format!(
            "{operation} blocks for up to minutes and was called on an async runtime's worker thread; \
             use byova-async, or call it inside tokio::task::spawn_blocking"
        )));
    }
    Ok(())
}

byova_core::__redirect_listener!(blocking, {}, {});

impl RedirectListener {
    /// Waits for the redirect carrying `expected_state`. Each connection is served on its own
    /// short-lived thread, so idle connections never hold the flow up.
    ///
    /// # Errors
    /// [`Error::OAuthRedirect`] when the redirect carried `error=`,
    /// [`Error::OAuthRedirectTimeout`] when none arrived in time, [`Error::Configuration`] on an
    /// async runtime's worker thread.
    pub fn wait(self, expected_state: CsrfState, timeout: Duration) -> Result<AuthorizationCode> {
        refuse_async_worker("waiting for the OAuth redirect")?;
        self.listener.set_nonblocking(true).map_err(|e| Error::listen(self.redirect.listen_address(), e))?;
        let handler = Arc::new(Mutex::new(CallbackHandler::new(&self.redirect, self.port, expected_state)));
        let (tx, rx) = mpsc::channel::<CallbackVerdict>();
        // Each connection being served: a handle to close it, and whether it is still open.
        let mut oldest_first: std::collections::VecDeque<(TcpStream, Arc<AtomicBool>)> =
            std::collections::VecDeque::new();
        let deadline = Instant::now() + timeout;
        loop {
            match rx.recv_timeout(POLL) {
                Ok(CallbackVerdict::Code(code)) => return Ok(code),
                Ok(CallbackVerdict::Denied(error)) => return Err(Error::OAuthRedirect { error }),
                Ok(CallbackVerdict::KeepWaiting) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if Instant::now() >= deadline {
                return Err(handler.lock().unwrap_or_else(|e| e.into_inner()).timed_out(timeout));
            }
            while let Ok((stream, peer)) = self.listener.accept() {
                if !peer.ip().is_loopback() {
                    continue;
                }
                oldest_first.retain(|(_, open)| open.load(Ordering::SeqCst));
                if oldest_first.len() >= MAX_CALLBACK_CONNECTIONS
                    && let Some((oldest, _)) = oldest_first.pop_front()
                {
                    // Its thread's read returns at once and the thread ends.
                    let _ = oldest.shutdown(std::net::Shutdown::Both);
                }
                let open = Arc::new(AtomicBool::new(true));
                if let Ok(handle) = stream.try_clone() {
                    oldest_first.push_back((handle, open.clone()));
                }
                let (handler, tx) = (handler.clone(), tx.clone());
                let spawned = std::thread::Builder::new().name("byova-redirect".into()).spawn(move || {
                    serve(stream, &handler, &tx);
                    open.store(false, Ordering::SeqCst);
                });
                if spawned.is_err() {
                    return Err(Error::Internal("cannot start a thread for the redirect listener".into()));
                }
            }
        }
    }
}

/// Reads one request (the whole head within the connection's time limit, however slowly the
/// bytes come), answers it, and passes a final verdict on; every decision is the core's
/// [`CallbackConnection`].
fn serve(mut stream: TcpStream, handler: &Mutex<CallbackHandler>, tx: &mpsc::Sender<CallbackVerdict>) {
    let deadline = Instant::now() + CALLBACK_READ_TIMEOUT;
    let mut connection = CallbackConnection::new();
    let mut chunk = [0u8; 1024];
    let _ = stream.set_nonblocking(false);
    let (reply, verdict) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        let Ok(n) = stream.read(&mut chunk) else { return };
        match connection.push(&chunk[..n], handler) {
            ConnectionStep::Read => {}
            ConnectionStep::Answer(reply, verdict) => break (reply, verdict),
            ConnectionStep::Close => return,
        }
    };
    let _ = stream.write_all(&reply);
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Both);
    if let Some(verdict) = verdict {
        let _ = tx.send(verdict);
    }
}

/// Opens `url` with `browser` (or the system browser); prints it when not opening or when
/// opening fails.
pub(crate) fn present_url(url: &str, open: bool, browser: Option<BrowserOpener>) {
    if !open {
        eprintln!("{}", authorization_prompt(url, false));
        return;
    }
    let opened = match browser {
        Some(opener) => opener(url),
        None => open_system_browser(url),
    };
    if opened.is_err() {
        eprintln!("{}", authorization_prompt(url, true));
    }
}

fn open_system_browser(url: &str) -> std::io::Result<()> {
    let status = browser_launch(url, std::env::vars()).status()?;
    if status.success() { Ok(()) } else { Err(std::io::Error::other("the browser launcher failed")) }
}
