//! Start-up: the handler's tables and who owns `user_goal_progress`, this
//! instance's lease, the replay of the WAL and its flush.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::buffer::Buffer;
use crate::buffer::Intake;
use crate::config::Settings;
use crate::flusher::{Flusher, MAX_BACKOFF};
use crate::health::{Health, Phase};
use crate::retry::{self, Backoff, GiveUp};
use crate::store::{within, Owner, Prepared, ProgressStore, Store, TableOwner};

use super::*;

/// How start-up ended.
pub(super) enum Started {
    Running(Box<Running>),
    /// Stopped before serving, with what the WAL still holds if anything
    /// (not logged here: the service and `wal drain` each say it their way).
    Stopped(Option<Left>),
}

/// Records a stop before serving leaves in the WAL; they may not all be in
/// the database (the process exits 1).
pub(super) struct Left {
    pub bytes: u64,
    pub records: u64,
    pub why: &'static str,
}

fn left_before_serving(bytes: u64, records: u64, why: &'static str) -> Started {
    Started::Stopped((records > 0).then_some(Left {
        bytes,
        records,
        why,
    }))
}

/// Start-up: migrations, this instance's lease, replay of everything above
/// the watermark, the WAL writer, and a flush of the replayed updates — each
/// waiting for the database as long as it takes, until stopped.
pub(super) async fn start_up(
    parts: Parts,
    settings: &Settings,
    lifetime: &Lifetime,
) -> anyhow::Result<Started> {
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
    let not_reached = "stopped while waiting for the database at start-up, before the WAL \
                       was replayed (its records may be in the database already)";
    let Some((owner, rotation_columns)) = prepare(&store, settings, &health, (stop, fatal)).await
    else {
        return Ok(left_before_serving(
            wal_store.bytes(),
            wal_store.records(),
            not_reached,
        ));
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
        |(store, id)| Box::pin(within(settings.flush_timeout, store.lease(id))),
    )
    .await
    else {
        return Ok(left_before_serving(
            wal_store.bytes(),
            wal_store.records(),
            not_reached,
        ));
    };

    enter(&health, &metrics, Phase::Replaying);
    let watermark = lease.applied_seq;
    if let Store::Postgres(pg) = &*store {
        warn_if_older_than_the_cluster_remembers(&wal_store, watermark, pg.cluster())?;
    }
    let wal_last = wal_store.last_seq();
    let pending = wal_store.records();
    let replay_started = std::time::Instant::now();
    let memory_max_keys = settings.memory_max_keys;
    let (wal_store, buffer, replayed, deletions) = tokio::task::spawn_blocking(move || {
        let mut replay = Replay {
            buffer: Buffer::bounded(watermark, memory_max_keys),
            deletions: 0,
        };
        let replayed = wal_store.replay(watermark, &mut replay);
        replayed.map(|n| (wal_store, replay.buffer, n, replay.deletions))
    })
    .await
    .context("WAL replay task failed")??;
    metrics.wal_replayed.inc_by(replayed);
    // Every deletion replayed is pending, held or still in the WAL only.
    metrics.gdpr_deletions_pending.set(deletions as i64);
    tracing::info!(
        epoch = lease.epoch,
        watermark,
        wal_records = pending,
        replayed,
        replay_ms = replay_started.elapsed().as_millis() as u64,
        buffered_keys = buffer.len(),
        waiting_in_wal = buffer.spilled_after().is_some(),
        "wal replayed"
    );
    metrics
        .buffer_spilled
        .set(i64::from(buffer.spilled_after().is_some()));

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
    )
    .with_timeout(settings.flush_timeout);
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
        // Nothing was acknowledged by this process; what an earlier one
        // acknowledged may still be only in the WAL.
        let (bytes, records) = (
            running.wal.backlog_bytes(),
            running.wal.stats().backlog_records(),
        );
        close_wal(running.flusher, running.wal, running.wal_thread).await;
        return Ok(left_before_serving(
            bytes,
            records,
            "stopped while flushing the replayed WAL at start-up",
        ));
    }
    Ok(Started::Running(Box::new(running)))
}

/// The replay's sink: the bounded buffer, and a count of every deletion
/// replayed (those past the bound too: they are pending all the same).
struct Replay {
    buffer: Buffer,
    deletions: usize,
}

impl crate::wal::Sink for Replay {
    fn committed(&mut self, records: Vec<(u64, crate::rules::Record)>) {
        self.deletions += crate::rules::Record::deletions(&records);
        self.buffer.committed(records);
    }
}

/// How long start-up waits between looks for a table it may not create.
pub(super) const TABLE_WAIT: Duration = Duration::from_secs(2);

/// The handler's own tables, and who owns `user_goal_progress`; while the
/// table does not exist and the handler may not create it, waits (not
/// ready), saying so once a minute. None: stopped meanwhile.
pub(super) async fn prepare(
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
            |(store, owner, migrate)| {
                Box::pin(within(
                    settings.flush_timeout,
                    store.prepare(*owner, *migrate),
                ))
            },
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

/// A WAL whose oldest update not yet in the database is older than the
/// cluster remembers (a replica down that long, a volume drained that
/// late): its events' ids may have left the ledger, and other replicas'
/// deletions their tombstones. Said loudly; replayed all the same (every
/// record was acknowledged, and the rows it would change are checked by
/// nothing else).
fn warn_if_older_than_the_cluster_remembers(
    wal: &crate::wal::WalStore,
    watermark: u64,
    cluster: &crate::store::cluster::ClusterSettings,
) -> anyhow::Result<()> {
    let Some(oldest) = wal.oldest_pending_written_ms(watermark)? else {
        return Ok(());
    };
    let age_ms = (crate::clock::unix_ms() as i64).saturating_sub(oldest);
    let age = Duration::from_millis(u64::try_from(age_ms).unwrap_or(0));
    let shown =
        |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
    if let Some(window) = cluster.ledger_window.filter(|window| age > *window) {
        tracing::warn!(
            oldest_update_age = %shown(age),
            ledger_window = %shown(window),
            "the WAL holds updates acknowledged longer ago than LEDGER_WINDOW (this replica was \
             down, or its volume away, that long): an event among them that Kafka also \
             delivered to another replica, applied there more than LEDGER_WINDOW ago, is applied \
             again (its id has left the cluster's ledger)"
        );
    }
    if age > cluster.tombstone_retention {
        tracing::warn!(
            oldest_update_age = %shown(age),
            tombstone_retention = %shown(cluster.tombstone_retention),
            "the WAL holds updates acknowledged longer ago than TOMBSTONE_RETENTION: a GDPR \
             deletion another replica applied more than TOMBSTONE_RETENTION ago no longer drops \
             this WAL's older updates of that user (its tombstone has expired), and they are \
             written. Check the GDPR audit log (audit=gdpr_user_data_deletion) for users of \
             this WAL deleted since it was written"
        );
    }
    Ok(())
}
