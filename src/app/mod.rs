//! The service assembled: `App::build(settings)` binds the listeners and opens
//! the WAL; `run_until_stopped(token)` runs three phases — [`start::start_up`]
//! (the handler's tables and who owns `user_goal_progress`, lease, replay, flush), [`stop::serve`] (gRPC, HTTP ingest and the flush
//! loop until the token is cancelled) and [`stop::shut_down`] (stop accepting,
//! finish in-flight calls, final flush, close the WAL).

mod drain;
mod start;
mod stop;
mod upkeep;

pub use drain::drain;
use start::*;
use stop::*;
use upkeep::*;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{challenges, Settings};
use crate::flusher::Flusher;
use crate::grpc::Ingress;
use crate::health::{Health, Phase};
use crate::http;
use crate::http::access::{Access, RateLimit};
use crate::http::ingest::IngestState;
use crate::ingest;
use crate::metrics::Metrics;
use crate::rules::GoalIndex;
use crate::store::{Database, Store};
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
    /// What start-up works with.
    parts: Parts,
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
        // The directory is this process's from here on: its identity, a
        // first start, sled's files.
        let dir_lock = wal::lock_dir(&settings.wal_dir)?;
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
        fail::fail_point!("wal-before-open");
        let mut wal = tokio::task::spawn_blocking(move || WalStore::open(wal_config))
            .await
            .context("WAL open task failed")??;
        wal.hold(dir_lock);
        // The identity is read again with every lock held: a directory
        // whose recorded identity changed under this process (something
        // other than this build wrote it) stops here.
        let recorded = wal::recorded_instance_id(&settings.wal_dir)?;
        if recorded.as_deref() != Some(instance_id.as_str()) {
            anyhow::bail!(
                "{} records the instance id {} where this process took {instance_id}: another \
                 process (an older build, or something else) wrote it while this one started. \
                 Start again (one process per WAL_DIR)",
                settings.wal_dir.display(),
                recorded.as_deref().unwrap_or("none")
            );
        }
        let store = Arc::new(
            Store::connect_lazy(
                &settings.database,
                settings.db_max_connections,
                settings.db_batch_size,
            )
            .with_cluster(settings.cluster.clone())
            .with_flush_timeout(settings.flush_timeout),
        );
        let metrics = Metrics::new();
        metrics.watch_wal_volume(settings.wal_dir.clone());
        Ok(Core {
            settings,
            parts: Parts {
                goals,
                store,
                wal,
                instance_id,
                metrics: Arc::new(metrics),
                health: Arc::new(Health::default()),
            },
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
        &self.core.parts.instance_id
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
            core: Core { settings, parts },
        } = self;
        let (goals, metrics, health) = (
            parts.goals.clone(),
            parts.metrics.clone(),
            parts.health.clone(),
        );
        tracing::info!(
            grpc = %http::local_addr(&grpc),
            http = %http::local_addr(&http),
            ingest = %http::local_addr(ingest_listener.as_ref().unwrap_or(&http)),
            goals = goals.len(),
            instance_id = %parts.instance_id,
            namespace = %settings.namespace,
            store = %settings.database.describe(),
            runtime_workers = tokio::runtime::Handle::current().metrics().num_workers(),
            "starting"
        );
        if let Database::Sqlite(path) = &settings.database {
            tracing::info!(
                path = %path.display(),
                "using the embedded SQLite store (for PostgreSQL set DATABASE_URL or DB_HOST)"
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
                failed_guesses: Arc::new(RateLimit::new(
                    http::ingest::FAILED_GUESSES_RATE,
                    http::ingest::FAILED_GUESSES_BURST,
                )),
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
        let upkeep_store = parts.store.clone();
        let left_in_wal = match start_up(parts, &settings, &lifetime).await? {
            Started::Stopped(left) => {
                enter(&health, &metrics, Phase::ShuttingDown);
                left.map(|left| report_left_in_wal(left.bytes, left.records, left.why))
            }
            Started::Running(running) => {
                enter(&health, &metrics, Phase::Serving);
                tasks.spawn(upkeep(
                    upkeep_store,
                    settings.flush_timeout,
                    metrics.clone(),
                    lifetime.stop.clone(),
                ));
                let ingress = Ingress::new(
                    settings.namespace.clone(),
                    goals,
                    running.wal.clone(),
                    metrics.clone(),
                );
                gate.open(ingress.clone());
                tracing::info!("serving: events are acknowledged from now on");
                {
                    // HTTP ingest closes with gRPC: no new call once
                    // stopping; and /healthz says so at once (not ready),
                    // not after the calls in flight and the last flush.
                    let (gate, stop) = (gate.clone(), lifetime.stop.clone());
                    let (health, metrics) = (health.clone(), metrics.clone());
                    tokio::spawn(async move {
                        stop.cancelled().await;
                        enter(&health, &metrics, Phase::ShuttingDown);
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
                shut_down(
                    flusher,
                    running.wal,
                    running.wal_thread,
                    &settings,
                    &lifetime,
                )
                .await
            }
        };
        finish(tasks, http_stop, &lifetime.fatal, left_in_wal).await
    }
}

/// The service's phase, for `/healthz` and the `phase` metric alike.
pub(super) fn enter(health: &Health, metrics: &Metrics, phase: Phase) {
    health.set_phase(phase);
    metrics.phase.set(phase as i64);
}

/// Why the service stops: `stop` is cancelled by a shutdown signal or by a
/// fatal error (a WAL fsync failure, a fenced lease), which also cancels `fatal`.
pub(super) struct Lifetime {
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
pub(super) struct Parts {
    goals: Arc<GoalIndex>,
    store: Arc<Store>,
    wal: WalStore,
    instance_id: String,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// A started service: the WAL writer running, everything replayed flushed.
pub(super) struct Running {
    flusher: Flusher<Store>,
    wal: Wal,
    wal_thread: WalThread,
    flush_early: Arc<Notify>,
}
