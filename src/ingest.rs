//! The one ingestion path behind gRPC (`grpc/`) and HTTP JSON (`http_ingest.rs`):
//! validate ([`crate::event`]) → namespace filter → goal rules
//! ([`crate::rules`]) → WAL append ([`crate::wal`]), answered only when the
//! WAL says the records are fsync'd. Each front end maps [`IngestError`] to
//! its own status codes once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::clock::unix_ms;
use crate::event::{Event, EventError, EventKind, TimeSource};
use crate::metrics::Metrics;
use crate::rules::GoalIndex;
use crate::wal::{Appended, Wal, WalError};

pub use crate::event::EventType;

/// What happened to an accepted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its records are fsync'd in the WAL.
    Written,
    /// Its id was seen within the dedup window: nothing written.
    Duplicate,
    /// Another namespace: acknowledged and ignored.
    OtherNamespace,
    /// Valid, but no goal uses it: nothing to write.
    NoGoal,
    /// An M5 stat event with a negative value: skipped, as AccelByte's handler skips it.
    NegativeValue,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Written => "written",
            Outcome::Duplicate => "duplicate",
            Outcome::OtherNamespace => "ignored_other_namespace",
            Outcome::NoGoal => "no_matching_goal",
            Outcome::NegativeValue => "negative_value_skipped",
        }
    }
}

/// Why an event was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Bad input: the sender's fault, never going to succeed on a retry.
    #[error(transparent)]
    Invalid(#[from] EventError),
    /// Could not be made durable: the sender should retry later.
    #[error(transparent)]
    Unavailable(WalError),
    /// A storage fault; details are in the log, not in the answer.
    #[error("internal storage error")]
    Internal(WalError),
}

impl From<WalError> for IngestError {
    fn from(e: WalError) -> Self {
        match e {
            WalError::Full { .. } | WalError::Failed | WalError::Closed => {
                IngestError::Unavailable(e)
            }
            other => IngestError::Internal(other),
        }
    }
}

impl IngestError {
    fn reason(&self) -> &'static str {
        match self {
            IngestError::Invalid(_) => crate::metrics::failure::INVALID,
            IngestError::Unavailable(_) => crate::metrics::failure::UNAVAILABLE,
            IngestError::Internal(_) => crate::metrics::failure::INTERNAL,
        }
    }
}

/// The ingestion path; cheap to clone.
#[derive(Clone)]
pub struct Ingress {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    goals: Arc<GoalIndex>,
    wal: Wal,
    metrics: Arc<Metrics>,
    /// `events_total` and `events_processed_total` per event type, looked up once.
    counters: [(prometheus::IntCounter, prometheus::IntCounter); EventType::ALL.len()],
    /// Calls in flight, and [`CLOSED`] once the path is closed: one atomic,
    /// so that a call is either counted before the close or refused after
    /// it (see [`Ingress::close`]).
    in_flight: AtomicUsize,
}

/// The bit of `in_flight` that says the path is closed.
const CLOSED: usize = 1 << (usize::BITS - 1);

/// Counts a call as in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    /// The call counted, or None when the path is closed.
    fn enter(count: &'a AtomicUsize) -> Option<Self> {
        if count.fetch_add(1, Ordering::AcqRel) & CLOSED != 0 {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlight(count))
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Ingress {
    pub fn new(namespace: String, goals: Arc<GoalIndex>, wal: Wal, metrics: Arc<Metrics>) -> Self {
        let counters = EventType::ALL.map(|t| {
            (
                metrics.events.with_label_values(&[t.label()]),
                metrics.events_processed.with_label_values(&[t.label()]),
            )
        });
        Ingress {
            inner: Arc::new(Inner {
                namespace,
                goals,
                wal,
                metrics,
                counters,
                in_flight: AtomicUsize::new(0),
            }),
        }
    }

    /// Calls being handled right now (gRPC and HTTP).
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire) & !CLOSED
    }

    /// Takes no new call from now on (they are answered `UNAVAILABLE`, as
    /// a closed WAL answers): once this returns, every call that will be
    /// acknowledged is counted in [`Ingress::in_flight`]. Without it, an
    /// HTTP request that took the path just before the stop could be counted
    /// only after the shutdown had seen no call in flight, and acknowledged
    /// after the final flush.
    pub fn close(&self) {
        self.inner.in_flight.fetch_or(CLOSED, Ordering::AcqRel);
    }

    /// Takes one event: `namespace` is the one it claims, `parse` validates it
    /// given the arrival time. Returns only once its records are durable.
    pub async fn ingest(
        &self,
        kind: EventType,
        namespace: &str,
        parse: impl FnOnce(i64) -> Result<(Event, TimeSource), EventError>,
    ) -> Result<Outcome, IngestError> {
        let started = Instant::now();
        let m = &self.inner.metrics;
        let (received, processed) = &self.inner.counters[kind as usize];
        received.inc();
        let in_flight = InFlight::enter(&self.inner.in_flight);
        let result = match &in_flight {
            Some(_) => self.process(namespace, parse).await,
            None => Err(IngestError::Unavailable(WalError::Closed)),
        };
        drop(in_flight);
        m.event_processing_duration
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => processed.inc(),
            Err(e) => m.events_failed.with_label_values(&[e.reason()]).inc(),
        }
        result
    }

    async fn process(
        &self,
        namespace: &str,
        parse: impl FnOnce(i64) -> Result<(Event, TimeSource), EventError>,
    ) -> Result<Outcome, IngestError> {
        let inner = &self.inner;
        // Validation first, then the namespace, as AccelByte's handler does:
        // an invalid event is refused whatever namespace it names.
        let (event, time_source) = parse(unix_ms() as i64).inspect_err(|e| {
            tracing::debug!(error = %e, "invalid event rejected");
        })?;
        if namespace != inner.namespace {
            inner.metrics.events_ignored.inc();
            tracing::debug!(namespace, "event from another namespace ignored");
            return Ok(Outcome::OtherNamespace);
        }
        if time_source == TimeSource::ArrivalBadTimestamp {
            inner.metrics.events_bad_timestamp.inc();
            tracing::warn!(event_id = %event.id, "event timestamp unusable; using arrival time");
        }
        let records = inner.goals.records(&event);
        if records.is_empty() {
            if inner.goals.skips_negative_value(&event) {
                inner.metrics.events_negative_value.inc();
                tracing::warn!(
                    event_id = %event.id,
                    user_id = %event.user_id,
                    "negative stat value: the event is acknowledged and skipped, as AccelByte's handler skips it"
                );
                return Ok(Outcome::NegativeValue);
            }
            return Ok(Outcome::NoGoal);
        }
        let is_deletion = event.kind == EventKind::GdprDeletion;
        let requested_ms = event.time_ms;
        let Event {
            id,
            user_id,
            namespace,
            ..
        } = event;
        // The id is kept only for a deletion's audit line.
        let audit_id = if is_deletion {
            id.clone()
        } else {
            String::new()
        };
        let appended = inner.wal.append(id, records).await.inspect_err(|e| {
            if !matches!(e, WalError::Full { .. } | WalError::Closed) {
                tracing::error!(error = %e, "cannot make an event durable");
            }
        })?;
        match appended {
            Appended::Written { .. } => {
                if is_deletion {
                    tracing::info!(
                        audit = "gdpr_user_data_deletion",
                        user_id = %user_id,
                        namespace = %namespace,
                        event_id = %audit_id,
                        requested_at = %crate::clock::rfc3339(requested_ms),
                        "gdpr deletion acknowledged: durable in the WAL, applied at the next flush"
                    );
                }
                Ok(Outcome::Written)
            }
            Appended::Duplicate => {
                inner.metrics.events_duplicate.inc();
                Ok(Outcome::Duplicate)
            }
        }
    }
}

/// The ingestion path as the HTTP server sees it: open only while the
/// service serves (the HTTP port is up from the start, for `/healthz`).
#[derive(Default)]
pub struct Gate(RwLock<Option<Ingress>>);

impl Gate {
    pub fn open(&self, ingress: Ingress) {
        *self.0.write().expect("gate lock poisoned") = Some(ingress);
    }

    /// Closed for good: no new call through the path it held.
    pub fn close(&self) {
        if let Some(ingress) = self.0.write().expect("gate lock poisoned").take() {
            ingress.close();
        }
    }

    /// The ingestion path, when serving.
    pub fn get(&self) -> Option<Ingress> {
        self.0.read().expect("gate lock poisoned").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_counted_before_the_close_or_refused_after_it() {
        let count = AtomicUsize::new(0);
        let first = InFlight::enter(&count).expect("open");
        let second = InFlight::enter(&count).expect("open");
        count.fetch_or(CLOSED, Ordering::AcqRel);
        // Counted before the close: still waited for.
        assert_eq!(count.load(Ordering::Acquire) & !CLOSED, 2);
        assert!(InFlight::enter(&count).is_none(), "a call after the close");
        assert_eq!(count.load(Ordering::Acquire) & !CLOSED, 2);
        drop((first, second));
        assert_eq!(count.load(Ordering::Acquire), CLOSED);
    }
}
