//! The WebSocket frame pump: moves frames between an upgraded connection and an app until either side
//! closes. Plain Rust, so the whole path past the 101 runs without Python (the `http_connection` fuzz
//! target drives it with an echo app); `python/asgi/websocket.rs` is the ASGI app side.
//!
//! Both directions are bounded. Client messages are handed to the app, which queues them; while its queue
//! is full (`App::queue_full`) the pump stops reading the socket, so TCP pushes back on the client.
//! Frames for the client come through a bounded channel; when no byte of them reaches the client for
//! `send_timeout` the socket is dropped (`App::abandon`). Tungstenite answers pings; the keepalive pings
//! and closes a client silent past `ping_timeout` with 1011; a message over `max_message` closes with
//! 1009; the server stopping (`App::closing`) closes with 1001. However the pump ends, the app has heard
//! `Event::Disconnect` by then.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;

pub use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
pub use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
pub use tokio_tungstenite::tungstenite::protocol::CloseFrame;
pub use tokio_tungstenite::tungstenite::Message;

use crate::exchange::Latch;

/// What the app hears from the client.
pub enum Event {
    Connect,
    Text(String),
    Binary(Bytes),
    Disconnect(u16),
}

/// The app's side of one WebSocket, as the pump sees it. Everything runs on the connection's loop thread.
pub trait App {
    /// A client message, or the end of the connection (`Event::Disconnect`, the last event).
    fn deliver(&self, event: Event);
    /// Whether the app's queue of client messages is full: the pump reads nothing more until `room` is
    /// notified and the queue has room.
    fn queue_full(&self) -> bool;
    fn room(&self) -> &Notify;
    /// The channel the app's frames come through, for the keepalive's pings.
    fn control(&self) -> mpsc::Sender<Message>;
    /// Closes from the server's side: queues a close frame with `code` (unless the app closed already)
    /// and tells the app (`Event::Disconnect` with the same code).
    fn close_from_server(&self, code: CloseCode, reason: &'static str);
    /// The client read nothing for the send timeout (or the connection ended some other way the app was
    /// not told of): the socket is dropped without a close handshake. The app hears
    /// `Event::Disconnect(1006)` (abnormal closure).
    fn abandon(&self);
    /// Set when the server is stopping: the pump closes with 1001 (going away).
    fn closing(&self) -> &Latch;
}

/// The pump's limits (`--ws-max-size`, `--send-timeout`, `--ws-ping-interval`/`-timeout`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_message: usize,
    pub send_timeout: Duration,
    pub ping_interval: Option<Duration>,
    pub ping_timeout: Duration,
}

/// Waits for hyper's upgrade, then pumps frames between the upgraded connection and `app`.
pub async fn serve_upgraded<A: App>(
    app: &A,
    upgrade: hyper::upgrade::OnUpgrade,
    outgoing: mpsc::Receiver<Message>,
    limits: Limits,
) {
    match upgrade.await {
        Ok(upgraded) => pump(app, TokioIo::new(upgraded), outgoing, limits).await,
        Err(_) => app.deliver(Event::Disconnect(1006)),
    }
}

/// The upgraded socket, noting when a write last made progress (for `--send-timeout`).
struct Progress<IO> {
    io: IO,
    written: Rc<Cell<Instant>>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Progress<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Progress<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.written.set(Instant::now());
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Runs a write to the client (`future`) unless it stalls: None when no byte was written for `timeout`
/// (a client that does not read: its socket buffers are full). A slow reader that takes longer than
/// `timeout` for a large frame is still making progress and is not cut off.
async fn unless_stalled<F: Future>(
    future: F,
    written: &Cell<Instant>,
    timeout: Duration,
) -> Option<F::Output> {
    // The wait for progress starts with this write, not with the last one (the socket may have been idle).
    written.set(Instant::now());
    tokio::pin!(future);
    loop {
        tokio::select! {
            output = &mut future => return Some(output),
            _ = tokio::time::sleep_until(written.get() + timeout) => {
                if written.get() + timeout <= Instant::now() {
                    return None;
                }
            }
        }
    }
}

/// Moves frames between `io` (an upgraded connection) and `app` until either side closes.
pub async fn pump<A: App, IO: AsyncRead + AsyncWrite + Unpin>(
    app: &A,
    io: IO,
    mut outgoing: mpsc::Receiver<Message>,
    limits: Limits,
) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(limits.max_message))
        .max_frame_size(Some(limits.max_message));
    let written = Rc::new(Cell::new(Instant::now()));
    let io = Progress {
        io,
        written: Rc::clone(&written),
    };
    let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let (mut sink, mut stream) = socket.split();
    // When the client last sent anything (a pong included): what the keepalive checks.
    let heard = Cell::new(Instant::now());
    // Set while the reader waits for the app to make room in its queue: the client is not being read, so
    // its silence proves nothing.
    let paused = Cell::new(false);
    // Set once the app has been told the connection ended (`Event::Disconnect`), however it ended: an app
    // never told would wait in `receive()` forever.
    let told = Cell::new(false);
    let keepalive = async {
        let Some(interval) = limits.ping_interval else {
            return std::future::pending().await;
        };
        let sender = app.control();
        loop {
            tokio::time::sleep(interval).await;
            let pinged = Instant::now();
            // A full queue means the app is sending faster than the client reads: no ping goes out this
            // round, so the client's silence proves nothing (a receive-only client sends nothing else).
            if sender.try_send(Message::Ping(Default::default())).is_err() {
                continue;
            }
            tokio::time::sleep(limits.ping_timeout).await;
            if heard.get() < pinged && !paused.get() {
                app.close_from_server(CloseCode::Error, "keepalive ping timeout");
                told.set(true);
                return;
            }
        }
    };
    // Ends when the app's close is sent or the client is gone; true if it stalled (`send_timeout`).
    let writer = async {
        while let Some(frame) = outgoing.recv().await {
            let closing = matches!(frame, Message::Close(_));
            match unless_stalled(sink.send(frame), &written, limits.send_timeout).await {
                None => return true,
                // The connection's own send deadline (`SendDeadline`, under the upgraded socket) measures
                // the same stall and may fire first: the same verdict.
                Some(Err(WsError::Io(err))) if err.kind() == std::io::ErrorKind::TimedOut => {
                    return true
                }
                Some(Err(_)) => break,
                Some(Ok(())) if closing => break,
                Some(Ok(())) => {}
            }
        }
        match unless_stalled(sink.close(), &written, limits.send_timeout).await {
            None => true,
            Some(Err(WsError::Io(err))) => err.kind() == std::io::ErrorKind::TimedOut,
            Some(_) => false,
        }
    };
    let reader = async {
        loop {
            // The app's queue is full: read nothing more until it takes a message. The client's frames
            // stay in the socket buffers, then TCP stops it sending (as uvicorn's `--ws-max-queue`).
            loop {
                let room = app.room().notified();
                if !app.queue_full() {
                    break;
                }
                paused.set(true);
                room.await;
            }
            if paused.replace(false) {
                heard.set(Instant::now());
            }
            let next = stream.next().await;
            heard.set(Instant::now());
            let event = match next {
                Some(Ok(Message::Text(text))) => Event::Text(text.to_string()),
                Some(Ok(Message::Binary(data))) => Event::Binary(data),
                Some(Ok(Message::Close(frame))) => {
                    Event::Disconnect(frame.map(|f| u16::from(f.code)).unwrap_or(1005))
                }
                Some(Ok(_)) => continue, // ping/pong are answered by tungstenite
                Some(Err(WsError::Capacity(_))) => {
                    // Over the size limit: close with 1009 rather than buffer it; the app hears 1009.
                    app.close_from_server(CloseCode::Size, "message too big");
                    told.set(true);
                    break;
                }
                Some(Err(_)) | None => Event::Disconnect(1006),
            };
            let last = matches!(event, Event::Disconnect(_));
            app.deliver(event);
            if last {
                told.set(true);
                break;
            }
        }
    };
    let closing = async {
        app.closing().wait().await;
        app.close_from_server(CloseCode::Away, "server shutting down");
        told.set(true);
        // The close frame is queued: the writer sends it and ends, which ends this select.
        std::future::pending::<()>().await
    };
    tokio::pin!(writer);
    tokio::pin!(reader);
    // Biased, the reader before the keepalive: after a stall of the loop both may be ready at once, and a
    // pong already received must count before the keepalive checks (as asyncio runs I/O before timers).
    tokio::select! {
        biased;
        _ = closing => {}
        _ = &mut reader => {
            // The client is gone or closed: flush what the app already queued (a close reply).
            let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
        }
        _ = keepalive => {
            // No answer to a ping: the close is queued; send it if the socket takes it, then drop it.
            let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
        }
        stalled = &mut writer => {
            if stalled {
                // The client reads nothing: no close handshake is possible, the socket is dropped.
                app.abandon();
                told.set(true);
            } else {
                // We closed: give the client a moment to answer the close before dropping the socket.
                let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
            }
        }
    }
    if !told.get() {
        // A write failed, or the client did not answer our close in time: the socket is dropped, and the
        // app hears 1006 like for any connection that broke.
        app.abandon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Records what the pump tells the app.
    struct Recorder {
        told: RefCell<Vec<String>>,
        room: Notify,
        control: mpsc::Sender<Message>,
        closing: Latch,
    }

    impl App for Recorder {
        fn deliver(&self, event: Event) {
            if let Event::Disconnect(code) = event {
                self.told.borrow_mut().push(format!("disconnect {code}"));
            }
        }
        fn queue_full(&self) -> bool {
            false
        }
        fn room(&self) -> &Notify {
            &self.room
        }
        fn control(&self) -> mpsc::Sender<Message> {
            self.control.clone()
        }
        fn close_from_server(&self, code: CloseCode, _reason: &'static str) {
            self.told
                .borrow_mut()
                .push(format!("disconnect {}", u16::from(code)));
        }
        fn abandon(&self) {
            self.told.borrow_mut().push("disconnect 1006".into());
        }
        fn closing(&self) -> &Latch {
            &self.closing
        }
    }

    #[test]
    fn the_app_is_told_when_the_connections_send_deadline_fails_a_write_first() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            // The client reads nothing; the connection's `SendDeadline` (under every upgraded socket) runs
            // out long before the pump's own stall clock would.
            let (server, _client) = tokio::io::duplex(1024);
            let server = crate::deadline::SendDeadline::new(server, Duration::from_secs(1));
            let (frames, outgoing) = mpsc::channel(64);
            let app = Recorder {
                told: RefCell::new(Vec::new()),
                room: Notify::new(),
                control: frames.clone(),
                closing: Latch::default(),
            };
            for _ in 0..64 {
                frames.try_send(Message::binary(vec![0; 4096])).unwrap();
            }
            let limits = Limits {
                max_message: 1 << 20,
                send_timeout: Duration::from_secs(600),
                ping_interval: None,
                ping_timeout: Duration::from_secs(20),
            };
            tokio::time::timeout(
                Duration::from_secs(60),
                pump(&app, server, outgoing, limits),
            )
            .await
            .expect("the pump did not end");
            assert_eq!(*app.told.borrow(), ["disconnect 1006"]);
        });
    }
}
