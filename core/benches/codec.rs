//! The peer wire codec's cost: encoding and decoding (framing, prost, validation) of every
//! request kind and of the response headers a transfer sees, fed whole and in small chunks.

use bytes::{Buf, Bytes};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quaver_core::ids::ContentId;
use quaver_core::wire::{
    Frame, FrameDecoder, MAX_HAVE_RANGES, Request, ResponseHeader, encode_header, encode_request,
};
use std::hint::black_box;
use std::time::Duration;

fn requests() -> Vec<(&'static str, Request)> {
    let id = ContentId::from_array([7; 32]);
    vec![
        ("outboard", Request::Outboard(id)),
        ("range", Request::Range { id, offset: 123 << 20, len: 256 << 10 }),
        ("have", Request::Have(id)),
        ("status", Request::Status),
    ]
}

fn headers() -> Vec<(&'static str, ResponseHeader)> {
    let many: Vec<_> = (0..MAX_HAVE_RANGES as u64).map(|i| i * 65536..i * 65536 + 16384).collect();
    vec![
        ("ok_range", ResponseHeader::ok_range(1 << 30, 256 << 10)),
        ("ok_outboard", ResponseHeader::ok_outboard(1 << 30, 4 << 20)),
        ("busy", ResponseHeader::busy(3, Duration::from_millis(1500))),
        ("have_2048_ranges", ResponseHeader::ok_have(1 << 30, many)),
    ]
}

/// Decodes one frame fed `chunk` bytes at a time (whole when `chunk` is the frame's length).
fn decode<F: Frame>(frame: &Bytes, chunk: usize) -> F {
    let mut decoder = FrameDecoder::<F>::new();
    let mut rest = frame.clone();
    while rest.has_remaining() {
        let mut piece = rest.split_to(chunk.min(rest.len()));
        if let Some(msg) = decoder.decode(&mut piece).expect("valid frame") {
            return msg;
        }
    }
    panic!("frame never completed")
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire_request");
    for (name, req) in requests() {
        let frame = encode_request(&req);
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode", name), &req, |b, req| {
            b.iter(|| encode_request(black_box(req)))
        });
        group.bench_with_input(BenchmarkId::new("decode", name), &frame, |b, f| {
            b.iter(|| decode::<Request>(black_box(f), f.len()))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("wire_header");
    for (name, header) in headers() {
        let frame = encode_header(&header);
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode", name), &header, |b, h| {
            b.iter(|| encode_header(black_box(h)))
        });
        group.bench_with_input(BenchmarkId::new("decode", name), &frame, |b, f| {
            b.iter(|| decode::<ResponseHeader>(black_box(f), f.len()))
        });
        // QUIC hands over whatever arrived: the same frame in 7-byte pieces.
        group.bench_with_input(BenchmarkId::new("decode_7B_chunks", name), &frame, |b, f| {
            b.iter(|| decode::<ResponseHeader>(black_box(f), 7))
        });
    }
    group.finish();

    // What a client does per block: check the header answers its request.
    let req = Request::Range { id: ContentId::from_array([7; 32]), offset: 0, len: 256 << 10 };
    let header = ResponseHeader::ok_range(1 << 30, 256 << 10);
    c.bench_function("wire_check_answers_range", |b| {
        b.iter(|| black_box(&header).check_answers(black_box(&req)).is_ok())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
