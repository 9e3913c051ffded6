//! A TCP fault proxy for the network between byova and its store (Redis, PostgreSQL,
//! MariaDB): it forwards bytes both ways and, when told, slows them, cuts connections, swallows
//! them, or trickles them.
//!
//! ```no_run
//! use byova_testkit::faultproxy::{FaultProxy, NetFault};
//! let proxy = FaultProxy::start("127.0.0.1:6379".parse().unwrap());
//! let url = format!("redis://{}/0", proxy.addr()); // byova talks to the store through it
//! proxy.set(NetFault::BlackHole); // from now on, nothing gets through and nothing is answered
//! proxy.set(NetFault::None);
//! # let _ = url;
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to the bytes it forwards, from the moment it is set (connections open
/// already included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetFault {
    /// Forward as they come.
    None,
    /// Wait this long before forwarding each chunk.
    Latency(Duration),
    /// Cut every connection (closed mid-command) as soon as it carries anything, and every new one.
    Reset,
    /// Accept and read, forward nothing, answer nothing (a silent network).
    BlackHole,
    /// Forward one byte at a time, with this pause between bytes.
    Trickle(Duration),
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    fault: Arc<Mutex<NetFault>>,
    _runtime: tokio::runtime::Runtime,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    ///
    /// # Panics
    /// When no loopback port can be bound (a test machine without networking).
    pub fn start(upstream: SocketAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("a runtime for the fault proxy");
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        std_listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = std_listener.local_addr().expect("the proxy's address");
        let fault = Arc::new(Mutex::new(NetFault::None));
        let shared = fault.clone();
        runtime.spawn(async move {
            let Ok(listener) = TcpListener::from_std(std_listener) else { return };
            while let Ok((client, _)) = listener.accept().await {
                let fault = shared.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        () = pump(cr, sw, fault.clone()) => {}
                        () = pump(sr, cw, fault) => {}
                    }
                });
            }
        });
        Self { addr, fault, _runtime: runtime }
    }

    /// The address to connect to instead of the upstream's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets what happens to the bytes from now on.
    pub fn set(&self, fault: NetFault) {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    fn current(fault: &Mutex<NetFault>) -> NetFault {
        *fault.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Copies one direction of a connection under the current fault; returns when either side is
/// done (or the fault cuts it).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    fault: Arc<Mutex<NetFault>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if FaultProxy::current(&fault) == NetFault::Reset {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match FaultProxy::current(&fault) {
            NetFault::None => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            NetFault::Latency(d) => {
                tokio::time::sleep(d).await;
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            NetFault::Reset => return,
            NetFault::BlackHole => {}
            NetFault::Trickle(pause) => {
                for byte in &buf[..n] {
                    tokio::time::sleep(pause).await;
                    if to.write_all(std::slice::from_ref(byte)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
