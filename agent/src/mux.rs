//! Many byte streams over one tunnel link, with per-stream flow control (see [`crate::protocol`]).
//!
//! Three kinds of task touch a link: one reader (frames in), one writer (frames out, fed by two
//! bounded channels: control frames first, then data), and one pump per stream. A stream's frame
//! skips the writer when it is idle and no stream frame is queued: the stream's own task writes
//! it, which saves a task hand-off per frame (most of a small request's cost) and keeps each
//! stream's frames in order (a frame is written directly only when none is queued). Likewise the
//! reader writes a `data` payload straight to a pumped stream's local socket when nothing of that
//! stream is waiting to be written there, as far as the socket takes it without waiting; the rest
//! is queued for the pump. The reader never
//! waits on anything but the link: data goes into the stream's buffer, which the window bounds, and
//! its own replies (pong, reset) are queued without waiting; if that queue is full the peer is
//! flooding us and the link is closed. So a slow stream can stall only itself, and two sides
//! whose sockets are both full cannot deadlock.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::protocol::{
    self, Frame, Header, LINK_TIMEOUT, Limits, MAX_DATA_PREFIX, MAX_STREAMS, PING_INTERVAL,
    StreamId,
};

/// A link's raw messages: each item is one whole frame as bytes (a WebSocket binary message).
pub trait Transport:
    Stream<Item = io::Result<Bytes>> + Sink<Bytes, Error = io::Error> + Send + Unpin + 'static
{
}
impl<T> Transport for T where
    T: Stream<Item = io::Result<Bytes>> + Sink<Bytes, Error = io::Error> + Send + Unpin + 'static
{
}

/// A link's sending half, shared by the writer task and the streams' direct writes.
type LinkSink = Pin<Box<dyn Sink<Bytes, Error = io::Error> + Send>>;

/// Which end of the link this is: the opener (server) makes streams, the acceptor (agent) takes
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The server: opens streams and numbers them.
    Opener,
    /// The agent: takes each stream the server opens.
    Acceptor,
}

/// Control frames queued and not yet written before the peer counts as flooding.
const CONTROL_QUEUE: usize = 4096;
/// Data frames queued for the writer (all streams share it; each waits its turn).
const DATA_QUEUE: usize = 64;
/// Frames written before one flush.
const WRITE_BATCH: usize = 32;
/// Streams the acceptor has been offered and not yet taken.
const ACCEPT_QUEUE: usize = 128;
/// Credit is returned once a window's quarter was handed on: the sender never runs dry while the
/// receiver keeps up.
const CREDIT_FRACTION: u32 = 4;

/// Why a stream cannot be used any more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// This stream alone is over (`reset` by either side); the link and other streams go on.
    #[error("stream reset: {0}")]
    Reset(String),
    /// The whole link is gone, and every stream with it.
    #[error("tunnel closed: {0}")]
    Closed(String),
}

/// Why a link ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// `goodbye` codes from the peer (`replaced`, `revoked`, ...), or `local`, `timeout`,
    /// `protocol`, `io`, `eof`.
    pub code: String,
    /// Why, in words, for logs.
    pub reason: String,
}

/// A handle to a running link; cheap to clone.
#[derive(Clone)]
pub struct Mux {
    shared: Arc<Shared>,
}

struct Shared {
    /// What the link's protocol version allows.
    limits: Limits,
    streams: Mutex<HashMap<StreamId, Arc<StreamState>>>,
    next_id: AtomicU64,
    control: mpsc::Sender<Frame>,
    data: mpsc::Sender<Outgoing>,
    /// Stream frames given to the writer and not yet in the sink. While any is, every stream
    /// frame goes through the queue, so no frame overtakes one queued before it.
    queued: AtomicUsize,
    /// The link's sending half: the writer holds it for a batch; a stream's task takes it when it
    /// is free and nothing is queued. `None` once the writer closed it.
    sink: tokio::sync::Mutex<Option<LinkSink>>,
    closed: CancellationToken,
    close_reason: Mutex<Option<Closed>>,
}

/// What the writer sends for the streams, in order.
enum Outgoing {
    /// A frame to encode (`open`, `end`, and `data` of [`MuxStream::send`]).
    Frame(Frame),
    /// A whole `data` frame ([`protocol::put_data_prefix`], then the payload), encoded by its
    /// sender: [`pump`] reads stream bytes straight into it.
    Data(Bytes),
}

#[derive(Default)]
struct Inbound {
    /// Payloads received and not yet handed on, as they came (no copy).
    queue: VecDeque<Bytes>,
    /// A payload was taken by [`MuxStream::recv`] and not yet reported [`MuxStream::consumed`].
    in_hand: bool,
    /// The local socket [`pump`] writes this stream to, while it does: the reader writes to it
    /// directly when the queue is empty and nothing is in hand.
    local: Option<Arc<tokio::net::tcp::OwnedWriteHalf>>,
    /// Received and not yet credited back: never above the window.
    outstanding: u32,
    /// Handed on and not yet credited back.
    consumed: u32,
    ended: bool,
    reset: Option<String>,
}

impl Inbound {
    /// Counts `n` bytes handed on; returns the credit to send back now (0: not yet).
    fn hand_on(&mut self, n: usize, window: u32) -> u32 {
        self.consumed += n as u32;
        if self.consumed < window / CREDIT_FRACTION || self.ended {
            return 0;
        }
        let c = self.consumed.min(self.outstanding);
        self.consumed = 0;
        self.outstanding -= c;
        c
    }

    /// Writes what the local socket takes of `payload` now, if nothing is ahead of it; returns
    /// how many bytes it took.
    fn write_through(&self, payload: &[u8]) -> usize {
        match &self.local {
            // An error is the pump's to find on its next write.
            Some(local) if self.queue.is_empty() && !self.in_hand => {
                local.try_write(payload).unwrap_or(0)
            }
            _ => 0,
        }
    }
}

struct Outbound {
    window: u64,
    reset: Option<String>,
    /// This side sent `end`.
    ended: bool,
}

struct StreamState {
    id: StreamId,
    inbound: Mutex<Inbound>,
    readable: Notify,
    outbound: Mutex<Outbound>,
    writable: Notify,
}

impl StreamState {
    fn new(id: StreamId, limits: Limits) -> Arc<StreamState> {
        Arc::new(StreamState {
            id,
            inbound: Mutex::new(Inbound::default()),
            readable: Notify::new(),
            outbound: Mutex::new(Outbound {
                window: limits.window as u64,
                reset: None,
                ended: false,
            }),
            writable: Notify::new(),
        })
    }

    fn reset(&self, reason: &str) {
        lock(&self.inbound)
            .reset
            .get_or_insert_with(|| reason.to_string());
        lock(&self.outbound)
            .reset
            .get_or_insert_with(|| reason.to_string());
        self.readable.notify_one();
        self.writable.notify_one();
    }
}

/// Streams the peer opened (acceptor side).
pub struct Incoming {
    rx: mpsc::Receiver<MuxStream>,
}

impl Incoming {
    /// The next stream, or `None` when the link is closed.
    pub async fn next(&mut self) -> Option<MuxStream> {
        self.rx.recv().await
    }
}

impl Mux {
    /// Starts the reader and writer tasks of a link whose handshake settled on `limits` (both
    /// sides must use the same). The acceptor gets [`Incoming`].
    pub fn start<T: Transport>(
        transport: T,
        role: Role,
        limits: Limits,
    ) -> (Mux, Option<Incoming>) {
        let (sink, stream) = transport.split();
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let (data_tx, data_rx) = mpsc::channel(DATA_QUEUE);
        let shared = Arc::new(Shared {
            limits,
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            control: control_tx,
            data: data_tx,
            queued: AtomicUsize::new(0),
            sink: tokio::sync::Mutex::new(Some(Box::pin(sink))),
            closed: CancellationToken::new(),
            close_reason: Mutex::new(None),
        });
        let (incoming_tx, incoming) = match role {
            Role::Acceptor => {
                let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
                (Some(tx), Some(Incoming { rx }))
            }
            Role::Opener => (None, None),
        };
        tokio::spawn(write_loop(shared.clone(), control_rx, data_rx));
        tokio::spawn(read_loop(shared.clone(), stream, incoming_tx));
        (Mux { shared }, incoming)
    }

    /// Opens a new stream to the peer (opener side).
    pub async fn open(&self) -> Result<MuxStream, StreamError> {
        let s = &self.shared;
        if let Some(c) = self.closed_reason() {
            return Err(StreamError::Closed(c.reason));
        }
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        let state = StreamState::new(id, s.limits);
        {
            let mut streams = lock(&s.streams);
            if streams.len() >= MAX_STREAMS {
                return Err(StreamError::Reset(format!(
                    "too many open streams (at most {MAX_STREAMS})"
                )));
            }
            streams.insert(id, state.clone());
        }
        if s.send(Outgoing::Frame(Frame::new(Header::Open { stream: id })))
            .await
            .is_err()
        {
            lock(&s.streams).remove(&id);
            return Err(StreamError::Closed("the link is gone".into()));
        }
        Ok(MuxStream {
            mux: self.clone(),
            state,
        })
    }

    /// Resolves when the link is closed, with why.
    pub async fn closed(&self) -> Closed {
        self.shared.closed.cancelled().await;
        self.closed_reason().unwrap_or_else(|| Closed {
            code: "local".into(),
            reason: "closed".into(),
        })
    }

    /// Whether the link is closed already, without waiting as [`closed`](Self::closed) does.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    fn closed_reason(&self) -> Option<Closed> {
        if !self.shared.closed.is_cancelled() {
            return None;
        }
        lock(&self.shared.close_reason).clone()
    }

    /// Says goodbye to the peer (best effort) and closes the link; every stream fails.
    pub fn close(&self, code: &str, reason: &str) {
        let bye = Frame::new(Header::Goodbye {
            code: code.into(),
            reason: reason.into(),
        });
        set_reason(&self.shared, "local", reason);
        // The writer sends the goodbye, then closes the link; if it cannot take it, close now.
        if self.shared.control.try_send(bye).is_err() {
            shut(&self.shared);
        }
    }

    /// Streams open right now.
    pub fn stream_count(&self) -> usize {
        lock(&self.shared.streams).len()
    }

    /// What the link's protocol version allows.
    pub fn limits(&self) -> Limits {
        self.shared.limits
    }
}

fn set_reason(shared: &Shared, code: &str, reason: &str) {
    lock(&shared.close_reason).get_or_insert_with(|| Closed {
        code: code.into(),
        reason: reason.into(),
    });
}

impl Shared {
    /// Sends a stream's frame (`open`, `data`, `end`): written by this task when the writer is
    /// idle and no stream frame is queued, else queued for the writer. `Err` when the link is
    /// gone.
    async fn send(&self, out: Outgoing) -> Result<(), ()> {
        if self.queued.load(Ordering::Acquire) == 0
            && let Ok(mut sink) = self.sink.try_lock()
            // Checked again under the lock: the writer counts a frame down only once it is in the
            // sink, and it holds the lock while it does.
            && self.queued.load(Ordering::Acquire) == 0
        {
            let Some(link) = sink.as_mut() else {
                return Err(());
            };
            let Some(bytes) = self.encode(out) else {
                return Ok(());
            };
            let written = tokio::select! {
                r = async {
                    link.feed(bytes).await?;
                    link.flush().await
                } => r,
                _ = self.closed.cancelled() => return Err(()),
            };
            return written.map_err(|e| {
                set_reason(self, "io", &format!("writing to the link: {e}"));
                shut(self);
            });
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.data.send(out).await.map_err(|_| ())
    }

    /// The bytes of an outgoing frame; `None` (and its stream reset) if it cannot be encoded, a
    /// bug on this side.
    fn encode(&self, out: Outgoing) -> Option<Bytes> {
        let frame = match out {
            Outgoing::Data(encoded) => return Some(encoded),
            Outgoing::Frame(frame) => frame,
        };
        match protocol::encode(&frame) {
            Ok(b) => Some(b),
            Err(e) => {
                if let Some(id) = stream_of(&frame.header)
                    && let Some(s) = lock(&self.streams).remove(&id)
                {
                    s.reset(&format!("cannot encode a frame: {e}"));
                }
                None
            }
        }
    }
}

/// Ends the link for good: every stream is reset and every waiter wakes.
fn shut(shared: &Shared) {
    set_reason(shared, "local", "closed");
    shared.closed.cancel();
    let streams: Vec<_> = lock(&shared.streams).drain().map(|(_, s)| s).collect();
    let reason = lock(&shared.close_reason)
        .as_ref()
        .map(|c| c.reason.clone())
        .unwrap_or_default();
    for s in streams {
        s.reset(&format!("tunnel closed: {reason}"));
    }
}

async fn write_loop(
    shared: Arc<Shared>,
    mut control: mpsc::Receiver<Frame>,
    mut data: mpsc::Receiver<Outgoing>,
) {
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    let mut nonce = 0u64;
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    // Stream frames in this batch (counted in `Shared::queued`).
    let mut stream_frames = 0;
    'link: loop {
        let first = tokio::select! {
            biased;
            _ = shared.closed.cancelled() => break,
            Some(f) = control.recv() => Outgoing::Frame(f),
            _ = ping.tick() => {
                nonce += 1;
                Outgoing::Frame(Frame::new(Header::Ping { nonce }))
            }
            Some(f) = data.recv() => {
                stream_frames += 1;
                f
            }
            else => break,
        };
        // A stream's direct write may hold the sink for a moment.
        let mut sink = tokio::select! {
            biased;
            _ = shared.closed.cancelled() => break,
            g = shared.sink.lock() => g,
        };
        let Some(link) = sink.as_mut() else { break };
        // Whatever else is queued goes out in the same flush: one write for many frames.
        batch.push(first);
        while batch.len() < WRITE_BATCH {
            match control.try_recv() {
                Ok(f) => batch.push(Outgoing::Frame(f)),
                Err(_) => match data.try_recv() {
                    Ok(f) => {
                        stream_frames += 1;
                        batch.push(f);
                    }
                    Err(_) => break,
                },
            }
        }
        let mut goodbye = false;
        for out in batch.drain(..) {
            goodbye |=
                matches!(&out, Outgoing::Frame(f) if matches!(f.header, Header::Goodbye { .. }));
            let Some(bytes) = shared.encode(out) else {
                continue;
            };
            let fed = tokio::select! {
                r = link.feed(bytes) => r,
                _ = shared.closed.cancelled() => break 'link,
            };
            if let Err(e) = fed {
                set_reason(&shared, "io", &format!("writing to the link: {e}"));
                break 'link;
            }
            if goodbye {
                break;
            }
        }
        // The stream frames of this batch are in the sink: direct writes may follow them.
        shared.queued.fetch_sub(stream_frames, Ordering::AcqRel);
        stream_frames = 0;
        let flushed = tokio::select! {
            r = link.flush() => r,
            _ = shared.closed.cancelled() => break,
        };
        if let Err(e) = flushed {
            set_reason(&shared, "io", &format!("writing to the link: {e}"));
            break;
        }
        if goodbye {
            break;
        }
    }
    // Closed and dropped here, so the link's socket does not outlive the writer.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let link = shared.sink.lock().await.take();
        if let Some(mut link) = link {
            let _ = link.close().await;
        }
    })
    .await;
    shut(&shared);
}

fn stream_of(h: &Header) -> Option<StreamId> {
    match h {
        Header::Open { stream }
        | Header::Data { stream }
        | Header::End { stream }
        | Header::Reset { stream, .. }
        | Header::Credit { stream, .. } => Some(*stream),
        _ => None,
    }
}

async fn read_loop(
    shared: Arc<Shared>,
    mut stream: futures::stream::SplitStream<impl Transport>,
    incoming: Option<mpsc::Sender<MuxStream>>,
) {
    let (code, reason) = loop {
        let next = tokio::select! {
            _ = shared.closed.cancelled() => return,
            r = tokio::time::timeout(LINK_TIMEOUT, stream.next()) => r,
        };
        let message = match next {
            Err(_) => {
                break (
                    "timeout".to_string(),
                    format!("nothing from the peer for {}s", LINK_TIMEOUT.as_secs()),
                );
            }
            Ok(None) => break ("eof".into(), "the peer closed the link".into()),
            Ok(Some(Err(e))) => break ("io".into(), format!("reading from the link: {e}")),
            Ok(Some(Ok(m))) => m,
        };
        let frame = match protocol::decode(message) {
            Ok(f) => f,
            Err(e) => break ("protocol".into(), e.to_string()),
        };
        if let Err(reason) = handle(&shared, frame, incoming.as_ref()) {
            break reason;
        }
    };
    set_reason(&shared, &code, &reason);
    let told = code == "protocol"
        && shared
            .control
            .try_send(Frame::new(Header::Goodbye {
                code: code.clone(),
                reason: reason.clone(),
            }))
            .is_ok();
    if told {
        // The writer closes the link after the goodbye; a writer stuck on a full socket does not
        // get to keep it open.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    shut(&shared);
}

/// One inbound frame; `Err` closes the link with (code, reason).
fn handle(
    shared: &Arc<Shared>,
    frame: Frame,
    incoming: Option<&mpsc::Sender<MuxStream>>,
) -> Result<(), (String, String)> {
    let violation = |what: String| Err(("protocol".to_string(), what));
    let control = |f: Frame| {
        shared.control.try_send(f).map_err(|_| {
            (
                "protocol".to_string(),
                "the peer sends faster than its replies can be written".to_string(),
            )
        })
    };
    let find = |id: StreamId| lock(&shared.streams).get(&id).cloned();
    match frame.header {
        Header::Ping { nonce } => control(Frame::new(Header::Pong { nonce }))?,
        Header::Pong { .. } => {}
        Header::Goodbye { code, reason } => return Err((code, reason)),
        Header::Hello { .. } | Header::Welcome { .. } => {
            return violation("hello/welcome after the handshake".into());
        }
        Header::Open { stream } => {
            let Some(incoming) = incoming else {
                return violation("the server does not accept streams".into());
            };
            let mut streams = lock(&shared.streams);
            if streams.contains_key(&stream) {
                return violation(format!("stream {stream} opened twice"));
            }
            if streams.len() >= MAX_STREAMS {
                drop(streams);
                return control(Frame::new(Header::Reset {
                    stream,
                    reason: format!("too many open streams (at most {MAX_STREAMS})"),
                }));
            }
            let state = StreamState::new(stream, shared.limits);
            streams.insert(stream, state.clone());
            drop(streams);
            let s = MuxStream {
                mux: Mux {
                    shared: shared.clone(),
                },
                state,
            };
            if incoming.try_send(s).is_err() {
                lock(&shared.streams).remove(&stream);
                control(Frame::new(Header::Reset {
                    stream,
                    reason: "the agent is not taking new streams".into(),
                }))?;
            }
        }
        Header::Data { stream } => {
            // Data for a stream this side already dropped (reset) is late, not wrong.
            let Limits { chunk, window } = shared.limits;
            if frame.payload.len() > chunk {
                return violation(format!(
                    "a data frame of {} bytes on stream {stream}, over this link's {chunk}",
                    frame.payload.len()
                ));
            }
            if let Some(s) = find(stream) {
                let mut inb = lock(&s.inbound);
                let len = frame.payload.len() as u32;
                if inb.ended {
                    return violation(format!("data on stream {stream} after its end"));
                }
                if inb.outstanding + len > window {
                    return violation(format!(
                        "stream {stream} overran its window ({} + {len} > {window} bytes)",
                        inb.outstanding
                    ));
                }
                inb.outstanding += len;
                let through = inb.write_through(&frame.payload);
                if through < frame.payload.len() {
                    inb.queue.push_back(frame.payload.slice(through..));
                }
                let credit = inb.hand_on(through, window);
                let queued = !inb.queue.is_empty();
                drop(inb);
                if queued {
                    s.readable.notify_one();
                }
                if credit > 0 {
                    control(Frame::new(Header::Credit {
                        stream,
                        bytes: credit,
                    }))?;
                }
            }
        }
        Header::End { stream } => {
            if let Some(s) = find(stream) {
                lock(&s.inbound).ended = true;
                s.readable.notify_one();
                maybe_forget(shared, &s);
            }
        }
        Header::Reset { stream, reason } => {
            if let Some(s) = lock(&shared.streams).remove(&stream) {
                s.reset(&reason);
            }
        }
        Header::Credit { stream, bytes } => {
            if let Some(s) = find(stream) {
                let mut out = lock(&s.outbound);
                out.window += bytes as u64;
                if out.window > shared.limits.window as u64 {
                    return violation(format!(
                        "stream {stream} was credited beyond its window ({} bytes)",
                        out.window
                    ));
                }
                drop(out);
                s.writable.notify_one();
            }
        }
    }
    Ok(())
}

/// Drops a stream from the table once both directions are over.
fn maybe_forget(shared: &Shared, s: &StreamState) {
    let done_in = lock(&s.inbound).ended;
    let done_out = lock(&s.outbound).ended;
    if done_in && done_out {
        lock(&shared.streams).remove(&s.id);
    }
}

/// One stream of a link.
pub struct MuxStream {
    mux: Mux,
    state: Arc<StreamState>,
}

impl MuxStream {
    /// The stream's id on its link, for logs.
    pub fn id(&self) -> StreamId {
        self.state.id
    }

    /// Sends bytes, in chunks, waiting for window as needed.
    pub async fn send(&self, mut bytes: Bytes) -> Result<(), StreamError> {
        while !bytes.is_empty() {
            let n = self
                .reserve(bytes.len().min(self.mux.shared.limits.chunk))
                .await?;
            let piece = bytes.split_to(n);
            self.queue(Outgoing::Frame(Frame::data(self.state.id, piece)))
                .await?;
        }
        Ok(())
    }

    async fn queue(&self, out: Outgoing) -> Result<(), StreamError> {
        self.mux.shared.send(out).await.map_err(|_| self.gone())
    }

    /// Reads from `rd` straight into a `data` frame (no copy of the bytes on this side): waits
    /// for window, reads at most that much (and at most a chunk), and queues the frame. `Ok(0)`
    /// at the end of `rd`. `buf` is reused from call to call.
    async fn send_from<R>(&self, rd: &mut R, buf: &mut BytesMut) -> Result<usize, String>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        let want = self
            .reserve(self.mux.shared.limits.chunk)
            .await
            .map_err(|e| e.to_string())?;
        buf.clear();
        buf.reserve(MAX_DATA_PREFIX + want);
        protocol::put_data_prefix(self.state.id, buf);
        let prefix = buf.len();
        let read = rd.read_buf(&mut (&mut *buf).limit(want)).await;
        let n = buf.len() - prefix;
        // What the read did not fill goes back to the window.
        self.unreserve(want - n);
        read.map_err(|e| format!("reading the local connection: {e}"))?;
        if n > 0 {
            self.queue(Outgoing::Data(buf.split().freeze()))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(n)
    }

    /// Returns window taken by [`Self::reserve`] and not used.
    fn unreserve(&self, n: usize) {
        if n > 0 {
            lock(&self.state.outbound).window += n as u64;
            self.state.writable.notify_one();
        }
    }

    /// Waits until at least one byte of window is free; takes up to `want` of it.
    async fn reserve(&self, want: usize) -> Result<usize, StreamError> {
        loop {
            {
                let mut out = lock(&self.state.outbound);
                if let Some(r) = &out.reset {
                    return Err(StreamError::Reset(r.clone()));
                }
                if out.window > 0 {
                    let n = (want as u64).min(out.window);
                    out.window -= n;
                    return Ok(n as usize);
                }
            }
            tokio::select! {
                _ = self.state.writable.notified() => {}
                _ = self.mux.shared.closed.cancelled() => return Err(self.gone()),
            }
        }
    }

    /// Half-closes: no more bytes from this side.
    pub async fn finish(&self) -> Result<(), StreamError> {
        lock(&self.state.outbound).ended = true;
        self.queue(Outgoing::Frame(Frame::new(Header::End {
            stream: self.state.id,
        })))
        .await?;
        maybe_forget(&self.mux.shared, &self.state);
        Ok(())
    }

    /// The next bytes from the peer; `Ok(None)` after the peer's `end`. Call
    /// [`Self::consumed`] once they are handed on, or the peer runs out of window.
    pub async fn recv(&self) -> Result<Option<Bytes>, StreamError> {
        loop {
            {
                let mut inb = lock(&self.state.inbound);
                if let Some(bytes) = inb.queue.pop_front() {
                    inb.in_hand = true;
                    return Ok(Some(bytes));
                }
                if let Some(r) = &inb.reset {
                    return Err(StreamError::Reset(r.clone()));
                }
                if inb.ended {
                    return Ok(None);
                }
            }
            tokio::select! {
                _ = self.state.readable.notified() => {}
                _ = self.mux.shared.closed.cancelled() => return Err(self.gone()),
            }
        }
    }

    /// `n` received bytes were handed on: credit them back in steps.
    pub async fn consumed(&self, n: usize) -> Result<(), StreamError> {
        let credit = {
            let mut inb = lock(&self.state.inbound);
            inb.in_hand = false;
            inb.hand_on(n, self.mux.shared.limits.window)
        };
        if credit > 0 {
            self.mux
                .shared
                .control
                .send(Frame::new(Header::Credit {
                    stream: self.state.id,
                    bytes: credit,
                }))
                .await
                .map_err(|_| self.gone())?;
        }
        Ok(())
    }

    /// Ends the stream both ways, telling the peer why.
    pub fn reset(&self, reason: &str) {
        let known = lock(&self.mux.shared.streams)
            .remove(&self.state.id)
            .is_some();
        self.state.reset(reason);
        if known {
            let _ = self.mux.shared.control.try_send(Frame::new(Header::Reset {
                stream: self.state.id,
                reason: reason.chars().take(200).collect(),
            }));
        }
    }

    fn gone(&self) -> StreamError {
        StreamError::Closed(
            self.mux
                .closed_reason()
                .map(|c| c.reason)
                .unwrap_or_else(|| "the link is gone".into()),
        )
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        // A stream dropped before both sides ended is abandoned: tell the peer.
        let open = lock(&self.mux.shared.streams).contains_key(&self.state.id);
        if open && !self.mux.is_closed() {
            self.reset("abandoned");
        }
    }
}

/// Carries one stream over a TCP connection until both directions are over or either fails; a
/// failure resets the stream with the reason.
pub async fn pump(stream: MuxStream, tcp: tokio::net::TcpStream) {
    let (mut rd, wr) = tcp.into_split();
    let wr = Arc::new(wr);
    lock(&stream.state.inbound).local = Some(wr.clone());
    let up = async {
        let mut buf = BytesMut::new();
        while stream.send_from(&mut rd, &mut buf).await? > 0 {}
        stream.finish().await.map_err(|e| e.to_string())
    };
    let down = async {
        let wr = wr;
        loop {
            match stream.recv().await {
                Ok(Some(bytes)) => {
                    write_all(&wr, &bytes)
                        .await
                        .map_err(|e| format!("writing the local connection: {e}"))?;
                    stream
                        .consumed(bytes.len())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(None) => {
                    lock(&stream.state.inbound).local = None;
                    // The last handle now: shutting it down tells the local side the peer ended.
                    if let Ok(mut wr) = Arc::try_unwrap(wr) {
                        let _ = wr.shutdown().await;
                    }
                    return Ok::<(), String>(());
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    let pumped = tokio::try_join!(up, down);
    lock(&stream.state.inbound).local = None;
    if let Err(reason) = pumped {
        stream.reset(&reason);
    }
}

/// Writes all of `bytes` to a write half that the link's reader may also write to (never at the
/// same time: see [`Inbound::local`]).
async fn write_all(wr: &tokio::net::tcp::OwnedWriteHalf, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        wr.writable().await?;
        match wr.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends one frame on a link that has no mux yet (the handshake).
pub async fn send_frame<T: Transport>(link: &mut T, frame: Frame) -> io::Result<()> {
    let bytes = protocol::encode(&frame).map_err(|e| io::Error::other(e.to_string()))?;
    link.send(bytes).await
}

/// Receives one frame on a link that has no mux yet, waiting at most `within`.
pub async fn recv_frame<T: Transport>(
    link: &mut T,
    within: std::time::Duration,
) -> io::Result<Frame> {
    let message = tokio::time::timeout(within, link.next())
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no frame within {}s", within.as_secs()),
            )
        })?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "the link closed"))??;
    protocol::decode(message).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a few field updates: a panic cannot leave them half-done.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use tokio_util::codec::{Framed, LengthDelimitedCodec};

    /// Two ends of an in-memory link with a tiny socket buffer, to expose waits and deadlocks.
    fn pair() -> (impl Transport, impl Transport) {
        let (a, b) = tokio::io::duplex(4096);
        let wrap = |io| {
            let codec = LengthDelimitedCodec::builder()
                .max_frame_length(protocol::MAX_FRAME)
                .new_codec();
            Framed::new(io, codec).map_ok(BytesMut::freeze)
        };
        (wrap(a), wrap(b))
    }

    /// An acceptor whose streams echo everything back.
    fn echo(t: impl Transport, limits: Limits) -> Mux {
        let (mux, incoming) = Mux::start(t, Role::Acceptor, limits);
        let mut incoming = incoming.unwrap();
        tokio::spawn(async move {
            while let Some(s) = incoming.next().await {
                tokio::spawn(async move {
                    while let Ok(Some(b)) = s.recv().await {
                        let n = b.len();
                        if s.send(b).await.is_err() || s.consumed(n).await.is_err() {
                            return;
                        }
                    }
                    let _ = s.finish().await;
                });
            }
        });
        mux
    }

    async fn read_all(s: &MuxStream) -> Result<Vec<u8>, StreamError> {
        let mut all = Vec::new();
        while let Some(b) = s.recv().await? {
            all.extend_from_slice(&b);
            s.consumed(b.len()).await?;
        }
        Ok(all)
    }

    #[tokio::test]
    async fn a_large_stream_arrives_intact_through_a_small_window() {
        // Each version's sizes: a frame bigger than the link's chunk would close it.
        for limits in [Limits::V1, Limits::V2] {
            let (a, b) = pair();
            let (opener, _) = Mux::start(a, Role::Opener, limits);
            let _acceptor = echo(b, limits);
            let body: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
            let s = opener.open().await.unwrap();
            let (sent, got) = tokio::join!(
                async {
                    s.send(Bytes::from(body.clone())).await.unwrap();
                    s.finish().await.unwrap();
                },
                read_all(&s)
            );
            let () = sent;
            assert_eq!(got.unwrap(), body, "{limits:?}");
            assert_eq!(opener.stream_count(), 0, "a finished stream is forgotten");
        }
    }

    #[tokio::test]
    async fn a_pumped_connection_crosses_intact_in_frames_of_the_links_size() {
        for limits in [Limits::V1, Limits::V2] {
            let (a, b) = pair();
            let (opener, _) = Mux::start(a, Role::Opener, limits);
            let _acceptor = echo(b, limits);
            let s = opener.open().await.unwrap();
            // `pump` reads the local side straight into frames; the echo sends them back.
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let (mut local, far) = tokio::join!(
                async {
                    tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                        .await
                        .unwrap()
                },
                async { listener.accept().await.unwrap().0 }
            );
            let pumping = tokio::spawn(pump(s, far));
            let body: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
            let (mut rd, mut wr) = tokio::io::split(&mut local);
            let (wrote, got) = tokio::join!(
                async {
                    wr.write_all(&body).await.unwrap();
                    wr.shutdown().await.unwrap();
                },
                async {
                    let mut got = Vec::new();
                    rd.read_to_end(&mut got).await.unwrap();
                    got
                }
            );
            let () = wrote;
            assert_eq!(got, body, "{limits:?}");
            pumping.await.unwrap();
            assert!(!opener.is_closed(), "no frame broke the link's limits");
        }
    }

    #[tokio::test]
    async fn a_stalled_reader_stalls_only_its_own_stream() {
        let (a, b) = pair();
        let limits = Limits::V2;
        let (opener, _) = Mux::start(a, Role::Opener, limits);
        let _acceptor = echo(b, limits);
        // The echo of `stuck` is never read here: its window fills, and its sender waits.
        let stuck = opener.open().await.unwrap();
        let filling = tokio::spawn(async move {
            let r = stuck
                .send(Bytes::from(vec![7u8; 4 * limits.window as usize]))
                .await;
            (stuck, r)
        });
        for round in 0..20u8 {
            let s = opener.open().await.unwrap();
            s.send(Bytes::from(vec![round; 1000])).await.unwrap();
            s.finish().await.unwrap();
            assert_eq!(read_all(&s).await.unwrap(), vec![round; 1000]);
        }
        assert!(
            !filling.is_finished(),
            "the stalled stream waits for credit"
        );
        filling.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_noticed_within_the_link_timeout() {
        let (a, b) = pair();
        let (mux, _) = Mux::start(a, Role::Opener, Limits::V2);
        // The other end holds the socket and never says anything, not even pong.
        let _silent = b;
        let started = tokio::time::Instant::now();
        let closed = mux.closed().await;
        assert_eq!(closed.code, "timeout");
        assert!(started.elapsed() <= LINK_TIMEOUT + std::time::Duration::from_secs(1));
        assert!(matches!(mux.open().await, Err(StreamError::Closed(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn pings_keep_an_idle_link_alive() {
        let (a, b) = pair();
        let (mux, _) = Mux::start(a, Role::Opener, Limits::V2);
        let _acceptor = echo(b, Limits::V2);
        tokio::time::sleep(LINK_TIMEOUT * 10).await;
        assert!(!mux.is_closed());
    }

    #[tokio::test]
    async fn garbage_closes_the_link_with_the_reason_and_fails_open_streams() {
        let (a, mut b) = pair();
        let (mux, _) = Mux::start(a, Role::Opener, Limits::V2);
        let s = mux.open().await.unwrap();
        b.send(Bytes::from_static(b"\0\0\0\x09{\"type\":"))
            .await
            .unwrap();
        let closed = mux.closed().await;
        assert_eq!(closed.code, "protocol");
        assert!(
            closed.reason.contains("truncated frame"),
            "{}",
            closed.reason
        );
        assert!(
            s.recv().await.is_err(),
            "a stream in flight fails, it does not hang"
        );
    }

    #[tokio::test]
    async fn overrunning_the_window_is_a_protocol_error() {
        for limits in [Limits::V1, Limits::V2] {
            let (a, mut b) = pair();
            let (mux, incoming) = Mux::start(a, Role::Acceptor, limits);
            let mut incoming = incoming.unwrap();
            send_frame(&mut b, Frame::new(Header::Open { stream: 1 }))
                .await
                .unwrap();
            let _s = incoming.next().await.unwrap();
            let chunk = Bytes::from(vec![0; limits.chunk]);
            for _ in 0..(limits.window as usize / limits.chunk + 1) {
                if send_frame(&mut b, Frame::data(1, chunk.clone()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let closed = mux.closed().await;
            assert_eq!(closed.code, "protocol");
            assert!(
                closed.reason.contains("overran its window"),
                "{limits:?}: {}",
                closed.reason
            );
        }
    }

    #[tokio::test]
    async fn a_version_1_link_refuses_a_version_2_frame() {
        let (a, mut b) = pair();
        let (mux, incoming) = Mux::start(a, Role::Acceptor, Limits::V1);
        let mut incoming = incoming.unwrap();
        send_frame(&mut b, Frame::new(Header::Open { stream: 1 }))
            .await
            .unwrap();
        let _s = incoming.next().await.unwrap();
        let big = Bytes::from(vec![0; Limits::V1.chunk + 1]);
        send_frame(&mut b, Frame::data(1, big)).await.unwrap();
        let closed = mux.closed().await;
        assert_eq!(closed.code, "protocol");
        assert!(
            closed.reason.contains("over this link's 16384"),
            "{}",
            closed.reason
        );
    }
}
