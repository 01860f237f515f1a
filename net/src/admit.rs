//! What both ingest edges do to an event before it goes to the bus: the
//! request's correlation id and the server's receive time. HTTP and gRPC call
//! the same functions, so an event is stamped the same way whichever edge took
//! it. This module must never decide what is valid or where an event is stored.
//!
//! The rule: a request's id is the `x-request-id` header (HTTP) or metadata
//! (gRPC) when the client sends a usable one, else a new UUID; it is echoed in
//! the answer, carried by every log line about the request, and becomes the
//! `correlation_id` of every event the request holds, so one id leads from the
//! request to the stored record and to each delivery. A different
//! `correlation_id` the client set on an event itself (possible over gRPC) is
//! kept in the event's metadata as `client_correlation_id`, not lost.

use jimbus_proto::events as pb;

/// The metadata key that keeps a client's own correlation id.
pub const CLIENT_CORRELATION_KEY: &str = "client_correlation_id";

/// Longest client-given request id that is taken as is.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The request's id: the client's, when it sent a non-empty one of at most 128
/// bytes, else a new UUID.
pub fn request_id(given: Option<&str>) -> String {
    given
        .filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN)
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string)
}

/// Stamps an event with its request's id and the time the server received it.
pub fn stamp(event: &mut pb::Event, request_id: &str, received: prost_types::Timestamp) {
    if !event.correlation_id.is_empty() && event.correlation_id != request_id {
        let own = std::mem::take(&mut event.correlation_id);
        event.metadata.insert(CLIENT_CORRELATION_KEY.into(), own);
    }
    event.correlation_id.clear();
    event.correlation_id.push_str(request_id);
    event.timing.get_or_insert_with(Default::default).received_at = Some(received);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds, nanos: 0 }
    }

    #[test]
    fn a_usable_client_id_is_kept_and_anything_else_is_replaced() {
        assert_eq!(request_id(Some("req-7")), "req-7");
        for unusable in [None, Some(""), Some(&*"x".repeat(129))] {
            let id = request_id(unusable);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        }
    }

    #[test]
    fn the_request_id_wins_and_the_clients_own_id_is_kept_aside() {
        let mut event = pb::Event { correlation_id: "mine".into(), ..Default::default() };
        stamp(&mut event, "req-1", at(5));
        assert_eq!(event.correlation_id, "req-1");
        assert_eq!(event.metadata.get(CLIENT_CORRELATION_KEY).map(String::as_str), Some("mine"));
        assert_eq!(event.timing.unwrap().received_at, Some(at(5)));

        let mut same = pb::Event { correlation_id: "req-2".into(), ..Default::default() };
        stamp(&mut same, "req-2", at(1));
        assert!(same.metadata.is_empty(), "nothing to keep aside");

        let mut bare = pb::Event::default();
        stamp(&mut bare, "req-3", at(1));
        assert_eq!((bare.correlation_id.as_str(), bare.metadata.len()), ("req-3", 0));
    }
}
