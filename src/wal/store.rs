//! The log on disk: opening it (durably on a first start), checking every
//! record's crc, replaying what is above the database watermark, truncating
//! what is below it.

use std::collections::VecDeque;
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use super::dedup::Dedup;
use super::durable::{begin_first_start, fsync_dir};
use super::layout::{seq_of, wal_key, MARK_PREFIX, WAL_PREFIX};
use super::{codec, Recovery, Result, Sink, WalConfig, WalError};
use crate::clock::unix_ms;

/// How long opening waits for sled's file lock. A `sled::Db` dropped in this
/// process releases the lock only when its background thread notices, a
/// moment later; a lock that another process holds is still there after it.
const LOCK_WAIT: Duration = Duration::from_secs(3);

fn open_sled(dir: &Path, cache_bytes: u64) -> Result<sled::Db> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(None)
            .open();
        match opened {
            Err(e) if is_lock_error(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => {
                return other.map_err(|source| WalError::Open {
                    dir: dir.to_owned(),
                    source,
                })
            }
        }
    }
}

fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Records handed to a sink at once during replay.
const REPLAY_CHUNK: usize = 4096;

/// A WAL directory at a glance (`wal inspect`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WalSummary {
    /// Records not yet truncated, and their bytes.
    pub records: u64,
    pub bytes: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Records above the database watermark (not yet in the database), when
    /// the watermark could be read.
    pub pending_above_watermark: Option<u64>,
    /// The event time of the oldest record (Unix ms).
    pub oldest_event_ms: Option<i64>,
    /// Records whose crc does not match.
    pub corrupt_records: Vec<u64>,
    /// Event ids remembered for deduplication (within the window).
    pub dedup_marks: u64,
}

/// An opened WAL before its writer thread starts: what start-up replays.
pub struct WalStore {
    pub(super) db: sled::Db,
    db_file: File,
    pub(super) dedup: Dedup,
    /// Buckets past the window whose marks are still on disk.
    pub(super) sweep: VecDeque<u64>,
    /// Live records (seq, encoded size), in seq order.
    pub(super) live: VecDeque<(u64, u32)>,
    pub(super) bytes: u64,
    corrupt: Vec<(u64, codec::CodecError)>,
    pub(super) config: WalConfig,
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

    /// What `wal inspect` reports, read without changing anything.
    pub fn summary(&self, watermark: Option<u64>) -> Result<WalSummary> {
        let oldest = match self.live.front() {
            Some(&(seq, _)) => self
                .db
                .get(wal_key(seq))?
                .and_then(|bytes| codec::decode(&bytes).ok()),
            None => None,
        };
        let oldest_event_ms = oldest.map(|record| match record {
            crate::rules::Record::Update(u) => u.event_time_ms,
            crate::rules::Record::Delete(d) => d.event_time_ms,
        });
        Ok(WalSummary {
            records: self.live.len() as u64,
            bytes: self.bytes,
            first_seq: self.live.front().map(|&(seq, _)| seq),
            last_seq: self.live.back().map(|&(seq, _)| seq),
            pending_above_watermark: watermark
                .map(|w| self.live.iter().filter(|&&(seq, _)| seq > w).count() as u64),
            oldest_event_ms,
            corrupt_records: self.corrupt.iter().map(|(seq, _)| *seq).collect(),
            dedup_marks: self.dedup.len() as u64,
        })
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

    pub(super) fn remove_upto(&mut self, upto: u64, batch: &mut sled::Batch) {
        while let Some(&(seq, size)) = self.live.front() {
            if seq > upto {
                break;
            }
            batch.remove(&wal_key(seq));
            self.bytes -= u64::from(size);
            self.live.pop_front();
        }
    }

    pub(super) fn sync(&self) -> Result<()> {
        self.db.flush()?;
        // Test only: acknowledge on sled's flush() alone, as a WAL without the
        // fsync would; tests/power_loss.rs shows that this loses updates.
        fail::fail_point!("wal-flush-only", |_| Ok(()));
        self.db_file.sync_all()?;
        Ok(())
    }
}
