//! `neurstore-index`: the measurements behind the similarity index's footprint choices, each
//! side by side in one run.
//!
//! - `gate`: for tensors of each element count, how often a delta passes the writer's margin
//!   (it must save max(1/32 of the standalone encoding, 64 B)) and how many bytes it saves, on
//!   W2's consecutive checkpoints and on fine-tune-like tensors (slices of MiniLM's weights plus
//!   noise): where sketching a tensor stops paying.
//! - `sketch`: the base `put` would choose (top 4 by sketch distance, re-ranked on the full
//!   tensors) with f32 sketches and with packed ones, on W2 and on a synthetic MiniLM family.
//! - `scan`: exact scan against HNSW query time and recall@1 by bucket size (128-d).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use neurstore_core::codec::{self, delta, quantized};
use neurstore_core::dtype::DType;
use neurstore_core::hnsw::{Hnsw, HnswParams};
use neurstore_core::safetensors;
use neurstore_core::sketch::{self, Packed, SKETCH_DIM};

/// zstd level of deltas and quantized blobs, as `put` uses.
const LEVEL: i32 = 1;
/// Candidates `put` re-ranks.
const CANDIDATES: usize = 4;

#[derive(Parser)]
#[command(name = "neurstore-index", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Directory holding all-MiniLM-L6-v2/ and w2/.
    #[arg(long, default_value = "data", global = true)]
    data: PathBuf,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 7, global = true)]
    seed: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Delta wins and bytes saved by element count.
    Gate {
        /// Element counts of the fine-tune-like tensors.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "32,64,128,256,384,512,1024,2048,4096"
        )]
        sizes: Vec<usize>,
        /// Pairs per element count.
        #[arg(long, default_value_t = 40)]
        pairs: usize,
        /// Fine-tune noise RMS relative to the tensor's RMS (W1 measures 0.5-0.9%).
        #[arg(long, default_value_t = 0.007)]
        noise: f64,
    },
    /// Base choice with f32 against packed sketches.
    Sketch {
        /// Fine-tunes of the synthetic MiniLM family (each gets one further fine-tune).
        #[arg(long, default_value_t = 4)]
        fine_tunes: usize,
    },
    /// Exact scan against HNSW by bucket size.
    Scan {
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "100,250,500,1000,2000,4000,8000,16000"
        )]
        sizes: Vec<usize>,
        /// Queries per size.
        #[arg(long, default_value_t = 400)]
        queries: usize,
    },
}

/// A seeded generator (SplitMix64) with normal deviates.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        (-2.0 * self.uniform().ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos()
    }
}

/// A tensor and its base, as f32 values.
type Pair = (Vec<f32>, Vec<f32>);

/// A model's F32 tensors by name.
fn f32_tensors(path: &Path) -> Result<BTreeMap<String, Vec<f32>>> {
    let file = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let header = safetensors::parse(&file)?;
    let data = &file[header.data_start as usize..];
    let mut out = BTreeMap::new();
    for t in header.tensors.iter().filter(|t| t.dtype == DType::F32) {
        let raw = &data[t.start as usize..t.end as usize];
        let values = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        out.insert(t.name.clone(), values);
    }
    Ok(out)
}

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn w2_checkpoints(data: &Path) -> Result<Vec<BTreeMap<String, Vec<f32>>>> {
    let dir = data.join("w2");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| {
            format!(
                "reading {} (run scripts/workloads/make_w2.py)",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.len() < 2 {
        bail!("{} holds fewer than two checkpoints", dir.display());
    }
    files.iter().map(|p| f32_tensors(p)).collect()
}

fn minilm(data: &Path) -> Result<BTreeMap<String, Vec<f32>>> {
    f32_tensors(&data.join("all-MiniLM-L6-v2").join("model.safetensors"))
}

/// `v` plus N(0, (rel · rms(v))²) per element.
fn fine_tune(v: &[f32], rel: f64, rng: &mut Rng) -> Vec<f32> {
    let rms = (v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt();
    v.iter()
        .map(|&x| x + (rel * rms * rng.normal()) as f32)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// gate

const MODES: [Option<f64>; 5] = [None, Some(1e-3), Some(3e-4), Some(1e-4), Some(1e-5)];

fn mode_name(m: Option<f64>) -> String {
    m.map_or("lossless".into(), |t| format!("abs {t:e}"))
}

/// (standalone bytes, delta bytes) as `plan_item` computes them.
fn encodings(target: &[f32], base: &[f32], mode: Option<f64>) -> Result<(usize, usize)> {
    let (t, b) = (bytes(target), bytes(base));
    let lossless_alone = codec::encode_tensor(DType::F32, &t)
        .bytes
        .map_or(t.len(), |e| e.len());
    Ok(match mode {
        None => {
            let d = delta::encode(&t, &b, 4, delta::Transform::IntDiff, LEVEL);
            (lossless_alone, d.len())
        }
        Some(tol) => {
            let alone = quantized::encode(DType::F32, &t, None, tol, LEVEL)
                .map_err(|e| anyhow::anyhow!(e.0))?
                .bytes
                .len();
            let with = quantized::encode(DType::F32, &t, Some(&b), tol, LEVEL)
                .map_err(|e| anyhow::anyhow!(e.0))?
                .bytes
                .len();
            (alone.min(lossless_alone), with)
        }
    })
}

#[derive(Default)]
struct GateCell {
    pairs: u64,
    wins: u64,
    saved: u64,
}

fn gate_row(
    cells: &mut BTreeMap<(String, usize, String), GateCell>,
    source: &str,
    pairs: &[Pair],
) -> Result<()> {
    for (target, base) in pairs {
        for mode in MODES {
            let (alone, with) = encodings(target, base, mode)?;
            let margin = (alone / 32).max(64);
            let cell = cells
                .entry((source.to_string(), target.len(), mode_name(mode)))
                .or_default();
            cell.pairs += 1;
            if with + margin < alone {
                cell.wins += 1;
                cell.saved += (alone - with) as u64;
            }
        }
    }
    Ok(())
}

fn gate(cli: &Cli, sizes: &[usize], pairs: usize, noise: f64) -> Result<()> {
    let mut cells = BTreeMap::new();
    let w2 = w2_checkpoints(&cli.data)?;
    let w2_pairs: Vec<Pair> = w2
        .windows(2)
        .flat_map(|w| {
            w[1].iter()
                .filter_map(|(name, t)| w[0].get(name).map(|b| (t.clone(), b.clone())))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut by_len: BTreeMap<usize, Vec<Pair>> = BTreeMap::new();
    for p in w2_pairs {
        by_len.entry(p.0.len()).or_default().push(p);
    }
    for p in by_len.values() {
        gate_row(&mut cells, "W2 checkpoints", p)?;
    }
    let base = minilm(&cli.data)?;
    let pool: Vec<&Vec<f32>> = base.values().filter(|v| v.len() >= 4096).collect();
    let mut rng = Rng(cli.seed);
    for &n in sizes {
        let synthetic: Vec<Pair> = (0..pairs)
            .map(|i| {
                let src = pool[i % pool.len()];
                let start = (rng.next_u64() as usize) % (src.len() - n + 1);
                let b = src[start..start + n].to_vec();
                (fine_tune(&b, noise, &mut rng), b)
            })
            .collect();
        gate_row(&mut cells, "MiniLM + noise", &synthetic)?;
    }
    println!(
        "| source | elements | mode | pairs | delta passes the margin | mean bytes saved per pair |"
    );
    println!("|---|---:|---|---:|---:|---:|");
    for ((source, n, mode), c) in &cells {
        println!(
            "| {source} | {n} | {mode} | {} | {:.2} | {:.0} |",
            c.pairs,
            c.wins as f64 / c.pairs as f64,
            c.saved as f64 / c.pairs as f64
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// sketch

/// One stored tensor: its values, f32 sketch and packed sketch's values.
struct Stored {
    values: Vec<f32>,
    f32_sketch: Vec<f32>,
    packed: Vec<f32>,
}

impl Stored {
    fn new(values: Vec<f32>) -> Self {
        let f32_sketch = sketch::sketch(DType::F32, &bytes(&values)).expect("F32 is indexable");
        let packed = Packed::quantize(&f32_sketch).values();
        Stored {
            values,
            f32_sketch,
            packed,
        }
    }
}

fn exact(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum()
}

/// The base `put` picks for `query` among `bucket`: the top 4 by sketch distance (f32 query
/// against `sketch_of`), re-ranked on the full tensors.
fn choose(query: &Stored, bucket: &[&Stored], packed: bool) -> (usize, usize) {
    let mut order: Vec<usize> = (0..bucket.len()).collect();
    let d = |i: usize| {
        let s = if packed {
            &bucket[i].packed
        } else {
            &bucket[i].f32_sketch
        };
        sketch::distance(&query.f32_sketch, s)
    };
    order.sort_by(|&a, &b| d(a).total_cmp(&d(b)).then(a.cmp(&b)));
    let top1 = order[0];
    let chosen = order
        .iter()
        .take(CANDIDATES)
        .copied()
        .min_by(|&a, &b| {
            exact(&query.values, &bucket[a].values)
                .total_cmp(&exact(&query.values, &bucket[b].values))
                .then(a.cmp(&b))
        })
        .expect("non-empty");
    (top1, chosen)
}

#[derive(Default)]
struct Agreement {
    queries: u64,
    top1_f32_exact: u64,
    top1_packed_exact: u64,
    chosen_f32_exact: u64,
    chosen_packed_exact: u64,
    chosen_same: u64,
}

/// Queries each model's tensors (≥ `sketch::MIN_ELEMENTS`) against every tensor of the models
/// before it in the same bucket.
fn agreement(models: &[BTreeMap<String, Vec<f32>>], queries_from: usize) -> Agreement {
    let stored: Vec<Vec<Stored>> = models
        .iter()
        .map(|m| {
            m.values()
                .filter(|v| v.len() as u64 >= sketch::MIN_ELEMENTS)
                .map(|v| Stored::new(v.clone()))
                .collect()
        })
        .collect();
    let mut a = Agreement::default();
    for k in queries_from.max(1)..stored.len() {
        for q in &stored[k] {
            let bucket: Vec<&Stored> = stored[..k]
                .iter()
                .flatten()
                .filter(|s| s.values.len() == q.values.len())
                .collect();
            if bucket.is_empty() {
                continue;
            }
            let truth = (0..bucket.len())
                .min_by(|&x, &y| {
                    exact(&q.values, &bucket[x].values)
                        .total_cmp(&exact(&q.values, &bucket[y].values))
                        .then(x.cmp(&y))
                })
                .expect("non-empty");
            let (t32, c32) = choose(q, &bucket, false);
            let (tp, cp) = choose(q, &bucket, true);
            a.queries += 1;
            a.top1_f32_exact += (t32 == truth) as u64;
            a.top1_packed_exact += (tp == truth) as u64;
            a.chosen_f32_exact += (c32 == truth) as u64;
            a.chosen_packed_exact += (cp == truth) as u64;
            a.chosen_same += (c32 == cp) as u64;
        }
    }
    a
}

fn sketch_cmd(cli: &Cli, fine_tunes: usize) -> Result<()> {
    let w2 = w2_checkpoints(&cli.data)?;
    let w2_result = agreement(&w2, 1);
    let base = minilm(&cli.data)?;
    let mut rng = Rng(cli.seed);
    let mut family = vec![base.clone()];
    let parents: Vec<BTreeMap<String, Vec<f32>>> = (0..fine_tunes)
        .map(|_| {
            base.iter()
                .map(|(k, v)| (k.clone(), fine_tune(v, 0.007, &mut rng)))
                .collect()
        })
        .collect();
    let children: Vec<BTreeMap<String, Vec<f32>>> = parents
        .iter()
        .map(|p| {
            p.iter()
                .map(|(k, v)| (k.clone(), fine_tune(v, 0.003, &mut rng)))
                .collect()
        })
        .collect();
    family.extend(parents);
    let first_child = family.len();
    family.extend(children);
    let minilm_result = agreement(&family, first_child);
    println!(
        "| family | queries | sketch top-1 = exact nearest, f32 | packed | chosen base = exact nearest, f32 | packed | same base chosen |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, a) in [
        ("W2 checkpoints", w2_result),
        ("MiniLM + noise", minilm_result),
    ] {
        let f = |x: u64| format!("{:.3}", x as f64 / a.queries.max(1) as f64);
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            a.queries,
            f(a.top1_f32_exact),
            f(a.top1_packed_exact),
            f(a.chosen_f32_exact),
            f(a.chosen_packed_exact),
            f(a.chosen_same)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// scan

/// Clustered sketches: `n / 10` centres from N(0, 1), ten members at N(0, 0.01²) around each,
/// inserted round by round (every cluster's first member, then every second one...). Queries: a
/// random member plus N(0, 0.002²).
fn scan_point(n: usize, queries: usize, seed: u64) -> (f64, f64, f64, f64) {
    let mut rng = Rng(seed ^ n as u64);
    let clusters = (n / 10).max(1);
    let centres: Vec<f32> = (0..clusters * SKETCH_DIM)
        .map(|_| rng.normal() as f32)
        .collect();
    let members: Vec<Packed> = (0..n)
        .map(|i| {
            let c = &centres[(i % clusters) * SKETCH_DIM..][..SKETCH_DIM];
            let v: Vec<f32> = c
                .iter()
                .map(|&m| m + (0.01 * rng.normal()) as f32)
                .collect();
            Packed::quantize(&v)
        })
        .collect();
    let build = |scan_below: usize| {
        let mut g = Hnsw::new(HnswParams {
            scan_below,
            ..HnswParams::default()
        });
        for (i, p) in members.iter().enumerate() {
            g.insert(i as u64, p);
        }
        g
    };
    let started = Instant::now();
    let graph = build(0);
    let build_s = started.elapsed().as_secs_f64();
    let scanned = build(usize::MAX >> 8);
    let qs: Vec<Vec<f32>> = (0..queries)
        .map(|_| {
            let m = members[(rng.next_u64() % n as u64) as usize].values();
            m.iter()
                .map(|&x| x + (0.002 * rng.normal()) as f32)
                .collect()
        })
        .collect();
    let time = |g: &Hnsw, k: usize| {
        let t = Instant::now();
        let found: Vec<Vec<(u64, f32)>> = qs.iter().map(|q| g.search(q, k)).collect();
        (t.elapsed().as_secs_f64() * 1e6 / queries as f64, found)
    };
    let (hnsw_us, hnsw_found) = time(&graph, CANDIDATES);
    let (scan_us, scan_found) = time(&scanned, CANDIDATES);
    let hits = hnsw_found
        .iter()
        .zip(&scan_found)
        .filter(|(h, s)| h.first().map(|x| x.1) <= s.first().map(|x| x.1))
        .count();
    let identical = scan_found
        .iter()
        .zip(&qs)
        .all(|(s, q)| *s == scanned.brute_force(q, CANDIDATES));
    assert!(identical, "a scanned bucket answers as brute force");
    (build_s, hnsw_us, scan_us, hits as f64 / queries as f64)
}

fn scan(cli: &Cli, sizes: &[usize], queries: usize) {
    println!(
        "| bucket size | HNSW build s | HNSW µs/query (k = 4) | exact scan µs/query (k = 4) | scan / HNSW | HNSW recall@1 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for &n in sizes {
        let (build_s, hnsw_us, scan_us, recall) = scan_point(n, queries, cli.seed);
        println!(
            "| {n} | {build_s:.2} | {hnsw_us:.1} | {scan_us:.1} | {:.2} | {recall:.3} |",
            scan_us / hnsw_us
        );
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Gate {
            sizes,
            pairs,
            noise,
        } => gate(&cli, sizes, *pairs, *noise),
        Command::Sketch { fine_tunes } => sketch_cmd(&cli, *fine_tunes),
        Command::Scan { sizes, queries } => {
            scan(&cli, sizes, *queries);
            Ok(())
        }
    }
}
