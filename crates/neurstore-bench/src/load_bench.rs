//! The `load` workload: how fast models come back out of the store, against the `safetensors`
//! crate loading the original file, side by side in one run, all from the page cache.
//!
//! - lossless: a model stored losslessly, `Store::load` with a fresh handle each time;
//! - bounded, base cold: a fine-tune stored within an absolute bound against its base (stored
//!   first, within the same bound), loaded with a fresh handle (its base decoded too);
//! - bounded, base cached: the same with the base already in the handle's cache, in a 1-thread
//!   pool (throughput per core) and with every thread;
//! - `get` peak memory: the `neurstore` binary run as a child process, its peak RSS read with
//!   `wait4`, next to the model size.
//!
//! Every repeat runs every operation once, in the same order; medians are reported.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use neurstore::{BaseCacheStats, BaseChoice, LoadedTensor, Mode, NoProgress, PutOptions, Store};
use serde::Serialize;

use crate::io_bench::{median, safetensors_load, touch_pages};

/// Name of the base model in the benchmark stores.
const BASE: &str = "base";

/// One timed operation of the `load` workload.
#[derive(Debug, Clone, Serialize)]
pub struct Timed {
    /// What was measured.
    pub label: String,
    /// Output bytes (decoded tensor bytes) per run.
    pub bytes: u64,
    /// Threads of the rayon pool it ran in.
    pub threads: usize,
    /// Median seconds.
    pub median_s: f64,
    /// Every repeat, seconds.
    pub samples_s: Vec<f64>,
    /// Output bytes per second at the median.
    pub bytes_per_s: f64,
}

/// Peak memory of one `neurstore get` child process.
#[derive(Debug, Clone, Serialize)]
pub struct GetMemory {
    /// Which model.
    pub label: String,
    /// Size of the safetensors file written.
    pub model_bytes: u64,
    /// Peak resident set size of the child, bytes.
    pub peak_rss_bytes: u64,
    /// Peak RSS of `neurstore stats` on the same store (the binary's own footprint).
    pub baseline_rss_bytes: u64,
    /// Wall time of the child, seconds.
    pub seconds: f64,
}

/// Everything `load` measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    /// The base model file.
    pub model: PathBuf,
    /// The fine-tune files.
    pub finetunes: Vec<PathBuf>,
    /// The absolute bound used for the bounded stores.
    pub tolerance: f64,
    /// Threads in the global pool.
    pub threads: usize,
    /// Repeats.
    pub repeat: u32,
    /// Timed operations.
    pub ops: Vec<Timed>,
    /// Ratios: (operation, baseline, baseline time / operation time).
    pub ratios: Vec<(String, String, f64)>,
    /// Base cache counters after loading every fine-tune once with one handle.
    pub cache_after_finetunes: BaseCacheStats,
    /// `get` peak memory.
    pub get_memory: Vec<GetMemory>,
}

/// Runs the workload.
pub fn run(
    model: &Path,
    finetunes: &[PathBuf],
    tolerance: f64,
    repeat: u32,
    scratch: &Path,
) -> Result<LoadResult> {
    ensure!(!finetunes.is_empty(), "give at least one --finetune file");
    let dir = tempfile::Builder::new()
        .prefix("neurstore-bench-load-")
        .tempdir_in(scratch)?;
    let model_bytes = std::fs::read(model)?.len() as u64;
    let ft_bytes = std::fs::read(&finetunes[0])?.len() as u64;

    // Stores: one lossless (the base model), one bounded (base, then the fine-tunes).
    let lossless = dir.path().join("lossless");
    Store::init(&lossless)?;
    Store::open_writer(&lossless)?.put(BASE, model, &PutOptions::default(), &NoProgress)?;
    let bounded = dir.path().join("bounded");
    Store::init(&bounded)?;
    {
        let w = Store::open_writer(&bounded)?;
        let opts = PutOptions {
            mode: Mode::Absolute(tolerance),
            base: BaseChoice::None,
            ..Default::default()
        };
        w.put(BASE, model, &opts, &NoProgress)?;
        let opts = PutOptions {
            mode: Mode::Absolute(tolerance),
            base: BaseChoice::Model(BASE.to_string()),
            ..Default::default()
        };
        for (i, ft) in finetunes.iter().enumerate() {
            let r = w.put(&format!("ft{i}"), ft, &opts, &NoProgress)?;
            eprintln!(
                "stored {} bounded: {} -> {} bytes",
                ft.display(),
                r.raw_bytes,
                r.stored_bytes_added
            );
        }
    }
    check_finetune(&bounded, &finetunes[0], tolerance)?;

    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let threads = rayon::current_num_threads();
    let warm = Store::open(&bounded)?;
    warm.load("ft0")?; // primes the base cache

    let mut ops: Vec<Timed> = Vec::new();
    let mut record = |label: &str, bytes: u64, threads: usize, t: f64| {
        if let Some(o) = ops.iter_mut().find(|o| o.label == label) {
            o.samples_s.push(t);
        } else {
            ops.push(Timed {
                label: label.to_string(),
                bytes,
                threads,
                median_s: 0.0,
                samples_s: vec![t],
                bytes_per_s: 0.0,
            });
        }
    };
    const ST_BASE: &str = "safetensors crate: base file read+deserialize+copy";
    const ST_FT: &str = "safetensors crate: fine-tune file";
    const LOSSLESS: &str = "load lossless base (fresh handle)";
    const COLD: &str = "load bounded fine-tune, base not cached (fresh handle)";
    const WARM_ALL: &str = "load bounded fine-tune, base cached, all threads";
    const WARM_ONE: &str = "load bounded fine-tune, base cached, 1 thread";
    const ST_ONE: &str = "safetensors crate: fine-tune file, 1 thread";
    eprintln!("1 warm-up round + {repeat} timed");
    for round in 0..=repeat {
        let mut times = Vec::new();
        times.push((
            ST_BASE,
            model_bytes,
            threads,
            time(|| safetensors_load(model))?,
        ));
        times.push((
            ST_FT,
            ft_bytes,
            threads,
            time(|| safetensors_load(&finetunes[0]))?,
        ));
        times.push((
            ST_ONE,
            ft_bytes,
            1,
            one.install(|| time(|| safetensors_load(&finetunes[0])))?,
        ));
        let (t, n) = time_load(&Store::open(&lossless)?, BASE)?;
        times.push((LOSSLESS, n, threads, t));
        let (t, n) = time_load(&Store::open(&bounded)?, "ft0")?;
        times.push((COLD, n, threads, t));
        let (t, n) = time_load(&warm, "ft0")?;
        times.push((WARM_ALL, n, threads, t));
        let (t, n) = one.install(|| time_load(&warm, "ft0"))?;
        times.push((WARM_ONE, n, 1, t));
        if round > 0 {
            for (label, bytes, threads, t) in times {
                record(label, bytes, threads, t);
            }
        }
    }
    for o in &mut ops {
        o.median_s = median(&o.samples_s);
        o.bytes_per_s = o.bytes as f64 / o.median_s;
    }
    let med = |label: &str| ops.iter().find(|o| o.label == label).map(|o| o.median_s);
    let ratio = |a: &str, b: &str| {
        (
            a.to_string(),
            b.to_string(),
            med(b).unwrap() / med(a).unwrap(),
        )
    };
    let ratios = vec![
        ratio(LOSSLESS, ST_BASE),
        ratio(COLD, ST_FT),
        ratio(WARM_ALL, ST_FT),
        ratio(WARM_ONE, ST_ONE),
    ];

    // Ten (or however many given) fine-tunes of one base through one handle.
    let shared = Store::open(&bounded)?;
    for i in 0..finetunes.len() {
        black_box(shared.load(&format!("ft{i}"))?);
    }
    let cache_after_finetunes = shared.base_cache_stats();

    let get_memory = get_memory(&lossless, &bounded, dir.path())?;
    Ok(LoadResult {
        model: model.to_path_buf(),
        finetunes: finetunes.to_vec(),
        tolerance,
        threads,
        repeat,
        ops,
        ratios,
        cache_after_finetunes,
        get_memory,
    })
}

fn time<T>(f: impl FnOnce() -> Result<T>) -> Result<f64> {
    let t = Instant::now();
    let out = f()?;
    let s = t.elapsed().as_secs_f64();
    drop(black_box(out));
    Ok(s)
}

/// Times `load` plus a read of one byte per page of every tensor; returns (seconds, bytes).
fn time_load(store: &Store, name: &str) -> Result<(f64, u64)> {
    let t = Instant::now();
    let loaded = store.load(name)?;
    let touched: u64 = loaded.iter().map(|t| touch_pages(&t.data)).sum();
    let s = t.elapsed().as_secs_f64();
    black_box(touched);
    let bytes = loaded.iter().map(|t| t.data.len() as u64).sum();
    drop(loaded);
    Ok((s, bytes))
}

/// The bounded fine-tune loads within its bound of the original.
fn check_finetune(root: &Path, file: &Path, tol: f64) -> Result<()> {
    let original = std::fs::read(file)?;
    let st = safetensors::SafeTensors::deserialize(&original)?;
    let loaded: Vec<LoadedTensor> = Store::open(root)?.load("ft0")?;
    ensure!(loaded.len() == st.len(), "tensor count differs");
    for t in &loaded {
        let view = st.tensor(&t.name)?;
        let err = neurstore_core::codec::quantized::max_abs_error(t.dtype, view.data(), &t.data);
        if t.dtype.is_float() && err > tol {
            bail!("{}: error {err} past the bound {tol}", t.name);
        }
    }
    Ok(())
}

/// Peak RSS of `neurstore get` for the lossless model and the first fine-tune.
fn get_memory(lossless: &Path, bounded: &Path, dir: &Path) -> Result<Vec<GetMemory>> {
    let exe = std::env::current_exe()?;
    let cli = exe.with_file_name("neurstore");
    if !cli.is_file() {
        eprintln!(
            "{} not found (build it with `cargo build --release -p neurstore-cli`): peak memory of get skipped",
            cli.display()
        );
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (label, root, name) in [
        ("lossless base", lossless, BASE),
        ("bounded fine-tune (base decoded too)", bounded, "ft0"),
    ] {
        let peak = |args: &[&std::ffi::OsStr]| -> Result<(u64, f64)> {
            let out = Command::new(&exe)
                .arg("peak-rss")
                .arg(&cli)
                .arg("--store")
                .arg(root)
                .args(args)
                .output()?;
            ensure!(out.status.success(), "peak-rss failed");
            let text = String::from_utf8_lossy(&out.stdout);
            let mut it = text.split_whitespace();
            let kib: u64 = it.next().context("peak-rss output")?.parse()?;
            let secs: f64 = it.next().context("peak-rss output")?.parse()?;
            Ok((kib * 1024, secs))
        };
        let (baseline_rss_bytes, _) = peak(&["stats".as_ref()])?;
        let file = dir.join("get-out.safetensors");
        let (peak_rss_bytes, seconds) = peak(&[
            "get".as_ref(),
            name.as_ref(),
            "-o".as_ref(),
            file.as_os_str(),
        ])?;
        let model_bytes = std::fs::metadata(&file)?.len();
        std::fs::remove_file(&file)?;
        out.push(GetMemory {
            label: label.to_string(),
            model_bytes,
            peak_rss_bytes,
            baseline_rss_bytes,
            seconds,
        });
    }
    Ok(out)
}

#[repr(C)]
struct RUsage {
    utime: [i64; 2],
    stime: [i64; 2],
    maxrss: i64,
    rest: [i64; 13],
}

unsafe extern "C" {
    fn wait4(pid: i32, status: *mut i32, options: i32, usage: *mut RUsage) -> i32;
}

/// Runs `cmd` (output discarded) and returns its peak RSS in KiB and its wall time. Run it from
/// a small process: on Linux a child's peak starts from its parent's at the spawn.
pub fn child_peak(cmd: &mut Command) -> Result<(u64, f64)> {
    let t = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting neurstore")?;
    let mut status = 0i32;
    let mut usage = RUsage {
        utime: [0; 2],
        stime: [0; 2],
        maxrss: 0,
        rest: [0; 13],
    };
    // SAFETY: `wait4` writes an `int` status and a `struct rusage` (x86_64/aarch64 Linux layout:
    // two timevals, then 14 longs, `ru_maxrss` first) into valid, exclusively borrowed memory.
    // The child is reaped here; its `Child` handle is dropped without waiting.
    let pid = unsafe { wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let seconds = t.elapsed().as_secs_f64();
    ensure!(pid == child.id() as i32, "wait4 failed");
    ensure!(status == 0, "neurstore exited with status {status}");
    Ok((usage.maxrss as u64, seconds))
}

/// The table printed to the terminal.
pub fn table(r: &LoadResult) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "base: {}; fine-tune: {} (+{} more); bound {:e}; {} threads; median of {} repeats, page cache warm",
        r.model.display(),
        r.finetunes[0].display(),
        r.finetunes.len() - 1,
        r.tolerance,
        r.threads,
        r.repeat
    );
    let _ = writeln!(
        s,
        "{:<58} {:>7} {:>9} {:>8} {:>8}",
        "operation", "threads", "median ms", "MB/s", "MB/s/thr"
    );
    for o in &r.ops {
        let _ = writeln!(
            s,
            "{:<58} {:>7} {:>9.1} {:>8.0} {:>8.0}",
            o.label,
            o.threads,
            o.median_s * 1e3,
            o.bytes_per_s / 1e6,
            o.bytes_per_s / 1e6 / o.threads as f64
        );
    }
    let _ = writeln!(s, "ratios (baseline time / our time; >1: we are faster):");
    for (a, b, x) in &r.ratios {
        let _ = writeln!(s, "  {x:>5.2}x  {a}  vs  {b}");
    }
    let c = &r.cache_after_finetunes;
    let _ = writeln!(
        s,
        "base cache after loading {} fine-tunes with one handle: {} misses, {} hits, {:.1} MB decoded, {} held ({:.1} MB)",
        r.finetunes.len(),
        c.misses,
        c.hits,
        c.decoded_bytes as f64 / 1e6,
        c.entries,
        c.held_bytes as f64 / 1e6
    );
    for g in &r.get_memory {
        let _ = writeln!(
            s,
            "get peak RSS, {}: {:.1} MB for a {:.1} MB model ({:.2}x; `neurstore stats` alone: {:.1} MB), {:.0} ms",
            g.label,
            g.peak_rss_bytes as f64 / 1e6,
            g.model_bytes as f64 / 1e6,
            g.peak_rss_bytes as f64 / g.model_bytes as f64,
            g.baseline_rss_bytes as f64 / 1e6,
            g.seconds * 1e3
        );
    }
    s
}
