//! One request to a peer over QUIC: open a stream, send the frame, read the header, read the
//! body into a caller's buffer. The codec decides what is valid; this only moves bytes.

use quinn::{Connection, RecvStream};

use crate::wire::{FrameDecoder, Request, ResponseHeader, ResponseStatus, WireError, encode_request};

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream failed: {0}")]
    Stream(String),
    #[error("protocol violation: {0}")]
    Wire(#[from] WireError),
    #[error("the peer answered {0:?}")]
    Refused(ResponseStatus),
}

impl RequestError {
    /// True when the whole connection is gone, not just this request.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, RequestError::Connection(_))
    }
}

fn stream_err(e: impl std::fmt::Display) -> RequestError {
    RequestError::Stream(e.to_string())
}

/// Sends `req` and reads an OK answer's body into `body` (cleared first). A non-OK answer is
/// `RequestError::Refused`.
pub async fn request(
    conn: &Connection,
    req: &Request,
    body: &mut Vec<u8>,
) -> Result<ResponseHeader, RequestError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&encode_request(req)).await.map_err(stream_err)?;
    send.finish().map_err(stream_err)?;
    let (header, rest) = read_header(&mut recv).await?;
    header.check_answers(req)?;
    if header.status != ResponseStatus::Ok {
        return Err(RequestError::Refused(header.status));
    }
    // `check_answers` bounds body_len by what we asked for, so this cannot be made huge.
    let len = usize::try_from(header.body_len).map_err(|_| stream_err("body too long"))?;
    body.clear();
    body.reserve(len);
    let first = rest.len().min(len);
    body.extend_from_slice(&rest[..first]);
    // Chunks are appended as quinn hands them over: one copy per byte, and no zero-filling of
    // the buffer first (which `read_exact` into a resized buffer would cost).
    while body.len() < len {
        let want = len - body.len();
        let chunk = recv.read_chunk(want, true).await.map_err(|e| match e {
            quinn::ReadError::ConnectionLost(c) => RequestError::Connection(c),
            other => stream_err(other),
        })?;
        let Some(chunk) = chunk else {
            return Err(stream_err(format!("stream ended {} bytes short of the body", len - body.len())));
        };
        body.extend_from_slice(&chunk.bytes);
    }
    Ok(header)
}

/// Reads chunks until the header frame is complete; returns it and the bytes after it.
async fn read_header(recv: &mut RecvStream) -> Result<(ResponseHeader, bytes::Bytes), RequestError> {
    let mut decoder = FrameDecoder::<ResponseHeader>::new();
    loop {
        let chunk = recv.read_chunk(64 * 1024, true).await.map_err(|e| match e {
            quinn::ReadError::ConnectionLost(c) => RequestError::Connection(c),
            other => stream_err(other),
        })?;
        let Some(chunk) = chunk else {
            decoder.finish()?;
            return Err(stream_err("stream ended before the response header"));
        };
        let mut bytes = chunk.bytes;
        if let Some(header) = decoder.decode(&mut bytes)? {
            return Ok((header, bytes));
        }
    }
}
