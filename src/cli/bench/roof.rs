//! `bench --roof`: a no-op gRPC server with the service's protos (the
//! hidden `noop-server` command), run as a child process.

use anyhow::Context;
use tonic::{Request, Response, Status};

use crate::proto::iam::account::v1::deletion_account_gdpr_gdpr_request_data_deletion_response_service_server::{
    DeletionAccountGdprGdprRequestDataDeletionResponseService,
    DeletionAccountGdprGdprRequestDataDeletionResponseServiceServer,
};
use crate::proto::iam::account::v1::user_authentication_user_logged_in_service_server::{
    UserAuthenticationUserLoggedInService, UserAuthenticationUserLoggedInServiceServer,
};
use crate::proto::iam::account::v1::user_authentication_user_third_party_logged_in_service_server::{
    UserAuthenticationUserThirdPartyLoggedInService,
    UserAuthenticationUserThirdPartyLoggedInServiceServer,
};
use crate::proto::iam::account::v1::{
    GdprRequestDataDeletionResponse, UserLoggedIn, UserThirdPartyLoggedIn,
};
use crate::proto::social::statistic::v1::statistic_stat_item_updated_service_server::{
    StatisticStatItemUpdatedService, StatisticStatItemUpdatedServiceServer,
};
use crate::proto::social::statistic::v1::StatItemUpdated;

/// A no-op server of this binary, started as a child process; killed on drop.
pub(super) struct Roof {
    child: std::process::Child,
    pub(super) addr: String,
}

impl Roof {
    pub(super) fn start() -> anyhow::Result<Roof> {
        use std::io::BufRead;
        let exe = std::env::current_exe().context("cannot find this binary")?;
        let mut child = std::process::Command::new(exe)
            .args(["noop-server", "--bind", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .context("cannot start the no-op server")?;
        let stdout = child.stdout.take().context("no-op server stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected no-op server output {line:?}"))?;
        Ok(Roof {
            addr: format!("http://{addr}"),
            child,
        })
    }
}

impl Drop for Roof {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct NoopServerArgs {
    /// Where to listen; the bound address is printed as "listening on <addr>".
    #[arg(long, default_value = "127.0.0.1:0")]
    pub bind: std::net::SocketAddr,
}

/// Acknowledges every event without doing anything: the gRPC roof.
#[derive(Clone, Copy)]
pub(super) struct Noop;

#[tonic::async_trait]
impl UserAuthenticationUserLoggedInService for Noop {
    async fn on_message(&self, _: Request<UserLoggedIn>) -> Result<Response<()>, Status> {
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl UserAuthenticationUserThirdPartyLoggedInService for Noop {
    async fn on_message(&self, _: Request<UserThirdPartyLoggedIn>) -> Result<Response<()>, Status> {
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl StatisticStatItemUpdatedService for Noop {
    async fn on_message(&self, _: Request<StatItemUpdated>) -> Result<Response<()>, Status> {
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl DeletionAccountGdprGdprRequestDataDeletionResponseService for Noop {
    async fn on_message(
        &self,
        _: Request<GdprRequestDataDeletionResponse>,
    ) -> Result<Response<()>, Status> {
        Ok(Response::new(()))
    }
}

/// `noop-server`: the four event services, acknowledging everything.
pub async fn noop_server(args: NoopServerArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.bind).await?;
    println!("listening on {}", listener.local_addr()?);
    use std::io::Write;
    std::io::stdout().flush()?;
    tonic::transport::Server::builder()
        .add_service(UserAuthenticationUserLoggedInServiceServer::new(Noop))
        .add_service(UserAuthenticationUserThirdPartyLoggedInServiceServer::new(
            Noop,
        ))
        .add_service(StatisticStatItemUpdatedServiceServer::new(Noop))
        .add_service(DeletionAccountGdprGdprRequestDataDeletionResponseServiceServer::new(Noop))
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await?;
    Ok(())
}
