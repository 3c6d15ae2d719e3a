//! Where things are in the two sled databases of `WAL_DIR`.
//!
//! `<WAL_DIR>/log`, written at every group commit and emptied by truncation:
//! - `f` + first seq (u64 BE) → a frame: every record of one group commit
//!   ([`super::codec`], format 4; format 3 frames of older builds read too);
//! - `m` + bucket (u64 BE) + first seq (u64 BE) → dedup marks (builds
//!   before the marks database);
//! - older builds' keys: [`super::legacy`].
//!
//! `<WAL_DIR>/marks`, the dedup marks of frames already truncated:
//! - `m` + bucket (u64 BE) + chunk (u64 BE) → marks of that time bucket
//!   (`[crc32 LE][mark u128 BE]…`, at most 256 marks), written each time the
//!   marks are saved (before every truncation), so that expiring a bucket
//!   removes a key per 256 events, not one per event.
//!
//! The marks live apart from the frames because sled reuses a segment of its
//! file only once nothing in it is live: marks kept for the whole dedup window
//! in the frames' segments pinned them, and the log's file grew by every byte
//! written for the length of the window (measured: 1.5 MB/s at 5,000 events/s).

use super::dedup::Mark;

pub(super) const FRAME_PREFIX: u8 = b'f';
pub(super) const MARKS_PREFIX: u8 = b'm';

/// A prefix byte, then `n` (u64 BE): every 9-byte key of the log.
pub(super) fn prefixed(prefix: u8, n: u64) -> [u8; 9] {
    let mut key = [prefix; 9];
    key[1..].copy_from_slice(&n.to_be_bytes());
    key
}

pub(super) fn frame_key(first_seq: u64) -> [u8; 9] {
    prefixed(FRAME_PREFIX, first_seq)
}

/// A marks key: the bucket, then a number that makes it unique in the bucket
/// (the first seq of a group commit in the log of older builds, a chunk
/// number in the marks database).
pub(super) fn marks_key(bucket: u64, chunk: u64) -> [u8; 17] {
    let mut key = [MARKS_PREFIX; 17];
    key[1..9].copy_from_slice(&bucket.to_be_bytes());
    key[9..].copy_from_slice(&chunk.to_be_bytes());
    key
}

/// The chunk number of a marks key.
pub(super) fn chunk_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(9..17)?.try_into().ok()?))
}

/// The prefix of one bucket's marks keys (in either database).
pub(super) fn bucket_prefix(bucket: u64) -> [u8; 9] {
    prefixed(MARKS_PREFIX, bucket)
}

/// The u64 that follows the prefix byte (a seq or a bucket).
pub(super) fn number_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}

/// A marks value: the crc32 of the marks, then the marks.
pub(super) fn encode_marks(marks: &[Mark]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + marks.len() * 16);
    out.extend_from_slice(&[0; 4]);
    for mark in marks {
        out.extend_from_slice(&mark.to_be_bytes());
    }
    let crc = crc32fast::hash(&out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The marks of a marks value, or None when it is damaged.
pub(super) fn decode_marks(bytes: &[u8]) -> Option<Vec<Mark>> {
    let (crc, marks) = bytes.split_at_checked(4)?;
    if marks.len() % 16 != 0 || crc32fast::hash(marks).to_le_bytes() != crc {
        return None;
    }
    Some(
        marks
            .chunks_exact(16)
            .map(|m| u128::from_be_bytes(m.try_into().expect("chunks of 16")))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_damage_is_seen() {
        let marks = [1u128, u128::MAX, 42];
        let bytes = encode_marks(&marks);
        assert_eq!(decode_marks(&bytes).unwrap(), marks);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert_eq!(decode_marks(&bad), None, "flip at {i}");
        }
        assert_eq!(decode_marks(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn keys_sort_by_their_numbers() {
        assert!(frame_key(255) < frame_key(256));
        assert!(marks_key(1, u64::MAX) < marks_key(2, 0));
        assert_eq!(number_of(&marks_key(7, 9)), Some(7));
        assert_eq!(chunk_of(&marks_key(7, 9)), Some(9));
    }
}
