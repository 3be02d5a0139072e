//! The workload the crash, I/O error and disk-full loops run over a `FaultBackend` (put a base,
//! a lossless fine-tune and a bounded fine-tune; remove the first fine-tune; collect garbage),
//! the reference model of what was acknowledged, and the checks of a reopened store against it.
//!
//! The packs live in the fault backend (in memory); the catalog is a real SQLite file in a
//! temporary directory, outside the backend. To check an image, the catalog files are copied,
//! after the store that wrote them was dropped, beside the image.
// Each loop uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use neurstore::{
    DType, Error, LoadedTensor, Mode, NoProgress, PutOptions, RecoveryReport, Store, StoreOptions,
    TensorInput,
};
use neurstore_storage::catalog::Queries;
use neurstore_storage::fault::FaultBackend;
use neurstore_storage::pack::pack_id_from_name;
use neurstore_storage::{Engine, EngineOptions, pack_worth_collecting};

/// Small packs, so one put spans several of them (sealed packs, several pack directory syncs).
pub const MAX_PACK_LEN: u64 = 24 * 1024;
/// Absolute bound of the bounded fine-tune.
pub const TOLERANCE: f64 = 1e-3;

/// True when `NEURSTORE_FULL_RELIABILITY=1` asks for the full run instead of the CI sample.
pub fn full_run() -> bool {
    std::env::var("NEURSTORE_FULL_RELIABILITY").is_ok_and(|v| v == "1")
}

/// One F32 tensor.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: &'static str,
    pub shape: Vec<u64>,
    pub values: Vec<f32>,
}

/// A model of the workload and how it is stored.
#[derive(Clone, Debug)]
pub struct Model {
    pub name: &'static str,
    pub tensors: Vec<Tensor>,
    pub mode: Mode,
}

/// Deterministic pseudo-random numbers (xorshift64).
struct Rng(u64);

impl Rng {
    fn normal(&mut self) -> f32 {
        let mut sum = 0.0;
        for _ in 0..12 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            sum += (self.0 >> 11) as f64 / (1u64 << 53) as f64;
        }
        (sum - 6.0) as f32
    }
}

/// The base, a fine-tune stored losslessly (as deltas against the base) and a fine-tune stored
/// within `TOLERANCE` (quantized against the base).
pub fn models() -> Vec<Model> {
    let mut rng = Rng(0x5EED_0FBA_5E00);
    let layout: [(&str, &[u64]); 3] = [("w1", &[48, 64]), ("w2", &[32, 32]), ("bias", &[64])];
    let base: Vec<Tensor> = layout
        .iter()
        .map(|(name, shape)| Tensor {
            name,
            shape: shape.to_vec(),
            values: (0..shape.iter().product::<u64>())
                .map(|_| 0.05 * rng.normal())
                .collect(),
        })
        .collect();
    let mut tune = |scale: f32| -> Vec<Tensor> {
        base.iter()
            .map(|t| Tensor {
                values: t.values.iter().map(|v| v + scale * rng.normal()).collect(),
                ..t.clone()
            })
            .collect()
    };
    let ft = tune(0.0005);
    let ft2 = tune(0.0005);
    vec![
        Model {
            name: "base",
            tensors: base,
            mode: Mode::Lossless,
        },
        Model {
            name: "ft",
            tensors: ft,
            mode: Mode::Lossless,
        },
        Model {
            name: "ft2",
            tensors: ft2,
            mode: Mode::Absolute(TOLERANCE),
        },
    ]
}

/// One step of the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Put `models()[i]`.
    Put(usize),
    /// Remove a model.
    Remove(&'static str),
    /// Collect garbage.
    Gc,
}

pub const STEPS: [Step; 5] = [
    Step::Put(0),
    Step::Put(1),
    Step::Put(2),
    Step::Remove("ft"),
    Step::Gc,
];

/// What a step (or opening the store) did.
#[derive(Debug)]
pub enum Outcome {
    Ok,
    Failed(Error),
    Panicked(String),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

/// One step as run.
#[derive(Debug)]
pub struct StepRun {
    pub step: Step,
    pub outcome: Outcome,
    /// Injected faults that fired during the step.
    pub faults_fired: u64,
    /// Operation counter of the backend when the step returned.
    pub ops_after: u64,
    /// What a put that succeeded reported.
    pub put_report: Option<neurstore::PutReport>,
}

/// A run of the workload over one backend.
pub struct Run {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    /// Opening the store, then each step.
    pub open: Outcome,
    pub steps: Vec<StepRun>,
    /// The reference model: every model whose put returned Ok and whose remove did not, by
    /// name, with its index in `models()`.
    pub acked: BTreeMap<&'static str, usize>,
}

impl Run {
    /// Panics anywhere (opening included).
    pub fn panics(&self) -> usize {
        let steps = self
            .steps
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Panicked(_)))
            .count();
        steps + usize::from(matches!(self.open, Outcome::Panicked(_)))
    }

    /// The first step that did not return Ok.
    pub fn first_failure(&self) -> Option<&StepRun> {
        self.steps.iter().find(|s| !s.outcome.is_ok())
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

fn catch<T>(f: impl FnOnce() -> neurstore::Result<T>) -> (Outcome, Option<T>) {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => (Outcome::Ok, Some(v)),
        Ok(Err(e)) => (Outcome::Failed(e), None),
        Err(p) => (Outcome::Panicked(panic_message(p)), None),
    }
}

/// Opens a writer on `root` with `disk` as its pack backend.
pub fn open_writer(root: &Path, disk: &FaultBackend) -> neurstore::Result<Store> {
    Store::open_with(
        root,
        StoreOptions {
            write: true,
            max_pack_len: Some(MAX_PACK_LEN),
            backend: Some(Arc::new(disk.clone())),
            ..Default::default()
        },
    )
}

fn put(store: &Store, model: &Model) -> neurstore::Result<neurstore::PutReport> {
    let bytes: Vec<Vec<u8>> = model
        .tensors
        .iter()
        .map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let inputs: Vec<TensorInput> = model
        .tensors
        .iter()
        .zip(&bytes)
        .map(|(t, data)| TensorInput {
            name: t.name,
            dtype: DType::F32,
            shape: &t.shape,
            data,
        })
        .collect();
    let options = PutOptions {
        mode: model.mode,
        ..Default::default()
    };
    store.put_tensors(model.name, &inputs, None, &options, &NoProgress)
}

/// Runs the workload on a new store whose packs live in `disk`, every step under
/// `catch_unwind`, going on after failures (they must keep failing). `inspect` sees the store
/// after the last step, before it is dropped.
pub fn run(disk: &FaultBackend, models: &[Model], inspect: impl FnOnce(&Store)) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Store::init(&root).unwrap();
    let (open, store) = catch(|| open_writer(&root, disk));
    let mut steps = Vec::new();
    let mut acked = BTreeMap::new();
    if let Some(store) = store {
        for step in STEPS {
            let fired = disk.injected();
            let (outcome, put_report) = match step {
                Step::Put(i) => catch(|| put(&store, &models[i])),
                Step::Remove(name) => (catch(|| store.remove(name)).0, None),
                Step::Gc => (catch(|| store.gc(&NoProgress)).0, None),
            };
            if outcome.is_ok() {
                match step {
                    Step::Put(i) => {
                        acked.insert(models[i].name, i);
                    }
                    Step::Remove(name) => {
                        acked.remove(name);
                    }
                    Step::Gc => {}
                }
            }
            steps.push(StepRun {
                step,
                outcome,
                faults_fired: disk.injected() - fired,
                ops_after: disk.ops(),
                put_report,
            });
        }
        inspect(&store);
    }
    Run {
        dir,
        root,
        open,
        steps,
        acked,
    }
}

/// Checks `loaded` against `model`: bit-exact when lossless, every element within the bound
/// otherwise.
pub fn compare(model: &Model, loaded: &[LoadedTensor]) -> Result<(), String> {
    if loaded.len() != model.tensors.len() {
        return Err(format!(
            "{} tensors, expected {}",
            loaded.len(),
            model.tensors.len()
        ));
    }
    for (l, t) in loaded.iter().zip(&model.tensors) {
        if l.name != t.name || l.dtype != DType::F32 || l.shape != t.shape {
            return Err(format!(
                "tensor {:?} {:?}: wrong name, dtype or shape",
                l.name, l.shape
            ));
        }
        let expected: Vec<u8> = t.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        if l.data.len() != expected.len() {
            return Err(format!("tensor {}: {} bytes", t.name, l.data.len()));
        }
        let ok = match model.mode {
            Mode::Lossless => *l.data == expected[..],
            _ => l.data.chunks_exact(4).zip(&t.values).all(|(b, v)| {
                let got = f32::from_le_bytes(b.try_into().unwrap());
                ((got as f64) - (*v as f64)).abs() <= TOLERANCE
            }),
        };
        if !ok {
            return Err(format!("tensor {}: wrong values", t.name));
        }
    }
    Ok(())
}

/// The first `std::io::Error` in an error's chain, if any.
pub fn io_kind(e: &Error) -> Option<std::io::ErrorKind> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        next = err.source();
    }
    None
}

/// What checking a reopened store found.
#[derive(Debug, Default)]
pub struct Check {
    /// Broken promises, described.
    pub violations: Vec<String>,
    /// Reads that returned Ok with wrong bytes (torn or stale bytes served).
    pub wrong_bytes_served: u64,
    /// Pack bytes no live blob covers, after gc.
    pub leaked_bytes: u64,
    /// Time to open the store for writing (recovery included).
    pub recovery_time: Duration,
    /// What recovery did.
    pub recovery: RecoveryReport,
}

/// Reads every model the store lists and every acknowledged one, against the reference.
fn check_models(
    store: &Store,
    acked: &BTreeMap<&'static str, usize>,
    models: &[Model],
    when: &str,
    check: &mut Check,
) {
    let listed: BTreeSet<String> = match store.list() {
        Ok(l) => l.into_iter().map(|m| m.name).collect(),
        Err(e) => {
            check.violations.push(format!("{when}: list failed: {e}"));
            return;
        }
    };
    let expected: BTreeSet<String> = acked.keys().map(|n| n.to_string()).collect();
    for name in listed.difference(&expected) {
        if name != "after" {
            check
                .violations
                .push(format!("{when}: unacknowledged model {name:?} is listed"));
        }
    }
    for (name, &i) in acked {
        if !listed.contains(*name) {
            check
                .violations
                .push(format!("{when}: acknowledged model {name:?} is missing"));
            continue;
        }
        match catch(|| store.load(name)) {
            (_, Some(loaded)) => {
                if let Err(e) = compare(&models[i], &loaded) {
                    check.wrong_bytes_served += 1;
                    check
                        .violations
                        .push(format!("{when}: {name} served wrong data: {e}"));
                }
            }
            (outcome, None) => check.violations.push(format!(
                "{when}: acknowledged model {name:?} unreadable: {outcome:?}"
            )),
        }
    }
    match catch(|| store.verify(&NoProgress)) {
        (_, Some(report)) if report.problems.is_empty() => {}
        (_, Some(report)) => check
            .violations
            .push(format!("{when}: verify: {:?}", report.problems)),
        (outcome, None) => check
            .violations
            .push(format!("{when}: verify failed: {outcome:?}")),
    }
}

/// Pack bytes of `disk` that gc should have returned: bytes of a pack file that no live record
/// of the catalog at `root` covers (with its alignment padding) in a pack gc collects
/// (`pack_worth_collecting`: in the others a little garbage waits for more), bytes past a pack's
/// committed length, and pack files the catalog does not name. The similarity index files are
/// derived data and not counted.
pub fn leaked_bytes(root: &Path, disk: &FaultBackend) -> Result<u64, String> {
    let options = EngineOptions {
        backend: Some(Arc::new(disk.clone())),
        ..Default::default()
    };
    let (engine, _) = Engine::open(root, options).map_err(|e| e.to_string())?;
    let mut spans = engine.live_spans().map_err(|e| e.to_string())?;
    let committed: BTreeMap<u64, u64> = engine
        .read(|q| q.packs())
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    let mut leaked = 0;
    for name in disk.names() {
        let Some(id) = pack_id_from_name(&name) else {
            continue;
        };
        let len = disk.contents(&name).map_or(0, |c| c.len() as u64);
        let mut covered = 0;
        let mut reach = 0;
        let mut list = spans.remove(&id).unwrap_or_default();
        list.sort();
        // In format 2 the first span is the pack header.
        let has_records = list.len() > 1;
        for (start, end) in list {
            let (start, end) = (start.max(reach).min(len), end.min(len));
            if end > start {
                covered += end - start;
                reach = end;
            }
        }
        leaked += match committed.get(&id) {
            Some(&c) => {
                let within = c.min(len);
                let dead = within.saturating_sub(covered);
                let collected = pack_worth_collecting(c, covered, has_records);
                (len - within) + if collected { dead } else { 0 }
            }
            None => len - covered,
        };
    }
    Ok(leaked)
}

/// A new store directory holding a copy of the catalog of the (closed) store at `from`.
pub fn copy_catalog(from: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    std::fs::create_dir_all(root.join("packs")).unwrap();
    for file in ["catalog.db", "catalog.db-wal"] {
        if from.join(file).exists() {
            std::fs::copy(from.join(file), root.join(file)).unwrap();
        }
    }
    (dir, root)
}

/// Opens a writer on `root` over `disk` under `catch_unwind`, then closes it.
pub fn try_open(root: &Path, disk: &FaultBackend) -> Outcome {
    catch(|| open_writer(root, disk)).0
}

/// Copies the catalog at `from` beside `image` in a new directory and opens it for writing
/// (recovery runs), then checks: the listed models are the acknowledged ones, each reads back
/// exactly or within its bound, verify finds nothing; gc succeeds and leaves no leaked pack
/// bytes; the store takes a new model; everything still reads back.
pub fn check_reopened(
    from: &Path,
    image: FaultBackend,
    acked: &BTreeMap<&'static str, usize>,
    models: &[Model],
) -> Check {
    let (_dir, root) = copy_catalog(from);
    let mut check = Check::default();
    let started = Instant::now();
    let (outcome, store) = catch(|| open_writer(&root, &image));
    check.recovery_time = started.elapsed();
    let Some(store) = store else {
        check.violations.push(format!("reopen failed: {outcome:?}"));
        return check;
    };
    check.recovery = store.recovery().clone();
    check_models(&store, acked, models, "after recovery", &mut check);
    if let (outcome, None) = catch(|| store.gc(&NoProgress)) {
        check.violations.push(format!("gc failed: {outcome:?}"));
        return check;
    }
    match leaked_bytes(&root, &image) {
        Ok(0) => {}
        Ok(n) => {
            check.leaked_bytes = n;
            check
                .violations
                .push(format!("{n} pack bytes leaked after gc"));
        }
        Err(e) => check.violations.push(format!("leak check failed: {e}")),
    }
    let extra = Model {
        name: "after",
        ..models[0].clone()
    };
    if let (outcome, None) = catch(|| put(&store, &extra)) {
        check
            .violations
            .push(format!("put after recovery failed: {outcome:?}"));
    }
    check_models(&store, acked, models, "after gc and a put", &mut check);
    check
}

/// Rebuilds the catalog from `image`'s packs alone (as `neurstore recover` does after the
/// catalog is lost), then checks: every acknowledged model comes back exactly (or within its
/// bound), but for the one a removal in flight may have removed (its tombstone can be durable
/// before the catalog commit); any other model listed is one of the workload's (the put in
/// flight) and reads back exactly too; verify finds nothing.
pub fn check_rebuilt(image: &FaultBackend, crashed: &Run, models: &[Model]) -> Check {
    let in_flight_removal = match crashed.first_failure().map(|s| s.step) {
        Some(Step::Remove(name)) => Some(name),
        _ => None,
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    std::fs::create_dir_all(root.join("packs")).unwrap();
    let disk = image.current_image();
    let mut check = Check::default();
    let backend: Arc<dyn neurstore_storage::backend::Backend> = Arc::new(disk.clone());
    if let (outcome, None) = catch(|| Store::recover_with(&root, Some(backend.clone()))) {
        check
            .violations
            .push(format!("rebuild failed: {outcome:?}"));
        return check;
    }
    let (outcome, store) = catch(|| open_writer(&root, &disk));
    let Some(store) = store else {
        check
            .violations
            .push(format!("reopen after rebuild failed: {outcome:?}"));
        return check;
    };
    let listed: BTreeSet<String> = store
        .list()
        .map(|l| l.into_iter().map(|m| m.name).collect())
        .unwrap_or_default();
    let mut expect = crashed.acked.clone();
    if let Some(name) = in_flight_removal.filter(|n| !listed.contains(*n)) {
        expect.remove(name);
    }
    for name in &listed {
        match models.iter().position(|m| m.name == name) {
            Some(i) => {
                expect.entry(models[i].name).or_insert(i);
            }
            None => check
                .violations
                .push(format!("rebuilt: an unknown model {name:?} is listed")),
        }
    }
    check_models(
        &store,
        &expect,
        models,
        "rebuilt from the packs",
        &mut check,
    );
    check
}

/// Adds up checks and keeps the first few violations, labelled, for the failure message.
#[derive(Default)]
pub struct Tally {
    pub checks: u64,
    pub violations: u64,
    pub wrong_bytes_served: u64,
    pub leaked_bytes: u64,
    pub recovery_max: Duration,
    pub truncated_bytes: u64,
    pub orphan_packs: u64,
    /// Power losses injected during a recovery.
    pub recovery_crash_points: u64,
    pub examples: Vec<String>,
}

impl Tally {
    pub fn add(&mut self, label: &str, check: Check) {
        self.checks += 1;
        self.wrong_bytes_served += check.wrong_bytes_served;
        self.leaked_bytes += check.leaked_bytes;
        self.recovery_max = self.recovery_max.max(check.recovery_time);
        self.truncated_bytes += check.recovery.truncated_bytes;
        self.orphan_packs += check.recovery.orphan_packs_removed;
        for v in check.violations {
            self.violation(format!("{label}: {v}"));
        }
    }

    /// Adds another tally (from a worker thread).
    pub fn merge(&mut self, other: Tally) {
        self.checks += other.checks;
        self.violations += other.violations;
        self.wrong_bytes_served += other.wrong_bytes_served;
        self.leaked_bytes += other.leaked_bytes;
        self.recovery_max = self.recovery_max.max(other.recovery_max);
        self.truncated_bytes += other.truncated_bytes;
        self.orphan_packs += other.orphan_packs;
        self.recovery_crash_points += other.recovery_crash_points;
        let room = 20usize.saturating_sub(self.examples.len());
        self.examples.extend(other.examples.into_iter().take(room));
    }

    pub fn violation(&mut self, what: String) {
        self.violations += 1;
        if self.examples.len() < 20 {
            self.examples.push(what);
        }
    }

    pub fn assert_clean(&self) {
        assert!(
            self.violations == 0,
            "{} violations, first ones:\n{}",
            self.violations,
            self.examples.join("\n")
        );
    }
}

/// Runs `job` for every item of `0..n` on a few threads (the checks wait on SQLite's syncs
/// more than on the CPU), collecting the results in order.
pub fn parallel<T: Send>(n: u64, job: impl Fn(u64) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism()
        .map_or(2, |p| p.get())
        .clamp(2, 8) as u64;
    let mut results: Vec<(u64, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let job = &job;
                scope.spawn(move || {
                    (t..n)
                        .step_by(threads as usize)
                        .map(|i| (i, job(i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker panicked"))
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// Milliseconds, for reports.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
