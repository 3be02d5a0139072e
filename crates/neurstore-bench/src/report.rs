//! Tables for the terminal and JSON for docs/benchmarks.md.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::io_bench::{Compression, IoResult, Op, RatioResult};
use crate::machine::Machine;

/// The JSON document of one `io` run.
#[derive(Serialize)]
pub struct IoRun {
    /// Where it ran.
    pub machine: Machine,
    /// One entry per model file.
    pub results: Vec<IoResult>,
}

/// Writes `value` as pretty JSON.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// The `io` table of one model.
pub fn io_table(r: &IoResult) -> String {
    let mut s = String::new();
    let dtypes: Vec<String> = r.dtypes.iter().map(|(d, n)| format!("{d} x{n}")).collect();
    let _ = writeln!(
        s,
        "model: {} ({:.1} MB, {} tensors: {}); median of {} repeats, page cache warm",
        r.model.display(),
        mb(r.file_bytes),
        r.tensors,
        dtypes.join(", "),
        r.repeat
    );
    let _ = writeln!(
        s,
        "{:<40} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "operation", "median ms", "min ms", "max ms", "MB/s", "GB/s"
    );
    for o in &r.ops {
        let _ = writeln!(
            s,
            "{:<40} {:>10.1} {:>9.1} {:>9.1} {:>9.0} {:>7.2}",
            o.op.label(),
            o.median_s * 1e3,
            o.min_s * 1e3,
            o.max_s * 1e3,
            o.bytes_per_s / 1e6,
            o.bytes_per_s / 1e9
        );
    }
    let _ = writeln!(
        s,
        "throughput = model file bytes / median time; ratio = baseline time / our time (>1: we are faster)"
    );
    for x in &r.speedups {
        let _ = writeln!(
            s,
            "  {:<6} vs {:<14} {:>6.2}x",
            short(x.op),
            short(x.baseline),
            x.ratio
        );
    }
    if let Some(share) = r.others_cpu_share {
        let _ = writeln!(
            s,
            "other processes used {:.0}% of the CPUs during the timed rounds{}",
            share * 100.0,
            if share > 0.05 {
                " (noisy: rerun when idle)"
            } else {
                ""
            }
        );
    }
    s.push_str(&compression_lines(&r.compression));
    s
}

/// The `ratio` table of one model.
pub fn ratio_table(r: &RatioResult) -> String {
    format!(
        "model: {}\n{}",
        r.model.display(),
        compression_lines(&r.compression)
    )
}

fn compression_lines(c: &Compression) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "lossless ratio: {:.1} MB of tensors -> {:.1} MB of packs = {:.3}x \
         (with the {:.2} MB catalog {:.3}x; tensor codec alone {:.3}x)",
        mb(c.raw_tensor_bytes),
        mb(c.pack_bytes),
        c.ratio,
        mb(c.catalog_bytes),
        c.ratio_with_catalog,
        c.codec_ratio
    );
    for (kind, k) in &c.by_kind {
        let ratio = if k.stored_bytes == 0 {
            0.0
        } else {
            k.raw_bytes as f64 / k.stored_bytes as f64
        };
        let _ = writeln!(
            s,
            "  {:<28} {:>5} objects {:>12} raw bytes {:>12} stored  {:.3}x",
            kind, k.objects, k.raw_bytes, k.stored_bytes, ratio
        );
    }
    s
}

fn short(op: Op) -> &'static str {
    match op {
        Op::Copy => "copy",
        Op::CopyFsync => "copy+fsync",
        Op::Safetensors => "safetensors",
        Op::Put => "put",
        Op::Get => "get",
        Op::Load => "load",
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}
