//! Quality and cost of the similarity index: recall@1 of the store's index against its own brute
//! force on a real family, and search time against an exact scan as the graph grows.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use neurstore_core::hnsw::{Hnsw, HnswParams};
use neurstore_core::safetensors;
use neurstore_core::sketch::{self, Packed, SKETCH_DIM};
use neurstore_storage::{Engine, EngineOptions};
use serde::Serialize;

use super::paper::SplitMix64;

/// Recall of the store's index for the tensors of one model not yet put.
#[derive(Debug, Clone, Serialize)]
pub struct StoreRecall {
    /// Model whose tensors are the queries.
    pub model: String,
    /// Float tensors queried (those whose bucket is not empty).
    pub queries: u64,
    /// Fraction whose search top-1 is at the brute-force top-1 distance.
    pub recall_at_1: f64,
    /// Fraction whose brute-force top-1 is among HNSW's top 4 (what `put` re-ranks).
    pub recall_1_at_4: f64,
    /// `TensorIndex::search` (an exact scan in buckets below `scan_below`), microseconds per
    /// query (k = 1).
    pub hnsw_us: f64,
    /// `TensorIndex::brute_force`, microseconds per query (k = 1).
    pub brute_us: f64,
    /// Mean bucket size over the queries.
    pub mean_bucket: f64,
    /// Largest bucket queried.
    pub max_bucket: u64,
}

/// Opens the store at `root` read-only and queries its index with every float tensor of `model`.
pub fn store_recall(root: &Path, name: &str, model: &Path) -> Result<StoreRecall> {
    let (engine, _) = Engine::open(root, EngineOptions::default())?;
    let file = std::fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    let header = safetensors::parse(&file)?;
    let data = &file[header.data_start as usize..];
    let mut queries = Vec::new();
    for t in &header.tensors {
        let raw = &data[t.start as usize..t.end as usize];
        if let Some(s) = sketch::sketch(t.dtype, raw) {
            let elements = raw.len() as u64 * 8 / t.dtype.bits();
            queries.push((t.dtype, elements, s));
        }
    }
    engine
        .with_index(|index| {
            let (mut n, mut hits, mut hits4, mut bucket_sum, mut bucket_max) =
                (0u64, 0, 0, 0u64, 0);
            let (mut hnsw_s, mut brute_s) = (0.0, 0.0);
            for (dtype, elements, s) in &queries {
                let top4 = index.search(*dtype, *elements, s, 4);
                let t = Instant::now();
                let truth = index.brute_force(*dtype, *elements, s, 1);
                let brute = t.elapsed().as_secs_f64();
                let Some(&(_, best)) = truth.first() else {
                    continue;
                };
                let t = Instant::now();
                let top1 = index.search(*dtype, *elements, s, 1);
                hnsw_s += t.elapsed().as_secs_f64();
                brute_s += brute;
                n += 1;
                hits += top1.first().is_some_and(|&(_, d)| d <= best) as u64;
                hits4 += top4.iter().any(|&(_, d)| d <= best) as u64;
                let bucket = index.brute_force(*dtype, *elements, s, usize::MAX).len() as u64;
                bucket_sum += bucket;
                bucket_max = bucket_max.max(bucket);
            }
            let per = |x: f64| if n > 0 { x / n as f64 } else { 0.0 };
            StoreRecall {
                model: name.to_string(),
                queries: n,
                recall_at_1: per(hits as f64),
                recall_1_at_4: per(hits4 as f64),
                hnsw_us: per(hnsw_s) * 1e6,
                brute_us: per(brute_s) * 1e6,
                mean_bucket: per(bucket_sum as f64),
                max_bucket: bucket_max,
            }
        })
        .map_err(Into::into)
}

/// One graph size of the synthetic scaling check.
#[derive(Debug, Clone, Serialize)]
pub struct ScalingPoint {
    /// Vectors in the graph.
    pub n: usize,
    /// Clusters (n / 10).
    pub clusters: usize,
    /// Seconds to insert all vectors.
    pub build_seconds: f64,
    /// HNSW search (k = 1), microseconds per query.
    pub hnsw_us: f64,
    /// Exact linear scan, microseconds per query.
    pub scan_us: f64,
    /// `Hnsw::brute_force` (scan and sort), microseconds per query.
    pub brute_force_us: f64,
    /// Fraction of queries whose HNSW top-1 is at the exact top-1 distance.
    pub recall_at_1: f64,
}

/// Clustered vectors: `n / 10` centres drawn from N(0, 1) per coordinate, ten members each at
/// N(0, 0.01²) around it (a base and its fine-tunes), packed, inserted round by round (every cluster's
/// first member, then every second one...: bases before fine-tunes). Queries: a random member
/// plus N(0, 0.002²).
pub fn scaling(sizes: &[usize], queries: usize, seed: u64) -> Vec<ScalingPoint> {
    sizes
        .iter()
        .map(|&n| scaling_point(n, queries, seed))
        .collect()
}

fn scaling_point(n: usize, queries: usize, seed: u64) -> ScalingPoint {
    let mut rng = SplitMix64::new(seed ^ n as u64);
    let clusters = (n / 10).max(1);
    let centres: Vec<f32> = (0..clusters * SKETCH_DIM)
        .map(|_| rng.normal() as f32)
        .collect();
    // Packed as the store keeps them; the exact scan runs over the same dequantized values.
    let packed: Vec<Packed> = (0..n)
        .map(|i| {
            let c = &centres[(i % clusters) * SKETCH_DIM..][..SKETCH_DIM];
            let v: Vec<f32> = c
                .iter()
                .map(|&m| m + (0.01 * rng.normal()) as f32)
                .collect();
            Packed::quantize(&v)
        })
        .collect();
    let vectors: Vec<f32> = packed.iter().flat_map(Packed::values).collect();
    let started = Instant::now();
    // Always a graph (no scan phase): this measures HNSW itself.
    let mut graph = Hnsw::new(HnswParams {
        scan_below: 0,
        ..HnswParams::default()
    });
    for (i, p) in packed.iter().enumerate() {
        graph.insert(i as u64, p);
    }
    let build_seconds = started.elapsed().as_secs_f64();
    let qs: Vec<Vec<f32>> = (0..queries)
        .map(|_| {
            let m = (rng.next_u64() % n as u64) as usize;
            vectors[m * SKETCH_DIM..][..SKETCH_DIM]
                .iter()
                .map(|&x| x + (0.002 * rng.normal()) as f32)
                .collect()
        })
        .collect();
    let t = Instant::now();
    let found: Vec<f32> = qs
        .iter()
        .map(|q| graph.search(q, 1).first().map_or(f32::INFINITY, |r| r.1))
        .collect();
    let hnsw_us = t.elapsed().as_secs_f64() * 1e6 / queries as f64;
    let t = Instant::now();
    let exact: Vec<f32> = qs
        .iter()
        .map(|q| {
            vectors
                .chunks_exact(SKETCH_DIM)
                .map(|v| sketch::distance(q, v))
                .fold(f32::INFINITY, f32::min)
        })
        .collect();
    let scan_us = t.elapsed().as_secs_f64() * 1e6 / queries as f64;
    let t = Instant::now();
    for q in &qs {
        std::hint::black_box(graph.brute_force(q, 1));
    }
    let brute_force_us = t.elapsed().as_secs_f64() * 1e6 / queries as f64;
    let hits = found.iter().zip(&exact).filter(|(f, e)| f <= e).count();
    ScalingPoint {
        n,
        clusters,
        build_seconds,
        hnsw_us,
        scan_us,
        brute_force_us,
        recall_at_1: hits as f64 / queries as f64,
    }
}
