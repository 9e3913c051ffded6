//! Network faults between byova and a real store, before and during a refresh: a fault proxy
//! (`byova_testkit::faultproxy`) sits in between, the fake Webex rotates refresh tokens
//! strictly (a token spent twice or lost would show), and each fault must end in a valid token
//! or a retryable error in bounded time, then full recovery with one refresh and nothing lost.
//! Written once for the Redis and SQL tests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use byova_core::backend::CoordinatedTokenStorage;
use byova_core::{Clock, SystemClock, TokenStorage};
use byova_testkit::faultproxy::{FaultProxy, NetFault};
use byova_testkit::{Endpoint, FakeWebex};

/// Opens a store at a URL on the given runtime's context.
pub type Open = Box<dyn Fn(String) -> Pin<Box<dyn Future<Output = Arc<dyn CoordinatedTokenStorage>>>>>;

/// One row of the matrix, for the log.
#[derive(Debug)]
pub struct Row {
    /// The fault.
    pub fault: NetFault,
    /// Whether it started while Webex was answering the refresh.
    pub mid_refresh: bool,
    /// What the caller got while it lasted.
    pub during: String,
    /// How long the caller waited.
    pub took: Duration,
    /// Refresh calls Webex saw in all.
    pub refreshes: usize,
}

/// Runs the matrix against the store at `url` (`host:port` in it is replaced by the proxy's
/// address; `fresh_url(i)` gives case `i` its own table or prefix), on `rt`.
///
/// # Panics
/// When a case breaks the rules above.
pub fn refresh_matrix(
    rt: &tokio::runtime::Runtime,
    url: &str,
    fresh_url: &dyn Fn(&str, usize) -> String,
    open: &Open,
) -> Vec<Row> {
    let rest = url.split("://").nth(1).expect("a URL");
    let authority = rest.split(['/', '?']).next().expect("an authority");
    let host_port = authority.rsplit('@').next().expect("host:port").to_owned();
    let upstream: std::net::SocketAddr = host_port.parse().expect("a numeric host:port in the test URL");
    let faults = [
        NetFault::Latency(Duration::from_millis(300)),
        NetFault::Reset,
        NetFault::BlackHole,
        NetFault::Trickle(Duration::from_millis(2)),
    ];
    let mut rows = Vec::new();
    for (i, (fault, mid_refresh)) in faults.iter().flat_map(|f| [(*f, false), (*f, true)]).enumerate() {
        let proxy = FaultProxy::start(upstream);
        let direct_url = fresh_url(url, i);
        let via = direct_url.replacen(&host_port, &proxy.addr().to_string(), 1);
        let direct = rt.block_on(open(direct_url));
        let fake = FakeWebex::start();
        fake.update_settings(|s| {
            s.rotate_refresh_tokens = true;
            s.strict_rotation = true;
        });
        let issued = fake.issue_integration_tokens();
        rt.block_on(direct.set_integration_tokens(&issued.expired_at(SystemClock.now()))).unwrap();
        let mut config = fake.config();
        config.storage_timeout = Duration::from_secs(1);
        let byova =
            byova_async::Byova::builder(fake.integration_credentials(), fake.service_app_credentials())
                .config(config)
                .storage(rt.block_on(open(via)))
                .build()
                .unwrap();
        let started = Instant::now();
        let during = std::thread::scope(|scope| {
            if mid_refresh {
                // Webex redeems (and rotates) the refresh token at once but answers after
                // 600 ms; the fault starts 300 ms in, so the new tokens meet it on their way
                // into the store.
                fake.set_answer_latency(Endpoint::AccessToken, Duration::from_millis(600));
                scope.spawn(|| {
                    std::thread::sleep(Duration::from_millis(300));
                    proxy.set(fault);
                });
            } else {
                proxy.set(fault);
            }
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(30), byova.integration().get_access_token()).await
            })
        });
        let took = started.elapsed();
        fake.set_answer_latency(Endpoint::AccessToken, Duration::ZERO);
        let during = match during {
            Err(_) => panic!("{fault:?}: no answer within 30 s"),
            Ok(Ok(token)) => {
                assert!(fake.is_access_token_valid(token.expose_secret()), "{fault:?}: a dead token served");
                "valid token".to_owned()
            }
            Ok(Err(e)) => {
                assert!(e.is_retryable(), "{fault:?}: {e} is not retryable");
                "retryable error".to_owned()
            }
        };
        proxy.set(NetFault::None);
        let deadline = Instant::now() + Duration::from_secs(15);
        let after = loop {
            match rt.block_on(byova.integration().get_access_token()) {
                Ok(token) => break token,
                Err(e) if Instant::now() < deadline && e.is_retryable() => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => panic!("{fault:?}: no recovery after the fault cleared: {e}"),
            }
        };
        assert!(fake.is_access_token_valid(after.expose_secret()), "{fault:?}: recovered token is live");
        let (refreshes, reused) = (fake.refresh_calls(), fake.reused_refresh_tokens());
        assert_eq!(reused, 0, "{fault:?}: a refresh token was spent twice");
        assert!(refreshes <= 1, "{fault:?}: {refreshes} refreshes for one expiry");
        if mid_refresh {
            assert_eq!(refreshes, 1, "{fault:?}: the refresh happened before the fault");
        }
        // The stored refresh token is the live one: a forced refresh works.
        let forced = rt.block_on(byova.integration().refresh(None));
        assert!(forced.is_ok(), "{fault:?}: the stored refresh token was lost: {forced:?}");
        rows.push(Row { fault, mid_refresh, during, took, refreshes });
    }
    rows
}

/// Prints the matrix as the tests' log shows it.
pub fn print(store: &str, rows: &[Row]) {
    for r in rows {
        let when = if r.mid_refresh { "mid-refresh" } else { "before the refresh" };
        println!(
            "  {store}, {:?} {when}: {} after {:.2} s; then a valid token, {} refresh(es), 0 reused, 0 lost",
            r.fault,
            r.during,
            r.took.as_secs_f64(),
            r.refreshes
        );
    }
}
