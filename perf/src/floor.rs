//! The transport's floor: a server that reads each HTTP request whole and
//! answers it without looking at it, for `examples/http_floor.rs`. What it
//! spends per event under the load jimbus is measured with
//! (`perf/compare-old-bus.sh`, `FLOOR=`) is what this transport costs on the
//! machine before any server does any work; whatever jimbus spends beyond it
//! is its own, and a CPU target below it cannot be met on this transport.
//!
//! One pinned glommio executor per allowed CPU, as jimbus runs its shards,
//! each accepting on the shared `SO_REUSEPORT` port; no HTTP library, no
//! decoding, no log. It must never be mistaken for a server: it trusts its
//! client (no limits, no timeouts) and answers every request alike.

use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};

/// jimbus's answer to an accepted 50-event batch, headers included, so that
/// as many bytes are written, with `$connection` (a header line, or none)
/// where hyper puts its `connection` header.
macro_rules! answer {
    ($connection:literal) => {
        concat!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n",
            "x-request-id: 581f530f-18a7-46ee-855f-938c5edf4db9\r\n",
            $connection,
            "content-length: 58\r\ndate: Wed, 02 Dec 2026 14:58:03 GMT\r\n\r\n",
            r#"{"accepted":50,"duplicates":0,"rejected":[],"status":"ok"}"#,
        )
        .as_bytes()
    };
}

/// The answer to every request.
const ANSWER: &[u8] = answer!("");
/// [`ANSWER`] to a request that asked to close its connection.
const ANSWER_CLOSING: &[u8] = answer!("connection: close\r\n");

/// Serves `address` with `executors` pinned executors until the process is
/// killed; an error when an executor cannot start or listen.
pub fn run(address: std::net::SocketAddr, executors: usize) -> std::io::Result<()> {
    let pool = LocalExecutorPoolBuilder::new(PoolPlacement::MaxSpread(executors, None))
        .on_all_shards(move || accept_all(address))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    for ended in pool.join_all() {
        ended.map_err(|e| std::io::Error::other(e.to_string()))??;
    }
    Ok(())
}

/// Accepts connections on `address` for ever; an error only when it cannot listen.
async fn accept_all(address: std::net::SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(address)?;
    loop {
        if let Ok(stream) = listener.accept().await {
            glommio::spawn_local(answer_all(stream)).detach();
        }
    }
}

/// Answers every request on one connection until the client closes it, or
/// until a request asks to close it (`Connection: close`, as a field mod's
/// LuaSocket sends): then, as jimbus does, after answering that one.
async fn answer_all(mut stream: TcpStream) {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0;
    loop {
        let (end, closing) = loop {
            if let Some(found) = request_end(&buf[..filled]) {
                break found;
            }
            if filled == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            match stream.read(&mut buf[filled..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => filled += n,
            }
        };
        if stream.write_all(if closing { ANSWER_CLOSING } else { ANSWER }).await.is_err() || closing {
            let _ = stream.close().await;
            return;
        }
        buf.copy_within(end..filled, 0);
        filled -= end;
    }
}

/// Where the first request in `bytes` ends (its head up to the blank line,
/// then `Content-Length` bytes of body, none without the header), once it
/// is all there, and whether it asks to close the connection.
pub fn request_end(bytes: &[u8]) -> Option<(usize, bool)> {
    let head = memchr::memmem::find(bytes, b"\r\n\r\n")? + 4;
    let head_text = std::str::from_utf8(&bytes[..head]).ok()?;
    let header = |wanted: &str| {
        head_text.split("\r\n").find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim().eq_ignore_ascii_case(wanted).then(|| value.trim())
        })
    };
    let length = header("content-length").and_then(|value| value.parse::<usize>().ok()).unwrap_or(0);
    let closing = header("connection").is_some_and(|value| value.eq_ignore_ascii_case("close"));
    (bytes.len() >= head + length).then_some((head + length, closing))
}

#[cfg(test)]
mod tests {
    use super::request_end;
    use proptest::prelude::*;

    fn request(body: &[u8], header: &str) -> Vec<u8> {
        let mut out = format!("POST /api/v1/events/batch HTTP/1.1\r\nhost: x\r\n{header}: {}\r\n\r\n", body.len());
        out.push_str(std::str::from_utf8(body).unwrap());
        out.into_bytes()
    }

    #[test]
    fn a_request_without_a_length_ends_at_its_head() {
        let get = b"GET /ready HTTP/1.1\r\nhost: x\r\n\r\nGET";
        assert_eq!(request_end(get), Some((get.len() - 3, false)));
    }

    #[test]
    fn a_request_that_asks_to_close_is_told_apart() {
        for (header, closing) in
            [("Connection: close", true), ("connection: CLOSE", true), ("Connection: keep-alive", false)]
        {
            let get = format!("GET /ready HTTP/1.1\r\n{header}\r\n\r\n");
            assert_eq!(request_end(get.as_bytes()), Some((get.len(), closing)), "{header}");
        }
    }

    proptest! {
        /// Requests back to back, given a prefix at a time as a socket would:
        /// each is found exactly when its last byte has arrived, never
        /// earlier (the floor would answer before reading the body).
        #[test]
        fn each_request_ends_where_its_body_does(
            bodies in proptest::collection::vec("[a-z{}\":,\r\n]{0,300}", 1..5),
            header in prop_oneof![Just("Content-Length"), Just("content-length"), Just("CONTENT-LENGTH")],
        ) {
            let requests: Vec<Vec<u8>> = bodies.iter().map(|b| request(b.as_bytes(), header)).collect();
            let stream = requests.concat();
            let mut start = 0;
            for r in &requests {
                for cut in start..start + r.len() {
                    prop_assert_eq!(request_end(&stream[start..cut]), None);
                }
                prop_assert_eq!(request_end(&stream[start..]), Some((r.len(), false)));
                start += r.len();
            }
        }
    }
}
