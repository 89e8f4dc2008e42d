//! The tunnel protocol between `delegate serve` and `delegate agent connect`, in one place: the
//! frame layout, the header enum, and the limits both sides enforce. Nothing else builds or parses
//! raw frames.
//!
//! Every WebSocket binary message carries exactly one frame:
//!
//! ```text
//! [u32 big-endian header length][header: JSON object][payload: raw bytes]
//! ```
//!
//! The header says what the frame is ([`Header`]); only `data` frames carry a payload (at most
//! [`Limits::chunk`] bytes). Streams are byte streams (a TCP connection each): the server opens them, the
//! agent connects each to its local `opencode serve`, and both sides pump bytes until both halves
//! are closed (`end`) or one side gives up (`reset`). HTTP, SSE and WebSocket upgrades pass through
//! unchanged because the tunnel never looks inside the bytes.
//!
//! Flow control is per stream: a sender may have at most a window of bytes that the receiver has
//! not yet handed on; the receiver returns `credit` as it writes them out. A slow reader therefore
//! stops only its own stream's sender, and no frame is ever dropped.
//!
//! Versions: the frame layout is the same in every version; what a version changes is the largest
//! `data` payload and the window ([`Limits::of`]). Version 2 moves 16 times the bytes per frame
//! and per window of version 1, so a download costs a sixteenth of the per-frame work and does not
//! wait for credit on a fast link. The server lists the versions it speaks in the upgrade response
//! ([`VERSIONS_HEADER`]); the agent says the newest one both speak in its `hello` (1 to a server
//! that lists none: one from before version 2), and the server answers any version from
//! [`MIN_VERSION`] to [`VERSION`] in it. So agents and servers of either release join each other.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// The newest protocol version, which this side prefers.
pub const VERSION: u32 = 2;
/// The oldest version this side still speaks: agents and servers from before version 2 speak 1.
pub const MIN_VERSION: u32 = 1;
/// The upgrade response header in which the server lists the versions it speaks (`1,2`). A server
/// from before version 2 sends none, and an agent then says version 1.
pub const VERSIONS_HEADER: &str = "x-delegate-tunnel-versions";

/// What a link's protocol version allows, the same on both sides: the largest `data` payload
/// and each stream's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Payloads are cut into chunks of at most this many bytes, in both directions.
    pub chunk: usize,
    /// Bytes a sender may have in flight per stream before it waits for credit.
    pub window: u32,
}

impl Limits {
    /// Version 1: 16 KiB chunks, a 256 KiB window.
    pub const V1: Limits = Limits {
        chunk: 16 * 1024,
        window: 256 * 1024,
    };
    /// Version 2: 256 KiB chunks, a 4 MiB window.
    pub const V2: Limits = Limits {
        chunk: 256 * 1024,
        window: 4 * 1024 * 1024,
    };

    /// The limits of a version this side speaks.
    pub fn of(version: u32) -> Option<Limits> {
        match version {
            1 => Some(Limits::V1),
            2 => Some(Limits::V2),
            _ => None,
        }
    }
}

/// The versions in a [`VERSIONS_HEADER`] value that this side speaks, newest first: the one to
/// say in `hello` is the first; `None` (no header) means a server that speaks only 1.
pub fn shared_version(header: Option<&str>) -> u32 {
    header
        .into_iter()
        .flat_map(|v| v.split(','))
        .filter_map(|v| v.trim().parse::<u32>().ok())
        .filter(|v| (MIN_VERSION..=VERSION).contains(v))
        .max()
        .unwrap_or(MIN_VERSION)
}

/// The [`VERSIONS_HEADER`] value this side sends: every version it speaks.
pub fn versions_offered() -> String {
    (MIN_VERSION..=VERSION)
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The largest payload any version's frame may carry. A link refuses more than its own version's
/// chunk ([`Limits::chunk`]); anything bigger than this is refused before that.
pub const MAX_PAYLOAD: usize = Limits::V2.chunk;
// Every version's chunk fits the decoder's limit.
const _: () = assert!(Limits::V1.chunk <= MAX_PAYLOAD && Limits::V2.chunk <= MAX_PAYLOAD);
/// The largest JSON header accepted. Headers are a few dozen bytes; `hello` carries a directory and
/// a password, hence the room.
pub const MAX_HEADER: usize = 8 * 1024;
/// The largest whole frame (length prefix, header, payload).
pub const MAX_FRAME: usize = 4 + MAX_HEADER + MAX_PAYLOAD;
/// Streams open at once on one tunnel; an `open` beyond it is reset.
pub const MAX_STREAMS: usize = 1024;
/// Each side pings this often.
pub const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(20);
/// A link that delivered nothing (not even a pong) for this long is dead: one missed ping plus
/// slack, so a silent peer is noticed within 25 s.
pub const LINK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(25);

/// The WebSocket upgrade request header in which the agent lists what it can do beyond
/// forwarding streams to opencode (comma-separated). A request header rather than a `hello` field
/// so that a newer agent still joins an older server (which ignores it) and an older agent, which
/// sends none, is known to lack them.
pub const CAPABILITIES_HEADER: &str = "x-delegate-agent-capabilities";
/// The capability of taking repositories: the agent answers the requests under
/// [`RESERVED_PREFIX`] itself (seed a run's work dir from a bundle, export its change as a bundle,
/// remove it) instead of forwarding them to opencode.
pub const CAP_REPOS: &str = "repos";
/// Request paths the agent answers itself, never forwarding them to opencode:
///
/// - `PUT /.delegate/runs/{run_id}/seed` (body: a git bundle, `Content-Length` required, at most
///   [`MAX_SEED_BYTES`]): clones it into a fresh `<agent data>/runs/{run_id}`; answers
///   `{"directory": "<absolute path>", "head": "<commit>"}`;
/// - `POST /.delegate/runs/{run_id}/export?base=<commit>`: commits the work dir on top of `base`
///   (no hooks, no global config) and answers the commit as a git bundle (ref
///   `refs/delegate/result`);
/// - `DELETE /.delegate/runs/{run_id}`: removes the run's work dir.
///
/// Errors are `{"error": "..."}` with a 4xx/5xx status. Only the first request of a stream is
/// looked at: the server sends each of these on a connection of its own.
pub const RESERVED_PREFIX: &str = "/.delegate/";
/// The largest seed bundle an agent takes (the server's default `DELEGATE_MAX_REPO_BYTES`).
pub const MAX_SEED_BYTES: u64 = 1 << 30;

/// A stream's id, chosen by the side that opens it (the server), never reused on one tunnel.
pub type StreamId = u64;

/// What a frame means. Serialized as a JSON object tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Header {
    /// First frame from the agent: who it is and how to reach its opencode.
    Hello {
        /// The protocol version the agent speaks on this link ([`MIN_VERSION`]..=[`VERSION`]).
        version: u32,
        /// The agent's software version, for logs.
        agent: String,
        /// The directory the local `opencode serve` works in (its `x-opencode-directory`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        directory: Option<String>,
        /// The local opencode's basic-auth password, when it has one (the server must send it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
    },
    /// Server -> agent: the link is accepted; streams may follow.
    Welcome {
        /// The sandbox this link serves, as the server knows it.
        sandbox_id: String,
    },
    /// Server -> agent: a new stream; the agent connects it to its opencode.
    Open {
        /// The new stream's id; later frames of the stream name it.
        stream: StreamId,
    },
    /// Bytes of a stream (the payload, 1 to the link's [`Limits::chunk`] bytes).
    Data {
        /// The stream the bytes belong to.
        stream: StreamId,
    },
    /// The sender will send no more bytes on this stream (a half-close).
    End {
        /// The stream half-closed.
        stream: StreamId,
    },
    /// The stream is over in both directions; `reason` says why, for logs.
    Reset {
        /// The stream ended.
        stream: StreamId,
        /// Why, for logs.
        reason: String,
    },
    /// The receiver handed on `bytes` more bytes: the sender may send that much more.
    Credit {
        /// The stream the credit is for.
        stream: StreamId,
        /// How many more bytes the sender may send.
        bytes: u32,
    },
    /// Either side, every [`PING_INTERVAL`]: proves the link is alive; the peer answers `pong`.
    Ping {
        /// Echoed in the `pong`.
        nonce: u64,
    },
    /// The answer to a `ping`.
    Pong {
        /// The `ping`'s nonce.
        nonce: u64,
    },
    /// The sender is closing the whole tunnel, for `reason` (`code` is machine-readable:
    /// `replaced` when a newer connection of the same sandbox took over, `revoked`, `shutdown`,
    /// `protocol`).
    Goodbye {
        /// Why, for programs: `replaced`, `revoked`, `shutdown` or `protocol`.
        code: String,
        /// Why, for people.
        reason: String,
    },
}

impl Header {
    /// Whether this kind of frame carries a payload.
    pub fn has_payload(&self) -> bool {
        matches!(self, Header::Data { .. })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the frame means.
    pub header: Header,
    /// The stream bytes of a `data` frame; empty for every other kind.
    pub payload: Bytes,
}

impl Frame {
    /// A frame without payload (anything but `data`).
    pub fn new(header: Header) -> Frame {
        Frame {
            header,
            payload: Bytes::new(),
        }
    }

    /// A `data` frame carrying `payload` (1 to the link's chunk of bytes) on `stream`.
    pub fn data(stream: StreamId, payload: Bytes) -> Frame {
        Frame {
            header: Header::Data { stream },
            payload,
        }
    }
}

/// Why bytes are not a valid frame. Every case names what was wrong, for the peer's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not even the 4-byte header length arrived.
    #[error("truncated frame: {0} bytes, fewer than the 4-byte header length")]
    TruncatedLength(usize),
    /// The header length is over [`MAX_HEADER`].
    #[error("oversized frame header: {0} bytes, at most {MAX_HEADER}")]
    HeaderTooLarge(usize),
    /// Fewer bytes follow than the header length promises.
    #[error("truncated frame: the header length says {declared} bytes but only {available} follow")]
    TruncatedHeader {
        /// What the length prefix said.
        declared: usize,
        /// What the message held after it.
        available: usize,
    },
    /// The header is not a JSON [`Header`].
    #[error("bad frame header: {0}")]
    BadHeader(String),
    /// The payload is over [`MAX_PAYLOAD`].
    #[error("oversized frame payload: {0} bytes, at most {MAX_PAYLOAD}")]
    PayloadTooLarge(usize),
    /// A frame other than `data` carries bytes after its header.
    #[error("a {0} frame carries no payload, but {1} bytes followed its header")]
    UnexpectedPayload(&'static str, usize),
    /// A `data` frame without bytes; a well-behaved sender never makes one.
    #[error("a data frame must carry 1 to {MAX_PAYLOAD} bytes, not 0")]
    EmptyData,
}

impl Header {
    fn kind(&self) -> &'static str {
        match self {
            Header::Hello { .. } => "hello",
            Header::Welcome { .. } => "welcome",
            Header::Open { .. } => "open",
            Header::Data { .. } => "data",
            Header::End { .. } => "end",
            Header::Reset { .. } => "reset",
            Header::Credit { .. } => "credit",
            Header::Ping { .. } => "ping",
            Header::Pong { .. } => "pong",
            Header::Goodbye { .. } => "goodbye",
        }
    }
}

/// Encodes a frame. Fails only for a frame this side must never send (oversized header or
/// payload), so a bug shows up here instead of at the peer.
pub fn encode(frame: &Frame) -> Result<Bytes, FrameError> {
    check_payload(&frame.header, frame.payload.len())?;
    let header = serde_json::to_vec(&frame.header)
        .map_err(|e| FrameError::BadHeader(format!("cannot serialize: {e}")))?;
    if header.len() > MAX_HEADER {
        return Err(FrameError::HeaderTooLarge(header.len()));
    }
    let mut out = BytesMut::with_capacity(4 + header.len() + frame.payload.len());
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&frame.payload);
    Ok(out.freeze())
}

/// Writes the start of a `data` frame of `stream` (length prefix and header) to `out`: its payload
/// follows it in the same buffer, so a sender reads stream bytes straight into the frame instead
/// of copying them into one. The bytes are exactly those [`encode`] makes.
pub fn put_data_prefix(stream: StreamId, out: &mut BytesMut) {
    // `{"type":"data","stream":N}`, as serde writes it (see the round-trip test).
    let digits = itoa_u64(stream);
    let digits = digits.as_slice();
    let header_len = DATA_HEAD.len() + digits.len() + 1;
    out.extend_from_slice(&(header_len as u32).to_be_bytes());
    out.extend_from_slice(DATA_HEAD);
    out.extend_from_slice(digits);
    out.extend_from_slice(b"}");
}

const DATA_HEAD: &[u8] = br#"{"type":"data","stream":"#;

/// The decimal digits of `n`, without allocating.
fn itoa_u64(mut n: u64) -> Digits {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    Digits { buf, start: i }
}

struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// The longest prefix [`put_data_prefix`] writes.
pub const MAX_DATA_PREFIX: usize = 4 + 24 + 20 + 1;

/// Decodes one whole frame (one WebSocket message). Never panics, whatever the input.
pub fn decode(message: Bytes) -> Result<Frame, FrameError> {
    if message.len() < 4 {
        return Err(FrameError::TruncatedLength(message.len()));
    }
    let declared = u32::from_be_bytes([message[0], message[1], message[2], message[3]]) as usize;
    if declared > MAX_HEADER {
        return Err(FrameError::HeaderTooLarge(declared));
    }
    let available = message.len() - 4;
    if declared > available {
        return Err(FrameError::TruncatedHeader {
            declared,
            available,
        });
    }
    let header: Header = serde_json::from_slice(&message[4..4 + declared])
        .map_err(|e| FrameError::BadHeader(e.to_string()))?;
    let payload = message.slice(4 + declared..);
    check_payload(&header, payload.len())?;
    Ok(Frame { header, payload })
}

fn check_payload(header: &Header, len: usize) -> Result<(), FrameError> {
    if header.has_payload() {
        if len == 0 {
            return Err(FrameError::EmptyData);
        }
        if len > MAX_PAYLOAD {
            return Err(FrameError::PayloadTooLarge(len));
        }
    } else if len > 0 {
        return Err(FrameError::UnexpectedPayload(header.kind(), len));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(header: &str, payload: &[u8]) -> Bytes {
        let mut v = (header.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(payload);
        Bytes::from(v)
    }

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::new(Header::Hello {
                version: VERSION,
                agent: "0.1.0".into(),
                directory: Some("/home/me/project".into()),
                password: None,
            }),
            Frame::new(Header::Open { stream: 7 }),
            Frame::data(7, Bytes::from(vec![0xAB; MAX_PAYLOAD])),
            Frame::new(Header::Credit {
                stream: 7,
                bytes: Limits::V2.window,
            }),
            Frame::new(Header::Reset {
                stream: u64::MAX,
                reason: "connection refused".into(),
            }),
            Frame::new(Header::Goodbye {
                code: "replaced".into(),
                reason: "a newer connection".into(),
            }),
        ];
        for f in frames {
            assert_eq!(decode(encode(&f).unwrap()).unwrap(), f);
        }
        // The wire format is the documented one.
        let bytes = encode(&Frame::new(Header::Ping { nonce: 3 })).unwrap();
        assert_eq!(&bytes[..4], &25u32.to_be_bytes());
        assert_eq!(&bytes[4..], br#"{"type":"ping","nonce":3}"#);
    }

    #[test]
    fn broken_frames_are_refused_with_what_was_wrong() {
        let cases: Vec<(Bytes, FrameError)> = vec![
            (Bytes::from_static(b"\0\0"), FrameError::TruncatedLength(2)),
            (
                Bytes::from(((MAX_HEADER + 1) as u32).to_be_bytes().to_vec()),
                FrameError::HeaderTooLarge(MAX_HEADER + 1),
            ),
            (
                Bytes::from(u32::MAX.to_be_bytes().to_vec()),
                FrameError::HeaderTooLarge(u32::MAX as usize),
            ),
            (
                raw(r#"{"type":"open","stream":1}"#, b"").slice(..20),
                FrameError::TruncatedHeader {
                    declared: 26,
                    available: 16,
                },
            ),
            (
                raw(r#"{"type":"data","stream":1}"#, &vec![0; MAX_PAYLOAD + 1]),
                FrameError::PayloadTooLarge(MAX_PAYLOAD + 1),
            ),
            (
                raw(r#"{"type":"data","stream":1}"#, b""),
                FrameError::EmptyData,
            ),
            (
                raw(r#"{"type":"open","stream":1}"#, b"xyz"),
                FrameError::UnexpectedPayload("open", 3),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode(bytes).unwrap_err(), want);
        }
        for bad in [
            r#"{"type":"nope"}"#,
            r#"{"type":"open"}"#,
            r#"{"type":"open","stream":-1}"#,
            r#"{"type":"open","stream":1,"extra":true}"#,
            r#"not json"#,
            r#"[]"#,
        ] {
            let err = decode(raw(bad, b"")).unwrap_err();
            assert!(matches!(err, FrameError::BadHeader(_)), "{bad}: {err}");
        }
        // The message names what was wrong.
        assert_eq!(
            FrameError::TruncatedHeader {
                declared: 26,
                available: 16
            }
            .to_string(),
            "truncated frame: the header length says 26 bytes but only 16 follow"
        );
    }

    #[test]
    fn this_side_never_sends_what_the_peer_would_refuse() {
        let too_big = Frame::data(1, Bytes::from(vec![1; MAX_PAYLOAD + 1]));
        assert_eq!(
            encode(&too_big).unwrap_err(),
            FrameError::PayloadTooLarge(MAX_PAYLOAD + 1)
        );
        let huge_header = Frame::new(Header::Reset {
            stream: 1,
            reason: "x".repeat(MAX_HEADER),
        });
        assert!(matches!(
            encode(&huge_header).unwrap_err(),
            FrameError::HeaderTooLarge(_)
        ));
    }

    #[test]
    fn a_data_prefix_is_what_encode_writes() {
        for stream in [0, 7, 10, 12_345, u64::MAX] {
            let mut out = BytesMut::new();
            put_data_prefix(stream, &mut out);
            assert!(out.len() <= MAX_DATA_PREFIX);
            out.extend_from_slice(b"payload");
            let encoded = encode(&Frame::data(stream, Bytes::from_static(b"payload"))).unwrap();
            assert_eq!(&out[..], &encoded[..], "stream {stream}");
        }
    }

    #[test]
    fn both_sides_settle_on_the_newest_version_they_share() {
        // A server from before version 2 lists nothing: the agent says 1.
        assert_eq!(shared_version(None), 1);
        assert_eq!(shared_version(Some(&versions_offered())), VERSION);
        assert_eq!(versions_offered(), "1,2");
        // A newer server's versions this agent does not know are skipped; junk is ignored.
        assert_eq!(shared_version(Some("1, 2, 3")), 2);
        assert_eq!(shared_version(Some("1")), 1);
        assert_eq!(shared_version(Some("7,x")), 1);
        assert_eq!(Limits::of(1), Some(Limits::V1));
        assert_eq!(Limits::of(2), Some(Limits::V2));
        assert_eq!(Limits::of(3), None);
    }
}
