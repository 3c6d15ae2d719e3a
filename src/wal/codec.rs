//! WAL codec: `[format version: u8][bincode 2 payload][crc32 of both: u32 LE]`.
//!
//! Format 4 (written by this build) is a *frame*: every record of one group
//! commit, `[FrameHead][records]`, stored under one sled key — one insert
//! per group commit instead of one per record — where an update names only
//! what differs from the update before it ([`Packed`]: the updates one event
//! makes of its goals share the player, namespace, event id and time, most
//! of each record's bytes). Format 3 (the same frame, every record whole),
//! format 2 (one [`Record`] per key: an update or a GDPR deletion) and
//! format 1 (a bare update, from before deletions and `defaultAssigned`
//! existed; read as an update that may create its row, what every update
//! did then) are still read, so a WAL left by an older build replays after
//! an upgrade.
//!
//! Decoding never panics and never allocates more than [`MAX_FRAME_BYTES`]
//! (a record: [`MAX_RECORD_BYTES`]): any byte string either decodes to what
//! was encoded or is rejected with a [`CodecError`].

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use bincode::error::{DecodeError, EncodeError};
use bincode::{Decode, Encode};

use crate::rules::{Deletion, Op, Record, Update};

/// The format of a single record (what older builds wrote under `w` keys).
pub const FORMAT_VERSION: u8 = 2;
/// The oldest record format this build reads.
pub const OLDEST_FORMAT_VERSION: u8 = 1;
/// The frame format this build writes.
pub const FRAME_VERSION: u8 = 4;
/// The frame format of older builds (records whole), still read.
pub const WHOLE_FRAME_VERSION: u8 = 3;
/// An upper bound on one encoded frame.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// The most records the writer puts in one frame (a group commit holding
/// more is written as several frames, in the same sled batch and fsync).
/// Decoding a frame claims `size_of::<Record>()` (152 bytes) a record up
/// front and each string's bytes as it reads them, all within
/// [`MAX_FRAME_BYTES`]: at the longest ids (100 characters, 256 for an
/// event id, 4 bytes each) with no field shared with the record before, a
/// record claims under 2.8 KB, so a frame of this many stays under 46 MB.
/// (Without the bound, a group commit of 4,096 events that each move over
/// ~110 goals wrote a frame that could never be read back.)
pub const MAX_FRAME_RECORDS: usize = 16_384;
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
    #[error("unknown record format version {0} (this build reads records of versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION} and frames of versions {WHOLE_FRAME_VERSION} to {FRAME_VERSION}; a WAL a newer build wrote is emptied with that build: deploy/README.md, \"Upgrading and rolling back\")")]
    Version(u8),
    #[error("payload does not decode: {0}")]
    Payload(String),
    #[error("{0} trailing bytes after the payload")]
    Trailing(usize),
    #[error("the frame says it holds {said} records but holds {held}")]
    Count { said: u32, held: usize },
}

/// [`Packed`]: the record is a GDPR deletion (stored whole).
const DELETION: u8 = 0x80;
/// [`Packed`]: the update's field is the update's before it.
const SAME_USER: u8 = 0x01;
const SAME_NAMESPACE: u8 = 0x02;
const SAME_CHALLENGE: u8 = 0x04;
/// The event id and the event time.
const SAME_EVENT: u8 = 0x08;

/// A frame's records as format 4 stores them: their number, then for each a
/// head byte and its fields. A deletion: [`DELETION`] and the [`Deletion`]
/// whole. An update: which of its fields are those of the update before it
/// (`SAME_*`; never for the first record or the one after a deletion), then
/// the others in [`Update`]'s order. One event's updates of several goals
/// are written one after the other (`GoalIndex::records`), so all but the
/// first cost their goal id, target and step.
struct Packed<'r>(&'r [Record]);

impl Encode for Packed<'_> {
    fn encode<E: bincode::enc::Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        (self.0.len() as u64).encode(e)?;
        let mut before: Option<&Update> = None;
        for record in self.0 {
            let u = match record {
                Record::Delete(d) => {
                    DELETION.encode(e)?;
                    d.encode(e)?;
                    before = None;
                    continue;
                }
                Record::Update(u) => u,
            };
            let mut head = 0;
            if let Some(b) = before {
                for (same, flag) in [
                    (b.user_id == u.user_id, SAME_USER),
                    (b.namespace == u.namespace, SAME_NAMESPACE),
                    (b.challenge_id == u.challenge_id, SAME_CHALLENGE),
                    (
                        b.event_id == u.event_id && b.event_time_ms == u.event_time_ms,
                        SAME_EVENT,
                    ),
                ] {
                    if same {
                        head |= flag;
                    }
                }
            }
            head.encode(e)?;
            if head & SAME_USER == 0 {
                u.user_id.encode(e)?;
            }
            u.goal_id.encode(e)?;
            if head & SAME_CHALLENGE == 0 {
                u.challenge_id.encode(e)?;
            }
            if head & SAME_NAMESPACE == 0 {
                u.namespace.encode(e)?;
            }
            u.target.encode(e)?;
            u.creates_row.encode(e)?;
            if head & SAME_EVENT == 0 {
                u.event_time_ms.encode(e)?;
                u.event_id.encode(e)?;
            }
            u.op.encode(e)?;
            before = Some(u);
        }
        Ok(())
    }
}

/// What [`Packed`] encoded.
struct Unpacked(Vec<Record>);

impl<Ctx> Decode<Ctx> for Unpacked {
    fn decode<D: bincode::de::Decoder<Context = Ctx>>(d: &mut D) -> Result<Self, DecodeError> {
        let len = usize::try_from(u64::decode(d)?)
            .map_err(|_| DecodeError::Other("a frame's record count does not fit in memory"))?;
        // As bincode's own Vec does: the length counts against the limit
        // before anything is reserved.
        d.claim_container_read::<Record>(len)?;
        let mut records: Vec<Record> = Vec::with_capacity(len);
        for _ in 0..len {
            let head = u8::decode(d)?;
            if head == DELETION {
                records.push(Record::Delete(Deletion::decode(d)?));
                continue;
            }
            let before = match records.last() {
                Some(Record::Update(b)) => Some(b),
                _ => None,
            };
            if head & !(SAME_USER | SAME_NAMESPACE | SAME_CHALLENGE | SAME_EVENT) != 0
                || (head != 0 && before.is_none())
            {
                return Err(DecodeError::Other(
                    "a record's head names no kind of record, or fields of a record before the first",
                ));
            }
            let from_before = |flag: u8, field: fn(&Update) -> &String| {
                (head & flag != 0).then(|| before.map(|b| field(b).clone()))
            };
            let user_id = from_before(SAME_USER, |b| &b.user_id).flatten();
            let challenge_id = from_before(SAME_CHALLENGE, |b| &b.challenge_id).flatten();
            let namespace = from_before(SAME_NAMESPACE, |b| &b.namespace).flatten();
            let event = (head & SAME_EVENT != 0)
                .then(|| before.map(|b| (b.event_time_ms, b.event_id.clone())))
                .flatten();
            let user_id = match user_id {
                Some(same) => same,
                None => String::decode(d)?,
            };
            let goal_id = String::decode(d)?;
            let challenge_id = match challenge_id {
                Some(same) => same,
                None => String::decode(d)?,
            };
            let namespace = match namespace {
                Some(same) => same,
                None => String::decode(d)?,
            };
            let target = i32::decode(d)?;
            let creates_row = bool::decode(d)?;
            let (event_time_ms, event_id) = match event {
                Some(same) => same,
                None => (i64::decode(d)?, String::decode(d)?),
            };
            let op = Op::decode(d)?;
            records.push(Record::Update(Update {
                user_id,
                goal_id,
                challenge_id,
                namespace,
                target,
                creates_row,
                event_time_ms,
                event_id,
                op,
            }));
        }
        Ok(Unpacked(records))
    }
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
    bincode::encode_into_std_write(Packed(records), out, frame_config())
        .expect("a Vec accepts any write");
    let crc = crc32fast::hash(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// A frame in format 3 (every record whole), as builds before format 4
/// wrote it (for upgrade tests).
pub fn encode_whole_frame(head: &FrameHead, records: &[Record]) -> Vec<u8> {
    let mut out = vec![WHOLE_FRAME_VERSION];
    bincode::encode_into_std_write(head, &mut out, frame_config())
        .expect("a Vec accepts any write");
    bincode::encode_into_std_write(records, &mut out, frame_config())
        .expect("a Vec accepts any write");
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
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

/// The payload of a frame after its crc and version are checked, and
/// whether its records are packed (format 4) or whole (format 3).
fn frame_body(bytes: &[u8]) -> Result<(&[u8], bool), CodecError> {
    match checked(bytes)? {
        (FRAME_VERSION, body) => Ok((body, true)),
        (WHOLE_FRAME_VERSION, body) => Ok((body, false)),
        (other, _) => Err(CodecError::Version(other)),
    }
}

/// A frame's head, its crc checked (the records are not decoded).
pub fn decode_frame_head(bytes: &[u8]) -> Result<FrameHead, CodecError> {
    let (body, _) = frame_body(bytes)?;
    let (head, _): (FrameHead, usize) = bincode::decode_from_slice(body, frame_config())
        .map_err(|e| CodecError::Payload(e.to_string()))?;
    Ok(head)
}

/// A whole frame.
pub fn decode_frame(bytes: &[u8]) -> Result<(FrameHead, Vec<Record>), CodecError> {
    let (body, packed) = frame_body(bytes)?;
    let (head, used): (FrameHead, usize) = bincode::decode_from_slice(body, frame_config())
        .map_err(|e| CodecError::Payload(e.to_string()))?;
    let records: Vec<Record> = if packed {
        payload_with::<Unpacked, _>(&body[used..], frame_config())?.0
    } else {
        payload_with(&body[used..], frame_config())?
    };
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
    fn the_largest_frame_the_writer_writes_decodes_at_the_longest_ids() {
        // Every string at its longest, in 4-byte characters, and none the
        // same as the record before's (nothing is packed away).
        let long = |c: char, n: usize| c.to_string().repeat(n);
        let records: Vec<Record> = (0..MAX_FRAME_RECORDS)
            .map(|i| {
                let c = if i % 2 == 0 { '\u{1D11E}' } else { '\u{1D122}' };
                Record::Update(Update {
                    user_id: long(c, crate::event::MAX_ID_LEN),
                    goal_id: long(c, crate::event::MAX_ID_LEN),
                    challenge_id: long(c, crate::event::MAX_ID_LEN),
                    namespace: long(c, crate::event::MAX_ID_LEN),
                    event_id: long(c, crate::event::MAX_EVENT_ID_LEN),
                    event_time_ms: i as i64,
                    ..sample()
                })
            })
            .collect();
        let bytes = frame_of(&records);
        let (head, back) = decode_frame(&bytes).expect("the largest frame decodes");
        assert_eq!(
            (head.count as usize, back.len()),
            (records.len(), records.len())
        );
        assert!(back == records);
    }

    /// One event's updates of three goals, a deletion, then another event.
    fn event_records() -> Vec<Record> {
        let goal = |goal_id: &str, challenge_id: &str| {
            Record::Update(Update {
                user_id: "player-7".into(),
                goal_id: goal_id.into(),
                challenge_id: challenge_id.into(),
                namespace: "mygame".into(),
                event_id: "5f0c2d1e9a8b4c7d8e6f5a4b3c2d1e0f".into(),
                event_time_ms: 1_767_225_600_123,
                ..sample()
            })
        };
        vec![
            goal("daily-kills", "daily"),
            goal("weekly-kills", "weekly"),
            goal("kills-100", "weekly"),
            Record::Delete(Deletion {
                user_id: "player-7".into(),
                namespace: "mygame".into(),
                event_time_ms: 7,
                event_id: "gdpr".into(),
            }),
            goal("daily-kills", "daily"),
            Record::Update(Update {
                event_id: "another".into(),
                ..sample()
            }),
            Record::Update(Update {
                event_time_ms: 8,
                ..sample()
            }),
        ]
    }

    #[test]
    fn a_frame_stores_what_updates_share_once_and_reads_back_whole() {
        let records = event_records();
        let packed = frame_of(&records);
        assert_eq!(decode_frame(&packed).unwrap().1, records);
        let head = decode_frame_head(&packed).unwrap();
        let whole = encode_whole_frame(&head, &records);
        assert!(
            packed.len() * 10 < whole.len() * 7,
            "format 4 took {} bytes, format 3 {}",
            packed.len(),
            whole.len()
        );
    }

    #[test]
    fn a_format_3_frame_still_reads() {
        let records = event_records();
        let head = FrameHead {
            first_seq: 3,
            count: records.len() as u32,
            written_ms: 9,
        };
        let old = encode_whole_frame(&head, &records);
        assert_eq!(old[0], WHOLE_FRAME_VERSION);
        assert_eq!(decode_frame(&old).unwrap(), (head, records));
        assert_eq!(decode_frame_head(&old).unwrap(), head);
    }

    /// A format-4 frame of `head`, `count` and the record bytes `body`.
    fn raw_frame(count: u64, body: &[u8]) -> Vec<u8> {
        let head = FrameHead {
            first_seq: 1,
            count: count as u32,
            written_ms: 0,
        };
        let mut out = vec![FRAME_VERSION];
        bincode::encode_into_std_write(head, &mut out, frame_config()).unwrap();
        bincode::encode_into_std_write(count, &mut out, frame_config()).unwrap();
        out.extend_from_slice(body);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn a_packed_record_that_names_a_record_before_the_first_or_no_kind_is_rejected() {
        let mut whole = Vec::new();
        encode_frame(
            &FrameHead {
                first_seq: 1,
                count: 1,
                written_ms: 0,
            },
            &[Record::Update(sample())],
            &mut whole,
        );
        // The record's head byte follows the version, the frame head (3
        // bytes here) and the count.
        assert_eq!(
            decode_frame(&whole).unwrap().1,
            vec![Record::Update(sample())]
        );
        let body = &whole[1 + 3 + 1..whole.len() - CRC_LEN];
        assert_eq!(body[0], 0, "the first record is whole");
        for head in [SAME_USER, SAME_EVENT, 0x10, 0x81, 0xff] {
            let mut bad = body.to_vec();
            bad[0] = head;
            assert!(
                matches!(
                    decode_frame(&raw_frame(1, &bad)),
                    Err(CodecError::Payload(_))
                ),
                "head {head:#04x} was accepted"
            );
        }
        assert!(decode_frame(&raw_frame(1, body)).is_ok());
        // A count far beyond the bytes is refused before anything is reserved.
        assert!(decode_frame(&raw_frame(u64::MAX >> 8, body)).is_err());
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
