//! Arbitrary bytes as a WAL record: decoding never panics; whatever decodes
//! encodes to bytes that decode to the same record (update or deletion).
#![no_main]

use challenge_event_handler::wal::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = codec::decode(data) {
        let again = codec::encode(&record);
        assert_eq!(codec::decode(&again).unwrap(), record);
    }
});
