//! Invariant: every parser and decoder is total on hostile input: whatever the bytes (a file to import, a blob, the index file, the catalog), it returns a typed error or a value, never panics, hangs or aborts, and allocates in proportion to its input (and the output the catalog declares), never to a length read from the input.
//!
//! Two parts, run by one test so a counting allocator sees one workload at a time:
//!
//! - **Mutation fuzzing** (the stable-Rust counterpart of the cargo-fuzz targets in `fuzz/`):
//!   valid seeds for each parser and decoder are mutated with a seeded generator (bit flips,
//!   byte insertions and deletions, truncations, and length, count and float fields overwritten
//!   with extreme values), and each mutant is run under `catch_unwind`, timed, with the peak of
//!   the bytes it allocated measured. 2,000 inputs per target by default, 25,000 in the full run
//!   (`NEURSTORE_FULL_RELIABILITY=1`); the model-directory target imports through the public API
//!   and runs a tenth of that; the model-formats target (ONNX, PyTorch zip, GGUF through
//!   `put`) half.
//! - **Resource bombs**: hand-made inputs that claim huge sizes, counts or depths (a safetensors
//!   header length of 2^63, shape products overflowing u64, a grouped blob of 2^32-1 chunks or
//!   1 TiB, a zstd frame claiming 1 TiB, NaN/Inf/zero quantization steps, an HNSW graph of 2^60
//!   nodes, an index file of 2^32-1 buckets, a base cycle and an absurdly long base chain in the
//!   catalog, ...). Each must give a typed error within bounded memory and time.

mod reliability_fixture;

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use neurstore::{BaseChoice, DType, ErrorKind, Mode, NoProgress, PutOptions, Store, TensorInput};
use neurstore_core::codec::{delta, entropy, grouped, quantized};
use neurstore_core::hnsw::{Hnsw, HnswParams};
use neurstore_core::safetensors;
use neurstore_core::sketch::{Packed, SKETCH_DIM};
use neurstore_storage::index::TensorIndex;
use reliability_fixture::{Model, Rng, build_store, copy_store, full_run, models, panic_message};

/// The global allocator of this test binary: the system allocator, counting live bytes and
/// their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` under `catch_unwind`; returns its result (or the panic message), the time it took
/// and the peak of the bytes it allocated beyond what was live when it started.
fn measured<T>(f: impl FnOnce() -> T) -> (Result<T, String>, Duration, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let started = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_message(p.as_ref()));
    let took = started.elapsed();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    (result, took, peak)
}

// ---------------------------------------------------------------------------------------------
// Mutation fuzzing

/// A field of a seed worth overwriting with extreme values.
#[derive(Clone, Copy)]
enum Field {
    U32(usize),
    U64(usize),
    F64(usize),
}

/// A valid input for a target, its interesting fields, and the context the target needs.
struct Seed {
    bytes: Vec<u8>,
    fields: Vec<Field>,
    /// Output length the catalog would declare (decoders), or 0.
    out_len: usize,
    /// Base bytes (delta and quantized decoders), dtype (quantized).
    base: Option<Vec<u8>>,
    dtype: DType,
}

impl Seed {
    fn new(bytes: Vec<u8>, fields: Vec<Field>) -> Self {
        Seed {
            bytes,
            fields,
            out_len: 0,
            base: None,
            dtype: DType::U8,
        }
    }
}

const U32_EXTREMES: [u32; 8] = [
    0,
    1,
    2,
    0x7fff_ffff,
    0x8000_0000,
    u32::MAX,
    u32::MAX - 1,
    4096,
];
const U64_EXTREMES: [u64; 10] = [
    0,
    1,
    u64::MAX,
    u64::MAX - 1,
    1 << 63,
    (1 << 32) - 1,
    1 << 32,
    1 << 40,
    1 << 60,
    i64::MAX as u64,
];
const F64_EXTREMES: [f64; 8] = [
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    0.0,
    -0.0,
    -1.0,
    f64::MIN_POSITIVE / 4.0,
    f64::MAX,
];

/// One to four mutations of `seed`.
fn mutate(seed: &Seed, rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.bytes.clone();
    for _ in 0..1 + rng.below(4) {
        let len = b.len() as u64;
        let at = |rng: &mut Rng| if len == 0 { 0 } else { rng.below(len) as usize };
        match rng.below(9) {
            0 | 1 if !b.is_empty() => {
                let i = at(rng);
                b[i] ^= 1 << rng.below(8);
            }
            2 if !b.is_empty() => {
                let i = at(rng);
                b[i] = [0, 0xff, 0x7f, 0x80, b'{', b'"', b'9'][rng.below(7) as usize];
            }
            3 => {
                let i = if len == 0 {
                    0
                } else {
                    rng.below(len + 1) as usize
                };
                let n = 1 + rng.below(16) as usize;
                let fill: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                b.splice(i..i, fill);
            }
            4 if !b.is_empty() => {
                let i = at(rng);
                let n = (1 + rng.below(16) as usize).min(b.len() - i);
                b.drain(i..i + n);
            }
            5 if !b.is_empty() => {
                let n = rng.below(len) as usize;
                b.truncate(n);
            }
            6 | 7 => {
                // A known field, or any aligned position, overwritten with an extreme value.
                let field = if !seed.fields.is_empty() && rng.below(3) > 0 {
                    seed.fields[rng.below(seed.fields.len() as u64) as usize]
                } else {
                    // Any offset: fields are not all aligned (a name's length shifts them).
                    let i = at(rng);
                    match rng.below(3) {
                        0 => Field::U32(i),
                        1 => Field::U64(i),
                        _ => Field::F64(i),
                    }
                };
                let (i, value): (usize, Vec<u8>) = match field {
                    Field::U32(i) => (
                        i,
                        U32_EXTREMES[rng.below(U32_EXTREMES.len() as u64) as usize]
                            .to_le_bytes()
                            .to_vec(),
                    ),
                    Field::U64(i) => {
                        let v = if rng.below(4) == 0 {
                            // Off by a little from the true length: the classic bug.
                            (len as i64 + rng.below(17) as i64 - 8).max(0) as u64
                        } else {
                            U64_EXTREMES[rng.below(U64_EXTREMES.len() as u64) as usize]
                        };
                        (i, v.to_le_bytes().to_vec())
                    }
                    Field::F64(i) => (
                        i,
                        F64_EXTREMES[rng.below(F64_EXTREMES.len() as u64) as usize]
                            .to_le_bytes()
                            .to_vec(),
                    ),
                };
                for (k, v) in value.into_iter().enumerate() {
                    if let Some(slot) = b.get_mut(i + k) {
                        *slot = v;
                    }
                }
            }
            _ if b.len() > 1 => {
                // Duplicate a range.
                let i = at(rng);
                let n = (1 + rng.below(32) as usize).min(b.len() - i);
                let copy = b[i..i + n].to_vec();
                let j = at(rng);
                b.splice(j..j, copy);
            }
            _ => b.push(rng.next_u64() as u8),
        }
    }
    b
}

/// Runs a target on one input made from a seed.
type RunFn = Box<dyn Fn(&Seed, &[u8]) -> bool>;

/// A parser or decoder under test.
struct Target {
    name: &'static str,
    seeds: Vec<Seed>,
    /// Runs the target on a mutant of `seed`: true when it accepted the input. Any value or
    /// error is fine; a panic is a crash.
    run: RunFn,
    /// Fraction of the default number of executions (1 = all).
    share: u64,
}

/// Figures of one target.
#[derive(Default)]
struct TargetTally {
    execs: u64,
    /// Inputs the target accepted (mutants that stayed valid, and the seeds).
    accepted: u64,
    crashes: Vec<String>,
    max_time: Duration,
    /// Largest peak allocation divided by (input + declared output) bytes.
    max_ratio: f64,
    max_peak: usize,
}

fn f32_bytes(v: impl Iterator<Item = f32>) -> Vec<u8> {
    v.flat_map(|x| x.to_le_bytes()).collect()
}

/// A grouped blob built by hand with small chunks and raw planes (the real encoder uses 1 MiB
/// chunks), so seeds span several chunks cheaply.
fn grouped_small_chunks(raw: &[u8], w: usize, chunk_len: usize) -> Vec<u8> {
    let chunks: Vec<&[u8]> = raw.chunks(chunk_len).collect();
    let mut out = vec![1, w as u8, 0];
    out.extend_from_slice(&(chunk_len as u32).to_le_bytes());
    out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    let mut payload = Vec::new();
    for chunk in &chunks {
        for k in 0..w {
            let plane: Vec<u8> = chunk.iter().skip(k).step_by(w).copied().collect();
            out.push(0);
            out.extend_from_slice(&(plane.len() as u32).to_le_bytes());
            payload.extend_from_slice(&plane);
        }
    }
    out.extend_from_slice(&payload);
    out
}

/// Field offsets of a grouped blob starting at `at`, with `entries` table entries.
fn grouped_fields(at: usize, entries: usize) -> Vec<Field> {
    let mut f = vec![Field::U32(at + 3), Field::U64(at + 7), Field::U32(at + 15)];
    f.extend((0..entries.min(8)).map(|k| Field::U32(at + 19 + 5 * k + 1)));
    f
}

fn float_raw(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    f32_bytes((0..n).map(|_| (0.05 * rng.normal()) as f32))
}

fn safetensors_target() -> Target {
    let m = &models()[0];
    let mut seeds: Vec<Seed> = m
        .file_bytes()
        .into_iter()
        .map(|(_, b)| Seed::new(b, vec![Field::U64(0)]))
        .collect();
    let with_meta = br#"{"__metadata__":{"format":"pt","k":"v"},"s":{"dtype":"F64","shape":[],"data_offsets":[0,8]},"z":{"dtype":"I8","shape":[0,3],"data_offsets":[8,8]},"b":{"dtype":"BOOL","shape":[2,2],"data_offsets":[8,12]}}"#;
    let mut file = (with_meta.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(with_meta);
    file.extend_from_slice(&[0; 12]);
    seeds.push(Seed::new(file, vec![Field::U64(0)]));
    Target {
        name: "safetensors_parse",
        seeds,
        run: Box::new(|_, input| safetensors::parse(input).is_ok()),
        share: 1,
    }
}

fn grouped_target() -> Target {
    let mut seeds = Vec::new();
    let floats = float_raw(3000, 1);
    for (raw, w, rotate) in [
        (floats.clone(), 4, true),
        (floats[..2000].to_vec(), 2, true),
        (floats.clone(), 8, false),
        (vec![7u8; 5000], 1, false),
    ] {
        let blob = grouped::encode_with(&raw, w, rotate, 1);
        let mut s = Seed::new(blob, grouped_fields(0, w));
        s.out_len = raw.len();
        seeds.push(s);
    }
    let blob = grouped_small_chunks(&floats[..1200], 4, 256);
    let mut s = Seed::new(blob, grouped_fields(0, 20));
    s.out_len = 1200;
    seeds.push(s);
    Target {
        name: "grouped_decode",
        seeds,
        run: Box::new(|seed, input| {
            let mut out = vec![0u8; seed.out_len];
            grouped::decode_into(input, &mut out).is_ok()
        }),
        share: 1,
    }
}

fn entropy_target() -> Target {
    let floats = float_raw(3000, 4);
    let exponents: Vec<u8> = floats
        .chunks_exact(4)
        .map(|w| w[3] << 1 | w[2] >> 7)
        .collect();
    let seeds = [exponents, vec![9u8; 700], (0..=255).collect(), floats]
        .into_iter()
        .map(|raw| {
            let mut blob = Vec::new();
            entropy::encode(&raw, &mut blob);
            let mut s = Seed::new(blob, Vec::new());
            s.out_len = raw.len();
            s
        })
        .collect();
    Target {
        name: "entropy_decode",
        seeds,
        run: Box::new(|seed, input| {
            let mut out = vec![0u8; seed.out_len];
            entropy::decode(input, &mut out).is_ok()
        }),
        share: 1,
    }
}

fn delta_target() -> Target {
    let base = float_raw(2000, 2);
    let mut rng = Rng::new(3);
    let target = f32_bytes(
        base.chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) + (1e-3 * rng.normal()) as f32),
    );
    let mut seeds = Vec::new();
    for (w, t) in [
        (4, delta::Transform::IntDiff),
        (4, delta::Transform::OrderedDiff),
        (2, delta::Transform::Xor),
        (1, delta::Transform::IntDiff),
    ] {
        let blob = delta::encode(&target, &base, w, t, 1);
        let mut fields = vec![Field::U32(0)];
        fields.extend(grouped_fields(3, w));
        let mut s = Seed::new(blob, fields);
        s.out_len = target.len();
        s.base = Some(base.clone());
        seeds.push(s);
    }
    Target {
        name: "delta_decode",
        seeds,
        run: Box::new(|seed, input| {
            let mut out = vec![0u8; seed.out_len];
            delta::decode_into(input, seed.base.as_deref().unwrap(), &mut out).is_ok()
        }),
        share: 1,
    }
}

fn quantized_target() -> Target {
    let mut seeds = Vec::new();
    let base = float_raw(1500, 4);
    let mut rng = Rng::new(5);
    let mut target = f32_bytes(
        base.chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) + (2e-3 * rng.normal()) as f32),
    );
    // Non-finite values become exceptions.
    target[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
    target[400..404].copy_from_slice(&f32::INFINITY.to_le_bytes());
    let bf16: Vec<u8> = base.chunks_exact(4).flat_map(|b| [b[2], b[3]]).collect();
    for (dtype, t, b, tol) in [
        (DType::F32, &target, Some(&base), 1e-3),
        (DType::F32, &target, None, 1e-2),
        (DType::BF16, &bf16, None, 1e-3),
        (DType::F32, &target, Some(&base), 1e-6),
    ] {
        let q = quantized::encode(dtype, t, b.map(|b| b.as_slice()), tol, 1).unwrap();
        let fields = vec![
            Field::F64(4),
            Field::U64(12),
            Field::U64(20),
            Field::U64(28),
            Field::U32(28 + 8 + 3),
            Field::U64(28 + 8 + 7),
        ];
        let mut s = Seed::new(q.bytes, fields);
        s.out_len = t.len();
        s.base = b.cloned();
        s.dtype = dtype;
        seeds.push(s);
    }
    Target {
        name: "quantized_decode",
        seeds,
        run: Box::new(|seed, input| {
            let mut out = vec![0u8; seed.out_len];
            quantized::decode_into(seed.dtype, input, seed.base.as_deref(), &mut out).is_ok()
        }),
        share: 1,
    }
}

fn hnsw_graph(n: usize, scan_below: usize, seed: u64) -> Hnsw {
    let mut rng = Rng::new(seed);
    let mut g = Hnsw::new(HnswParams {
        m: 4,
        ef_construction: 16,
        ef_search: 8,
        scan_below,
    });
    for i in 0..n {
        let v: Vec<f32> = (0..SKETCH_DIM).map(|_| rng.normal() as f32).collect();
        g.insert(i as u64 * 7 + 1, &Packed::quantize(&v));
    }
    g
}

fn hnsw_target() -> Target {
    // dim u32 @0, M @4, efConstruction @8, efSearch @12, scan_below @16, node count u64 @20,
    // entry u32 @28, then the first node: id u64 @32, packed sketch @40 (offset, step, codes),
    // and in a graph its top level u8 @176 and first link count u32 @177.
    let seeds = [(40, 0), (3, 10), (0, 0), (12, 4)]
        .iter()
        .map(|&(n, scan_below)| {
            Seed::new(
                hnsw_graph(n, scan_below, n as u64).to_bytes(),
                vec![
                    Field::U32(0),
                    Field::U32(4),
                    Field::U32(16),
                    Field::U64(20),
                    Field::U32(28),
                    Field::U64(32),
                    Field::U32(44),
                    Field::U32(177),
                ],
            )
        })
        .collect();
    Target {
        name: "hnsw_parse",
        seeds,
        run: Box::new(|_, input| Hnsw::from_bytes(input).is_ok()),
        share: 1,
    }
}

/// Replaces an index file's trailing checksum with the right one for its (mutated) body, so
/// the parser proper is reached.
fn reseal(bytes: &mut [u8]) {
    if bytes.len() >= 32 {
        let body = bytes.len() - 32;
        let sum = *blake3::hash(&bytes[..body]).as_bytes();
        bytes[body..].copy_from_slice(&sum);
    }
}

fn index_target() -> Target {
    let sk = |x: f32| Packed::quantize(&[x; SKETCH_DIM]);
    let index = TensorIndex::build(
        9,
        &[
            (1, DType::F32, 3072, sk(0.0)),
            (2, DType::F32, 3072, sk(1.0)),
            (3, DType::BF16, 1024, sk(0.5)),
            (5, DType::F32, 3072, sk(0.25)),
        ],
    );
    let bytes = index.encode();
    // magic 8 | snapshot length u64 @8 | generation u64 @16 | last id @24 | bucket count u32
    // @32 | then the first bucket: name length u8 @36, name, element count u64, graph length
    // u64, graph (dim u32, ...).
    let name_len = bytes[36] as usize;
    let elements = 37 + name_len;
    let fields = vec![
        Field::U64(8),
        Field::U64(16),
        Field::U64(24),
        Field::U32(32),
        Field::U64(elements),
        Field::U64(elements + 8),
        Field::U32(elements + 16),
        Field::U32(elements + 32),
        Field::U64(elements + 36),
    ];
    Target {
        name: "index_file_parse",
        seeds: vec![Seed::new(bytes, fields)],
        run: Box::new(|_, input| TensorIndex::decode(input).is_ok()),
        share: 1,
    }
}

/// The model-directory importer through the public API: a shard and the shard index of a
/// directory are mutated, written to a directory, and imported with a dry-run put.
fn directory_target(dir: &Path) -> Target {
    let store_root = dir.join("dir-target-store");
    Store::init(&store_root).unwrap();
    let model = Model::directory("d", 11);
    let files = model.file_bytes();
    let input = dir.join("dir-target-input");
    for (path, bytes) in &files {
        let p = input.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let store = Store::open(&store_root).unwrap();
    // Each seed is one file of the directory; the others stay valid. The input size counted
    // is the directory's: the mutated file plus the others.
    let others: usize = files.iter().map(|(_, b)| b.len()).sum();
    let seeds: Vec<Seed> = files
        .iter()
        .filter(|(p, _)| p.ends_with(".safetensors") || p.ends_with(".index.json"))
        .map(|(p, b)| {
            let mut s = Seed::new(b.clone(), vec![Field::U64(0)]);
            s.base = Some(p.clone().into_bytes());
            s.out_len = others - b.len();
            s
        })
        .collect();
    Target {
        name: "model_directory",
        seeds,
        run: Box::new(move |seed, input_bytes| {
            let rel = String::from_utf8(seed.base.clone().unwrap()).unwrap();
            let path = input.join(&rel);
            std::fs::write(&path, input_bytes).unwrap();
            let options = PutOptions {
                dry_run: true,
                ..Default::default()
            };
            let accepted = store.put("probe", &input, &options, &NoProgress).is_ok();
            std::fs::write(&path, &seed.bytes).unwrap();
            accepted
        }),
        share: 1,
    }
}

/// The importer of the other model formats through the public API: an ONNX model, a PyTorch
/// zip checkpoint and a GGUF file are mutated and imported alone with a dry-run put (the
/// format crate's own loop checks that every accepted mutant reassembles byte for byte).
fn model_formats_target(dir: &Path) -> Target {
    use neurstore_formats::pytorch::{pickle_writer, zip};
    let store_root = dir.join("formats-target-store");
    Store::init(&store_root).unwrap();
    let store = Store::open(&store_root).unwrap();
    let input = dir.join("formats-target-input");
    std::fs::create_dir_all(&input).unwrap();
    let w = float_raw(24, 5);
    let entries: Vec<pickle_writer::Entry> = ["a.weight", "a.bias"]
        .iter()
        .enumerate()
        .map(|(i, name)| pickle_writer::Entry {
            name: name.to_string(),
            dtype: DType::F32,
            storage: i.to_string(),
            storage_numel: 12,
            offset: 0,
            size: vec![3, 4],
            stride: vec![4, 1],
        })
        .collect();
    let pickle = pickle_writer::state_dict(&entries);
    let checkpoint = zip::write_archive(&[
        ("archive/data.pkl", &pickle),
        ("archive/data/0", &w[..48]),
        ("archive/data/1", &w[48..]),
        ("archive/version", b"3\n"),
    ]);
    let gguf = neurstore_formats::gguf::build::gguf(&[
        ("f", 0, vec![4, 2], &w[..32]),
        ("q", 8, vec![32], &[1u8; 34]),
    ]);
    let seeds = [
        ("model.onnx", neurstore_formats::onnx::sample::small_model()),
        ("model.pt", checkpoint),
        ("model.gguf", gguf),
    ]
    .into_iter()
    .map(|(name, bytes)| {
        let mut s = Seed::new(bytes, vec![Field::U32(0), Field::U64(8)]);
        s.base = Some(name.as_bytes().to_vec());
        s
    })
    .collect();
    Target {
        name: "model_formats",
        seeds,
        run: Box::new(move |seed, input_bytes| {
            let rel = String::from_utf8(seed.base.clone().unwrap()).unwrap();
            let path = input.join(&rel);
            std::fs::write(&path, input_bytes).unwrap();
            let options = PutOptions {
                dry_run: true,
                ..Default::default()
            };
            store.put("probe", &path, &options, &NoProgress).is_ok()
        }),
        share: 2,
    }
}

fn fuzz(target: &Target, execs: u64, seed: u64) -> TargetTally {
    let mut rng = Rng::new(seed);
    let mut tally = TargetTally::default();
    // Every seed unmutated first: valid inputs must pass through too.
    let mut inputs: Vec<(usize, Vec<u8>)> = target
        .seeds
        .iter()
        .enumerate()
        .map(|(i, s)| (i, s.bytes.clone()))
        .collect();
    for n in 0..execs {
        let (i, input) = if (n as usize) < inputs.len() {
            std::mem::take(&mut inputs[n as usize])
        } else {
            let i = rng.below(target.seeds.len() as u64) as usize;
            let mut m = mutate(&target.seeds[i], &mut rng);
            if target.name == "index_file_parse" && rng.below(4) > 0 {
                reseal(&mut m);
            }
            (i, m)
        };
        let seed = &target.seeds[i];
        let (result, took, peak) = measured(|| (target.run)(seed, &input));
        tally.execs += 1;
        tally.accepted += u64::from(result == Ok(true));
        if let Err(msg) = result {
            let hex: String = input.iter().take(96).map(|b| format!("{b:02x}")).collect();
            tally.crashes.push(format!(
                "{}: seed {i}, {} bytes ({hex}...): {msg}",
                target.name,
                input.len()
            ));
        }
        tally.max_time = tally.max_time.max(took);
        tally.max_peak = tally.max_peak.max(peak);
        let size = input.len() + seed.out_len;
        tally.max_ratio = tally.max_ratio.max(peak as f64 / size.max(1) as f64);
    }
    tally
}

// ---------------------------------------------------------------------------------------------
// Resource bombs

/// A bomb: a name and a check that returns Ok when the input was refused with the right typed
/// error.
type Bomb<'a> = (&'static str, Box<dyn Fn() -> Result<(), String> + 'a>);

fn expect_err<T, E: std::fmt::Display>(r: Result<T, E>, needle: &str) -> Result<(), String> {
    match r {
        Ok(_) => Err("accepted".into()),
        Err(e) if e.to_string().contains(needle) => Ok(()),
        Err(e) => Err(format!("unexpected error: {e}")),
    }
}

/// A forged base chain is refused by the chain walk, or (format 2) before it, by the record of
/// the first object whose row no longer matches what its record seals.
const SEALED_OR_CHAIN: &str =
    "base chain|is not the object the catalog row describes|disagree with the manifest record";

/// `needle` may list alternatives separated by `|`.
fn expect_kind<T>(r: neurstore::Result<T>, kind: ErrorKind, needle: &str) -> Result<(), String> {
    match r {
        Ok(_) => Err("accepted".into()),
        Err(e) if e.kind() == kind && needle.split('|').any(|n| e.to_string().contains(n)) => {
            Ok(())
        }
        Err(e) => Err(format!("unexpected error ({:?}): {e}", e.kind())),
    }
}

/// A safetensors file: `header`, then `data_len` zero bytes.
fn safetensors_file(header: &str, data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend(std::iter::repeat_n(0, data_len));
    out
}

fn format_bombs<'a>(dir: &'a Path, empty_store: &'a Store) -> Vec<Bomb<'a>> {
    let put_file = move |bytes: Vec<u8>| {
        let path = dir.join("bomb.safetensors");
        std::fs::write(&path, bytes).unwrap();
        empty_store.put("bomb", &path, &PutOptions::default(), &NoProgress)
    };
    let nested = |depth: usize| {
        format!(
            r#"{{"t":{{"dtype":"F32","shape":{}0{},"data_offsets":[0,4]}}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
    };
    vec![
        (
            "safetensors header length 2^63",
            Box::new(move || {
                let mut file = (1u64 << 63).to_le_bytes().to_vec();
                file.extend_from_slice(b"{}");
                expect_err(safetensors::parse(&file), "exceeds the limit")?;
                expect_kind(put_file(file), ErrorKind::InvalidInput, "exceeds the limit")
            }),
        ),
        (
            "safetensors shape product overflowing u64",
            Box::new(move || {
                let file = safetensors_file(
                    r#"{"t":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}}"#,
                    4,
                );
                expect_err(safetensors::parse(&file), "overflows")?;
                expect_kind(put_file(file), ErrorKind::InvalidInput, "overflows")
            }),
        ),
        (
            "safetensors byte size overflowing u64",
            Box::new(move || {
                let file = safetensors_file(
                    r#"{"t":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,4]}}"#,
                    4,
                );
                expect_err(safetensors::parse(&file), "byte size overflows")
            }),
        ),
        (
            "safetensors data offsets of 2^64-1",
            Box::new(move || {
                let file = safetensors_file(
                    r#"{"t":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,18446744073709551615]}}"#,
                    4,
                );
                expect_err(safetensors::parse(&file), "run past")
            }),
        ),
        (
            "safetensors header nested 100,000 deep",
            Box::new(move || {
                let file = safetensors_file(&nested(100_000), 4);
                expect_err(safetensors::parse(&file), "recursion limit")
            }),
        ),
        (
            "model directory shard index nested 100,000 deep",
            Box::new(move || {
                let root = dir.join("nested-index");
                let _ = std::fs::remove_dir_all(&root);
                let shard =
                    reliability_fixture::safetensors_bytes(&[reliability_fixture::Tensor {
                        name: "w".into(),
                        dtype: DType::F32,
                        shape: vec![1],
                        data: vec![0; 4],
                    }]);
                std::fs::create_dir_all(&root).unwrap();
                std::fs::write(root.join("m.safetensors"), shard).unwrap();
                let index = format!(
                    r#"{{"weight_map":{}{}}}"#,
                    "[".repeat(100_000),
                    "]".repeat(100_000)
                );
                std::fs::write(root.join("m.safetensors.index.json"), index).unwrap();
                let r = empty_store.put("bomb", &root, &PutOptions::default(), &NoProgress);
                expect_kind(r, ErrorKind::InvalidInput, "recursion limit")
            }),
        ),
    ]
}

/// A zstd frame whose header claims `claimed` bytes of content, holding one RLE block of 100
/// bytes.
fn zstd_frame_claiming(claimed: u64) -> Vec<u8> {
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD];
    // Frame header descriptor: 8-byte content size, single segment, no checksum, no dictionary.
    f.push(0b1110_0000);
    f.extend_from_slice(&claimed.to_le_bytes());
    // Block header: last block, RLE, 100 bytes; then the repeated byte.
    let header: u32 = (100 << 3) | (1 << 1) | 1;
    f.extend_from_slice(&header.to_le_bytes()[..3]);
    f.push(0x42);
    f
}

fn codec_bombs<'a>() -> Vec<Bomb<'a>> {
    let floats = float_raw(1000, 9);
    let grouped_seed = grouped::encode_with(&floats, 4, true, 1);
    let q = quantized::encode(DType::F32, &floats, None, 1e-3, 1).unwrap();
    let with_step = move |step: f64| {
        let mut b = q.bytes.clone();
        b[4..12].copy_from_slice(&step.to_le_bytes());
        let mut out = vec![0u8; 4000];
        quantized::decode_into(DType::F32, &b, None, &mut out)
    };
    let with_step = std::rc::Rc::new(with_step);
    let (s1, s2, s3) = (with_step.clone(), with_step.clone(), with_step);
    let g1 = grouped_seed.clone();
    let g2 = grouped_seed.clone();
    vec![
        (
            "grouped blob declaring 2^32-1 chunks",
            Box::new(move || {
                let mut b = g1.clone();
                b[15..19].copy_from_slice(&u32::MAX.to_le_bytes());
                let mut out = vec![0u8; 4000];
                expect_err(grouped::decode_into(&b, &mut out), "chunk count")
            }),
        ),
        (
            "grouped blob declaring 1 TiB raw",
            Box::new(move || {
                let mut b = g2.clone();
                b[7..15].copy_from_slice(&(1u64 << 40).to_le_bytes());
                let mut out = vec![0u8; 4000];
                expect_err(grouped::decode_into(&b, &mut out), "raw bytes")
            }),
        ),
        (
            "grouped blob of 1 TiB declared by the catalog too, with 2^32-1 byte chunks",
            Box::new(|| {
                // Consistent header, no payload: refused before any chunk is decoded, and the
                // decoder allocates nothing in proportion to the declared length (the caller
                // would have sized the output; here it is empty and the length check fails).
                let mut b = vec![1, 1, 0];
                b.extend_from_slice(&u32::MAX.to_le_bytes());
                b.extend_from_slice(&(1u64 << 40).to_le_bytes());
                b.extend_from_slice(&256u32.to_le_bytes());
                let mut out = vec![0u8; 0];
                expect_err(grouped::decode_into(&b, &mut out), "raw bytes")
            }),
        ),
        (
            "zstd plane claiming 1 TiB",
            Box::new(|| {
                let frame = zstd_frame_claiming(1 << 40);
                let mut b = vec![1, 1, 0];
                b.extend_from_slice(&64u32.to_le_bytes());
                b.extend_from_slice(&64u64.to_le_bytes());
                b.extend_from_slice(&1u32.to_le_bytes());
                b.push(1);
                b.extend_from_slice(&(frame.len() as u32).to_le_bytes());
                b.extend_from_slice(&frame);
                let mut out = vec![0u8; 64];
                expect_err(grouped::decode_into(&b, &mut out), "zstd plane")
            }),
        ),
        (
            "quantized step NaN",
            Box::new(move || expect_err(s1(f64::NAN), "quantization step")),
        ),
        (
            "quantized step +Inf",
            Box::new(move || expect_err(s2(f64::INFINITY), "quantization step")),
        ),
        (
            "quantized step 0",
            Box::new(move || expect_err(s3(0.0), "quantization step")),
        ),
        (
            "quantized element count 2^62 (count x size overflows)",
            Box::new(move || {
                let q = quantized::encode(DType::F32, &floats, None, 1e-3, 1).unwrap();
                let mut b = q.bytes;
                b[12..20].copy_from_slice(&(1u64 << 62).to_le_bytes());
                b[20..28].copy_from_slice(&(1u64 << 62).to_le_bytes());
                let mut out = vec![0u8; 4000];
                expect_err(
                    quantized::decode_into(DType::F32, &b, None, &mut out),
                    "count disagrees",
                )
            }),
        ),
        (
            "delta blob of 1 TiB against a small base",
            Box::new(|| {
                let mut b = vec![1, 0, 4, 1, 4, 0];
                b.extend_from_slice(&(1u32 << 20).to_le_bytes());
                b.extend_from_slice(&(1u64 << 40).to_le_bytes());
                b.extend_from_slice(&(1u32 << 20).to_le_bytes());
                let base = vec![0u8; 64];
                let mut out = vec![0u8; 64];
                expect_err(delta::decode_into(&b, &base, &mut out), "raw bytes")
            }),
        ),
        (
            "HNSW graph claiming 2^60 nodes",
            Box::new(|| {
                let mut b = hnsw_graph(5, 0, 1).to_bytes();
                b[20..28].copy_from_slice(&(1u64 << 60).to_le_bytes());
                expect_err(Hnsw::from_bytes(&b), "node count")
            }),
        ),
        (
            "HNSW graph of dimension 2^32-1",
            Box::new(|| {
                let mut b = hnsw_graph(5, 0, 1).to_bytes();
                b[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
                expect_err(Hnsw::from_bytes(&b), "parameters")
            }),
        ),
        (
            "index file of 2^32-1 buckets",
            Box::new(|| {
                let sk = Packed::quantize(&[0.5; SKETCH_DIM]);
                let mut b = TensorIndex::build(1, &[(1, DType::F32, 100, sk)]).encode();
                b[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
                reseal(&mut b);
                expect_err(TensorIndex::decode(&b), "truncated")
            }),
        ),
        (
            "index file with a graph of 2^64-1 bytes",
            Box::new(|| {
                let sk = Packed::quantize(&[0.5; SKETCH_DIM]);
                let mut b = TensorIndex::build(1, &[(1, DType::F32, 100, sk)]).encode();
                b[48..56].copy_from_slice(&u64::MAX.to_le_bytes());
                reseal(&mut b);
                expect_err(TensorIndex::decode(&b), "truncated")
            }),
        ),
        (
            "index file with a graph of 2^63 bytes",
            Box::new(|| {
                let sk = Packed::quantize(&[0.5; SKETCH_DIM]);
                let mut b = TensorIndex::build(1, &[(1, DType::F32, 100, sk)]).encode();
                // bucket: name length @36, "F32" @37..40, elements @40..48, graph length @48.
                b[48..56].copy_from_slice(&(1u64 << 63).to_le_bytes());
                reseal(&mut b);
                expect_err(TensorIndex::decode(&b), "truncated")
            }),
        ),
    ]
}

/// A copy of the fixture store with `sql` applied to its catalog.
fn edited_store(template: &Path, work: &Path, name: &str, sql: &str) -> PathBuf {
    let root = work.join(name);
    copy_store(template, &root);
    let conn = rusqlite::Connection::open(root.join("catalog.db")).unwrap();
    conn.execute_batch(sql).unwrap();
    root
}

/// Object ids of a model's tensors whose codec is `codec`.
fn tensor_objects(root: &Path, model: &str, codec: i64) -> Vec<i64> {
    let conn = rusqlite::Connection::open(root.join("catalog.db")).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT o.object_id FROM model_tensors t JOIN models m USING (model_id) \
             JOIN objects o USING (object_id) WHERE m.name = ?1 AND o.codec = ?2 ORDER BY t.position",
        )
        .unwrap();
    stmt.query_map(rusqlite::params![model, codec], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn catalog_bombs<'a>(template: &'a Path, work: &'a Path) -> Vec<Bomb<'a>> {
    let deltas = tensor_objects(template, "ft", 2);
    let grouped = tensor_objects(template, "base", 1);
    assert!(
        !deltas.is_empty() && grouped.len() >= 2,
        "{deltas:?} {grouped:?}"
    );
    let (delta, grouped_id, grouped_other) = (deltas[0], grouped[0], grouped[1]);
    let chain_len = 100;
    vec![
        (
            "base reference cycle in the catalog",
            Box::new(move || {
                // The delta's base becomes a delta against the delta.
                let root = edited_store(
                    template,
                    work,
                    "cycle",
                    &format!(
                        "UPDATE objects SET codec = 2, chain_depth = 1, base_id = {delta} \
                         WHERE object_id = (SELECT base_id FROM objects WHERE object_id = {delta})"
                    ),
                );
                let store = Store::open(&root).map_err(|e| e.to_string())?;
                expect_kind(store.load("ft"), ErrorKind::Corrupt, SEALED_OR_CHAIN)?;
                expect_kind(store.load("base"), ErrorKind::Corrupt, SEALED_OR_CHAIN)?;
                expect_kind(
                    store.get("ft", &root.join("out"), &NoProgress),
                    ErrorKind::Corrupt,
                    SEALED_OR_CHAIN,
                )?;
                let problems = store
                    .verify(&NoProgress)
                    .map_err(|e| e.to_string())?
                    .problems;
                if problems
                    .iter()
                    .any(|p| SEALED_OR_CHAIN.split('|').any(|n| p.contains(n)))
                {
                    Ok(())
                } else {
                    Err(format!("verify: {problems:?}"))
                }
            }),
        ),
        (
            "base chain of 100 objects in the catalog",
            Box::new(move || {
                // 100 copies of a delta, each based on the previous, the first on the delta's
                // base; the model's tensor then names the last (its manifest is dropped, as for
                // a model written before manifests).
                let root = edited_store(
                    template,
                    work,
                    "chain",
                    &format!(
                        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {chain_len}) \
                         INSERT INTO objects (object_id, content_key, kind, dtype, shape, raw_len, codec, pack_id, \
                           offset, stored_len, checksum, refcount, base_id, chain_depth, tolerance, max_error, decoded_key) \
                         SELECT 100000 + i, randomblob(32), kind, dtype, shape, raw_len, codec, pack_id, offset, \
                           stored_len, checksum, 1, CASE WHEN i = 1 THEN base_id ELSE 100000 + i - 1 END, i, \
                           tolerance, max_error, decoded_key FROM objects, n WHERE object_id = {delta}; \
                         UPDATE model_tensors SET object_id = {} WHERE object_id = {delta}; \
                         UPDATE models SET manifest = NULL WHERE name = 'ft';",
                        100000 + chain_len
                    ),
                );
                let store = Store::open(&root).map_err(|e| e.to_string())?;
                expect_kind(store.load("ft"), ErrorKind::Corrupt, SEALED_OR_CHAIN)?;
                store.load("base").map_err(|e| format!("base: {e}"))?;
                Ok(())
            }),
        ),
        (
            "chain depth 2^40 in the catalog",
            Box::new(move || {
                let root = edited_store(
                    template,
                    work,
                    "depth",
                    &format!(
                        "UPDATE objects SET chain_depth = 1099511627776 WHERE object_id = {delta}"
                    ),
                );
                let store = Store::open(&root).map_err(|e| e.to_string())?;
                expect_kind(store.load("ft"), ErrorKind::Corrupt, "chain depth")
            }),
        ),
        (
            "catalog declaring a 4 TiB tensor",
            Box::new(move || {
                // Shape, dtype and raw length agree, so the row passes validation; the blob
                // is the real, small one. Reads must refuse without allocating 4 TiB.
                let root = edited_store(
                    template,
                    work,
                    "huge",
                    &format!(
                        "UPDATE objects SET dtype = 'U8', shape = '[4398046511104]', raw_len = 4398046511104 \
                         WHERE object_id = {grouped_id}"
                    ),
                );
                let store = Store::open(&root).map_err(|e| e.to_string())?;
                expect_kind(store.load("base"), ErrorKind::Corrupt, "")?;
                let problems = store
                    .verify(&NoProgress)
                    .map_err(|e| e.to_string())?
                    .problems;
                if problems
                    .iter()
                    .any(|p| p.contains(&format!("object {grouped_id}")))
                {
                    Ok(())
                } else {
                    Err(format!("verify: {problems:?}"))
                }
            }),
        ),
        (
            "catalog tensors whose lengths sum past 2^64",
            Box::new(move || {
                // Two objects of 2^61 - 1 bytes (about the most a row may declare), named by sixteen
                // tensors of one file (a model without a manifest, as written before them).
                let root = edited_store(
                    template,
                    work,
                    "sum",
                    &format!(
                        "UPDATE objects SET dtype = 'U8', shape = '[2305843009213693951]', \
                         raw_len = 2305843009213693951 WHERE object_id IN ({grouped_id}, {grouped_other}); \
                         INSERT INTO model_tensors (model_id, path, position, name, object_id) \
                         SELECT model_id, path, 100 + position, name || '+', object_id FROM model_tensors \
                         WHERE object_id IN ({grouped_id}, {grouped_other}); \
                         INSERT INTO model_tensors (model_id, path, position, name, object_id) \
                         SELECT model_id, path, 200 + position, name || '+', object_id FROM model_tensors \
                         WHERE object_id IN ({grouped_id}, {grouped_other}); \
                         INSERT INTO model_tensors (model_id, path, position, name, object_id) \
                         SELECT model_id, path, 400 + position, name || '+', object_id FROM model_tensors \
                         WHERE object_id IN ({grouped_id}, {grouped_other}); \
                         UPDATE models SET manifest = NULL WHERE name = 'base';"
                    ),
                );
                let store = Store::open(&root).map_err(|e| e.to_string())?;
                expect_kind(
                    store.get("base", &root.join("out"), &NoProgress),
                    ErrorKind::Corrupt,
                    "",
                )?;
                expect_kind(store.load("base"), ErrorKind::Corrupt, "")
            }),
        ),
        (
            "catalog model of -1 raw bytes",
            Box::new(move || {
                let root = edited_store(
                    template,
                    work,
                    "raw-bytes",
                    "UPDATE models SET raw_bytes = -1 WHERE name = 'base'",
                );
                let store = Store::open(&root).map_err(|e| e.to_string())?;
                // The manifest record in the packs says otherwise: the row is refused.
                expect_kind(
                    store.get("base", &root.join("out"), &NoProgress),
                    ErrorKind::Corrupt,
                    "disagree with the manifest record",
                )?;
                // The listings still add it up with the others.
                store.stats().map_err(|e| e.to_string())?;
                store.info("base").map_err(|e| e.to_string())?;
                store.list().map_err(|e| e.to_string())?;
                Ok(())
            }),
        ),
    ]
}

/// A put that asks for chains longer than any reader follows is refused, and chains as long
/// as allowed read back in a fresh process's view (a new `Store`, nothing cached).
fn chain_depth_bomb(work: &Path) -> Result<(), String> {
    let root = work.join("deep");
    Store::init(&root).map_err(|e| e.to_string())?;
    let store = Store::open_writer(&root).map_err(|e| e.to_string())?;
    let data = |i: usize| f32_bytes((0..256).map(|j| (j as f32 * 0.01) + i as f32 * 1e-4));
    let put = |i: usize, depth: u32| {
        let bytes = data(i);
        let tensors = [TensorInput {
            name: "w",
            dtype: DType::F32,
            shape: &[256],
            data: &bytes,
        }];
        let options = PutOptions {
            mode: Mode::Absolute(1e-2),
            base: if i == 0 {
                BaseChoice::None
            } else {
                BaseChoice::Model(format!("m{}", i - 1))
            },
            max_chain_depth: depth,
            ..Default::default()
        };
        store.put_tensors(&format!("m{i}"), &tensors, None, &options, &NoProgress)
    };
    put(0, 1).map_err(|e| e.to_string())?;
    expect_kind(put(1, 1000), ErrorKind::InvalidInput, "max-chain-depth")?;
    // The longest chain allowed, every link a quantized delta on the previous model.
    let longest = 64;
    for i in 1..=longest {
        let report = put(i, longest as u32).map_err(|e| format!("put m{i}: {e}"))?;
        if report.delta_tensors != 1 {
            return Err(format!("m{i} was not stored as a delta: {report:?}"));
        }
    }
    drop(store);
    let fresh = Store::open(&root).map_err(|e| e.to_string())?;
    let loaded = fresh
        .load(&format!("m{longest}"))
        .map_err(|e| format!("m{longest} in a fresh reader: {e}"))?;
    let want = data(longest);
    let ok = loaded[0]
        .data
        .chunks_exact(4)
        .zip(want.chunks_exact(4))
        .all(|(a, b)| {
            let (a, b) = (
                f32::from_le_bytes(a.try_into().unwrap()),
                f32::from_le_bytes(b.try_into().unwrap()),
            );
            ((a - b) as f64).abs() <= 1e-2
        });
    if ok {
        Ok(())
    } else {
        Err("wrong values at the end of the longest chain".into())
    }
}

#[test]
fn hostile_inputs_are_refused_within_bounds() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let execs = if full_run() { 50_000 } else { 2_000 };
    let targets = vec![
        safetensors_target(),
        directory_target(dir.path()),
        model_formats_target(dir.path()),
        grouped_target(),
        entropy_target(),
        delta_target(),
        quantized_target(),
        hnsw_target(),
        index_target(),
    ];
    let mut total_execs = 0;
    let mut crashes = Vec::new();
    let mut max_time = Duration::ZERO;
    let mut max_ratio = 0f64;
    for (k, target) in targets.iter().enumerate() {
        let t = fuzz(target, execs / target.share, 0xF022 + k as u64);
        eprintln!(
            "hostile inputs: {:<18} {:>6} execs ({} accepted); crashes = {}; max bytes allocated {} ({:.1} x input); max time {:.2} ms",
            target.name,
            t.execs,
            t.accepted,
            t.crashes.len(),
            t.max_peak,
            t.max_ratio,
            t.max_time.as_secs_f64() * 1e3
        );
        total_execs += t.execs;
        crashes.extend(t.crashes);
        max_time = max_time.max(t.max_time);
        max_ratio = max_ratio.max(t.max_ratio);
    }
    drop(targets);

    // Bombs.
    let template = dir.path().join("fixture");
    build_store(&template, &models());
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let empty_root = dir.path().join("empty");
    Store::init(&empty_root).unwrap();
    let empty = Store::open_writer(&empty_root).unwrap();
    let mut bombs: Vec<Bomb> = Vec::new();
    bombs.extend(format_bombs(dir.path(), &empty));
    bombs.extend(codec_bombs());
    bombs.extend(catalog_bombs(&template, &work));
    bombs.push((
        "put asking for a chain deeper than readers follow",
        Box::new(|| chain_depth_bomb(&work)),
    ));
    let mut typed = 0;
    let mut failures = Vec::new();
    let mut bomb_peak = 0;
    let mut bomb_time = Duration::ZERO;
    for (name, check) in &bombs {
        let (result, took, peak) = measured(check);
        bomb_peak = bomb_peak.max(peak);
        bomb_time = bomb_time.max(took);
        match result {
            Ok(Ok(())) if peak <= 64 << 20 => typed += 1,
            Ok(Ok(())) => failures.push(format!("{name}: allocated {peak} bytes")),
            Ok(Err(e)) => failures.push(format!("{name}: {e}")),
            Err(panic) => {
                crashes.push(format!("bomb {name}: {panic}"));
                failures.push(format!("{name}: panicked"));
            }
        }
    }
    eprintln!(
        "hostile inputs: {total_execs} execs over {} targets; crashes = {}; max bytes allocated / input size = {max_ratio:.1}; max time per input = {:.2} ms; bombs: {typed} typed errors",
        9,
        crashes.len(),
        max_time.as_secs_f64() * 1e3
    );
    eprintln!(
        "hostile inputs: {} bombs, largest allocation {bomb_peak} bytes, longest {:.0} ms; {:.1} s in all",
        bombs.len(),
        bomb_time.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64()
    );
    for c in crashes.iter().chain(&failures).take(20) {
        eprintln!("  {c}");
    }
    assert!(crashes.is_empty(), "{} crashes", crashes.len());
    assert!(
        failures.is_empty(),
        "{} bombs not refused cleanly",
        failures.len()
    );
    assert_eq!(typed, bombs.len());
}
