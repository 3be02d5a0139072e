//! Many fine-tunes of one base resident at once, computed on compressed weights.
//!
//! Puts all-MiniLM-L6-v2 and the W1 fine-tunes into a fresh store under a bounded tolerance,
//! loads every fine-tune resident (one shared base + integer delta codes each), and compares
//! side by side in one run with the same fine-tunes held as dense f32 copies:
//! - resident memory (bytes held, and process RSS growth) of N compressed vs N dense models;
//! - per-request latency (one sentence, batch 1) compressed vs dense;
//! - sentence-embedding cosine of each compressed fine-tune against its original;
//! - classifier predictions on W1's held-out sets against the originals' recorded predictions
//!   (computed by PyTorch when the workload was made), and the Rust dense path's agreement too.
//!
//! `cargo run --release -p neurstore-bench --bin neurstore-variants -- --json out.json`

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use neurstore::{
    BaseChoice, Mode, NoProgress, PutOptions, ResidentModel, ResidentOptions, SharedBases, Store,
};
use neurstore_infer::{
    Batch, Bert, BertConfig, Linear, Matrix, Pooling, TextEncoder, resident_from_safetensors,
};
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// The base model's Hugging Face directory.
    #[arg(long, default_value = "data/all-MiniLM-L6-v2")]
    base: PathBuf,
    /// The W1 workload directory (made by scripts/workloads/make_w1.py).
    #[arg(long, default_value = "data/w1")]
    w1: PathBuf,
    /// Absolute tolerance of the bounded store.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f64,
    /// Held-out examples per classifier (of 1,000).
    #[arg(long, default_value_t = 1000)]
    examples: usize,
    /// Sentences for the embedding comparison.
    #[arg(long, default_value_t = 200)]
    sentences: usize,
    /// Requests timed per path for latency.
    #[arg(long, default_value_t = 100)]
    requests: usize,
    /// Write every figure here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Internal: load the fine-tunes of STORE ("compressed") or their files ("dense") in this
    /// fresh process and print how much its resident set grew.
    #[arg(long, num_args = 2, value_names = ["FORM", "STORE"], hide = true)]
    measure_rss: Vec<String>,
}

struct Variant {
    name: String,
    file: PathBuf,
    head: PathBuf,
    heldout: PathBuf,
    predictions: Vec<usize>,
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn variants(w1: &Path) -> Result<Vec<Variant>> {
    let manifest = read_json(&w1.join("manifest.json"))?;
    let root = w1.parent().and_then(Path::parent).unwrap_or(Path::new("."));
    let models = manifest["models"]
        .as_array()
        .context("manifest has no models")?;
    models
        .iter()
        .map(|m| {
            let path = |k: &str| -> Result<PathBuf> {
                Ok(root.join(
                    m[k].as_str()
                        .with_context(|| format!("model without {k}"))?,
                ))
            };
            let file = path("file")?;
            Ok(Variant {
                name: file.file_stem().unwrap().to_string_lossy().into_owned(),
                head: path("head")?,
                heldout: path("heldout")?,
                predictions: m["predictions"]
                    .as_array()
                    .context("model without predictions")?
                    .iter()
                    .map(|p| p.as_u64().unwrap_or(u64::MAX) as usize)
                    .collect(),
                file,
            })
        })
        .collect()
}

/// The token id sequences of a W1 held-out set.
fn input_ids(set: &Value) -> Result<Vec<Vec<u32>>> {
    Ok(set["input_ids"]
        .as_array()
        .context("held-out set without input_ids")?
        .iter()
        .map(|s| {
            s.as_array()
                .map(|a| a.iter().map(|x| x.as_u64().unwrap_or(0) as u32).collect())
                .unwrap_or_default()
        })
        .collect())
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn head(path: &Path) -> Result<Linear> {
    let m = resident_from_safetensors("head", &std::fs::read(path)?)?;
    let w = m.tensors["classifier.weight"]
        .to_f32()
        .context("head weight")?;
    let b = m.tensors["classifier.bias"].to_f32().context("head bias")?;
    let rows = b.len();
    Ok(Linear::new(Matrix::dense(w, rows, 384)?, Some(b))?)
}

fn predict(model: &Bert, head: &Linear, ids: &[Vec<u32>]) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(50) {
        let pooled = model.embed(&Batch::from_ids(chunk)?, Pooling::Mean)?;
        let flat: Vec<f32> = pooled.concat();
        let x = candle_tensor(flat, chunk.len())?;
        let logits = head.forward(&x)?.to_vec2::<f32>()?;
        out.extend(logits.iter().map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a })
                .0
        }));
    }
    Ok(out)
}

fn candle_tensor(flat: Vec<f32>, rows: usize) -> Result<candle_core::Tensor> {
    let cols = flat.len() / rows;
    Ok(candle_core::Tensor::from_vec(
        flat,
        (rows, cols),
        &candle_core::Device::Cpu,
    )?)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Loads every fine-tune in `form` and returns the growth of this process's resident set.
fn rss_growth(form: &str, root: &Path, variants: &[Variant], config: &BertConfig) -> Result<u64> {
    let before = rss_bytes();
    let mut held = Vec::new();
    let bases = SharedBases::new();
    if form == "compressed" {
        // The store (and its cache of decoded bases, a load-time aid) is dropped before the
        // resident set is read: what stays is what serving the models holds.
        let store = Store::open(root)?;
        for v in variants {
            let m = store.load_resident(&v.name, &bases, ResidentOptions::default())?;
            held.push(Bert::from_resident(&m, config, false)?);
        }
    } else {
        for v in variants {
            let m = resident_from_safetensors(&v.name, &std::fs::read(&v.file)?)?;
            held.push(Bert::from_resident(&m, config, true)?);
        }
    }
    Ok(rss_bytes().saturating_sub(before))
}

/// Runs [`rss_growth`] in a fresh copy of this program, so no memory freed earlier is reused.
fn rss_growth_in_child(form: &str, root: &Path, args: &Args) -> Result<u64> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--base",
            &args.base.to_string_lossy(),
            "--w1",
            &args.w1.to_string_lossy(),
        ])
        .args(["--measure-rss", form, &root.to_string_lossy()])
        .output()?;
    if !out.status.success() {
        bail!("measuring {form}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let variants = variants(&args.w1)?;
    if variants.is_empty() {
        bail!("no fine-tunes in {}", args.w1.display());
    }
    if let [form, root] = args.measure_rss.as_slice() {
        let config = BertConfig::from_json(&std::fs::read(args.base.join("config.json"))?)?;
        println!("{}", rss_growth(form, Path::new(root), &variants, &config)?);
        return Ok(());
    }
    let n = variants.len();
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("store");
    Store::init(&root)?;
    let config = BertConfig::from_json(&std::fs::read(args.base.join("config.json"))?)?;

    // 1. Store: base, then every fine-tune against it, all bounded.
    {
        let store = Store::open_writer(&root)?;
        let bounded = PutOptions {
            mode: Mode::Absolute(args.tolerance),
            ..PutOptions::default()
        };
        store.put("base", &args.base, &bounded, &NoProgress)?;
        for v in &variants {
            let opts = PutOptions {
                base: BaseChoice::Model("base".into()),
                ..bounded.clone()
            };
            store.put(&v.name, &v.file, &opts, &NoProgress)?;
        }
    }

    // 2. Originals, dense, for the references.
    let originals: Vec<ResidentModel> = variants
        .iter()
        .map(|v| resident_from_safetensors(&v.name, &std::fs::read(&v.file)?).map_err(Into::into))
        .collect::<Result<_>>()?;
    let dense_bytes_each = Bert::from_resident(&originals[0], &config, true)?.held_bytes();

    // 3. All fine-tunes resident on compressed weights, one shared base.
    let rss_compressed = rss_growth_in_child("compressed", &root, &args)?;
    let rss_dense = rss_growth_in_child("dense", &root, &args)?;
    let t = Instant::now();
    let bases = SharedBases::new();
    let compressed: Vec<Bert> = {
        let store = Store::open(&root)?;
        variants
            .iter()
            .map(|v| {
                let m = store.load_resident(&v.name, &bases, ResidentOptions::default())?;
                Ok(Bert::from_resident(&m, &config, false)?)
            })
            .collect::<Result<_>>()?
    };
    let load_s = t.elapsed().as_secs_f64();
    let held_compressed: usize =
        compressed.iter().map(Bert::held_bytes).sum::<usize>() + bases.held_bytes();
    let dense: Vec<Bert> = originals
        .iter()
        .map(|m| Bert::from_resident(m, &config, true))
        .collect::<Result<_, _>>()?;
    let held_dense = dense_bytes_each * n;
    println!(
        "{n} fine-tunes resident: compressed {:.1} MB held ({:.1}% of {n} dense copies, {:.1} MB; shared base {:.1} MB), loaded in {load_s:.2} s",
        held_compressed as f64 / 1e6,
        100.0 * held_compressed as f64 / held_dense as f64,
        held_dense as f64 / 1e6,
        bases.held_bytes() as f64 / 1e6
    );
    println!(
        "  process RSS growth (fresh processes): compressed {:.1} MB, dense {:.1} MB ({:.1}%)",
        rss_compressed as f64 / 1e6,
        rss_dense as f64 / 1e6,
        100.0 * rss_compressed as f64 / rss_dense.max(1) as f64
    );

    // 4. Embedding cosine against the originals.
    let store = Store::open(&root)?;
    let tokenizer_json = store
        .model_file("base", "tokenizer.json")?
        .context("base model has no tokenizer.json")?;
    let encoder = TextEncoder::from_json(&tokenizer_json, 256)?;
    let heldout = read_json(&variants[0].heldout)?;
    let texts: Vec<String> = heldout["descriptions"]
        .as_array()
        .context("held-out set without descriptions")?
        .iter()
        .take(args.sentences)
        .map(|d| d.as_str().unwrap_or_default().to_string())
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut min_cos = f64::MAX;
    let mut embeddings = Vec::new();
    for (k, (c, d)) in compressed.iter().zip(&dense).enumerate() {
        let mut worst = f64::MAX;
        for chunk in refs.chunks(50) {
            let batch = encoder.batch(chunk)?;
            let ec = c.embed(&batch, Pooling::MeanNormalized)?;
            let ed = d.embed(&batch, Pooling::MeanNormalized)?;
            for (a, b) in ec.iter().zip(&ed) {
                worst = worst.min(cosine(a, b));
            }
        }
        min_cos = min_cos.min(worst);
        embeddings.push(json!({"model": variants[k].name, "min_cosine": worst}));
    }
    println!(
        "embedding cosine vs originals over {} sentences: min {min_cos:.7}",
        texts.len()
    );

    // 5. Tokenizer check: tokenizer.json vs the workload's own WordPiece ids.
    let ids_ref = input_ids(&heldout)?;
    let max_len = heldout["max_len"].as_u64().unwrap_or(48) as usize;
    let short = TextEncoder::from_json(&tokenizer_json, max_len)?;
    let token_mismatch = texts
        .iter()
        .zip(&ids_ref)
        .filter(|(t, ids)| short.ids(t).map(|x| &x != *ids).unwrap_or(true))
        .count();
    println!(
        "tokenizer.json ids differ from the workload's WordPiece ids on {token_mismatch} of {} texts",
        texts.len()
    );

    // 6. Classifier agreement on held-out sets.
    let mut classifiers = Vec::new();
    let (mut agree_c, mut agree_d, mut total) = (0usize, 0usize, 0usize);
    let mut min_agree = 1.0f64;
    for (k, v) in variants.iter().enumerate() {
        let set = read_json(&v.heldout)?;
        let mut ids = input_ids(&set)?;
        ids.truncate(args.examples);
        let h = head(&v.head)?;
        let pc = predict(&compressed[k], &h, &ids)?;
        let pd = predict(&dense[k], &h, &ids)?;
        let want = &v.predictions[..ids.len()];
        let ac = pc.iter().zip(want).filter(|(a, b)| a == b).count();
        let ad = pd.iter().zip(want).filter(|(a, b)| a == b).count();
        let rate = ac as f64 / ids.len() as f64;
        min_agree = min_agree.min(rate);
        println!(
            "  {:<22} compressed agrees with torch original on {ac}/{} ({:.2}%); Rust dense {ad}/{}",
            v.name,
            ids.len(),
            100.0 * rate,
            ids.len()
        );
        (agree_c, agree_d, total) = (agree_c + ac, agree_d + ad, total + ids.len());
        classifiers.push(json!({"model": v.name, "examples": ids.len(),
            "compressed_agree": ac, "rust_dense_agree": ad}));
    }
    println!(
        "classifier agreement: compressed {:.3}% (lowest model {:.2}%), Rust dense {:.3}%",
        100.0 * agree_c as f64 / total as f64,
        100.0 * min_agree,
        100.0 * agree_d as f64 / total as f64
    );

    // 7. Per-request latency, one sentence each, models taken round-robin, paths interleaved.
    let batch = encoder.batch(&[refs[0]])?;
    let (mut lat_c, mut lat_d) = (Vec::new(), Vec::new());
    for r in 0..args.requests {
        let k = r % n;
        let t = Instant::now();
        compressed[k].embed(&batch, Pooling::MeanNormalized)?;
        lat_c.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        dense[k].embed(&batch, Pooling::MeanNormalized)?;
        lat_d.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (c50, c99) = (percentile(&mut lat_c, 0.5), percentile(&mut lat_c, 0.99));
    let (d50, d99) = (percentile(&mut lat_d, 0.5), percentile(&mut lat_d, 0.99));
    println!(
        "latency per request ({} tokens, batch 1): compressed p50 {c50:.2} ms p99 {c99:.2} ms; dense p50 {d50:.2} ms p99 {d99:.2} ms; dense/compressed p50 {:.2}x",
        batch.len,
        d50 / c50
    );

    if let Some(path) = &args.json {
        let out = json!({
            "variants": n,
            "tolerance": args.tolerance,
            "threads": rayon::current_num_threads(),
            "held_bytes": {"compressed": held_compressed, "dense": held_dense,
                "shared_base": bases.held_bytes(), "ratio": held_compressed as f64 / held_dense as f64},
            "rss_growth_bytes": {"compressed": rss_compressed, "dense": rss_dense},
            "load_seconds": load_s,
            "embedding": {"sentences": texts.len(), "min_cosine": min_cos, "models": embeddings},
            "tokenizer_mismatches": token_mismatch,
            "classifiers": {"compressed_agreement": agree_c as f64 / total as f64,
                "lowest_model_agreement": min_agree,
                "rust_dense_agreement": agree_d as f64 / total as f64, "models": classifiers},
            "latency_ms": {"tokens": batch.len, "compressed_p50": c50, "compressed_p99": c99,
                "dense_p50": d50, "dense_p99": d99},
        });
        std::fs::write(path, serde_json::to_vec_pretty(&out)?)?;
    }
    Ok(())
}
