//! `GET /api/v1/stream` (Server-Sent Events) against the real binary: patterns
//! and exclusions, resume by `Last-Event-ID` across partitions, a slow client
//! paused (not buffered), one that takes nothing closed after the idle timeout,
//! and a thousand open streams within the memory budget. The client here is a
//! raw socket, as a browser's EventSource is.

mod harness;

use harness::{wait_for, Jimbus};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One event of the stream: its id and its JSON data.
#[derive(Debug, Clone)]
struct Sse {
    id: String,
    data: serde_json::Value,
}

impl Sse {
    fn topic(&self) -> &str {
        self.data["topic"].as_str().unwrap_or("")
    }

    /// (session, sequence) of a raw event.
    fn key(&self) -> (String, u64) {
        let event = &self.data["event"];
        let sequence = event["sequence"].as_str().and_then(|s| s.parse().ok()).expect("a raw event has a sequence");
        (event["sessionId"].as_str().unwrap().to_string(), sequence)
    }
}

/// An open stream.
struct Stream {
    reader: BufReader<TcpStream>,
}

impl Stream {
    /// Opens the stream; panics unless the answer is 200 text/event-stream.
    fn open(addr: SocketAddr, query: &str, last_event_id: Option<&str>) -> Self {
        let (status, reader) = Self::request(addr, query, last_event_id);
        assert_eq!(status, 200, "GET /api/v1/stream?{query}");
        reader.expect("a 200 has a body")
    }

    /// Sends the request and reads the status and headers.
    fn request(addr: SocketAddr, query: &str, last_event_id: Option<&str>) -> (u16, Option<Self>) {
        let mut stream = TcpStream::connect(addr).expect("connects");
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
        write!(stream, "GET /api/v1/stream?{query} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{resume}\r\n")
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).expect("a status line");
        let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status");
        let mut event_stream = false;
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            event_stream |= line.to_ascii_lowercase().starts_with("content-type: text/event-stream");
        }
        if status == 200 {
            assert!(event_stream, "a stream is text/event-stream");
            (status, Some(Self { reader }))
        } else {
            (status, None)
        }
    }

    /// The next event (comments and `retry:` skipped). The body is chunked:
    /// chunk sizes are lines of hex digits, which no SSE field line is.
    fn next(&mut self) -> Sse {
        let (mut id, mut data) = (String::new(), None);
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("the stream goes on");
            assert!(n > 0, "the stream ended");
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(value) = line.strip_prefix("id: ") {
                id = value.to_string();
            } else if let Some(value) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str(value).expect("data is JSON"));
            } else if line.is_empty() {
                if let Some(data) = data.take() {
                    return Sse { id, data };
                }
            }
        }
    }

    fn take(&mut self, count: usize) -> Vec<Sse> {
        (0..count).map(|_| self.next()).collect()
    }
}

fn heartbeats(session: &str, count: usize, padding: usize) -> Vec<u8> {
    let pad = "x".repeat(padding);
    let events: Vec<_> = (0..count)
        .map(|i| serde_json::json!({"type": "HEARTBEAT", "session_id": session, "payload": {"uptime": i, "note": pad}}))
        .collect();
    serde_json::to_vec(&serde_json::json!({"events": events})).unwrap()
}

fn post_ok(server: &Jimbus, body: &[u8]) {
    let answer = server.post("/api/v1/events/batch", body);
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
}

/// The server's resident memory, in bytes.
fn server_rss(server: &Jimbus) -> u64 {
    server.process().and_then(|p| p.rss_kib()).expect("the server runs") * 1024
}

#[test]
fn patterns_exclusions_and_start_positions_select_what_subscribe_would() {
    let server = Jimbus::start(&["--shards", "2"]);
    post_ok(&server, &heartbeats("s1", 3, 0));
    let state = serde_json::json!({"type": "GAME_STATE", "session_id": "s2", "payload": {"ante": 1, "money": 4}});
    post_ok(&server, &serde_json::to_vec(&serde_json::json!({"events": [state]})).unwrap());

    let mut beats = Stream::open(server.http, "pattern=balatro.*.HEARTBEAT&from=earliest", None);
    let got = beats.take(3);
    assert!(got.iter().all(|e| e.topic() == "balatro.s1.HEARTBEAT"), "{got:?}");
    assert_eq!(got.iter().map(|e| e.key().1).collect::<Vec<_>>(), [1, 2, 3]);
    // Canonical protobuf JSON: camelCase names, 64-bit integers as strings, defaults left out.
    assert_eq!(got[1].data["event"]["heartbeat"]["uptime"], 1.0, "{:?}", got[1].data);
    assert_eq!(got[1].data["event"]["sequence"], "2");
    assert!(got[0].data["event"]["heartbeat"].get("uptime").is_none());

    // Every raw event and nothing aggregated: four raw events, then the next
    // raw one proves no aggregated message came between.
    let mut raw = Stream::open(server.http, "pattern=balatro.%3E%20-balatro.*.aggregated&from=earliest", None);
    let first = raw.take(4);
    assert!(first.iter().all(|e| e.data.get("event").is_some()), "{first:?}");
    let mut s2 = Stream::open(server.http, "pattern=balatro.s2.%3E&from=earliest", None);
    let s2_events = s2.take(2);
    assert_eq!(s2_events[0].topic(), "balatro.s2.GAME_STATE");
    assert_eq!(s2_events[1].topic(), "balatro.s2.aggregated", "the session's aggregated stream is included");
    assert_eq!(s2_events[1].data["aggregated"]["base"]["ante"], 1);

    // latest: only what arrives after the stream opened.
    let mut live = Stream::open(server.http, "pattern=balatro.s1.HEARTBEAT", None);
    post_ok(&server, &heartbeats("s1", 1, 0));
    assert_eq!(live.next().key(), ("s1".to_string(), 4));
    assert_eq!(raw.next().key(), ("s1".to_string(), 4), "the exclusion stream sees the new raw event next");

    for bad in ["pattern=a..b", "from=tomorrow", "pattern=%3E&last_event_id=nonsense"] {
        let (status, _) = Stream::request(server.http, bad, None);
        assert_eq!(status, 400, "{bad}");
    }
    let (status, _) = Stream::request(server.http, "pattern=%3E", Some("zz"));
    assert_eq!(status, 400, "a bad Last-Event-ID");
}

/// Reads `count` raw events, resumes twice from the last id it saw, and
/// checks that every event arrived exactly once.
fn resume_covers_every_event(server: &Jimbus, query: &str, sessions: &[&str], before: usize) {
    let per_post = 5;
    let mut expected = BTreeSet::new();
    let post_round = |expected: &mut BTreeSet<(String, u64)>| {
        for session in sessions {
            let known = expected.iter().filter(|(s, _)| s == session).count() as u64;
            post_ok(server, &heartbeats(session, per_post, 0));
            expected.extend((1..=per_post as u64).map(|i| (session.to_string(), known + i)));
        }
    };
    let mut stream = Stream::open(server.http, query, None);
    post_round(&mut expected);
    let mut seen: Vec<(String, u64)> = Vec::new();
    let mut last = String::new();
    for _ in 0..before {
        let event = stream.next();
        last = event.id.clone();
        seen.push(event.key());
    }
    drop(stream);
    post_round(&mut expected);
    // First by header (an EventSource reconnecting), then by query (a new one).
    let mut resumed = Stream::open(server.http, query, Some(&last));
    for _ in 0..before {
        let event = resumed.next();
        last = event.id.clone();
        seen.push(event.key());
    }
    drop(resumed);
    let mut again = Stream::open(server.http, &format!("{query}&last_event_id={last}"), None);
    while seen.len() < expected.len() {
        let event = again.next();
        last = event.id.clone();
        seen.push(event.key());
    }
    let partitions = last.split_once('~').unwrap().1.split(',').count();
    assert_eq!(partitions, 2, "the sessions span both partitions: {last}");
    let unique: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "an event was delivered twice: {seen:?}");
    assert_eq!(unique, expected, "events were lost");
}

#[test]
fn last_event_id_resumes_every_partition_without_gaps_or_repeats() {
    let server = Jimbus::start(&["--shards", "2"]);
    // Enough sessions that both partitions carry some.
    let sessions = ["r1", "r2", "r3", "r4", "r5", "r6"];
    resume_covers_every_event(&server, "pattern=balatro.%3E%20-balatro.*.aggregated&from=earliest", &sessions, 7);
    // A stream that started at `latest` resumes from the time it opened.
    let later = ["q1", "q2", "q3", "q4"];
    resume_covers_every_event(&server, "pattern=balatro.%3E%20-balatro.*.aggregated", &later, 5);
}

#[test]
fn a_stalled_client_is_paused_while_others_go_on_and_then_gets_everything() {
    // The stall lasts as long as the posting; a client that took nothing for
    // the idle timeout would be closed (see the test after this one).
    let server = Jimbus::start(&["--shards", "2", "--idle-timeout", "600"]);
    let query = "pattern=balatro.slow.HEARTBEAT&from=latest";
    let mut slow = Stream::open(server.http, query, None);
    let mut fast = Stream::open(server.http, query, None);
    let (warm_up, batches, per_batch, padding) = (200, 480, 100, 1024);
    let total = ((warm_up + batches) * per_batch) as u64;
    // A reader that keeps up gets everything, in order, while the other stalls.
    let reader = std::thread::spawn(move || (1..=total).all(|sequence| fast.next().key().1 == sequence));
    // The warm-up fills what the server keeps at a fixed size (record caches,
    // dedup tables, allocator arenas) before the baseline is read.
    for _ in 0..warm_up {
        post_ok(&server, &heartbeats("slow", per_batch, padding));
    }
    let baseline = server_rss(&server);
    for _ in 0..batches {
        post_ok(&server, &heartbeats("slow", per_batch, padding));
    }
    let grown = server_rss(&server).saturating_sub(baseline);
    assert!(reader.join().unwrap(), "the reader that kept up missed or reordered an event");
    let posted = (batches * per_batch * padding) as u64;
    eprintln!("RSS grew {} KiB while a stalled stream missed {} MiB of events", grown >> 10, posted >> 20);
    assert!(grown < posted / 4, "the server buffered for the stalled client: RSS grew {grown} bytes");
    // Paused, not dropped: the stalled client now reads every event in order.
    for sequence in 1..=total {
        assert_eq!(slow.next().key().1, sequence, "the stalled stream resumes where it stopped");
    }
}

/// A client that takes nothing of its stream for the idle timeout is closed,
/// and its slot and grant come back: stalled streams cannot keep the live
/// view from others for ever. Its `Last-Event-ID` would resume it.
#[test]
fn a_client_that_takes_none_of_its_stream_is_closed_after_the_idle_timeout() {
    let server = Jimbus::start(&["--shards", "1", "--idle-timeout", "1"]);
    let before = server.metric("jimbus_budget_used_bytes");
    let stalled = stalled_stream(server.http, "pattern=balatro.%3E%20-balatro.*.aggregated");
    assert_eq!(server.metric("jimbus_sse_streams"), 1.0);
    // 8 MiB of events: more than both ends' socket buffers take, so the
    // server's writes wait for a client that never reads.
    for _ in 0..16 {
        post_ok(&server, &heartbeats("stalled", 500, 1024));
    }
    wait_for(Duration::from_secs(30), "the stalled stream to be closed", || {
        server.metric("jimbus_sse_streams") == 0.0 && server.metric("jimbus_budget_used_bytes") == before
    });
    drop(stalled);
    let mut fresh = Stream::open(server.http, "pattern=balatro.%3E%20-balatro.*.aggregated&from=earliest", None);
    assert_eq!(fresh.next().key(), ("stalled".to_string(), 1), "the log kept what the closed stream missed");
}

#[test]
fn a_thousand_streams_hold_within_the_memory_budget() {
    const STREAMS: usize = 1000;
    let server = Jimbus::start(&["--shards", "2", "--max-connections", "2048"]);
    let before = server.metric("jimbus_budget_used_bytes");
    let mut streams: Vec<Stream> = (0..STREAMS)
        .map(|_| Stream::open(server.http, "pattern=balatro.many.%3E%20-balatro.*.aggregated", None))
        .collect();
    assert_eq!(server.metric("jimbus_sse_streams"), STREAMS as f64);
    let used = server.metric("jimbus_budget_used_bytes");
    let limit = server.metric("jimbus_budget_limit_bytes");
    assert_eq!(used - before, (STREAMS * 64 * 1024) as f64, "each stream holds its grant");
    assert!(used <= limit);
    let rss = server_rss(&server);
    eprintln!(
        "{STREAMS} open streams: budget {} MiB of {} MiB, RSS {} MiB",
        used as u64 >> 20,
        limit as u64 >> 20,
        rss >> 20
    );
    assert!(rss < limit as u64, "RSS {rss} with {STREAMS} streams is over the budget {limit}");
    post_ok(&server, &heartbeats("many", 3, 0));
    for stream in &mut streams {
        let got: Vec<u64> = stream.take(3).iter().map(|e| e.key().1).collect();
        assert_eq!(got, [1, 2, 3]);
    }
    drop(streams);
    wait_for(Duration::from_secs(30), "the streams' grants to come back", || {
        server.metric("jimbus_sse_streams") == 0.0 && server.metric("jimbus_budget_used_bytes") == before
    });
}

/// Streams replaying the log to clients that read nothing past the answer's
/// head hold about their grants. Until their deliveries had a stream's own
/// room (16 KiB), each shard copied 128 KiB of them per stalled stream and
/// read the log 256 KiB at a time: a thousand such streams took a server to
/// 408-415 MiB on 62.5 MiB of grants (docs/perf.md, "Thirteenth pass").
#[test]
fn stalled_streams_replaying_the_log_hold_about_their_grants() {
    use jimbus_net::http::sse::STREAM_GRANT;
    /// Each connection's own buffers and task, outside the budget (docs/tuning.md).
    const CONNECTION: u64 = 32 * 1024;
    const STREAMS: usize = 300;
    // The streams stay stalled while they are measured, under the idle timeout.
    let server = Jimbus::start(&["--shards", "2", "--max-connections", "2048", "--idle-timeout", "600"]);
    // 16 MiB of events over 32 sessions, so that both shards hold some.
    for session in 0..32 {
        post_ok(&server, &heartbeats(&format!("replay-{session}"), 500, 1024));
    }
    let process = server.process().expect("the server runs");
    let before = process.rss_kib().expect("VmRSS") << 10;
    process.reset_peak_rss().expect("VmHWM can be reset");
    let streams: Vec<TcpStream> =
        (0..STREAMS).map(|_| stalled_stream(server.http, "from=earliest&pattern=%3E")).collect();
    // Every stream has a shard's read waiting for it once its client has stalled.
    wait_for(Duration::from_secs(60), "every stream to stall", || {
        server.metric("jimbus_subscriber_sends_waiting") >= STREAMS as f64
    });
    let grown = (process.peak_rss_kib().expect("VmHWM") << 10).saturating_sub(before);
    eprintln!("{STREAMS} stalled streams grew the server by {} KiB", grown >> 10);
    let bound = STREAMS as u64 * (STREAM_GRANT + CONNECTION) + (8 << 20);
    assert!(grown < bound, "{} MiB held, more than {} MiB", grown >> 20, bound >> 20);
    drop(streams);
}

/// Opens a stream whose client takes the answer's head and then reads
/// nothing, with a 4 KiB receive buffer so that it stalls soon.
fn stalled_stream(addr: SocketAddr, query: &str) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().expect("a runtime");
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("a small receive buffer");
    let stream = runtime.block_on(socket.connect(addr)).expect("connects").into_std().expect("a std socket");
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(&stream, "GET /api/v1/stream?{query} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut head = [0u8; 12];
    (&stream).read_exact(&mut head).expect("an answer");
    assert_eq!(&head, b"HTTP/1.1 200", "the stream opens");
    stream
}

/// Opens streams until one is refused; returns them (the refusal must be 503).
fn open_until_refused(server: &Jimbus, most: usize) -> Vec<Stream> {
    let mut open = Vec::new();
    while open.len() <= most {
        match Stream::request(server.http, "pattern=%3E", None) {
            (200, Some(stream)) => open.push(stream),
            (status, _) => {
                assert_eq!(status, 503, "a refused stream is 503");
                break;
            }
        }
    }
    open
}

#[test]
fn streams_beyond_the_budget_get_503_until_one_closes() {
    // 2 shards' aggregators hold 32 MiB; 1 MiB more leaves room for 16 streams.
    let server = Jimbus::start(&["--shards", "2", "--memory-budget", &(33u64 << 20).to_string()]);
    let free = server.metric("jimbus_budget_limit_bytes") - server.metric("jimbus_budget_used_bytes");
    let room = (free / (64.0 * 1024.0)) as usize;
    assert!(room >= 1, "the test needs room for one stream");
    let mut open = open_until_refused(&server, room + 1);
    assert_eq!(open.len(), room, "as many streams as the budget has room for");
    open.pop();
    wait_for(Duration::from_secs(10), "a closed stream's grant to come back", || {
        Stream::request(server.http, "pattern=%3E", None).0 == 200
    });
}

#[test]
fn streams_never_hold_more_than_half_the_budget() {
    // One aggregator holds 16 MiB of 80: 64 MiB free, but streams get 40 MiB.
    let server = Jimbus::start(&["--shards", "1", "--memory-budget", &(80u64 << 20).to_string()]);
    let half = server.metric("jimbus_budget_limit_bytes") / 2.0;
    let share = (half / (64.0 * 1024.0)) as usize;
    let open = open_until_refused(&server, share + 1);
    assert_eq!(open.len(), share, "streams stop at half the budget");
    let answer = server.post("/api/v1/events/batch", &heartbeats("half", 10, 1024));
    assert_eq!(answer.status, 200, "ingest goes on while the streams are at their limit");
}

#[test]
fn streams_end_when_the_server_stops() {
    let mut server = Jimbus::start(&["--shards", "1"]);
    let mut stream = Stream::open(server.http, "pattern=balatro.%3E%20-balatro.*.aggregated", None);
    // A delivery first: the stream is live when the signal comes (and main
    // has installed its signal handler, which it does after "jimbus ready").
    post_ok(&server, &heartbeats("stop", 1, 0));
    assert_eq!(stream.next().key(), ("stop".to_string(), 1));
    let status = server.terminate();
    assert!(status.success(), "SIGTERM with an open stream exits 0: {status:?}");
    let mut rest = Vec::new();
    stream.reader.read_to_end(&mut rest).expect("the stream is closed, not reset");
}

#[test]
fn the_web_view_is_served_from_the_binary_unless_turned_off() {
    let server = Jimbus::start(&["--shards", "1"]);
    let page = server.get("/ui");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(page.header("content-security-policy").is_some_and(|csp| csp.contains("default-src 'self'")));
    assert!(String::from_utf8_lossy(&page.body).contains("/ui/app.js"));
    let script = server.get("/ui/app.js");
    assert_eq!((script.status, script.header("content-type")), (200, Some("text/javascript; charset=utf-8")));
    assert_eq!(server.get("/ui/missing.js").status, 404);
    assert_eq!(server.post("/ui", b"").status, 405);

    let without = Jimbus::start(&["--shards", "1", "--no-ui"]);
    assert_eq!(without.get("/ui").status, 404);
    assert_eq!(without.get("/ui/app.js").status, 404);
    let (status, _) = Stream::request(without.http, "pattern=%3E", None);
    assert_eq!(status, 200, "the stream stays with --no-ui");
}
