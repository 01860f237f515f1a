//! The old field mod's networking still works against jimbus: an emulation of its
//! client (`mod/tests/field_client.lua`, LuaJIT + LuaSocket: its URLs, headers and
//! quirky encoder) posts every compat fixture and a few freshly encoded events;
//! each request gets a 2xx that accepted every event, and a gRPC subscriber then
//! receives exactly as many events as the server accepted, the fresh ones in order.

mod harness;

use harness::{repo_root, Jimbus, FIXTURES};
use jimbus_proto::bus::subscribe_response::Body;
use jimbus_proto::events::event::Payload;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

fn run_field_client(server: &Jimbus, script: &str) -> Vec<Value> {
    let url = format!("http://{}/api/v1/events", server.http);
    let mut child = Command::new("luajit")
        .arg(repo_root().join("mod/tests/field_client.lua"))
        .arg(&url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("luajit runs (apt-get install luajit lua-socket)");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let replies: Vec<Value> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|l| {
            let l = l.unwrap();
            serde_json::from_str(&l).unwrap_or_else(|e| panic!("field client printed non-JSON ({e}): {l}"))
        })
        .collect();
    assert!(child.wait().unwrap().success());
    replies
}

#[tokio::test(flavor = "multi_thread")]
async fn the_field_mods_client_delivers_every_fixture_and_event() {
    let server = Jimbus::start(&[]);
    let replies = run_field_client(&server, &format!("fixtures {FIXTURES}\nemit\nquit\n"));
    let fixture_count = std::fs::read_dir(FIXTURES)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "json"))
        .count();
    assert_eq!(replies.len(), fixture_count + 4, "{replies:#?}");
    let mut accepted = 0;
    for r in &replies {
        let status = r["status"].as_u64().unwrap();
        assert!((200..300).contains(&status), "{} answered {status}: {r}", r["posted"]);
        if r["posted"].as_str().unwrap().contains("health") {
            continue;
        }
        let body = &r["body"];
        assert_eq!(body["rejected"].as_array().map_or(0, Vec::len), 0, "{r}");
        accepted += body["accepted"].as_u64().unwrap();
    }
    assert!(accepted as usize >= fixture_count, "accepted only {accepted}");
    let deliveries = server.read_all("balatro.>", accepted as usize).await;
    let events: Vec<_> = deliveries
        .iter()
        .filter_map(|d| match &d.body {
            Some(Body::Event(e)) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(events.len(), accepted as usize);
    // The freshly encoded events come last, in the order the old client sent them,
    // with the quirks decoded: inf/nan tokens, string arrays, `{}` lists.
    let tail: Vec<&str> = events[events.len() - 6..].iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(tail, ["connection_test", "SCORE_CHANGED", "SCORING", "GAME_STATE", "ERROR", "SCORING"]);
    let Some(Payload::ScoreChanged(s)) = &events[events.len() - 5].payload else { panic!() };
    assert_eq!(s.new_chips, f64::INFINITY);
    assert!(s.new_mult.is_nan());
    assert_eq!(events[events.len() - 5].session_id, "127.0.0.1-BalatroMCP", "a field mod's derived session");
}
