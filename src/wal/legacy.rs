//! Logs written by older builds: read, replayed, truncated and expired here,
//! never written. In `<WAL_DIR>/log`:
//! - `w` + seq (u64 BE) → one record ([`super::codec`] formats 1 and 2);
//! - `d` + bucket (u64 BE) + mark (u128 BE) → nothing: one dedup mark.
//!
//! A directory of an older build opens like any other: its marks are loaded,
//! its records replayed above the watermark and truncated below it, its
//! expired marks swept; what this build writes is frames (`super::layout`).

use super::codec::{self, CodecError};
use super::dedup::Mark;
use super::layout::{number_of, prefixed};
use super::Result;
use crate::rules::Record;

const RECORD_PREFIX: u8 = b'w';
const MARK_PREFIX: u8 = b'd';

/// The key of an older build's record.
pub(super) fn record_key(seq: u64) -> [u8; 9] {
    prefixed(RECORD_PREFIX, seq)
}

/// The key of an older build's mark (tests write old logs with it).
#[cfg(test)]
pub(super) fn mark_key(bucket: u64, mark: Mark) -> [u8; 25] {
    let mut key = [MARK_PREFIX; 25];
    key[1..9].copy_from_slice(&bucket.to_be_bytes());
    key[9..].copy_from_slice(&mark.to_be_bytes());
    key
}

/// The prefix of one bucket's marks of an older build (a key per mark).
pub(super) fn bucket_prefix(bucket: u64) -> [u8; 9] {
    prefixed(MARK_PREFIX, bucket)
}

/// The dedup marks an older build left in the log, as (bucket, mark).
pub(super) fn marks(db: &sled::Db) -> Result<Vec<(u64, Mark)>> {
    let mut out = Vec::new();
    for item in db.scan_prefix([MARK_PREFIX]).keys() {
        let key = item?;
        let mark = key
            .get(9..25)
            .and_then(|b| b.try_into().ok())
            .map(u128::from_be_bytes);
        if let (Some(bucket), Some(mark)) = (number_of(&key), mark) {
            out.push((bucket, mark));
        }
    }
    Ok(out)
}

/// A record an older build left in the log.
pub(super) struct OldRecord {
    pub seq: u64,
    pub bytes: u32,
    /// Why it cannot be read (a wrong crc or format), if it cannot.
    pub damage: Option<CodecError>,
}

/// The records an older build left in the log.
pub(super) fn entries(db: &sled::Db) -> Result<Vec<OldRecord>> {
    let mut out = Vec::new();
    for item in db.scan_prefix([RECORD_PREFIX]) {
        let (key, value) = item?;
        let Some(seq) = number_of(&key) else { continue };
        out.push(OldRecord {
            seq,
            bytes: value.len() as u32,
            damage: codec::decode(&value).err(),
        });
    }
    Ok(out)
}

/// One of those records.
pub(super) fn record(bytes: &[u8]) -> std::result::Result<Record, CodecError> {
    codec::decode(bytes)
}

/// An older build's record kept no write time: its event's time stands in
/// (`wal inspect`, the oldest pending record).
pub(super) fn event_time_ms(bytes: &[u8]) -> Option<i64> {
    record(bytes).ok().map(|record| match record {
        Record::Update(u) => u.event_time_ms,
        Record::Delete(d) => d.event_time_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_builds_keys_are_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        db.insert(mark_key(3, 99), &[]).unwrap();
        db.insert(mark_key(4, u128::MAX), &[]).unwrap();
        db.insert(record_key(7), b"not a record".as_slice())
            .unwrap();
        assert_eq!(marks(&db).unwrap(), [(3, 99), (4, u128::MAX)]);
        let entries = entries(&db).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].seq, 7);
        assert!(entries[0].damage.is_some(), "a damaged record is reported");
        assert!(bucket_prefix(3) < bucket_prefix(4));
    }
}
