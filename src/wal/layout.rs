//! Where things are in the sled tree of `<WAL_DIR>/log`:
//! - `f` + first seq (u64 BE) → a frame: every record of one group commit
//!   ([`super::codec`], format 3);
//! - `m` + bucket (u64 BE) + first seq (u64 BE) → the dedup marks that group
//!   commit added in that time bucket (`[crc32 LE][mark u128 BE]…`), so that
//!   expiring a bucket removes a key per group commit, not one per event;
//! - `w` + seq (u64 BE) → one record (formats 1 and 2, written by older
//!   builds: still replayed and truncated, never written);
//! - `d` + bucket (u64 BE) + mark (u128 BE) → nothing (older builds' dedup
//!   marks: still loaded and expired).

use super::dedup::Mark;

pub(super) const FRAME_PREFIX: u8 = b'f';
pub(super) const MARKS_PREFIX: u8 = b'm';
pub(super) const OLD_RECORD_PREFIX: u8 = b'w';
pub(super) const OLD_MARK_PREFIX: u8 = b'd';

fn prefixed(prefix: u8, n: u64) -> [u8; 9] {
    let mut key = [prefix; 9];
    key[1..].copy_from_slice(&n.to_be_bytes());
    key
}

pub(super) fn frame_key(first_seq: u64) -> [u8; 9] {
    prefixed(FRAME_PREFIX, first_seq)
}

pub(super) fn marks_key(bucket: u64, first_seq: u64) -> [u8; 17] {
    let mut key = [MARKS_PREFIX; 17];
    key[1..9].copy_from_slice(&bucket.to_be_bytes());
    key[9..].copy_from_slice(&first_seq.to_be_bytes());
    key
}

pub(super) fn old_record_key(seq: u64) -> [u8; 9] {
    prefixed(OLD_RECORD_PREFIX, seq)
}

#[cfg(test)]
pub(super) fn old_mark_key(bucket: u64, mark: Mark) -> [u8; 25] {
    let mut key = [OLD_MARK_PREFIX; 25];
    key[1..9].copy_from_slice(&bucket.to_be_bytes());
    key[9..].copy_from_slice(&mark.to_be_bytes());
    key
}

/// The keys of one bucket's marks, new and old layout.
pub(super) fn bucket_prefixes(bucket: u64) -> [[u8; 9]; 2] {
    [
        prefixed(MARKS_PREFIX, bucket),
        prefixed(OLD_MARK_PREFIX, bucket),
    ]
}

/// The u64 that follows the prefix byte (a seq or a bucket).
pub(super) fn number_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}

/// The mark of an old-layout mark key.
pub(super) fn old_mark_of(key: &[u8]) -> Option<Mark> {
    Some(u128::from_be_bytes(key.get(9..25)?.try_into().ok()?))
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
        assert_eq!(old_mark_of(&old_mark_key(3, 99)), Some(99));
    }
}
