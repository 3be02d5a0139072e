//! The NeurStore paper's storage rule, re-implemented here as a baseline (benchmark code only;
//! nothing in the store uses it). Every byte is counted, bases included.
//!
//! - A *base* tensor is stored as 8-bit per-tensor codes (scale and zero point from min/max)
//!   plus a "self-delta": the residual quantized with step `2·tol` at a fixed width of
//!   `b = clamp(ceil(log2(range/(2·tol))), 1, 32)` bits, bit-packed.
//! - A later tensor is paired by name with the stored bases (the first model's tensors, plus any
//!   promoted since; the nearest by squared L2 when there are several): the best case for the
//!   paper, whose own index search can only do worse. `Δ = T − B̂` with `B̂` the base as
//!   reconstructed, coded with step `2·tol` at `b` bits (same formula), one scale and zero point
//!   per tensor, bit-packed, no entropy coding.
//! - Base or delta: `standard = ceil(log2(0.16/tol))`; `b ≤ standard` stores the delta;
//!   otherwise the tensor becomes a new base with probability `1 − exp(−(b − standard))`, drawn
//!   from a seeded generator, and is stored as a delta when the draw says no.
//! - 16 bytes of header per stored stream (a base has two: codes and self-delta); the model's
//!   safetensors header is stored as is; tensors other than finite F32 are stored raw.
//!
//! The formula undercounts by one where `range/step` lies in `(2^b − 1, 2^b]`: codes run from 0
//! to `round(range/step)`, which then needs `b + 1` bits. The baseline stores such a stream one
//! bit wider so that the bound holds (its headline size), and also reports the size at the
//! formula's widths (`stored_bytes_formula`, the bound broken at the clamped extremes). The rule
//! compares the formula's `b` with `standard`, as published.

use std::collections::HashMap;

use anyhow::{Context, Result};
use neurstore_core::dtype::DType;
use neurstore_core::safetensors;
use serde::Serialize;

/// Bytes of header per stored stream (scale, zero point, width, length).
const STREAM_HEADER: u64 = 16;

/// SplitMix64: a fixed, version-independent sequence for a given seed (the point of a seeded
/// baseline is that it can be rerun exactly, which a library generator does not promise across
/// versions).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.next_f64();
        let v = self.next_f64();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// What the baseline stored for a family.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PaperStats {
    /// Tensor bytes of every model added.
    pub raw_bytes: u64,
    /// Every byte the baseline stores: headers, bases (codes + self-deltas), deltas, raw tensors.
    pub stored_bytes: u64,
    /// The same at exactly the formula's widths (codes that do not fit would be clamped).
    pub stored_bytes_formula: u64,
    /// Of which base tensors (8-bit codes + self-delta + headers).
    pub base_bytes: u64,
    /// Tensors stored as bases (first model, new names, promotions).
    pub base_tensors: u64,
    /// Of which promoted by the random rule.
    pub promoted: u64,
    /// Tensors stored as deltas.
    pub delta_tensors: u64,
    /// Of which with `b > standard` (kept as a delta because the draw said no).
    pub deltas_over_standard: u64,
    /// Tensors stored raw (non-float or non-finite).
    pub raw_tensors: u64,
    /// Streams where the formula's width was one bit short of the top code.
    pub widened_streams: u64,
    /// Mean bits per element of the deltas.
    pub mean_delta_bits: f64,
    /// Largest |original − reconstruction| of any element.
    pub max_error: f64,
    #[serde(skip)]
    delta_bits_elements: (f64, f64),
}

struct Base {
    shape: Vec<u64>,
    values: Vec<f32>,
}

/// The paper's store, simulated: feed it a family's models in order.
pub struct PaperStore {
    tol: f64,
    standard: u32,
    rng: SplitMix64,
    bases: HashMap<String, Vec<Base>>,
    stats: PaperStats,
}

/// The paper's width formula: `clamp(ceil(log2(range/step)), 1, 32)`.
pub fn formula_bits(range: f64, step: f64) -> u32 {
    let x = (range / step).log2().ceil();
    if x.is_nan() || x < 1.0 {
        1
    } else {
        x.min(32.0) as u32
    }
}

fn packed_len(n: usize, bits: u32) -> u64 {
    (n as u64 * bits as u64).div_ceil(8)
}

/// Bit widths of one fixed-width stream.
#[derive(Debug, Clone, Copy)]
struct Widths {
    /// The paper's formula.
    formula: u32,
    /// What the top code needs, at least the formula (stored at this width).
    used: u32,
}

/// Fixed-width uniform quantization of `residual(i)` (i < n) with `step`; returns the widths and
/// writes `offset(i) + dequantized residual(i)` to `out` as f32.
fn fixed_width(
    n: usize,
    step: f64,
    residual: impl Fn(usize) -> f64,
    offset: impl Fn(usize) -> f64,
    out: &mut [f32],
) -> Widths {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for i in 0..n {
        let r = residual(i);
        lo = lo.min(r);
        hi = hi.max(r);
    }
    if n == 0 {
        return Widths {
            formula: 1,
            used: 1,
        };
    }
    let bits = formula_bits(hi - lo, step);
    let mut max_code = 0u64;
    for (i, slot) in out.iter_mut().enumerate().take(n) {
        let q = ((residual(i) - lo) / step).round();
        max_code = max_code.max(q as u64);
        *slot = (offset(i) + lo + q * step) as f32;
    }
    let needed = 64 - max_code.leading_zeros();
    Widths {
        formula: bits,
        used: bits.max(needed),
    }
}

impl PaperStore {
    /// An empty store at absolute tolerance `tol`, drawing promotions from `seed`.
    pub fn new(tol: f64, seed: u64) -> Self {
        PaperStore {
            tol,
            standard: (0.16 / tol).log2().ceil() as u32,
            rng: SplitMix64::new(seed),
            bases: HashMap::new(),
            stats: PaperStats::default(),
        }
    }

    /// What has been stored so far.
    pub fn stats(&self) -> PaperStats {
        let mut s = self.stats.clone();
        let (bits, elements) = s.delta_bits_elements;
        s.mean_delta_bits = if elements > 0.0 { bits / elements } else { 0.0 };
        s
    }

    fn store_base(&mut self, name: &str, shape: &[u64], x: &[f32]) -> Vec<f32> {
        let n = x.len();
        let (lo, hi) = x
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
                (l.min(v as f64), h.max(v as f64))
            });
        let scale = if hi > lo { (hi - lo) / 255.0 } else { 0.0 };
        let deq8 = |i: usize| -> f64 {
            if scale == 0.0 {
                lo
            } else {
                lo + ((x[i] as f64 - lo) / scale).round().clamp(0.0, 255.0) * scale
            }
        };
        let mut recon = vec![0f32; n];
        let w = fixed_width(
            n,
            2.0 * self.tol,
            |i| x[i] as f64 - deq8(i),
            deq8,
            &mut recon,
        );
        let bytes = 2 * STREAM_HEADER + n as u64 + packed_len(n, w.used);
        self.stats.stored_bytes += bytes;
        self.stats.stored_bytes_formula += 2 * STREAM_HEADER + n as u64 + packed_len(n, w.formula);
        self.stats.base_bytes += bytes;
        self.stats.base_tensors += 1;
        self.stats.widened_streams += (w.used > w.formula) as u64;
        self.bases.entry(name.to_string()).or_default().push(Base {
            shape: shape.to_vec(),
            values: recon.clone(),
        });
        recon
    }

    fn float_tensor(&mut self, first: bool, name: &str, shape: &[u64], x: &[f32]) -> Vec<f32> {
        let step = 2.0 * self.tol;
        let list = self.bases.get(name).filter(|_| !first);
        let nearest = list.and_then(|list| {
            list.iter()
                .filter(|b| b.shape == shape)
                .map(|b| {
                    let d: f64 = b
                        .values
                        .iter()
                        .zip(x)
                        .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
                        .sum();
                    (d, b)
                })
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, b)| b)
        });
        let Some(base) = nearest else {
            return self.store_base(name, shape, x);
        };
        let base = &base.values;
        let mut recon = vec![0f32; x.len()];
        let w = fixed_width(
            x.len(),
            step,
            |i| x[i] as f64 - base[i] as f64,
            |i| base[i] as f64,
            &mut recon,
        );
        if w.formula > self.standard {
            let p = 1.0 - (-((w.formula - self.standard) as f64)).exp();
            if self.rng.next_f64() < p {
                self.stats.promoted += 1;
                return self.store_base(name, shape, x);
            }
            self.stats.deltas_over_standard += 1;
        }
        self.stats.widened_streams += (w.used > w.formula) as u64;
        self.stats.delta_tensors += 1;
        self.stats.stored_bytes += STREAM_HEADER + packed_len(x.len(), w.used);
        self.stats.stored_bytes_formula += STREAM_HEADER + packed_len(x.len(), w.formula);
        self.stats.delta_bits_elements.0 += w.used as f64 * x.len() as f64;
        self.stats.delta_bits_elements.1 += x.len() as f64;
        recon
    }

    /// Adds one model (a safetensors file's bytes); `first` marks the family's first model (all
    /// its float tensors become bases). Returns the reconstruction as a safetensors file when
    /// `reconstruct` is set.
    pub fn add(&mut self, file: &[u8], first: bool, reconstruct: bool) -> Result<Option<Vec<u8>>> {
        let header = safetensors::parse(file).context("parsing a model for the paper baseline")?;
        let data = &file[header.data_start as usize..];
        self.stats.stored_bytes += header.data_start;
        self.stats.stored_bytes_formula += header.data_start;
        let mut layout = Vec::new();
        let mut out_data: Vec<u8> = Vec::new();
        for t in &header.tensors {
            let raw = &data[t.start as usize..t.end as usize];
            self.stats.raw_bytes += raw.len() as u64;
            let values: Option<Vec<f32>> = (t.dtype == DType::F32)
                .then(|| {
                    raw.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                        .collect::<Vec<f32>>()
                })
                .filter(|v| v.iter().all(|x| x.is_finite()));
            match values {
                Some(x) => {
                    let recon = self.float_tensor(first, &t.name, &t.shape, &x);
                    let err = x
                        .iter()
                        .zip(&recon)
                        .map(|(&a, &b)| (a as f64 - b as f64).abs())
                        .fold(0.0, f64::max);
                    self.stats.max_error = self.stats.max_error.max(err);
                    if reconstruct {
                        out_data.extend(recon.iter().flat_map(|v| v.to_le_bytes()));
                    }
                }
                None => {
                    self.stats.raw_tensors += 1;
                    self.stats.stored_bytes += STREAM_HEADER + raw.len() as u64;
                    self.stats.stored_bytes_formula += STREAM_HEADER + raw.len() as u64;
                    if reconstruct {
                        out_data.extend_from_slice(raw);
                    }
                }
            }
            layout.push((t.name.clone(), t.dtype, t.shape.clone()));
        }
        if !reconstruct {
            return Ok(None);
        }
        let (json, _) = safetensors::build_header(&layout, header.metadata.as_ref())
            .context("building the reconstruction's header")?;
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&json);
        out.extend_from_slice(&out_data);
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tensors: &[(&str, Vec<f32>)]) -> Vec<u8> {
        let layout: Vec<(String, DType, Vec<u64>)> = tensors
            .iter()
            .map(|(n, v)| (n.to_string(), DType::F32, vec![v.len() as u64]))
            .collect();
        let (json, _) = safetensors::build_header(&layout, None).unwrap();
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&json);
        for (_, v) in tensors {
            out.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        }
        out
    }

    #[test]
    fn widths_follow_the_formula() {
        assert_eq!(formula_bits(0.0, 2e-4), 1);
        assert_eq!(formula_bits(1.0, 2e-4), 13);
        assert_eq!(formula_bits(1e9, 1e-9), 32);
    }

    #[test]
    fn streams_widen_when_the_top_code_overflows_the_formula() {
        // range/step = 1.6: the formula says 1 bit, codes 0..=2 need 2.
        let x = [0.0f32, 1.6e-3 * 0.5, 1.6e-3];
        let mut out = [0f32; 3];
        let w = fixed_width(3, 1e-3, |i| x[i] as f64, |_| 0.0, &mut out);
        assert_eq!((w.formula, w.used), (1, 2));
        assert!(
            out.iter()
                .zip(&x)
                .all(|(a, b)| (a - b).abs() <= 5e-4 + 1e-9)
        );
    }

    #[test]
    fn bases_and_deltas_stay_within_the_bound() {
        let tol = 1e-4;
        let mut rng = SplitMix64::new(1);
        let base: Vec<f32> = (0..10_000).map(|_| (rng.normal() * 0.05) as f32).collect();
        let tuned: Vec<f32> = base
            .iter()
            .map(|&x| x + (rng.normal() * 3e-4) as f32)
            .collect();
        let mut store = PaperStore::new(tol, 7);
        let r0 = store
            .add(&file(&[("w", base.clone())]), true, true)
            .unwrap();
        let r1 = store
            .add(&file(&[("w", tuned.clone())]), false, true)
            .unwrap();
        let s = store.stats();
        assert_eq!((s.base_tensors, s.delta_tensors), (1, 1));
        assert!(s.max_error <= tol * 1.001, "{}", s.max_error);
        // Delta of ~±4σ at step 2e-4 needs ~3-4 bits, far below the 8 + self-delta of the base.
        assert!(s.mean_delta_bits <= 5.0, "{}", s.mean_delta_bits);
        for (r, orig) in [(r0, &base), (r1, &tuned)] {
            let r = r.unwrap();
            let h = safetensors::parse(&r).unwrap();
            let vals: Vec<f32> = r[h.data_start as usize..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let err = vals
                .iter()
                .zip(orig.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(err as f64 <= tol * 1.001);
        }
    }
}
