//! The whole HTTP ingest path short of sockets and shards, as the edge and the
//! shard run it (net/src/http/mod.rs `prepare` with net/src/admit.rs, net/src/embedded/pump.rs `stage`): decode a
//! batch or single body, stamp each event (session, correlation id, receive
//! time, batch id), validate it, and frame what is stored as log records:
//! events, or dead letters with their raw bytes. Every record must read back
//! as what was staged, and every stored event must decode again with a default
//! prost decoder (what any subscriber will do).
#![no_main]

use jimbus_core::ingest::{decode_body, Endpoint};
use jimbus_core::record::{self, Record, RecordKind};
use jimbus_core::topic;
use jimbus_proto::bus;
use jimbus_proto::events as pb;
use jimbus_proto::validate::Validate;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn stamp(event: &mut pb::Event, envelope: &jimbus_core::ingest::Envelope) {
    if event.session_id.is_empty() {
        event.session_id = if envelope.session_id.is_empty() {
            let source = if event.source.is_empty() { &envelope.source } else { &event.source };
            topic::derived_session(std::net::IpAddr::from([127, 0, 0, 1]), source)
        } else {
            envelope.session_id.clone()
        };
    }
    event.correlation_id = "fuzz-request".into();
    event.sequence = 1;
    let timing = event.timing.get_or_insert_with(Default::default);
    timing.received_at = Some(prost_types::Timestamp { seconds: 1_764_500_000, nanos: 0 });
    if !envelope.batch_id.is_empty() {
        event.metadata.insert("batch_id".into(), envelope.batch_id.clone());
    }
}

/// Frames `message` as the log does, reads the frame back and checks it.
fn stored(kind: RecordKind, topic: &str, message: &[u8], offset: u64) -> Vec<u8> {
    let mut frame = Vec::new();
    record::encode(&Record { offset, time_us: 1, kind, topic, message }, &mut frame);
    let rec = record::decode(&frame).expect("a framed record reads back");
    assert_eq!((rec.offset, rec.kind, rec.topic, rec.message), (offset, kind, topic, message));
    rec.message.to_vec()
}

fn dead_letter(reason: String, raw: &[u8], offset: u64) {
    let letter = bus::DeadLetter {
        reason,
        raw: bytes::Bytes::copy_from_slice(raw),
        origin: "127.0.0.1".into(),
        ..Default::default()
    };
    let message = stored(RecordKind::DeadLetter, topic::DEADLETTER, &letter.encode_to_vec(), offset);
    assert_eq!(bus::DeadLetter::decode(message.as_slice()).expect("a dead letter decodes"), letter);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    let endpoint = if which & 1 == 0 { Endpoint::Batch } else { Endpoint::Single };
    let decoded = match decode_body(body, endpoint) {
        Ok(decoded) => decoded,
        Err(e) => return dead_letter(e.to_string(), body, 0),
    };
    let mut offset = 0;
    for rejected in &decoded.rejected {
        offset += 1;
        dead_letter(rejected.error.to_string(), &body[rejected.raw.clone()], offset);
    }
    for decoded_event in decoded.events {
        offset += 1;
        let mut event = *decoded_event.event;
        stamp(&mut event, &decoded.envelope);
        if let Err(violations) = event.validate() {
            dead_letter(violations.to_string(), &body[decoded_event.raw.clone()], offset);
            continue;
        }
        let topic = topic::raw_topic(&event.session_id, &event.event_type);
        let encoded = event.encode_to_vec();
        let message = stored(RecordKind::Event, &topic, &encoded, offset);
        let back = match pb::Event::decode(message.as_slice()) {
            Ok(back) => back,
            Err(e) => panic!("an accepted event cannot be decoded by a default prost decoder: {e}"),
        };
        // Compared as encodings: NaN is not equal to itself.
        assert_eq!(back.encode_to_vec().len(), encoded.len());
    }
});
