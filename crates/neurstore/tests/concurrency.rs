//! Invariant: readers running beside the one writer (threads, each with its own `Store::open`, no lock) see every model whole: a read returns the model's exact bytes (within its bound for a bounded model) or fails with ModelNotFound because the writer removed it; never a partial or wrong model, never another error.
//!
//! Reader threads repeatedly list the models, pick one at random and `get` or `load` it,
//! comparing with its original, first alone (the latency baseline), then while one writer
//! puts new models (lossless fine-tunes stored as deltas, bounded fine-tunes, directories),
//! removes older ones and collects garbage (which rewrites packs and removes files under the
//! readers). The default run has 3 readers and 24 writer steps; `NEURSTORE_FULL_RELIABILITY=1`
//! runs 4 readers and 150 steps. Reader processes are the business of the CLI crate's
//! `tests/concurrency.rs`; a second writer and a killed writer are in `tests/bad_inputs.rs`
//! and the CLI's `tests/kill.rs`.

mod reliability_fixture;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use neurstore::{ErrorKind, Mode, NoProgress, Store, StoreOptions};
use reliability_fixture::{
    Model, Rng, TOLERANCE, base_tensors, fine_tune, full_run, percentile_ms, random_tensor,
};

/// What readers and the writer share.
struct Shared {
    /// Every model ever put, by name (names are never reused). Inserted before the put starts.
    models: RwLock<HashMap<String, Model>>,
    /// Names the writer has started to remove.
    removing: RwLock<HashSet<String>>,
    /// Set when the writer is done.
    done: AtomicBool,
    reads: AtomicU64,
    not_found: AtomicU64,
    violations: Mutex<Vec<String>>,
}

/// The `i`-th model the writer puts: a lossless or bounded fine-tune of the base, a directory,
/// or an unrelated model.
fn nth_model(i: u64) -> Model {
    let base = base_tensors(0xBA5E);
    let name = format!("m{i}");
    match i % 4 {
        0 => Model::file(&name, fine_tune(&base, 100 + i, 5e-4), Mode::Lossless),
        1 => Model::file(
            &name,
            fine_tune(&base, 100 + i, 5e-4),
            Mode::Absolute(TOLERANCE),
        ),
        2 => Model::directory(&name, 100 + i),
        _ => {
            let mut rng = Rng::new(i);
            let tensors = vec![
                random_tensor("w", neurstore::DType::F32, &[40, 40], &mut rng),
                random_tensor("ids", neurstore::DType::I64, &[64], &mut rng),
            ];
            Model::file(&name, tensors, Mode::Lossless)
        }
    }
}

/// One read of a random listed model; returns its latency.
fn read_one(store: &Store, shared: &Shared, rng: &mut Rng, scratch: &Path) -> Option<Duration> {
    let listed = match store.list() {
        Ok(l) if !l.is_empty() => l,
        Ok(_) => return None,
        Err(e) => {
            shared.violations.lock().unwrap().push(format!("list: {e}"));
            return None;
        }
    };
    let name = &listed[rng.below(listed.len() as u64) as usize].name;
    let model = shared.models.read().unwrap().get(name).cloned();
    let Some(model) = model else {
        shared
            .violations
            .lock()
            .unwrap()
            .push(format!("{name} is listed but was never put"));
        return None;
    };
    let started = Instant::now();
    let out = scratch.join("out");
    let _ = std::fs::remove_dir_all(&out).or_else(|_| std::fs::remove_file(&out));
    let result = if rng.below(2) == 0 {
        store
            .get(name, &out, &NoProgress)
            .map(|_| model.check_get(&out))
    } else {
        store.load(name).map(|loaded| model.check_load(&loaded))
    };
    let took = started.elapsed();
    shared.reads.fetch_add(1, Ordering::Relaxed);
    let violation = match result {
        Ok(Ok(())) => None,
        Ok(Err(wrong)) => Some(format!("{name}: served wrong data: {wrong}")),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            shared.not_found.fetch_add(1, Ordering::Relaxed);
            if shared.removing.read().unwrap().contains(name) {
                None
            } else {
                Some(format!("{name}: not found but never removed: {e}"))
            }
        }
        Err(e) => Some(format!("{name}: {e}")),
    };
    if let Some(v) = violation {
        shared.violations.lock().unwrap().push(v);
    }
    Some(took)
}

fn writer(root: &Path, shared: &Shared, steps: u64, inputs: &Path) {
    let store = Store::open_with(
        root,
        StoreOptions {
            write: true,
            max_pack_len: Some(64 * 1024),
            ..Default::default()
        },
    )
    .unwrap();
    // The lock is held: a second writer is told who holds it.
    let err = Store::open_writer(root)
        .err()
        .expect("second writer refused");
    assert_eq!(err.kind(), ErrorKind::Locked, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    let mut rng = Rng::new(0x3217);
    let mut live: Vec<String> = store.list().unwrap().into_iter().map(|m| m.name).collect();
    for i in 0..steps {
        let model = nth_model(i);
        shared
            .models
            .write()
            .unwrap()
            .insert(model.name.clone(), model.clone());
        model.put(&store, inputs).unwrap();
        live.push(model.name.clone());
        if i % 2 == 1 && live.len() > 3 {
            let victim = live.remove(rng.below(live.len() as u64) as usize);
            shared.removing.write().unwrap().insert(victim.clone());
            store.remove(&victim).unwrap();
        }
        if i % 4 == 3 {
            store.gc(&NoProgress).unwrap();
        }
    }
    // Everything left reads back, and nothing leaked into a half-visible state.
    let report = store.verify(&NoProgress).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn readers_see_whole_models_while_one_writer_works() {
    let (readers, steps) = if full_run() { (4, 150) } else { (3, 24) };
    let baseline_reads = 30;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    reliability_fixture::build_store(&root, &reliability_fixture::models());
    let shared = Shared {
        models: RwLock::new(
            reliability_fixture::models()
                .into_iter()
                .map(|m| (m.name.clone(), m))
                .collect(),
        ),
        removing: RwLock::new(HashSet::new()),
        done: AtomicBool::new(false),
        reads: AtomicU64::new(0),
        not_found: AtomicU64::new(0),
        violations: Mutex::new(Vec::new()),
    };
    let writer_started = AtomicBool::new(false);
    let baseline_done = AtomicU64::new(0);
    let latencies: Mutex<(Vec<Duration>, Vec<Duration>)> = Mutex::new((Vec::new(), Vec::new()));
    std::thread::scope(|s| {
        for r in 0..readers {
            let (shared, latencies, root) = (&shared, &latencies, &root);
            let (writer_started, baseline_done) = (&writer_started, &baseline_done);
            let scratch = dir.path().join(format!("reader-{r}"));
            std::fs::create_dir(&scratch).unwrap();
            s.spawn(move || {
                let store = Store::open(root).unwrap();
                let mut rng = Rng::new(r as u64 + 1);
                let (mut alone, mut beside) = (Vec::new(), Vec::new());
                // Alone first, then beside the writer until it is done.
                while alone.len() < baseline_reads {
                    alone.extend(read_one(&store, shared, &mut rng, &scratch));
                }
                baseline_done.fetch_add(1, Ordering::SeqCst);
                while !writer_started.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                }
                while !shared.done.load(Ordering::SeqCst) {
                    beside.extend(read_one(&store, shared, &mut rng, &scratch));
                }
                let mut l = latencies.lock().unwrap();
                l.0.extend(alone);
                l.1.extend(beside);
            });
        }
        let (shared, root, inputs) = (&shared, &root, dir.path());
        let (writer_started, baseline_done) = (&writer_started, &baseline_done);
        s.spawn(move || {
            while baseline_done.load(Ordering::SeqCst) < readers as u64 {
                std::thread::sleep(Duration::from_millis(1));
            }
            writer_started.store(true, Ordering::SeqCst);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                writer(root, shared, steps, inputs)
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
    let violations = shared.violations.into_inner().unwrap();
    eprintln!(
        "reads: {} ({} alone, {} beside the writer, {} found the model removed); violations = {}; reader p50/p99 without writer {:.1}/{:.1} ms, with writer {:.1}/{:.1} ms ({readers} reader threads, {steps} writer steps)",
        shared.reads.load(Ordering::Relaxed),
        alone.len(),
        beside.len(),
        shared.not_found.load(Ordering::Relaxed),
        violations.len(),
        percentile_ms(&alone, 50.0),
        percentile_ms(&alone, 99.0),
        percentile_ms(&beside, 50.0),
        percentile_ms(&beside, 99.0),
    );
    for v in violations.iter().take(20) {
        eprintln!("  {v}");
    }
    assert!(violations.is_empty(), "{} violations", violations.len());
    assert!(!beside.is_empty(), "no read ran beside the writer");
}
