//! Length-prefixed framing: a push decoder fed arbitrary chunks, and the matching encoders.
//!
//! Owns the only place where a peer's length prefix turns into an allocation, so the limit
//! check lives here and nowhere else. Never does I/O and never reads past the end of a frame:
//! the raw body that follows a header stays in the caller's buffer.

use super::{LEN_PREFIX, MAX_HEADER_FRAME, MAX_REQUEST_FRAME, Request, ResponseHeader, WireError, pb};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use std::marker::PhantomData;

/// A message that travels as one frame: it knows its size limit and how to validate its body.
pub trait Frame: Sized {
    /// Largest body accepted, in bytes (the 4-byte length prefix not counted).
    const MAX_LEN: usize;
    /// Decodes and validates one frame body.
    fn decode_body(body: &[u8]) -> Result<Self, WireError>;
}

impl Frame for Request {
    const MAX_LEN: usize = MAX_REQUEST_FRAME;
    fn decode_body(body: &[u8]) -> Result<Self, WireError> {
        Request::try_from(pb::Request::decode(body)?)
    }
}

impl Frame for ResponseHeader {
    const MAX_LEN: usize = MAX_HEADER_FRAME;
    fn decode_body(body: &[u8]) -> Result<Self, WireError> {
        ResponseHeader::try_from(pb::ResponseHeader::decode(body)?)
    }
}

enum State {
    /// Collecting the 4 length bytes; `have` of them are in `buf`.
    Len { buf: [u8; LEN_PREFIX], have: usize },
    /// Collecting a body whose length passed the limit check; `buf` has exactly `want` capacity.
    Body { buf: Vec<u8>, want: usize },
    /// An error was returned; the stream must be reset.
    Failed,
}

/// A sans-IO decoder of length-prefixed frames of type `F`.
///
/// Feed it whatever the stream delivered with [`FrameDecoder::decode`]; it consumes bytes up to
/// the end of the current frame and returns the message once the frame is complete. Bytes after
/// the frame (a response body) stay in the caller's buffer. After an error the decoder is
/// poisoned: reset the stream.
pub struct FrameDecoder<F> {
    max_len: usize,
    state: State,
    _frame: PhantomData<fn() -> F>,
}

impl<F: Frame> Default for FrameDecoder<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Frame> FrameDecoder<F> {
    /// A decoder with the protocol's limit for `F`.
    pub fn new() -> Self {
        Self::with_max_len(F::MAX_LEN)
    }

    /// A decoder with a tighter limit (a larger one is clamped to `F::MAX_LEN`).
    pub fn with_max_len(max_len: usize) -> Self {
        Self {
            max_len: max_len.min(F::MAX_LEN),
            state: State::Len { buf: [0; LEN_PREFIX], have: 0 },
            _frame: PhantomData,
        }
    }

    /// Consumes bytes from `input` up to the end of one frame. Returns `Ok(Some(msg))` when a
    /// frame completed (the rest of `input` is untouched), `Ok(None)` when `input` ran out first.
    pub fn decode(&mut self, input: &mut impl Buf) -> Result<Option<F>, WireError> {
        let result = self.step(input);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    /// Call at the end of the stream: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), WireError> {
        match &self.state {
            State::Len { have: 0, .. } => Ok(()),
            State::Len { have, .. } => Err(WireError::Truncated { got: *have, want: LEN_PREFIX }),
            State::Body { buf, want } => {
                Err(WireError::Truncated { got: LEN_PREFIX + buf.len(), want: LEN_PREFIX + want })
            }
            State::Failed => Err(WireError::Poisoned),
        }
    }

    fn step(&mut self, input: &mut impl Buf) -> Result<Option<F>, WireError> {
        loop {
            match &mut self.state {
                State::Failed => return Err(WireError::Poisoned),
                State::Len { buf, have } => {
                    if !input.has_remaining() {
                        return Ok(None);
                    }
                    let n = (LEN_PREFIX - *have).min(input.remaining());
                    input.copy_to_slice(&mut buf[*have..*have + n]);
                    *have += n;
                    if *have < LEN_PREFIX {
                        return Ok(None);
                    }
                    let len = u32::from_be_bytes(*buf);
                    // The limit check comes before any allocation: the length is the peer's
                    // word, and we only ever reserve what our own limit allows.
                    let want = usize::try_from(len)
                        .ok()
                        .filter(|&l| l <= self.max_len)
                        .ok_or(WireError::FrameTooLarge { len: u64::from(len), max: self.max_len })?;
                    self.state = State::Body { buf: Vec::with_capacity(want), want };
                }
                State::Body { buf, want } => {
                    // An empty frame is complete without input, so check before returning.
                    if buf.len() < *want {
                        let chunk = input.chunk();
                        if chunk.is_empty() {
                            return Ok(None);
                        }
                        let n = (*want - buf.len()).min(chunk.len());
                        buf.extend_from_slice(&chunk[..n]);
                        input.advance(n);
                        continue;
                    }
                    let msg = F::decode_body(buf)?;
                    self.state = State::Len { buf: [0; LEN_PREFIX], have: 0 };
                    return Ok(Some(msg));
                }
            }
        }
    }
}

/// Frames a message: u32 big-endian length, then the prost encoding.
fn encode_frame(msg: &impl Message) -> Bytes {
    let len = msg.encoded_len();
    let mut out = BytesMut::with_capacity(LEN_PREFIX + len);
    // Our own messages are far below u32::MAX; saturating keeps this total without a panic
    // path, and a receiver would refuse such a frame anyway.
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    msg.encode_raw(&mut out);
    out.freeze()
}

/// The frame a client writes on a fresh stream.
pub fn encode_request(req: &Request) -> Bytes {
    encode_frame(&pb::Request::from(req))
}

/// The frame a server writes before the body (see `From<&ResponseHeader>` for the
/// normalisation that makes any header acceptable to the receiver).
pub fn encode_header(header: &ResponseHeader) -> Bytes {
    encode_frame(&pb::ResponseHeader::from(header))
}
