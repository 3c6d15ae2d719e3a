//! The group-commit writer: one thread owns sled; each round it drains its
//! channel, dedups, assigns sequence numbers, writes the round's records as
//! ONE frame (one sled key), flushes and fsyncs once, hands the records to
//! the sink and only then answers every caller. A truncation first saves the
//! dedup marks of the frames it removes; the removals themselves are done by
//! a second thread, off the group commit's path. Callers hold a cheap [`Wal`]
//! handle.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::dedup::{mark_of, Mark};
use super::layout::frame_key;
use super::store::{disk_bytes, WalStore};
use super::{codec, Refill, Result, Sink, WalError};
use crate::clock::unix_ms;
use crate::metrics::Metrics;
use crate::rules::Record;

/// Commands one group commit takes at most.
const MAX_GROUP: usize = 4096;
const CHANNEL_CAPACITY: usize = 16_384;

impl WalStore {
    /// Starts the writer thread. `next_seq` must be above both the log's last
    /// sequence number and the database watermark.
    pub fn start(
        mut self,
        next_seq: u64,
        sink: impl Sink,
        metrics: Arc<Metrics>,
        stop_service: CancellationToken,
    ) -> Result<(Wal, WalThread)> {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let shared = Arc::new(Shared {
            bytes: AtomicU64::new(self.bytes()),
            records: AtomicU64::new(self.records()),
            failed: AtomicBool::new(false),
        });
        metrics.wal_bytes.set(self.bytes() as i64);
        metrics.wal_disk_bytes.set(self.disk_bytes() as i64);
        metrics.dedup_marks.set(self.dedup_marks() as i64);
        // Opening and replaying a WAL whose marks are over DEDUP_MAX_MARKS
        // (the cap was lowered) forgets the oldest early too.
        let forgotten = self.take_evicted_early();
        if forgotten > 0 {
            tracing::warn!(
                forgotten,
                "DEDUP_MAX_MARKS is below the event ids kept in the WAL: the oldest were forgotten early; a redelivery of them would be applied again"
            );
        }
        metrics.dedup_evicted_early.inc_by(forgotten);
        let trimmer = Trimmer::start(self.log(), self.dir().to_owned(), metrics.clone())?;
        let on_panic = (shared.clone(), stop_service.clone());
        let writer = Writer {
            store: self,
            trimmer,
            next_seq,
            frame: Vec::new(),
            sink: Box::new(sink),
            metrics,
            stop_service,
            shared: shared.clone(),
            closed: false,
            stopping: false,
        };
        let handle = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || {
                // A panic would leave every append refused while the
                // service looked healthy: it stops the service instead, as
                // a failed fsync does (what was acknowledged is on disk).
                let run = std::panic::AssertUnwindSafe(|| writer.run(rx));
                if std::panic::catch_unwind(run).is_err() {
                    let (shared, stop_service) = on_panic;
                    shared.failed.store(true, Ordering::Relaxed);
                    tracing::error!(
                        "the WAL writer thread panicked: nothing more will be acknowledged; \
                         stopping so that a restart replays what is on disk"
                    );
                    stop_service.cancel();
                }
            })?;
        Ok((Wal { tx, shared }, WalThread(handle)))
    }
}

/// The writer thread; join it after every [`Wal`] handle is dropped.
pub struct WalThread(std::thread::JoinHandle<()>);

impl WalThread {
    /// Waits for the writer to end (a panic in it is caught and reported
    /// where it happens, and stops the service).
    pub fn join(self) {
        let _ = self.0.join();
    }
}

struct Shared {
    bytes: AtomicU64,
    records: AtomicU64,
    failed: AtomicBool,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Durable under sequence numbers `first..=last`.
    Written { first: u64, last: u64 },
    /// The event id was seen within the dedup window; nothing was written.
    Duplicate,
}

enum Command {
    /// The records of sequence numbers `(after, upto]` (not truncated yet).
    Read {
        after: u64,
        upto: u64,
        reply: oneshot::Sender<Result<Vec<(u64, Record)>>>,
    },
    Append {
        event_id: String,
        records: Vec<Record>,
        reply: oneshot::Sender<Result<Appended>>,
    },
    Truncate {
        upto: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Hand a spilled sink the next records it does not hold.
    Refill {
        reply: oneshot::Sender<Result<Refill>>,
    },
    /// Acknowledge no append from now on; answered once every append
    /// taken before it is durable and in the sink.
    Close { reply: oneshot::Sender<Result<()>> },
    /// End the writer after this round, whatever handles remain.
    Stop,
}

/// About how many records one refill reads back (whole frames): a slice
/// small enough not to hold up the group commits waiting behind it.
const REFILL_RECORDS: u64 = 16_384;

/// A handle on the WAL writer; cheap to clone.
#[derive(Clone)]
pub struct Wal {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl Wal {
    /// Makes `records` durable (or recognises `event_id` as a duplicate).
    /// Returns only after the fsync; an `Ok` is a promise.
    pub async fn append(&self, event_id: String, records: Vec<Record>) -> Result<Appended> {
        self.ask(|reply| Command::Append {
            event_id,
            records,
            reply,
        })
        .await
    }

    /// Reads back the records of sequence numbers `(after, upto]`: a flush's
    /// batch, record by record (to leave out events another replica applied).
    pub async fn read(&self, after: u64, upto: u64) -> Result<Vec<(u64, Record)>> {
        self.ask(|reply| Command::Read { after, upto, reply }).await
    }

    /// Hands the sink, if it spilled, the next slice of the records it does
    /// not hold (read back from the log between two group commits).
    pub async fn refill(&self) -> Result<Refill> {
        self.ask(|reply| Command::Refill { reply }).await
    }

    /// From now on every append is refused ([`WalError::Closed`], answered
    /// UNAVAILABLE: the caller retries elsewhere). Returns once every append
    /// taken before is durable, answered and in the sink (and counted in
    /// the backlog): what a stop's final flush must see. Reads,
    /// truncations and refills go on.
    pub async fn close_appends(&self) -> Result<()> {
        self.ask(|reply| Command::Close { reply }).await
    }

    /// Ends the writer once the commands before this one are done, though
    /// other handles remain (a connection the servers did not close holds
    /// one): what is still queued, or sent later, is refused.
    pub async fn stop(&self) {
        let _ = self.tx.send(Command::Stop).await;
    }

    /// Removes records with sequence numbers ≤ `upto` (they are in the database).
    pub async fn truncate(&self, upto: u64) -> Result<()> {
        self.ask(|reply| Command::Truncate { upto, reply }).await
    }

    /// Sends the writer the command `make` builds around a reply channel
    /// and waits for the answer; a writer gone answers as closed (or failed).
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| self.closed_error())?;
        rx.await.map_err(|_| self.closed_error())?
    }

    fn closed_error(&self) -> WalError {
        if self.is_failed() {
            WalError::Failed
        } else {
            WalError::Closed
        }
    }

    /// Bytes of records not yet truncated.
    pub fn backlog_bytes(&self) -> u64 {
        self.stats().backlog_bytes()
    }

    pub fn is_failed(&self) -> bool {
        self.stats().is_failed()
    }

    /// A read-only view of the WAL's state that does not keep the writer alive.
    pub fn stats(&self) -> WalStats {
        WalStats(self.shared.clone())
    }
}

/// Backlog and health of the WAL, for `/healthz`.
#[derive(Clone)]
pub struct WalStats(Arc<Shared>);

impl WalStats {
    pub fn backlog_bytes(&self) -> u64 {
        self.0.bytes.load(Ordering::Relaxed)
    }

    pub fn backlog_records(&self) -> u64 {
        self.0.records.load(Ordering::Relaxed)
    }

    pub fn is_failed(&self) -> bool {
        self.0.failed.load(Ordering::Relaxed)
    }
}

/// Removes truncated frames from the log on a thread of its own. A flush
/// truncates a key per group commit it covered (thousands a second under
/// load); done inside the group commit, they stalled it for 8–15 ms once per
/// flush (`bench-wal`: p99 11 ms at 5,000 events/s, 2–4 ms without
/// truncation). Each key is removed on its own (`remove`, not one batch):
/// sled's batches exclude each other process-wide, so one large batch here
/// would still hold up the next group commit. The removals need no fsync:
/// the marks are saved first, and a frame that comes back after a crash is
/// at or below the watermark and skipped by replay (then removed again).
/// After each truncation it also updates `wal_disk_bytes` (a directory read,
/// kept off the group commit too).
struct Trimmer {
    tx: std::sync::mpsc::Sender<Vec<[u8; 9]>>,
    thread: std::thread::JoinHandle<()>,
}

impl Trimmer {
    fn start(db: sled::Db, dir: PathBuf, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<[u8; 9]>>();
        let thread = std::thread::Builder::new()
            .name("wal-trimmer".into())
            .spawn(move || {
                for keys in rx {
                    for key in keys {
                        if let Err(e) = db.remove(key) {
                            // Left in the log, the frame is skipped and removed at the next start.
                            tracing::warn!(error = %e, "cannot remove a truncated WAL frame");
                        }
                    }
                    metrics.wal_disk_bytes.set(disk_bytes(&dir) as i64);
                }
            })?;
        Ok(Trimmer { tx, thread })
    }

    /// Waits until every key handed over is removed.
    fn finish(self) {
        drop(self.tx);
        if self.thread.join().is_err() {
            tracing::error!("the WAL trimmer thread panicked");
        }
    }
}

struct Writer {
    store: WalStore,
    trimmer: Trimmer,
    next_seq: u64,
    /// The frame being encoded (reused: one allocation for the writer's life).
    frame: Vec<u8>,
    sink: Box<dyn Sink>,
    metrics: Arc<Metrics>,
    stop_service: CancellationToken,
    shared: Arc<Shared>,
    /// Appends are refused (a stop's final flush is under way).
    closed: bool,
    /// The writer ends after this round.
    stopping: bool,
}

type AppendReply = (oneshot::Sender<Result<Appended>>, Result<Appended>);

/// What one round writes: its records (sequence numbers from `first`) and
/// the dedup marks of their events.
/// What one group commit does: the appends staged (with the outcome each
/// caller gets once the round is durable), the truncations asked for, and
/// the round's frame.
struct Round {
    appends: Vec<AppendReply>,
    truncates: Vec<oneshot::Sender<Result<()>>>,
    truncate_upto: Option<u64>,
    group: Group,
}

struct Group {
    first: u64,
    records: Vec<Record>,
    marks: Vec<Mark>,
    approx_bytes: u64,
}

/// About what a record takes in a frame: its strings and a few bytes of
/// numbers and lengths.
fn approx_encoded_size(record: &Record) -> u64 {
    let strings = match record {
        Record::Update(u) => {
            u.user_id.len()
                + u.goal_id.len()
                + u.challenge_id.len()
                + u.namespace.len()
                + u.event_id.len()
        }
        Record::Delete(d) => d.user_id.len() + d.namespace.len() + d.event_id.len(),
    };
    strings as u64 + 24
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut commands = Vec::with_capacity(MAX_GROUP);
        while let Some(first) = rx.blocking_recv() {
            commands.push(first);
            while commands.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(command) => commands.push(command),
                    Err(_) => break,
                }
            }
            self.commit(&mut commands);
            if self.stopping {
                break;
            }
        }
        // Whatever is still queued is refused as the channel drops.
        drop(rx);
        self.trimmer.finish();
        if !self.shared.failed.load(Ordering::Relaxed) {
            if let Err(e) = self.store.save_marks().and_then(|()| self.store.sync()) {
                tracing::error!(error = %e, "final WAL sync failed");
            }
        }
        tracing::debug!("wal writer stopped");
    }

    /// One group commit: every command waiting is read into one round
    /// ([`Self::gather`]), the round is written with one fsync
    /// ([`Self::write`]), and only then are its records handed to the sink
    /// and every caller answered ([`Self::answer`]).
    fn commit(&mut self, commands: &mut Vec<Command>) {
        if self.shared.failed.load(Ordering::Relaxed) {
            for command in commands.drain(..) {
                match command {
                    Command::Append { reply, .. } => drop(reply.send(Err(WalError::Failed))),
                    Command::Truncate { reply, .. } => drop(reply.send(Err(WalError::Failed))),
                    Command::Read { reply, .. } => drop(reply.send(Err(WalError::Failed))),
                    Command::Refill { reply } => drop(reply.send(Err(WalError::Failed))),
                    Command::Close { reply } => drop(reply.send(Err(WalError::Failed))),
                    Command::Stop => self.stopping = true,
                }
            }
            return;
        }
        let started = Instant::now();
        let now_ms = unix_ms();
        let now_bucket = self.store.bucket_of(now_ms);
        let mut batch = sled::Batch::default();
        self.store.expire_marks(now_bucket, &mut batch);
        let round = self.gather(commands, now_bucket);
        match self.write(&round, now_ms, batch) {
            Ok(truncated) => self.answer(round, truncated, now_bucket, started),
            Err(e) => {
                self.fail(&e);
                for (reply, _) in round.appends {
                    let _ = reply.send(Err(WalError::Failed));
                }
                for reply in round.truncates {
                    let _ = reply.send(Err(WalError::Failed));
                }
            }
        }
    }

    /// Reads the waiting commands into one round: appends staged into its
    /// frame, truncations merged into one, reads answered at once (they only
    /// read what earlier rounds committed: below anything this round appends).
    fn gather(&mut self, commands: &mut Vec<Command>, now_bucket: u64) -> Round {
        let mut round = Round {
            appends: Vec::new(),
            truncates: Vec::new(),
            truncate_upto: None,
            group: Group {
                first: self.next_seq,
                records: Vec::new(),
                marks: Vec::new(),
                approx_bytes: 0,
            },
        };
        for command in commands.drain(..) {
            match command {
                Command::Read { after, upto, reply } => {
                    drop(reply.send(self.store.read(after, upto)));
                }
                Command::Refill { reply } => drop(reply.send(self.refill())),
                Command::Truncate { upto, reply } => {
                    round.truncate_upto = round.truncate_upto.max(Some(upto));
                    round.truncates.push(reply);
                }
                Command::Append { reply, .. } if self.closed => {
                    drop(reply.send(Err(WalError::Closed)));
                }
                Command::Append {
                    event_id,
                    records,
                    reply,
                } => {
                    let outcome = self.stage(&event_id, records, now_bucket, &mut round.group);
                    round.appends.push((reply, outcome));
                }
                // Answered with the round's truncations: after its appends.
                Command::Close { reply } => {
                    self.closed = true;
                    round.truncates.push(reply);
                }
                Command::Stop => self.stopping = true,
            }
        }
        round
    }

    /// Writes the round: its frame, and, for a truncation, the marks saved
    /// first and the truncated entries counted out; one apply, one fsync.
    /// Returns the keys of the truncated frames (removed later, by the
    /// trimmer).
    fn write(
        &mut self,
        round: &Round,
        now_ms: u64,
        mut batch: sled::Batch,
    ) -> Result<Vec<[u8; 9]>> {
        let group = &round.group;
        let mut first_seq = group.first;
        // One frame, or several when the round holds more records than a
        // frame may (every one in this batch, under this fsync).
        for records in group.records.chunks(codec::MAX_FRAME_RECORDS) {
            let head = codec::FrameHead {
                first_seq,
                count: records.len() as u32,
                written_ms: now_ms as i64,
            };
            codec::encode_frame(&head, records, &mut self.frame);
            batch.insert(&frame_key(first_seq), self.frame.as_slice());
            self.store.frame_staged(&head, self.frame.len());
            first_seq += records.len() as u64;
        }
        let mut truncated = Vec::new();
        if let Some(upto) = round.truncate_upto {
            self.store.save_marks()?;
            if !group.records.is_empty() {
                crate::crash_point!("wal-marks-saved");
            }
            truncated = self.store.remove_upto(upto);
        }
        self.store.apply(batch)?;
        fail::fail_point!("wal-fsync", |_| Err(WalError::Io(std::io::Error::other(
            "injected fsync failure (failpoint wal-fsync)"
        ))));
        self.store.sync()?;
        Ok(truncated)
    }

    /// After the fsync: the truncated frames to the trimmer, the round's
    /// marks queued for saving, its records to the sink, then every caller
    /// answered.
    fn answer(&mut self, round: Round, truncated: Vec<[u8; 9]>, now_bucket: u64, started: Instant) {
        crate::crash_point!("wal-after-fsync");
        if !truncated.is_empty() {
            // The marks are saved: the frames may go.
            let _ = self.trimmer.tx.send(truncated);
        }
        let Round {
            appends,
            truncates,
            group,
            ..
        } = round;
        // Only now may the round's marks be saved by a later truncation.
        self.store.marks_durable(now_bucket, group.marks);
        let records = group.records.len();
        if records > 0 {
            let committed = (group.first..).zip(group.records).collect();
            self.sink.committed(committed);
            self.metrics.wal_batch_size.observe(records as f64);
            self.metrics
                .wal_append_duration
                .observe(started.elapsed().as_secs_f64());
        }
        self.shared
            .bytes
            .store(self.store.bytes(), Ordering::Relaxed);
        self.shared
            .records
            .store(self.store.records(), Ordering::Relaxed);
        self.metrics.wal_bytes.set(self.store.bytes() as i64);
        self.metrics
            .dedup_marks
            .set(self.store.dedup_marks() as i64);
        for (reply, outcome) in appends {
            let _ = reply.send(outcome);
        }
        for reply in truncates {
            let _ = reply.send(Ok(()));
        }
    }

    /// The next slice of what a spilled sink does not hold, up to the last
    /// record committed (a round's own appends reach the sink after its
    /// fsync, in order, as always).
    fn refill(&mut self) -> Result<Refill> {
        let Some(after) = self.sink.spilled_after() else {
            return Ok(Refill::CaughtUp);
        };
        let (end, to_the_end) = self.store.read_end(after, REFILL_RECORDS);
        let records = self.store.read(after, end)?;
        Ok(self.sink.refill(records, to_the_end))
    }

    /// Adds one event's records to the round's frame, or says why not.
    fn stage(
        &mut self,
        event_id: &str,
        records: Vec<Record>,
        now_bucket: u64,
        group: &mut Group,
    ) -> Result<Appended> {
        let mark = (!event_id.is_empty()).then(|| mark_of(event_id));
        if mark.is_some_and(|m| self.store.seen(m)) {
            return Ok(Appended::Duplicate);
        }
        // The bound is checked against an estimate of the encoded size (the
        // frame is encoded once, after the round): close enough for backpressure.
        let size: u64 = records.iter().map(approx_encoded_size).sum();
        self.store.room_for(group.approx_bytes, size)?;
        group.approx_bytes += size;
        let first = self.next_seq;
        self.next_seq += records.len() as u64;
        group.records.extend(records);
        if let Some(mark) = mark {
            self.store.remember_mark(now_bucket, mark);
            self.metrics
                .dedup_evicted_early
                .inc_by(self.store.take_evicted_early());
            group.marks.push(mark);
        }
        Ok(Appended::Written {
            first,
            last: self.next_seq - 1,
        })
    }

    fn fail(&mut self, error: &WalError) {
        tracing::error!(
            error = %error,
            "WAL write or fsync failed: nothing more will be acknowledged; stopping so that a restart replays what is on disk"
        );
        self.shared.failed.store(true, Ordering::Relaxed);
        self.stop_service.cancel();
    }
}
