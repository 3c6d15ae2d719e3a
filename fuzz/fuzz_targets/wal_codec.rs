//! Arbitrary bytes as a WAL record: decoding never panics; whatever decodes
//! encodes to a record that decodes to the same update.
#![no_main]

use challenge_event_handler::wal::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(update) = codec::decode(data) {
        let again = codec::encode(&update);
        assert_eq!(codec::decode(&again).unwrap(), update);
    }
});
