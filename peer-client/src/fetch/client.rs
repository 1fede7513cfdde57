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
    /// The body arrived but could not be kept (a local disk error): not the peer's fault.
    #[error("cannot keep the answer: {0}")]
    Keep(std::io::Error),
}

/// Where an OK answer's body goes: a block buffer in memory, or a file (an outboard, which may
/// be as big as 16 MiB for a 4 GiB file).
pub trait Body {
    /// The body will be `len` bytes (bounded by what we asked for).
    fn begin(&mut self, len: usize);
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()>;
}

impl Body for Vec<u8> {
    fn begin(&mut self, len: usize) {
        self.clear();
        self.reserve(len);
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

/// A body written to a file from offset 0, as it arrives.
pub struct FileBody<'a> {
    file: &'a std::fs::File,
    written: u64,
}

impl<'a> FileBody<'a> {
    pub fn new(file: &'a std::fs::File) -> Self {
        Self { file, written: 0 }
    }
}

impl Body for FileBody<'_> {
    fn begin(&mut self, _len: usize) {}

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(bytes, self.written)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
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

/// Sends `req` and reads an OK answer's body into `body` (a `Vec` is cleared first). A non-OK
/// answer is `RequestError::Refused`.
pub async fn request(
    conn: &Connection,
    req: &Request,
    body: &mut impl Body,
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
    body.begin(len);
    let first = rest.len().min(len);
    body.put(&rest[..first]).map_err(RequestError::Keep)?;
    let mut got = first;
    // Chunks are appended as quinn hands them over: one copy per byte, and no zero-filling of
    // the buffer first (which `read_exact` into a resized buffer would cost).
    while got < len {
        let want = len - got;
        let chunk = recv.read_chunk(want, true).await.map_err(|e| match e {
            quinn::ReadError::ConnectionLost(c) => RequestError::Connection(c),
            other => stream_err(other),
        })?;
        let Some(chunk) = chunk else {
            return Err(stream_err(format!("stream ended {} bytes short of the body", len - got)));
        };
        body.put(&chunk.bytes).map_err(RequestError::Keep)?;
        got += chunk.bytes.len();
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
