//! Structured fuzzing of the OnMessage path: `arbitrary` events of all four
//! types with extreme values — empty, maximal, over-long and huge strings,
//! NaN/±inf/negative/huge stat values, odd and far-future timestamps, missing
//! payloads, other namespaces — encoded, decoded by the server's codec and
//! converted. Never a panic; the body always decodes; a rejection is
//! INVALID_ARGUMENT naming a field; an accepted event is valid, takes its time
//! from a usable timestamp (else arrival time) and its WAL records round-trip.
#![no_main]

use challenge_event_handler::grpc::codec;
use challenge_event_handler::event::{self, TimeSource};
use challenge_event_handler::proto::iam::account::v1::{
    AnonymousSchema19, AnonymousSchema21, DeletionGdpr, GdprRequestDataDeletionResponse,
    GdprRequestDataDeletionResponsePayloadData, UserAccount, UserLoggedIn, UserThirdPartyLoggedIn,
};
use challenge_event_handler::proto::social::statistic::v1::{StatItem, StatItemUpdated};
use chrono::{DateTime, FixedOffset};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use prost::Message;

#[path = "common.rs"]
mod common;

#[derive(Arbitrary, Debug)]
enum Text {
    Empty,
    Any(String),
    /// Exactly `n` characters (a multi-byte one, to catch byte/char mix-ups).
    Exactly(u8, bool),
    /// Up to 64 KiB.
    Huge(u16),
}

impl Text {
    fn make(&self) -> String {
        match self {
            Text::Empty => String::new(),
            Text::Any(s) => s.clone(),
            Text::Exactly(n, wide) => (if *wide { "é" } else { "x" }).repeat(usize::from(*n)),
            Text::Huge(n) => "u".repeat(usize::from(*n)),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Number {
    Any(f64),
    Nan,
    Inf,
    NegInf,
    NegZero,
    Max,
    Min,
    Tiny,
    Int(i64),
}

impl Number {
    fn make(&self) -> f64 {
        match self {
            Number::Any(v) => *v,
            Number::Nan => f64::NAN,
            Number::Inf => f64::INFINITY,
            Number::NegInf => f64::NEG_INFINITY,
            Number::NegZero => -0.0,
            Number::Max => f64::MAX,
            Number::Min => f64::MIN,
            Number::Tiny => f64::MIN_POSITIVE,
            Number::Int(i) => *i as f64,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Timestamp {
    None,
    /// A real instant in years 1..=9999 (what RFC 3339 can write), in some UTC offset.
    At {
        secs: i64,
        nanos: u32,
        offset_min: i16,
    },
    Garbage(String),
}

impl Timestamp {
    /// The text, and the Unix ms it stands for when it is a real instant.
    fn make(&self) -> (String, Option<i64>) {
        match self {
            Timestamp::None => (String::new(), None),
            Timestamp::At {
                secs,
                nanos,
                offset_min,
            } => {
                let offset = FixedOffset::east_opt(i32::from(*offset_min % 1440) * 60).unwrap();
                const FIRST: i64 = -62_135_596_800; // 0001-01-01T00:00:00Z
                const LAST: i64 = 253_402_214_400; // 9999-12-30T00:00:00Z
                let secs = FIRST + secs.rem_euclid(LAST - FIRST);
                match DateTime::from_timestamp(secs, nanos % 1_000_000_000) {
                    Some(t) => {
                        let t = t.with_timezone(&offset);
                        (t.to_rfc3339(), Some(t.timestamp_millis()))
                    }
                    None => (String::new(), None),
                }
            }
            Timestamp::Garbage(s) => (s.clone(), None),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Kind {
    Login,
    ThirdPartyLogin,
    Stat,
    GdprDeletion,
}

#[derive(Arbitrary, Debug)]
struct Fields {
    kind: Kind,
    id: Text,
    namespace: Text,
    user_id: Text,
    payload: bool,
    account: bool,
    payload_user: Text,
    stat_code: Text,
    latest_value: Number,
    inc: Number,
    timestamp: Timestamp,
}

fn account(f: &Fields) -> Option<UserAccount> {
    f.account.then(|| UserAccount {
        user_id: f.payload_user.make(),
        ..Default::default()
    })
}

/// Encodes `msg`, decodes the bytes as the server does, and converts it.
fn through_the_wire<M: Message + Default>(
    msg: &M,
    convert: impl Fn(&M) -> Result<(event::Event, TimeSource), event::EventError>,
) -> Result<(event::Event, TimeSource), event::EventError> {
    let bytes = msg.encode_to_vec();
    let decoded = codec::decode_request::<M>(&bytes).expect("a valid message decodes");
    // Bytes, not values: NaN != NaN.
    assert!(
        decoded.encode_to_vec() == bytes,
        "the message changed on the wire"
    );
    convert(&decoded)
}

/// An AGS event of type `$msg` around `$payload`, with the fuzzed envelope.
macro_rules! event_with {
    ($msg:ident, $payload:expr, $env:expr) => {{
        let (id, namespace, user_id, timestamp) = $env;
        $msg {
            payload: $payload,
            id,
            namespace,
            user_id,
            timestamp,
            ..Default::default()
        }
    }};
}

fuzz_target!(|f: Fields| {
    let (timestamp, instant) = f.timestamp.make();
    let env = (f.id.make(), f.namespace.make(), f.user_id.make(), timestamp);
    let result = match f.kind {
        Kind::Login => {
            let payload = f.payload.then(|| AnonymousSchema19 {
                user_account: account(&f),
                ..Default::default()
            });
            let msg = event_with!(UserLoggedIn, payload, env);
            through_the_wire(&msg, |m| event::from_login(m, common::NOW))
        }
        Kind::ThirdPartyLogin => {
            let payload = f.payload.then(|| AnonymousSchema21 {
                user_account: account(&f),
                ..Default::default()
            });
            let msg = event_with!(UserThirdPartyLoggedIn, payload, env);
            through_the_wire(&msg, |m| event::from_third_party_login(m, common::NOW))
        }
        Kind::Stat => {
            let payload = f.payload.then(|| StatItem {
                user_id: f.payload_user.make(),
                stat_code: f.stat_code.make(),
                latest_value: f.latest_value.make(),
                inc: f.inc.make(),
                ..Default::default()
            });
            let msg = event_with!(StatItemUpdated, payload, env);
            through_the_wire(&msg, |m| event::from_stat(m, common::NOW))
        }
        Kind::GdprDeletion => {
            let payload = f.payload.then(|| GdprRequestDataDeletionResponsePayloadData {
                deletion_gdpr: f.account.then(|| DeletionGdpr {
                    user_id: f.payload_user.make(),
                    namespace: f.stat_code.make(),
                    ..Default::default()
                }),
            });
            let msg = event_with!(GdprRequestDataDeletionResponse, payload, env);
            through_the_wire(&msg, |m| event::from_gdpr_deletion(m, common::NOW))
        }
    };
    match &result {
        Err(e) => {
            let text = e.to_string();
            assert!(
                ["payload", "user_id", "id", "namespace"]
                    .iter()
                    .any(|f| text.contains(f)),
                "a rejection that names no field: {text}"
            );
        }
        Ok((event, source)) => match (instant, source) {
            (Some(ms), TimeSource::Timestamp) => {
                assert_eq!(event.time_ms, ms);
                assert!(ms <= common::NOW + event::MAX_CLOCK_SKEW_MS);
            }
            (Some(ms), _) => {
                assert!(
                    ms > common::NOW + event::MAX_CLOCK_SKEW_MS,
                    "a usable timestamp was not used"
                );
                assert_eq!(event.time_ms, common::NOW);
            }
            (None, TimeSource::Timestamp) => {
                // Garbage that chrono still reads as RFC 3339 is fine; it must be in range.
                assert!(event.time_ms <= common::NOW + event::MAX_CLOCK_SKEW_MS);
            }
            (None, _) => assert_eq!(event.time_ms, common::NOW),
        },
    }
    common::check(result);
});
