//! Where things are in the sled tree of `<WAL_DIR>/log`:
//! - `w` + seq (u64 BE) → one record ([`super::codec`]);
//! - `d` + bucket (u64 BE) + mark (u128 BE) → nothing: a dedup mark ([`super::dedup`]).

use super::dedup::Mark;

pub(super) const WAL_PREFIX: u8 = b'w';
pub(super) const MARK_PREFIX: u8 = b'd';

pub(super) fn wal_key(seq: u64) -> [u8; 9] {
    let mut key = [WAL_PREFIX; 9];
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

pub(super) fn mark_key(bucket: u64, mark: Mark) -> [u8; 25] {
    let mut key = [MARK_PREFIX; 25];
    key[1..9].copy_from_slice(&bucket.to_be_bytes());
    key[9..].copy_from_slice(&mark.to_be_bytes());
    key
}

pub(super) fn bucket_prefix(bucket: u64) -> [u8; 9] {
    let mut key = [MARK_PREFIX; 9];
    key[1..].copy_from_slice(&bucket.to_be_bytes());
    key
}

pub(super) fn seq_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}
