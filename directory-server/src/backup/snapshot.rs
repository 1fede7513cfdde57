//! The snapshot format: the catalog's trees as a flat, checkable stream of records.
//!
//! Our own format rather than sled's `export`/`import`: those panic on any I/O problem or
//! unexpected input, and a backup is read back when things have already gone wrong. Every
//! length is bounded before anything is allocated, and every record is checked against the
//! shape its tree stores, so a damaged snapshot is refused, never half-imported.
//!
//! ```text
//! magic    b"QVDSNAP\n"
//! u32      format version (FORMAT_VERSION)
//! for each tree of catalog::BACKUP_TREES, in that order:
//!   b'T' u8 name-length, name
//!   per record, in key order:  b'R' u32 key-length, key, u32 value-length, value
//!   b'E' u64 records in this tree
//! b'Z'     end; nothing may follow
//! ```
//! Integers are big-endian. The manifest holds the BLAKE3 of the whole stream.

use std::io::{Read, Write};

use super::{BackupError, FORMAT_VERSION, SnapshotSummary, TreeRecords};
use crate::catalog::{BACKUP_TREES, Catalog, StoredFile, StoredPeer};

const MAGIC: &[u8; 8] = b"QVDSNAP\n";
/// Longest key any tree stores (a source or peer-file key: 8 + 32 bytes), with room.
const MAX_KEY_BYTES: u32 = 64;
/// Largest value: a `StoredFile` is bounded by the protocol's text limits to a few KiB.
const MAX_VALUE_BYTES: u32 = 256 * 1024;

/// Counts and hashes what passes through, so the summary describes exactly the bytes written
/// or read.
struct Hashing<T> {
    inner: T,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Self {
        Self { inner, hasher: blake3::Hasher::new(), bytes: 0 }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Writes a snapshot of `catalog` to `out`. The caller keeps writers out of the catalog
/// meanwhile (`Directory::with_frozen_catalog`), or the trees may disagree with each other.
pub fn write(catalog: &Catalog, out: impl Write) -> Result<SnapshotSummary, BackupError> {
    let mut w = Hashing::new(std::io::BufWriter::new(out));
    let io = BackupError::io;
    w.write_all(MAGIC).map_err(io("writing the snapshot"))?;
    w.write_all(&FORMAT_VERSION.to_be_bytes()).map_err(io("writing the snapshot"))?;
    let mut trees = Vec::new();
    for (name, tree) in catalog.backup_trees() {
        let name_len = u8::try_from(name.len()).map_err(|_| BackupError::Corrupt("tree name".into()))?;
        w.write_all(&[b'T', name_len]).map_err(io("writing the snapshot"))?;
        w.write_all(name.as_bytes()).map_err(io("writing the snapshot"))?;
        let mut records = 0u64;
        for item in tree.iter() {
            let (k, v) = item?;
            let (Ok(kl), Ok(vl)) = (u32::try_from(k.len()), u32::try_from(v.len())) else {
                return Err(BackupError::Corrupt(format!("a record in {name} is over 4 GiB")));
            };
            w.write_all(b"R").map_err(io("writing the snapshot"))?;
            w.write_all(&kl.to_be_bytes()).map_err(io("writing the snapshot"))?;
            w.write_all(&k).map_err(io("writing the snapshot"))?;
            w.write_all(&vl.to_be_bytes()).map_err(io("writing the snapshot"))?;
            w.write_all(&v).map_err(io("writing the snapshot"))?;
            records += 1;
        }
        w.write_all(b"E").map_err(io("writing the snapshot"))?;
        w.write_all(&records.to_be_bytes()).map_err(io("writing the snapshot"))?;
        trees.push(TreeRecords { name: name.to_owned(), records });
    }
    w.write_all(b"Z").map_err(io("writing the snapshot"))?;
    w.flush().map_err(io("writing the snapshot"))?;
    Ok(SnapshotSummary { bytes: w.bytes, blake3: *w.hasher.finalize().as_bytes(), trees })
}

/// Reads and checks a whole snapshot, handing each record to `sink` as (tree index in
/// `BACKUP_TREES`, key, value). Fails on the first malformed byte; the summary's hash covers
/// everything read, for the caller to compare with the manifest.
pub fn read(
    input: impl Read,
    mut sink: impl FnMut(usize, &[u8], &[u8]) -> Result<(), BackupError>,
) -> Result<SnapshotSummary, BackupError> {
    let mut r = Hashing::new(std::io::BufReader::new(input));
    let mut magic = [0u8; 8];
    read_exact(&mut r, &mut magic)?;
    if &magic != MAGIC {
        return Err(BackupError::Corrupt("not a Quaver directory snapshot (wrong magic bytes)".into()));
    }
    let version = u32::from_be_bytes(read_array(&mut r)?);
    if version != FORMAT_VERSION {
        return Err(BackupError::Corrupt(format!(
            "snapshot format version {version}; this quaver-directory reads version {FORMAT_VERSION}"
        )));
    }
    let mut trees = Vec::new();
    let (mut key, mut value) = (Vec::new(), Vec::new());
    for (index, expected) in BACKUP_TREES.iter().enumerate() {
        let [tag, name_len] = read_array(&mut r)?;
        let mut name = vec![0u8; usize::from(name_len)];
        read_exact(&mut r, &mut name)?;
        if tag != b'T' || name != expected.as_bytes() {
            return Err(BackupError::Corrupt(format!("expected the tree {expected} next")));
        }
        let mut records = 0u64;
        loop {
            match read_array::<1>(&mut r)? {
                [b'R'] => {
                    read_field(&mut r, &mut key, MAX_KEY_BYTES, expected)?;
                    read_field(&mut r, &mut value, MAX_VALUE_BYTES, expected)?;
                    check_record(expected, &key, &value)
                        .map_err(|e| BackupError::Corrupt(format!("record {records} of {expected}: {e}")))?;
                    sink(index, &key, &value)?;
                    records += 1;
                }
                [b'E'] => break,
                [other] => {
                    return Err(BackupError::Corrupt(format!("unexpected byte {other:#04x} in {expected}")));
                }
            }
        }
        let stated = u64::from_be_bytes(read_array(&mut r)?);
        if stated != records {
            return Err(BackupError::Corrupt(format!(
                "{expected} states {stated} records but holds {records}"
            )));
        }
        trees.push(TreeRecords { name: (*expected).to_owned(), records });
    }
    if read_array::<1>(&mut r)? != *b"Z" {
        return Err(BackupError::Corrupt("missing end marker after the last tree".into()));
    }
    let mut rest = [0u8; 1];
    if r.read(&mut rest).map_err(BackupError::io("reading the snapshot"))? != 0 {
        return Err(BackupError::Corrupt("bytes after the end marker".into()));
    }
    Ok(SnapshotSummary { bytes: r.bytes, blake3: *r.hasher.finalize().as_bytes(), trees })
}

fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> Result<(), BackupError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => BackupError::Corrupt("the snapshot is truncated".into()),
        _ => BackupError::Io { context: "reading the snapshot".into(), source: e },
    })
}

fn read_array<const N: usize>(r: &mut impl Read) -> Result<[u8; N], BackupError> {
    let mut buf = [0u8; N];
    read_exact(r, &mut buf)?;
    Ok(buf)
}

/// Reads one length-prefixed field into `buf`, refusing a length over `max` before
/// allocating.
fn read_field(r: &mut impl Read, buf: &mut Vec<u8>, max: u32, tree: &str) -> Result<(), BackupError> {
    let len = u32::from_be_bytes(read_array(r)?);
    if len > max {
        return Err(BackupError::Corrupt(format!("a field of {len} bytes in {tree} (at most {max})")));
    }
    buf.resize(len as usize, 0);
    read_exact(r, buf)
}

/// Checks a record has the shape its tree stores (see the table in `catalog`).
fn check_record(tree: &str, key: &[u8], value: &[u8]) -> Result<(), String> {
    let sizes = |k: usize, v: Option<usize>| {
        if key.len() != k {
            return Err(format!("key of {} bytes, expected {k}", key.len()));
        }
        match v {
            Some(v) if value.len() != v => Err(format!("value of {} bytes, expected {v}", value.len())),
            _ => Ok(()),
        }
    };
    match tree {
        "files" => {
            sizes(32, None)?;
            let file: StoredFile = prost::Message::decode(value).map_err(|e| e.to_string())?;
            let info = file.info.ok_or("a file without metadata")?;
            if info.content_id != key {
                return Err("the record's content id differs from its key".into());
            }
            Ok(())
        }
        "keys" => sizes(8, Some(32)),
        "sources" | "peer_files" => sizes(40, Some(1)),
        "peers" => {
            sizes(32, None)?;
            let _: StoredPeer = prost::Message::decode(value).map_err(|e| e.to_string())?;
            Ok(())
        }
        other => Err(format!("unknown tree {other}")),
    }
}
