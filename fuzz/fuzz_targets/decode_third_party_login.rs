//! Arbitrary bytes as a userThirdPartyLoggedIn OnMessage body: decoding and conversion
//! never panic; a rejection is INVALID_ARGUMENT; an accepted event is valid
//! and its WAL records round-trip.
#![no_main]

use challenge_event_handler::event;
use challenge_event_handler::grpc::codec;
use challenge_event_handler::proto::iam::account::v1::UserThirdPartyLoggedIn;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    match codec::decode_request::<UserThirdPartyLoggedIn>(data) {
        Ok(msg) => common::check(event::from_third_party_login(&msg, common::NOW)),
        Err(status) => common::check_malformed(&status),
    }
});
