//! Prometheus metrics, one registry per running service (so tests can run
//! several in one process). Names follow `challenge_event_handler_<name>_<unit>[_total]`.

use prometheus::{
    exponential_buckets, CounterVec, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

const NS: &str = "challenge_event_handler";

/// The `reason` label of `events_failed_total`.
pub mod failure {
    /// Bad input (gRPC INVALID_ARGUMENT, HTTP 400).
    pub const INVALID: &str = "invalid";
    /// Could not be made durable now (UNAVAILABLE, HTTP 503).
    pub const UNAVAILABLE: &str = "unavailable";
    /// A storage fault (INTERNAL, HTTP 500).
    pub const INTERNAL: &str = "internal";
    /// HTTP ingest without an accepted bearer token (401), or closed (404).
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// HTTP ingest body over HTTP_MAX_BODY_BYTES (413).
    pub const TOO_LARGE: &str = "too_large";
    /// HTTP ingest over the client's HTTP_INGEST_RATE, or from an address
    /// whose token checks keep failing (429).
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const ALL: [&str; 6] = [
        INVALID,
        UNAVAILABLE,
        INTERNAL,
        UNAUTHORIZED,
        TOO_LARGE,
        RATE_LIMITED,
    ];
}

/// The `event` label of `events_total` for an HTTP ingest request refused
/// before its event's type was read: authentication, rate, body size, a body
/// that is not JSON, or an event that does not parse.
pub const HTTP_REFUSED: &str = "http_refused";

/// The `reason` label of `updates_not_applied_total`.
pub const NOT_APPLIED_REASONS: [&str; 4] = [
    "player_not_initialized",
    "goal_not_assigned",
    "inactive",
    "claimed",
];

pub struct Metrics {
    registry: Registry,
    /// Every OnMessage call and HTTP ingest event, by event type; HTTP
    /// requests refused before an event's type was read count as
    /// [`HTTP_REFUSED`], so that `events_failed_total` never exceeds it.
    pub events: IntCounterVec,
    /// Calls answered OK that changed (or were durably queued to change) progress
    /// or matched no goal.
    pub events_processed: IntCounterVec,
    /// Calls and HTTP requests answered with an error, by reason
    /// ([`failure::ALL`]).
    pub events_failed: IntCounterVec,
    /// Updates a flush found no row (or no changeable row) for, by reason.
    pub updates_not_applied: IntCounterVec,
    pub events_negative_value: IntCounter,
    pub events_duplicate: IntCounter,
    pub events_ignored: IntCounter,
    pub events_bad_timestamp: IntCounter,
    pub event_processing_duration: Histogram,
    pub buffer_size: IntGauge,
    /// 1 while acknowledged records wait in the WAL only (MEMORY_MAX_KEYS reached).
    pub buffer_spilled: IntGauge,
    /// Entries of a failed flush's batch, kept for its retry (in `buffer_size` too).
    pub flush_retry_keys: IntGauge,
    pub flush_duration: Histogram,
    /// Seconds of the flushes that committed, by phase ([`crate::store::Phases`]).
    pub flush_phase_seconds: CounterVec,
    pub flush_failures: IntCounter,
    /// Flush attempts abandoned at FLUSH_TIMEOUT or cancelled by PostgreSQL
    /// at it (in `flush_failures` too).
    pub flush_timeouts: IntCounter,
    pub db_batch_size: Histogram,
    pub wal_append_duration: Histogram,
    pub wal_batch_size: Histogram,
    pub wal_bytes: IntGauge,
    pub wal_disk_bytes: IntGauge,
    pub wal_replayed: IntCounter,
    pub dedup_marks: IntGauge,
    pub dedup_evicted_early: IntCounter,
    pub gdpr_deletions: IntCounter,
    pub gdpr_rows_deleted: IntCounter,
    pub gdpr_deletions_pending: IntGauge,
    /// Events left out because the cluster's ledger had them applied already.
    pub events_applied_elsewhere: IntCounter,
    /// Updates left out because another replica deleted their user.
    pub updates_dropped_deleted_user: IntCounter,
    pub ledger_event_ids: IntGauge,
    pub ledger_tables: IntGauge,
    pub ledger_ids_expired: IntCounter,
    pub upkeep_failures: IntCounter,
    pub http_ingest_tokens: IntGauge,
    pub wal_max_bytes: IntGauge,
    pub last_flush_success: IntGauge,
    pub phase: IntGauge,
    pub resident_memory: IntGauge,
    pub start_time: IntGauge,
    pub wal_volume_available: IntGauge,
    pub wal_volume_size: IntGauge,
    /// The WAL directory whose file system `render` measures.
    wal_dir: std::sync::OnceLock<std::path::PathBuf>,
}

/// (bytes available to this process, total bytes) of the file system that
/// holds `dir`.
pub fn volume_bytes(dir: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `stat` a buffer of the
    // type statvfs(3) fills; it is read only when the call succeeded.
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    let block = stat.f_frsize as u64;
    Some((
        (stat.f_bavail as u64).saturating_mul(block),
        (stat.f_blocks as u64).saturating_mul(block),
    ))
}

/// This process's resident memory in bytes (Linux `/proc/self/status`).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(kib * 1024)
}

impl Metrics {
    /// The name of every metric this service exports (histograms as their
    /// base name), whether or not it has a value yet: what the alert rules
    /// and the dashboard may use.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .registry
            .gather()
            .iter()
            .map(|family| family.name().to_owned())
            .collect();
        // Vectors appear in `gather` only once a label was used.
        let vectors: [&dyn prometheus::core::Collector; 5] = [
            &self.events,
            &self.events_processed,
            &self.events_failed,
            &self.updates_not_applied,
            &self.flush_phase_seconds,
        ];
        for vec in vectors {
            for desc in vec.desc() {
                names.push(desc.fq_name.clone());
            }
        }
        names.sort();
        names.dedup();
        names
    }

    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c =
                IntCounter::with_opts(Opts::new(name, help).namespace(NS)).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help).namespace(NS), &[label])
                .expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::with_opts(Opts::new(name, help).namespace(NS)).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .namespace(NS)
                    .buckets(buckets),
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let seconds = || exponential_buckets(0.0001, 2.0, 18).expect("valid buckets");
        let sizes = || exponential_buckets(1.0, 2.0, 16).expect("valid buckets");
        let metrics = Metrics {
            events: counter_vec(
                "events_total",
                "OnMessage calls and HTTP ingest events received, by event type \
                 (http_refused: HTTP requests refused before an event's type was read)",
                "event",
            ),
            events_processed: counter_vec(
                "events_processed_total",
                "OnMessage calls acknowledged after their updates were durable (or matched no goal)",
                "event",
            ),
            events_failed: counter_vec(
                "events_failed_total",
                "events refused (gRPC OnMessage calls and HTTP ingest requests), by reason: \
                 invalid, unavailable, internal, unauthorized (HTTP 401, or 404 while HTTP ingest is closed), too_large (HTTP 413), \
                 rate_limited (HTTP 429: over HTTP_INGEST_RATE, or an address guessing tokens)",
                "reason",
            ),
            updates_not_applied: counter_vec(
                "updates_not_applied_total",
                "updates (one per event and goal) a flush applied to no row, by reason: \
                 player_not_initialized (the player has no row at all), goal_not_assigned, \
                 inactive, claimed",
                "reason",
            ),
            events_negative_value: counter(
                "events_negative_value_total",
                "M5 stat events acknowledged without effect because their value is negative \
                 (as AccelByte's handler skips them)",
            ),
            events_duplicate: counter(
                "events_duplicate_total",
                "events acknowledged without effect because their id was seen within DEDUP_WINDOW",
            ),
            events_ignored: counter(
                "events_ignored_total",
                "events acknowledged without effect because their namespace is not AB_NAMESPACE",
            ),
            events_bad_timestamp: counter(
                "events_bad_timestamp_total",
                "events whose timestamp could not be used; arrival time was used instead",
            ),
            event_processing_duration: histogram(
                "event_processing_duration_seconds",
                "time from receiving an OnMessage call to answering it",
                seconds(),
            ),
            buffer_size: gauge(
                "buffer_size",
                "user-goal entries waiting in memory: the coalescing buffer and a failed flush's batch",
            ),
            flush_retry_keys: gauge(
                "flush_retry_keys",
                "user-goal entries of a failed flush's batch, kept in memory for its retry",
            ),
            buffer_spilled: gauge(
                "buffer_spilled",
                "1 while the backlog is over MEMORY_MAX_KEYS: newer acknowledged records wait in the WAL on disk and are read back after each flush",
            ),
            flush_duration: histogram(
                "flush_duration_seconds",
                "time of one flush transaction (watermark, deletions, read, write, commit)",
                seconds(),
            ),
            flush_phase_seconds: {
                let c = CounterVec::new(
                    Opts::new(
                        "flush_phase_seconds_total",
                        "seconds of the flushes that committed, by phase along the transaction: \
                         begin (transaction, cluster lock, watermark), ledger, deletions, read, \
                         rules (in the service), write, commit",
                    )
                    .namespace(NS),
                    &["phase"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            flush_failures: counter("flush_failures_total", "flush attempts that failed and will be retried"),
            flush_timeouts: counter(
                "flush_timeouts_total",
                "flush attempts that ran into FLUSH_TIMEOUT: abandoned with no answer from the database, or a statement PostgreSQL cancelled at it (statement_timeout)",
            ),
            db_batch_size: histogram("db_batch_size", "rows written per flush", sizes()),
            wal_append_duration: histogram(
                "wal_append_duration_seconds",
                "time of one WAL group commit (append + flush + fsync)",
                seconds(),
            ),
            wal_batch_size: histogram("wal_batch_size", "updates per WAL group commit", sizes()),
            wal_bytes: gauge("wal_bytes", "bytes of WAL records not yet flushed to the database"),
            wal_disk_bytes: gauge(
                "wal_disk_bytes",
                "bytes the WAL's files take on disk (log and dedup marks; updated at each truncation)",
            ),
            wal_replayed: counter("wal_replayed_total", "WAL records replayed at start-up"),
            dedup_marks: gauge("dedup_marks", "event ids remembered for deduplication"),
            dedup_evicted_early: counter(
                "dedup_evicted_early_total",
                "dedup marks dropped before DEDUP_WINDOW ended because DEDUP_MAX_MARKS was reached",
            ),
            gdpr_deletions: counter(
                "gdpr_deletions_total",
                "GDPR data deletions applied to the database (each also logged as an audit line)",
            ),
            gdpr_rows_deleted: counter(
                "gdpr_rows_deleted_total",
                "user_goal_progress rows removed by GDPR data deletions",
            ),
            gdpr_deletions_pending: gauge(
                "gdpr_deletions_pending",
                "GDPR data deletions acknowledged (durable in the WAL) and not yet applied to the database",
            ),
            events_applied_elsewhere: counter(
                "events_applied_elsewhere_total",
                "events acknowledged here and left out of a flush because the cluster's ledger \
                 already had them applied (redelivered to another replica, or to this one after \
                 DEDUP_WINDOW)",
            ),
            updates_dropped_deleted_user: counter(
                "updates_dropped_deleted_user_total",
                "pending updates left out because another replica applied a GDPR deletion of \
                 their user (each user also logged as an audit line)",
            ),
            ledger_event_ids: gauge(
                "ledger_event_ids",
                "event ids in the cluster's ledger (PostgreSQL's estimate, updated by the upkeep)",
            ),
            ledger_tables: gauge("ledger_tables", "tables of the cluster's ledger"),
            ledger_ids_expired: counter(
                "ledger_ids_expired_total",
                "event ids dropped from the ledger with their table, older than LEDGER_WINDOW",
            ),
            http_ingest_tokens: gauge(
                "http_ingest_tokens",
                "bearer tokens HTTP ingest accepts now (HTTP_INGEST_TOKEN and HTTP_INGEST_TOKEN_FILE)",
            ),
            upkeep_failures: counter(
                "upkeep_failures_total",
                "rounds of the cluster's upkeep (ledger rotation, tombstone expiry) that failed",
            ),
            wal_max_bytes: gauge(
                "wal_max_bytes",
                "WAL_MAX_BYTES: the unflushed WAL size past which calls are refused",
            ),
            last_flush_success: gauge(
                "last_flush_success_timestamp_seconds",
                "Unix time of the last flush that committed (0: none yet)",
            ),
            phase: gauge(
                "phase",
                "0 starting (waiting for the database), 1 replaying the WAL, 2 serving, 3 shutting down",
            ),
            resident_memory: gauge(
                "resident_memory_bytes",
                "resident memory of the process (VmRSS), read at each scrape",
            ),
            start_time: gauge(
                "start_time_seconds",
                "when this process started (Unix seconds): it changes at every restart",
            ),
            wal_volume_available: gauge(
                "wal_volume_available_bytes",
                "bytes the WAL's file system still has for this process, read at each scrape",
            ),
            wal_volume_size: gauge(
                "wal_volume_size_bytes",
                "size of the WAL's file system, read at each scrape",
            ),
            wal_dir: std::sync::OnceLock::new(),
            registry,
        };
        metrics
            .start_time
            .set((crate::clock::unix_ms() / 1000) as i64);
        // Every label an alert or the dashboard reads exists from the start,
        // at zero, so a ratio or an increase() has a series to work on.
        for event in crate::event::EventType::ALL {
            metrics.events.with_label_values(&[event.label()]);
            metrics.events_processed.with_label_values(&[event.label()]);
        }
        metrics.events.with_label_values(&[HTTP_REFUSED]);
        for reason in failure::ALL {
            metrics.events_failed.with_label_values(&[reason]);
        }
        for reason in NOT_APPLIED_REASONS {
            metrics.updates_not_applied.with_label_values(&[reason]);
        }
        for phase in crate::store::Phase::ALL {
            metrics
                .flush_phase_seconds
                .with_label_values(&[phase.name()]);
        }
        metrics
    }

    /// Measure the file system of `dir` (the WAL's) at each scrape.
    pub fn watch_wal_volume(&self, dir: std::path::PathBuf) {
        let _ = self.wal_dir.set(dir);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if let Some(bytes) = resident_bytes() {
            self.resident_memory.set(bytes as i64);
        }
        if let Some((available, size)) = self.wal_dir.get().and_then(|d| volume_bytes(d)) {
            self.wal_volume_available.set(available as i64);
            self.wal_volume_size.set(size as i64);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_wal_volume_is_measured_at_each_scrape() {
        let dir = tempfile::tempdir().unwrap();
        let (available, size) = volume_bytes(dir.path()).expect("statvfs of a temp dir");
        assert!(size > 0 && available <= size, "{available} of {size}");
        assert_eq!(volume_bytes(&dir.path().join("missing")), None);
        let metrics = Metrics::new();
        metrics.watch_wal_volume(dir.path().to_owned());
        let text = metrics.render();
        assert!(
            text.contains("challenge_event_handler_wal_volume_size_bytes "),
            "{text}"
        );
        assert!(!text.contains("challenge_event_handler_wal_volume_size_bytes 0\n"));
        assert!(!text.contains("challenge_event_handler_start_time_seconds 0\n"));
    }

    use super::*;

    #[test]
    fn every_label_an_alert_or_the_dashboard_reads_is_exported_at_zero_from_the_start() {
        let text = Metrics::new().render();
        for line in [
            r#"challenge_event_handler_events_total{event="login"} 0"#,
            r#"challenge_event_handler_events_total{event="gdpr_deletion"} 0"#,
            r#"challenge_event_handler_events_processed_total{event="stat_item_updated"} 0"#,
            r#"challenge_event_handler_events_failed_total{reason="invalid"} 0"#,
            r#"challenge_event_handler_events_failed_total{reason="too_large"} 0"#,
            r#"challenge_event_handler_updates_not_applied_total{reason="player_not_initialized"} 0"#,
            r#"challenge_event_handler_flush_phase_seconds_total{phase="begin"} 0"#,
            r#"challenge_event_handler_flush_phase_seconds_total{phase="write"} 0"#,
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
    }

    #[test]
    fn names_include_labelled_vectors_before_any_value() {
        let names = Metrics::new().names();
        assert!(names.contains(&"challenge_event_handler_events_failed_total".to_owned()));
        assert!(names.contains(&"challenge_event_handler_flush_duration_seconds".to_owned()));
        assert!(names.contains(&"challenge_event_handler_phase".to_owned()));
        assert!(names.contains(&"challenge_event_handler_flush_phase_seconds_total".to_owned()));
    }

    #[test]
    fn the_names_the_go_handler_promised_are_exported() {
        let m = Metrics::new();
        m.events.with_label_values(&["login"]).inc();
        m.events_processed.with_label_values(&["login"]).inc();
        m.events_failed.with_label_values(&["invalid"]).inc();
        let text = m.render();
        for name in [
            "challenge_event_handler_events_total",
            "challenge_event_handler_events_processed_total",
            "challenge_event_handler_events_failed_total",
            "challenge_event_handler_event_processing_duration_seconds",
            "challenge_event_handler_buffer_size",
            "challenge_event_handler_buffer_spilled",
            "challenge_event_handler_flush_retry_keys",
            "challenge_event_handler_flush_duration_seconds",
            "challenge_event_handler_db_batch_size",
            "challenge_event_handler_wal_append_duration_seconds",
            "challenge_event_handler_wal_batch_size",
            "challenge_event_handler_wal_bytes",
            "challenge_event_handler_wal_disk_bytes",
            "challenge_event_handler_wal_replayed_total",
            "challenge_event_handler_events_duplicate_total",
            "challenge_event_handler_events_ignored_total",
            "challenge_event_handler_flush_failures_total",
            "challenge_event_handler_flush_timeouts_total",
            "challenge_event_handler_gdpr_deletions_total",
            "challenge_event_handler_gdpr_rows_deleted_total",
            "challenge_event_handler_gdpr_deletions_pending",
            "challenge_event_handler_wal_max_bytes",
            "challenge_event_handler_last_flush_success_timestamp_seconds",
            "challenge_event_handler_phase",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
