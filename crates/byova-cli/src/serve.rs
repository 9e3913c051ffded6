//! `byova serve`: a webhook receiver, a background refresher, `/healthz` and `/status`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use byova_async::core::{MAX_WEBHOOK_BODY_BYTES, SIGNATURE_HEADER};
use byova_async::{Byova, Error};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;

use crate::{Failure, failure, status_json};

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, body: serde_json::Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert("Content-Type", hyper::header::HeaderValue::from_static("application/json"));
    resp.headers_mut().insert("Cache-Control", hyper::header::HeaderValue::from_static("no-store"));
    resp
}

/// Handles one request to the daemon.
pub(crate) async fn handle(byova: Arc<Byova>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let resp = match (method.as_str(), path.as_str()) {
        ("GET", "/healthz") => respond(StatusCode::OK, json!({"status": "ok"})),
        ("GET", "/status") => match byova.status().await {
            Ok(statuses) => {
                respond(StatusCode::OK, json!(statuses.iter().map(status_json).collect::<Vec<_>>()))
            }
            Err(e) => respond(StatusCode::SERVICE_UNAVAILABLE, json!({"error": e.to_string()})),
        },
        ("POST", "/webhook") => {
            let signature =
                req.headers().get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
            // The body is capped before anything else looks at it.
            match Limited::new(req.into_body(), MAX_WEBHOOK_BODY_BYTES).collect().await {
                Err(_) => respond(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    json!({"error": "the delivery is larger than 64 KiB"}),
                ),
                Ok(body) => {
                    let body = body.to_bytes();
                    match byova.handle_service_app_webhook(&body, signature.as_deref()).await {
                        Ok(outcome) => respond(
                            StatusCode::OK,
                            json!({"outcome": outcome.as_str(), "org_id": outcome.org_id()}),
                        ),
                        Err(e @ Error::WebhookSignature(_)) => {
                            tracing::warn!(error = %e, "rejected a webhook delivery");
                            respond(StatusCode::UNAUTHORIZED, json!({"error": e.to_string()}))
                        }
                        Err(e @ Error::InvalidInput(_)) => {
                            respond(StatusCode::BAD_REQUEST, json!({"error": e.to_string()}))
                        }
                        // Anything else is worth Webex's redelivery.
                        Err(e) => {
                            tracing::warn!(error = %e, "could not apply a webhook delivery");
                            respond(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": e.to_string()}))
                        }
                    }
                }
            }
        }
        ("GET" | "POST", _) => respond(StatusCode::NOT_FOUND, json!({"error": "not found"})),
        _ => respond(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "method not allowed"})),
    };
    Ok(resp)
}

/// Serves `listener` until `shutdown` resolves, then lets open connections finish (10 s at most).
pub(crate) async fn serve_http(
    byova: Arc<Byova>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let byova = byova.clone();
                connections.spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let service = hyper::service::service_fn(move |req| handle(byova.clone(), req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(io, service);
                    let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

/// One background pass: every token that is due is refreshed, at most `concurrency` orgs at
/// a time. Shared stores' leases make replicas refresh each org once between them.
pub(crate) async fn refresh_pass(byova: &Byova, concurrency: usize) {
    match byova.integration().get_access_token().await {
        Ok(_) | Err(Error::NotAuthorized) => {}
        Err(e) => tracing::warn!(error = %e, "the Integration's token could not be refreshed"),
    }
    let orgs = match byova.service_app().list_orgs().await {
        Ok(orgs) => orgs,
        Err(e) => return tracing::warn!(error = %e, "cannot list orgs"),
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for org in orgs {
        let sa = byova.service_app().clone();
        let slots = slots.clone();
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await;
            if let Err(e) = sa.get_access_token(&org).await {
                tracing::warn!(org = %org, error = %e, "background refresh failed");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

pub(crate) async fn bind(listen: &str) -> Result<TcpListener, Failure> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| failure(3, format!("--listen {listen:?} is not an address like 127.0.0.1:8080")))?;
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            failure(
                9,
                format!(
                    "{addr} is already in use: stop the other process or choose another --listen address"
                ),
            )
        } else {
            failure(3, format!("cannot listen on {addr}: {e}"))
        }
    })
}

/// `byova serve`.
pub(crate) async fn run(
    byova: Arc<Byova>,
    listen: &str,
    interval: Duration,
    concurrency: usize,
) -> Result<(), Failure> {
    let listener = bind(listen).await?;
    let addr = listener.local_addr().map_err(|e| failure(3, e.to_string()))?;
    println!("byova serve: listening on http://{addr} (POST /webhook, GET /healthz, GET /status)");
    let refresher = {
        let byova = byova.clone();
        tokio::spawn(async move {
            loop {
                refresh_pass(&byova, concurrency).await;
                tokio::time::sleep(interval).await;
            }
        })
    };
    serve_http(byova, listener, shutdown_signal()).await;
    refresher.abort();
    println!("byova serve: stopped");
    Ok(())
}
