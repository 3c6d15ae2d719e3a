//! The HTTP port: `GET /healthz` (200 only while serving, with the WAL backlog
//! and the last flush result as JSON), `GET /metrics` (Prometheus text), and
//! the JSON ingest endpoints of [`crate::http_ingest`] unless they have a
//! port of their own (`HTTP_INGEST_PORT`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::wal::WalStats;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Phase {
    /// Waiting for the database, running migrations.
    Starting = 0,
    /// Replaying the WAL and flushing it before serving.
    Replaying = 1,
    Serving = 2,
    ShuttingDown = 3,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastFlush {
    pub ok: bool,
    /// RFC 3339, UTC.
    pub at: String,
    pub rows: usize,
    pub error: Option<String>,
}

/// What `/healthz` reports; shared by the app, the flusher and the HTTP server.
pub struct Health {
    phase: AtomicU8,
    wal: OnceLock<WalStats>,
    last_flush: Mutex<Option<LastFlush>>,
    /// What start-up waits for (`user_goal_progress` to appear), if anything.
    waiting: Mutex<Option<String>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            phase: AtomicU8::new(Phase::Starting as u8),
            wal: OnceLock::new(),
            last_flush: Mutex::new(None),
            waiting: Mutex::new(None),
        }
    }
}

impl Health {
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Starting,
            1 => Phase::Replaying,
            2 => Phase::Serving,
            _ => Phase::ShuttingDown,
        }
    }

    /// Start-up is waiting for `why` (None: no longer).
    pub fn set_waiting(&self, why: Option<String>) {
        *self.waiting.lock().expect("health lock poisoned") = why;
    }

    pub fn attach_wal(&self, wal: WalStats) {
        let _ = self.wal.set(wal);
    }

    pub fn flush_succeeded(&self, rows: usize) {
        self.record(LastFlush {
            ok: true,
            at: now(),
            rows,
            error: None,
        });
    }

    pub fn flush_failed(&self, error: String) {
        self.record(LastFlush {
            ok: false,
            at: now(),
            rows: 0,
            error: Some(error),
        });
    }

    fn record(&self, flush: LastFlush) {
        *self.last_flush.lock().expect("health lock poisoned") = Some(flush);
    }

    fn report(&self) -> HealthReport {
        let wal = self.wal.get();
        let phase = match (self.phase(), wal) {
            (Phase::Serving, Some(w)) if w.is_failed() => Phase::ShuttingDown,
            (phase, _) => phase,
        };
        HealthReport {
            status: phase,
            waiting_for: if phase == Phase::Starting {
                self.waiting.lock().expect("health lock poisoned").clone()
            } else {
                None
            },
            wal_backlog_bytes: wal.map_or(0, WalStats::backlog_bytes),
            wal_backlog_records: wal.map_or(0, WalStats::backlog_records),
            last_flush: self
                .last_flush
                .lock()
                .expect("health lock poisoned")
                .clone(),
        }
    }
}

fn now() -> String {
    crate::clock::rfc3339(crate::clock::unix_ms() as i64)
}

#[derive(Serialize)]
struct HealthReport {
    status: Phase,
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting_for: Option<String>,
    wal_backlog_bytes: u64,
    wal_backlog_records: u64,
    last_flush: Option<LastFlush>,
}

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

/// Serves `app` until `stop`; handlers can see the caller's address
/// (`ConnectInfo`, for the per-client rate limit).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { stop.cancelled().await })
    .await
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
