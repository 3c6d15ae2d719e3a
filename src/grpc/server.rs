//! The gRPC server: the four AGS event services of one [`Ingress`],
//! `grpc.health.v1` and reflection, and its drain at shutdown.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::ingest::Ingress;

/// How long the server keeps going once no call is in flight, so that the
/// answers just made are written before the connections close.
const ANSWER_LINGER: Duration = Duration::from_millis(100);

/// Serves the AGS event services, `grpc.health.v1` and reflection on
/// `listener` until `stop`; then no new call is taken and calls in flight
/// get `grace` to be answered.
pub async fn serve(
    listener: TcpListener,
    ingress: Ingress,
    max_message_bytes: usize,
    grace: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let (events, names) = ingress.routes(max_message_bytes, &reporter).await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let stopping = stop.clone();
    let server = tonic::transport::Server::builder()
        .add_routes(events)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // TCP_NODELAY: a unary answer is several small HTTP/2 writes; Nagle's
        // algorithm would hold them back for the peer's delayed ACK.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                stopping.cancelled().await;
            },
        );
    tokio::pin!(server);
    let ended = tokio::select! {
        result = &mut server => Some(result),
        _ = stop.cancelled() => None,
    };
    let ended = match ended {
        // The server failed by itself, not stopped.
        Some(result) if !stop.is_cancelled() => return result.map_err(Into::into),
        other => other,
    };
    // Stopping: no new connections, and no new call on the path (gRPC or
    // HTTP). Calls in flight get the grace period to be answered, HTTP ones
    // too when the server ended with the stop (no connection open); idle
    // connections are not waited for (a client may keep its connection open
    // forever), they are closed when `server` is dropped.
    ingress.close();
    // A client on a connection still open, or watching, sees the server
    // and every event service go NOT_SERVING.
    for name in std::iter::once("").chain(names) {
        reporter
            .set_service_status(name, tonic_health::ServingStatus::NotServing)
            .await;
    }
    tracing::info!(
        in_flight = ingress.in_flight(),
        "shutting down: no new calls; finishing calls in flight"
    );
    let deadline = tokio::time::Instant::now() + grace;
    let mut result = ended;
    loop {
        if ingress.in_flight() == 0 {
            // A call leaves the count when its answer is made, before the
            // server has written it: a moment more for those answers.
            if result.is_none() {
                let linger = tokio::time::sleep(ANSWER_LINGER.min(grace));
                tokio::select! {
                    ended = &mut server => result = Some(ended),
                    _ = linger => {}
                }
            }
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                in_flight = ingress.in_flight(),
                grace = ?grace,
                "calls still in flight after the grace period; closing anyway (a gRPC call cut \
                 here was not acknowledged)"
            );
            break;
        }
        let tick = tokio::time::sleep(Duration::from_millis(10));
        match &result {
            Some(_) => tick.await,
            None => tokio::select! {
                ended = &mut server => result = Some(ended),
                _ = tick => {}
            },
        }
    }
    result.unwrap_or(Ok(())).map_err(Into::into)
}
