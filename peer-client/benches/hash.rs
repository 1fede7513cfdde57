//! Hashing throughput of the store: the one pass that computes a file's `ContentId` and its
//! bao-tree outboard, on a 256 MiB file already in the page cache, single-threaded. Plain
//! BLAKE3 over the same file is the baseline (the outboard's cost is the difference).

use std::fs::File;
use std::hint::black_box;
use std::io::{Read, Write};
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quaver_peer::store::hash::hash_reader;

const SIZE: u64 = 256 * 1024 * 1024;

fn make_file() -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    let mut block = vec![0u8; 1 << 20];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(97) ^ (i >> 9) as u8;
    }
    for i in 0..SIZE / block.len() as u64 {
        block[0] = i as u8;
        file.write_all(&block).expect("write");
    }
    file.flush().expect("flush");
    file
}

fn blake3_only(file: &File) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut reader = file;
    loop {
        let n = reader.read(&mut buf).expect("read");
        if n == 0 {
            return hasher.finalize();
        }
        hasher.update(&buf[..n]);
    }
}

fn bench(c: &mut Criterion) {
    let file = make_file();
    let path = file.path().to_owned();
    // Warm the page cache, and print one plain timing in MB/s.
    let hashed = hash_reader(File::open(&path).expect("open"), SIZE).expect("hash");
    let start = Instant::now();
    let again = hash_reader(File::open(&path).expect("open"), SIZE).expect("hash");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(hashed.id, again.id);
    let root = blake3_only(&File::open(&path).expect("open"));
    assert_eq!(root.as_bytes(), hashed.id.as_bytes(), "root == BLAKE3 of the file");
    eprintln!(
        "store hash of 256 MiB: {:.3} s, {:.0} MB/s (outboard {} bytes)",
        secs,
        SIZE as f64 / secs / 1e6,
        hashed.outboard.len()
    );

    let mut group = c.benchmark_group("hash_256MiB");
    group.throughput(Throughput::Bytes(SIZE));
    group.sample_size(10);
    group.bench_function("content_id_and_outboard", |b| {
        b.iter(|| black_box(hash_reader(File::open(&path).expect("open"), SIZE).expect("hash")))
    });
    group.bench_function("blake3_only", |b| {
        b.iter(|| black_box(blake3_only(&File::open(&path).expect("open"))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
