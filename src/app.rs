//! The service assembled: `App::build(settings)` binds the listeners and opens
//! the WAL; `run_until_stopped(token)` runs three phases — [`start_up`]
//! (the handler's tables and who owns `user_goal_progress`, lease, replay, flush), [`serve`] (gRPC, HTTP ingest and the flush
//! loop until the token is cancelled) and [`shut_down`] (stop accepting,
//! finish in-flight calls, final flush, close the WAL).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpIncoming;

use crate::buffer::Buffer;
use crate::config::{challenges, Settings};
use crate::flusher::{Flusher, Intake, MAX_BACKOFF};
use crate::grpc::Ingress;
use crate::health::{Health, Phase};
use crate::http;
use crate::http::access::{Access, RateLimit};
use crate::http::ingest::IngestState;
use crate::ingest;
use crate::metrics::Metrics;
use crate::retry::{self, Backoff, GiveUp};
use crate::rules::GoalIndex;
use crate::store::{Database, Owner, Prepared, ProgressStore, Store, StoreError, TableOwner};
use crate::wal::{self, Wal, WalConfig, WalStore, WalThread};

pub struct App {
    grpc: TcpListener,
    http: TcpListener,
    /// HTTP ingest's own port (`HTTP_INGEST_PORT`), if set.
    ingest: Option<TcpListener>,
    /// Who may write through HTTP ingest (the token file read at build).
    access: Access,
    core: Core,
}

/// Everything but the listeners (all `wal drain` needs).
struct Core {
    settings: Settings,
    goals: Arc<GoalIndex>,
    store: Arc<Store>,
    wal: WalStore,
    instance_id: String,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Core {
    /// Loads `challenges.json` and opens the WAL; the database is not touched.
    async fn build(settings: Settings) -> anyhow::Result<Core> {
        let loaded = challenges::load(&settings.config_path)?;
        tracing::info!(
            config = %settings.config_path.display(),
            goals = loaded.goals.len(),
            "challenges loaded: {}",
            loaded.generation.describe()
        );
        for warning in &loaded.warnings {
            tracing::warn!(config = %settings.config_path.display(), "{warning}");
        }
        let goals = Arc::new(GoalIndex::new(loaded.generation, loaded.goals));
        let instance_id = wal::instance_id(&settings.wal_dir, settings.instance_id.as_deref())
            .with_context(|| {
                format!(
                    "cannot read or record the instance id in {}",
                    settings.wal_dir.display()
                )
            })?;
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
        let store = Arc::new(
            Store::connect_lazy(
                &settings.database,
                settings.db_max_connections,
                settings.db_batch_size,
            )
            .with_cluster(settings.cluster.clone()),
        );
        let wal_dir = settings.wal_dir.clone();
        Ok(Core {
            settings,
            goals,
            store,
            wal,
            instance_id,
            metrics: {
                let metrics = Metrics::new();
                metrics.watch_wal_volume(wal_dir);
                Arc::new(metrics)
            },
            health: Arc::new(Health::default()),
        })
    }
}

impl App {
    /// Loads `challenges.json`, opens the WAL and binds both ports. Does not
    /// touch the database: that happens in [`App::run_until_stopped`].
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        let (grpc_addr, http_addr) = (settings.grpc_addr, settings.metrics_addr);
        let access = settings.http_ingest.access(&settings.database)?;
        let ingest_addr = settings.http_ingest.addr;
        let core = Core::build(settings).await?;
        let grpc = TcpListener::bind(grpc_addr)
            .await
            .with_context(|| format!("cannot bind the gRPC port {grpc_addr}"))?;
        let http = TcpListener::bind(http_addr)
            .await
            .with_context(|| format!("cannot bind the metrics port {http_addr}"))?;
        let ingest = match ingest_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind the HTTP ingest port {addr}"))?,
            ),
            None => None,
        };
        Ok(App {
            grpc,
            http,
            ingest,
            access,
            core,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        http::local_addr(&self.grpc)
    }

    pub fn http_addr(&self) -> SocketAddr {
        http::local_addr(&self.http)
    }

    /// HTTP ingest's own port, when `HTTP_INGEST_PORT` is set.
    pub fn ingest_addr(&self) -> Option<SocketAddr> {
        self.ingest.as_ref().map(http::local_addr)
    }

    pub fn instance_id(&self) -> &str {
        &self.core.instance_id
    }

    /// Runs until `shutdown` is cancelled (or a fatal error), then shuts down
    /// gracefully. An error means the service stopped for a reason an operator
    /// must see (the process should exit non-zero).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tasks = TaskTracker::new();
        let http_stop = CancellationToken::new();
        let App {
            grpc,
            http,
            ingest: ingest_listener,
            access,
            core:
                Core {
                    settings,
                    goals,
                    store,
                    wal,
                    instance_id,
                    metrics,
                    health,
                },
        } = self;
        tracing::info!(
            grpc = %http::local_addr(&grpc),
            http = %http::local_addr(&http),
            ingest = %http::local_addr(ingest_listener.as_ref().unwrap_or(&http)),
            goals = goals.len(),
            instance_id = %instance_id,
            namespace = %settings.namespace,
            store = %settings.database.describe(),
            "starting"
        );
        if let Database::Sqlite(path) = &settings.database {
            tracing::info!(
                path = %path.display(),
                "no database configured: using the embedded SQLite store (set DATABASE_URL or DB_HOST for PostgreSQL)"
            );
        }
        for warning in &settings.warnings {
            tracing::warn!("{warning}");
        }
        let gate = Arc::new(ingest::Gate::default());
        match access.describe() {
            (true, line) => tracing::warn!("{line}"),
            (false, line) => tracing::info!("{line}"),
        }
        if let Access::Tokens(tokens) = &access {
            metrics.http_ingest_tokens.set(tokens.count() as i64);
            tasks.spawn(tokens.clone().watch(metrics.clone(), http_stop.clone()));
        }
        let ingest_routes = http::ingest::router(
            IngestState {
                gate: gate.clone(),
                access,
                limit: (settings.http_ingest.rate > 0).then(|| {
                    Arc::new(RateLimit::new(
                        settings.http_ingest.rate,
                        settings.http_ingest.burst,
                    ))
                }),
                metrics: metrics.clone(),
            },
            settings.http_max_body_bytes,
        );
        let (shared, own) = match ingest_listener {
            Some(listener) => (None, Some((listener, ingest_routes))),
            None => (Some(ingest_routes), None),
        };
        tasks.spawn(http::serve(
            http,
            http::router(
                http::HttpState {
                    health: health.clone(),
                    metrics: metrics.clone(),
                },
                shared,
            ),
            http_stop.clone(),
        ));
        if let Some((listener, routes)) = own {
            tasks.spawn(http::serve(listener, routes, http_stop.clone()));
        }
        let lifetime = Lifetime::new(shutdown);
        metrics.wal_max_bytes.set(settings.wal_max_bytes as i64);
        let parts = Parts {
            goals: goals.clone(),
            store,
            wal,
            instance_id,
            metrics: metrics.clone(),
            health: health.clone(),
        };
        let upkeep_store = parts.store.clone();
        let mut left_in_wal = None;
        if let Some(running) = start_up(parts, &settings, &lifetime).await? {
            enter(&health, &metrics, Phase::Serving);
            tasks.spawn(upkeep(upkeep_store, metrics.clone(), lifetime.stop.clone()));
            let ingress = Ingress::new(
                settings.namespace.clone(),
                goals,
                running.wal.clone(),
                metrics.clone(),
            );
            gate.open(ingress.clone());
            {
                // HTTP ingest closes with gRPC: no new call once stopping.
                let (gate, stop) = (gate.clone(), lifetime.stop.clone());
                tokio::spawn(async move {
                    stop.cancelled().await;
                    gate.close();
                });
            }
            let flusher = serve(
                &running.flush_early,
                running.flusher,
                ingress,
                grpc,
                &settings,
                &lifetime,
            )
            .await?;
            enter(&health, &metrics, Phase::ShuttingDown);
            gate.close();
            left_in_wal = shut_down(
                flusher,
                running.wal,
                running.wal_thread,
                &settings,
                &lifetime,
            )
            .await;
        } else {
            enter(&health, &metrics, Phase::ShuttingDown);
        }
        finish(tasks, http_stop, &lifetime.fatal, left_in_wal).await
    }
}

/// How often every replica runs the cluster's upkeep (PostgreSQL).
const UPKEEP_EVERY: Duration = Duration::from_secs(15);
/// How long an upkeep round waits for the cluster lock before it lets the
/// flushes go on and tries again next round.
const UPKEEP_LOCK_WAIT: Duration = Duration::from_secs(2);

/// The cluster's upkeep until `stop`: a new ledger table every quarter of
/// LEDGER_WINDOW, expired tables dropped, expired tombstones removed.
async fn upkeep(store: Arc<Store>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let Store::Postgres(pg) = &*store else {
        return;
    };
    let mut failing = false;
    loop {
        match pg.upkeep(UPKEEP_LOCK_WAIT).await {
            Ok(done) => {
                if failing {
                    tracing::info!("cluster upkeep recovered");
                    failing = false;
                }
                metrics.ledger_tables.set(done.tables as i64);
                metrics.ledger_event_ids.set(done.ids);
                let locked_ms = done.rotation.map_or(0, |d| d.as_millis() as u64);
                for (table, ids) in &done.dropped {
                    metrics.ledger_ids_expired.inc_by((*ids).max(0) as u64);
                    tracing::info!(
                        table,
                        ids,
                        locked_ms,
                        "ledger table older than LEDGER_WINDOW dropped"
                    );
                }
                if done.rotated {
                    tracing::info!(
                        tables = done.tables,
                        ids = done.ids,
                        locked_ms,
                        "new ledger table started"
                    );
                }
                if done.tombstones_expired > 0 {
                    tracing::info!(
                        tombstones = done.tombstones_expired,
                        "GDPR tombstones older than TOMBSTONE_RETENTION removed"
                    );
                }
            }
            Err(e) => {
                metrics.upkeep_failures.inc();
                if !failing {
                    tracing::warn!(error = %e, "cluster upkeep failed (ledger rotation, tombstone expiry); retrying");
                    failing = true;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(UPKEEP_EVERY) => {}
        }
    }
}

/// `wal drain`: a stopped replica's WAL into the database, without serving.
/// Replays the WAL under its instance id with a new epoch (fencing any
/// process of that id still running elsewhere), flushes until the WAL is
/// empty — events another replica applied meanwhile are left out by the
/// cluster's ledger — and truncates it. Safe to run again: an empty WAL
/// drains to nothing. Refuses a WAL another process holds (sled's lock).
/// Gives up after `timeout` (the database unreachable, the table missing).
pub async fn drain(settings: Settings, timeout: Duration) -> anyhow::Result<()> {
    let dir = settings.wal_dir.clone();
    if !dir.join("log").is_dir() {
        anyhow::bail!(
            "no WAL in {} (set WAL_DIR or DATA_DIR to the volume of the replica to drain)",
            dir.display()
        );
    }
    if settings.instance_id.is_none() && wal::recorded_instance_id(&dir)?.is_none() {
        anyhow::bail!(
            "{} records no instance id and INSTANCE_ID is not set: set INSTANCE_ID to the id the \
             replica ran with (on Kubernetes, its pod name), so its records are replayed against \
             its own watermark",
            dir.display()
        );
    }
    let core = Core::build(settings).await.with_context(|| {
        format!(
            "cannot open the WAL in {} (is a service still running on it?)",
            dir.display()
        )
    })?;
    let Core {
        settings,
        goals,
        store,
        wal,
        instance_id,
        metrics,
        health,
    } = core;
    let before = wal.records();
    tracing::info!(
        wal_dir = %dir.display(),
        instance_id = %instance_id,
        records = before,
        store = %settings.database.describe(),
        "draining the WAL"
    );
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            shutdown.cancel();
        });
    }
    let lifetime = Lifetime::new(shutdown);
    let parts = Parts {
        goals,
        store,
        wal,
        instance_id: instance_id.clone(),
        metrics: metrics.clone(),
        health,
    };
    let Some(running) = start_up(parts, &settings, &lifetime).await? else {
        if lifetime.fatal.is_cancelled() {
            anyhow::bail!("stopped after a fatal error (see the log above)");
        }
        anyhow::bail!(
            "gave up after {timeout:?}: the database was not ready (see the log above); the WAL \
             is untouched, run `wal drain` again"
        );
    };
    let mut flusher = running.flusher;
    let left = final_flush(&mut flusher, &running.wal, &lifetime.fatal, timeout).await;
    close_wal(flusher, running.wal, running.wal_thread).await;
    if lifetime.fatal.is_cancelled() {
        anyhow::bail!("stopped after a fatal error (see the log above)");
    }
    if let Some(bytes) = left {
        anyhow::bail!("{bytes} bytes are still in the WAL; run `wal drain` again");
    }
    println!(
        "drained {} (instance {instance_id}): {} records replayed and written, {} events left out \
         as already applied by another replica; the WAL is empty",
        dir.display(),
        metrics.wal_replayed.get(),
        metrics.events_applied_elsewhere.get(),
    );
    Ok(())
}

/// The service's phase, for `/healthz` and the `phase` metric alike.
fn enter(health: &Health, metrics: &Metrics, phase: Phase) {
    health.set_phase(phase);
    metrics.phase.set(phase as i64);
}

/// Why the service stops: `stop` is cancelled by a shutdown signal or by a
/// fatal error (a WAL fsync failure, a fenced lease), which also cancels `fatal`.
struct Lifetime {
    stop: CancellationToken,
    fatal: CancellationToken,
}

impl Lifetime {
    fn new(shutdown: CancellationToken) -> Lifetime {
        let fatal = CancellationToken::new();
        let stop = CancellationToken::new();
        {
            let (fatal, stop) = (fatal.clone(), stop.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = fatal.cancelled() => {}
                }
                stop.cancel();
            });
        }
        Lifetime { stop, fatal }
    }
}

/// What start-up works with.
struct Parts {
    goals: Arc<GoalIndex>,
    store: Arc<Store>,
    wal: WalStore,
    instance_id: String,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// A started service: the WAL writer running, everything replayed flushed.
struct Running {
    flusher: Flusher<Store>,
    wal: Wal,
    wal_thread: WalThread,
    flush_early: Arc<Notify>,
}

/// Start-up: migrations, this instance's lease, replay of everything above
/// the watermark, the WAL writer, and a flush of the replayed updates — each
/// waiting for the database as long as it takes. None: stopped meanwhile.
async fn start_up(
    parts: Parts,
    settings: &Settings,
    lifetime: &Lifetime,
) -> anyhow::Result<Option<Running>> {
    let Parts {
        goals,
        store,
        wal: mut wal_store,
        instance_id,
        metrics,
        health,
    } = parts;
    let (stop, fatal) = (&lifetime.stop, &lifetime.fatal);
    let patient = || Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let Some((owner, rotation_columns)) = prepare(&store, settings, &health, (stop, fatal)).await
    else {
        return Ok(None);
    };
    if goals.generation() == crate::rules::Generation::M5 && !rotation_columns {
        anyhow::bail!(
            "user_goal_progress has no baseline_value or expires_at column: it was made before the \
             challenge service's M5 migrations, and the M5 rules of {} need both. Let the challenge \
             service run its migrations (002_add_baseline_value), then start again",
            settings.config_path.display()
        );
    }
    let owner = Arc::new(match owner {
        TableOwner::Service => Owner::service(),
        TableOwner::Handler => Owner::handler(goals.goals()),
    });
    let Some(lease) = retry::until_ok(
        "read this instance's watermark",
        patient(),
        GiveUp::OnPermanent,
        (stop, fatal),
        &mut (&*store, instance_id.as_str()),
        |(store, id)| Box::pin(store.lease(id)),
    )
    .await
    else {
        return Ok(None);
    };

    enter(&health, &metrics, Phase::Replaying);
    let watermark = lease.applied_seq;
    let wal_last = wal_store.last_seq();
    let pending = wal_store.records();
    let replay_started = std::time::Instant::now();
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
        replay_ms = replay_started.elapsed().as_millis() as u64,
        buffered_keys = buffer.len(),
        "wal replayed"
    );

    let buffer = Arc::new(Mutex::new(buffer));
    let flush_early = Arc::new(Notify::new());
    let intake = Intake {
        buffer: buffer.clone(),
        flush_early: flush_early.clone(),
        max_keys: settings.buffer_max_keys,
        metrics: metrics.clone(),
    };
    // Sequence numbers never go backwards, even after a truncation.
    let next_seq = wal_last.max(watermark) + 1;
    let (wal, wal_thread) = wal_store.start(next_seq, intake, metrics.clone(), fatal.clone())?;
    health.attach_wal(wal.stats());
    let mut flusher = Flusher::new(
        store,
        lease,
        owner,
        buffer,
        wal.clone(),
        metrics.clone(),
        health,
    );
    let flushed = retry::until_ok(
        "flush the replayed WAL",
        Backoff::new(settings.flush_interval, MAX_BACKOFF),
        GiveUp::OnFenced,
        (stop, fatal),
        &mut flusher,
        |flusher| Box::pin(flusher.flush_once()),
    )
    .await;
    let running = Running {
        flusher,
        wal,
        wal_thread,
        flush_early,
    };
    if flushed.is_none() {
        // Close the WAL before giving up; nothing was acknowledged yet.
        close_wal(running.flusher, running.wal, running.wal_thread).await;
        return Ok(None);
    }
    Ok(Some(running))
}

/// How long start-up waits between looks for a table it may not create.
const TABLE_WAIT: Duration = Duration::from_secs(2);

/// The handler's own tables, and who owns `user_goal_progress`; while the
/// table does not exist and the handler may not create it, waits (not
/// ready), saying so once a minute. None: stopped meanwhile.
async fn prepare(
    store: &Arc<Store>,
    settings: &Settings,
    health: &Health,
    (stop, fatal): (&CancellationToken, &CancellationToken),
) -> Option<(TableOwner, bool)> {
    let mut said: Option<std::time::Instant> = None;
    loop {
        let prepared = retry::until_ok(
            "prepare the database",
            Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
            GiveUp::OnPermanent,
            (stop, fatal),
            &mut (&**store, settings.table_owner, settings.migrate),
            |(store, owner, migrate)| Box::pin(store.prepare(*owner, *migrate)),
        )
        .await?;
        match prepared {
            Prepared::Ready {
                owner,
                why,
                rotation_columns,
            } => {
                let creates = match owner {
                    TableOwner::Service => {
                        "the challenge service owns user_goal_progress: events update existing rows only"
                    }
                    TableOwner::Handler => {
                        "the handler owns user_goal_progress: a player's first event gives them every goal assigned by default"
                    }
                };
                tracing::info!(table_owner = owner.as_str(), why = %why, "{creates}");
                health.set_waiting(None);
                return Some((owner, rotation_columns));
            }
            Prepared::Waiting { why } => {
                health.set_waiting(Some(why.clone()));
                if said.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!("not ready: {why}");
                    said = Some(std::time::Instant::now());
                }
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(TABLE_WAIT) => {}
                }
            }
        }
    }
}

/// Serving: gRPC and the flush loop until `stop`; returns the flusher for the
/// last flush.
async fn serve(
    flush_early: &Arc<Notify>,
    flusher: Flusher<Store>,
    ingress: Ingress,
    grpc: TcpListener,
    settings: &Settings,
    lifetime: &Lifetime,
) -> anyhow::Result<Flusher<Store>> {
    let flusher_stop = CancellationToken::new();
    let flush_loop = tokio::spawn(flusher.run(
        settings.flush_interval,
        flush_early.clone(),
        flusher_stop.clone(),
        lifetime.fatal.clone(),
    ));
    let served = serve_grpc(grpc, ingress, settings, lifetime.stop.clone()).await;
    if let Err(e) = &served {
        tracing::error!(error = %e, "gRPC server failed");
        lifetime.fatal.cancel();
    }
    flusher_stop.cancel();
    flush_loop.await.context("flush loop panicked")
}

/// Shutting down: flushing until the WAL is empty (or the grace period
/// ends), then the WAL closed. Some(bytes): what is left in the WAL.
async fn shut_down(
    mut flusher: Flusher<Store>,
    wal: Wal,
    wal_thread: WalThread,
    settings: &Settings,
    lifetime: &Lifetime,
) -> Option<u64> {
    let left = final_flush(&mut flusher, &wal, &lifetime.fatal, settings.shutdown_grace).await;
    close_wal(flusher, wal, wal_thread).await;
    left
}

/// The writer exits once every handle is gone; its thread is joined.
async fn close_wal<S: ProgressStore>(flusher: Flusher<S>, wal: Wal, wal_thread: WalThread) {
    drop(flusher);
    drop(wal);
    let _ = tokio::task::spawn_blocking(move || wal_thread.join()).await;
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
        // TCP_NODELAY: a unary answer is several small HTTP/2 writes; Nagle's
        // algorithm would hold them back for the peer's delayed ACK.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                stopping.cancelled().await;
            },
        );
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

/// The last flushes on the way out: until nothing acknowledged is left
/// outside the database, or `grace` is over. A failure is retried within
/// the grace period. Some(bytes): records left in the WAL (logged): they
/// are applied at the next start, or by `wal drain` if this replica does
/// not come back.
async fn final_flush<S: ProgressStore>(
    flusher: &mut Flusher<S>,
    wal: &Wal,
    fatal: &CancellationToken,
    grace: Duration,
) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + grace;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    let mut last_error = None;
    while !fatal.is_cancelled() && flusher.has_pending() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, flusher.flush_once()).await {
            Ok(Ok(rows)) => tracing::info!(rows, "final flush done"),
            Ok(Err(e @ StoreError::Fenced { .. })) => {
                tracing::error!(error = %e, "final flush refused: this instance was fenced");
                fatal.cancel();
            }
            Ok(Err(e)) => {
                if last_error.is_none() {
                    tracing::warn!(error = %e, "final flush failed; retrying until the grace period ends");
                }
                last_error = Some(e.to_string());
                backoff.failed();
                let pause = backoff
                    .delay()
                    .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                tokio::time::sleep(pause).await;
            }
            Err(_) => break,
        }
    }
    if !flusher.has_pending() {
        return None;
    }
    let bytes = wal.backlog_bytes();
    tracing::error!(
        wal_backlog_bytes = bytes,
        wal_backlog_records = wal.stats().backlog_records(),
        grace = ?grace,
        last_error = last_error.as_deref().unwrap_or("none (the grace period ended)"),
        "stopping with acknowledged updates not in the database: they stay in the WAL and are \
         applied when this replica starts again on the same volume, or by `challenge-event-handler \
         wal drain` on that volume if it does not (deploy/README.md, \"Scaling down\")"
    );
    Some(bytes)
}

async fn finish(
    tasks: TaskTracker,
    http_stop: CancellationToken,
    fatal: &CancellationToken,
    left_in_wal: Option<u64>,
) -> anyhow::Result<()> {
    http_stop.cancel();
    tasks.close();
    tasks.wait().await;
    if fatal.is_cancelled() {
        anyhow::bail!("stopped after a fatal error (see the log above)");
    }
    if let Some(bytes) = left_in_wal {
        anyhow::bail!(
            "stopped with {bytes} bytes of acknowledged updates left in the WAL (see the log above)"
        );
    }
    tracing::info!("stopped");
    Ok(())
}
