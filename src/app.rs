//! The service assembled: `App::build(settings)` binds the listeners and opens
//! the WAL; `run_until_stopped(token)` starts up (migrate, lease, replay, flush),
//! serves until the token is cancelled, then shuts down in order: stop
//! accepting, finish in-flight calls, final flush, close the WAL.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::buffer::Buffer;
use crate::config::{challenges, Settings};
use crate::flusher::{backoff, Flusher, Intake};
use crate::grpc::Ingress;
use crate::health::{self, Health, Phase};
use crate::metrics::Metrics;
use crate::rules::GoalIndex;
use crate::store::postgres::PgStore;
use crate::store::{ProgressStore, StoreError};
use crate::wal::{self, WalConfig, WalStore};

pub struct App {
    settings: Settings,
    goals: Arc<GoalIndex>,
    grpc: TcpListener,
    http: TcpListener,
    store: Arc<PgStore>,
    wal: WalStore,
    instance_id: String,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl App {
    /// Loads `challenges.json`, opens the WAL and binds both ports. Does not
    /// touch the database: that happens in [`App::run_until_stopped`].
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        let goals = challenges::load(&settings.config_path)?;
        let goals = Arc::new(GoalIndex::new(goals));
        let instance_id = match &settings.instance_id {
            Some(id) => id.clone(),
            None => wal::instance_id(&settings.wal_dir).with_context(|| {
                format!(
                    "cannot read or create the instance id in {}",
                    settings.wal_dir.display()
                )
            })?,
        };
        let wal_config = WalConfig {
            dir: settings.wal_dir.clone(),
            max_bytes: settings.wal_max_bytes,
            dedup_window: settings.dedup_window,
            dedup_max_marks: settings.dedup_max_marks,
            recovery: settings.wal_recovery,
            cache_bytes: settings.wal_cache_bytes,
        };
        let wal = tokio::task::spawn_blocking(move || WalStore::open(wal_config))
            .await
            .context("WAL open task failed")??;
        let grpc = TcpListener::bind(settings.grpc_addr)
            .await
            .with_context(|| format!("cannot bind the gRPC port {}", settings.grpc_addr))?;
        let http = TcpListener::bind(settings.metrics_addr)
            .await
            .with_context(|| format!("cannot bind the metrics port {}", settings.metrics_addr))?;
        let store = Arc::new(PgStore::connect_lazy(
            settings.database.clone(),
            settings.db_max_connections,
            settings.db_batch_size,
        ));
        Ok(App {
            settings,
            goals,
            grpc,
            http,
            store,
            wal,
            instance_id,
            metrics: Arc::new(Metrics::new()),
            health: Arc::new(Health::default()),
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        health::local_addr(&self.grpc)
    }

    pub fn http_addr(&self) -> SocketAddr {
        health::local_addr(&self.http)
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Runs until `shutdown` is cancelled (or a fatal error), then shuts down
    /// gracefully. An error means the service stopped for a reason an operator
    /// must see (the process should exit non-zero).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let App {
            settings,
            goals,
            grpc,
            http,
            store,
            wal: mut wal_store,
            instance_id,
            metrics,
            health,
        } = self;
        let tasks = TaskTracker::new();
        let http_stop = CancellationToken::new();
        let http_addr = health::local_addr(&http);
        tasks.spawn(health::serve(
            http,
            health.clone(),
            metrics.clone(),
            http_stop.clone(),
        ));
        tracing::info!(
            grpc = %health::local_addr(&grpc),
            http = %http_addr,
            goals = goals.len(),
            instance_id = %instance_id,
            namespace = %settings.namespace,
            "starting"
        );

        // Fatal conditions (WAL fsync failure, fenced lease) stop the service too.
        let fatal = CancellationToken::new();
        let stop = CancellationToken::new();
        {
            let (shutdown, fatal, stop) = (shutdown.clone(), fatal.clone(), stop.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = fatal.cancelled() => {}
                }
                stop.cancel();
            });
        }

        // 1. Schema and lease (waiting for the database as long as it takes).
        if settings.migrate {
            let migrated =
                retry("run database migrations", &stop, &fatal, || store.migrate()).await;
            if migrated.is_none() {
                return finish(tasks, http_stop, &fatal).await;
            }
        }
        let Some(lease) = retry("read this instance's watermark", &stop, &fatal, || {
            store.lease(&instance_id)
        })
        .await
        else {
            return finish(tasks, http_stop, &fatal).await;
        };

        // 2. Replay everything above the watermark.
        health.set_phase(Phase::Replaying);
        let watermark = lease.applied_seq;
        let wal_last = wal_store.last_seq();
        let pending = wal_store.records();
        let (wal_store, buffer, replayed) = tokio::task::spawn_blocking(move || {
            let mut buffer = Buffer::starting_after(watermark);
            let replayed = wal_store.replay(watermark, &mut buffer);
            replayed.map(|n| (wal_store, buffer, n))
        })
        .await
        .context("WAL replay task failed")??;
        metrics.wal_replayed.inc_by(replayed);
        metrics
            .gdpr_deletions_pending
            .set(buffer.deletions.len() as i64);
        tracing::info!(
            epoch = lease.epoch,
            watermark,
            wal_records = pending,
            replayed,
            "wal replayed"
        );
        let buffer = Arc::new(Mutex::new(buffer));
        let flush_early = Arc::new(Notify::new());
        let next_seq = wal_last.max(watermark) + 1;
        let intake = Intake {
            buffer: buffer.clone(),
            flush_early: flush_early.clone(),
            max_keys: settings.buffer_max_keys,
            metrics: metrics.clone(),
        };
        let (wal, wal_thread) =
            wal_store.start(next_seq, intake, metrics.clone(), fatal.clone())?;
        health.attach_wal(wal.stats());
        let mut flusher = Flusher::new(
            store.clone(),
            lease,
            buffer,
            wal.clone(),
            metrics.clone(),
            health.clone(),
        );

        // 3. Flush the replayed updates before taking new ones.
        let flushed = retry_flush(&mut flusher, &stop, &fatal, settings.flush_interval).await;
        if flushed {
            // 4. Serve.
            health.set_phase(Phase::Serving);
            let ingress = Ingress::new(
                settings.namespace.clone(),
                goals,
                wal.clone(),
                metrics.clone(),
            );
            let flusher_stop = CancellationToken::new();
            let flush_loop = tokio::spawn(flusher.run(
                settings.flush_interval,
                flush_early,
                flusher_stop.clone(),
                fatal.clone(),
            ));
            let served = serve_grpc(grpc, ingress, &settings, stop.clone()).await;
            health.set_phase(Phase::ShuttingDown);
            if let Err(e) = &served {
                tracing::error!(error = %e, "gRPC server failed");
                fatal.cancel();
            }
            flusher_stop.cancel();
            flusher = flush_loop.await.context("flush loop panicked")?;
            final_flush(&mut flusher, &fatal, settings.shutdown_grace).await;
        } else {
            health.set_phase(Phase::ShuttingDown);
        }

        // 5. Close the WAL: the writer exits once every handle is gone.
        drop(flusher);
        drop(wal);
        let _ = tokio::task::spawn_blocking(move || wal_thread.join()).await;
        finish(tasks, http_stop, &fatal).await
    }
}

async fn serve_grpc(
    listener: TcpListener,
    ingress: Ingress,
    settings: &Settings,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let services = ingress.services(settings.grpc_max_message_bytes);
    serving(&reporter, &services.login).await;
    serving(&reporter, &services.third_party_login).await;
    serving(&reporter, &services.stat).await;
    serving(&reporter, &services.gdpr_deletion).await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let grace = settings.shutdown_grace;
    let stopping = stop.clone();
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(services.login)
        .add_service(services.third_party_login)
        .add_service(services.stat)
        .add_service(services.gdpr_deletion)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            stopping.cancelled().await;
        });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.map_err(Into::into),
        _ = stop.cancelled() => {}
    }
    // Stopping: no new connections. Calls in flight get the grace period to be
    // answered; idle connections are not waited for (a client may keep its
    // connection open forever), they are closed when `server` is dropped.
    tracing::info!(
        in_flight = ingress.in_flight(),
        "shutting down: no new calls; finishing calls in flight"
    );
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        if ingress.in_flight() == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                in_flight = ingress.in_flight(),
                grace = ?grace,
                "calls still in flight after the grace period; closing anyway (they were not acknowledged)"
            );
            return Ok(());
        }
        tokio::select! {
            result = &mut server => return result.map_err(Into::into),
            _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
        }
    }
}

/// Marks a service as serving in `grpc.health.v1` (the value only gives its type).
async fn serving<S: tonic::server::NamedService>(
    reporter: &tonic_health::server::HealthReporter,
    _service: &S,
) {
    reporter.set_serving::<S>().await;
}

/// The last flush on the way out. A failure leaves the WAL for the next start.
async fn final_flush<S: ProgressStore>(
    flusher: &mut Flusher<S>,
    fatal: &CancellationToken,
    grace: Duration,
) {
    if fatal.is_cancelled() || !flusher.has_pending() {
        return;
    }
    match tokio::time::timeout(grace, flusher.flush_once()).await {
        Ok(Ok(rows)) => tracing::info!(rows, "final flush done"),
        Ok(Err(e @ StoreError::Fenced { .. })) => {
            tracing::error!(error = %e, "final flush refused: this instance was fenced");
            fatal.cancel();
        }
        Ok(Err(e)) => tracing::warn!(
            error = %e,
            "final flush failed; the acknowledged updates stay in the WAL and are applied at the next start"
        ),
        Err(_) => tracing::warn!(
            "final flush timed out; the acknowledged updates stay in the WAL and are applied at the next start"
        ),
    }
}

/// Flushes the replayed updates, retrying until it works or `stop`.
async fn retry_flush<S: ProgressStore>(
    flusher: &mut Flusher<S>,
    stop: &CancellationToken,
    fatal: &CancellationToken,
    interval: Duration,
) -> bool {
    let mut failures = 0;
    loop {
        match flusher.flush_once().await {
            Ok(_) => return true,
            Err(e @ StoreError::Fenced { .. }) => {
                tracing::error!(error = %e, "cannot start");
                fatal.cancel();
                return false;
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, "cannot flush the replayed WAL yet; retrying");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(backoff(interval, failures)) => {}
        }
    }
}

/// Runs `op` until it succeeds or `stop`; logs the first failure and the
/// recovery. An error that waiting cannot fix cancels `fatal`.
async fn retry<T, F, Fut>(
    what: &str,
    stop: &CancellationToken,
    fatal: &CancellationToken,
    mut op: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut failures = 0;
    loop {
        match op().await {
            Ok(value) => {
                if failures > 0 {
                    tracing::info!(
                        failed_attempts = failures,
                        "database reachable; could {what}"
                    );
                }
                return Some(value);
            }
            Err(e) if !e.is_transient() => {
                tracing::error!(error = %e, "cannot {what}; this needs an operator");
                fatal.cancel();
                return None;
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, "cannot {what} yet; retrying until the database answers");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(backoff(Duration::from_millis(200), failures).min(Duration::from_secs(5))) => {}
        }
    }
}

async fn finish(
    tasks: TaskTracker,
    http_stop: CancellationToken,
    fatal: &CancellationToken,
) -> anyhow::Result<()> {
    http_stop.cancel();
    tasks.close();
    tasks.wait().await;
    if fatal.is_cancelled() {
        anyhow::bail!("stopped after a fatal error (see the log above)");
    }
    tracing::info!("stopped");
    Ok(())
}
