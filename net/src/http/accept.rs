//! The HTTP port's listening socket on one shard: accepting its connections
//! with as few system calls as the kernel allows, and what a shard does when
//! accepting fails.
//!
//! Field mods open a connection per request, so what accepting costs is paid
//! per event. glommio's `TcpListener::accept` spends three `fcntl`s on every
//! attempt (it makes its blocking socket non-blocking, tries `accept`, and
//! restores the flags), and the server then asked for the peer's address
//! (`getpeername`) and set `TCP_NODELAY` (`setsockopt`): five system calls a
//! connection besides the accept itself. [`HttpSocket`] keeps its socket
//! non-blocking and sets `TCP_NODELAY` on it once, which Linux copies to every
//! connection it accepts, so while connections are waiting each costs one
//! `accept4`, which also returns the peer's address. Only when none is waiting
//! does it fall back to glommio's accept, which waits in io_uring.
//!
//! A failed accept (most often the process out of file descriptors, which
//! would fail again at once) is counted, logged when a run of failures starts
//! and when it ends, and retried after `ACCEPT_BACKOFF`; a client that gave
//! up while queued is no failure, and the next accept follows at once. While
//! the process is out of descriptors, the shard gives up a spare one to take
//! each waiting connection, answers it 503 with `Retry-After` and closes it,
//! so that a client is told to come back instead of hanging in the kernel's
//! queue. This module must never serve a connection: it hands each one over
//! with its peer's address.

use crate::http::conn::answer_bytes;
use crate::observe::per_thread;
use glommio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::time::Duration;

/// The connections a listening socket queues before the kernel refuses more
/// (glommio's own bind uses the same).
const BACKLOG: i32 = 1024;

/// How long a shard waits to accept again after an accept failed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The most of a refused connection's request read before it is closed:
/// closing a socket with unread bytes resets it, and the reset can reach the
/// client before the 503 it was sent.
const REFUSED_READ: usize = 16 * 1024;

/// One shard's listening socket on the HTTP port: two descriptors of the same
/// open socket, one for each way of accepting, and a third held in reserve.
pub struct HttpSocket {
    /// The shard that accepts on it (named in logs).
    shard: usize,
    /// Accepts with `accept4` while connections are waiting. Non-blocking,
    /// with `TCP_NODELAY` for its connections to inherit.
    socket: Socket,
    /// glommio's listener on a duplicate descriptor: waits in io_uring for the
    /// next connection when none is waiting.
    waiting: TcpListener,
    /// A spare descriptor (another duplicate), closed when the process has
    /// none left so that a waiting connection can take its place and be
    /// refused; `None` until one can be taken back.
    spare: Cell<Option<Socket>>,
    /// Accepts failed since the last one that succeeded.
    failures: Cell<u64>,
}

impl HttpSocket {
    /// Binds `address` with SO_REUSEPORT, so that every shard listens on the
    /// same port and the kernel spreads connections over them.
    pub fn bind(shard: usize, address: SocketAddr) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_port(true)?;
        socket.bind(&SockAddr::from(address))?;
        socket.listen(BACKLOG)?;
        // A response written while the previous one is unacknowledged must not
        // wait for the client's delayed ACK (Nagle). Accepted sockets inherit
        // the option from the listening one.
        socket.set_nodelay(true)?;
        socket.set_nonblocking(true)?;
        let duplicate = socket.try_clone()?.into_raw_fd();
        // SAFETY: `duplicate` is a fresh descriptor of a bound, listening TCP
        // socket, and nothing else owns it: the listener closes it.
        let waiting = unsafe { TcpListener::from_raw_fd(duplicate) };
        let spare = Cell::new(Some(socket.try_clone()?));
        Ok(Self { shard, socket, waiting, spare, failures: Cell::new(0) })
    }

    /// The address the socket listens on (its port, when bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()?.as_socket().ok_or_else(|| io::Error::other("not an IP socket"))
    }

    /// The next connection and its peer's address (`None` if the kernel could
    /// not tell it), however many accepts fail first.
    pub async fn next(&self) -> (TcpStream, Option<SocketAddr>) {
        loop {
            match self.accept().await {
                Ok(accepted) => {
                    self.accepting_again();
                    return accepted;
                }
                // A client that gave up while queued: the next may be fine.
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted) => {}
                Err(e) => {
                    self.failed(&e);
                    glommio::timer::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }

    /// One accept: `accept4` if a connection is waiting, else glommio's.
    async fn accept(&self) -> io::Result<(TcpStream, Option<SocketAddr>)> {
        match self.socket.accept() {
            Ok((connection, peer)) => Ok((TcpStream::from(connection), peer.as_socket())),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let stream = self.waiting.accept().await.map_err(io::Error::from)?;
                let peer = stream.peer_addr().ok();
                Ok((stream, peer))
            }
            Err(e) => Err(e),
        }
    }

    /// Counts a failed accept, logs the start of a run of them, and refuses
    /// the waiting connections if the process is out of descriptors.
    fn failed(&self, error: &io::Error) {
        per_thread!(Counter, counter!("jimbus_http_accept_failures_total")).with(|c| c.increment(1));
        let mut refused = 0;
        if out_of_descriptors(error) {
            let mut spare = self.spare.take();
            refused = refuse_waiting(&self.socket, &mut spare, refuse);
            self.spare.set(spare);
            metrics::counter!("jimbus_http_connections_refused_total", "reason" => "out_of_descriptors")
                .increment(refused as u64);
        }
        if self.failures.replace(self.failures.get() + 1) == 0 {
            tracing::warn!(
                shard = self.shard,
                error = %error,
                refused,
                "cannot accept connections: retrying every 50 ms, and answering waiting connections 503 while the process is out of file descriptors"
            );
        }
    }

    /// Logs the end of a run of failed accepts, and takes a spare descriptor
    /// back if refusing could not.
    fn accepting_again(&self) {
        if self.failures.get() == 0 {
            return;
        }
        let failures = self.failures.replace(0);
        tracing::info!(shard = self.shard, failures, "accepting connections again");
        let spare = self.spare.take().or_else(|| self.socket.try_clone().ok());
        self.spare.set(spare);
    }
}

/// Whether `error` says the process, or the system, has no file descriptor left.
pub fn out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Closes the `spare` descriptor and takes the connections waiting on
/// `listener` into its place one at a time (at most a backlog's worth),
/// handing each to `refuse`; then takes a spare back, a duplicate of
/// `listener`. Returns how many it refused. Another thread can take the
/// descriptor a spare gave up (the gRPC port's accept loop, `grpc::accept`,
/// shares this; so can any file open), leaving no spare to take back: without
/// one it first tries to take one now, and if no descriptor is free it
/// refuses nothing.
pub fn refuse_waiting(listener: &Socket, spare: &mut Option<Socket>, refuse: impl Fn(std::net::TcpStream)) -> usize {
    let Some(freed) = spare.take().or_else(|| listener.try_clone().ok()) else {
        return 0;
    };
    drop(freed);
    let mut refused = 0;
    // Ends when none is waiting, or when another thread took the freed
    // descriptor first (EMFILE again).
    while refused < BACKLOG as usize {
        let Ok((connection, _)) = listener.accept() else {
            break;
        };
        refuse(connection.into());
        refused += 1;
    }
    *spare = listener.try_clone().ok();
    refused
}

/// Answers a connection 503 with `Retry-After` and closes it, without waiting
/// for it: what its client already sent is read first (up to
/// [`REFUSED_READ`]), so that the close does not reset the answer away.
fn refuse(mut connection: std::net::TcpStream) {
    if connection.set_nonblocking(true).is_err() {
        return;
    }
    let mut scratch = [0; 4096];
    let mut read = 0;
    while read < REFUSED_READ {
        match connection.read(&mut scratch) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    let answer = answer_bytes(503, "Service Unavailable", "the server is out of file descriptors, retry later");
    // The answer fits in a fresh socket's send buffer; a client that reads
    // nothing loses it, and is closed all the same.
    let _ = connection.write_all(answer.as_bytes());
    let _ = connection.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    use std::io::{Read, Write};
    use std::os::unix::io::AsRawFd;

    /// Both ways of accepting give a connection that has `TCP_NODELAY`, is
    /// blocking as glommio's own are, carries bytes both ways, and knows its
    /// peer. The first connection arrives after `accept` found none and went
    /// to wait in io_uring; the next two are queued before `accept` is called.
    #[test]
    fn accepted_connections_have_their_peer_and_no_delay() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async move {
                let socket = HttpSocket::bind(0, "127.0.0.1:0".parse().unwrap()).unwrap();
                let address = socket.local_addr().unwrap();
                let mut waiting = Box::pin(socket.next());
                assert!(futures_lite::future::poll_once(&mut waiting).await.is_none(), "no connection yet");
                let first = std::net::TcpStream::connect(address).unwrap();
                let mut accepted = vec![waiting.await];
                let queued =
                    [std::net::TcpStream::connect(address).unwrap(), std::net::TcpStream::connect(address).unwrap()];
                for _ in &queued {
                    accepted.push(socket.next().await);
                }
                for (mut client, (mut stream, peer)) in std::iter::once(first).chain(queued).zip(accepted) {
                    assert_eq!(peer, Some(client.local_addr().unwrap()));
                    assert!(stream.nodelay().unwrap(), "TCP_NODELAY is inherited from the listening socket");
                    // SAFETY: F_GETFL only reads the open descriptor's flags.
                    let flags = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_GETFL) };
                    assert_eq!(flags & libc::O_NONBLOCK, 0, "the connection blocks, as glommio's accept gives it");
                    stream.write_all(b"ok").await.unwrap();
                    let mut answer = [0; 2];
                    client.read_exact(&mut answer).unwrap();
                    assert_eq!(&answer, b"ok");
                    client.write_all(b"hi").unwrap();
                    let mut read = [0; 2];
                    stream.read_exact(&mut read).await.unwrap();
                    assert_eq!(&read, b"hi");
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
