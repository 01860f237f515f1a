//! Workloads shared by the benchmarks and the load generator: request bodies in
//! the field mod's dialect, shaped like a self-play farm's traffic, the ingest
//! path without sockets (`ingest`) and the transport's floor (`floor`). This
//! module must never measure anything itself.

pub mod floor;
pub mod ingest;

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

/// Width of the sequence digits in a load event id.
pub const LOAD_SEQ_DIGITS: usize = 12;
/// Width of the patched `timestamp` slot of a load event (a number padded with spaces).
pub const LOAD_TIME_WIDTH: usize = 16;

/// The session id a load session sends when it speaks as our own mod.
pub fn load_session_id(run: u32, session: u32) -> String {
    format!("load-{run:08x}-{session:05}")
}

/// The event id of event `seq` (0, 1, 2, … within its load session) of a load run:
/// `jl-<run:08x>-<session:05>-<seq:012>`. Unique across runs, so a long-running
/// server's deduplication never merges two runs.
pub fn load_event_id(run: u32, session: u32, seq: u64) -> String {
    format!("jl-{run:08x}-{session:05}-{seq:0width$}", width = LOAD_SEQ_DIGITS)
}

/// The session and sequence of a load event id of run `run`; `None` for any other id.
pub fn parse_load_event_id(id: &str, run: u32) -> Option<(u32, u64)> {
    let b = id.as_bytes();
    if b.len() != 3 + 8 + 1 + 5 + 1 + LOAD_SEQ_DIGITS || !id.starts_with("jl-") || b[11] != b'-' || b[17] != b'-' {
        return None;
    }
    if u32::from_str_radix(&id[3..11], 16).ok()? != run {
        return None;
    }
    Some((id[12..17].parse().ok()?, id[18..].parse().ok()?))
}

/// One batch body of a load session: a scored hand's cascade in the mod's dialect
/// (HAND_EVAL_START, joker triggers with retriggers, mult/chips updates, legacy
/// JOKER_TRIGGER events, SCORE_CHANGED with a bare `inf`, a `-nan` trigger
/// contribution, HAND_EVAL_COMPLETE and a closing GAME_STATE). Built once per
/// session; [`LoadBatch::stamp`] rewrites the event ids and send times in place,
/// so every request costs a few byte copies instead of a JSON encoding.
///
/// Each event's top-level `timestamp` is the send time in milliseconds since the
/// load run started (a game-clock reading, as the mod's aggregator sends), so a
/// subscriber can compute end-to-end latency from `timing.client_timestamp_ms`,
/// raw or aggregated.
#[derive(Clone, Debug)]
pub struct LoadBatch {
    pub body: Vec<u8>,
    seq_slots: Vec<usize>,
    time_slots: Vec<usize>,
}

impl LoadBatch {
    /// `n` events of session `session` of run `run`. With `explicit_session` the batch
    /// carries `session_id` (our mod); without it, none (the field mod: the server
    /// derives the session from the peer and `source`).
    pub fn new(run: u32, session: u32, explicit_session: bool, n: usize) -> Self {
        Self::with_quirks(run, session, explicit_session, n, true)
    }

    /// As [`LoadBatch::new`]; without `quirky` the non-finite numbers become finite
    /// ones, so that strict JSON servers (the old bus, bare serde_json) parse it too.
    pub fn with_quirks(run: u32, session: u32, explicit_session: bool, n: usize, quirky: bool) -> Self {
        let mut body = Vec::with_capacity(n * 260 + 200);
        let mut seq_slots = Vec::with_capacity(n);
        let mut time_slots = Vec::with_capacity(n);
        body.extend_from_slice(format!(r#"{{"batch_id":"5d1f7a2e-{run:08x}-{session:05}","#).as_bytes());
        if explicit_session {
            body.extend_from_slice(format!(r#""session_id":"{}","#, load_session_id(run, session)).as_bytes());
        }
        body.extend_from_slice(br#""timestamp":1795531353000,"source":"BalatroMCP","events":["#);
        let blank_id = load_event_id(run, session, 0);
        for k in 0..n {
            if k > 0 {
                body.push(b',');
            }
            body.extend_from_slice(br#"{"event_id":""#);
            seq_slots.push(body.len() + blank_id.len() - LOAD_SEQ_DIGITS);
            body.extend_from_slice(blank_id.as_bytes());
            body.extend_from_slice(br#"","source":"BalatroMCP","version":1,"#);
            let part = cascade_part(k, n);
            let part = if quirky { part } else { part.replace("-nan", "0").replace("inf", "1e+308") };
            body.extend_from_slice(part.as_bytes());
            body.extend_from_slice(br#","timestamp":"#);
            time_slots.push(body.len());
            body.extend_from_slice(format!("{:<width$}", 0, width = LOAD_TIME_WIDTH).as_bytes());
            body.push(b'}');
        }
        body.extend_from_slice(b"]}");
        Self { body, seq_slots, time_slots }
    }

    /// Events in the batch.
    pub fn len(&self) -> usize {
        self.seq_slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seq_slots.is_empty()
    }

    /// Numbers the events `first_seq, first_seq + 1, …` and stamps `sent_ms`.
    pub fn stamp(&mut self, first_seq: u64, sent_ms: f64) {
        let mut time = [b' '; LOAD_TIME_WIDTH];
        let text = format!("{sent_ms:.3}");
        let len = text.len().min(LOAD_TIME_WIDTH);
        time[..len].copy_from_slice(&text.as_bytes()[..len]);
        for (k, (&seq_at, &time_at)) in self.seq_slots.iter().zip(&self.time_slots).enumerate() {
            let mut seq = first_seq + k as u64;
            for byte in self.body[seq_at..seq_at + LOAD_SEQ_DIGITS].iter_mut().rev() {
                *byte = b'0' + (seq % 10) as u8;
                seq /= 10;
            }
            self.body[time_at..time_at + LOAD_TIME_WIDTH].copy_from_slice(&time);
        }
    }
}

/// Type, subtype and payload of event `k` of an `n`-event cascade.
fn cascade_part(k: usize, n: usize) -> String {
    const JOKERS: [&str; 4] = ["Blueprint", "Brainstorm", "Mime", "Hanging Chad"];
    if k == 0 {
        return r#""type":"SCORING","subtype":"HAND_EVAL_START","payload":{"cards":["3","4","5","6","7"],"hand_type":"Straight"}"#.into();
    }
    if k + 1 == n {
        return format!(
            r#""type":"GAME_STATE","payload":{{"ante":2,"round":{n},"money":4,"chips":1e+308,"mult":0,"hands_remaining":3,"discards_remaining":3,"game_state":"SELECTING_HAND","jokers":[{{"position":1,"name":"Blueprint","id":"j1"}},{{"position":2,"name":"Brainstorm","id":"j2"}}],"hand":{{}}}}"#
        );
    }
    if k + 2 == n {
        return r#""type":"SCORE_CHANGED","payload":{"new_chips":inf,"old_mult":1e+300,"new_mult":inf,"old_chips":1450}"#.into();
    }
    if k + 3 == n {
        return format!(
            r#""type":"SCORING","subtype":"HAND_EVAL_COMPLETE","payload":{{"duration_ms":3.25,"final_chips":120,"final_mult":40,"triggers":{}}}"#,
            n.saturating_sub(4)
        );
    }
    let joker = JOKERS[k % JOKERS.len()];
    match k % 4 {
        0 => format!(
            r#""type":"JOKER_TRIGGER","priority":"low","payload":{{"joker_name":"{joker}","context_type":true,"timestamp":48779.010772705}}"#
        ),
        1 => {
            let score = if k % 10 == 9 { "-nan".to_string() } else { format!("{}", k * 4) };
            format!(
                r#""type":"SCORING","subtype":"JOKER_TRIGGER","payload":{{"joker":{{"position":{},"name":"{joker}","id":"j{}"}},"score_contribution":{score},"trigger_index":{k}}}"#,
                k % 5 + 1,
                k % 5 + 1
            )
        }
        2 => format!(
            r#""type":"SCORING","subtype":"MULT_UPDATE","payload":{{"mult_before":{k},"mult_after":{},"source":"Joker"}}"#,
            k * 2
        ),
        _ => format!(
            r#""type":"SCORING","subtype":"CHIPS_UPDATE","payload":{{"chips_before":{k},"chips_after":{},"source":"{joker}"}}"#,
            k + 30
        ),
    }
}

/// The 50-event batch every wrk comparison sends (`perf/wrk/fair-batch50.lua`,
/// a copy of the body both the old bus and jimbus accept), as raw JSON bytes.
pub fn fair_batch50() -> Vec<u8> {
    let script = include_str!("../wrk/fair-batch50.lua");
    let quoted = script.split_once("wrk.body=\"").and_then(|(_, rest)| rest.split_once("\"\n")).map(|(body, _)| body);
    let body = quoted.expect("fair-batch50.lua sets wrk.body on one line");
    body.replace("\\\"", "\"").into_bytes()
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

    #[test]
    fn load_batches_decode_and_carry_their_ids() {
        use jimbus_core::ingest::{decode_body, Endpoint};
        for explicit in [false, true] {
            let mut batch = super::LoadBatch::new(0xabc, 7, explicit, 50);
            batch.stamp(1_000_050, 12345.678);
            let decoded = decode_body(&batch.body, Endpoint::Batch).unwrap();
            assert_eq!(decoded.events.len(), 50);
            assert!(decoded.rejected.is_empty(), "{:?}", decoded.rejected);
            let second = &decoded.events[1].event;
            assert_eq!(second.event_id, super::load_event_id(0xabc, 7, 1_000_051));
            assert_eq!(second.timing.as_ref().unwrap().client_timestamp_ms, 12345.678);
            let text = String::from_utf8(batch.body.clone()).unwrap();
            assert!(text.contains(&super::load_event_id(0xabc, 7, 1_000_050)));
            assert!(text.contains(&super::load_event_id(0xabc, 7, 1_000_099)));
            assert!(text.contains(r#""timestamp":12345.678     "#));
            assert!(text.contains("inf") && text.contains("-nan"));
            assert_eq!(text.contains("session_id"), explicit);
        }
        let strict = super::LoadBatch::with_quirks(0xabc, 7, true, 50, false);
        let value: serde_json::Value = serde_json::from_slice(&strict.body).expect("strict JSON");
        assert_eq!(value["events"].as_array().unwrap().len(), 50);
        let id = super::load_event_id(0xabc, 7, 42);
        assert_eq!(super::parse_load_event_id(&id, 0xabc), Some((7, 42)));
        assert_eq!(super::parse_load_event_id(&id, 0xabd), None);
        assert_eq!(super::parse_load_event_id("e-1", 0xabc), None);
    }
}
