//! The gRPC port's connections before tonic serves them: how many may be open
//! at once, and how soon a new one must begin HTTP/2.
//!
//! An open connection costs about 16 KiB of h2 and task state before it opens
//! a stream, and the memory budget grants none of it, so their number is
//! capped ([`GrpcLimits::max_connections`]): a connection past the cap is
//! closed at accept and counted. A socket that sends nothing would hold a slot
//! for good, so a new connection has the handshake timeout to send the HTTP/2
//! preface and the header of the SETTINGS frame that must follow it, or it is
//! closed. Once open, HTTP/2 pings (see [`super::serve`]) close a peer that
//! stops answering. A failed accept is retried after 50 ms; while the process
//! is out of file descriptors, the connections waiting are closed through a
//! spare one (as the HTTP port answers them 503, `http::accept`), so that
//! their clients fail at once and retry. This module must never read a
//! request or hold one back.

use crate::http::accept::{out_of_descriptors, refuse_waiting};
use socket2::{SockRef, Socket};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The bytes a client opens HTTP/2 with: the 24-byte preface and the 9-byte
/// header of its first frame, which must be SETTINGS (RFC 9113, 3.4).
const OPENING_BYTES: usize = 24 + 9;

/// How long to wait before accepting again after the process ran out of
/// descriptors (or another accept error): accepting at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What the gRPC port allows a connection.
#[derive(Debug, Clone, Copy)]
pub struct GrpcLimits {
    /// Open connections at most; more are closed at accept.
    pub max_connections: usize,
    /// A new connection not through its opening bytes this long is closed.
    pub handshake_timeout: Duration,
}

/// A connection of the gRPC port, holding its slot until it drops.
pub struct GrpcConnection {
    stream: TcpStream,
    /// Until the opening bytes are in: their deadline, and how many came.
    opening: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
    /// The port's count of open connections, which this one is part of.
    open: Arc<AtomicUsize>,
}

/// The gRPC port's listening socket, and a spare descriptor taken with it.
pub struct GrpcListener {
    listener: TcpListener,
    /// Taken at bind, before the server says it is ready: taken when the
    /// accept loop first runs, a flood could have spent every descriptor.
    spare: Option<Socket>,
}

impl GrpcListener {
    /// Binds `addr` (on the tokio runtime).
    pub async fn bind(addr: std::net::SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let spare = Some(SockRef::from(&listener).try_clone()?);
        Ok(Self { listener, spare })
    }

    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// The connections tonic serves: accepted with `TCP_NODELAY` while fewer than
/// `limits.max_connections` are open (the rest closed and counted).
pub fn incoming(listener: GrpcListener, limits: GrpcLimits) -> impl Stream<Item = io::Result<GrpcConnection>> {
    let GrpcListener { listener, spare } = listener;
    let acceptor =
        Acceptor { listener, limits, open: Arc::new(AtomicUsize::new(0)), refusing: false, failing: false, spare };
    futures_util::stream::unfold(acceptor, |mut acceptor| async move {
        let connection = acceptor.next().await;
        Some((Ok(connection), acceptor))
    })
}

/// The accept loop's state.
struct Acceptor {
    listener: TcpListener,
    limits: GrpcLimits,
    /// Connections open now (each [`GrpcConnection`] gives its one back).
    open: Arc<AtomicUsize>,
    /// Whether the connection accepted last was past the cap: a flood past it
    /// is logged once, when it starts, and counted for each connection.
    refusing: bool,
    /// Whether the last accept failed: a run of failures is logged once.
    failing: bool,
    /// A spare descriptor, given up to close the waiting connections when the
    /// process has none left (see [`refuse_waiting`]).
    spare: Option<Socket>,
}

impl Acceptor {
    /// Waits for the next connection the cap admits.
    async fn next(&mut self) -> GrpcConnection {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                // A client that gave up while queued: the next may be fine.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    self.failed(&e);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            if std::mem::replace(&mut self.failing, false) {
                tracing::info!("accepting gRPC connections again");
            }
            if self.open.load(Ordering::Acquire) >= self.limits.max_connections {
                metrics::counter!("jimbus_grpc_connections_closed_total", "reason" => "over_limit").increment(1);
                if !std::mem::replace(&mut self.refusing, true) {
                    let max = self.limits.max_connections;
                    tracing::warn!(max, "closing gRPC connections past --max-grpc-connections");
                }
                continue;
            }
            self.refusing = false;
            // Without TCP_NODELAY a delivery written behind an unacknowledged
            // one waits for the subscriber's delayed ACK (40 ms on Linux).
            if let Err(e) = stream.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY on a gRPC connection");
            }
            self.open.fetch_add(1, Ordering::AcqRel);
            // Moved, not set: connections end on any thread, in any order.
            metrics::gauge!("jimbus_grpc_connections").increment(1.0);
            let deadline = Box::pin(tokio::time::sleep(self.limits.handshake_timeout));
            return GrpcConnection { stream, opening: Some((deadline, 0)), open: self.open.clone() };
        }
    }

    /// Logs the start of a run of failed accepts and, if the process is out
    /// of descriptors, closes the connections waiting: their clients fail at
    /// once (UNAVAILABLE) and retry, instead of waiting in the kernel's queue.
    fn failed(&mut self, error: &io::Error) {
        let mut closed = 0;
        if out_of_descriptors(error) {
            closed = refuse_waiting(&SockRef::from(&self.listener), &mut self.spare, drop);
            metrics::counter!("jimbus_grpc_connections_closed_total", "reason" => "out_of_descriptors")
                .increment(closed as u64);
        }
        if !std::mem::replace(&mut self.failing, true) {
            tracing::warn!(error = %error, closed, "cannot accept gRPC connections: retrying every 50 ms, and closing waiting connections while the process is out of file descriptors");
        }
    }
}

impl Drop for GrpcConnection {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("jimbus_grpc_connections").decrement(1.0);
    }
}

impl Connected for GrpcConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for GrpcConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        let Some((deadline, seen)) = &mut this.opening else {
            return polled;
        };
        match polled {
            Poll::Ready(Ok(())) => {
                *seen += buf.filled().len() - before;
                if *seen >= OPENING_BYTES {
                    this.opening = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                metrics::counter!("jimbus_grpc_connections_closed_total", "reason" => "handshake_timeout").increment(1);
                tracing::debug!("closed a gRPC connection that did not begin HTTP/2 in time");
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no HTTP/2 preface in time")))
            }
            other => other,
        }
    }
}

impl AsyncWrite for GrpcConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
