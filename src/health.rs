//! The service's health: its phase (starting, replaying, serving, shutting
//! down), what start-up waits for, the WAL backlog and the last flush. The
//! flusher and start-up write it; `/healthz` ([`crate::http`]) and the
//! metrics read it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

use serde::Serialize;

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

    /// What `/healthz` answers.
    pub fn report(&self) -> HealthReport {
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

/// The service's health as `/healthz` shows it.
#[derive(Debug, Serialize)]
pub struct HealthReport {
    pub status: Phase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    pub wal_backlog_bytes: u64,
    pub wal_backlog_records: u64,
    pub last_flush: Option<LastFlush>,
}
