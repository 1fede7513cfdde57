//! The validated response header: what a client may rely on before it reads a body.
//!
//! Owns the mapping between `pb::ResponseHeader` and [`ResponseHeader`], the bounds a header
//! must respect on its own, and [`ResponseHeader::check_answers`], the bounds that depend on
//! the request it answers. Never does I/O.

use super::{MAX_HAVE_RANGES, MAX_MESSAGE_BYTES, Request, WireError, max_outboard_len, pb};
use pb::StatusCode;
use std::ops::Range;
use std::time::Duration;

/// What became of a request, with the details that belong to each outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseStatus {
    Ok,
    NotFound,
    Busy { queue_position: u32, estimated_wait: Duration },
    BadRequest { message: String },
    RangeNotAvailable,
}

/// A response header whose own bounds hold: a known status, no body unless OK, a bounded
/// message, and `ranges` sorted, non-empty, disjoint (not even touching) and inside the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHeader {
    pub status: ResponseStatus,
    /// Size of the whole file, when the answer knows it (else 0).
    pub file_size: u64,
    /// Raw bytes that follow the header on the stream.
    pub body_len: u64,
    /// OK to `GetHave`: the byte ranges the server holds.
    pub ranges: Vec<Range<u64>>,
    /// OK to `Status`: upload slots free now.
    pub free_slots: u32,
    /// OK to `Status`: requests waiting for a slot.
    pub queue_len: u32,
}

impl ResponseHeader {
    fn with(status: ResponseStatus, file_size: u64, body_len: u64) -> Self {
        Self { status, file_size, body_len, ranges: Vec::new(), free_slots: 0, queue_len: 0 }
    }

    /// OK to `GetOutboard`: `outboard_len` bytes of outboard follow.
    pub fn ok_outboard(file_size: u64, outboard_len: u64) -> Self {
        Self::with(ResponseStatus::Ok, file_size, outboard_len)
    }

    /// OK to `GetRange`: `len` file bytes follow.
    pub fn ok_range(file_size: u64, len: u64) -> Self {
        Self::with(ResponseStatus::Ok, file_size, len)
    }

    /// OK to `GetHave`. The ranges are normalised when encoded (see [`super::encode_header`]).
    pub fn ok_have(file_size: u64, ranges: Vec<Range<u64>>) -> Self {
        Self { ranges, ..Self::with(ResponseStatus::Ok, file_size, 0) }
    }

    /// OK to `Status`.
    pub fn ok_status(free_slots: u32, queue_len: u32) -> Self {
        Self { free_slots, queue_len, ..Self::with(ResponseStatus::Ok, 0, 0) }
    }

    pub fn not_found() -> Self {
        Self::with(ResponseStatus::NotFound, 0, 0)
    }

    pub fn busy(queue_position: u32, estimated_wait: Duration) -> Self {
        let status = ResponseStatus::Busy { queue_position, estimated_wait };
        Self::with(status, 0, 0)
    }

    /// The message is cut to [`MAX_MESSAGE_BYTES`] when encoded.
    pub fn bad_request(message: impl Into<String>) -> Self {
        let message = message.into();
        Self::with(ResponseStatus::BadRequest { message }, 0, 0)
    }

    pub fn range_not_available(file_size: u64) -> Self {
        Self::with(ResponseStatus::RangeNotAvailable, file_size, 0)
    }

    /// Checks the bounds that depend on the request: an OK range body is exactly the range and
    /// the range is inside the file; an outboard body is no bigger than the file's outboard can
    /// be; other OK answers have no body. Call it before reading the body, so that a server
    /// cannot make a client read (or buffer) more than it asked for.
    pub fn check_answers(&self, req: &Request) -> Result<(), WireError> {
        if self.status != ResponseStatus::Ok {
            return Ok(()); // No body (checked at decode), nothing else to agree on.
        }
        match req {
            Request::Outboard(_) if self.body_len > max_outboard_len(self.file_size) => {
                Err(WireError::Mismatch("outboard longer than the file allows"))
            }
            Request::Range { offset, len, .. } => {
                if self.body_len != *len {
                    Err(WireError::Mismatch("range body length differs from the request"))
                } else if offset.saturating_add(*len) > self.file_size {
                    Err(WireError::Mismatch("range served past the end of the file"))
                } else {
                    Ok(())
                }
            }
            Request::Have(_) | Request::Status if self.body_len != 0 => {
                Err(WireError::Mismatch("body on an answer that has none"))
            }
            _ => Ok(()),
        }
    }
}

impl TryFrom<pb::ResponseHeader> for ResponseHeader {
    type Error = WireError;

    fn try_from(h: pb::ResponseHeader) -> Result<Self, WireError> {
        let status = match StatusCode::try_from(h.status) {
            Ok(StatusCode::Ok) => ResponseStatus::Ok,
            Ok(StatusCode::NotFound) => ResponseStatus::NotFound,
            Ok(StatusCode::Busy) => ResponseStatus::Busy {
                queue_position: h.queue_position,
                estimated_wait: Duration::from_millis(h.estimated_wait_ms),
            },
            Ok(StatusCode::BadRequest) => {
                if h.message.len() > MAX_MESSAGE_BYTES {
                    return Err(WireError::MessageTooLong(h.message.len()));
                }
                ResponseStatus::BadRequest { message: h.message }
            }
            Ok(StatusCode::RangeNotAvailable) => ResponseStatus::RangeNotAvailable,
            Ok(StatusCode::Unspecified) | Err(_) => return Err(WireError::UnknownStatus(h.status)),
        };
        if status != ResponseStatus::Ok && h.body_len != 0 {
            return Err(WireError::BodyOnError(h.body_len));
        }
        if h.ranges.len() > MAX_HAVE_RANGES {
            return Err(WireError::TooManyRanges(h.ranges.len()));
        }
        let mut ranges = Vec::with_capacity(h.ranges.len());
        let mut prev_end: Option<u64> = None;
        for r in &h.ranges {
            let end = r.offset.checked_add(r.length).ok_or(WireError::BadRanges)?;
            let after_prev = prev_end.is_none_or(|p| r.offset > p);
            if r.length == 0 || !after_prev || end > h.file_size {
                return Err(WireError::BadRanges);
            }
            prev_end = Some(end);
            ranges.push(r.offset..end);
        }
        Ok(Self {
            status,
            file_size: h.file_size,
            body_len: h.body_len,
            ranges,
            free_slots: h.free_slots,
            queue_len: h.queue_len,
        })
    }
}

impl From<&ResponseHeader> for pb::ResponseHeader {
    /// Encodes what a receiver will accept: ranges sorted, merged, clipped to the file and cut to
    /// [`MAX_HAVE_RANGES`] (under-reporting is harmless); the message cut to
    /// [`MAX_MESSAGE_BYTES`] on a character boundary; no body length on a non-OK answer.
    fn from(h: &ResponseHeader) -> Self {
        let mut out = pb::ResponseHeader {
            file_size: h.file_size,
            body_len: h.body_len,
            ranges: normalise(&h.ranges, h.file_size),
            free_slots: h.free_slots,
            queue_len: h.queue_len,
            ..Default::default()
        };
        let code = match &h.status {
            ResponseStatus::Ok => StatusCode::Ok,
            ResponseStatus::NotFound => StatusCode::NotFound,
            ResponseStatus::Busy { queue_position, estimated_wait } => {
                out.queue_position = *queue_position;
                out.estimated_wait_ms = u64::try_from(estimated_wait.as_millis()).unwrap_or(u64::MAX);
                StatusCode::Busy
            }
            ResponseStatus::BadRequest { message } => {
                out.message = truncate_utf8(message, MAX_MESSAGE_BYTES).to_owned();
                StatusCode::BadRequest
            }
            ResponseStatus::RangeNotAvailable => StatusCode::RangeNotAvailable,
        };
        out.status = code.into();
        if code != StatusCode::Ok {
            out.body_len = 0;
        }
        out
    }
}

fn normalise(ranges: &[Range<u64>], file_size: u64) -> Vec<pb::ByteRange> {
    let mut sorted: Vec<Range<u64>> =
        ranges.iter().map(|r| r.start..r.end.min(file_size)).filter(|r| r.start < r.end).collect();
    sorted.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match merged.last_mut() {
            // Touching ranges merge too: the receiver requires a gap between two ranges.
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged.truncate(MAX_HAVE_RANGES);
    merged.into_iter().map(|r| pb::ByteRange { offset: r.start, length: r.end - r.start }).collect()
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
