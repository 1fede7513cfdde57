//! One request stream: read the request, look the file up, answer, finish.
//!
//! Owns the order of every answer: validate, take a slot (ranges: before the look-up, see
//! [`send_range`]), look up, check against the file, send the header, send the body, wait for
//! delivery. Every write has a deadline ([`STALL_TIMEOUT`]): a peer that takes no bytes frees
//! its slot and its stream is reset. Nothing here trusts the request: ids and range
//! bounds come validated from [`FrameDecoder`], and whether a range fits the file is checked
//! against the library's size before a byte is read. Disk work (library lookups, opening and
//! reading files) runs on the blocking pool, 256 KiB at a time, and the file is closed when
//! the answer ends.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use quaver_shared::ContentId;
use quinn::{RecvStream, SendStream};
use tokio::time::timeout;

use super::admission::{Asker, Busy};
use super::gate::Permit;
use super::pieces::PiecePool;
use super::{RESET_BAD_FRAME, RESET_INTERNAL, RESET_STALLED, RESET_TOO_MANY_REQUESTS, Shared};
use crate::library::{Entry, Library, LibraryError, OutboardData};
use crate::wire::{FrameDecoder, Request, ResponseHeader, WireError, encode_header, max_outboard_len};

/// How long a peer may take to send its request once it opened the stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long we wait for the peer to acknowledge a finished answer before we let go of it.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one write (a header, or one `PIECE` of a body) may wait for the peer to make room
/// for it: past this the answer is reset and its slot freed. A write waits only when the peer
/// has not granted flow-control credit for it, or while the connection's unacknowledged bytes
/// fill quinn's send window; an honest client grants a whole range's credit up front, so this
/// only bites a peer that reads nothing, or less than 64 KiB in 8 s (8 KB/s): slower than any
/// link a download from us would be worth on, and short enough that a peer that never reads
/// costs us a slot for seconds, not forever.
const STALL_TIMEOUT: Duration = Duration::from_secs(8);
/// The wait told to a peer whose request stream was refused because it has too many open.
const REFUSED_STREAM_WAIT: Duration = Duration::from_secs(1);
/// Bytes written to the stream at a time (and taken from the bandwidth cap at a time): small
/// enough to keep the cap smooth.
pub(super) const PIECE: u64 = 64 * 1024;
/// Bytes read from disk on one trip to the blocking pool, as separate `PIECE`-sized buffers. A
/// trip costs two thread wake-ups, and at one per 64 KiB those were a tenth of a source's CPU
/// on the 4-source loopback bench. The buffers stay one piece each because the binary caps
/// glibc's mmap threshold at 128 KiB (`tune_allocator` in main.rs): one 256 KiB buffer came
/// from mmap on every read, and its page faults and munmap were a fifth of a source's CPU.
/// 256 KiB per upload in progress is the memory price.
const READ_AHEAD: u64 = PIECES_AHEAD as u64 * PIECE;
/// `READ_AHEAD` in pieces.
pub(super) const PIECES_AHEAD: usize = 4;

/// Why an answer was abandoned after the request was read.
#[derive(Debug, thiserror::Error)]
enum AnswerError {
    #[error(transparent)]
    Library(#[from] LibraryError),
    #[error("reading the file failed: {0}")]
    Disk(#[from] std::io::Error),
    #[error("a blocking disk task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("the peer stopped reading: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("the peer took no bytes for {STALL_TIMEOUT:?}")]
    Stalled,
    #[error("stored outboard of {len} bytes is too long for a file of {size} bytes")]
    OutboardTooLong { len: u64, size: u64 },
}

/// How reading the request went wrong.
enum BadRequest {
    /// Framing broke (oversized length, stream ended mid-frame, too slow): there is no request
    /// to answer, so the stream is reset.
    Frame(String),
    /// A complete frame that breaks a rule: answered with BAD_REQUEST.
    Invalid(WireError),
    /// The stream or connection went away; nothing to answer.
    Gone(quinn::ReadError),
}

/// Serves one bidirectional stream of `who` (a peer's address, and id if proven) to its end, holding the stream's `permit`
/// meanwhile. Never panics on peer input and never touches other streams: every failure ends
/// here, with an answer, a reset, or nothing.
pub(super) async fn serve_stream(
    shared: Arc<Shared>,
    who: Asker,
    _permit: Permit,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let request = match timeout(REQUEST_TIMEOUT, read_request(&mut recv)).await {
        Ok(Ok(request)) => request,
        Ok(Err(BadRequest::Invalid(e))) => {
            tracing::debug!(error = %e, "invalid request");
            let _ = answer(&mut send, &ResponseHeader::bad_request(e.to_string())).await;
            return;
        }
        Ok(Err(BadRequest::Frame(why))) => return refuse(&mut send, &mut recv, &why),
        Err(_) => return refuse(&mut send, &mut recv, "no request within the timeout"),
        Ok(Err(BadRequest::Gone(e))) => {
            tracing::debug!(error = %e, "request stream went away");
            return;
        }
    };
    // Nothing more is read from the client; tell it so (a no-op if it already finished).
    let _ = recv.stop(0u32.into());
    tracing::trace!(?request, "request");

    if let Err(e) = respond(&shared, who, &mut send, request).await {
        let code = match e {
            AnswerError::Write(e) => {
                tracing::debug!(error = %e, "peer left during the answer");
                RESET_INTERNAL
            }
            AnswerError::Stalled => {
                // Debug: a peer that never reads would otherwise fill the log.
                tracing::debug!(ip = %who.ip, "peer took nothing of the answer for too long");
                shared.stalled_answers.fetch_add(1, Ordering::Relaxed);
                RESET_STALLED
            }
            e => {
                tracing::warn!(error = %e, "answer abandoned");
                RESET_INTERNAL
            }
        };
        // A header may have promised a body we cannot deliver: a reset tells the client this
        // answer is void rather than letting it read a short body.
        let _ = send.reset(code);
    }
}

/// Sends away a stream the limits refused, without a task or a wait: BUSY if the header fits
/// in what the peer lets us send right now, a reset if not (a peer with too many streams open
/// may be one that grants no credit at all). Its request is not read.
pub(super) fn refuse_stream(mut send: SendStream, mut recv: RecvStream) {
    let _ = recv.stop(RESET_TOO_MANY_REQUESTS);
    let header = encode_header(&ResponseHeader::busy(1, REFUSED_STREAM_WAIT));
    let written = {
        let mut write = std::pin::pin!(send.write_chunk(header));
        // One poll: quinn takes the bytes now if flow control allows, or tells us it would wait.
        matches!(write.as_mut().poll(&mut Context::from_waker(Waker::noop())), Poll::Ready(Ok(())))
    };
    if written {
        let _ = send.finish();
    } else {
        let _ = send.reset(RESET_TOO_MANY_REQUESTS);
    }
}

/// Writes `bytes` to `send`, waiting at most [`STALL_TIMEOUT`] for the peer to make room.
async fn write_bounded(send: &mut SendStream, bytes: Bytes) -> Result<(), AnswerError> {
    match timeout(STALL_TIMEOUT, send.write_chunk(bytes)).await {
        Ok(written) => Ok(written?),
        Err(_) => Err(AnswerError::Stalled),
    }
}

fn refuse(send: &mut SendStream, recv: &mut RecvStream, why: &str) {
    tracing::debug!(why, "refusing a malformed request stream");
    let _ = send.reset(RESET_BAD_FRAME);
    let _ = recv.stop(RESET_BAD_FRAME);
}

async fn read_request(recv: &mut RecvStream) -> Result<Request, BadRequest> {
    let mut decoder = FrameDecoder::<Request>::new();
    let mut buf = [0u8; 1024];
    loop {
        let Some(n) = recv.read(&mut buf).await.map_err(BadRequest::Gone)? else {
            // Ended before a whole frame: an empty stream is as useless as a truncated one.
            let why =
                decoder.finish().err().map_or("stream ended without a request".into(), |e| e.to_string());
            return Err(BadRequest::Frame(why));
        };
        let mut input = &buf[..n];
        match decoder.decode(&mut input) {
            Ok(Some(request)) => return Ok(request),
            Ok(None) => {}
            Err(e @ (WireError::FrameTooLarge { .. } | WireError::Truncated { .. })) => {
                return Err(BadRequest::Frame(e.to_string()));
            }
            Err(e) => return Err(BadRequest::Invalid(e)),
        }
    }
}

/// Writes a body-less answer and finishes the stream.
async fn answer(send: &mut SendStream, header: &ResponseHeader) -> Result<(), AnswerError> {
    write_bounded(send, encode_header(header)).await?;
    let _ = send.finish();
    Ok(())
}

async fn respond(
    shared: &Shared,
    who: Asker,
    send: &mut SendStream,
    request: Request,
) -> Result<(), AnswerError> {
    let id = match request {
        Request::Status => {
            let (free, queued) = shared.gate.status();
            return answer(send, &ResponseHeader::ok_status(free, queued)).await;
        }
        Request::Range { id, offset, len } => return send_range(shared, who, send, id, offset, len).await,
        Request::Outboard(id) | Request::Have(id) => id,
    };
    // The library may sit on disk (sled): look it up off the runtime.
    let library = Arc::clone(&shared.library);
    let Some(entry) = tokio::task::spawn_blocking(move || library.entry(&id)).await?? else {
        return answer(send, &ResponseHeader::not_found()).await;
    };
    match request {
        Request::Have(_) => {
            // Every library entry is a complete file (partial sources will answer their parts).
            let whole = std::iter::once(0..entry.size).collect();
            answer(send, &ResponseHeader::ok_have(entry.size, whole)).await
        }
        Request::Outboard(_) => send_outboard(shared, who, send, entry).await,
        Request::Range { .. } | Request::Status => Ok(()), // answered above
    }
}

async fn send_outboard(
    shared: &Shared,
    who: Asker,
    send: &mut SendStream,
    entry: Entry,
) -> Result<(), AnswerError> {
    // Our own store's data, but a client refuses an outboard over this bound, so a broken store
    // must show up here as an error, not as peers mysteriously dropping us.
    let len = entry.outboard.len();
    if len > max_outboard_len(entry.size) {
        return Err(AnswerError::OutboardTooLong { len, size: entry.size });
    }
    let permit = match shared.gate.slot(who) {
        Ok(permit) => permit,
        Err(busy) => return answer_busy(shared, send, busy).await,
    };
    match entry.outboard {
        OutboardData::Bytes(outboard) => {
            write_bounded(send, encode_header(&ResponseHeader::ok_outboard(entry.size, len))).await?;
            let mut at = 0;
            while at < outboard.len() {
                let end = (at + PIECE as usize).min(outboard.len());
                write_piece(shared, send, outboard.slice(at..end)).await?;
                at = end;
            }
        }
        OutboardData::File { path, .. } => {
            let file = tokio::task::spawn_blocking(move || File::open(path)).await??;
            write_bounded(send, encode_header(&ResponseHeader::ok_outboard(entry.size, len))).await?;
            send_file_range(shared, send, Arc::new(file), 0, len).await?;
        }
    }
    deliver(send).await;
    drop(permit);
    Ok(())
}

/// Answers a range request. The slot is taken first, so that all the disk work before the
/// header (look-up, open, size check, first read) is one trip to the blocking pool: a trip
/// costs two thread wake-ups, and a range is the request peers send by the thousand (one per
/// 256 KiB block). The price: a request for a file we lack, or past its end, may be told BUSY
/// first and learn the truth when it comes back.
async fn send_range(
    shared: &Shared,
    who: Asker,
    send: &mut SendStream,
    id: ContentId,
    offset: u64,
    len: u64,
) -> Result<(), AnswerError> {
    let permit = match shared.gate.slot(who) {
        Ok(permit) => permit,
        Err(busy) => return answer_busy(shared, send, busy).await,
    };
    let (library, pieces) = (Arc::clone(&shared.library), Arc::clone(&shared.pieces));
    let opened =
        tokio::task::spawn_blocking(move || open_range(&*library, &pieces, &id, offset, len)).await??;
    let (file, size, first) = match opened {
        OpenedRange::Ready { file, size, first } => (file, size, first),
        OpenedRange::NotFound => return answer(send, &ResponseHeader::not_found()).await,
        OpenedRange::PastEnd { size } => {
            let message = format!("range {offset}+{len} is past the end of the {size}-byte file");
            let header = ResponseHeader { file_size: size, ..ResponseHeader::bad_request(message) };
            return answer(send, &header).await;
        }
    };
    write_bounded(send, encode_header(&ResponseHeader::ok_range(size, len))).await?;
    let mut sent = 0;
    for piece in first {
        sent += piece.len() as u64;
        write_piece(shared, send, piece).await?;
    }
    // Moved in, so the file is closed before we wait on the network.
    send_file_range(shared, send, file, offset + sent, len - sent).await?;
    deliver(send).await;
    drop(permit);
    Ok(())
}

/// What [`open_range`] found.
enum OpenedRange {
    /// Not in the library, or no longer the bytes it was hashed from.
    NotFound,
    /// The range does not fit the file of `size` bytes.
    PastEnd { size: u64 },
    /// The file, open, and the range's first `READ_AHEAD` bytes.
    Ready { file: Arc<File>, size: u64, first: Vec<Bytes> },
}

/// The disk work before a range answer's header, on the blocking pool: look the file up, check
/// the range against its size (the request's bounds were checked alone; only here do we know
/// the file they must fit), open it, and read the first piece of the range.
fn open_range(
    library: &dyn Library,
    pieces: &Arc<PiecePool>,
    id: &ContentId,
    offset: u64,
    len: u64,
) -> Result<OpenedRange, AnswerError> {
    let Some(entry) = library.entry(id)? else { return Ok(OpenedRange::NotFound) };
    if offset.saturating_add(len) > entry.size {
        return Ok(OpenedRange::PastEnd { size: entry.size });
    }
    // Open per request: the library keeps nothing open, so a node sharing a million files holds
    // file descriptors only for the uploads in progress.
    let opened = File::open(&entry.path).and_then(|file| Ok((file.metadata()?.len(), file)));
    let file = match opened {
        Ok((on_disk, file)) if on_disk == entry.size => file,
        Ok((on_disk, _)) => {
            // Changed since it was hashed: these bytes are no longer this ContentId.
            tracing::warn!(path = %entry.path.display(), expected = entry.size, on_disk, "shared file changed size");
            return Ok(OpenedRange::NotFound);
        }
        Err(e) => {
            tracing::warn!(path = %entry.path.display(), error = %e, "shared file cannot be opened");
            return Ok(OpenedRange::NotFound);
        }
    };
    let first = read_pieces(&file, pieces, offset, len.min(READ_AHEAD))?;
    Ok(OpenedRange::Ready { file: Arc::new(file), size: entry.size, first })
}

/// Sends `len` bytes of `file` from `offset`, read on the blocking pool `READ_AHEAD` at a time.
/// The caller checked that the range is inside the file.
async fn send_file_range(
    shared: &Shared,
    send: &mut SendStream,
    file: Arc<File>,
    offset: u64,
    len: u64,
) -> Result<(), AnswerError> {
    let mut at = offset;
    let end = offset.saturating_add(len);
    while at < end {
        let n = (end - at).min(READ_AHEAD);
        let (file, pool) = (Arc::clone(&file), Arc::clone(&shared.pieces));
        // `n` <= READ_AHEAD, so the allocation is bounded whatever the request said.
        let pieces = tokio::task::spawn_blocking(move || read_pieces(&file, &pool, at, n)).await??;
        for piece in pieces {
            write_piece(shared, send, piece).await?;
        }
        at += n;
    }
    Ok(())
}

/// `n` bytes of `file` from `at`, as pieces of at most `PIECE` bytes in buffers from `pool`,
/// none zeroed first (`read_exact_at` needs an initialised buffer, and zeroing was 5 % of a
/// source's CPU).
fn read_pieces(file: &File, pool: &Arc<PiecePool>, at: u64, n: u64) -> std::io::Result<Vec<Bytes>> {
    use std::io::{Read, Seek, SeekFrom};
    // The file is this answer's own (opened for it), and its pieces are read one after the
    // other, so nothing else moves its cursor.
    let mut file = file;
    file.seek(SeekFrom::Start(at))?;
    let mut pieces = Vec::with_capacity(usize::try_from(n.div_ceil(PIECE)).map_err(std::io::Error::other)?);
    let mut left = n;
    while left > 0 {
        let len = left.min(PIECE);
        let mut buf = pool.take();
        file.take(len).read_to_end(&mut buf)?;
        if buf.len() as u64 != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the shared file got shorter",
            ));
        }
        pieces.push(pool.share(buf));
        left -= len;
    }
    Ok(pieces)
}

async fn write_piece(shared: &Shared, send: &mut SendStream, piece: Bytes) -> Result<(), AnswerError> {
    let len = piece.len() as u64;
    if let Some(bucket) = &shared.bucket {
        bucket.take(len).await;
    }
    write_bounded(send, piece).await?;
    shared.bytes_sent.fetch_add(len, Ordering::Relaxed);
    Ok(())
}

async fn answer_busy(shared: &Shared, send: &mut SendStream, busy: Busy) -> Result<(), AnswerError> {
    shared.busy_answers.fetch_add(1, Ordering::Relaxed);
    answer(send, &ResponseHeader::busy(busy.queue_position, busy.estimated_wait)).await
}

/// Finishes the stream and waits until the peer has acknowledged every byte (or stopped the
/// stream, or the connection died), so the slot is held for the whole upload rather than just
/// until the bytes reach quinn's send buffer.
async fn deliver(send: &mut SendStream) {
    let _ = send.finish();
    match timeout(DELIVERY_TIMEOUT, send.stopped()).await {
        Ok(Ok(None)) => {}
        Ok(Ok(Some(code))) => tracing::debug!(%code, "peer stopped the answer stream"),
        Ok(Err(e)) => tracing::debug!(error = %e, "answer not confirmed"),
        Err(_) => tracing::debug!("answer not acknowledged in time"),
    }
}
