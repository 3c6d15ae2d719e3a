//! gRPC ingress: the four AGS `OnMessage` services (IAM login, third-party
//! login and GDPR data deletion; Social statistic updates), plus `grpc.health.v1` and
//! server reflection (v1 and v1alpha; the Extend sidecar and grpcurl use them).
//!
//! Each call is decoded ([`codec`]: a malformed body is `INVALID_ARGUMENT`)
//! and goes through the one ingestion path, [`crate::ingest`], answered only
//! when the WAL says its records are fsync'd. Errors map to gRPC status codes
//! once, here: bad input → `INVALID_ARGUMENT` naming the field; anything not
//! durable → `UNAVAILABLE` (retryable), never an OK.

pub mod codec;
pub mod server;

use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::{Request, Response, Status};
use tonic_health::server::HealthReporter;

use crate::event::{self, Event, EventError, TimeSource};
use crate::proto::iam::account::v1::deletion_account_gdpr_gdpr_request_data_deletion_response_service_server::{
    DeletionAccountGdprGdprRequestDataDeletionResponseService,
    DeletionAccountGdprGdprRequestDataDeletionResponseServiceServer,
};
use crate::proto::iam::account::v1::GdprRequestDataDeletionResponse;
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
pub use crate::ingest::Ingress;
use crate::ingest::{EventType, IngestError};

impl From<EventError> for Status {
    fn from(e: EventError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

/// gRPC's view of the ingestion path: a status for every failure.
impl From<IngestError> for Status {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Invalid(e) => Status::invalid_argument(e.to_string()),
            IngestError::Unavailable(e) => Status::unavailable(e.to_string()),
            // Never send storage details to a client; the log has them.
            IngestError::Internal(_) => Status::internal("internal storage error"),
        }
    }
}

impl Ingress {
    async fn on_message(
        &self,
        kind: EventType,
        namespace: &str,
        parse: impl FnOnce(i64) -> Result<(Event, TimeSource), EventError>,
    ) -> Result<Response<()>, Status> {
        self.ingest(kind, namespace, parse)
            .await
            .map(|_| Response::new(()))
            .map_err(Status::from)
    }

    /// The AGS event services, all backed by this [`Ingress`], each with a
    /// decoding limit of `max_message_bytes` and marked serving in `health`;
    /// and their names (to mark them not serving at a stop). A new event's
    /// service is added here and nowhere else in the server.
    pub async fn routes(
        &self,
        max_message_bytes: usize,
        health: &HealthReporter,
    ) -> (Routes, [&'static str; 4]) {
        let login = UserAuthenticationUserLoggedInServiceServer::new(self.clone())
            .max_decoding_message_size(max_message_bytes);
        let third_party_login =
            UserAuthenticationUserThirdPartyLoggedInServiceServer::new(self.clone())
                .max_decoding_message_size(max_message_bytes);
        let stat = StatisticStatItemUpdatedServiceServer::new(self.clone())
            .max_decoding_message_size(max_message_bytes);
        let gdpr_deletion =
            DeletionAccountGdprGdprRequestDataDeletionResponseServiceServer::new(self.clone())
                .max_decoding_message_size(max_message_bytes);
        let names = [
            serving(health, &login).await,
            serving(health, &third_party_login).await,
            serving(health, &stat).await,
            serving(health, &gdpr_deletion).await,
        ];
        let routes = Routes::new(login)
            .add_service(third_party_login)
            .add_service(stat)
            .add_service(gdpr_deletion);
        (routes, names)
    }
}

/// Marks a service as serving in `grpc.health.v1` (the value only gives its
/// type); returns its name.
async fn serving<S: NamedService>(health: &HealthReporter, _service: &S) -> &'static str {
    health.set_serving::<S>().await;
    S::NAME
}

#[tonic::async_trait]
impl UserAuthenticationUserLoggedInService for Ingress {
    async fn on_message(&self, request: Request<UserLoggedIn>) -> Result<Response<()>, Status> {
        let msg = request.into_inner();
        self.on_message(EventType::Login, &msg.namespace, |now| {
            event::from_login(&msg, now)
        })
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
        self.on_message(EventType::ThirdPartyLogin, &msg.namespace, |now| {
            event::from_third_party_login(&msg, now)
        })
        .await
    }
}

#[tonic::async_trait]
impl StatisticStatItemUpdatedService for Ingress {
    async fn on_message(&self, request: Request<StatItemUpdated>) -> Result<Response<()>, Status> {
        let msg = request.into_inner();
        self.on_message(EventType::Stat, &msg.namespace, |now| {
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
        self.on_message(
            EventType::GdprDeletion,
            event::gdpr_namespace(&msg),
            |now| event::from_gdpr_deletion(&msg, now),
        )
        .await
    }
}
