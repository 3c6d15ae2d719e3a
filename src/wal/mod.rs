//! The write-ahead log: sled 0.34, one writer thread, group commit.
//!
//! Layout of the sled tree in `<WAL_DIR>/log`:
//! - `w` + seq (u64 BE) → one [`Update`] record ([`codec`]);
//! - `d` + bucket (u64 BE) + mark (u128 BE) → nothing: a dedup mark ([`dedup`]).
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

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::rules::Record;
use dedup::{mark_of, Dedup, Mark};

pub type Result<T, E = WalError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("cannot open the WAL in {dir}: {source}")]
    Open { dir: PathBuf, source: sled::Error },
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

const WAL_PREFIX: u8 = b'w';
const MARK_PREFIX: u8 = b'd';
/// Commands one group commit takes at most.
const MAX_GROUP: usize = 4096;
/// Expired marks removed from disk per group commit.
const SWEEP_PER_COMMIT: usize = 4096;
const CHANNEL_CAPACITY: usize = 16_384;

fn wal_key(seq: u64) -> [u8; 9] {
    let mut key = [WAL_PREFIX; 9];
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn mark_key(bucket: u64, mark: Mark) -> [u8; 25] {
    let mut key = [MARK_PREFIX; 25];
    key[1..9].copy_from_slice(&bucket.to_be_bytes());
    key[9..].copy_from_slice(&mark.to_be_bytes());
    key
}

fn bucket_prefix(bucket: u64) -> [u8; 9] {
    let mut key = [MARK_PREFIX; 9];
    key[1..].copy_from_slice(&bucket.to_be_bytes());
    key
}

fn seq_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `create_dir_all`, then an fsync of the parent of every directory it made:
/// a new directory's entry is only durable once its parent is synced, and a
/// power cut must not take the WAL directory (and all it holds) away.
fn create_dir_durable(dir: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(path);
        at = path.parent();
    }
    std::fs::create_dir_all(dir)?;
    for made in missing.iter().rev() {
        match made.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => fsync_dir(parent)?,
            _ => fsync_dir(Path::new("."))?,
        }
    }
    Ok(())
}

fn open_sled(dir: &Path, cache_bytes: u64) -> Result<sled::Db> {
    sled::Config::new()
        .path(dir)
        .cache_capacity(cache_bytes)
        .flush_every_ms(None)
        .open()
        .map_err(|source| WalError::Open {
            dir: dir.to_owned(),
            source,
        })
}

/// Marks a first start with a durable `log.creating` file until sled's files
/// are all synced (the caller removes it, durably, before anything is
/// acknowledged). sled writes its `conf` file once, on creation, and never
/// syncs it: a power cut during the first start can leave it torn, and sled
/// then refuses to open (found by the torn cuts of tests/power_loss.rs). A
/// marker left over means exactly that interrupted first start, whose `log`
/// holds nothing acknowledged: it is removed and made again. Returns whether
/// this is a first start.
fn begin_first_start(dir: &Path, creating: &Path) -> Result<bool> {
    if creating.exists() {
        if dir.exists() {
            tracing::warn!(dir = %dir.display(), "removing a WAL directory left half-made by an interrupted first start");
            std::fs::remove_dir_all(dir)?;
        }
    } else if dir.exists() {
        return Ok(false);
    }
    let parent = creating.parent().unwrap_or(Path::new("."));
    create_dir_durable(parent)?;
    File::create(creating)?.sync_all()?;
    fsync_dir(parent)?;
    create_dir_durable(dir)?;
    Ok(true)
}

/// Reads the instance id stored in the WAL directory, creating one on first start.
pub fn instance_id(dir: &Path) -> Result<String> {
    let path = dir.join("instance_id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    create_dir_durable(dir)?;
    let id = format!("ceh-{}", uuid::Uuid::new_v4().simple());
    let tmp = dir.join("instance_id.tmp");
    {
        let mut f = File::create(&tmp)?;
        std::io::Write::write_all(&mut f, id.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    fsync_dir(dir)?;
    Ok(id)
}

/// Where committed records go, in sequence order, before any caller hears
/// that they are durable (and, at start-up, where replayed records go).
pub trait Sink: Send + 'static {
    fn committed(&mut self, records: Vec<(u64, Record)>);
}

/// Records handed to a sink at once during replay.
const REPLAY_CHUNK: usize = 4096;

/// An opened WAL before its writer thread starts: what start-up replays.
pub struct WalStore {
    db: sled::Db,
    db_file: File,
    dedup: Dedup,
    /// Buckets past the window whose marks are still on disk.
    sweep: VecDeque<u64>,
    /// Live records (seq, encoded size), in seq order.
    live: VecDeque<(u64, u32)>,
    bytes: u64,
    corrupt: Vec<(u64, codec::CodecError)>,
    config: WalConfig,
}

impl WalStore {
    /// Opens (or creates) the WAL, loads the dedup marks and checks every record's crc.
    pub fn open(config: WalConfig) -> Result<Self> {
        let dir = config.dir.join("log");
        let creating = config.dir.join("log.creating");
        let first_start = begin_first_start(&dir, &creating)?;
        let db = open_sled(&dir, config.cache_bytes)?;
        // fsync is per inode: a second handle on sled's log file is enough.
        let db_file = File::open(dir.join("db"))?;
        db_file.sync_all()?;
        // sled writes `conf` once, on creation, and never syncs it.
        File::open(dir.join("conf"))?.sync_all()?;
        fsync_dir(&dir)?;
        fsync_dir(&config.dir)?;
        if first_start {
            std::fs::remove_file(&creating)?;
            fsync_dir(&config.dir)?;
        }

        let mut dedup = Dedup::new(config.dedup_window, config.dedup_max_marks);
        let now_bucket = dedup.bucket_of(unix_ms());
        let mut sweep = VecDeque::new();
        for item in db.scan_prefix([MARK_PREFIX]).keys() {
            let key = item?;
            let (Some(bucket), Some(mark)) = (
                seq_of(&key),
                key.get(9..25)
                    .and_then(|m| m.try_into().ok())
                    .map(u128::from_be_bytes),
            ) else {
                continue;
            };
            if dedup.is_expired(bucket, now_bucket) {
                if sweep.back() != Some(&bucket) {
                    sweep.push_back(bucket);
                }
            } else {
                sweep.extend(dedup.insert(bucket, mark));
            }
        }

        let mut live = VecDeque::new();
        let mut bytes = 0;
        let mut corrupt = Vec::new();
        for item in db.scan_prefix([WAL_PREFIX]) {
            let (key, value) = item?;
            let Some(seq) = seq_of(&key) else { continue };
            if let Err(reason) = codec::decode(&value) {
                corrupt.push((seq, reason));
            }
            live.push_back((seq, value.len() as u32));
            bytes += value.len() as u64;
        }
        Ok(WalStore {
            db,
            db_file,
            dedup,
            sweep,
            live,
            bytes,
            corrupt,
            config,
        })
    }

    /// The highest sequence number in the log (0 when empty).
    pub fn last_seq(&self) -> u64 {
        self.live.back().map_or(0, |&(seq, _)| seq)
    }

    pub fn records(&self) -> usize {
        self.live.len()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Drops records the database already has (seq ≤ `watermark`) and hands
    /// the rest to `sink` in order. Returns how many were replayed.
    pub fn replay(&mut self, watermark: u64, sink: &mut impl Sink) -> Result<u64> {
        let mut dropped = std::collections::HashSet::new();
        for (seq, reason) in std::mem::take(&mut self.corrupt) {
            if seq <= watermark {
                continue; // already in the database; removed below
            }
            match self.config.recovery {
                Recovery::Strict => return Err(WalError::Corrupt { seq, reason }),
                Recovery::SkipCorrupt => {
                    tracing::error!(seq, %reason, "dropping a corrupt WAL record: its update is lost (WAL_RECOVERY=skip-corrupt)");
                    self.db.remove(wal_key(seq))?;
                    dropped.insert(seq);
                }
            }
        }
        self.truncate_to(watermark)?;
        let mut replayed = 0;
        let mut chunk = Vec::with_capacity(REPLAY_CHUNK);
        for item in self
            .db
            .range(wal_key(watermark.saturating_add(1))..=wal_key(u64::MAX))
        {
            let (key, value) = item?;
            let Some(seq) = seq_of(&key) else { continue };
            let record =
                codec::decode(&value).map_err(|reason| WalError::Corrupt { seq, reason })?;
            chunk.push((seq, record));
            replayed += 1;
            if replayed == 1 {
                crate::crash_point!("replay-mid");
            }
            if chunk.len() == REPLAY_CHUNK {
                sink.committed(std::mem::take(&mut chunk));
            }
        }
        if !chunk.is_empty() {
            sink.committed(chunk);
        }
        self.live.retain(|(seq, _)| !dropped.contains(seq));
        self.bytes = self.live.iter().map(|&(_, size)| u64::from(size)).sum();
        self.sync()?;
        Ok(replayed)
    }

    fn truncate_to(&mut self, upto: u64) -> Result<()> {
        let mut batch = sled::Batch::default();
        self.remove_upto(upto, &mut batch);
        self.db.apply_batch(batch)?;
        Ok(())
    }

    fn remove_upto(&mut self, upto: u64, batch: &mut sled::Batch) {
        while let Some(&(seq, size)) = self.live.front() {
            if seq > upto {
                break;
            }
            batch.remove(&wal_key(seq));
            self.bytes -= u64::from(size);
            self.live.pop_front();
        }
    }

    fn sync(&self) -> Result<()> {
        self.db.flush()?;
        // Test only: acknowledge on sled's flush() alone, as a WAL without the
        // fsync would; tests/power_loss.rs shows that this loses updates.
        fail::fail_point!("wal-flush-only", |_| Ok(()));
        self.db_file.sync_all()?;
        Ok(())
    }

    /// Starts the writer thread. `next_seq` must be above both the log's last
    /// sequence number and the database watermark.
    pub fn start(
        self,
        next_seq: u64,
        sink: impl Sink,
        metrics: Arc<Metrics>,
        stop_service: CancellationToken,
    ) -> Result<(Wal, WalThread)> {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let shared = Arc::new(Shared {
            bytes: AtomicU64::new(self.bytes),
            records: AtomicU64::new(self.live.len() as u64),
            failed: AtomicBool::new(false),
        });
        metrics.wal_bytes.set(self.bytes as i64);
        metrics.dedup_marks.set(self.dedup.len() as i64);
        let writer = Writer {
            store: self,
            next_seq,
            sink: Box::new(sink),
            metrics,
            stop_service,
            shared: shared.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok((Wal { tx, shared }, WalThread(handle)))
    }
}

/// The writer thread; join it after every [`Wal`] handle is dropped.
pub struct WalThread(std::thread::JoinHandle<()>);

impl WalThread {
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("the WAL writer thread panicked");
        }
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
    Append {
        event_id: String,
        records: Vec<Record>,
        reply: oneshot::Sender<Result<Appended>>,
    },
    Truncate {
        upto: u64,
        reply: oneshot::Sender<Result<()>>,
    },
}

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
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Append {
                event_id,
                records,
                reply,
            })
            .await
            .map_err(|_| self.closed_error())?;
        rx.await.map_err(|_| self.closed_error())?
    }

    /// Removes records with sequence numbers ≤ `upto` (they are in the database).
    pub async fn truncate(&self, upto: u64) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Truncate { upto, reply })
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

struct Writer {
    store: WalStore,
    next_seq: u64,
    sink: Box<dyn Sink>,
    metrics: Arc<Metrics>,
    stop_service: CancellationToken,
    shared: Arc<Shared>,
}

type AppendReply = (oneshot::Sender<Result<Appended>>, Result<Appended>);

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
        }
        if !self.shared.failed.load(Ordering::Relaxed) {
            if let Err(e) = self.store.sync() {
                tracing::error!(error = %e, "final WAL sync failed");
            }
        }
        tracing::debug!("wal writer stopped");
    }

    /// One group commit.
    fn commit(&mut self, commands: &mut Vec<Command>) {
        if self.shared.failed.load(Ordering::Relaxed) {
            for command in commands.drain(..) {
                match command {
                    Command::Append { reply, .. } => drop(reply.send(Err(WalError::Failed))),
                    Command::Truncate { reply, .. } => drop(reply.send(Err(WalError::Failed))),
                }
            }
            return;
        }
        let started = Instant::now();
        let now_bucket = self.store.dedup.bucket_of(unix_ms());
        let mut batch = sled::Batch::default();
        self.expire_marks(now_bucket, &mut batch);

        let mut appends: Vec<AppendReply> = Vec::new();
        let mut truncates = Vec::new();
        let mut accepted: Vec<(u64, Record)> = Vec::new();
        for command in commands.drain(..) {
            match command {
                Command::Truncate { upto, reply } => {
                    self.store.remove_upto(upto, &mut batch);
                    truncates.push(reply);
                }
                Command::Append {
                    event_id,
                    records,
                    reply,
                } => {
                    let outcome =
                        self.stage(event_id, records, now_bucket, &mut batch, &mut accepted);
                    appends.push((reply, outcome));
                }
            }
        }

        let written = self
            .store
            .db
            .apply_batch(batch)
            .map_err(WalError::from)
            .and_then(|()| {
                fail::fail_point!("wal-fsync", |_| Err(WalError::Io(std::io::Error::other(
                    "injected fsync failure (failpoint wal-fsync)"
                ))));
                self.store.sync()
            });
        if let Err(e) = written {
            self.fail(&e);
            for (reply, _) in appends {
                let _ = reply.send(Err(WalError::Failed));
            }
            for reply in truncates {
                let _ = reply.send(Err(WalError::Failed));
            }
            return;
        }
        crate::crash_point!("wal-after-fsync");

        let records = accepted.len();
        if records > 0 {
            self.sink.committed(accepted);
            self.metrics.wal_batch_size.observe(records as f64);
            self.metrics
                .wal_append_duration
                .observe(started.elapsed().as_secs_f64());
        }
        self.shared.bytes.store(self.store.bytes, Ordering::Relaxed);
        self.shared
            .records
            .store(self.store.live.len() as u64, Ordering::Relaxed);
        self.metrics.wal_bytes.set(self.store.bytes as i64);
        self.metrics.dedup_marks.set(self.store.dedup.len() as i64);
        for (reply, outcome) in appends {
            let _ = reply.send(outcome);
        }
        for reply in truncates {
            let _ = reply.send(Ok(()));
        }
    }

    /// Puts one event's records into the batch, or says why not.
    fn stage(
        &mut self,
        event_id: String,
        records: Vec<Record>,
        now_bucket: u64,
        batch: &mut sled::Batch,
        accepted: &mut Vec<(u64, Record)>,
    ) -> Result<Appended> {
        let mark = (!event_id.is_empty()).then(|| mark_of(&event_id));
        if mark.is_some_and(|m| self.store.dedup.contains(m)) {
            return Ok(Appended::Duplicate);
        }
        let encoded: Vec<Vec<u8>> = records.iter().map(codec::encode).collect();
        let size: u64 = encoded.iter().map(|r| r.len() as u64).sum();
        let max = self.store.config.max_bytes;
        if self.store.bytes + size > max {
            return Err(WalError::Full {
                bytes: self.store.bytes,
                max,
            });
        }
        let first = self.next_seq;
        for (record, bytes) in records.into_iter().zip(encoded) {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.store.live.push_back((seq, bytes.len() as u32));
            batch.insert(&wal_key(seq), bytes);
            accepted.push((seq, record));
        }
        self.store.bytes += size;
        if let Some(mark) = mark {
            let bucket = self.store.dedup.bucket_of(unix_ms()).max(now_bucket);
            for evicted in self.store.dedup.insert(bucket, mark) {
                self.metrics.dedup_evicted_early.inc();
                self.store.sweep.push_back(evicted);
            }
            batch.insert(&mark_key(bucket, mark), &[]);
        }
        Ok(Appended::Written {
            first,
            last: self.next_seq - 1,
        })
    }

    /// Forgets buckets past the window and removes a bounded number of their
    /// marks from disk (a bucket can hold millions; removing it in one go would stall appends).
    fn expire_marks(&mut self, now_bucket: u64, batch: &mut sled::Batch) {
        self.store.sweep.extend(self.store.dedup.expire(now_bucket));
        let mut budget = SWEEP_PER_COMMIT;
        while let Some(&bucket) = self.store.sweep.front() {
            let mut removed = 0;
            for key in self
                .store
                .db
                .scan_prefix(bucket_prefix(bucket))
                .keys()
                .take(budget)
            {
                match key {
                    Ok(key) => {
                        batch.remove(key);
                        removed += 1;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot scan expired dedup marks");
                        return;
                    }
                }
            }
            if removed < budget {
                self.store.sweep.pop_front();
                budget -= removed;
            } else {
                return;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::Buffer;
    use crate::rules::{Op, Update};
    use std::sync::Mutex;

    /// A buffer the test can look at while the writer thread fills it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Buffer>>);

    impl Sink for Shared {
        fn committed(&mut self, records: Vec<(u64, Record)>) {
            self.0.lock().unwrap().committed(records);
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

    /// Appends `n` events (one update each) through the writer thread, then closes the WAL.
    fn write_events(dir: &Path, n: i32) -> Buffer {
        let store = WalStore::open(config(dir, Recovery::Strict)).unwrap();
        let next = store.last_seq() + 1;
        let buffer = Shared::default();
        let (wal, thread) = start(store, next, &buffer);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            for i in 1..=n {
                let outcome = wal.append(format!("e{i}"), vec![update(i)]).await.unwrap();
                assert!(matches!(outcome, Appended::Written { .. }));
            }
            // The same id again is a duplicate and writes nothing.
            let again = wal.append("e1".into(), vec![update(1)]).await.unwrap();
            assert_eq!(again, Appended::Duplicate);
        });
        drop(wal);
        thread.join();
        let buffer = buffer.0.lock().unwrap().clone();
        buffer
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
        assert!(store.dedup.contains(mark_of("e3")));
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
            let mut value = db.get(wal_key(3)).unwrap().unwrap().to_vec();
            value[2] ^= 0xff;
            db.insert(wal_key(3), value).unwrap();
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
            db.insert(wal_key(2), &b"garbage"[..]).unwrap();
            db.flush().unwrap();
        }
        let mut lenient = WalStore::open(config(dir2.path(), Recovery::SkipCorrupt)).unwrap();
        let mut buffer = Buffer::default();
        assert_eq!(lenient.replay(0, &mut buffer).unwrap(), 3);
        assert_eq!(lenient.records(), 3);
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
}
