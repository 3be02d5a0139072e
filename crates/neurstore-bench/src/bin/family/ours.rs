//! A family put into a fresh store, model by model, timed.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use neurstore::{BaseChoice, Mode, NoProgress, PutOptions, Store};
use serde::Serialize;

use super::eval::{Evaluator, Judgement};
use super::workloads::Workload;

/// One `put` of the family.
#[derive(Debug, Clone, Serialize)]
pub struct ModelPut {
    /// Model name.
    pub name: String,
    /// Tensor bytes put.
    pub raw_bytes: u64,
    /// Bytes appended to packs.
    pub stored_bytes_added: u64,
    /// New tensors stored as deltas.
    pub delta_tensors: u64,
    /// Tensors looked up in the index.
    pub tensors_searched: u64,
    /// Wall time of the put.
    pub seconds: f64,
    /// Largest element error.
    pub max_error: f64,
    /// Model most of its deltas point into.
    pub base_model: Option<String>,
}

/// A whole family in one store.
#[derive(Debug, Clone, Serialize)]
pub struct FamilyRun {
    /// Workload name.
    pub workload: String,
    /// "lossless" or "abs:X".
    pub mode: String,
    /// Absolute tolerance (`None`: lossless).
    pub tolerance: Option<f64>,
    /// "auto" or "none".
    pub base: String,
    /// Models put.
    pub models: usize,
    /// Sum of the puts' raw bytes.
    pub raw_bytes: u64,
    /// `Stats::stored_bytes` after the last put: packs + catalog.
    pub stored_bytes: u64,
    /// Pack bytes.
    pub pack_bytes: u64,
    /// Catalog bytes.
    pub catalog_bytes: u64,
    /// Catalog bytes (with its write-ahead log) while the writer was still open.
    pub catalog_bytes_open: u64,
    /// Sum of the puts' `stored_bytes_added`: the encoded blobs alone, without pack alignment
    /// or catalog.
    pub payload_bytes: u64,
    /// Every file under the store directory (adds the index file and the lock).
    pub dir_bytes: u64,
    /// raw_bytes / stored_bytes.
    pub family_ratio: f64,
    /// raw_bytes / dir_bytes.
    pub family_ratio_dir: f64,
    /// Sum of the puts' wall times.
    pub ingest_seconds: f64,
    /// raw_bytes / ingest_seconds, in MB/s (10^6 bytes).
    pub ingest_mb_s: f64,
    /// Tensors looked up in the similarity index.
    pub tensors_searched: u64,
    /// Seconds in index lookups (as `put` reports them: includes bringing the index up to date).
    pub search_seconds: f64,
    /// search_seconds / tensors_searched, in microseconds.
    pub search_us_per_tensor: Option<f64>,
    /// New tensors stored as deltas.
    pub delta_tensors: u64,
    /// Largest element error over the family.
    pub max_error: f64,
    /// 1-minute load average before the first put.
    pub load_before: Option<f64>,
    /// Per put.
    pub puts: Vec<ModelPut>,
    /// Reconstructions judged by the workload's script (bounded modes).
    pub judgements: Vec<Judgement>,
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// Label of a mode as the tables print it.
pub fn mode_label(mode: Mode) -> String {
    match mode {
        Mode::Lossless => "lossless".into(),
        Mode::Absolute(t) => format!("abs {t:.0e}"),
        Mode::Relative(r) => format!("rel {r:.0e}"),
    }
}

/// Puts every model of `w` into a fresh store under `scratch`. `before_put(i, root)` runs
/// (untimed) before model `i` is put.
pub fn run_family(
    w: &Workload,
    mode: Mode,
    base: BaseChoice,
    scratch: &Path,
    mut before_put: impl FnMut(usize, &Path) -> Result<()>,
) -> Result<(FamilyRun, Store, tempfile::TempDir)> {
    let dir = tempfile::Builder::new()
        .prefix("family-")
        .tempdir_in(scratch)
        .context("creating a scratch directory")?;
    let root = dir.path().join("store");
    Store::init(&root)?;
    let store = Store::open_writer(&root)?;
    let options = PutOptions {
        mode,
        base: base.clone(),
        ..PutOptions::default()
    };
    let load_before = load_average();
    let mut puts = Vec::new();
    let mut search_seconds = 0.0;
    for (i, m) in w.models.iter().enumerate() {
        before_put(i, &root)?;
        let started = Instant::now();
        let r = store
            .put(&m.name, &m.path, &options, &NoProgress)
            .with_context(|| format!("putting {}", m.path.display()))?;
        let seconds = started.elapsed().as_secs_f64();
        search_seconds += r.search_seconds;
        puts.push(ModelPut {
            name: m.name.clone(),
            raw_bytes: r.raw_bytes,
            stored_bytes_added: r.stored_bytes_added,
            delta_tensors: r.delta_tensors,
            tensors_searched: r.tensors_searched,
            seconds,
            max_error: r.max_error,
            base_model: r.base_model,
        });
    }
    // The catalog's write-ahead log is folded in when the writer closes: measure the store as it
    // rests on disk, reopened read-only, and keep the open writer's figure for reference.
    let catalog_bytes_open = store.stats()?.catalog_bytes;
    drop(store);
    let store = Store::open(&root)?;
    let stats = store.stats()?;
    let raw_bytes: u64 = puts.iter().map(|p| p.raw_bytes).sum();
    let ingest_seconds: f64 = puts.iter().map(|p| p.seconds).sum();
    let tensors_searched: u64 = puts.iter().map(|p| p.tensors_searched).sum();
    let dir_total = dir_bytes(&root);
    let run = FamilyRun {
        workload: w.name.clone(),
        mode: mode_label(mode),
        tolerance: match mode {
            Mode::Absolute(t) => Some(t),
            _ => None,
        },
        base: match base {
            BaseChoice::None => "none".into(),
            BaseChoice::Auto => "auto".into(),
            BaseChoice::Model(m) => format!("model {m}"),
        },
        models: puts.len(),
        raw_bytes,
        stored_bytes: stats.stored_bytes,
        pack_bytes: stats.pack_bytes,
        catalog_bytes: stats.catalog_bytes,
        catalog_bytes_open,
        payload_bytes: puts.iter().map(|p| p.stored_bytes_added).sum(),
        dir_bytes: dir_total,
        family_ratio: raw_bytes as f64 / stats.stored_bytes as f64,
        family_ratio_dir: raw_bytes as f64 / dir_total as f64,
        ingest_seconds,
        ingest_mb_s: raw_bytes as f64 / 1e6 / ingest_seconds,
        tensors_searched,
        search_seconds,
        search_us_per_tensor: (tensors_searched > 0)
            .then(|| search_seconds * 1e6 / tensors_searched as f64),
        delta_tensors: puts.iter().map(|p| p.delta_tensors).sum(),
        max_error: puts.iter().map(|p| p.max_error).fold(0.0, f64::max),
        load_before,
        puts,
        judgements: Vec::new(),
    };
    Ok((run, store, dir))
}

/// Gets every judged model of `w` back out of `store` and runs its evaluation script.
pub fn judge_family(
    w: &Workload,
    store: &Store,
    scratch: &Path,
    evaluator: &Evaluator,
) -> Result<Vec<Judgement>> {
    let mut out = Vec::new();
    for m in &w.models {
        let Some(judge) = &m.judge else { continue };
        let file = scratch.join(format!("{}.safetensors", m.name));
        store
            .get(&m.name, &file, &NoProgress)
            .with_context(|| format!("getting {}", m.name))?;
        let j = evaluator.judge(&m.name, &file, judge);
        std::fs::remove_file(&file).ok();
        out.push(j?);
    }
    Ok(out)
}
