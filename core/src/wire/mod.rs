//! The peer wire protocol, sans-IO: bytes in, validated messages out, and back.
//!
//! This module owns the framing and the validation of everything two peers say to each other.
//! It never touches a socket, a file, a clock or a runtime: the QUIC code around it reads bytes
//! from a stream, hands them to a [`FrameDecoder`], and writes what [`encode_request`] or
//! [`encode_header`] returns. That keeps every rule below testable byte by byte.
//!
//! # The protocol (`quaver/1`)
//!
//! Peers talk over QUIC with ALPN [`ALPN`] (`quaver/1`). The server's certificate carries its
//! `PeerId` and the client pins it, so a client always knows who answers. Each request gets its
//! own bidirectional stream; a connection carries as many streams as QUIC flow control allows,
//! and a slow or broken request never blocks the others.
//!
//! ```text
//! client                                        server
//!   |-- u32 BE len | Request (prost) ------------->|   len <= MAX_REQUEST_FRAME (4 KiB)
//!   |-- FIN ------------------------------------->|
//!   |<------------ u32 BE len | ResponseHeader ----|   len <= MAX_HEADER_FRAME (64 KiB)
//!   |<------------ body_len raw bytes -------------|   range bytes or outboard bytes, else none
//!   |<------------ FIN ----------------------------|
//! ```
//!
//! The messages are in `proto/peer.proto` (package `quaver.peer.v1`), generated into [`pb`]:
//!
//! | request | OK answer | body |
//! |---|---|---|
//! | `GetOutboard { content_id }` | `file_size` | the outboard: BLAKE3 hash tree, 16 KiB chunk groups, pre-order, at most [`max_outboard_len`] bytes |
//! | `GetRange { content_id, offset, length }` | `file_size` | exactly `length` (1..=[`MAX_RANGE_LEN`]) file bytes from `offset` |
//! | `GetHave { content_id }` | `file_size`, `ranges` (sorted, disjoint, at most [`MAX_HAVE_RANGES`]) | none |
//! | `Status {}` | `free_slots`, `queue_len` | none |
//!
//! Other answers never carry a body: `NOT_FOUND` (the ContentId is not shared here), `BUSY`
//! (`queue_position`, `estimated_wait_ms`: ask again later), `BAD_REQUEST` (`message`, at most
//! [`MAX_MESSAGE_BYTES`]), `RANGE_NOT_AVAILABLE` (a partial source lacks part of the range).
//!
//! # Rules, and what breaking one costs
//!
//! - A frame's length is checked against its limit as soon as its 4 length bytes are in, before
//!   a single byte is buffered for it: a peer cannot make us allocate 4 GiB by saying so.
//! - A body that is not valid protobuf, or a message that breaks a bound (id not 32 bytes, range
//!   length 0 or over 1 MiB, unknown status, a body on a non-OK answer, ...), is a [`WireError`].
//!   The receiver resets that one stream; the connection and its other streams go on.
//! - Nothing in a body is trusted. The fetcher checks the outboard against the ContentId and every
//!   range against the outboard before it writes a byte; a source that sends bad bytes is banned.
//!   [`ResponseHeader::check_answers`] checks that a header fits the request it answers, so a
//!   client never reads more body than it asked for.
//! - Unknown protobuf fields are skipped (prost's default), so new optional fields can be added
//!   without a new ALPN; anything that changes a meaning or a bound needs `quaver/2`.
//!
//! Clients ask for ranges aligned to [`CHUNK_GROUP_SIZE`] (the last one may end at the end of
//! the file): that is the granularity at which the outboard can verify them.

mod codec;
mod request;
mod response;

pub use codec::{Frame, FrameDecoder, encode_header, encode_request};
pub use request::Request;
pub use response::{ResponseHeader, ResponseStatus};

use crate::ids::IdError;

/// Generated code for `proto/peer.proto` (package `quaver.peer.v1`). Use the validated types of
/// this module ([`Request`], [`ResponseHeader`]) rather than these directly.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/quaver.peer.v1.rs"));
}

/// The QUIC ALPN of this protocol version. A change of meaning or bound needs `quaver/2`.
pub const ALPN: &[u8] = b"quaver/1";
/// Bytes of the big-endian length in front of every frame.
pub const LEN_PREFIX: usize = 4;
/// Largest encoded `Request` a server accepts (a real one is under 60 bytes).
pub const MAX_REQUEST_FRAME: usize = 4 * 1024;
/// Largest encoded `ResponseHeader` a client accepts (room for [`MAX_HAVE_RANGES`] ranges).
pub const MAX_HEADER_FRAME: usize = 64 * 1024;
/// Longest range one `GetRange` may ask for.
pub const MAX_RANGE_LEN: u64 = 1024 * 1024;
/// The outboard's chunk group: the smallest piece of a file that can be verified on its own.
pub const CHUNK_GROUP_SIZE: u64 = 16 * 1024;
/// Most ranges in one `GetHave` answer.
pub const MAX_HAVE_RANGES: usize = 2048;
/// Longest `BAD_REQUEST` message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Bytes per parent node of the hash tree (two 32-byte hashes).
const OUTBOARD_NODE_LEN: u64 = 64;

/// An upper bound on the outboard of a file of `file_size` bytes: 64 bytes per started chunk
/// group, and at least 64. (The exact pre-order outboard is one node less; the slack keeps the
/// bound independent of how a store lays it out.)
pub fn max_outboard_len(file_size: u64) -> u64 {
    let groups = file_size.div_ceil(CHUNK_GROUP_SIZE).max(1);
    groups.saturating_mul(OUTBOARD_NODE_LEN)
}

/// Why bytes from a peer are not a valid message. Any of them means: reset this stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes is over the limit of {max}")]
    FrameTooLarge { len: u64, max: usize },
    #[error("stream ended inside a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    #[error("the decoder already failed; reset the stream")]
    Poisoned,
    #[error("malformed protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("request carries no kind")]
    MissingKind,
    #[error(transparent)]
    BadId(#[from] IdError),
    #[error("range length {len} is outside 1..={max}", max = MAX_RANGE_LEN)]
    RangeLength { len: u64 },
    #[error("range offset {offset} + length {len} overflows")]
    RangeOverflow { offset: u64, len: u64 },
    #[error("unknown or unspecified status code {0}")]
    UnknownStatus(i32),
    #[error("a non-OK answer carries a body of {0} bytes")]
    BodyOnError(u64),
    #[error("message of {0} bytes is over {max}", max = MAX_MESSAGE_BYTES)]
    MessageTooLong(usize),
    #[error("{0} ranges is over {max}", max = MAX_HAVE_RANGES)]
    TooManyRanges(usize),
    #[error("ranges must be non-empty, sorted, disjoint and inside the file")]
    BadRanges,
    #[error("answer does not fit its request: {0}")]
    Mismatch(&'static str),
}

#[cfg(test)]
mod tests;
