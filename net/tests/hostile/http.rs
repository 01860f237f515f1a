//! Defects 4, 5 and 7 on the HTTP edge: malformed requests (malformed
//! chunked bodies among them) get a JSON answer with the right status, empty
//! lines before a request and bare LF heads are answered, the idle timer
//! never cuts a request or its answer, a stalled body gets 408, long
//! rejection lists are cut, an event made to expand is refused alone, a body
//! whose events could never fit the memory budget gets 413, and HEAD works on
//! the probes.

use crate::harness::{request, HttpConn, Jimbus};
use std::io::Write;
use std::time::{Duration, Instant};

/// Sends raw bytes on a new connection and reads one answer.
fn answer_to(server: &Jimbus, bytes: &[u8]) -> crate::harness::HttpResponse {
    let mut conn = HttpConn::open(server.http);
    conn.send(bytes);
    conn.try_read_response().unwrap_or_else(|| panic!("no answer to {:?}", String::from_utf8_lossy(&bytes[..40])))
}

#[test]
fn malformed_requests_get_a_status_and_a_json_body() {
    let server = Jimbus::start(&[]);
    let big_header = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(200_000));
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("bad request line", b"GARBAGE\r\n\r\n".to_vec(), 400),
        ("bad content-length", b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(), 400),
        (
            "conflicting content-length",
            b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(),
            400,
        ),
        (
            "content-length with transfer-encoding",
            b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            400,
        ),
        ("oversized headers", big_header.into_bytes(), 431),
        ("over-long URI", long_uri.into_bytes(), 414),
        ("unsupported version", b"GET /health HTTP/3.0\r\nHost: x\r\n\r\n".to_vec(), 505),
        // hyper ended the connection on a chunked body it could not read, unanswered.
        ("chunk size not hexadecimal", chunked(b"zz\r\nab\r\n0\r\n\r\n"), 400),
        ("chunk size past 64 bits", chunked(b"ffffffffffffffffffff\r\nab\r\n0\r\n\r\n"), 400),
        ("chunk size with a sign", chunked(b"+2\r\n{}\r\n0\r\n\r\n"), 400),
        ("chunk data longer than its size", chunked(b"2\r\n{}XX\r\n0\r\n\r\n"), 400),
        ("chunk line ending in a bare LF", chunked(b"2\n{}\r\n0\r\n\r\n"), 400),
        ("chunk extensions past 8 KiB", chunked(format!("1;{}\r\n{{\r\n", "x".repeat(9000)).as_bytes()), 400),
        ("a chunked body to a probe", b"POST /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(), 400),
    ];
    for (what, bytes, status) in cases {
        let response = answer_to(&server, &bytes);
        assert_eq!(response.status, status, "{what}");
        assert_eq!(response.json()["status"], "error", "{what}");
    }
    assert_eq!(server.get("/health").status, 200, "the server is still up");
}

/// A chunked POST to the events endpoint with `body` as its chunked bytes.
fn chunked(body: &[u8]) -> Vec<u8> {
    [b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".as_slice(), body].concat()
}

/// Empty lines before a request line made the framer take them for a
/// whole request, which hyper never answered: the connection hung, and
/// held the server's stop, forever. Heads with bare LF line ends, which hyper
/// reads, waited for a CRLF blank line until the header timeout.
#[test]
fn empty_lines_before_a_request_and_bare_lf_heads_are_answered() {
    let server = Jimbus::start(&[]);
    let event = br#"{"type":"HEARTBEAT","session_id":"lf"}"#;
    let lf_post = format!("POST /api/v1/events HTTP/1.1\nHost: x\nContent-Length: {}\n\n", event.len());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("two empty lines first", b"\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("empty lines of both kinds first", b"\n\r\n\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("bare LF head", b"GET /health HTTP/1.1\nHost: x\n\n".to_vec()),
        ("bare LF head ended by CRLF", b"GET /health HTTP/1.1\nHost: x\n\r\n".to_vec()),
        ("bare LF head with a body", [lf_post.as_bytes(), event].concat()),
    ];
    for (what, bytes) in cases {
        let mut conn = HttpConn::open(server.http);
        // Twice on one connection: the second request is framed after the first.
        conn.send(&[bytes.as_slice(), &bytes].concat());
        for _ in 0..2 {
            // Before, the first hung (no answer in 30 s) or got 408 at the header timeout.
            let response = conn.try_read_response().unwrap_or_else(|| panic!("{what}: no answer"));
            assert_eq!(response.status, 200, "{what}");
        }
    }
}

/// hyper read pipelined requests ahead and dropped the answers it had not yet
/// written when a later one was malformed: every request read gets its answer.
#[test]
fn requests_before_a_malformed_one_are_answered_first() {
    let server = Jimbus::start(&[]);
    let mut conn = HttpConn::open(server.http);
    let mut bytes = request("POST", "/api/v1/events", br#"{"type":"HEARTBEAT","session_id":"pipe"}"#, &[]);
    bytes.extend(request("GET", "/health", b"", &[]));
    bytes.extend_from_slice(b"GARBAGE\r\n\r\n");
    conn.send(&bytes);
    assert_eq!(conn.read_response().status, 200);
    assert_eq!(conn.read_response().status, 200);
    let last = conn.read_response();
    assert_eq!(last.status, 400);
    assert_eq!(last.json()["status"], "error");
}

/// The idle timer used to run while a request was in progress: a body that
/// stalled past `--idle-timeout` ended the connection without a word.
#[test]
fn a_stalled_body_gets_408_even_with_a_shorter_idle_timeout() {
    let server = Jimbus::start(&["--idle-timeout", "1", "--body-timeout", "2"]);
    let mut conn = HttpConn::open(server.http);
    conn.send(b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"type\":");
    let started = Instant::now();
    let response = conn.try_read_response().expect("an answer, not a silent close");
    assert_eq!(response.status, 408);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_rejected_list_and_its_dead_letters_are_bounded() {
    let server = Jimbus::start(&[]);
    let items = vec!["1"; 1500].join(",");
    let body = format!(r#"{{"events":[{items},{{"type":"HEARTBEAT","session_id":"ok"}}]}}"#);
    let answer = server.post("/api/v1/events/batch", body.as_bytes()).json();
    assert_eq!(answer["accepted"], 1);
    assert_eq!(answer["rejected"].as_array().unwrap().len(), 1000, "listed up to the bound");
    assert_eq!(answer["rejected_count"], 1500);
    assert_eq!(dead_letters(&server).await, 101, "100 dead letters and one summary");
}

#[test]
fn more_than_100000_events_in_a_request_is_413() {
    let server = Jimbus::start(&[]);
    let items = vec!["{}"; 100_001].join(",");
    let response = server.post("/api/v1/events/batch", format!(r#"{{"events":[{items}]}}"#).as_bytes());
    assert_eq!(response.status, 413);
    assert!(response.json()["error"].as_str().unwrap().contains("100000"));
}

/// 1.2 MB of empty jokers decode to about 100 MB: over the most one event
/// may build, so that event alone is refused and kept as a dead letter, and
/// the rest of its batch is stored.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_made_to_expand_is_refused_alone() {
    let server = Jimbus::start(&["--shards", "1"]);
    let jokers = vec!["{}"; 400_000].join(",");
    let body = format!(
        r#"{{"events":[{{"type":"GAME_STATE","session_id":"j","payload":{{"jokers":[{jokers}]}}}},{{"type":"HEARTBEAT","session_id":"j"}}]}}"#
    );
    let response = server.post("/api/v1/events/batch", body.as_bytes());
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    let answer = response.json();
    assert_eq!(answer["accepted"], 1, "{answer}");
    let reason = answer["rejected"][0]["error"].as_str().unwrap();
    assert!(reason.starts_with("events[0]: needs more than 67108864 bytes of memory once decoded"), "{reason}");
    assert_eq!(dead_letters(&server).await, 1);
}

/// On a 12 MiB budget one request may hold 6 MiB: a body whose events need
/// more is never granted, so it gets 413, not a 503 to retry, and is kept
/// as a dead letter like any other body it refuses.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_could_never_fit_the_budget_is_413() {
    let server = Jimbus::start(&["--shards", "1", "--memory-budget", &(12u64 << 20).to_string()]);
    let jokers = vec!["{}"; 400_000].join(",");
    let body = format!(r#"{{"events":[{{"type":"GAME_STATE","session_id":"j","payload":{{"jokers":[{jokers}]}}}}]}}"#);
    let response = server.post("/api/v1/events/batch", body.as_bytes());
    assert_eq!(response.status, 413, "{}", String::from_utf8_lossy(&response.body));
    let error = response.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("more than one request may hold of the server's memory budget"), "{error}");
    assert_eq!(dead_letters(&server).await, 1);
    let fits = server.post("/api/v1/events/batch", br#"{"events":[{"type":"HEARTBEAT","session_id":"j"}]}"#);
    assert_eq!(fits.status, 200);
}

/// Records on the dead-letter topic.
async fn dead_letters(server: &Jimbus) -> u64 {
    let mut client = server.client().await;
    let topics = client.list_topics(jimbus_proto::bus::ListTopicsRequest::default()).await.unwrap().into_inner();
    topics.topics.iter().find(|t| t.name == "deadletter").map_or(0, |t| t.events)
}

#[test]
fn head_works_on_the_probes() {
    let server = Jimbus::start(&[]);
    for path in ["/health", "/ready"] {
        let mut conn = HttpConn::open(server.http);
        conn.send(format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let mut head = String::new();
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut conn.reader, &mut line).unwrap() > 2 {
            head.push_str(&line);
            line.clear();
        }
        assert!(head.starts_with("HTTP/1.1 200"), "HEAD {path}: {head}");
        conn.reader.get_mut().flush().unwrap();
    }
}
