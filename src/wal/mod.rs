//! The write-ahead log: sled 0.34, one writer thread, group commit.
//!
//! - [`layout`]: keys of the two sled databases, `<WAL_DIR>/log` (frames) and `<WAL_DIR>/marks` (dedup marks);
//! - [`legacy`]: older builds' keys (a record per key, a mark per key), read and never written;
//! - [`codec`]: the record format (version, bincode 2, crc32);
//! - [`dedup`]: event-id marks, in time buckets;
//! - [`durable`]: directory fsyncs, the first-start marker, the instance id;
//! - [`store`]: opening the log, replay above the watermark, truncation;
//! - [`writer`]: the group-commit thread (and the thread that removes
//!   truncated frames) and the [`Wal`] handle.
//!
//! The writer thread owns sled. It drains its channel, dedups, assigns
//! sequence numbers, writes the whole batch with one `apply_batch`, one
//! `flush()` and one `fsync` of the database file (sled's `flush` alone is not
//! power-loss durable, see docs/DESIGN.md), hands the committed records to its
//! [`Sink`] in sequence order and only then answers every caller. Replay at
//! start-up hands records to a sink the same way; the WAL knows nothing of
//! what the sink does with them (the app's sink is the coalescing buffer). An fsync error
//! poisons the log: nothing after it is acknowledged, and the service stops so
//! that a restart replays what is really on disk.

pub mod codec;
pub mod dedup;
mod durable;
mod layout;
mod legacy;
mod store;
mod writer;

use std::path::PathBuf;
use std::time::Duration;

use crate::rules::Record;

pub use durable::{create_dir_durable, instance_id, lock_dir, recorded_instance_id, DirLock};
pub use store::{WalStore, WalSummary};
pub use writer::{Appended, Wal, WalStats, WalThread};

pub type Result<T, E = WalError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("cannot open the WAL in {dir}: {source}")]
    Open { dir: PathBuf, source: sled::Error },
    #[error(
        "cannot open the WAL in {dir}: another process has it (a replica still running, or a \
         `wal drain`); one process per WAL_DIR"
    )]
    Busy { dir: PathBuf },
    #[error(
        "cannot lock {path} (one process per WAL_DIR): {source}. The WAL's volume must support \
         file locks (flock); a network filesystem may need its lock service"
    )]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("WAL I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("WAL storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error(
        "WAL record {seq} is corrupt ({reason}); it was acknowledged and is not yet in the \
         database. Restore the WAL directory from a backup, or start with \
         WAL_RECOVERY=skip-corrupt to drop corrupt records (their updates are lost)"
    )]
    Corrupt { seq: u64, reason: codec::CodecError },
    #[error(
        "the WAL in {dir} belongs to instance {recorded:?}, but INSTANCE_ID is {configured:?}: \
         its records would be replayed against another instance's watermark. Start it with \
         INSTANCE_ID={recorded:?} (or `wal drain` it so), or give this instance its own volume"
    )]
    OtherInstance {
        dir: PathBuf,
        recorded: String,
        configured: String,
    },
    #[error(
        "the WAL in {dir} records no instance id (an old build made it) and INSTANCE_ID is not \
         set: a generated id would replay its records against a new watermark and apply them \
         again. Set INSTANCE_ID to the id it ran with (on Kubernetes, its pod name)"
    )]
    UnknownInstance { dir: PathBuf },
    #[error("WAL record {seq} is listed but not in the log")]
    Missing { seq: u64 },
    #[error(
        "the write-ahead log is full ({bytes} bytes not yet in the database, WAL_MAX_BYTES={max}); \
         the database is probably unreachable, retry later"
    )]
    Full { bytes: u64, max: u64 },
    #[error("the write-ahead log failed to sync to disk; this instance is stopping")]
    Failed,
    #[error("the service is shutting down")]
    Closed,
}

/// What a WAL does with a corrupt record that is not yet in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Recovery {
    /// Refuse to start, naming the record.
    Strict,
    /// Drop the record with an error log line and go on.
    SkipCorrupt,
}

#[derive(Debug, Clone)]
pub struct WalConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub dedup_window: Duration,
    pub dedup_max_marks: usize,
    pub recovery: Recovery,
    /// sled's page cache.
    pub cache_bytes: u64,
}

/// What a sink's refill left: whether it now holds everything committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refill {
    /// Everything committed is held; the buffer takes records as they commit.
    CaughtUp,
    /// The bound is reached again: the rest waits for the next flush.
    Full,
    /// There is room and more to read: ask again.
    More,
}

/// Where committed records go, in sequence order, before any caller hears
/// that they are durable (and, at start-up, where replayed records go).
/// A sink may stop taking them (its memory is bounded): it then says after
/// which record it stopped, and the writer hands it the rest, read back
/// from the log, when asked ([`Wal::refill`]).
pub trait Sink: Send + 'static {
    fn committed(&mut self, records: Vec<(u64, Record)>);

    /// The last sequence number held, if records committed after it are not.
    fn spilled_after(&self) -> Option<u64> {
        None
    }

    /// Records read back from the log, following `spilled_after()`;
    /// `to_the_end`: they reach the last one committed.
    fn refill(&mut self, records: Vec<(u64, Record)>, to_the_end: bool) -> Refill {
        let _ = to_the_end;
        self.committed(records);
        Refill::CaughtUp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::Buffer;
    use crate::metrics::Metrics;
    use crate::rules::{Op, Update};
    use dedup::{mark_of, Dedup};
    use layout::frame_key;
    use legacy::{mark_key as old_mark_key, record_key as old_record_key};
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::Mutex;
    use tokio_util::sync::CancellationToken;

    /// A buffer the test can look at while the writer thread fills it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Buffer>>);

    impl Sink for Shared {
        fn committed(&mut self, records: Vec<(u64, Record)>) {
            self.0.lock().unwrap().committed(records);
        }

        fn spilled_after(&self) -> Option<u64> {
            self.0.lock().unwrap().spilled_after()
        }

        fn refill(&mut self, records: Vec<(u64, Record)>, to_the_end: bool) -> Refill {
            self.0.lock().unwrap().refill(records, to_the_end)
        }
    }

    fn config(dir: &Path, recovery: Recovery) -> WalConfig {
        WalConfig {
            dir: dir.to_owned(),
            max_bytes: 1 << 20,
            dedup_window: Duration::from_secs(600),
            dedup_max_marks: 1000,
            recovery,
            cache_bytes: 1 << 20,
        }
    }

    fn update(n: i32) -> Record {
        Record::Update(Update {
            user_id: format!("u{n}"),
            goal_id: "g".into(),
            challenge_id: "c".into(),
            namespace: "ns".into(),
            target: 10,
            creates_row: true,
            event_time_ms: 0,
            event_id: format!("e{n}"),
            op: Op::Add(n),
        })
    }

    fn start(store: WalStore, next_seq: u64, buffer: &Shared) -> (Wal, WalThread) {
        store
            .start(
                next_seq,
                buffer.clone(),
                Arc::new(Metrics::new()),
                CancellationToken::new(),
            )
            .unwrap()
    }

    /// Starts the writer on `store`, runs `body` with its handle on a
    /// current-thread runtime, then closes the WAL (the handle is dropped
    /// with `body`'s future) and joins the writer.
    fn with_writer<R, Fut>(
        store: WalStore,
        next_seq: u64,
        buffer: &Shared,
        body: impl FnOnce(Wal) -> Fut,
    ) -> R
    where
        Fut: std::future::Future<Output = R>,
    {
        let (wal, thread) = start(store, next_seq, buffer);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let out = rt.block_on(body(wal));
        thread.join();
        out
    }

    /// Appends `n` events (one update each) through the writer thread, then closes the WAL.
    fn write_events(dir: &Path, n: i32) -> Buffer {
        let store = WalStore::open(config(dir, Recovery::Strict)).unwrap();
        let next = store.last_seq() + 1;
        let buffer = Shared::default();
        with_writer(store, next, &buffer, |wal| async move {
            for i in 1..=n {
                let outcome = wal.append(format!("e{i}"), vec![update(i)]).await.unwrap();
                assert!(matches!(outcome, Appended::Written { .. }));
            }
            // The same id again is a duplicate and writes nothing.
            let again = wal.append("e1".into(), vec![update(1)]).await.unwrap();
            assert_eq!(again, Appended::Duplicate);
        });
        let buffer = buffer.0.lock().unwrap().clone();
        buffer
    }

    /// A WAL of half-second dedup buckets holding three rounds of five ids
    /// (e1..e15), a bucket each, closed with them in its log and its marks
    /// saved; returns its config.
    fn fifteen_ids_in_three_buckets(dir: &Path) -> WalConfig {
        let wide = WalConfig {
            dedup_window: Duration::from_secs(5),
            ..config(dir, Recovery::Strict)
        };
        let store = WalStore::open(wide.clone()).unwrap();
        with_writer(store, 1, &Shared::default(), |wal| async move {
            for round in 0..3 {
                for i in 1..=5 {
                    let n = round * 5 + i;
                    wal.append(format!("e{n}"), vec![update(n)]).await.unwrap();
                }
                std::thread::sleep(Duration::from_millis(550));
            }
        });
        wide
    }

    /// [`fifteen_ids_in_three_buckets`] reopened with DEDUP_MAX_MARKS at
    /// `cap`, replayed, and its writer started.
    fn fifteen_ids_reopened(dir: &Path, cap: usize) -> (Wal, WalThread, Arc<Metrics>) {
        let wide = fifteen_ids_in_three_buckets(dir);
        let mut store = WalStore::open(WalConfig {
            dedup_max_marks: cap,
            ..wide
        })
        .unwrap();
        store.replay(0, &mut Buffer::default()).unwrap();
        let metrics = Arc::new(Metrics::new());
        let (wal, thread) = store
            .start(
                16,
                Shared::default(),
                metrics.clone(),
                CancellationToken::new(),
            )
            .unwrap();
        (wal, thread, metrics)
    }

    /// A WAL reopened with DEDUP_MAX_MARKS below the ids it keeps forgets
    /// the oldest early, and says so in `dedup_evicted_early_total` (marks,
    /// each once), and keeps to the cap.
    #[test]
    fn ids_forgotten_early_when_the_wal_opens_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, thread, metrics) = fifteen_ids_reopened(dir.path(), 5);
        // The two older rounds are forgotten, counted once, and stay so
        // (the replayed frames carry them too); the newest round is kept.
        assert_eq!(metrics.dedup_evicted_early.get(), 10);
        assert_eq!(metrics.dedup_marks.get(), 5);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            // (Checked first: a new mark's bucket would push e15's out.)
            let kept = wal.append("e15".into(), vec![update(15)]).await.unwrap();
            assert_eq!(kept, Appended::Duplicate);
            let old = wal.append("e1".into(), vec![update(1)]).await.unwrap();
            assert!(matches!(old, Appended::Written { .. }), "{old:?}");
        });
        drop(wal);
        thread.join();
    }

    /// A WAL closed with frames still in its log saved their marks too; the
    /// replay meets the same ids again in the frames. Each counts once
    /// against DEDUP_MAX_MARKS: under the cap, none is forgotten early.
    #[test]
    fn ids_saved_and_still_in_the_log_count_once_when_the_wal_opens() {
        let dir = tempfile::tempdir().unwrap();
        // Room for the 15 ids, not for them twice.
        let (wal, thread, metrics) = fifteen_ids_reopened(dir.path(), 20);
        assert_eq!(metrics.dedup_evicted_early.get(), 0);
        assert_eq!(metrics.dedup_marks.get(), 15);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            for n in [1, 8, 15] {
                let again = wal.append(format!("e{n}"), vec![update(n)]).await.unwrap();
                assert_eq!(again, Appended::Duplicate, "e{n}");
            }
        });
        drop(wal);
        thread.join();
    }

    #[test]
    fn a_half_made_wal_directory_from_an_interrupted_first_start_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::create_dir_all(&log).unwrap();
        // A torn `conf`, as a power cut during sled's first open leaves it,
        // and the marker of that unfinished first start.
        std::fs::write(log.join("conf"), b"segment_size: 52428\0\0\0").unwrap();
        std::fs::write(dir.path().join("log.creating"), b"").unwrap();
        write_events(dir.path(), 2);
        assert!(
            !dir.path().join("log.creating").exists(),
            "the marker is gone"
        );
        let store = WalStore::open(config(dir.path(), Recovery::Strict)).unwrap();
        assert_eq!((store.last_seq(), store.records()), (2, 2));
    }

    #[test]
    fn records_are_replayed_above_the_watermark_only_and_marks_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_events(dir.path(), 5);
        assert_eq!(written.last_seq(), 5);

        let mut store = WalStore::open(config(dir.path(), Recovery::Strict)).unwrap();
        assert_eq!((store.last_seq(), store.records()), (5, 5));
        assert!(store.seen(mark_of("e3")));
        let mut buffer = Buffer::starting_after(2);
        assert_eq!(store.replay(2, &mut buffer).unwrap(), 3);
        assert_eq!(buffer.last_seq(), 5);
        assert_eq!(buffer.increment.len(), 3); // u3, u4, u5
        assert_eq!(
            store.records(),
            3,
            "records at or below the watermark are removed"
        );
    }

    #[test]
    fn a_corrupt_record_stops_replay_naming_it_unless_skip_corrupt_is_chosen() {
        let dir = tempfile::tempdir().unwrap();
        write_events(dir.path(), 4);
        {
            let db = sled::open(dir.path().join("log")).unwrap();
            let mut value = db.get(frame_key(3)).unwrap().unwrap().to_vec();
            value[2] ^= 0xff;
            db.insert(frame_key(3), value).unwrap();
            db.flush().unwrap();
        }
        let mut strict = WalStore::open(config(dir.path(), Recovery::Strict)).unwrap();
        let err = strict.replay(0, &mut Buffer::default()).unwrap_err();
        assert!(matches!(err, WalError::Corrupt { seq: 3, .. }), "{err}");
        assert!(err.to_string().contains("WAL record 3 is corrupt"));
        assert!(err.to_string().contains("WAL_RECOVERY=skip-corrupt"));
        drop(strict);

        // Below the watermark a corrupt record is harmless: it is already applied.
        let mut above = WalStore::open(config(dir.path(), Recovery::Strict)).unwrap();
        let mut buffer = Buffer::starting_after(3);
        assert_eq!(above.replay(3, &mut buffer).unwrap(), 1);
        drop(above);

        let dir2 = tempfile::tempdir().unwrap();
        write_events(dir2.path(), 4);
        {
            let db = sled::open(dir2.path().join("log")).unwrap();
            db.insert(frame_key(2), &b"garbage"[..]).unwrap();
            db.flush().unwrap();
        }
        let mut lenient = WalStore::open(config(dir2.path(), Recovery::SkipCorrupt)).unwrap();
        let mut buffer = Buffer::default();
        assert_eq!(lenient.replay(0, &mut buffer).unwrap(), 3);
        assert_eq!(lenient.records(), 3);
    }

    #[test]
    fn a_wal_of_the_previous_layout_replays_dedups_and_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        // What the previous build left: one format-2 record per `w` key and a
        // `d` key per dedup mark.
        {
            std::fs::create_dir_all(dir.path()).unwrap();
            let db = sled::open(dir.path().join("log")).unwrap();
            let bucket =
                Dedup::new(Duration::from_secs(600), 10).bucket_of(crate::clock::unix_ms());
            for seq in 1..=3u64 {
                db.insert(old_record_key(seq), codec::encode(&update(seq as i32)))
                    .unwrap();
                db.insert(old_mark_key(bucket, mark_of(&format!("e{seq}"))), &[])
                    .unwrap();
            }
            db.flush().unwrap();
        }
        let mut store = WalStore::open(config(dir.path(), Recovery::Strict)).unwrap();
        assert_eq!((store.last_seq(), store.records()), (3, 3));
        assert!(store.seen(mark_of("e2")));
        let mut buffer = Buffer::starting_after(1);
        assert_eq!(store.replay(1, &mut buffer).unwrap(), 2);
        assert_eq!(buffer.increment.len(), 2); // u2, u3
                                               // New appends go into frames after the old records; a duplicate of
                                               // an old event is still recognised.
        with_writer(store, 4, &Shared::default(), |wal| async move {
            assert_eq!(
                wal.append("e3".into(), vec![update(3)]).await.unwrap(),
                Appended::Duplicate
            );
            assert_eq!(
                wal.append("e4".into(), vec![update(4)]).await.unwrap(),
                Appended::Written { first: 4, last: 4 }
            );
            wal.truncate(3).await.unwrap();
        });
        let store = WalStore::open(config(dir.path(), Recovery::Strict)).unwrap();
        let summary = store.summary(Some(3)).unwrap();
        assert_eq!(
            (summary.records, summary.frames, summary.first_seq),
            (1, 1, Some(4))
        );
        assert_eq!(summary.pending_above_watermark, Some(1));
    }

    #[test]
    fn one_round_of_appends_is_one_frame() {
        let dir = tempfile::tempdir().unwrap();
        let store = WalStore::open(config(dir.path(), Recovery::Strict)).unwrap();
        let shared = Shared::default();
        let (wal, thread) = start(store, 1, &shared);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        rt.block_on(async {
            let calls: Vec<_> = (1..=200)
                .map(|i| {
                    let wal = wal.clone();
                    tokio::spawn(async move {
                        wal.append(format!("e{i}"), vec![update(i), update(i)])
                            .await
                    })
                })
                .collect();
            for call in calls {
                assert!(matches!(
                    call.await.unwrap().unwrap(),
                    Appended::Written { .. }
                ));
            }
        });
        drop(wal);
        thread.join();
        let store = WalStore::open(config(dir.path(), Recovery::Strict)).unwrap();
        let summary = store.summary(None).unwrap();
        assert_eq!(summary.records, 400);
        assert!(
            summary.frames < 200,
            "{} frames for 200 concurrent appends",
            summary.frames
        );
        assert_eq!(summary.dedup_marks, 200);
        assert_eq!(shared.0.lock().unwrap().updates(), 400);
    }

    #[test]
    fn a_round_of_more_records_than_a_frame_holds_is_several_frames_and_replays_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), Recovery::Strict);
        cfg.max_bytes = 64 << 20;
        let store = WalStore::open(cfg.clone()).unwrap();
        let shared = Shared::default();
        let n = codec::MAX_FRAME_RECORDS as i32 + 10;
        with_writer(store, 1, &shared, |wal| async move {
            // One event moving more goals than a frame holds records.
            let records = (1..=n).map(update).collect();
            let outcome = wal.append("big".into(), records).await.unwrap();
            assert!(matches!(outcome, Appended::Written { .. }));
        });
        let mut store = WalStore::open(cfg).unwrap();
        let summary = store.summary(None).unwrap();
        assert_eq!((summary.frames, summary.records), (2, n as u64));
        assert_eq!(store.last_seq(), n as u64);
        let mut buffer = Buffer::starting_after(0);
        assert_eq!(store.replay(0, &mut buffer).unwrap(), n as u64);
        assert_eq!(buffer.last_seq(), n as u64);
        assert_eq!(buffer.updates(), n as u64);
    }

    #[test]
    fn appends_past_the_byte_bound_are_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), Recovery::Strict);
        cfg.max_bytes = 200;
        let store = WalStore::open(cfg).unwrap();
        let buffer = Shared::default();
        let (wal, thread) = start(store, 1, &buffer);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let refused = rt.block_on(async {
            let mut i = 0;
            loop {
                i += 1;
                match wal.append(format!("e{i}"), vec![update(i)]).await {
                    Ok(_) => assert!(i < 100, "never refused"),
                    Err(e) => return (i, e),
                }
            }
        });
        assert!(
            matches!(refused.1, WalError::Full { max: 200, .. }),
            "{}",
            refused.1
        );
        assert_eq!(buffer.0.lock().unwrap().updates(), refused.0 as u64 - 1);
        // Truncation frees the space again.
        rt.block_on(async {
            wal.truncate(u64::MAX).await.unwrap();
            assert_eq!(wal.backlog_bytes(), 0);
            wal.append("again".into(), vec![update(1)]).await.unwrap();
        });
        drop(wal);
        thread.join();
    }

    /// A frame as a kill -9 leaves it: durable in the log, its marks never
    /// saved to the marks database.
    fn frame_without_saved_marks(dir: &Path, first: u64, ids: &[&str]) {
        let store = WalStore::open(config(dir, Recovery::Strict)).unwrap();
        drop(store);
        let db = sled::open(dir.join("log")).unwrap();
        let records: Vec<Record> = ids
            .iter()
            .zip(first..)
            .map(|(id, seq)| match update(seq as i32) {
                Record::Update(u) => Record::Update(Update {
                    event_id: (*id).to_owned(),
                    ..u
                }),
                other => other,
            })
            .collect();
        let head = codec::FrameHead {
            first_seq: first,
            count: records.len() as u32,
            written_ms: crate::clock::unix_ms() as i64,
        };
        let mut frame = Vec::new();
        codec::encode_frame(&head, &records, &mut frame);
        db.insert(frame_key(first), frame).unwrap();
        db.flush().unwrap();
    }

    #[test]
    fn replay_rebuilds_the_marks_of_frames_and_saves_them_before_removing_any() {
        let dir = tempfile::tempdir().unwrap();
        // Two records of one event, then another event; all in the database already.
        frame_without_saved_marks(dir.path(), 1, &["a", "a", "b"]);
        let mut store = WalStore::open(config(dir.path(), Recovery::Strict)).unwrap();
        assert!(!store.seen(mark_of("a")), "nothing saved the marks yet");
        assert_eq!(store.replay(3, &mut Buffer::starting_after(3)).unwrap(), 0);
        assert!(store.seen(mark_of("a")) && store.seen(mark_of("b")));
        assert_eq!(store.dedup_marks(), 2, "one mark per event, not per record");
        assert_eq!(store.records(), 0, "the frame is truncated");
        drop(store);

        // The frame is gone; the marks database remembers its events.
        let store = WalStore::open(config(dir.path(), Recovery::Strict)).unwrap();
        assert_eq!(store.records(), 0);
        assert!(store.seen(mark_of("a")) && store.seen(mark_of("b")));
        with_writer(store, 4, &Shared::default(), |wal| async move {
            assert_eq!(
                wal.append("b".into(), vec![update(9)]).await.unwrap(),
                Appended::Duplicate
            );
        });
    }

    #[test]
    fn truncated_frames_leave_their_marks_in_the_marks_database_only() {
        let dir = tempfile::tempdir().unwrap();
        write_events(dir.path(), 5);
        let mut store = WalStore::open(config(dir.path(), Recovery::Strict)).unwrap();
        store.replay(0, &mut Buffer::default()).unwrap();
        with_writer(store, 6, &Shared::default(), |wal| async move {
            wal.append("e6".into(), vec![update(6)]).await.unwrap();
            wal.truncate(6).await.unwrap();
            assert_eq!(wal.stats().backlog_records(), 0);
        });

        let store = WalStore::open(config(dir.path(), Recovery::Strict)).unwrap();
        assert_eq!(store.records(), 0);
        let log_marks = store.log().scan_prefix([layout::MARKS_PREFIX]).count();
        assert_eq!(log_marks, 0, "no marks are written into the log");
        for i in 1..=6 {
            assert!(store.seen(mark_of(&format!("e{i}"))), "e{i}");
        }
        assert_eq!(store.summary(None).unwrap().dedup_marks, 6);
    }

    #[test]
    fn a_spilled_buffer_gets_every_record_back_from_the_writer_in_order_and_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = WalStore::open(config(dir.path(), Recovery::Strict)).unwrap();
        let shared = Shared(Arc::new(Mutex::new(Buffer::bounded(0, 5))));
        let buffer = shared.clone();
        let (taken, refills) = with_writer(store, 1, &shared, |wal| async move {
            let shared = buffer;
            for i in 1..=40 {
                wal.append(format!("e{i}"), vec![update(i)]).await.unwrap();
            }
            assert_eq!(
                shared.0.lock().unwrap().len(),
                5,
                "five users, then spilled"
            );
            assert_eq!(shared.0.lock().unwrap().spilled_after(), Some(5));
            let (mut taken, mut refills) = (Vec::new(), 0);
            loop {
                let batch = shared.0.lock().unwrap().take();
                let done = batch.is_empty() && shared.0.lock().unwrap().spilled_after().is_none();
                taken.push(batch);
                if done {
                    break;
                }
                // Appends go on between refills: they are taken in order too.
                if refills < 4 {
                    wal.append(format!("late{refills}"), vec![update(100 + refills)])
                        .await
                        .unwrap();
                    refills += 1;
                }
                while wal.refill().await.unwrap() == Refill::More {}
            }
            (taken, refills)
        });
        let mut upto = 0;
        for batch in &taken {
            assert!(batch.len() <= 5);
            assert!(batch.last_seq() >= upto);
            upto = batch.last_seq();
        }
        let updates: u64 = taken.iter().map(Buffer::updates).sum();
        assert_eq!(updates, 40 + refills as u64, "every append taken once");
        assert_eq!(upto, 40 + refills as u64);
    }
}
