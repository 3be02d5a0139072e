//! Invariant: sizes and offsets past 2^32 round-trip bit-exactly: a tensor over 4 GiB (stored raw, and compressed), blobs at pack offsets past 4 GiB, and a store over 4 GiB.
//!
//! Ignored by default: it writes about 13 GB to disk and needs about 13 GB of memory (a peak resident set of 12.6 GB, mapped files included). Run it with
//!
//! ```sh
//! cargo test --release -p neurstore --test large -- --ignored --nocapture
//! ```
//!
//! (`TMPDIR` chooses where the store and files go.) Three models go into one store whose pack
//! limit is 16 GiB, so every blob lands in one pack file:
//!
//! 1. `noise`: one U8 tensor of 4,300,000,000 pseudo-random bytes (past 2^32 = 4,294,967,296),
//!    stored raw near the start of the pack;
//! 2. `small`: a small F32 model, whose blobs therefore start past offset 2^32;
//! 3. `sparse`: one U8 tensor of 4,300,000,000 bytes, zero but for marker bytes at and around
//!    2^32, stored compressed (its decoded buffer is over 4 GiB).
//!
//! Each model is written back with `get` and compared with its input by BLAKE3 (and by the
//! marker bytes), `load` is checked the same way, and `verify` runs.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use neurstore::{NoProgress, PutOptions, Store, StoreOptions};

const ELEMENTS: u64 = 4_300_000_000;
const BOUNDARY: u64 = 1 << 32;

/// Writes the header of a one-tensor U8 safetensors file; returns the data offset.
fn write_header(file: &mut File, elements: u64) -> u64 {
    let header =
        format!(r#"{{"t":{{"dtype":"U8","shape":[{elements}],"data_offsets":[0,{elements}]}}}}"#);
    file.write_all(&(header.len() as u64).to_le_bytes())
        .unwrap();
    file.write_all(header.as_bytes()).unwrap();
    8 + header.len() as u64
}

/// Pseudo-random bytes (xorshift64), written in 64 MiB pieces.
fn write_noise(path: &Path) {
    let mut file = File::create(path).unwrap();
    write_header(&mut file, ELEMENTS);
    let mut w = std::io::BufWriter::with_capacity(64 << 20, file);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut piece = vec![0u8; 64 << 20];
    let mut left = ELEMENTS;
    while left > 0 {
        for word in piece.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(piece.len() as u64) as usize;
        w.write_all(&piece[..n]).unwrap();
        left -= n as u64;
    }
    w.flush().unwrap();
}

/// Marker bytes of the sparse tensor: (offset in the tensor, value).
fn markers() -> Vec<(u64, u8)> {
    vec![
        (0, 1),
        (BOUNDARY - 1, 2),
        (BOUNDARY, 3),
        (BOUNDARY + 1, 4),
        (BOUNDARY + 4096, 5),
        (ELEMENTS - 1, 6),
    ]
}

/// A sparse file: the header, a hole of zeros, and the marker bytes.
fn write_sparse(path: &Path) {
    let mut file = File::create(path).unwrap();
    let start = write_header(&mut file, ELEMENTS);
    file.set_len(start + ELEMENTS).unwrap();
    for (at, v) in markers() {
        file.write_at(&[v], start + at).unwrap();
    }
}

fn small_model(path: &Path) {
    let values: Vec<u8> = (0..70_000u32)
        .flat_map(|i| ((i as f32).sin() * 0.1).to_le_bytes())
        .collect();
    let header = format!(
        r#"{{"w":{{"dtype":"F32","shape":[70000],"data_offsets":[0,{}]}}}}"#,
        values.len()
    );
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&values);
    std::fs::write(path, bytes).unwrap();
}

fn hash_file(path: &Path) -> blake3::Hash {
    let file = File::open(path).unwrap();
    // SAFETY: the file is not modified while mapped (this test owns it).
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let mut h = blake3::Hasher::new();
    h.update_rayon(&map);
    h.finalize()
}

fn hash_bytes(bytes: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update_rayon(bytes);
    h.finalize()
}

/// BLAKE3 of the tensor bytes of a one-tensor file (the data after the header).
fn hash_tensor_of(path: &Path) -> blake3::Hash {
    let file = File::open(path).unwrap();
    // SAFETY: as above.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let n = u64::from_le_bytes(map[..8].try_into().unwrap()) as usize;
    hash_bytes(&map[8 + n..])
}

/// Puts `input` as `name`, gets it back and compares; checks `load` too. Returns the pack
/// offset of its (first tensor's) blob, read from the catalog.
fn round_trip(store: &Store, root: &Path, name: &str, input: &Path, dir: &Path) -> u64 {
    let started = Instant::now();
    let report = store
        .put(name, input, &PutOptions::default(), &NoProgress)
        .unwrap();
    eprintln!(
        "large: put {name}: {} bytes raw, {} stored, {:.1} s",
        report.raw_bytes,
        report.stored_bytes_added,
        started.elapsed().as_secs_f64()
    );
    let out = dir.join(format!("{name}.out"));
    let started = Instant::now();
    store.get(name, &out, &NoProgress).unwrap();
    assert_eq!(
        std::fs::metadata(&out).unwrap().len(),
        std::fs::metadata(input).unwrap().len(),
        "{name}: output length"
    );
    assert_eq!(
        hash_file(&out),
        hash_file(input),
        "{name}: get is not bit-exact"
    );
    eprintln!(
        "large: get {name}: bit-exact, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    std::fs::remove_file(&out).unwrap();
    let started = Instant::now();
    let loaded = store.load(name).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(
        hash_bytes(&loaded[0].data),
        hash_tensor_of(input),
        "{name}: load is not bit-exact"
    );
    if name == "sparse" {
        for (at, v) in markers() {
            assert_eq!(loaded[0].data[at as usize], v, "marker at {at}");
        }
        assert_eq!(loaded[0].data[(BOUNDARY + 2) as usize], 0);
    }
    drop(loaded);
    eprintln!(
        "large: load {name}: bit-exact, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let conn = rusqlite::Connection::open(root.join("catalog.db")).unwrap();
    conn.query_row(
        "SELECT o.offset FROM model_tensors t JOIN models m USING (model_id) \
         JOIN objects o USING (object_id) WHERE m.name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .unwrap() as u64
}

#[test]
#[ignore = "writes about 13 GB; run with --release -- --ignored"]
fn past_4_gib_round_trips_bit_exactly() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Store::init(&root).unwrap();
    let store = Store::open_with(
        &root,
        StoreOptions {
            write: true,
            max_pack_len: Some(16 << 30),
            ..Default::default()
        },
    )
    .unwrap();

    let noise = dir.path().join("noise.safetensors");
    write_noise(&noise);
    // After its header's blob, at the start of the pack.
    let at = round_trip(&store, &root, "noise", &noise, dir.path());
    assert!(at < BOUNDARY, "{at}");
    let info = store.info("noise").unwrap();
    assert_eq!(info.tensors[0].codec, "raw", "{:?}", info.tensors);
    assert_eq!(info.tensors[0].raw_bytes, ELEMENTS);
    std::fs::remove_file(&noise).unwrap();

    let small = dir.path().join("small.safetensors");
    small_model(&small);
    let at = round_trip(&store, &root, "small", &small, dir.path());
    assert!(at > BOUNDARY, "small's blob at {at}, not past 2^32");

    let sparse = dir.path().join("sparse.safetensors");
    write_sparse(&sparse);
    let at_sparse = round_trip(&store, &root, "sparse", &sparse, dir.path());
    assert!(at_sparse > BOUNDARY);
    let info = store.info("sparse").unwrap();
    assert_ne!(info.tensors[0].codec, "raw", "{:?}", info.tensors);

    let stats = store.stats().unwrap();
    assert!(stats.pack_bytes > BOUNDARY, "{stats:?}");
    drop(store);
    // A fresh reader sees the same, and everything verifies.
    let reader = Store::open(&root).unwrap();
    let out = dir.path().join("small.again");
    reader.get("small", &out, &NoProgress).unwrap();
    assert_eq!(hash_file(&out), hash_file(&small));
    let verify = reader.verify(&NoProgress).unwrap();
    assert!(verify.problems.is_empty(), "{:?}", verify.problems);
    eprintln!(
        "large: pass at the 2^32 boundary: tensors of {ELEMENTS} bytes (raw and compressed), blobs at offsets up to {at_sparse}, a store of {} pack bytes; verify clean; {:.0} s",
        stats.pack_bytes,
        started.elapsed().as_secs_f64()
    );
}
