//! One HTTP connection's socket as hyper sees it: reads, writes, their
//! timeouts, and the answer to a request hyper cannot parse.
//!
//! [`GlommioIo`] adapts glommio's TcpStream to hyper. One clock times its waits
//! on the socket: an answer (or an event stream's bytes) the client takes none
//! of, the idle timeout from the last byte taken (then a close); otherwise,
//! unless a request is in progress ([`Activity`]) or an event stream is open
//! (its client sends nothing), the silence before a head, the idle timeout
//! (then a close without an answer), and a head from its first byte, the
//! header timeout however it trickles in (then 408).
//! hyper's own header timer is not used: it starts as soon as hyper waits for a
//! head, so it would close a silent kept-alive connection at the header
//! timeout, not the idle one. hyper answers a head it cannot parse with an
//! empty-bodied error and may drop it unflushed, so `GlommioIo` holds that
//! answer back and [`finish`] writes a JSON one (400, 414, 431 or 505) once
//! hyper has given the socket back. Its buffers are charged to the memory
//! budget ([`crate::http::charge`]): a connection whose buffers the budget
//! cannot cover is answered 503 and closed. Pipelined requests reach hyper one
//! at a time ([`crate::http::frame`]), so the answers to the requests before a
//! malformed one are written first. This module must never interpret a body or
//! route a request.

use crate::http::charge::{BufferCharge, Buffers};
use crate::http::frame::{Framer, Refused};
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use jimbus_core::budget;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Requests of one connection: how many hyper has dispatched, how many are in
/// progress (from their head to their answer), and the read waiting for them.
#[derive(Default)]
pub struct Activity {
    started: Cell<u64>,
    busy: Cell<usize>,
    waiting: Cell<Option<Waker>>,
}

impl Activity {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// Marks a request in progress until the guard drops.
    pub fn enter(self: &Rc<Self>) -> Busy {
        self.started.set(self.started.get() + 1);
        self.busy.set(self.busy.get() + 1);
        Busy(self.clone())
    }

    fn wake(&self) {
        if let Some(waker) = self.waiting.take() {
            waker.wake();
        }
    }
}

/// A request in progress; see [`Activity::enter`].
pub struct Busy(Rc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.set(self.0.busy.get() - 1);
        self.0.wake();
    }
}

/// What the clock of a read or write that waits on the socket times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Silence before a request's head: the idle timeout, then a close.
    Idle,
    /// A head under way, from its first byte: the header timeout, then 408.
    Head,
    /// An answer (or an event stream's bytes) the client takes none of: the
    /// idle timeout from the last byte it took, then a close (it reads no answer).
    Send,
}

/// Why a connection ends with an answer of its own rather than hyper's.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// The framer refused a request (400, with the reason).
    Refused(&'static str),
    /// The budget could not cover the connection's buffers (503).
    OverBudget,
    /// A head did not arrive whole within the header timeout (408).
    HeadTimedOut,
}

/// The buffer a shard's connections read their sockets into, one at a time:
/// what a read brings is copied out before the read returns, so one buffer
/// serves every connection of the shard.
pub type ReadBuffer = Rc<RefCell<Box<[u8]>>>;

/// The size of [`ReadBuffer`]: the most one socket read brings.
const READ_BYTES: usize = 16 * 1024;

/// A new [`ReadBuffer`] for one shard's connections.
pub fn read_buffer() -> ReadBuffer {
    Rc::new(RefCell::new(vec![0; READ_BYTES].into_boxed_slice()))
}

/// Adapts glommio's TcpStream to hyper's I/O traits. Reads go through the
/// shard's [`ReadBuffer`] into hyper's cursor, so hyper's spare capacity is
/// never zero-filled first (glommio wants an initialised slice); they pass
/// through `pending` only when hyper cannot take them yet.
pub struct GlommioIo {
    stream: TcpStream,
    gate: Rc<crate::http::sse::WriteGate>,
    activity: Rc<Activity>,
    /// Silence allowed between requests, and to a stalled answer (see [`Serving`]).
    idle_timeout: Duration,
    /// Time allowed for a head from its first byte (see [`Serving`]).
    header_timeout: Duration,
    /// The clock of a read or write that waits on the socket, kept from
    /// request to request (reset, not made anew, when it times another wait).
    clock: Option<glommio::timer::Timer>,
    /// What `clock` times now; `None` once that wait is over.
    timing: Option<Wait>,
    /// A write or flush is waiting for the socket (the client reads slowly).
    writing: bool,
    /// The status of hyper's own answer to a head it could not parse, held back.
    held_error: Option<u16>,
    /// Bytes read and not yet given to hyper; the first `ready` may be.
    pending: Vec<u8>,
    ready: usize,
    framer: Framer,
    /// The request the framer is in (1 for the first).
    request: u64,
    /// Why the connection ends with an answer of its own, which [`finish`]
    /// writes: each cause fails the read at once, so there is only ever one.
    ending: Option<Ending>,
    /// The shard's buffer that socket reads land in.
    read_buffer: ReadBuffer,
    /// The memory budget this connection's buffers hold.
    charge: BufferCharge,
}

/// What a connection is served with besides its socket.
pub struct Serving {
    /// What the socket has taken, for an event stream's flow control.
    pub gate: Rc<crate::http::sse::WriteGate>,
    /// The connection's requests in progress, shared with its service.
    pub activity: Rc<Activity>,
    /// A connection silent this long between requests, or taking none of an
    /// answer this long, is closed.
    pub idle_timeout: Duration,
    /// A head not whole this long after its first byte gets 408.
    pub header_timeout: Duration,
    /// The largest head the framer passes on as a head (hyper answers 431 beyond).
    pub max_head: usize,
    /// The shard's buffer that socket reads land in.
    pub read_buffer: ReadBuffer,
    /// The connection's part of the memory budget.
    pub charge: BufferCharge,
}

impl GlommioIo {
    pub fn new(stream: TcpStream, serving: Serving) -> Self {
        let Serving { gate, activity, idle_timeout, header_timeout, max_head, read_buffer, charge } = serving;
        Self {
            stream,
            gate,
            activity,
            idle_timeout,
            header_timeout,
            clock: None,
            timing: None,
            writing: false,
            held_error: None,
            pending: Vec::new(),
            ready: 0,
            framer: Framer::new(max_head),
            request: 1,
            ending: None,
            read_buffer,
            charge,
        }
    }

    /// Brings the connection's charge to what its buffers hold, after they
    /// grew; an error when the budget cannot cover them.
    fn follow_buffers(&mut self) -> std::io::Result<()> {
        if self.charge.follow(self.buffers()).is_err() {
            self.ending = Some(Ending::OverBudget);
            metrics::counter!("jimbus_budget_denials_total", "component" => "connection").increment(1);
            return Err(std::io::Error::new(std::io::ErrorKind::OutOfMemory, "the memory budget is spent"));
        }
        Ok(())
    }

    /// Frees `pending` once a large head or pipelined burst in it has gone
    /// on to hyper, and gives back what the buffers no longer hold.
    fn release_buffers(&mut self) {
        if self.pending.is_empty() && self.pending.capacity() > 2 * READ_BYTES {
            self.pending = Vec::new();
        }
        self.charge.shrink(self.buffers());
    }

    /// What the buffers hold for the current head: `pending` while the framer
    /// reads one (a body's bytes in it are the request's, charged by its
    /// grant), the framer's lines, and what hyper was handed of it.
    fn buffers(&self) -> Buffers {
        let pending = if self.framer.in_head() { self.pending.capacity() } else { 0 };
        Buffers { pending, framer: self.framer.held(), head_passed: self.framer.head_passed() }
    }

    /// True once hyper has dispatched the current request and its answer has
    /// gone to the socket: the next request may then be given to hyper.
    fn answered(&self) -> bool {
        self.activity.started.get() >= self.request && self.activity.busy.get() == 0 && !self.writing
    }

    /// Notes whether a write is waiting for the socket; a read held back until
    /// the answer is out is woken when it no longer is.
    fn set_writing(&mut self, writing: bool) {
        if self.writing && !writing {
            self.activity.wake();
        }
        self.writing = writing;
    }

    /// What a read or write that waits on the socket is timed against: an
    /// answer (or an event stream's next bytes) waiting for the client to take
    /// it, else nothing while a request is in progress or an event stream
    /// (whose client never sends) is open, else the head or the silence before
    /// it. A stream's client that reads slowly is paused, not cut off (see
    /// [`crate::http::sse`]); one that takes nothing for the idle timeout is
    /// closed, so that it gives its slot and grant back, and its `EventSource`
    /// resumes from its `Last-Event-ID` when it reads again.
    fn wait(&self) -> Option<Wait> {
        if self.writing {
            Some(Wait::Send)
        } else if self.gate.is_streaming() || self.activity.busy.get() > 0 {
            None
        } else if self.framer.head_begun(self.pending.len()) {
            Some(Wait::Head)
        } else {
            Some(Wait::Idle)
        }
    }

    /// A pending socket operation, or the error ending the connection if
    /// its wait ran out.
    fn pending_or_timed_out<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        let what = match self.wait_expired(cx) {
            None => return Poll::Pending,
            Some(Wait::Idle) => "idle connection",
            Some(Wait::Head) => {
                self.ending = Some(Ending::HeadTimedOut);
                "request head too slow"
            }
            Some(Wait::Send) => "the client takes none of its answer",
        };
        Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, what)))
    }

    /// Bytes moved: a wait of `kind` starts its clock anew (silence and a
    /// stalled answer are timed from the last byte; a head from its first).
    fn progressed(&mut self, kind: Wait) {
        if self.timing == Some(kind) {
            self.timing = None;
        }
    }

    /// Polls the clock of a read or write that waits on the socket; what ran
    /// out, if anything did. A clock left armed while nothing is timed may
    /// still fire once: that only wakes the connection's task.
    fn wait_expired(&mut self, cx: &mut Context<'_>) -> Option<Wait> {
        let Some(wait) = self.wait() else {
            self.timing = None;
            return None;
        };
        let limit = match wait {
            Wait::Idle | Wait::Send => self.idle_timeout,
            Wait::Head => self.header_timeout,
        };
        if self.timing != Some(wait) {
            self.timing = Some(wait);
            if let Some(clock) = &mut self.clock {
                clock.reset(limit);
            }
        }
        let clock = self.clock.get_or_insert_with(|| glommio::timer::Timer::new(limit));
        Pin::new(clock).poll(cx).is_ready().then_some(wait)
    }
}

impl hyper::rt::Read for GlommioIo {
    /// Gives hyper the current request's bytes; the next request's wait until
    /// this one is answered (see [`crate::http::frame`]).
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready > 0 {
                let n = this.ready.min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.drain(..n);
                this.ready -= n;
                this.release_buffers();
                return Poll::Ready(Ok(()));
            }
            if this.framer.is_done() {
                if !this.answered() {
                    this.activity.waiting.set(Some(cx.waker().clone()));
                    // Timed all the same: were hyper ever to wait for more of a
                    // request the framer holds whole, the connection would
                    // otherwise hold its slot, and the shard's drain, forever.
                    return this.pending_or_timed_out(cx);
                }
                this.framer.next_request();
                this.request += 1;
                // Each head has its own clock, even one already in `pending`.
                this.timing = None;
            }
            if !this.pending.is_empty() {
                let taken = this.framer.take(&this.pending);
                match this.framed(taken) {
                    Err(e) => return Poll::Ready(Err(e)),
                    Ok(0) if this.framer.is_done() => continue,
                    Ok(0) => {}
                    Ok(n) => {
                        this.ready = n;
                        continue;
                    }
                }
            }
            if this.pending.is_empty() {
                match this.read_to_hyper(cx, &mut buf) {
                    Poll::Ready(Ok(true)) => return Poll::Ready(Ok(())),
                    Poll::Ready(Ok(false)) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            match this.read_socket(cx) {
                Poll::Ready(Ok(0)) if !this.pending.is_empty() => {
                    // The client stopped mid-request: hyper gets what came.
                    this.framer = Framer::opaque();
                    this.ready = this.pending.len();
                }
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(_)) => {
                    if let Err(e) = this.follow_buffers() {
                        return Poll::Ready(Err(e));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl GlommioIo {
    /// Reads from the socket while nothing is pending, and hands hyper what
    /// the framer passes of it straight from the shard's read buffer, so that
    /// the usual request is copied once after the socket read rather than
    /// into `pending` and out again (docs/perf.md, "Twenty-ninth pass"). What
    /// hyper has no room for, and what the framer does not pass yet (a head's
    /// last bytes, the next pipelined request), stays in `pending` as
    /// [`GlommioIo::read_socket`] would have left it. True when hyper was
    /// given bytes, or the end of the stream.
    fn read_to_hyper(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<bool>> {
        let taken = self.read_socket_with(cx, |this, read| {
            let taken = this.framer.take(read);
            let passed = *taken.as_ref().unwrap_or(&0);
            let given = passed.min(buf.remaining());
            buf.put_slice(&read[..given]);
            this.pending.extend_from_slice(&read[given..]);
            this.ready = passed - given;
            taken.map(|_| given)
        });
        let given = match taken {
            Poll::Ready(Ok(Some(taken))) => self.framed(taken),
            Poll::Ready(Ok(None)) => return Poll::Ready(Ok(true)),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        match given {
            Err(e) => Poll::Ready(Err(e)),
            Ok(0) => Poll::Ready(Ok(false)),
            Ok(_) => {
                self.release_buffers();
                Poll::Ready(Ok(true))
            }
        }
    }

    /// After the framer read bytes: the charge follows the buffers, and a
    /// request the framer refused ends the connection with its reason;
    /// otherwise, what the framer took.
    fn framed(&mut self, taken: Result<usize, Refused>) -> std::io::Result<usize> {
        self.follow_buffers()?;
        taken.map_err(|Refused(reason)| {
            self.ending = Some(Ending::Refused(reason));
            std::io::Error::new(std::io::ErrorKind::InvalidData, reason)
        })
    }

    /// Reads from the socket into `pending`, timing out a silent connection
    /// or a head that does not arrive in time.
    fn read_socket(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let read = self.read_socket_with(cx, |this, read| {
            this.pending.extend_from_slice(read);
            read.len()
        });
        read.map_ok(|n| n.unwrap_or(0))
    }

    /// Reads from the socket into the shard's read buffer and gives `read`
    /// what came (`None` at the end of the stream), timing out a silent
    /// connection or a head that does not arrive in time.
    fn read_socket_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        read: impl FnOnce(&mut Self, &[u8]) -> T,
    ) -> Poll<std::io::Result<Option<T>>> {
        let shared = Rc::clone(&self.read_buffer);
        let mut read_buffer = shared.borrow_mut();
        match Pin::new(&mut self.stream).poll_read(cx, &mut read_buffer) {
            Poll::Ready(Ok(n)) => {
                self.progressed(Wait::Idle);
                Poll::Ready(Ok((n > 0).then(|| read(self, &read_buffer[..n]))))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.pending_or_timed_out(cx),
        }
    }
}

impl hyper::rt::Write for GlommioIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let mut out = buf;
        if let Some((at, status)) = hyper_error_answer(buf) {
            if at == 0 {
                // hyper's bodiless answer is replaced by answer_unparsed's.
                this.held_error = Some(status);
                return Poll::Ready(Ok(buf.len()));
            }
            out = &buf[..at];
        }
        let written = Pin::new(&mut this.stream).poll_write(cx, out);
        this.set_writing(written.is_pending());
        match written {
            Poll::Ready(Ok(n)) => {
                this.gate.wrote(n);
                this.progressed(Wait::Send);
                Poll::Ready(Ok(n))
            }
            Poll::Pending => this.pending_or_timed_out(cx),
            failed => failed,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.stream).poll_flush(cx);
        this.set_writing(flushed.is_pending());
        match flushed {
            Poll::Pending => this.pending_or_timed_out(cx),
            done => done,
        }
    }

    /// Only flushes: the socket is closed by [`finish`] once hyper gives it
    /// back, after any answer hyper left unwritten.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
}

/// Where hyper's automatic answer to an unparsable head starts in `buf`, and its
/// status: the last thing hyper writes on a connection, a head with
/// `content-length: 0` and no content type (every answer of ours has one).
fn hyper_error_answer(buf: &[u8]) -> Option<(usize, u16)> {
    if !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let at = buf.windows(9).rposition(|w| w == b"HTTP/1.1 ")?;
    let head = std::str::from_utf8(&buf[at..]).ok()?;
    let status: u16 = head.get(9..12)?.parse().ok()?;
    let bodiless = head.contains("\r\ncontent-length: 0\r\n") && !head.contains("content-type");
    (bodiless && matches!(status, 400 | 414 | 431 | 505)).then_some((at, status))
}

/// The status and message for a head hyper refused.
fn unparsed_status(held: Option<u16>, error: &hyper::Error) -> (u16, &'static str) {
    let text = error.to_string();
    let status = if text.contains("version") {
        505
    } else if text.contains("URI too long") {
        414
    } else if error.is_parse_too_large() {
        431
    } else {
        held.unwrap_or(400)
    };
    let reason = match status {
        505 => "HTTP Version Not Supported",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        _ => "Bad Request",
    };
    (status, reason)
}

/// True when hyper ended the connection on a request head it could not parse.
fn is_unparsed(error: &hyper::Error) -> bool {
    error.is_parse() || error.is_parse_too_large() || error.is_parse_version_h2()
}

/// Closes a connection hyper is done with; when it ended for a cause of its
/// own (an `Ending`) or on a head hyper could not parse, a JSON answer is
/// written first.
pub async fn finish(mut io: GlommioIo, error: Option<&hyper::Error>) {
    match io.ending.take() {
        Some(Ending::Refused(reason)) => {
            answer(&mut io, 400, "Bad Request", &format!("malformed request: {reason}")).await;
        }
        Some(Ending::OverBudget) => answer(&mut io, 503, "Service Unavailable", budget::SPENT).await,
        Some(Ending::HeadTimedOut) => {
            let message = format!("the request's headers did not arrive within {:?}", io.header_timeout);
            answer(&mut io, 408, "Request Timeout", &message).await;
        }
        None => {
            if let Some(error) = error.filter(|e| is_unparsed(e)) {
                answer_unparsed(&mut io, error).await;
            }
        }
    }
    let _ = io.stream.close().await;
}

/// Writes a JSON answer to the head hyper refused with `error`.
async fn answer_unparsed(io: &mut GlommioIo, error: &hyper::Error) {
    let (status, reason) = unparsed_status(io.held_error.take(), error);
    answer(io, status, reason, &format!("malformed request: {error}")).await;
}

/// Writes a JSON error answer on the raw socket; a 503 says when to retry.
async fn answer(io: &mut GlommioIo, status: u16, reason: &str, message: &str) {
    let _ = io.stream.write_all(answer_bytes(status, reason, message).as_bytes()).await;
}

/// The bytes of a JSON error answer that closes its connection.
pub fn answer_bytes(status: u16, reason: &str, message: &str) -> String {
    let body = serde_json::json!({"status": "error", "error": message}).to_string();
    let retry = if status == 503 { "retry-after: 1\r\n" } else { "" };
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n{retry}connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    metrics::counter!(crate::observe::HTTP_REQUESTS, "status" => status.to_string()).increment(1);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_bodiless_error_is_found_after_earlier_answers() {
        let ours = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        let hypers =
            "HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let both = format!("{ours}{hypers}");
        assert_eq!(hyper_error_answer(both.as_bytes()), Some((ours.len(), 431)));
        assert_eq!(hyper_error_answer(ours.as_bytes()), None);
        let empty_ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(hyper_error_answer(empty_ok.as_bytes()), None);
    }
}
