//! The server's life: acknowledged events survive SIGKILL, SIGTERM drains and
//! exits 0, a torn log tail is cut and reported (a prepared segment's zeros
//! are not torn), and the command line behaves.

mod harness;

use harness::Jimbus;
use jimbus_proto::bus::subscribe_response::Body;
use std::process::Command;

fn batch(from: usize, n: usize) -> Vec<u8> {
    let events: Vec<String> = (from..from + n)
        .map(|i| {
            format!(r#"{{"event_id":"e-{i}","type":"MONEY_CHANGED","session_id":"s1","payload":{{"new_value":{i}}}}}"#)
        })
        .collect();
    format!(r#"{{"batch_id":"b","events":[{}]}}"#, events.join(",")).into_bytes()
}

fn sequences(deliveries: &[jimbus_proto::bus::SubscribeResponse]) -> Vec<u64> {
    deliveries
        .iter()
        .map(|d| match &d.body {
            Some(Body::Event(e)) => e.sequence,
            _ => panic!("not an event"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_events_survive_sigkill_and_sequences_continue() {
    let mut server = Jimbus::start(&[]);
    for b in 0..10 {
        let answer = server.post("/api/v1/events/batch", &batch(b * 20, 20)).json();
        assert_eq!(answer["accepted"], 20);
    }
    server.kill9();
    server.restart();
    let recovered = server.read_all("balatro.s1.>", 200).await;
    assert_eq!(sequences(&recovered), (1..=200).collect::<Vec<_>>());
    // A retry of an acknowledged batch after the crash is recognised.
    let retry = server.post("/api/v1/events/batch", &batch(180, 20)).json();
    assert_eq!(retry["duplicates"], 20, "{retry}");
    let more = server.post("/api/v1/events/batch", &batch(200, 1)).json();
    assert_eq!(more["accepted"], 1);
    let all = server.read_all("balatro.s1.>", 201).await;
    assert_eq!(sequences(&all), (1..=201).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_and_exits_zero() {
    let mut server = Jimbus::start(&[]);
    assert_eq!(server.post("/api/v1/events/batch", &batch(0, 5)).status, 200);
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log_text());
    assert!(server.log_text().contains("every acknowledged event is on disk"));
    server.restart();
    assert_eq!(server.read_all("balatro.s1.>", 5).await.len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_torn_tail_is_truncated_and_reported() {
    let mut server = Jimbus::start(&["--shards", "1"]);
    assert_eq!(server.post("/api/v1/events/batch", &batch(0, 3)).status, 200);
    server.kill9();
    let segment = std::fs::read_dir(server.data_dir.join("shard-000")).unwrap().next().unwrap().unwrap().path();
    let mut data = std::fs::read(&segment).unwrap();
    let valid = data.len();
    // Half a record header plus a little: what a crash mid-write leaves.
    data.extend_from_slice(&[0x5a; 17]);
    std::fs::write(&segment, &data).unwrap();
    server.restart();
    assert!(server.log_text().contains("truncating log tail"), "{}", server.log_text());
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), valid as u64);
    assert_eq!(sequences(&server.read_all("balatro.s1.>", 3).await), vec![1, 2, 3]);
    assert_eq!(server.post("/api/v1/events/batch", &batch(3, 1)).json()["accepted"], 1);
    assert_eq!(sequences(&server.read_all("balatro.s1.>", 4).await), vec![1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_record_is_cut_not_served() {
    let mut server = Jimbus::start(&["--shards", "1"]);
    assert_eq!(server.post("/api/v1/events/batch", &batch(0, 4)).status, 200);
    server.kill9();
    let segment = std::fs::read_dir(server.data_dir.join("shard-000")).unwrap().next().unwrap().unwrap().path();
    let mut data = std::fs::read(&segment).unwrap();
    let last = data.len() - 10;
    data[last] ^= 0xff;
    std::fs::write(&segment, &data).unwrap();
    server.restart();
    assert!(server.log_text().contains("checksum"), "{}", server.log_text());
    // The marker takes the place of the cut record; had the corrupt record been
    // served, it would stand fourth instead.
    assert_eq!(server.post("/api/v1/events/batch", &batch(99, 1)).json()["accepted"], 1);
    let all = server.read_all("balatro.s1.>", 4).await;
    assert_eq!(sequences(&all), vec![1, 2, 3, 4]);
    let Some(Body::Event(marker)) = &all[3].body else { panic!() };
    assert_eq!(marker.event_id, "e-99");
}

/// `n` events from `from`, each with about 2 KB of payload.
fn large_batch(from: usize, n: usize) -> Vec<u8> {
    let note = "z".repeat(2000);
    let events: Vec<String> = (from..from + n)
        .map(|i| {
            format!(
                r#"{{"event_id":"e-{i}","type":"MONEY_CHANGED","session_id":"s1","payload":{{"new_value":{i},"note":"{note}"}}}}"#
            )
        })
        .collect();
    format!(r#"{{"batch_id":"b","events":[{}]}}"#, events.join(",")).into_bytes()
}

/// The segments of a one-shard server's data directory, oldest first.
fn segments(server: &Jimbus) -> Vec<std::path::PathBuf> {
    let dir = std::fs::read_dir(server.data_dir.join("shard-000")).unwrap();
    let mut found: Vec<_> =
        dir.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "log")).collect();
    found.sort();
    found
}

/// Segments of 8 MiB are prepared ahead once a shard has written 4 MiB: the
/// newest segment of a killed server then ends in zeros after its last record
/// (12 MiB long), which the next start reads as its clean end and cuts.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_servers_prepared_segment_ends_in_zeros_that_the_next_start_cuts() {
    let mut server = Jimbus::start(&["--shards", "1", "--segment-bytes", "8388608"]);
    const PREPARED: u64 = 12 << 20; // a segment and 4 MiB
    let newest_is_prepared = |server: &Jimbus| {
        let newest = segments(server).pop().unwrap();
        std::fs::metadata(newest).unwrap().len() == PREPARED
    };
    let mut sent = 0;
    // Until a prepared segment takes over (the segment it follows may fill
    // before the first is ready), then records in it.
    while !newest_is_prepared(&server) {
        assert!(sent < 20_000, "no prepared segment after {sent} events of 2 KB");
        assert_eq!(server.post("/api/v1/events/batch", &large_batch(sent, 50)).json()["accepted"], 50);
        sent += 50;
    }
    assert_eq!(server.post("/api/v1/events/batch", &large_batch(sent, 50)).json()["accepted"], 50);
    sent += 50;
    server.kill9();
    let newest = segments(&server).pop().unwrap();
    assert_eq!(std::fs::metadata(&newest).unwrap().len(), PREPARED, "killed: nothing cut its zeros");
    server.restart();
    assert!(!server.log_text().contains("truncating log tail"), "{}", server.log_text());
    let cut = std::fs::metadata(&newest).unwrap().len();
    assert!(cut > 0 && cut < 1 << 20, "the zeros were cut, the records kept: {cut} bytes");
    let all = server.read_all("balatro.s1.>", sent).await;
    assert_eq!(sequences(&all), (1..=sent as u64).collect::<Vec<_>>());
}

fn jimbus(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_jimbus")).args(args).output().unwrap()
}

#[test]
fn a_bad_flag_is_one_line_and_exit_code_two() {
    let out = jimbus(&["serve", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--no-such-flag"));
    let out = jimbus(&["serve", "--shards", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let out = jimbus(&["serve", "--grpc-nice", "20"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--grpc-nice must be between 0 and 19"), "{out:?}");
}

/// The nice value in a `/proc/…/stat` line: field 19, counted after the
/// name's closing parenthesis (field 2).
fn nice_in(stat: &str) -> Option<i32> {
    stat.rsplit_once(')')?.1.split_whitespace().nth(16)?.parse().ok()
}

/// The name and nice value of each of a process's threads.
fn thread_nices(pid: u32) -> Vec<(String, i32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the server's threads");
    let nice_of = |task: std::fs::DirEntry| {
        let name = std::fs::read_to_string(task.path().join("comm")).ok()?.trim().to_string();
        Some((name, nice_in(&std::fs::read_to_string(task.path().join("stat")).ok()?)?))
    };
    tasks.flatten().filter_map(nice_of).collect()
}

/// With `--grpc-nice`, the gRPC edge's threads yield the cores to the
/// shards: they run at that nice value, the shards at the one they started
/// with; by default, both at the latter.
#[test]
fn the_grpc_edge_runs_at_a_lower_priority_than_the_shards() {
    // What the server inherits from this test (0 unless the run was niced).
    let base = nice_in(&std::fs::read_to_string("/proc/thread-self/stat").unwrap()).expect("a nice value");
    for (flags, nice) in [(&[][..], base), (&["--grpc-nice", "10"][..], 10), (&["--grpc-nice", "19"][..], 19)] {
        let server = Jimbus::start(flags);
        let threads = thread_nices(server.process().expect("the server runs").pid);
        let grpc: Vec<_> = threads.iter().filter(|(name, _)| name.starts_with("grpc")).collect();
        assert!(grpc.len() >= 3, "the edge's thread and its two workers: {threads:?}");
        assert!(grpc.iter().all(|(_, n)| *n == nice.max(base)), "{flags:?}: {threads:?}");
        let shards: Vec<_> = threads.iter().filter(|(name, _)| name.starts_with("shard-")).collect();
        assert!(!shards.is_empty() && shards.iter().all(|(_, n)| *n == base), "{flags:?}: {threads:?}");
    }
}

#[test]
fn help_lists_every_command_and_flag() {
    let top = String::from_utf8(jimbus(&["--help"]).stdout).unwrap();
    for command in ["serve", "tail", "publish", "health"] {
        assert!(top.contains(command), "{top}");
    }
    let serve = String::from_utf8(jimbus(&["serve", "--help"]).stdout).unwrap();
    for flag in ["--http", "--grpc", "--data-dir", "--shards", "--config", "--fsync", "JIMBUS_HTTP"] {
        assert!(serve.contains(flag), "{flag} missing from:\n{serve}");
    }
}

#[test]
fn publish_and_tail_round_trip_non_finite_values() {
    let server = Jimbus::start(&[]);
    let url = server.grpc_url();
    let out = jimbus(&[
        "publish",
        "--grpc",
        &url,
        "--session",
        "cli-1",
        r#"{"type":"SCORE_CHANGED","payload":{"new_chips":inf,"new_mult":-0}}"#,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"accepted\":1"));
    let out = jimbus(&["tail", "balatro.cli-1.>", "--grpc", &url, "--from-start", "--count", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["event"]["scoreChanged"]["newChips"], "Infinity", "{line}");
    assert_eq!(line["event"]["sessionId"], "cli-1");
    let health = jimbus(&["health", "--url", &format!("http://{}/health", server.http)]);
    assert!(health.status.success());
}

fn recovered_line(server: &Jimbus) -> serde_json::Value {
    let log = server.log_text();
    let line = log.lines().rev().find(|l| l.contains("\"log recovered\"")).expect("a recovery line");
    serde_json::from_str(line).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_reads_closed_segments_from_their_index_and_replays_only_the_dedup_window() {
    // A dedup window of 50 keys turns over several times in 300 events, so the
    // restart replays from where the window's oldest generation begins.
    let mut server = Jimbus::start(&["--shards", "1", "--segment-bytes", "4096", "--dedup-window", "50"]);
    for b in 0..15 {
        assert_eq!(server.post("/api/v1/events/batch", &batch(b * 20, 20)).json()["accepted"], 20);
    }
    server.kill9();
    server.restart();
    let recovered = recovered_line(&server);
    assert!(recovered["from_index"].as_u64().unwrap() >= 3, "closed segments come from their index: {recovered}");
    let replayed_from = recovered["replayed_from"].as_u64().unwrap();
    assert!((1..300).contains(&replayed_from), "the dedup window is replayed, not the whole log: {recovered}");
    // Sequences, dedup and reads are as if everything had been replayed.
    assert_eq!(sequences(&server.read_all("balatro.s1.>", 300).await), (1..=300).collect::<Vec<_>>());
    assert_eq!(server.post("/api/v1/events/batch", &batch(260, 20)).json()["duplicates"], 20, "a recent retry");
    assert_eq!(server.post("/api/v1/events/batch", &batch(300, 1)).json()["accepted"], 1);
    assert_eq!(sequences(&server.read_all("balatro.s1.>", 301).await).last(), Some(&301));

    // A damaged index or checkpoint costs a scan, never data; a half-written
    // replacement file is cleaned away.
    server.kill9();
    let dir = server.data_dir.join("shard-000");
    let stray = dir.join("checkpoint.tmp42");
    std::fs::write(&stray, b"half a checkpoint").unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "index") || path.file_name().is_some_and(|n| n == "checkpoint") {
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[10] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
        }
    }
    server.restart();
    assert!(!stray.exists(), "the stray temporary file survived the restart");
    let rescanned = recovered_line(&server);
    assert_eq!(rescanned["from_index"], 0, "{rescanned}");
    assert_eq!(rescanned["replayed_from"], 0, "{rescanned}");
    assert_eq!(sequences(&server.read_all("balatro.s1.>", 301).await), (1..=301).collect::<Vec<_>>());
    assert_eq!(server.post("/api/v1/events/batch", &batch(280, 20)).json()["duplicates"], 20);
}
