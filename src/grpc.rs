//! gRPC ingress: the four AGS `OnMessage` services (IAM login, third-party
//! login and GDPR data deletion; Social statistic updates), plus `grpc.health.v1` and
//! server reflection (v1 and v1alpha; the Extend sidecar and grpcurl use them).
//!
//! Each call: decode + validate ([`crate::event`]) → namespace filter → goal
//! rules ([`crate::rules`]) → WAL append ([`crate::wal`]), answered only when
//! the WAL says the updates are fsync'd. Errors map to gRPC status codes once,
//! here: bad input → `INVALID_ARGUMENT` naming the field; anything not durable
//! → `UNAVAILABLE` (retryable), never an OK.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::event::{self, Event, EventError, TimeSource};
use crate::proto::iam::account::v1::deletion_account_gdpr_gdpr_request_data_deletion_response_service_server::{
    DeletionAccountGdprGdprRequestDataDeletionResponseService,
    DeletionAccountGdprGdprRequestDataDeletionResponseServiceServer,
};
use crate::proto::iam::account::v1::GdprRequestDataDeletionResponse;
use crate::metrics::Metrics;
use crate::proto::iam::account::v1::user_authentication_user_logged_in_service_server::{
    UserAuthenticationUserLoggedInService, UserAuthenticationUserLoggedInServiceServer,
};
use crate::proto::iam::account::v1::user_authentication_user_third_party_logged_in_service_server::{
    UserAuthenticationUserThirdPartyLoggedInService,
    UserAuthenticationUserThirdPartyLoggedInServiceServer,
};
use crate::proto::iam::account::v1::{UserLoggedIn, UserThirdPartyLoggedIn};
use crate::proto::social::statistic::v1::statistic_stat_item_updated_service_server::{
    StatisticStatItemUpdatedService, StatisticStatItemUpdatedServiceServer,
};
use crate::proto::social::statistic::v1::StatItemUpdated;
use crate::rules::GoalIndex;
use crate::wal::{unix_ms, Appended, Wal, WalError};

impl From<EventError> for Status {
    fn from(e: EventError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

impl From<WalError> for Status {
    fn from(e: WalError) -> Self {
        match e {
            WalError::Full { .. } | WalError::Failed | WalError::Closed => {
                Status::unavailable(e.to_string())
            }
            // Never send storage details to a client; the log has them.
            _ => Status::internal("internal storage error"),
        }
    }
}

/// The generated servers of the AGS event services, all backed by one [`Ingress`].
pub struct Services {
    pub login: UserAuthenticationUserLoggedInServiceServer<Ingress>,
    pub third_party_login: UserAuthenticationUserThirdPartyLoggedInServiceServer<Ingress>,
    pub stat: StatisticStatItemUpdatedServiceServer<Ingress>,
    pub gdpr_deletion: DeletionAccountGdprGdprRequestDataDeletionResponseServiceServer<Ingress>,
}

/// The handler behind all four services.
#[derive(Clone)]
pub struct Ingress {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    goals: Arc<GoalIndex>,
    wal: Wal,
    metrics: Arc<Metrics>,
    in_flight: AtomicUsize,
}

/// Counts a call as in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Ingress {
    pub fn new(namespace: String, goals: Arc<GoalIndex>, wal: Wal, metrics: Arc<Metrics>) -> Self {
        Ingress {
            inner: Arc::new(Inner {
                namespace,
                goals,
                wal,
                metrics,
                in_flight: AtomicUsize::new(0),
            }),
        }
    }

    /// Calls being handled right now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    async fn handle(
        &self,
        kind: &'static str,
        namespace: &str,
        parse: impl FnOnce(i64) -> Result<(Event, TimeSource), EventError>,
    ) -> Result<Response<()>, Status> {
        let started = Instant::now();
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        let _in_flight = InFlight(&self.inner.in_flight);
        let m = &self.inner.metrics;
        m.events.with_label_values(&[kind]).inc();
        let result = self.process(namespace, parse).await;
        m.event_processing_duration
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(()) => m.events_processed.with_label_values(&[kind]).inc(),
            Err(status) => {
                let reason = match status.code() {
                    tonic::Code::InvalidArgument => "invalid",
                    tonic::Code::Unavailable => "unavailable",
                    _ => "internal",
                };
                m.events_failed.with_label_values(&[reason]).inc();
            }
        }
        result.map(Response::new)
    }

    async fn process(
        &self,
        namespace: &str,
        parse: impl FnOnce(i64) -> Result<(Event, TimeSource), EventError>,
    ) -> Result<(), Status> {
        let inner = &self.inner;
        if namespace != inner.namespace {
            inner.metrics.events_ignored.inc();
            tracing::debug!(namespace, "event from another namespace ignored");
            return Ok(());
        }
        let (event, time_source) = parse(unix_ms() as i64).inspect_err(|e| {
            tracing::debug!(error = %e, "invalid event rejected");
        })?;
        if time_source == TimeSource::ArrivalBadTimestamp {
            inner.metrics.events_bad_timestamp.inc();
            tracing::warn!(event_id = %event.id, "event timestamp unusable; using arrival time");
        }
        let records = inner.goals.records(&event);
        if records.is_empty() {
            return Ok(());
        }
        let deletion = event.kind == event::EventKind::GdprDeletion;
        let appended = inner
            .wal
            .append(event.id.clone(), records)
            .await
            .inspect_err(|e| {
                if !matches!(e, WalError::Full { .. } | WalError::Closed) {
                    tracing::error!(error = %e, "cannot make an event durable");
                }
            })?;
        match appended {
            Appended::Written { .. } => {
                if deletion {
                    tracing::info!(
                        audit = "gdpr_user_data_deletion",
                        user_id = %event.user_id,
                        namespace = %event.namespace,
                        event_id = %event.id,
                        "gdpr deletion acknowledged: durable in the WAL, applied at the next flush"
                    );
                }
                Ok(())
            }
            Appended::Duplicate => {
                inner.metrics.events_duplicate.inc();
                Ok(())
            }
        }
    }

    /// The four services, each with a decoding limit of `max_message_bytes`.
    pub fn services(&self, max_message_bytes: usize) -> Services {
        Services {
            login: UserAuthenticationUserLoggedInServiceServer::new(self.clone())
                .max_decoding_message_size(max_message_bytes),
            third_party_login: UserAuthenticationUserThirdPartyLoggedInServiceServer::new(
                self.clone(),
            )
            .max_decoding_message_size(max_message_bytes),
            stat: StatisticStatItemUpdatedServiceServer::new(self.clone())
                .max_decoding_message_size(max_message_bytes),
            gdpr_deletion: DeletionAccountGdprGdprRequestDataDeletionResponseServiceServer::new(
                self.clone(),
            )
            .max_decoding_message_size(max_message_bytes),
        }
    }
}

#[tonic::async_trait]
impl UserAuthenticationUserLoggedInService for Ingress {
    async fn on_message(&self, request: Request<UserLoggedIn>) -> Result<Response<()>, Status> {
        let msg = request.into_inner();
        self.handle("login", &msg.namespace, |now| event::from_login(&msg, now))
            .await
    }
}

#[tonic::async_trait]
impl UserAuthenticationUserThirdPartyLoggedInService for Ingress {
    async fn on_message(
        &self,
        request: Request<UserThirdPartyLoggedIn>,
    ) -> Result<Response<()>, Status> {
        let msg = request.into_inner();
        self.handle("third_party_login", &msg.namespace, |now| {
            event::from_third_party_login(&msg, now)
        })
        .await
    }
}

#[tonic::async_trait]
impl StatisticStatItemUpdatedService for Ingress {
    async fn on_message(&self, request: Request<StatItemUpdated>) -> Result<Response<()>, Status> {
        let msg = request.into_inner();
        self.handle("stat_item_updated", &msg.namespace, |now| {
            event::from_stat(&msg, now)
        })
        .await
    }
}

#[tonic::async_trait]
impl DeletionAccountGdprGdprRequestDataDeletionResponseService for Ingress {
    async fn on_message(
        &self,
        request: Request<GdprRequestDataDeletionResponse>,
    ) -> Result<Response<()>, Status> {
        let msg = request.into_inner();
        self.handle("gdpr_deletion", event::gdpr_namespace(&msg), |now| {
            event::from_gdpr_deletion(&msg, now)
        })
        .await
    }
}
