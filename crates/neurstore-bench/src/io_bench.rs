//! The `io` workload: one safetensors file stored, written back and loaded by NeurStore, next to
//! a plain file copy and the `safetensors` crate, all from the page cache.
//!
//! Every repeat runs every operation once, in the same order, so background load hits them
//! alike; the median over repeats is reported. One untimed round runs first (page cache, rayon
//! pool, allocator). Throughputs are the model file's bytes over the median time.

use std::collections::BTreeMap;
use std::fs::File;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use neurstore::{NoProgress, PutOptions, Store};
use serde::Serialize;

use crate::machine::CpuMeter;

/// Name of the model inside each benchmark store.
const MODEL: &str = "bench";
/// Page size used to touch mapped tensor bytes.
const PAGE: usize = 4096;

/// One timed operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `std::fs::copy` of the file.
    Copy,
    /// The same copy followed by fsync (what a durable write costs; `put` syncs, `copy` does not).
    CopyFsync,
    /// `safetensors` crate: read the file, deserialize, copy every tensor into its own `Vec`.
    Safetensors,
    /// `Store::put` into a fresh store (ends with fsync and a catalog commit).
    Put,
    /// `Store::get` to a file (no fsync, like `copy`).
    Get,
    /// `Store::load`, then one byte of every 4 KiB page of every tensor read.
    Load,
}

impl Op {
    const ALL: [Op; 6] = [
        Op::Copy,
        Op::CopyFsync,
        Op::Safetensors,
        Op::Put,
        Op::Get,
        Op::Load,
    ];

    /// Label in tables.
    pub fn label(self) -> &'static str {
        match self {
            Op::Copy => "(a) plain copy (std::fs::copy)",
            Op::CopyFsync => "    plain copy + fsync",
            Op::Safetensors => "(b) safetensors read+deserialize+copy",
            Op::Put => "(c) neurstore put (fresh store)",
            Op::Get => "(d) neurstore get to a file",
            Op::Load => "(e) neurstore load + touch pages",
        }
    }
}

/// Times of one operation over all repeats.
#[derive(Debug, Clone, Serialize)]
pub struct OpResult {
    /// Which operation.
    pub op: Op,
    /// Median seconds.
    pub median_s: f64,
    /// Fastest repeat, seconds.
    pub min_s: f64,
    /// Slowest repeat, seconds.
    pub max_s: f64,
    /// Model file bytes per second at the median.
    pub bytes_per_s: f64,
    /// Every repeat, seconds, in run order.
    pub samples_s: Vec<f64>,
}

/// Throughput of one operation over another's (above 1: the first is faster).
#[derive(Debug, Clone, Serialize)]
pub struct Speedup {
    /// The operation measured.
    pub op: Op,
    /// The baseline it is compared with.
    pub baseline: Op,
    /// Baseline median time / operation median time.
    pub ratio: f64,
}

/// Space the store took for the model.
#[derive(Debug, Clone, Serialize)]
pub struct Compression {
    /// Tensor bytes as imported.
    pub raw_tensor_bytes: u64,
    /// Pack file bytes on disk (tensors, the stored header, 4 KiB alignment).
    pub pack_bytes: u64,
    /// Catalog bytes on disk.
    pub catalog_bytes: u64,
    /// raw_tensor_bytes / pack_bytes: the headline ratio.
    pub ratio: f64,
    /// raw_tensor_bytes / (pack + catalog bytes), as `stats` reports it.
    pub ratio_with_catalog: f64,
    /// Raw / stored bytes of the tensor objects alone (codec only, no alignment or header).
    pub codec_ratio: f64,
    /// Objects, raw and stored bytes by kind and codec, as `stats` reports them.
    pub by_kind: BTreeMap<String, KindBytes>,
}

/// Objects of one kind and codec.
#[derive(Debug, Clone, Serialize)]
pub struct KindBytes {
    /// Objects.
    pub objects: u64,
    /// Raw bytes.
    pub raw_bytes: u64,
    /// Stored bytes.
    pub stored_bytes: u64,
}

/// Everything `io` measured on one file.
#[derive(Debug, Clone, Serialize)]
pub struct IoResult {
    /// The file.
    pub model: PathBuf,
    /// Its size.
    pub file_bytes: u64,
    /// Its tensors.
    pub tensors: u64,
    /// Element types and their tensor counts.
    pub dtypes: BTreeMap<String, u64>,
    /// Repeats per operation.
    pub repeat: u32,
    /// Where the temporary files and stores lived.
    pub scratch: PathBuf,
    /// Per operation.
    pub ops: Vec<OpResult>,
    /// Ratios of throughput, side by side.
    pub speedups: Vec<Speedup>,
    /// Space taken.
    pub compression: Compression,
    /// Share of the machine's CPU time other processes used during the timed rounds.
    pub others_cpu_share: Option<f64>,
}

/// The `ratio` subcommand's result for one model.
#[derive(Debug, Clone, Serialize)]
pub struct RatioResult {
    /// The file or directory.
    pub model: PathBuf,
    /// Space taken.
    pub compression: Compression,
}

/// Runs the `io` workload on `model`.
pub fn run(model: &Path, repeat: u32, scratch: Option<&Path>) -> Result<IoResult> {
    let scratch = scratch_dir(scratch)?;
    // Warm the page cache, and keep the original to check every path against.
    let original = std::fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    let (tensors, dtypes) = describe(&original, model)?;
    eprintln!(
        "{}: {} bytes, {tensors} tensors; 1 warm-up round + {repeat} timed",
        model.display(),
        original.len()
    );

    let mut samples: BTreeMap<Op, Vec<f64>> = BTreeMap::new();
    let mut compression = None;
    let mut meter = None;
    for round in 0..=repeat {
        let dir = tempfile::Builder::new()
            .prefix("neurstore-bench-")
            .tempdir_in(&scratch)?;
        let times = one_round(model, &original, dir.path(), round == 0)?;
        if round == 0 {
            compression = Some(compression_of(&dir.path().join("store"))?);
            meter = Some(CpuMeter::start());
            continue;
        }
        for (op, t) in times {
            samples.entry(op).or_default().push(t);
        }
        eprintln!("  round {round}/{repeat} done");
    }

    let others_cpu_share = meter.and_then(|m| m.others_share());
    let file_bytes = original.len() as u64;
    let ops: Vec<OpResult> = Op::ALL
        .iter()
        .map(|&op| summarize(op, samples.remove(&op).unwrap_or_default(), file_bytes))
        .collect();
    let median = |op: Op| ops.iter().find(|o| o.op == op).expect("all ops").median_s;
    let pairs = [
        (Op::Put, Op::Copy),
        (Op::Put, Op::CopyFsync),
        (Op::Get, Op::Copy),
        (Op::Get, Op::Safetensors),
        (Op::Load, Op::Copy),
        (Op::Load, Op::Safetensors),
    ];
    let speedups = pairs
        .iter()
        .map(|&(op, baseline)| Speedup {
            op,
            baseline,
            ratio: median(baseline) / median(op),
        })
        .collect();
    Ok(IoResult {
        model: model.to_path_buf(),
        file_bytes,
        tensors,
        dtypes,
        repeat,
        scratch,
        ops,
        speedups,
        compression: compression.expect("round 0 ran"),
        others_cpu_share,
    })
}

/// Runs `put` once into a fresh store and reports the space taken.
pub fn ratio_only(model: &Path, scratch: Option<&Path>) -> Result<RatioResult> {
    let scratch = scratch_dir(scratch)?;
    let dir = tempfile::Builder::new()
        .prefix("neurstore-bench-")
        .tempdir_in(&scratch)?;
    let root = dir.path().join("store");
    Store::init(&root)?;
    Store::open_writer(&root)?.put(MODEL, model, &PutOptions::default(), &NoProgress)?;
    Ok(RatioResult {
        model: model.to_path_buf(),
        compression: compression_of(&root)?,
    })
}

fn scratch_dir(scratch: Option<&Path>) -> Result<PathBuf> {
    let dir = scratch.map_or_else(std::env::temp_dir, Path::to_path_buf);
    ensure!(
        dir.is_dir(),
        "scratch directory {} not found",
        dir.display()
    );
    Ok(dir)
}

/// Tensor count and dtypes, read with the `safetensors` crate (which also proves the file valid).
fn describe(bytes: &[u8], model: &Path) -> Result<(u64, BTreeMap<String, u64>)> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .with_context(|| format!("{} is not a safetensors file", model.display()))?;
    let mut dtypes = BTreeMap::new();
    for (_, view) in st.iter() {
        *dtypes.entry(format!("{:?}", view.dtype())).or_insert(0) += 1;
    }
    Ok((st.len() as u64, dtypes))
}

/// Runs every operation once in `dir`; on the check round also verifies every path's bytes.
fn one_round(model: &Path, original: &[u8], dir: &Path, check: bool) -> Result<Vec<(Op, f64)>> {
    let mut times = Vec::with_capacity(Op::ALL.len());

    let copy = dir.join("copy.safetensors");
    let t = Instant::now();
    std::fs::copy(model, &copy)?;
    times.push((Op::Copy, t.elapsed().as_secs_f64()));
    std::fs::remove_file(&copy)?;

    let t = Instant::now();
    std::fs::copy(model, &copy)?;
    File::open(&copy)?.sync_all()?;
    times.push((Op::CopyFsync, t.elapsed().as_secs_f64()));
    std::fs::remove_file(&copy)?;

    let t = Instant::now();
    let owned = safetensors_load(model)?;
    times.push((Op::Safetensors, t.elapsed().as_secs_f64()));
    drop(black_box(owned));

    let root = dir.join("store");
    Store::init(&root)?;
    let writer = Store::open_writer(&root)?;
    let t = Instant::now();
    writer.put(MODEL, model, &PutOptions::default(), &NoProgress)?;
    times.push((Op::Put, t.elapsed().as_secs_f64()));
    drop(writer);

    // Separate readers for get and load, so neither finds pages the other already mapped.
    let out = dir.join("out.safetensors");
    let reader = Store::open(&root)?;
    let t = Instant::now();
    reader.get(MODEL, &out, &NoProgress)?;
    times.push((Op::Get, t.elapsed().as_secs_f64()));
    drop(reader);
    if check {
        ensure!(
            std::fs::read(&out)? == original,
            "get did not return the original bytes"
        );
    }
    std::fs::remove_file(&out)?;

    let reader = Store::open(&root)?;
    let t = Instant::now();
    let loaded = reader.load(MODEL)?;
    let touched: u64 = loaded.iter().map(|t| touch_pages(&t.data)).sum();
    black_box(touched);
    times.push((Op::Load, t.elapsed().as_secs_f64()));
    if check {
        check_loaded(original, &loaded)?;
    }
    drop(loaded);
    Ok(times)
}

/// The usual safetensors load into owned memory.
pub(crate) fn safetensors_load(model: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let bytes = std::fs::read(model)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    Ok(st
        .iter()
        .map(|(name, view)| (name.to_string(), view.data().to_vec()))
        .collect())
}

/// Reads one byte of every page (a mapped tensor is faulted in; a decoded one is already there).
pub(crate) fn touch_pages(data: &[u8]) -> u64 {
    let mut sum: u64 = data.iter().step_by(PAGE).map(|&b| u64::from(b)).sum();
    if let Some(&last) = data.last() {
        sum += u64::from(last);
    }
    sum
}

fn check_loaded(original: &[u8], loaded: &[neurstore::LoadedTensor]) -> Result<()> {
    let st = safetensors::SafeTensors::deserialize(original)?;
    ensure!(
        loaded.len() == st.len(),
        "load returned {} tensors, the file has {}",
        loaded.len(),
        st.len()
    );
    for t in loaded {
        let view = st.tensor(&t.name)?;
        if view.data() != &*t.data {
            bail!("load returned different bytes for tensor {:?}", t.name);
        }
    }
    Ok(())
}

fn compression_of(root: &Path) -> Result<Compression> {
    let stats = Store::open(root)?.stats()?;
    let (mut tensor_raw, mut tensor_stored) = (0u64, 0u64);
    let mut by_kind = BTreeMap::new();
    for (kind, k) in &stats.by_kind {
        if kind.starts_with("tensor/") {
            tensor_raw += k.raw_bytes;
            tensor_stored += k.stored_bytes;
        }
        by_kind.insert(
            kind.clone(),
            KindBytes {
                objects: k.objects,
                raw_bytes: k.raw_bytes,
                stored_bytes: k.stored_bytes,
            },
        );
    }
    let div = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(Compression {
        raw_tensor_bytes: stats.tensor_bytes,
        pack_bytes: stats.pack_bytes,
        catalog_bytes: stats.catalog_bytes,
        ratio: div(stats.raw_bytes, stats.pack_bytes),
        ratio_with_catalog: div(stats.raw_bytes, stats.stored_bytes),
        codec_ratio: div(tensor_raw, tensor_stored),
        by_kind,
    })
}

/// The median of some samples (the mean of the middle two for an even count).
pub(crate) fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn summarize(op: Op, samples: Vec<f64>, bytes: u64) -> OpResult {
    let median = median(&samples);
    let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    OpResult {
        op,
        median_s: median,
        min_s: min,
        max_s: max,
        bytes_per_s: bytes as f64 / median,
        samples_s: samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(summarize(Op::Copy, vec![3.0, 1.0, 2.0], 6).median_s, 2.0);
        let even = summarize(Op::Copy, vec![4.0, 1.0, 2.0, 3.0], 10);
        assert_eq!((even.median_s, even.min_s, even.max_s), (2.5, 1.0, 4.0));
        assert_eq!(even.bytes_per_s, 4.0);
    }

    #[test]
    fn touches_first_byte_of_every_page_and_the_last() {
        let mut data = vec![0u8; PAGE * 2 + 10];
        data[0] = 1;
        data[PAGE] = 2;
        data[PAGE * 2] = 3;
        *data.last_mut().unwrap() = 4;
        assert_eq!(touch_pages(&data), 10);
        assert_eq!(touch_pages(&[]), 0);
    }

    /// The whole workload on a tiny file: every path returns the original bytes.
    #[test]
    fn io_runs_on_a_small_file() {
        let dir = tempfile::tempdir().unwrap();
        let header = br#"{"a":{"dtype":"F32","shape":[1024],"data_offsets":[0,4096]},"b":{"dtype":"I64","shape":[2],"data_offsets":[4096,4112]}}"#;
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header);
        file.extend((0..1024).flat_map(|i| ((i as f32) * 0.01).sin().to_le_bytes()));
        file.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
        let model = dir.path().join("m.safetensors");
        std::fs::write(&model, &file).unwrap();
        let result = run(&model, 1, Some(dir.path())).unwrap();
        assert_eq!(result.tensors, 2);
        assert_eq!(result.ops.len(), Op::ALL.len());
        assert_eq!(result.compression.raw_tensor_bytes, 4112);
        assert!(result.ops.iter().all(|o| o.median_s > 0.0));
        let ratio = ratio_only(&model, Some(dir.path())).unwrap();
        assert_eq!(ratio.compression.raw_tensor_bytes, 4112);
    }
}
