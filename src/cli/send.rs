//! `challenge-event-handler send`: sends one test event to a running service,
//! so trying the service needs no other tool.

use anyhow::Context;

use crate::proto::iam::account::v1::user_authentication_user_logged_in_service_client::UserAuthenticationUserLoggedInServiceClient;
use crate::proto::iam::account::v1::deletion_account_gdpr_gdpr_request_data_deletion_response_service_client::DeletionAccountGdprGdprRequestDataDeletionResponseServiceClient;
use crate::proto::iam::account::v1::{
    AnonymousSchema19, DeletionGdpr, GdprRequestDataDeletionResponse,
    GdprRequestDataDeletionResponsePayloadData, UserAccount, UserLoggedIn,
};
use crate::proto::social::statistic::v1::statistic_stat_item_updated_service_client::StatisticStatItemUpdatedServiceClient;
use crate::proto::social::statistic::v1::{StatItem, StatItemUpdated};

#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// The service's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:6565", global = true)]
    pub addr: String,
    /// The event's namespace (must equal the service's AB_NAMESPACE to count).
    #[arg(long, env = "AB_NAMESPACE", global = true)]
    pub namespace: Option<String>,
    /// The user the event is about.
    #[arg(long, default_value = "test-user", global = true)]
    pub user: String,
    /// The event id (default: a new random id; reuse one to see deduplication).
    #[arg(long, global = true)]
    pub id: Option<String>,
    /// The event's RFC 3339 timestamp (default: now).
    #[arg(long, global = true)]
    pub timestamp: Option<String>,
    #[command(subcommand)]
    pub event: SendEvent,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum SendEvent {
    /// An IAM userLoggedIn event.
    Login,
    /// A Social statItemUpdated event.
    Stat {
        /// The stat code.
        #[arg(long)]
        code: String,
        /// The stat's latest value (absolute goals; M5 goals).
        #[arg(long, default_value_t = 0.0)]
        value: f64,
        /// The increment (increment goals).
        #[arg(long, default_value_t = 1.0)]
        inc: f64,
    },
    /// An IAM GDPR data deletion (gdprRequestDataDeletionResponse): deletes all
    /// of the user's challenge progress in the namespace.
    GdprDeletion,
}

pub async fn send(args: SendArgs) -> anyhow::Result<()> {
    let namespace = args.namespace.unwrap_or_else(|| "mygame".to_owned());
    let id = args
        .id
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let timestamp = args
        .timestamp
        .unwrap_or_else(|| chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let endpoint = tonic::transport::Endpoint::from_shared(args.addr.clone())
        .with_context(|| format!("{:?} is not a valid address", args.addr))?;
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.addr))?;
    let what = match args.event {
        SendEvent::Login => {
            let msg = login_message(&namespace, &args.user, &id, &timestamp);
            UserAuthenticationUserLoggedInServiceClient::new(channel)
                .on_message(msg)
                .await?;
            "login".to_owned()
        }
        SendEvent::Stat { code, value, inc } => {
            let msg = stat_message(&namespace, &code, &args.user, value, inc, &id, &timestamp);
            StatisticStatItemUpdatedServiceClient::new(channel)
                .on_message(msg)
                .await?;
            format!("stat {code}={value} (inc {inc})")
        }
        SendEvent::GdprDeletion => {
            let msg = gdpr_deletion_message(&namespace, &args.user, &id, &timestamp);
            DeletionAccountGdprGdprRequestDataDeletionResponseServiceClient::new(channel)
                .on_message(msg)
                .await?;
            "GDPR data deletion".to_owned()
        }
    };
    println!(
        "acknowledged: {what} for user {:?} in namespace {namespace:?}, event id {id}",
        args.user
    );
    Ok(())
}

/// A `userLoggedIn` event as AGS sends it (user id at the top level and in the payload).
pub fn login_message(namespace: &str, user: &str, id: &str, timestamp: &str) -> UserLoggedIn {
    UserLoggedIn {
        payload: Some(AnonymousSchema19 {
            user_account: Some(UserAccount {
                user_id: user.to_owned(),
                namespace: namespace.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        id: id.to_owned(),
        name: "userLoggedIn".into(),
        namespace: namespace.to_owned(),
        timestamp: timestamp.to_owned(),
        user_id: user.to_owned(),
        ..Default::default()
    }
}

/// A `statItemUpdated` event as AGS sends it.
pub fn stat_message(
    namespace: &str,
    code: &str,
    user: &str,
    latest_value: f64,
    inc: f64,
    id: &str,
    timestamp: &str,
) -> StatItemUpdated {
    StatItemUpdated {
        payload: Some(StatItem {
            namespace: namespace.to_owned(),
            stat_code: code.to_owned(),
            user_id: user.to_owned(),
            latest_value,
            inc,
            ..Default::default()
        }),
        id: id.to_owned(),
        name: "statItemUpdated".into(),
        namespace: namespace.to_owned(),
        timestamp: timestamp.to_owned(),
        user_id: user.to_owned(),
        ..Default::default()
    }
}

/// A `gdprRequestDataDeletionResponse` event as AGS sends it (the user in the payload).
pub fn gdpr_deletion_message(
    namespace: &str,
    user: &str,
    id: &str,
    timestamp: &str,
) -> GdprRequestDataDeletionResponse {
    GdprRequestDataDeletionResponse {
        payload: Some(GdprRequestDataDeletionResponsePayloadData {
            deletion_gdpr: Some(DeletionGdpr {
                user_id: user.to_owned(),
                namespace: namespace.to_owned(),
                ..Default::default()
            }),
        }),
        id: id.to_owned(),
        name: "gdprRequestDataDeletionResponse".into(),
        namespace: namespace.to_owned(),
        timestamp: timestamp.to_owned(),
        ..Default::default()
    }
}
