//! Arbitrary bytes as a gdprRequestDataDeletionResponse OnMessage body:
//! decoding and conversion never panic; a rejection is INVALID_ARGUMENT; an
//! accepted deletion names a valid user and is one WAL record that round-trips.
#![no_main]

use challenge_event_handler::proto::iam::account::v1::GdprRequestDataDeletionResponse;
use challenge_event_handler::event;
use challenge_event_handler::grpc::codec;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    match codec::decode_request::<GdprRequestDataDeletionResponse>(data) {
        Ok(msg) => common::check(event::from_gdpr_deletion(&msg, common::NOW)),
        Err(status) => common::check_malformed(&status),
    }
});
