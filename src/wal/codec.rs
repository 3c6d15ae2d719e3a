//! WAL codec: `[format version: u8][bincode 2 payload][crc32 of both: u32 LE]`.
//!
//! Format 3 (written by this build) is a *frame*: every record of one group
//! commit, `[FrameHead][records]`, stored under one sled key — one insert
//! per group commit instead of one per record. Format 2 (one [`Record`] per
//! key: an update or a GDPR deletion) and format 1 (a bare update, from
//! before deletions and `defaultAssigned` existed; read as an update that
//! may create its row, what every update did then) are still read, so a WAL
//! left by an older build replays after an upgrade.
//!
//! Decoding never panics and never allocates more than [`MAX_FRAME_BYTES`]
//! (a record: [`MAX_RECORD_BYTES`]): any byte string either decodes to what
//! was encoded or is rejected with a [`CodecError`].

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use bincode::{Decode, Encode};

use crate::rules::{Op, Record, Update};

/// The format of a single record (what older builds wrote under `w` keys).
pub const FORMAT_VERSION: u8 = 2;
/// The oldest record format this build reads.
pub const OLDEST_FORMAT_VERSION: u8 = 1;
/// The frame format this build writes.
pub const FRAME_VERSION: u8 = 3;
/// An upper bound on one encoded frame.
pub const MAX_FRAME_BYTES: usize = 64 << 20;
/// An upper bound on one encoded record (ids are bounded by validation).
pub const MAX_RECORD_BYTES: usize = 4096;

const CRC_LEN: usize = 4;

fn bincode_config() -> Configuration<LittleEndian, Varint, Limit<MAX_RECORD_BYTES>> {
    config::standard().with_limit::<MAX_RECORD_BYTES>()
}

fn frame_config() -> Configuration<LittleEndian, Varint, Limit<MAX_FRAME_BYTES>> {
    config::standard().with_limit::<MAX_FRAME_BYTES>()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("record is {0} bytes, too short to hold a version and a crc")]
    TooShort(usize),
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    #[error("unknown record format version {0} (this build reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION})")]
    Version(u8),
    #[error("payload does not decode: {0}")]
    Payload(String),
    #[error("{0} trailing bytes after the payload")]
    Trailing(usize),
    #[error("the frame says it holds {said} records but holds {held}")]
    Count { said: u32, held: usize },
}

/// The head of a frame: what opening the log needs without decoding records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct FrameHead {
    /// The sequence number of the first record (the others follow one by one).
    pub first_seq: u64,
    pub count: u32,
    /// When the group commit wrote it (Unix ms).
    pub written_ms: i64,
}

impl FrameHead {
    pub fn last_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count.max(1)) - 1
    }
}

/// Encodes a frame of `records` into `out` (cleared first, so a writer can
/// reuse one buffer).
pub fn encode_frame(head: &FrameHead, records: &[Record], out: &mut Vec<u8>) {
    out.clear();
    out.push(FRAME_VERSION);
    bincode::encode_into_std_write(head, out, frame_config()).expect("a Vec accepts any write");
    bincode::encode_into_std_write(records, out, frame_config()).expect("a Vec accepts any write");
    let crc = crc32fast::hash(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// The version byte and the payload, once the crc is checked.
fn checked(bytes: &[u8]) -> Result<(u8, &[u8]), CodecError> {
    if bytes.len() < 1 + CRC_LEN {
        return Err(CodecError::TooShort(bytes.len()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - CRC_LEN);
    let stored = u32::from_le_bytes(crc.try_into().expect("split at CRC_LEN"));
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(CodecError::Crc { stored, computed });
    }
    Ok((body[0], &body[1..]))
}

/// The payload of a frame after its crc and version are checked.
fn frame_body(bytes: &[u8]) -> Result<&[u8], CodecError> {
    match checked(bytes)? {
        (FRAME_VERSION, body) => Ok(body),
        (other, _) => Err(CodecError::Version(other)),
    }
}

/// A frame's head, its crc checked (the records are not decoded).
pub fn decode_frame_head(bytes: &[u8]) -> Result<FrameHead, CodecError> {
    let body = frame_body(bytes)?;
    let (head, _): (FrameHead, usize) = bincode::decode_from_slice(body, frame_config())
        .map_err(|e| CodecError::Payload(e.to_string()))?;
    Ok(head)
}

/// A whole frame.
pub fn decode_frame(bytes: &[u8]) -> Result<(FrameHead, Vec<Record>), CodecError> {
    let body = frame_body(bytes)?;
    let (head, used): (FrameHead, usize) = bincode::decode_from_slice(body, frame_config())
        .map_err(|e| CodecError::Payload(e.to_string()))?;
    let records: Vec<Record> = payload_with(&body[used..], frame_config())?;
    if records.len() != head.count as usize || records.is_empty() {
        return Err(CodecError::Count {
            said: head.count,
            held: records.len(),
        });
    }
    Ok((head, records))
}

/// An update as format 1 stored it (no `creates_row`).
#[derive(Encode, Decode)]
struct UpdateV1 {
    user_id: String,
    goal_id: String,
    challenge_id: String,
    namespace: String,
    target: i32,
    event_time_ms: i64,
    event_id: String,
    op: Op,
}

impl From<UpdateV1> for Update {
    fn from(v1: UpdateV1) -> Update {
        Update {
            user_id: v1.user_id,
            goal_id: v1.goal_id,
            challenge_id: v1.challenge_id,
            namespace: v1.namespace,
            target: v1.target,
            creates_row: true,
            event_time_ms: v1.event_time_ms,
            event_id: v1.event_id,
            op: v1.op,
        }
    }
}

pub fn encode(record: &Record) -> Vec<u8> {
    framed(FORMAT_VERSION, record)
}

/// A format-1 record, as builds before format 2 wrote it (for upgrade tests).
pub fn encode_v1(update: &Update) -> Vec<u8> {
    let v1 = UpdateV1 {
        user_id: update.user_id.clone(),
        goal_id: update.goal_id.clone(),
        challenge_id: update.challenge_id.clone(),
        namespace: update.namespace.clone(),
        target: update.target,
        event_time_ms: update.event_time_ms,
        event_id: update.event_id.clone(),
        op: update.op.clone(),
    };
    framed(1, &v1)
}

fn framed(version: u8, payload: &impl Encode) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(version);
    bincode::encode_into_std_write(payload, &mut out, bincode_config())
        .expect("a validated record fits MAX_RECORD_BYTES");
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

pub fn decode(bytes: &[u8]) -> Result<Record, CodecError> {
    match checked(bytes)? {
        (1, body) => payload::<UpdateV1>(body).map(|v1| Record::Update(v1.into())),
        (FORMAT_VERSION, body) => payload::<Record>(body),
        (other, _) => Err(CodecError::Version(other)),
    }
}

fn payload<T: Decode<()>>(body: &[u8]) -> Result<T, CodecError> {
    payload_with(body, bincode_config())
}

fn payload_with<T: Decode<()>, C: bincode::config::Config>(
    body: &[u8],
    config: C,
) -> Result<T, CodecError> {
    let (value, used) =
        bincode::decode_from_slice(body, config).map_err(|e| CodecError::Payload(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Deletion;

    fn sample() -> Update {
        Update {
            user_id: "user-1".into(),
            goal_id: "goal-1".into(),
            challenge_id: "ch".into(),
            namespace: "ns".into(),
            target: 10,
            creates_row: false,
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
            let record = Record::Update(Update { op, ..sample() });
            assert_eq!(decode(&encode(&record)).unwrap(), record);
        }
        let deletion = Record::Delete(Deletion {
            user_id: "u".into(),
            namespace: "ns".into(),
            event_time_ms: 7,
            event_id: "gdpr-1".into(),
        });
        assert_eq!(decode(&encode(&deletion)).unwrap(), deletion);
    }

    fn frame_of(records: &[Record]) -> Vec<u8> {
        let head = FrameHead {
            first_seq: 41,
            count: records.len() as u32,
            written_ms: 1_767_225_600_000,
        };
        let mut out = vec![9, 9, 9]; // reused buffers are cleared
        encode_frame(&head, records, &mut out);
        out
    }

    #[test]
    fn frames_round_trip_and_their_head_reads_alone() {
        let records = vec![
            Record::Update(sample()),
            Record::Delete(Deletion {
                user_id: "u".into(),
                namespace: "ns".into(),
                event_time_ms: 7,
                event_id: "gdpr".into(),
            }),
        ];
        let bytes = frame_of(&records);
        assert_eq!(bytes[0], FRAME_VERSION);
        let (head, back) = decode_frame(&bytes).unwrap();
        assert_eq!((head.first_seq, head.count, head.last_seq()), (41, 2, 42));
        assert_eq!(back, records);
        assert_eq!(decode_frame_head(&bytes).unwrap(), head);
    }

    #[test]
    fn a_damaged_or_short_frame_is_detected() {
        let good = frame_of(&[Record::Update(sample())]);
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(
                decode_frame(&bad).is_err(),
                "flip at byte {i} went unnoticed"
            );
            assert!(
                decode_frame_head(&bad).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
        for len in 0..good.len() {
            assert!(decode_frame(&good[..len]).is_err());
        }
        // A record is not a frame and a frame is not a record.
        assert!(decode_frame(&encode(&Record::Update(sample()))).is_err());
        assert!(decode(&good).is_err());
    }

    #[test]
    fn a_format_1_record_reads_as_an_update_that_may_create_its_row() {
        let update = sample();
        let old = encode_v1(&update);
        assert_eq!(old[0], 1);
        assert_eq!(
            decode(&old).unwrap(),
            Record::Update(Update {
                creates_row: true,
                ..update
            })
        );
    }

    #[test]
    fn a_flipped_bit_anywhere_is_detected() {
        let good = encode(&Record::Update(sample()));
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad).is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn truncated_records_and_other_versions_are_rejected() {
        let good = encode(&Record::Update(sample()));
        for len in 0..good.len() {
            assert!(decode(&good[..len]).is_err());
        }
        for version in [0, 3, 255] {
            let mut other = good.clone();
            other[0] = version;
            let n = other.len() - CRC_LEN;
            let crc = crc32fast::hash(&other[..n]);
            other[n..].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(decode(&other), Err(CodecError::Version(version)));
        }
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
        assert!(encode(&Record::Update(big)).len() < MAX_RECORD_BYTES);
    }
}
