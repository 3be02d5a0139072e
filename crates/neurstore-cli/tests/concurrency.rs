//! Invariant: reader processes (`neurstore get`, no lock) running while another process writes see every model whole: each get either writes the model's exact bytes or fails with "no model named" because the writer removed it; and a second writer process is refused with "locked by pid N" naming the writer.
//!
//! The test process is the writer (through the library): it puts new models (lossless
//! fine-tunes stored as deltas, fine-tunes within a bound, unrelated models), removes older
//! ones and collects garbage, while reader threads spawn `neurstore get` of random models and
//! compare the files written with the expected bytes (for a bounded model: the bytes its first
//! read gave, checked within the bound, since decoding is deterministic). Reads are timed
//! alone first, then beside the writer. The default run has 2 reader threads and 12 writer
//! steps; `NEURSTORE_FULL_RELIABILITY=1` runs 3 and 60. A writer killed mid-commit is
//! `tests/kill.rs`.

mod common;

use common::safetensors;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use neurstore::{BaseChoice, Mode, NoProgress, PutOptions, Store};

const TOLERANCE: f64 = 1e-3;

fn full_run() -> bool {
    std::env::var("NEURSTORE_FULL_RELIABILITY").is_ok_and(|v| v == "1")
}

/// Deterministic pseudo-random numbers (xorshift64).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn normal(&mut self) -> f32 {
        ((0..12)
            .map(|_| (self.next() >> 11) as f64 / (1u64 << 53) as f64)
            .sum::<f64>()
            - 6.0) as f32
    }
}

const LAYOUT: [(&str, usize); 3] = [("w1", 4096), ("w2", 1024), ("b", 64)];

fn base_values() -> Vec<Vec<f32>> {
    let mut rng = Rng::new(7);
    LAYOUT
        .iter()
        .map(|(_, n)| (0..*n).map(|_| 0.05 * rng.normal()).collect())
        .collect()
}

/// The `i`-th model the writer puts (after the base, model 0): a lossless or bounded
/// fine-tune of the base, or an unrelated model.
fn nth_model(i: u64) -> (Vec<u8>, Mode) {
    let base = base_values();
    let mut rng = Rng::new(1000 + i);
    let values: Vec<Vec<f32>> = match i % 3 {
        0 if i > 0 => base
            .iter()
            .map(|t| t.iter().map(|v| v + 5e-4 * rng.normal()).collect())
            .collect(),
        1 => base
            .iter()
            .map(|t| t.iter().map(|v| v + 5e-4 * rng.normal()).collect())
            .collect(),
        _ if i == 0 => base,
        _ => LAYOUT
            .iter()
            .map(|(_, n)| (0..*n).map(|_| 0.05 * rng.normal()).collect())
            .collect(),
    };
    let tensors: Vec<(&str, Vec<f32>)> = LAYOUT.iter().map(|(n, _)| *n).zip(values).collect();
    let mode = if i % 3 == 1 {
        Mode::Absolute(TOLERANCE)
    } else {
        Mode::Lossless
    };
    let parts: Vec<(&str, &[f32])> = tensors.iter().map(|(n, v)| (*n, &v[..])).collect();
    (safetensors(&parts), mode)
}

/// Checks `got` against the original within `tol` element by element (same header).
fn within_bound(original: &[u8], got: &[u8], tol: f64) -> bool {
    let header = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    original.len() == got.len()
        && original[..header] == got[..header]
        && original[header..]
            .chunks_exact(4)
            .zip(got[header..].chunks_exact(4))
            .all(|(a, b)| {
                let a = f32::from_le_bytes(a.try_into().unwrap()) as f64;
                let b = f32::from_le_bytes(b.try_into().unwrap()) as f64;
                (a - b).abs() <= tol
            })
}

/// What the readers and the writer share.
struct Shared {
    /// Name -> bytes a get must write. Inserted once the put returned.
    expected: RwLock<HashMap<String, Vec<u8>>>,
    /// Names the writer started to remove.
    removing: RwLock<HashSet<String>>,
    done: AtomicBool,
    writer_started: AtomicBool,
    baseline_done: AtomicU64,
    reads: AtomicU64,
    not_found: AtomicU64,
    violations: Mutex<Vec<String>>,
}

fn neurstore(store: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_neurstore"));
    cmd.env_remove("NEURSTORE_DIR").arg("--store").arg(store);
    cmd
}

/// One `neurstore get` of a random model; returns its latency.
fn read_one(store: &Path, shared: &Shared, rng: &mut Rng, out: &Path) -> Duration {
    let (name, want) = {
        let expected = shared.expected.read().unwrap();
        let mut names: Vec<&String> = expected.keys().collect();
        names.sort();
        let name = names[rng.below(names.len() as u64) as usize].clone();
        let want = expected[&name].clone();
        (name, want)
    };
    let _ = std::fs::remove_file(out);
    let started = Instant::now();
    let result = neurstore(store)
        .args(["get", &name, "-o"])
        .arg(out)
        .output()
        .unwrap();
    let took = started.elapsed();
    shared.reads.fetch_add(1, Ordering::Relaxed);
    let stderr = String::from_utf8_lossy(&result.stderr);
    let violation = if result.status.success() {
        match std::fs::read(out) {
            Ok(got) if got == want => None,
            Ok(_) => Some(format!("{name}: get wrote wrong bytes")),
            Err(e) => Some(format!("{name}: get succeeded but wrote nothing: {e}")),
        }
    } else if stderr.contains(&format!("no model named {name:?}")) {
        shared.not_found.fetch_add(1, Ordering::Relaxed);
        if shared.removing.read().unwrap().contains(&name) {
            None
        } else {
            Some(format!("{name}: not found but never removed"))
        }
    } else {
        Some(format!("{name}: get failed: {stderr}"))
    };
    if let Some(v) = violation {
        shared.violations.lock().unwrap().push(v);
    }
    took
}

fn writer(root: &Path, shared: &Shared, steps: u64, inputs: &Path, store: Store) {
    let mut rng = Rng::new(0x5EED);
    let mut live: Vec<String> = vec!["m0".into()];
    for i in 1..=steps {
        let name = format!("m{i}");
        let (bytes, mode) = nth_model(i);
        let input = inputs.join(format!("{name}.safetensors"));
        std::fs::write(&input, &bytes).unwrap();
        let options = PutOptions {
            mode,
            base: BaseChoice::Auto,
            ..Default::default()
        };
        store.put(&name, &input, &options, &NoProgress).unwrap();
        let want = expected_bytes(&store, &name, &bytes, mode, inputs);
        shared.expected.write().unwrap().insert(name.clone(), want);
        live.push(name);
        if i == 2 {
            // A second writer process is refused, naming this one.
            let out = neurstore(root)
                .args(["put", "intruder"])
                .arg(&input)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let pid = format!("locked by pid {}", std::process::id());
            if out.status.success() || !stderr.contains(&pid) {
                shared
                    .violations
                    .lock()
                    .unwrap()
                    .push(format!("second writer not refused with {pid:?}: {stderr}"));
            }
        }
        if i % 2 == 0 && live.len() > 2 {
            let victim = live.remove(rng.below(live.len() as u64) as usize);
            shared.removing.write().unwrap().insert(victim.clone());
            store.remove(&victim).unwrap();
        }
        if i % 3 == 0 {
            store.gc(&NoProgress).unwrap();
        }
    }
    let report = store.verify(&NoProgress).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// The bytes a get of a just-put model must write: the input, or for a bounded model what the
/// store reconstructs (checked within the bound here; decoding is deterministic, so every later
/// get must write exactly these bytes).
fn expected_bytes(store: &Store, name: &str, input: &[u8], mode: Mode, dir: &Path) -> Vec<u8> {
    if mode == Mode::Lossless {
        return input.to_vec();
    }
    let out = dir.join(format!("{name}.reconstructed"));
    store.get(name, &out, &NoProgress).unwrap();
    let got = std::fs::read(&out).unwrap();
    assert!(within_bound(input, &got, TOLERANCE), "{name} out of bound");
    got
}

#[test]
fn reader_processes_see_whole_models_while_a_writer_works() {
    let (readers, steps) = if full_run() { (3, 60) } else { (2, 12) };
    let baseline_reads = 5;
    let dir = tempfile::tempdir().unwrap();
    let root: PathBuf = dir.path().join("store");
    Store::init(&root).unwrap();
    let store = Store::open_writer(&root).unwrap();
    let (bytes, mode) = nth_model(0);
    let input = dir.path().join("m0.safetensors");
    std::fs::write(&input, &bytes).unwrap();
    let options = PutOptions {
        mode,
        ..Default::default()
    };
    store.put("m0", &input, &options, &NoProgress).unwrap();
    let shared = Shared {
        expected: RwLock::new(HashMap::from([("m0".to_string(), bytes)])),
        removing: RwLock::new(HashSet::new()),
        done: AtomicBool::new(false),
        writer_started: AtomicBool::new(false),
        baseline_done: AtomicU64::new(0),
        reads: AtomicU64::new(0),
        not_found: AtomicU64::new(0),
        violations: Mutex::new(Vec::new()),
    };
    let latencies: Mutex<(Vec<Duration>, Vec<Duration>)> = Mutex::new((Vec::new(), Vec::new()));
    std::thread::scope(|s| {
        for r in 0..readers {
            let (shared, latencies, root) = (&shared, &latencies, &root);
            let out = dir.path().join(format!("reader-{r}.out"));
            s.spawn(move || {
                let mut rng = Rng::new(r as u64 + 1);
                let mut alone: Vec<Duration> = (0..baseline_reads)
                    .map(|_| read_one(root, shared, &mut rng, &out))
                    .collect();
                shared.baseline_done.fetch_add(1, Ordering::SeqCst);
                while !shared.writer_started.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let mut beside = Vec::new();
                while !shared.done.load(Ordering::SeqCst) {
                    beside.push(read_one(root, shared, &mut rng, &out));
                }
                let mut l = latencies.lock().unwrap();
                l.0.append(&mut alone);
                l.1.append(&mut beside);
            });
        }
        let (shared, root, inputs) = (&shared, &root, dir.path());
        s.spawn(move || {
            while shared.baseline_done.load(Ordering::SeqCst) < readers as u64 {
                std::thread::sleep(Duration::from_millis(1));
            }
            shared.writer_started.store(true, Ordering::SeqCst);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                writer(root, shared, steps, inputs, store)
            }));
            shared.done.store(true, Ordering::SeqCst);
            if let Err(p) = result {
                std::panic::resume_unwind(p);
            }
        });
    });
    let (mut alone, mut beside) = latencies.into_inner().unwrap();
    alone.sort();
    beside.sort();
    let ms = |v: &[Duration], p: f64| {
        v.get(((v.len().max(1) - 1) as f64 * p / 100.0).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let violations = shared.violations.into_inner().unwrap();
    eprintln!(
        "reads: {} `neurstore get` processes ({} alone, {} beside the writer, {} found the model removed); violations = {}; reader p50/p99 without writer {:.0}/{:.0} ms, with writer {:.0}/{:.0} ms ({readers} reader threads, {steps} writer steps)",
        shared.reads.load(Ordering::Relaxed),
        alone.len(),
        beside.len(),
        shared.not_found.load(Ordering::Relaxed),
        violations.len(),
        ms(&alone, 50.0),
        ms(&alone, 99.0),
        ms(&beside, 50.0),
        ms(&beside, 99.0),
    );
    for v in violations.iter().take(20) {
        eprintln!("  {v}");
    }
    assert!(violations.is_empty(), "{} violations", violations.len());
    assert!(!beside.is_empty(), "no read ran beside the writer");
}
