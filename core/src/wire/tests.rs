//! Codec tests: round trips, any chunking, limits before allocation, garbage never panics.

use super::*;
use crate::ids::ContentId;
use bytes::Bytes;
use proptest::prelude::*;
use std::time::Duration;

/// Counts the bytes this thread asks the allocator for, to prove a refused frame costs nothing.
mod counting_alloc {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local!(static ALLOCATED: Cell<usize> = const { Cell::new(0) });

    pub struct Counting;

    // SAFETY: forwards to `System` unchanged; only adds to a thread-local counter.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCATED.with(|a| a.set(a.get() + layout.size()));
            // SAFETY: same contract as the caller's.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: same contract as the caller's.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    pub fn allocated_by(f: impl FnOnce()) -> usize {
        let before = ALLOCATED.with(Cell::get);
        f();
        ALLOCATED.with(Cell::get) - before
    }
}

fn id(n: u8) -> ContentId {
    ContentId::from_array([n; 32])
}

fn sample_requests() -> Vec<Request> {
    vec![
        Request::Outboard(id(1)),
        Request::range(id(2), 5 * CHUNK_GROUP_SIZE, MAX_RANGE_LEN).unwrap(),
        Request::Have(id(3)),
        Request::Status,
    ]
}

fn sample_headers() -> Vec<ResponseHeader> {
    vec![
        ResponseHeader::ok_outboard(1 << 30, 4 << 20),
        ResponseHeader::ok_range(1000, 1000),
        ResponseHeader::ok_have(1 << 20, vec![0..100, 200..300]),
        ResponseHeader::ok_status(3, 7),
        ResponseHeader::not_found(),
        ResponseHeader::busy(4, Duration::from_millis(2500)),
        ResponseHeader::bad_request("range past the end"),
        ResponseHeader::range_not_available(77),
    ]
}

/// Feeds `bytes` to a fresh decoder in pieces of `piece` bytes; returns every message.
fn decode_in_pieces<F: Frame>(bytes: &[u8], piece: usize) -> Result<Vec<F>, WireError> {
    let mut dec = FrameDecoder::<F>::new();
    let mut out = Vec::new();
    for mut chunk in bytes.chunks(piece.max(1)) {
        while let Some(msg) = dec.decode(&mut chunk)? {
            out.push(msg);
        }
    }
    dec.finish()?;
    Ok(out)
}

#[test]
fn requests_and_headers_round_trip_whole_and_byte_by_byte() {
    let reqs = sample_requests();
    let wire: Vec<u8> = reqs.iter().flat_map(|r| encode_request(r).to_vec()).collect();
    assert_eq!(decode_in_pieces::<Request>(&wire, wire.len()).unwrap(), reqs);
    assert_eq!(decode_in_pieces::<Request>(&wire, 1).unwrap(), reqs);

    let headers = sample_headers();
    let wire: Vec<u8> = headers.iter().flat_map(|h| encode_header(h).to_vec()).collect();
    assert_eq!(decode_in_pieces::<ResponseHeader>(&wire, 1).unwrap(), headers);
    assert_eq!(decode_in_pieces::<ResponseHeader>(&wire, 3).unwrap(), headers);
}

#[test]
fn the_decoder_stops_at_the_end_of_the_header_and_leaves_the_body() {
    let mut stream = encode_header(&ResponseHeader::ok_range(10, 5)).to_vec();
    stream.extend_from_slice(b"hello");
    let mut input = Bytes::from(stream);
    let mut dec = FrameDecoder::<ResponseHeader>::new();
    let header = dec.decode(&mut input).unwrap().unwrap();
    assert_eq!(header.body_len, 5);
    assert_eq!(&input[..], b"hello");
}

#[test]
fn an_oversized_length_fails_after_four_bytes_without_allocating() {
    let mut dec = FrameDecoder::<ResponseHeader>::new();
    let mut input: &[u8] = &[0xff, 0xff, 0xff];
    assert_eq!(dec.decode(&mut input), Ok(None));
    let mut result = Ok(None);
    let allocated = counting_alloc::allocated_by(|| {
        let mut last: &[u8] = &[0xff, 1, 2, 3];
        result = dec.decode(&mut last);
        assert_eq!(last, &[1, 2, 3], "nothing past the length is consumed");
    });
    assert_eq!(result, Err(WireError::FrameTooLarge { len: u64::from(u32::MAX), max: MAX_HEADER_FRAME }));
    assert_eq!(allocated, 0);
    // And the counter does count: a buffer of the declared size would have shown up.
    assert!(
        counting_alloc::allocated_by(|| drop(Vec::<u8>::with_capacity(MAX_HEADER_FRAME))) >= MAX_HEADER_FRAME
    );
    // Poisoned from now on: the stream is to be reset.
    assert_eq!(dec.decode(&mut &[0u8; 8][..]), Err(WireError::Poisoned));
}

#[test]
fn limits_are_exact() {
    let at_limit = u32::try_from(MAX_REQUEST_FRAME).unwrap();
    let mut dec = FrameDecoder::<Request>::new();
    // At the limit the length is fine (the body then fails on its own merits).
    assert_eq!(dec.decode(&mut &at_limit.to_be_bytes()[..]), Ok(None));
    let mut dec = FrameDecoder::<Request>::new();
    assert!(matches!(
        dec.decode(&mut &(at_limit + 1).to_be_bytes()[..]),
        Err(WireError::FrameTooLarge { .. })
    ));
    // A tighter limit is honoured; a looser one is clamped to the protocol's.
    let mut dec = FrameDecoder::<Request>::with_max_len(10);
    assert!(dec.decode(&mut &11u32.to_be_bytes()[..]).is_err());
    let mut dec = FrameDecoder::<Request>::with_max_len(usize::MAX);
    assert!(dec.decode(&mut &(at_limit + 1).to_be_bytes()[..]).is_err());
}

#[test]
fn empty_and_truncated_frames_are_errors() {
    assert_eq!(decode_in_pieces::<Request>(&[0, 0, 0, 0], 4), Err(WireError::MissingKind));
    assert_eq!(decode_in_pieces::<ResponseHeader>(&[0, 0, 0, 0], 4), Err(WireError::UnknownStatus(0)));
    let frame = encode_request(&Request::Status);
    let cut = &frame[..frame.len() - 1];
    assert!(matches!(decode_in_pieces::<Request>(cut, 1), Err(WireError::Truncated { .. })));
    assert!(matches!(decode_in_pieces::<Request>(&[0, 0], 1), Err(WireError::Truncated { got: 2, want: 4 })));
}

#[test]
fn garbage_bodies_are_decode_errors() {
    let body = [0xff, 0xff, 0xff];
    let mut frame = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    assert!(matches!(decode_in_pieces::<Request>(&frame, 2), Err(WireError::Decode(_))));
}

fn header_frame(h: pb::ResponseHeader) -> Result<Vec<ResponseHeader>, WireError> {
    let mut bytes = Vec::new();
    let body = prost::Message::encode_to_vec(&h);
    bytes.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    bytes.extend_from_slice(&body);
    decode_in_pieces::<ResponseHeader>(&bytes, 7)
}

#[test]
fn header_bounds_are_enforced() {
    let ok = i32::from(pb::StatusCode::Ok);
    let busy = i32::from(pb::StatusCode::Busy);
    let range = |offset, length| pb::ByteRange { offset, length };
    let cases = [
        (pb::ResponseHeader { status: 99, ..Default::default() }, WireError::UnknownStatus(99)),
        (pb::ResponseHeader { status: busy, body_len: 1, ..Default::default() }, WireError::BodyOnError(1)),
        (
            pb::ResponseHeader {
                status: i32::from(pb::StatusCode::BadRequest),
                message: "x".repeat(MAX_MESSAGE_BYTES + 1),
                ..Default::default()
            },
            WireError::MessageTooLong(MAX_MESSAGE_BYTES + 1),
        ),
        (
            pb::ResponseHeader {
                status: ok,
                file_size: u64::MAX,
                ranges: (0..=MAX_HAVE_RANGES as u64).map(|i| range(i * 2, 1)).collect(),
                ..Default::default()
            },
            WireError::TooManyRanges(MAX_HAVE_RANGES + 1),
        ),
    ];
    for (header, err) in cases {
        assert_eq!(header_frame(header), Err(err));
    }
    for bad in [
        vec![range(0, 0)],               // empty
        vec![range(10, 5), range(0, 5)], // unsorted
        vec![range(0, 5), range(5, 5)],  // touching
        vec![range(0, 5), range(3, 5)],  // overlapping
        vec![range(90, 11)],             // past the end of the file
        vec![range(u64::MAX, 2)],        // overflowing
    ] {
        let h = pb::ResponseHeader { status: ok, file_size: 100, ranges: bad, ..Default::default() };
        assert_eq!(header_frame(h), Err(WireError::BadRanges));
    }
}

#[test]
fn encoding_normalises_what_the_receiver_would_refuse() {
    let sloppy = ResponseHeader {
        ranges: vec![50..60, 0..10, 5..20, 20..30, 40..40, 95..200],
        ..ResponseHeader::ok_have(100, Vec::new())
    };
    let got = decode_in_pieces::<ResponseHeader>(&encode_header(&sloppy), 5).unwrap();
    assert_eq!(got[0].ranges, vec![0..30, 50..60, 95..100]);

    let many: Vec<_> = (0..5000u64).map(|i| i * 4..i * 4 + 1).collect();
    let got =
        decode_in_pieces::<ResponseHeader>(&encode_header(&ResponseHeader::ok_have(1 << 20, many)), 999)
            .unwrap();
    assert_eq!(got[0].ranges.len(), MAX_HAVE_RANGES);

    let long = "é".repeat(MAX_MESSAGE_BYTES); // 2 bytes each: must be cut on a boundary
    let got =
        decode_in_pieces::<ResponseHeader>(&encode_header(&ResponseHeader::bad_request(long)), 64).unwrap();
    let ResponseStatus::BadRequest { message } = &got[0].status else { panic!("{got:?}") };
    assert_eq!(message.len(), MAX_MESSAGE_BYTES);

    let lying = ResponseHeader { body_len: 9, ..ResponseHeader::not_found() };
    let got = decode_in_pieces::<ResponseHeader>(&encode_header(&lying), 64).unwrap();
    assert_eq!(got[0].body_len, 0);
}

#[test]
fn headers_are_checked_against_their_request() {
    let range = Request::range(id(1), 100, 50).unwrap();
    assert_eq!(ResponseHeader::ok_range(150, 50).check_answers(&range), Ok(()));
    assert!(ResponseHeader::ok_range(150, 51).check_answers(&range).is_err());
    assert!(ResponseHeader::ok_range(149, 50).check_answers(&range).is_err());
    assert_eq!(ResponseHeader::busy(1, Duration::ZERO).check_answers(&range), Ok(()));

    let outboard = Request::Outboard(id(1));
    let size = 10 * CHUNK_GROUP_SIZE + 1;
    assert_eq!(max_outboard_len(size), 11 * 64);
    assert_eq!(max_outboard_len(0), 64);
    assert_eq!(ResponseHeader::ok_outboard(size, 11 * 64).check_answers(&outboard), Ok(()));
    assert!(ResponseHeader::ok_outboard(size, 11 * 64 + 1).check_answers(&outboard).is_err());

    let with_body = ResponseHeader { body_len: 1, ..ResponseHeader::ok_status(1, 1) };
    assert!(with_body.check_answers(&Request::Status).is_err());
    assert!(with_body.check_answers(&Request::Have(id(1))).is_err());
    assert_eq!(ResponseHeader::ok_status(1, 1).check_answers(&Request::Status), Ok(()));
}

fn any_request() -> impl Strategy<Value = Request> {
    let cid = any::<[u8; 32]>().prop_map(ContentId::from_array);
    prop_oneof![
        cid.clone().prop_map(Request::Outboard),
        (cid.clone(), any::<u64>(), 1..=MAX_RANGE_LEN).prop_map(|(id, offset, len)| {
            let offset = offset.min(u64::MAX - len);
            Request::Range { id, offset, len }
        }),
        cid.prop_map(Request::Have),
        Just(Request::Status),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), piece in 1usize..40) {
        let _ = decode_in_pieces::<Request>(&bytes, piece);
        let _ = decode_in_pieces::<ResponseHeader>(&bytes, piece);
    }

    #[test]
    fn garbage_behind_a_valid_length_is_an_error_or_a_valid_message(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut frame = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        // Whatever it decodes to, it went through validation: re-encoding round-trips.
        if let Ok(reqs) = decode_in_pieces::<Request>(&frame, 3) {
            let again = decode_in_pieces::<Request>(&encode_request(&reqs[0]), 1).unwrap();
            prop_assert_eq!(again, reqs);
        }
        if let Ok(hs) = decode_in_pieces::<ResponseHeader>(&frame, 3) {
            let again = decode_in_pieces::<ResponseHeader>(&encode_header(&hs[0]), 1).unwrap();
            prop_assert_eq!(again, hs);
        }
    }

    #[test]
    fn requests_round_trip_in_any_chunking(reqs in proptest::collection::vec(any_request(), 1..5), piece in 1usize..64) {
        let wire: Vec<u8> = reqs.iter().flat_map(|r| encode_request(r).to_vec()).collect();
        prop_assert_eq!(decode_in_pieces::<Request>(&wire, piece).unwrap(), reqs);
    }

    #[test]
    fn have_headers_round_trip_after_normalisation(
        file_size in 0u64..1_000_000,
        raw in proptest::collection::vec((0u64..1_000_000, 0u64..50_000), 0..50),
        piece in 1usize..64,
    ) {
        let ranges = raw.into_iter().map(|(o, l)| o..o + l).collect();
        let wire = encode_header(&ResponseHeader::ok_have(file_size, ranges));
        let first = decode_in_pieces::<ResponseHeader>(&wire, piece).unwrap();
        let again = decode_in_pieces::<ResponseHeader>(&encode_header(&first[0]), 1).unwrap();
        prop_assert_eq!(again, first);
    }
}
