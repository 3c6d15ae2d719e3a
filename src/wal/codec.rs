//! WAL record codec: `[format version: u8][bincode 2 payload][crc32 of both: u32 LE]`.
//!
//! Decoding never panics and never allocates more than [`MAX_RECORD_BYTES`]:
//! any byte string either decodes to the update that was encoded or is
//! rejected with a [`CodecError`].

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};

use crate::rules::Update;

/// The record format this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// An upper bound on one encoded record (ids are bounded by validation).
pub const MAX_RECORD_BYTES: usize = 4096;

const CRC_LEN: usize = 4;

fn bincode_config() -> Configuration<LittleEndian, Varint, Limit<MAX_RECORD_BYTES>> {
    config::standard().with_limit::<MAX_RECORD_BYTES>()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("record is {0} bytes, too short to hold a version and a crc")]
    TooShort(usize),
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    #[error("unknown record format version {0} (this build reads version {FORMAT_VERSION})")]
    Version(u8),
    #[error("payload does not decode: {0}")]
    Payload(String),
    #[error("{0} trailing bytes after the payload")]
    Trailing(usize),
}

pub fn encode(update: &Update) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(FORMAT_VERSION);
    bincode::encode_into_std_write(update, &mut out, bincode_config())
        .expect("a validated update fits MAX_RECORD_BYTES");
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

pub fn decode(bytes: &[u8]) -> Result<Update, CodecError> {
    if bytes.len() < 1 + CRC_LEN {
        return Err(CodecError::TooShort(bytes.len()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - CRC_LEN);
    let stored = u32::from_le_bytes(crc.try_into().expect("split at CRC_LEN"));
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(CodecError::Crc { stored, computed });
    }
    if body[0] != FORMAT_VERSION {
        return Err(CodecError::Version(body[0]));
    }
    let (update, used) = bincode::decode_from_slice(&body[1..], bincode_config())
        .map_err(|e| CodecError::Payload(e.to_string()))?;
    if used != body.len() - 1 {
        return Err(CodecError::Trailing(body.len() - 1 - used));
    }
    Ok(update)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Op;

    fn sample() -> Update {
        Update {
            user_id: "user-1".into(),
            goal_id: "goal-1".into(),
            challenge_id: "ch".into(),
            namespace: "ns".into(),
            target: 10,
            event_time_ms: -5,
            event_id: "ev".into(),
            op: Op::CountDay(19_000),
        }
    }

    #[test]
    fn records_round_trip() {
        for op in [
            Op::Set(0),
            Op::Add(i32::MAX),
            Op::CountDay(-1),
            Op::CompleteDay(7),
        ] {
            let update = Update { op, ..sample() };
            assert_eq!(decode(&encode(&update)).unwrap(), update);
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_is_detected() {
        let good = encode(&sample());
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad).is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn truncated_records_and_other_versions_are_rejected() {
        let good = encode(&sample());
        for len in 0..good.len() {
            assert!(decode(&good[..len]).is_err());
        }
        let mut v2 = good.clone();
        v2[0] = 2;
        let n = v2.len() - CRC_LEN;
        let crc = crc32fast::hash(&v2[..n]);
        v2[n..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&v2), Err(CodecError::Version(2)));
    }

    #[test]
    fn a_record_with_maximal_ids_fits_the_bound() {
        let big = Update {
            user_id: "u".repeat(400),
            goal_id: "g".repeat(400),
            challenge_id: "c".repeat(400),
            namespace: "n".repeat(400),
            event_id: "e".repeat(1024),
            ..sample()
        };
        assert!(encode(&big).len() < MAX_RECORD_BYTES);
    }
}
