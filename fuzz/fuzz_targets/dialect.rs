//! The field mod's JSON dialect, as a request body on both endpoints and as a
//! bare value: no input may panic, whatever is decoded must point inside
//! the body it came from, no event may encode to more than the bound
//! admission trusts instead of computing its size, and the one-pass encoder
//! the log uses (`jimbus_proto::wire`) must write prost's bytes for it.
#![no_main]

use jimbus_core::adapt::encoded_len_bound;
use jimbus_core::ingest::{decode_body, Endpoint};
use jimbus_core::json::Reader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    for endpoint in [Endpoint::Single, Endpoint::Batch] {
        match decode_body(body, endpoint) {
            Ok(decoded) => {
                for event in &decoded.events {
                    assert!(event.raw.start <= event.raw.end && event.raw.end <= body.len(), "{:?}", event.raw);
                    let size = prost::Message::encoded_len(&*event.event);
                    let bound = encoded_len_bound(event.raw.len(), 0);
                    assert!(size <= bound, "{size} bytes encoded from {} of JSON", event.raw.len());
                    let mut written = Vec::new();
                    jimbus_proto::wire::Write::write(&*event.event, &mut written);
                    assert!(written == prost::Message::encode_to_vec(&*event.event), "wire differs from prost");
                }
                for rejected in &decoded.rejected {
                    assert!(rejected.raw.start <= rejected.raw.end && rejected.raw.end <= body.len());
                }
                if endpoint == Endpoint::Single {
                    assert_eq!(decoded.events.len() + decoded.rejected.len(), 1);
                }
            }
            Err(e) => {
                if let Some(offset) = e.offset() {
                    assert!(offset <= body.len(), "error offset {offset} past a {}-byte body", body.len());
                }
            }
        }
    }
    // The generic reader on its own: a value (building a protobuf Value), and a skip.
    let mut reader = Reader::new(body);
    if reader.value().is_ok() {
        let _ = reader.finish();
    }
    let mut reader = Reader::new(body);
    if reader.skip().is_ok() {
        assert!(reader.offset() <= body.len());
    }
});
