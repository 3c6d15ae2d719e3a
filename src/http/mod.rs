//! The HTTP port: `GET /healthz` (200 only while serving, with the WAL
//! backlog and the last flush result as JSON), `GET /metrics` (Prometheus
//! text), and the JSON ingest endpoints of [`ingest`] behind [`access`]
//! unless they have a port of their own (`HTTP_INGEST_PORT`).

pub mod access;
pub mod ingest;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::{Health, Phase};
use crate::metrics::Metrics;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
}

async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    let report = state.health.report();
    let code = if report.status == Phase::Serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(report))
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// The metrics port's routes, with `ingest`'s when they share the port.
pub fn router(state: HttpState, ingest: Option<Router>) -> Router {
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state);
    match ingest {
        Some(ingest) => routes.merge(ingest),
        None => routes,
    }
}

/// How long a client may take to send a request's headers (also how long
/// a kept-alive connection may wait for its next request): a client that
/// trickles them holds a connection and its buffer, before any token is
/// checked.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Connections one HTTP port holds at once; past it a new one is closed at
/// once (a probe, a scrape and the ingest clients need a handful).
pub const MAX_CONNECTIONS: usize = 512;
/// A connection's read buffer at most (headers included): an ingest body is
/// streamed through it, so it bounds memory per connection, not the body.
const MAX_BUF_BYTES: usize = 64 * 1024;

/// Serves `app` until `stop`, then lets the requests in flight finish;
/// handlers can see the caller's address (`ConnectInfo`, for the
/// per-client rate limit). Each connection is bounded in time to send its
/// headers, in buffer, and in number.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF_BYTES);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut refused_logged = false;
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, a connection reset before it
                    // was accepted: the next accept may succeed.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !refused_logged {
                tracing::warn!(
                    max = MAX_CONNECTIONS,
                    "HTTP connections at their limit: new ones are closed at once"
                );
                refused_logged = true;
            }
            drop(stream);
            continue;
        };
        refused_logged = false;
        let _ = stream.set_nodelay(true);
        let router = app.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                let mut router = router.clone();
                tower_service::Service::call(&mut router, request)
            },
        );
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The address a listener is bound to (for logs and tests).
pub fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .expect("a bound listener has an address")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn status_of(health: &Arc<Health>) -> (StatusCode, serde_json::Value) {
        let state = HttpState {
            health: health.clone(),
            metrics: Arc::new(Metrics::new()),
        };
        let response = healthz(State(state)).await.into_response();
        let code = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (code, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn healthz_is_200_only_while_serving() {
        let health = Arc::new(Health::default());
        for (phase, code, name) in [
            (Phase::Starting, StatusCode::SERVICE_UNAVAILABLE, "starting"),
            (
                Phase::Replaying,
                StatusCode::SERVICE_UNAVAILABLE,
                "replaying",
            ),
            (Phase::Serving, StatusCode::OK, "serving"),
            (
                Phase::ShuttingDown,
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
            ),
        ] {
            health.set_phase(phase);
            let (status, body) = status_of(&health).await;
            assert_eq!(status, code);
            assert_eq!(body["status"], name);
        }
    }

    #[tokio::test]
    async fn healthz_reports_the_last_flush() {
        let health = Arc::new(Health::default());
        health.set_phase(Phase::Serving);
        health.flush_failed("database error: connection refused".into());
        let (_, body) = status_of(&health).await;
        assert_eq!(body["last_flush"]["ok"], false);
        assert_eq!(
            body["last_flush"]["error"],
            "database error: connection refused"
        );
        health.flush_succeeded(12);
        let (_, body) = status_of(&health).await;
        assert_eq!(body["last_flush"]["rows"], 12);
    }
}
