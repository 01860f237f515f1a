//! Our Lua mod's real batching, retry, breaker and spill code (run by LuaJIT through
//! `mod/tests/harness.lua`, HTTP over LuaSocket) against the real jimbus: every
//! event the harness reports as emitted reaches a gRPC subscriber exactly once and
//! in emission order, in a normal round, in big cascades and bursts, through a
//! server outage and through a game restart during an outage. Synchronisation is
//! the harness's own replies (`drain`, `until_open`) and the subscriber's count,
//! never a sleep.

mod harness;

use harness::{repo_root, Jimbus};
use jimbus_proto::bus;
use jimbus_proto::bus::subscribe_response::Body;
use jimbus_proto::events as pb;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

/// One emitted event as the harness reported it.
#[derive(Debug, Clone, PartialEq)]
struct Emitted {
    id: String,
    session: String,
    sequence: u64,
}

/// The LuaJIT harness process, driven over stdin/stdout.
struct Lua {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    emitted: Vec<Emitted>,
    _spill_dir: tempfile::TempDir,
}

impl Lua {
    fn start(server: &Jimbus) -> Self {
        let spill_dir = tempfile::tempdir().unwrap();
        let url = format!("http://{}/api/v1/events", server.http);
        let mut child = Command::new("luajit")
            .arg(repo_root().join("mod/tests/harness.lua"))
            .arg(&url)
            .arg(spill_dir.path().join("spill"))
            .args([
                "breaker_reset_ms=150",
                "backoff_base_ms=20",
                "backoff_max_ms=200",
                "request_timeout_ms=5000",
                "max_batch_size=50",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("luajit runs (apt-get install luajit lua-socket)");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self { child, stdin, stdout, emitted: Vec::new(), _spill_dir: spill_dir }
    }

    fn line(&mut self) -> Value {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).expect("harness output");
        assert!(n > 0, "the harness exited");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("harness printed non-JSON ({e}): {line}"))
    }

    /// Sends a command and returns the first reply that has `key`, recording
    /// every `emitted` line on the way.
    fn until(&mut self, command: &str, key: &str) -> Value {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        loop {
            let v = self.line();
            assert!(v.get("error").is_none(), "harness error: {v}");
            if let Some(id) = v.get("emitted") {
                self.emitted.push(Emitted {
                    id: id.as_str().unwrap().to_string(),
                    session: v["session"].as_str().unwrap().to_string(),
                    sequence: v["sequence"].as_u64().unwrap(),
                });
            }
            if v.get(key).is_some() {
                return v;
            }
        }
    }

    /// Runs a command that emits events; `stats` marks the end of its output.
    fn run(&mut self, command: &str) -> Value {
        writeln!(self.stdin, "{command}").unwrap();
        self.until("stats", "stats")
    }

    fn drain(&mut self) -> Value {
        let reply = self.until("drain 60000", "drain");
        assert_eq!(reply["drain"], "empty", "the worker did not drain: {reply}");
        assert_eq!(reply["pending"], 0, "{reply}");
        assert_eq!(reply["dropped"], 0, "{reply}");
        reply
    }

    fn of_session(&self, session: &str) -> Vec<Emitted> {
        self.emitted.iter().filter(|e| e.session == session).cloned().collect()
    }
}

impl Drop for Lua {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one session's raw events from the start until `count` have arrived.
async fn read_session(server: &Jimbus, session: &str, count: usize) -> Vec<pb::Event> {
    let mut client = server.client().await;
    let request = bus::SubscribeRequest {
        pattern: format!("balatro.{session}.>"),
        start: bus::StartPosition::Earliest as i32,
        ..Default::default()
    };
    let mut stream = client.subscribe(request).await.expect("subscribe").into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while out.len() < count {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(delivery))) => {
                if let Some(Body::Event(e)) = delivery.body {
                    out.push(e);
                }
            }
            _ => break,
        }
    }
    out
}

/// Every emitted event of `session` arrived once, in emission order, and nothing else did.
async fn assert_delivered(server: &Jimbus, lua: &Lua, session: &str) -> Vec<pb::Event> {
    let expected = lua.of_session(session);
    assert!(!expected.is_empty(), "nothing was emitted for {session}");
    let got = read_session(server, session, expected.len()).await;
    let got_ids: Vec<&str> = got.iter().map(|e| e.event_id.as_str()).collect();
    let want_ids: Vec<&str> = expected.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(got_ids.len(), want_ids.len(), "events missing for {session}");
    let first_diff = got_ids.iter().zip(&want_ids).position(|(g, w)| g != w);
    assert!(
        first_diff.is_none(),
        "order or identity differs at {first_diff:?}: got {:?}",
        &got_ids[..10.min(got_ids.len())]
    );
    for (i, (event, want)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(event.session_id, session);
        assert_eq!(event.client_sequence, want.sequence, "client sequence of event {i}");
        assert_eq!(event.client_sequence, i as u64 + 1, "client sequences start at 1 and have no gaps");
        if i > 0 {
            assert_eq!(event.sequence, got[i - 1].sequence + 1, "server sequence is contiguous (no duplicates)");
        }
    }
    got
}

fn subtype(e: &pb::Event) -> &str {
    e.subtype.as_str()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_normal_round_arrives_whole_and_in_order() {
    let server = Jimbus::start(&[]);
    let mut lua = Lua::start(&server);
    lua.until("session mod-round", "session");
    lua.run("round");
    let stats = lua.drain();
    let got = assert_delivered(&server, &lua, "mod-round").await;
    assert_eq!(stats["acked"].as_u64().unwrap() as usize, got.len());
    let types: Vec<&str> = got.iter().map(|e| e.event_type.as_str()).collect();
    for t in ["PHASE_CHANGED", "GAME_STATE", "HAND_PLAYED", "SCORING", "SCORE_CHANGED", "ROUND_COMPLETE", "HEARTBEAT"] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
    // Non-finite scores travel as the schema's strings and come back as doubles.
    let score = got.iter().find(|e| e.event_type == "SCORE_CHANGED").unwrap();
    let Some(pb::event::Payload::ScoreChanged(s)) = &score.payload else { panic!("{score:?}") };
    assert_eq!(s.new_chips, f64::INFINITY);
    assert!(s.new_mult.is_nan());
    assert_eq!(s.old_chips, 1e308);
    let jokers = got.iter().find(|e| e.event_type == "JOKERS_CHANGED").unwrap();
    let Some(pb::event::Payload::JokersChanged(j)) = &jokers.payload else { panic!() };
    assert_eq!(j.jokers[1].name, "Jöker ☺ 小丑");
    assert_eq!(j.jokers[1].id, "j\"q\\");
    let error = got.iter().find(|e| e.event_type == "ERROR").unwrap();
    let Some(pb::event::Payload::Error(err)) = &error.payload else { panic!() };
    assert!(err.message.contains("bell \u{7} backspace \u{8} formfeed \u{c} esc \u{1b} newline \n tab \t end"));
}

async fn cascade(triggers: usize) {
    let server = Jimbus::start(&[]);
    let mut lua = Lua::start(&server);
    let session = format!("mod-cascade-{triggers}");
    lua.until(&format!("session {session}"), "session");
    lua.run(&format!("cascade {triggers}"));
    let stats = lua.drain();
    let got = assert_delivered(&server, &lua, &session).await;
    assert_eq!(got.len(), triggers + 2);
    assert_eq!(subtype(&got[0]), "HAND_EVAL_START");
    assert_eq!(subtype(got.last().unwrap()), "HAND_EVAL_COMPLETE");
    assert!(got[1..=triggers].iter().all(|e| subtype(e) == "JOKER_TRIGGER"));
    // One request per batch of at most 50: the cascade went out whole, in pieces.
    assert_eq!(stats["sent"].as_u64().unwrap() as usize, (triggers + 2).div_ceil(50));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100_trigger_cascade_arrives_whole() {
    cascade(100).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_500_trigger_cascade_arrives_whole() {
    cascade(500).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_5000_trigger_cascade_arrives_whole() {
    cascade(5000).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_1000_event_burst_arrives_whole() {
    let server = Jimbus::start(&[]);
    let mut lua = Lua::start(&server);
    lua.until("session mod-burst", "session");
    lua.run("burst 1000");
    lua.drain();
    let got = assert_delivered(&server, &lua, "mod-burst").await;
    assert_eq!(got.len(), 1000);
    // GAME_STATE events are never collapsed.
    assert!(got.iter().all(|e| e.event_type == "GAME_STATE"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_mid_stream_loses_nothing_and_recovers() {
    let mut server = Jimbus::start(&[]);
    let mut lua = Lua::start(&server);
    lua.until("session mod-outage", "session");
    lua.run("burst 200");
    lua.drain();
    server.kill9();
    lua.run("cascade 300");
    lua.run("burst 100");
    let parked = lua.until("until_open 60000", "until_open");
    assert_eq!(parked["until_open"], "open", "{parked}");
    assert!(parked["failures"].as_u64().unwrap() >= 3, "{parked}");
    assert_eq!(parked["pending"], parked["on_disk"], "during an outage everything pending is on disk: {parked}");
    assert_eq!(parked["pending"], 402, "{parked}");
    lua.run("burst 50"); // still down: these go straight to disk as well
    server.restart();
    let stats = lua.drain();
    assert!(stats["probes"].as_u64().unwrap() >= 1, "the breaker probed {{url}}/health: {stats}");
    assert_eq!(stats["breaker"], "closed", "{stats}");
    let got = assert_delivered(&server, &lua, "mod-outage").await;
    assert_eq!(got.len(), 200 + 302 + 100 + 50);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_game_restart_during_an_outage_replays_the_spill_file() {
    let mut server = Jimbus::start(&[]);
    let mut lua = Lua::start(&server);
    lua.until("session mod-crash", "session");
    lua.run("burst 100");
    lua.drain();
    server.kill9();
    lua.run("cascade 200");
    let parked = lua.until("until_open 60000", "until_open");
    assert_eq!(parked["until_open"], "open", "{parked}");
    assert_eq!(parked["on_disk"], 202, "{parked}");
    // The game restarts: memory is gone, the spill file is what is left.
    let restarted = lua.until("restart", "restarted");
    assert_eq!(restarted["loaded"], 202, "{restarted}");
    let new_session = restarted["session"].as_str().unwrap().to_string();
    lua.run("round");
    let parked = lua.until("until_open 60000", "until_open");
    assert_eq!(parked["until_open"], "open", "{parked}");
    server.restart();
    let stats = lua.drain();
    assert_eq!(stats["replayed"].as_u64().unwrap(), 202 + lua.of_session(&new_session).len() as u64, "{stats}");
    let old = assert_delivered(&server, &lua, "mod-crash").await;
    assert_eq!(old.len(), 100 + 202);
    let new = assert_delivered(&server, &lua, &new_session).await;
    assert!(!new.is_empty());
}
