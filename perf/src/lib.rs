//! Workloads shared by the benchmarks and the load generator: request bodies in
//! the field mod's dialect, shaped like a self-play farm's traffic. This module
//! must never measure anything itself.

/// One event as the field mod encodes it: arbitrary key order, scalar arrays as
/// strings, and (when `quirky`) a bare non-finite score.
pub fn mod_event(i: usize, quirky: bool) -> String {
    let score = if quirky && i % 10 == 9 { "inf".to_string() } else { format!("{}", i * 37) };
    match i % 5 {
        0 => format!(
            r#"{{"event_id":"0b8a3c1e-5f2d-4e7a-9c3b-{i:012}","source":"BalatroMCP","type":"SCORING","version":1,"subtype":"JOKER_TRIGGER","payload":{{"joker":{{"position":2,"name":"Blueprint","id":"j2"}},"score_contribution":{score},"trigger_index":{i}}},"timestamp":{}.5}}"#,
            1000 + i
        ),
        1 => format!(
            r#"{{"payload":{{"mult_before":4,"mult_after":8,"source":"Joker"}},"type":"SCORING","subtype":"MULT_UPDATE","source":"BalatroMCP","version":1,"event_id":"e-{i}","timestamp":1795531353000}}"#
        ),
        2 => format!(
            r#"{{"event_id":"e-{i}","source":"BalatroMCP","type":"GAME_STATE","version":1,"payload":{{"ante":1,"round":{i},"money":4,"chips":{score},"mult":0,"hands_remaining":4,"discards_remaining":3,"game_state":"SELECTING_HAND","jokers":[{{"position":1,"name":"Joker","id":"j1"}}],"hand":{{}}}},"timestamp":1795531353000}}"#
        ),
        3 => format!(
            r#"{{"event_id":"e-{i}","source":"BalatroMCP","type":"SCORE_CHANGED","version":1,"payload":{{"new_chips":{score},"old_mult":0,"new_mult":12,"old_chips":0}},"timestamp":1795531353000}}"#
        ),
        _ => format!(
            r#"{{"event_id":"e-{i}","source":"BalatroMCP","type":"SCORING","version":1,"subtype":"HAND_EVAL_START","payload":{{"cards":["3","4","5","6","7"],"hand_type":"Straight"}},"timestamp":1795531353000}}"#
        ),
    }
}

/// A batch body of `n` events, as `POST {url}/batch` carries it.
pub fn mod_batch(n: usize, first: usize, quirky: bool) -> Vec<u8> {
    let events: Vec<String> = (first..first + n).map(|i| mod_event(i, quirky)).collect();
    format!(
        r#"{{"batch_id":"5d1f7a2e-8b3c-4d9e-a1f0-{first:012}","timestamp":1795531353000,"source":"BalatroMCP","events":[{}]}}"#,
        events.join(",")
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use jimbus_core::ingest::{decode_body, Endpoint};

    #[test]
    fn workloads_decode_completely() {
        for quirky in [false, true] {
            let body = super::mod_batch(50, 0, quirky);
            let decoded = decode_body(&body, Endpoint::Batch).unwrap();
            assert_eq!(decoded.events.len(), 50);
            assert!(decoded.rejected.is_empty());
        }
        assert!(serde_json::from_slice::<serde_json::Value>(&super::mod_batch(50, 0, false)).is_ok());
    }
}
