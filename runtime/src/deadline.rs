//! Deadlines after the request head: a request body that stops arriving (`--body-timeout`) and a client
//! that stops taking the response (`--send-timeout`). Without them such a client holds its connection, its
//! loop's connection slot and whatever was buffered for it (a body collected so far, a response queued)
//! forever.
//!
//! Both measure *no progress*, as nginx's `client_body_timeout` and `send_timeout` do: the clock runs only
//! while a read or write is waiting on the client, and restarts at each byte that moves. A client that
//! trickles but keeps moving is bounded by the other limits (`--max-body-size`, `--max-connections`), not
//! by these.
//!
//! Invariants: the clock never runs while percore itself is the one not reading or writing (an app that
//! has not asked for the next body chunk, a response not produced yet); a read or write that was ready is
//! never failed, however late it was polled (a loop stalled by a long handler does not time out its
//! clients).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The clock of one direction: started when an operation first waits, stopped by progress.
struct Stall {
    timeout: Duration,
    /// Created at the first wait and reset afterwards: one allocation per connection (or body), not per wait.
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl Stall {
    fn new(timeout: Duration) -> Self {
        Stall {
            timeout,
            timer: None,
            waiting: false,
        }
    }

    fn progressed(&mut self) {
        self.waiting = false;
    }

    /// The operation is pending: starts the clock if it was not running, and registers the task to be woken
    /// when it runs out. True when it has run out.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.timeout;
        let timer = match (&mut self.timer, self.waiting) {
            (Some(timer), true) => timer,
            (Some(timer), false) => {
                timer.as_mut().reset(tokio::time::Instant::now() + timeout);
                timer
            }
            (None, _) => self.timer.insert(Box::pin(tokio::time::sleep(timeout))),
        };
        self.waiting = true;
        timer.as_mut().poll(cx).is_ready()
    }
}

/// A connection's byte stream (TCP or Unix, under TLS when there is TLS) whose writes fail with
/// `TimedOut` once the client has taken no byte for `--send-timeout`. hyper then closes the connection, and
/// a streamed response's producer is told the client is gone.
///
/// Only writes are watched: flushing and shutting down a raw socket never wait (TLS's `close_notify` is a
/// write, so it is watched too).
pub struct SendDeadline<IO> {
    io: IO,
    stall: Stall,
}

impl<IO> SendDeadline<IO> {
    pub fn new(io: IO, timeout: Duration) -> Self {
        SendDeadline {
            io,
            stall: Stall::new(timeout),
        }
    }

    fn watch(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Pending if self.stall.expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no response bytes for --send-timeout",
            ))),
            Poll::Pending => Poll::Pending,
            ready => {
                self.stall.progressed();
                ready
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for SendDeadline<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for SendDeadline<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Why a request body could not be read to its end.
#[derive(Debug)]
pub enum BodyReadError {
    /// No byte of it arrived for `--body-timeout` while it was being read.
    TimedOut,
    /// hyper's error: the client left, or the body is malformed.
    Hyper(hyper::Error),
}

impl BodyReadError {
    /// The client closed the connection before the end of the body (not the client's malformed input).
    pub fn client_left(&self) -> bool {
        matches!(self, BodyReadError::Hyper(err) if err.is_incomplete_message() || err.is_closed())
    }
}

impl std::fmt::Display for BodyReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyReadError::TimedOut => f.write_str("no request body bytes for --body-timeout"),
            BodyReadError::Hyper(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for BodyReadError {}

/// A request body that fails with `BodyReadError::TimedOut` when a frame has been awaited for
/// `--body-timeout` without a byte arriving. The clock runs only while a frame is awaited: an app that
/// reads its body slowly is not the client's fault.
pub struct TimedBody {
    incoming: Incoming,
    stall: Stall,
}

impl TimedBody {
    pub fn new(incoming: Incoming, timeout: Duration) -> Self {
        TimedBody {
            incoming,
            stall: Stall::new(timeout),
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BodyReadError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyReadError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Pending if this.stall.expired(cx) => {
                Poll::Ready(Some(Err(BodyReadError::TimedOut)))
            }
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => {
                this.stall.progressed();
                Poll::Ready(frame.map(|frame| frame.map_err(BodyReadError::Hyper)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn a_write_the_client_never_takes_fails_after_the_timeout() {
        runtime().block_on(async {
            let (server, _client) = tokio::io::duplex(16);
            let mut server = SendDeadline::new(server, Duration::from_secs(5));
            server.write_all(&[1; 16]).await.unwrap();
            let started = tokio::time::Instant::now();
            let err = server.write_all(&[2; 16]).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert!(started.elapsed() >= Duration::from_secs(5));
        });
    }

    #[test]
    fn a_slow_reader_that_keeps_taking_bytes_is_not_timed_out() {
        runtime().block_on(async {
            let (server, mut client) = tokio::io::duplex(16);
            let mut server = SendDeadline::new(server, Duration::from_secs(5));
            let reader = tokio::spawn(async move {
                let mut buf = [0; 4];
                let mut total = 0;
                while total < 160 {
                    tokio::time::sleep(Duration::from_secs(4)).await;
                    total += client.read(&mut buf).await.unwrap();
                }
                total
            });
            server.write_all(&[7; 160]).await.unwrap();
            drop(server);
            assert_eq!(reader.await.unwrap(), 160);
        });
    }

    #[test]
    fn a_write_that_became_ready_is_not_failed_however_late_it_is_polled() {
        runtime().block_on(async {
            let (server, mut client) = tokio::io::duplex(4);
            let mut server = SendDeadline::new(server, Duration::from_secs(5));
            server.write_all(&[1; 4]).await.unwrap();
            // The write waits, then the client reads: room again, but the writer is polled only much later
            // (a loop busy with a long handler).
            let mut write = Box::pin(server.write_all(&[2; 4]));
            assert!(futures_poll_once(write.as_mut()).await.is_none());
            client.read_exact(&mut [0; 4]).await.unwrap();
            tokio::time::advance(Duration::from_secs(60)).await;
            write.await.unwrap();
        });
    }

    /// Polls `future` once: its output if it was ready.
    async fn futures_poll_once<F: Future + Unpin>(mut future: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut future).poll(cx) {
                Poll::Ready(output) => Some(output),
                Poll::Pending => None,
            })
        })
        .await
    }
}
