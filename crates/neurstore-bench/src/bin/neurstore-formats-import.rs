//! Importing the same tensors as safetensors, a PyTorch checkpoint and ONNX, side by side in one
//! run: import speed of each format relative to safetensors (fresh store each time, median of
//! the repeats, formats interleaved), what the second and third format add to a store that holds
//! the first, and a fine-tune against its base stored as ONNX against the same pair as
//! safetensors (lossless and bounded); and real files of each format against the safetensors
//! file of the same tensors.
//!
//! The `.bin` is written by the store's own converter, the `.onnx` by hand (the tensors as
//! `raw_data` initializers of a one-node graph); the fine-tune is the model plus small noise.
//!
//! `cargo run --release -p neurstore-bench --bin neurstore-formats-import -- --model data/all-MiniLM-L6-v2/model.safetensors [--real FILE ...]`

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use neurstore::{BaseChoice, GetOptions, Mode, NoProgress, OutputFormat, PutOptions, Store};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// A safetensors file (its tensors are written in the other formats).
    #[arg(long)]
    model: PathBuf,
    /// Repeats of every import; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Absolute tolerance of the bounded fine-tune comparison.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f64,
    /// Relative size of the fine-tune's noise.
    #[arg(long, default_value_t = 1e-3)]
    noise: f32,
    /// Real model files (ONNX, PyTorch, GGUF): each is timed against the safetensors file of
    /// the same tensors that the store converts it to (repeat the flag).
    #[arg(long = "real")]
    real: Vec<PathBuf>,
    /// Write every figure here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The ONNX file holding `safetensors`' tensors as `raw_data` initializers.
fn onnx_of(safetensors: &[u8]) -> Result<Vec<u8>> {
    use neurstore_formats::onnx::sample;
    let header = neurstore_core::safetensors::parse(safetensors)?;
    let at = header.data_start as usize;
    let mut initializers = Vec::new();
    for t in &header.tensors {
        let code = onnx_code(t.dtype).with_context(|| format!("{}: no ONNX type", t.name))?;
        let bytes = &safetensors[at + t.start as usize..at + t.end as usize];
        initializers.push(sample::tensor_raw(&t.name, code, &t.shape, bytes));
    }
    Ok(sample::model(
        &[sample::node("Identity", &["x"], &["y"], &[])],
        &initializers,
        &[sample::value_info("x", 1, &[1])],
        &[sample::value_info("y", 1, &[1])],
    ))
}

fn onnx_code(dtype: neurstore::DType) -> Option<u64> {
    use neurstore::DType::*;
    Some(match dtype {
        F32 => 1,
        U8 => 2,
        I8 => 3,
        I32 => 6,
        I64 => 7,
        F16 => 10,
        F64 => 11,
        BF16 => 16,
        _ => return None,
    })
}

/// The safetensors file with every F32 element moved by `noise` of its magnitude (a fine-tune).
fn fine_tune(safetensors: &[u8], noise: f32) -> Result<Vec<u8>> {
    let header = neurstore_core::safetensors::parse(safetensors)?;
    let mut out = safetensors.to_vec();
    let mut state = 0x9E37_79B9u32;
    for t in header
        .tensors
        .iter()
        .filter(|t| t.dtype == neurstore::DType::F32)
    {
        let at = (header.data_start + t.start) as usize;
        for chunk in out[at..(header.data_start + t.end) as usize].chunks_exact_mut(4) {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let v = f32::from_le_bytes(chunk.try_into().unwrap());
            let r = state as f32 / u32::MAX as f32 - 0.5;
            chunk.copy_from_slice(&(v + v * noise * r).to_le_bytes());
        }
    }
    Ok(out)
}

fn fresh(dir: &Path) -> Result<Store> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    Store::init(dir)?;
    Ok(Store::open_writer(dir)?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let scratch = tempfile::tempdir()?;
    let st_bytes = std::fs::read(&args.model)?;
    let st = scratch.path().join("model.safetensors");
    std::fs::write(&st, &st_bytes)?;
    let bin = scratch.path().join("pytorch_model.bin");
    {
        let store = fresh(&scratch.path().join("convert"))?;
        store.put("m", &st, &PutOptions::default(), &NoProgress)?;
        // Forced: a safetensors `__metadata__` (`{"format": "pt"}`) has no place in a checkpoint.
        let to_pt = GetOptions {
            format: Some(OutputFormat::PyTorch),
            force: true,
        };
        store.get_with("m", &bin, &to_pt, &NoProgress)?;
    }
    let onnx = scratch.path().join("model.onnx");
    std::fs::write(&onnx, onnx_of(&st_bytes)?)?;
    let files = [("safetensors", &st), ("pytorch", &bin), ("onnx", &onnx)];

    // 1. Import speed, formats interleaved in every repeat.
    let mut times = vec![Vec::new(); files.len()];
    for r in 0..args.repeat {
        // Each repeat starts with another format: none always runs first.
        for k in (0..files.len()).map(|i| (i + r) % files.len()) {
            let path = files[k].1;
            let store = fresh(&scratch.path().join("speed"))?;
            let started = Instant::now();
            store.put("m", path, &PutOptions::default(), &NoProgress)?;
            times[k].push(started.elapsed().as_secs_f64());
        }
    }
    let medians: Vec<f64> = times.into_iter().map(median).collect();
    println!("import of the same tensors, median of {}:", args.repeat);
    println!("| format | file MB | import s | speed vs safetensors |");
    println!("|---|---|---|---|");
    let mut speed = Vec::new();
    for ((format, path), t) in files.iter().zip(&medians) {
        let len = std::fs::metadata(path)?.len();
        let ratio = medians[0] / t;
        println!(
            "| {format} | {:.1} | {t:.3} | {ratio:.2}x |",
            len as f64 / 1e6
        );
        speed.push(
            json!({"format": format, "bytes": len, "seconds": t, "speed_vs_safetensors": ratio}),
        );
    }

    // 2. The same model in three formats, one store.
    let store = fresh(&scratch.path().join("dedup"))?;
    println!("\nthe same model put three times, one store:");
    println!("| put | file bytes | bytes added | added / file |");
    println!("|---|---|---|---|");
    let mut dedup = Vec::new();
    for (format, path) in &files {
        let r = store.put(format, path, &PutOptions::default(), &NoProgress)?;
        let len = std::fs::metadata(path)?.len();
        let share = r.stored_bytes_added as f64 / len as f64;
        println!(
            "| {format} | {len} | {} | {:.3}% |",
            r.stored_bytes_added,
            share * 100.0
        );
        dedup.push(json!({"format": format, "bytes": len, "added": r.stored_bytes_added}));
    }

    // 3. A fine-tune against its base: ONNX pair against safetensors pair.
    let ft_bytes = fine_tune(&st_bytes, args.noise)?;
    let ft_st = scratch.path().join("ft.safetensors");
    std::fs::write(&ft_st, &ft_bytes)?;
    let ft_onnx = scratch.path().join("ft.onnx");
    std::fs::write(&ft_onnx, onnx_of(&ft_bytes)?)?;
    println!("\nfine-tune stored against its base (base + fine-tune, stored bytes):");
    println!("| mode | safetensors pair | ONNX pair | ONNX / safetensors |");
    println!("|---|---|---|---|");
    let mut pairs = Vec::new();
    for mode in [Mode::Lossless, Mode::Absolute(args.tolerance)] {
        let mut added = Vec::new();
        for (base, ft) in [(&st, &ft_st), (&onnx, &ft_onnx)] {
            let store = fresh(&scratch.path().join("pair"))?;
            let a = store.put("base", base, &PutOptions::default(), &NoProgress)?;
            let options = PutOptions {
                mode,
                base: BaseChoice::Model("base".into()),
                ..Default::default()
            };
            let b = store.put("ft", ft, &options, &NoProgress)?;
            added.push((a.stored_bytes_added, b.stored_bytes_added));
        }
        let (s, o) = (
            (added[0].0 + added[0].1) as f64,
            (added[1].0 + added[1].1) as f64,
        );
        println!(
            "| {} | {} (fine-tune {}) | {} (fine-tune {}) | {:.4} |",
            mode.label(),
            s,
            added[0].1,
            o,
            added[1].1,
            o / s
        );
        pairs.push(json!({"mode": mode.label(), "safetensors": added[0], "onnx": added[1], "ratio": o / s}));
    }
    // 4. Real files against their safetensors conversion.
    let mut real = Vec::new();
    if !args.real.is_empty() {
        println!(
            "\nreal files against the safetensors file of the same tensors, median of {}:",
            args.repeat
        );
        println!(
            "| file | MB | import s | its safetensors s | speed vs safetensors | bytes added by the second |"
        );
        println!("|---|---|---|---|---|---|");
    }
    for path in &args.real {
        let converted = scratch.path().join("real.safetensors");
        {
            let store = fresh(&scratch.path().join("convert"))?;
            store.put("m", path, &PutOptions::default(), &NoProgress)?;
            let to_st = GetOptions {
                format: Some(OutputFormat::Safetensors),
                force: true,
            };
            store.get_with("m", &converted, &to_st, &NoProgress)?;
        }
        let mut times = [Vec::new(), Vec::new()];
        for r in 0..args.repeat {
            for k in [r % 2, 1 - r % 2] {
                let p = [path, &converted][k];
                let store = fresh(&scratch.path().join("speed"))?;
                let started = Instant::now();
                store.put("m", p, &PutOptions::default(), &NoProgress)?;
                times[k].push(started.elapsed().as_secs_f64());
            }
        }
        let [t, ts] = times.map(median);
        let store = fresh(&scratch.path().join("dedup"))?;
        store.put("st", &converted, &PutOptions::default(), &NoProgress)?;
        let added = store
            .put("real", path, &PutOptions::default(), &NoProgress)?
            .stored_bytes_added;
        let len = std::fs::metadata(path)?.len();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        println!(
            "| {name} | {:.1} | {t:.3} | {ts:.3} | {:.2}x | {added} ({:.3}%) |",
            len as f64 / 1e6,
            ts / t,
            added as f64 * 100.0 / len as f64
        );
        real.push(json!({"file": path, "bytes": len, "seconds": t, "safetensors_seconds": ts, "added_after_safetensors": added}));
    }
    if let Some(path) = &args.json {
        let out = json!({"model": args.model, "repeat": args.repeat, "speed": speed, "dedup": dedup, "fine_tune": pairs, "real": real});
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}
