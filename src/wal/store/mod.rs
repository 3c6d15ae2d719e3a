//! The log on disk: opening it (durably on a first start), checking every
//! frame's and record's crc, replaying what is above the database watermark,
//! truncating what is below it. A log written by an older build (one record
//! per key) is read, replayed and truncated the same way.
//!
//! Dedup marks: a frame's records carry their event ids, so while a frame is
//! in the log it is its own durable mark (replay rebuilds the marks from it).
//! Before any frame is removed, the marks not yet saved are written to the
//! marks database and fsync'd ([`WalStore::save_marks`]); that database holds
//! them for the rest of the dedup window.

mod marks;

use std::collections::VecDeque;
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use super::dedup::{Dedup, Mark};
use super::durable::{begin_first_start, fsync_dir, DirLock};
use super::layout::{chunk_of, decode_marks, frame_key, number_of, FRAME_PREFIX, MARKS_PREFIX};
use super::legacy;
use super::{codec, Recovery, Result, Sink, WalConfig, WalError};
use crate::clock::unix_ms;
use crate::rules::Record;

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

/// Opens (or creates) one of the WAL's sled databases, `<WAL_DIR>/<name>`,
/// with every file of it synced: on a first start, under a `<name>.creating`
/// marker that is removed, durably, once it is.
fn open_durably(wal_dir: &Path, name: &str, cache_bytes: u64) -> Result<(sled::Db, File)> {
    let dir = wal_dir.join(name);
    let creating = wal_dir.join(format!("{name}.creating"));
    let first_start = begin_first_start(&dir, &creating)?;
    let db = open_sled(&dir, cache_bytes)?;
    // fsync is per inode: a second handle on sled's log file is enough.
    let db_file = File::open(dir.join("db"))?;
    db_file.sync_all()?;
    // sled writes `conf` once, on creation, and never syncs it.
    File::open(dir.join("conf"))?.sync_all()?;
    fsync_dir(&dir)?;
    fsync_dir(wal_dir)?;
    if first_start {
        std::fs::remove_file(&creating)?;
        fsync_dir(wal_dir)?;
    }
    Ok((db, db_file))
}

/// sled's page cache for the marks database: it is written about once a
/// second and read only at start-up.
const MARKS_CACHE_BYTES: u64 = 4 << 20;

fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// What the sled files of a WAL directory take on disk (the files of `log/`
/// and `marks/`); a file that cannot be read counts as empty.
pub(super) fn disk_bytes(wal_dir: &Path) -> u64 {
    ["log", "marks"]
        .iter()
        .filter_map(|name| std::fs::read_dir(wal_dir.join(name)).ok())
        .flatten()
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .filter(|meta| meta.is_file())
        .map(|meta| meta.len())
        .sum()
}

/// Records handed to a sink at once during replay.
const REPLAY_CHUNK: usize = 4096;

/// A WAL directory at a glance (`wal inspect`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WalSummary {
    /// Records not yet truncated, the frames (group commits) holding them,
    /// and their bytes.
    pub records: u64,
    pub frames: u64,
    pub bytes: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Records above the database watermark (not yet in the database), when
    /// the watermark could be read.
    pub pending_above_watermark: Option<u64>,
    /// When the oldest record was written (acknowledged), Unix ms; for a
    /// record of an older build, its event time.
    pub oldest_written_ms: Option<i64>,
    /// First sequence numbers of frames (or records) whose crc does not match.
    pub corrupt: Vec<u64>,
    /// Event ids remembered for deduplication (within the window): saved
    /// marks, and the event ids of the frames still in the log.
    pub dedup_marks: u64,
    /// What the WAL's files take on disk.
    pub disk_bytes: u64,
}

/// How an entry of the log is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// A frame of records (this build).
    Frame,
    /// One record (older builds).
    Record,
}

/// One key of the log: a frame or an older build's record, holding
/// sequence numbers `first..=last`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    pub layout: Layout,
    pub first: u64,
    pub last: u64,
    pub bytes: u32,
}

impl Entry {
    pub fn key(&self) -> [u8; 9] {
        match self.layout {
            Layout::Frame => frame_key(self.first),
            Layout::Record => legacy::record_key(self.first),
        }
    }

    pub fn records(&self) -> u64 {
        self.last - self.first + 1
    }
}

/// An opened WAL before its writer thread starts: what start-up replays.
pub struct WalStore {
    db: sled::Db,
    db_file: File,
    /// Dedup marks of truncated frames (see the module's doc).
    marks_db: sled::Db,
    marks_file: File,
    /// Marks whose frames are in the log but which are not in `marks_db` yet.
    pending_marks: Vec<(u64, Mark)>,
    /// The next chunk number of a marks key.
    next_chunk: u64,
    dedup: Dedup,
    /// Buckets past the window whose marks are still on disk.
    sweep: VecDeque<u64>,
    /// Live entries, in sequence order.
    live: VecDeque<Entry>,
    /// Records in the live entries.
    records: u64,
    bytes: u64,
    /// Entries whose crc does not match, and why.
    corrupt: Vec<(Entry, codec::CodecError)>,
    config: WalConfig,
    /// The directory's lock, kept as long as the WAL is open (see [`Self::hold`]).
    dir_lock: Option<DirLock>,
}

impl WalStore {
    /// Opens (or creates) the WAL, loads the dedup marks and checks every
    /// frame's and record's crc.
    pub fn open(config: WalConfig) -> Result<Self> {
        let (db, db_file) = open_durably(&config.dir, "log", config.cache_bytes)?;
        let (marks_db, marks_file) = open_durably(&config.dir, "marks", MARKS_CACHE_BYTES)?;

        let mut dedup = Dedup::new(config.dedup_window, config.dedup_max_marks);
        let now_bucket = dedup.bucket_of(unix_ms());
        let mut sweep = VecDeque::new();
        let mut remember = |bucket: u64, marks: &[u128], dedup: &mut Dedup| {
            if dedup.is_expired(bucket, now_bucket) {
                if !sweep.contains(&bucket) {
                    sweep.push_back(bucket);
                }
            } else if !dedup.dropped_early(bucket) {
                for &mark in marks {
                    sweep.extend(dedup.insert(bucket, mark));
                }
            }
        };
        // Older builds' marks first: they are older than any frame's.
        for (bucket, mark) in legacy::marks(&db)? {
            remember(bucket, &[mark], &mut dedup);
        }
        let mut next_chunk = 0;
        for (source, is_marks_db) in [(&db, false), (&marks_db, true)] {
            for item in source.scan_prefix([MARKS_PREFIX]) {
                let (key, value) = item?;
                let Some(bucket) = number_of(&key) else {
                    continue;
                };
                if is_marks_db {
                    next_chunk = next_chunk.max(chunk_of(&key).map_or(0, |c| c + 1));
                }
                match decode_marks(&value) {
                    Some(marks) => remember(bucket, &marks, &mut dedup),
                    // Lost marks only weaken deduplication; nothing acknowledged is lost.
                    None => tracing::warn!(bucket, "ignoring damaged dedup marks in the WAL"),
                }
            }
        }

        let mut live = Vec::new();
        let mut corrupt = Vec::new();
        for old in legacy::entries(&db)? {
            let entry = Entry {
                layout: Layout::Record,
                first: old.seq,
                last: old.seq,
                bytes: old.bytes,
            };
            if let Some(reason) = old.damage {
                corrupt.push((entry, reason));
            }
            live.push(entry);
        }
        for item in db.scan_prefix([FRAME_PREFIX]) {
            let (key, value) = item?;
            let Some(first) = number_of(&key) else {
                continue;
            };
            let head = codec::decode_frame_head(&value).and_then(|head| {
                if head.first_seq == first && head.count > 0 {
                    Ok(head)
                } else {
                    Err(codec::CodecError::Payload(format!(
                        "frame under key {first} says it starts at {} with {} records",
                        head.first_seq, head.count
                    )))
                }
            });
            let mut entry = Entry {
                layout: Layout::Frame,
                first,
                last: first,
                bytes: value.len() as u32,
            };
            match head {
                Ok(head) => entry.last = head.last_seq(),
                Err(reason) => corrupt.push((entry, reason)),
            }
            live.push(entry);
        }
        live.sort_by_key(|e| e.first);
        let live = VecDeque::from(live);
        Ok(WalStore {
            db,
            db_file,
            marks_db,
            marks_file,
            pending_marks: Vec::new(),
            next_chunk,
            dedup,
            sweep,
            records: live.iter().map(Entry::records).sum(),
            bytes: live.iter().map(|e| u64::from(e.bytes)).sum(),
            live,
            corrupt,
            config,
            dir_lock: None,
        })
    }

    /// Keeps the directory's lock ([`super::lock_dir`], taken before the
    /// identity was read) until this WAL is closed: it goes with the WAL to
    /// the writer thread and is released when that stops.
    pub fn hold(&mut self, lock: DirLock) {
        self.dir_lock = Some(lock);
    }

    /// The highest sequence number in the log (0 when empty).
    pub fn last_seq(&self) -> u64 {
        self.live.iter().map(|e| e.last).max().unwrap_or(0)
    }

    /// What the WAL's sled files take on disk.
    pub fn disk_bytes(&self) -> u64 {
        disk_bytes(&self.config.dir)
    }

    /// Records in the log.
    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// When the oldest record above `watermark` (not yet in the database)
    /// was written, Unix ms (for a record of an older build, its event time).
    pub fn oldest_pending_written_ms(&self, watermark: u64) -> Result<Option<i64>> {
        match self.live.iter().find(|e| e.last > watermark) {
            Some(entry) => self.written_ms(entry),
            None => Ok(None),
        }
    }

    fn written_ms(&self, entry: &Entry) -> Result<Option<i64>> {
        Ok(self
            .db
            .get(entry.key())?
            .and_then(|bytes| match entry.layout {
                Layout::Frame => codec::decode_frame_head(&bytes).ok().map(|h| h.written_ms),
                Layout::Record => legacy::event_time_ms(&bytes),
            }))
    }

    /// What `wal inspect` reports, read without changing anything.
    pub fn summary(&self, watermark: Option<u64>) -> Result<WalSummary> {
        let oldest_written_ms = match self.live.front() {
            Some(entry) => self.written_ms(entry)?,
            None => None,
        };
        Ok(WalSummary {
            records: self.records,
            frames: self
                .live
                .iter()
                .filter(|e| e.layout == Layout::Frame)
                .count() as u64,
            bytes: self.bytes,
            first_seq: self.live.front().map(|e| e.first),
            last_seq: self.live.back().map(|e| e.last),
            pending_above_watermark: watermark.map(|w| {
                self.live
                    .iter()
                    .map(|e| (e.last.saturating_sub(w)).min(e.records()))
                    .sum()
            }),
            oldest_written_ms,
            corrupt: self.corrupt.iter().map(|(e, _)| e.first).collect(),
            dedup_marks: (self.dedup.len() + self.unsaved_marks()?) as u64,
            disk_bytes: self.disk_bytes(),
        })
    }

    /// Drops what the database already has (seq ≤ `watermark`) and hands the
    /// rest to `sink` in order. Rebuilds the dedup marks of every frame in the
    /// log and saves them before anything is removed. Returns how many records
    /// were replayed.
    pub fn replay(&mut self, watermark: u64, sink: &mut impl Sink) -> Result<u64> {
        // Corrupt entries at or below the watermark are already in the
        // database: they are removed below, unread.
        let mut unreadable = Vec::new();
        for (entry, reason) in std::mem::take(&mut self.corrupt) {
            if entry.last <= watermark {
                unreadable.push(entry.first);
                continue;
            }
            match self.config.recovery {
                Recovery::Strict => {
                    return Err(WalError::Corrupt {
                        seq: entry.first,
                        reason,
                    })
                }
                Recovery::SkipCorrupt => {
                    tracing::error!(
                        seq = entry.first,
                        %reason,
                        "dropping a corrupt WAL entry: its updates are lost (WAL_RECOVERY=skip-corrupt)"
                    );
                    self.db.remove(entry.key())?;
                    self.live.retain(|e| e.first != entry.first);
                }
            }
        }
        self.records = self.live.iter().map(Entry::records).sum();
        self.bytes = self.live.iter().map(|e| u64::from(e.bytes)).sum();
        let now_bucket = self.dedup.bucket_of(unix_ms());
        let mut replayed = 0;
        let mut chunk = Vec::with_capacity(REPLAY_CHUNK);
        let live = std::mem::take(&mut self.live);
        for entry in &live {
            if unreadable.contains(&entry.first) {
                continue;
            }
            let Some(bytes) = self.db.get(entry.key())? else {
                continue;
            };
            let corrupt = |reason| WalError::Corrupt {
                seq: entry.first,
                reason,
            };
            let records = match entry.layout {
                Layout::Frame => {
                    let (head, records) = codec::decode_frame(&bytes).map_err(corrupt)?;
                    self.rebuild_marks(head.written_ms, &records, now_bucket);
                    records
                }
                // Older builds wrote a mark key with every record.
                Layout::Record => vec![legacy::record(&bytes).map_err(corrupt)?],
            };
            for (seq, record) in (entry.first..).zip(records) {
                if seq <= watermark {
                    continue;
                }
                chunk.push((seq, record));
                replayed += 1;
                if replayed == 1 {
                    crate::crash_point!("replay-mid");
                }
                if chunk.len() >= REPLAY_CHUNK {
                    sink.committed(std::mem::take(&mut chunk));
                }
            }
        }
        self.live = live;
        if !chunk.is_empty() {
            sink.committed(chunk);
        }
        self.save_marks()?;
        self.truncate_to(watermark)?;
        self.sync()?;
        Ok(replayed)
    }

    /// The records of sequence numbers `(after, upto]`, in order, read back
    /// from the log (they must not be truncated yet).
    pub fn read(&self, after: u64, upto: u64) -> Result<Vec<(u64, Record)>> {
        let mut out = Vec::new();
        for entry in self
            .live
            .iter()
            .filter(|e| e.last > after && e.first <= upto)
        {
            let corrupt = |reason| WalError::Corrupt {
                seq: entry.first,
                reason,
            };
            let Some(bytes) = self.db.get(entry.key())? else {
                return Err(WalError::Missing { seq: entry.first });
            };
            let records = match entry.layout {
                Layout::Frame => codec::decode_frame(&bytes).map_err(corrupt)?.1,
                Layout::Record => vec![legacy::record(&bytes).map_err(corrupt)?],
            };
            out.extend(
                (entry.first..)
                    .zip(records)
                    .filter(|(seq, _)| *seq > after && *seq <= upto),
            );
        }
        Ok(out)
    }

    /// Where a read-back of about `records` records after `after` ends: at
    /// the end of an entry (a frame holds whole events), or at the last
    /// record committed; and whether that is the last one.
    pub(super) fn read_end(&self, after: u64, records: u64) -> (u64, bool) {
        let mut read = 0;
        let mut end = after;
        for entry in self.live.iter().filter(|e| e.last > after) {
            read += entry.last - entry.first.max(after + 1) + 1;
            end = entry.last;
            if read >= records {
                break;
            }
        }
        (end, self.live.back().is_none_or(|last| last.last <= end))
    }

    /// A handle on the log (the trimmer removes truncated frames through it).
    pub(super) fn log(&self) -> sled::Db {
        self.db.clone()
    }

    /// The WAL directory.
    pub(super) fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// The dedup time bucket of `unix_ms`.
    pub(super) fn bucket_of(&self, unix_ms: u64) -> u64 {
        self.dedup.bucket_of(unix_ms)
    }

    /// Whether an event id was seen within the window.
    pub(super) fn seen(&self, mark: Mark) -> bool {
        self.dedup.contains(mark)
    }

    /// Event ids remembered (the `dedup_marks` metric).
    pub(super) fn dedup_marks(&self) -> usize {
        self.dedup.len()
    }

    /// Whether `size` more bytes fit under WAL_MAX_BYTES besides `staged`
    /// bytes of this round; else the error a caller is answered with.
    pub(super) fn room_for(&self, staged: u64, size: u64) -> Result<()> {
        let max = self.config.max_bytes;
        if self.bytes + staged + size > max {
            return Err(WalError::Full {
                bytes: self.bytes + staged,
                max,
            });
        }
        Ok(())
    }

    /// Counts a frame of this round (its batch is not applied yet).
    pub(super) fn frame_staged(&mut self, head: &codec::FrameHead, len: usize) {
        self.live.push_back(Entry {
            layout: Layout::Frame,
            first: head.first_seq,
            last: head.last_seq(),
            bytes: len as u32,
        });
        self.bytes += len as u64;
        self.records += u64::from(head.count);
    }

    /// Applies a round's batch to the log (durable only after [`Self::sync`]).
    pub(super) fn apply(&self, batch: sled::Batch) -> Result<()> {
        self.db.apply_batch(batch)?;
        Ok(())
    }

    /// Removes what is at or below `upto`; the marks must be saved first.
    fn truncate_to(&mut self, upto: u64) -> Result<()> {
        let mut batch = sled::Batch::default();
        for key in self.remove_upto(upto) {
            batch.remove(&key);
        }
        self.db.apply_batch(batch)?;
        Ok(())
    }

    /// Removes every entry wholly at or below `upto` (the database has it);
    /// the marks must be saved first ([`Self::save_marks`]).
    pub(super) fn remove_upto(&mut self, upto: u64) -> Vec<[u8; 9]> {
        let mut keys = Vec::new();
        while let Some(entry) = self.live.front().copied() {
            if entry.last > upto {
                break;
            }
            keys.push(entry.key());
            self.bytes -= u64::from(entry.bytes);
            self.records -= entry.records();
            self.live.pop_front();
        }
        keys
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
