//! Reads a request body within its size and time limits and within the
//! memory budget: each chunk's bytes are granted before the chunk is kept, so
//! a body sent without a `Content-Length` (chunked), for which nothing could
//! be granted up front, holds no byte the budget has not counted.
//!
//! It owns only the reading. It must never decode a body or decide what a
//! refused one means beyond its status: a refusal is an answer to send.

use crate::http::guard::{error, too_large, unavailable};
use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use jimbus_core::budget::{self, Grant, Growth};
use std::time::Duration;

/// How a body may be read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    /// The most bytes a body may have (413 beyond).
    pub max: usize,
    /// How long the whole body may take to arrive (408 beyond).
    pub timeout: Duration,
}

/// Why a body was not read.
enum Unread {
    TooLarge,
    Budget(Growth),
    Broken(hyper::Error),
}

/// Reads `req`'s body into one buffer, growing `grant` to hold every byte
/// kept before keeping it. A body of several chunks is copied into one
/// buffer at its end, as hyper's own collecting does: for that copy's
/// moment it is held twice.
pub(crate) async fn read(
    req: Request<Incoming>,
    limits: BodyLimits,
    grant: &mut Grant,
) -> Result<Bytes, Response<Full<Bytes>>> {
    if declared_length(&req).is_some_and(|len| len > limits.max) {
        return Err(too_large(limits.max));
    }
    if let Some(coding) = content_coding(&req) {
        let message = format!("Content-Encoding `{coding}` is not supported: send the body uncompressed");
        return Err(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, &message, None, None));
    }
    let chunks =
        futures_lite::future::or(async { Some(chunks_within(req.into_body(), limits.max, grant).await) }, async {
            glommio::timer::sleep(limits.timeout).await;
            None
        })
        .await;
    match chunks {
        None => {
            let message = format!("the body did not arrive within {:?}", limits.timeout);
            Err(error(StatusCode::REQUEST_TIMEOUT, &message, None, None))
        }
        Some(Ok(chunks)) => Ok(joined(chunks)),
        Some(Err(Unread::TooLarge)) => Err(too_large(limits.max)),
        Some(Err(Unread::Budget(Growth::BeyondLimit))) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the body is larger than one request may hold of the server's memory budget",
            None,
            None,
        )),
        Some(Err(Unread::Budget(_))) => Err(unavailable(budget::SPENT)),
        Some(Err(Unread::Broken(e))) => {
            Err(error(StatusCode::BAD_REQUEST, &format!("the body could not be read: {e}"), None, None))
        }
    }
}

/// The `Content-Length` a request declares, if it declares one.
pub(crate) fn declared_length<B>(req: &Request<B>) -> Option<usize> {
    req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
}

/// The `Content-Encoding` a request declares, unless it is none or
/// `identity`: the body would be compressed, which is not read here (its
/// bytes would only be refused as malformed JSON).
fn content_coding<B>(req: &Request<B>) -> Option<String> {
    let mut codings = Vec::new();
    for value in req.headers().get_all(http::header::CONTENT_ENCODING) {
        let text = String::from_utf8_lossy(value.as_bytes());
        let named = text.split(',').map(str::trim).filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"));
        codings.extend(named.map(String::from));
    }
    (!codings.is_empty()).then(|| codings.join(", "))
}

/// The body's data chunks, each granted before it is kept.
async fn chunks_within(mut body: Incoming, max: usize, grant: &mut Grant) -> Result<Vec<Bytes>, Unread> {
    let mut chunks = Vec::new();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        // Trailers carry no body bytes.
        let Ok(data) = frame.map_err(Unread::Broken)?.into_data() else { continue };
        received += data.len();
        if received > max {
            return Err(Unread::TooLarge);
        }
        match grant.grow_to(received as u64) {
            Growth::Held => chunks.push(data),
            refused => {
                metrics::counter!("jimbus_budget_denials_total", "component" => "http").increment(1);
                return Err(Unread::Budget(refused));
            }
        }
    }
    Ok(chunks)
}

fn joined(mut chunks: Vec<Bytes>) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop().unwrap_or_default();
    }
    let mut body = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for chunk in chunks {
        body.extend_from_slice(&chunk);
    }
    body.freeze()
}
