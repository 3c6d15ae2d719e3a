//! Arbitrary bytes as a WAL record and as a WAL frame: decoding never panics
//! and never allocates without bound; whatever decodes encodes to bytes that
//! decode to the same record (update or deletion) or frame.
#![no_main]

use challenge_event_handler::wal::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = codec::decode(data) {
        let again = codec::encode(&record);
        assert_eq!(codec::decode(&again).unwrap(), record);
    }
    if let Ok((head, records)) = codec::decode_frame(data) {
        assert_eq!(records.len(), head.count as usize);
        assert_eq!(codec::decode_frame_head(data).unwrap(), head);
        let mut again = Vec::new();
        codec::encode_frame(&head, &records, &mut again);
        assert_eq!(codec::decode_frame(&again).unwrap(), (head, records));
    }
});
