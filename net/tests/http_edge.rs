//! The HTTP edge under bad input and misbehaving clients: every case gets its
//! precise status and message, nothing refused is lost (it is dead-lettered), and
//! the server stays up. Also keep-alive, pipelining, chunked bodies and
//! `Expect: 100-continue`.

mod harness;

use harness::{event_ids, request, HttpConn, Jimbus};
use jimbus_proto::bus::subscribe_response::Body;
use std::io::Write;

#[tokio::test(flavor = "multi_thread")]
async fn malformed_json_is_400_with_offset_and_dead_lettered() {
    let server = Jimbus::start(&[]);
    let body = br#"{"events":[{"type":"HEARTBEAT"},{"type":]}"#;
    let response = server.post("/api/v1/events/batch", body);
    assert_eq!(response.status, 400);
    let answer = response.json();
    assert_eq!(answer["offset"], 40, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("malformed JSON"), "{answer}");
    let letters = server.read_all("deadletter", 1).await;
    let Some(Body::DeadLetter(letter)) = &letters[0].body else { panic!() };
    assert_eq!(&letter.raw[..], &body[..]);
    assert!(letter.reason.contains("byte 40"));
    assert_eq!(letter.origin, "/api/v1/events/batch");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_types_name_the_field() {
    let server = Jimbus::start(&[]);
    let response = server.post("/api/v1/events", br#"{"type":"GAME_STATE","payload":{"ante":"one"}}"#);
    assert_eq!(response.status, 400);
    let answer = response.json();
    assert_eq!(answer["field"], "payload.ante", "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("expected a number"), "{answer}");

    let response = server.post("/api/v1/events", br#"{"payload":{}}"#);
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["field"], "type");

    let too_long = format!(r#"{{"type":"HEARTBEAT","session_id":"{}"}}"#, "s".repeat(300));
    let response = server.post("/api/v1/events", too_long.as_bytes());
    assert_eq!(response.status, 400);
    assert!(response.json()["error"].as_str().unwrap().contains("session_id: max_len=256"), "{}", response.json());
    assert_eq!(server.read_all("deadletter", 3).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_bad_event_does_not_fail_its_batch() {
    let server = Jimbus::start(&[]);
    let body = br#"{"batch_id":"b1","source":"BalatroMCP","events":[{"type":"HEARTBEAT"},{"type":"ROUND_CHANGED","payload":{"round":{}}},{"type":"HEARTBEAT"}]}"#;
    let response = server.post("/api/v1/events/batch", body);
    assert_eq!(response.status, 200);
    let answer = response.json();
    assert_eq!(answer["accepted"], 2);
    assert_eq!(answer["rejected"][0]["index"], 1);
    assert_eq!(answer["rejected"][0]["error"], "events[1].payload.round: expected a number, found object");
    let letters = server.read_all("deadletter", 1).await;
    let Some(Body::DeadLetter(letter)) = &letters[0].body else { panic!() };
    assert_eq!(&letter.raw[..], &br#"{"type":"ROUND_CHANGED","payload":{"round":{}}}"#[..]);
    assert_eq!(server.read_all("balatro.>", 2).await.len(), 2);
}

#[test]
fn oversized_bodies_get_413_by_length_and_by_chunks() {
    let server = Jimbus::start(&["--max-body", "1000"]);
    let big = vec![b' '; 2000];
    let response = server.post("/api/v1/events", &big);
    assert_eq!(response.status, 413);
    assert!(response.json()["error"].as_str().unwrap().contains("1000 bytes"));

    let mut conn = HttpConn::open(server.http);
    let mut chunked = b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(format!("{:x}\r\n{}\r\n", 500, " ".repeat(500)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    conn.send(&chunked);
    assert_eq!(conn.read_response().status, 413);
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn a_compressed_body_gets_415_naming_its_coding() {
    let server = Jimbus::start(&[]);
    let event = br#"{"type":"HEARTBEAT","source":"BalatroMCP","timestamp":1,"payload":{}}"#;
    let gzip = request("POST", "/api/v1/events", event, &[("Content-Encoding", "identity, gzip")]);
    let mut conn = HttpConn::open(server.http);
    conn.send(&gzip);
    let response = conn.read_response();
    assert_eq!(response.status, 415);
    let error = response.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("`gzip`") && error.contains("uncompressed"), "{error}");

    let identity = request("POST", "/api/v1/events", event, &[("Content-Encoding", "identity")]);
    let mut conn = HttpConn::open(server.http);
    conn.send(&identity);
    assert_eq!(conn.read_response().json()["accepted"], 1, "identity is no coding");
}

#[test]
fn a_stalled_body_gets_408_and_a_silent_connection_is_closed() {
    let server = Jimbus::start(&["--body-timeout", "1", "--idle-timeout", "2"]);
    let mut conn = HttpConn::open(server.http);
    conn.send(b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"type\":");
    let response = conn.read_response();
    assert_eq!(response.status, 408);
    assert!(response.json()["error"].as_str().unwrap().contains("did not arrive"));

    let mut silent = HttpConn::open(server.http);
    assert!(silent.is_closed(), "an idle connection must be closed by the server");
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn too_many_connections_get_503() {
    let server = Jimbus::start(&["--shards", "1", "--max-connections", "2"]);
    let mut held: Vec<HttpConn> = (0..2).map(|_| HttpConn::open(server.http)).collect();
    // Make sure both are being served before opening the third.
    for conn in &mut held {
        conn.send(&request("GET", "/health", b"", &[]));
        assert_eq!(conn.read_response().status, 200);
    }
    let mut third = HttpConn::open(server.http);
    let response = third.read_response();
    assert_eq!(response.status, 503);
    assert_eq!(response.header("retry-after"), Some("1"));
    drop(held);
    // Read once the held connections are gone; until then the page is refused too, and counted.
    let refused = "jimbus_http_connections_refused_total{reason=\"over_limit\"}";
    harness::wait_for(std::time::Duration::from_secs(30), "the refusal counted at the cap", || {
        server.metric_if(refused).is_some_and(|counted| counted >= 1.0)
    });
}

/// `jimbus_http_connections{shard}` is the shard's open connections: a
/// connection held open counts until it closes. Each read of `/metrics` is a
/// connection of its own, open while the page is written.
#[test]
fn the_open_connections_gauge_counts_a_held_connection_until_it_closes() {
    let server = Jimbus::start(&["--shards", "1"]);
    let open = || server.metric("jimbus_http_connections{shard=\"0\"}");
    let within = std::time::Duration::from_secs(30);
    // Earlier connections (the readiness probes) are gone once the server has seen them close.
    harness::wait_for(within, "only the page's own connection open", || open() == 1.0);
    let mut held = HttpConn::open(server.http);
    held.send(&request("GET", "/health", b"", &[]));
    assert_eq!(held.read_response().status, 200);
    // A page read just before may still be closing: the count settles at two.
    harness::wait_for(within, "the held connection and the page's", || open() == 2.0);
    drop(held);
    harness::wait_for(within, "the held connection no longer counted", || open() == 1.0);
}

#[test]
fn keep_alive_pipelining_chunked_and_expect_continue() {
    let server = Jimbus::start(&[]);
    let event = br#"{"type":"HEARTBEAT","source":"BalatroMCP"}"#;
    let mut conn = HttpConn::open(server.http);
    // Two pipelined requests in one write, then a third on the same connection.
    let mut both = request("POST", "/api/v1/events", event, &[]);
    both.extend(request("POST", "/api/v1/events", event, &[]));
    conn.send(&both);
    assert_eq!(conn.read_response().status, 200);
    assert_eq!(conn.read_response().status, 200);
    conn.send(&request("GET", "/ready", b"", &[]));
    assert_eq!(conn.read_response().status, 200);

    let mut chunked = b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in event.chunks(7) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    conn.send(&chunked);
    assert_eq!(conn.read_response().json()["accepted"], 1);

    let head = format!(
        "POST /api/v1/events HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        event.len()
    );
    conn.send(head.as_bytes());
    assert_eq!(conn.read_response().status, 100);
    conn.reader.get_mut().write_all(event).unwrap();
    assert_eq!(conn.read_response().status, 200);
}

/// Two pipelined requests sent in two writes, split every few bytes: a read
/// may end in a head, in a body or in the next request, so each split leaves
/// part of what was read for hyper and part pending on the connection. Every
/// event is stored whole, in order.
#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_split_anywhere_are_stored_whole() {
    let server = Jimbus::start(&[]);
    let mut conn = HttpConn::open(server.http);
    let post = |n: usize| {
        let event = format!(r#"{{"type":"HEARTBEAT","source":"BalatroMCP","session_id":"split","event_id":"e{n}"}}"#);
        request("POST", "/api/v1/events", event.as_bytes(), &[])
    };
    let mut sent = 0;
    let pair_len = post(0).len() + post(1).len();
    for split in (1..pair_len).step_by(5) {
        let mut both = post(sent);
        both.extend(post(sent + 1));
        conn.send(&both[..split]);
        conn.send(&both[split..]);
        for _ in 0..2 {
            let response = conn.read_response();
            assert_eq!(response.status, 200, "split at {split}: {}", String::from_utf8_lossy(&response.body));
        }
        sent += 2;
    }
    let stored = server.read_all("balatro.split.>", sent).await;
    assert_eq!(event_ids(&stored), (0..sent).map(|n| format!("e{n}")).collect::<Vec<_>>());
}

#[test]
fn routes_methods_health_and_metrics() {
    let server = Jimbus::start(&[]);
    assert_eq!(server.get("/api/v1/events").status, 405);
    assert_eq!(server.post("/nope", b"{}").status, 404);
    assert_eq!(server.post("/api/v1/events/health", b"{}").status, 200);
    assert_eq!(server.get("/ready").status, 200);
    assert_eq!(server.post("/api/v1/events", b"").status, 400);
    let metrics = String::from_utf8(server.get("/metrics").body).unwrap();
    assert!(metrics.contains("jimbus_http_requests_total"), "{metrics}");
    assert!(metrics.contains("status=\"405\""), "{metrics}");
}

#[test]
fn a_custom_ingest_path_takes_the_mods_posts_there_and_only_there() {
    // A field mod's event_bus_url may name any path; a trailing slash is the same path.
    let server = Jimbus::start(&["--ingest-path", "/game/events/"]);
    let event = br#"{"type":"HEARTBEAT","source":"BalatroMCP","session_id":"s","payload":{"n":1}}"#;
    let batch = br#"{"events":[{"type":"HEARTBEAT","source":"BalatroMCP","session_id":"s","payload":{"n":2}}]}"#;
    assert_eq!(server.post("/game/events", event).status, 200);
    assert_eq!(server.post("/game/events/batch", batch).json()["accepted"], 1);
    assert_eq!(server.post("/game/events/health", b"{}").status, 200);
    assert_eq!(server.get("/game/events/batch").status, 405);
    assert_eq!(server.post("/api/v1/events", event).status, 404);
    assert_eq!(server.post("/api/v1/events/batch", batch).status, 404);
    assert_eq!(server.metric("jimbus_log_commit_records_sum"), 2.0, "the two events, and nothing posted elsewhere");
}

/// A single event padded with a long string to exactly `len` bytes.
fn padded_event(id: &str, len: usize) -> Vec<u8> {
    let head = format!(r#"{{"event_id":"{id}","type":"HEARTBEAT","payload":{{"pad":""#);
    let tail = r#""}}"#;
    let mut body = head.into_bytes();
    body.resize(len - tail.len(), b'p');
    body.extend_from_slice(tail.as_bytes());
    body
}

#[test]
fn a_spent_memory_budget_is_503_until_the_holder_finishes() {
    // A request asks six bytes per body byte (its decoded events too) and
    // needs at least its body's size: the holder gets 540,000 of 550,000.
    let server = Jimbus::start(&["--shards", "1", "--memory-budget", "550000"]);
    let big = padded_event("holder", 90_000);
    let mut holder = HttpConn::open(server.http);
    holder.send(
        format!(
            "POST /api/v1/events HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    );
    // The server asks for the body only once its memory is granted.
    let mut interim = String::new();
    std::io::BufRead::read_line(&mut holder.reader, &mut interim).unwrap();
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    std::io::BufRead::read_line(&mut holder.reader, &mut String::new()).unwrap();

    let small = padded_event("waiter", 20_000);
    let refused = server.post("/api/v1/events", &small);
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.json()["error"].as_str().unwrap().contains("memory budget"), "{}", refused.json());
    let metrics = String::from_utf8(server.get("/metrics").body).unwrap();
    assert!(metrics.contains("jimbus_budget_used_bytes 540000"), "the holder's grant is visible");

    holder.send(&big);
    assert_eq!(holder.read_response().status, 200);
    assert_eq!(server.post("/api/v1/events", &small).status, 200, "the budget came back");
}

#[test]
fn cpu_profiles_are_served_only_when_enabled() {
    let off = Jimbus::start(&[]);
    let refused = off.get("/debug/pprof/profile?seconds=1");
    assert_eq!(refused.status, 404);
    assert!(refused.json()["error"].as_str().unwrap().contains("--enable-profiling"));

    let on = Jimbus::start(&["--enable-profiling"]);
    // Keep the server busy while it samples, so there are stacks to draw.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, addr) = (stop.clone(), on.http);
        std::thread::spawn(move || {
            let mut conn = HttpConn::open(addr);
            let body = br#"{"type":"HEARTBEAT","payload":{"uptime":1}}"#;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                conn.send(&request("POST", "/api/v1/events", body, &[]));
                assert_eq!(conn.read_response().status, 200);
            }
        })
    };
    let svg = on.get("/debug/pprof/profile?seconds=2&format=svg");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    assert_eq!(svg.status, 200, "{}", String::from_utf8_lossy(&svg.body));
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    assert!(String::from_utf8_lossy(&svg.body).contains("<svg"), "{} bytes", svg.body.len());
    let pprof = on.get("/debug/pprof/profile?seconds=1");
    assert_eq!(pprof.header("content-type"), Some("application/octet-stream"));
    assert!(!pprof.body.is_empty(), "a pprof protobuf");
    assert_eq!(on.get("/debug/pprof/profile?seconds=999").status, 400);
}

#[test]
fn silence_between_requests_is_timed_by_the_idle_timeout_and_a_begun_head_by_the_header_timeout() {
    let server = Jimbus::start(&["--header-timeout", "1", "--idle-timeout", "4"]);
    let mut kept = HttpConn::open(server.http);
    kept.send(&request("GET", "/health", b"", &[]));
    assert_eq!(kept.read_response().status, 200);
    // Silent for twice the header timeout, half the idle one: still open.
    kept.reader.get_ref().set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
    let mut byte = [0u8; 1];
    let quiet = std::io::Read::read(&mut kept.reader, &mut byte);
    let waited = quiet.as_ref().map_err(std::io::Error::kind);
    assert!(
        matches!(waited, Err(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "a silent kept-alive connection ended before its idle timeout: {quiet:?}"
    );
    kept.send(&request("GET", "/health", b"", &[]));
    assert_eq!(kept.read_response().status, 200, "the kept-alive connection is still served");

    let mut slow = HttpConn::open(server.http);
    slow.send(b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\n");
    let response = slow.read_response();
    assert_eq!(response.status, 408);
    let error = response.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("headers did not arrive within 1s"), "{error}");
    assert!(slow.is_closed());

    kept.reader.get_ref().set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    assert!(kept.is_closed(), "silence past the idle timeout closes the connection");
}

#[test]
fn a_client_that_takes_none_of_its_answers_is_cut_off_after_the_idle_timeout() {
    let server = Jimbus::start(&["--idle-timeout", "1"]);
    let mut writer = std::net::TcpStream::connect(server.http).unwrap();
    let (done, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Pipelined requests, their answers never read: the answers fill both
        // ends' socket buffers, then the requests do, and this write blocks
        // until the server lets go of the connection.
        let one = request("GET", "/metrics", b"", &[]);
        let error = loop {
            if let Err(error) = writer.write_all(&one) {
                break error;
            }
        };
        let _ = done.send(error);
    });
    let error = ended
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the server still holds a connection whose client reads nothing");
    assert!(matches!(error.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe), "{error:?}");
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn headers_trickling_in_slower_than_the_header_timeout_end_the_connection() {
    let server = Jimbus::start(&["--header-timeout", "1", "--idle-timeout", "30"]);
    let mut conn = HttpConn::open(server.http);
    conn.reader.get_ref().set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
    let started = std::time::Instant::now();
    let header =
        b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut ended = None;
    // One byte every 200 ms: each read stays well inside the idle timeout.
    for byte in header.iter() {
        if conn.reader.get_mut().write_all(&[*byte]).is_err() {
            ended = Some("the server closed the connection");
            break;
        }
        let mut buf = [0u8; 256];
        match std::io::Read::read(&mut conn.reader, &mut buf) {
            Ok(0) => {
                ended = Some("the server closed the connection");
                break;
            }
            Ok(n) => {
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"), "only a 408 may come back");
                ended = Some("408");
                break;
            }
            Err(_) => {} // nothing yet: the read timed out
        }
    }
    let ended = ended.expect("a slowloris client was never cut off");
    assert!(started.elapsed() < std::time::Duration::from_secs(8), "cut off after {:?} ({ended})", started.elapsed());
    assert_eq!(server.get("/health").status, 200);
}
