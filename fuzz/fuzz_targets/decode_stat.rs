//! Arbitrary bytes as a statItemUpdated OnMessage body: decoding and conversion
//! never panic; a rejection is INVALID_ARGUMENT; an accepted event is valid
//! and its WAL records round-trip.
#![no_main]

use challenge_event_handler::event;
use challenge_event_handler::grpc::codec;
use challenge_event_handler::proto::social::statistic::v1::StatItemUpdated;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    match codec::decode_request::<StatItemUpdated>(data) {
        Ok(msg) => common::check(event::from_stat(&msg, common::NOW)),
        Err(status) => common::check_malformed(&status),
    }
});
