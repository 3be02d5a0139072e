//! Tensor sketches: a fixed-size, deterministic sample of a float tensor's values, the vectors
//! the similarity index is built on. Tensors are compared only within a bucket of equal dtype and
//! element count, so the sampled positions line up across tensors.
//!
//! A sketch is computed in f32 and stored compactly as a [`Packed`] sketch: one byte per value
//! over the sketch's own range (an f32 offset and step), 136 bytes instead of 512. The index
//! holds the packed form and compares queries in f32 against its dequantized values.

use crate::dtype::DType;

/// Values per sketch.
pub const SKETCH_DIM: usize = 128;

/// Bytes of a packed sketch: f32 offset, f32 step, then one code byte per value.
pub const PACKED_LEN: usize = 8 + SKETCH_DIM;

/// Fewest elements a tensor needs to be sketched, indexed and searched for a base. Below it a
/// delta practically never passes the writer's margin (docs/benchmarks.md, "Sketch and index
/// footprint", has the measurement), so a sketch there would only cost catalog bytes.
pub const MIN_ELEMENTS: u64 = 512;

/// True for dtypes that take part in similarity search (the bounded-mode float types).
pub fn indexable(dtype: DType) -> bool {
    crate::codec::quantized::supports(dtype)
}

/// True when a tensor of `dtype` with `elements` elements is sketched and searched for a base.
pub fn worth_sketching(dtype: DType, elements: u64) -> bool {
    indexable(dtype) && elements >= MIN_ELEMENTS
}

/// Position of sample `j` in a tensor of `n` elements (`n ≥ SKETCH_DIM`): the middle of the
/// `j`-th of `SKETCH_DIM` equal strides.
fn position(j: usize, n: usize) -> usize {
    (((2 * j + 1) as u128 * n as u128) / (2 * SKETCH_DIM) as u128) as usize
}

/// The sketch of a float tensor, or `None` for dtypes that are not indexed. Non-finite values
/// are sketched as 0; tensors shorter than the sketch are zero padded.
pub fn sketch(dtype: DType, raw: &[u8]) -> Option<Vec<f32>> {
    if !indexable(dtype) {
        return None;
    }
    let size = (dtype.bits() / 8) as usize;
    let n = raw.len() / size;
    let value = |i: usize| -> f32 {
        let b = &raw[i * size..(i + 1) * size];
        let v = match dtype {
            DType::F32 => f32::from_le_bytes(b.try_into().unwrap()),
            DType::F64 => f64::from_le_bytes(b.try_into().unwrap()) as f32,
            DType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            _ => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        };
        if v.is_finite() { v } else { 0.0 }
    };
    let out = if n >= SKETCH_DIM {
        (0..SKETCH_DIM).map(|j| value(position(j, n))).collect()
    } else {
        (0..SKETCH_DIM)
            .map(|j| if j < n { value(j) } else { 0.0 })
            .collect()
    };
    Some(out)
}

/// Squared Euclidean distance over the common length. Summed in eight interleaved partial sums
/// (a fixed order, so the result is the same everywhere), which the compiler vectorizes.
pub fn distance(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// A sketch quantized to one byte per value: value `j` is `offset + code[j] · step` in f32.
/// `offset` is the sketch's minimum and `step` its range over 255, so the codes span the range
/// exactly and the error per value is at most `step / 2`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Packed([u8; PACKED_LEN]);

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packed")
            .field("offset", &self.offset())
            .field("step", &self.step())
            .finish_non_exhaustive()
    }
}

impl Packed {
    /// Quantizes a sketch of `SKETCH_DIM` values; non-finite values count as 0 (as in
    /// [`sketch`]), and a range too wide for f32 is clamped, so any input packs.
    pub fn quantize(values: &[f32]) -> Packed {
        let finite = |v: f32| if v.is_finite() { v } else { 0.0 };
        let vals: Vec<f32> = (0..SKETCH_DIM)
            .map(|j| finite(values.get(j).copied().unwrap_or(0.0)))
            .collect();
        let min = vals.iter().copied().fold(f32::INFINITY, f32::min);
        let max = vals.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // Computed in f64: max - min may overflow f32 (it never does in f64).
        let step64 = (max as f64 - min as f64) / 255.0;
        let step = step64 as f32;
        let mut out = [0u8; PACKED_LEN];
        out[..4].copy_from_slice(&min.to_le_bytes());
        out[4..8].copy_from_slice(&step.to_le_bytes());
        if step > 0.0 {
            for (c, &v) in out[8..].iter_mut().zip(&vals) {
                *c = ((v as f64 - min as f64) / step64).round().clamp(0.0, 255.0) as u8;
            }
        }
        Packed(out)
    }

    /// A packed sketch from its stored bytes; `None` unless exactly [`PACKED_LEN`] bytes whose
    /// offset is finite and whose step is finite and not negative.
    pub fn from_bytes(b: &[u8]) -> Option<Packed> {
        let bytes: [u8; PACKED_LEN] = b.try_into().ok()?;
        let p = Packed(bytes);
        let (offset, step) = (p.offset(), p.step());
        (offset.is_finite() && step.is_finite() && step >= 0.0).then_some(p)
    }

    /// The stored bytes.
    pub fn as_bytes(&self) -> &[u8; PACKED_LEN] {
        &self.0
    }

    fn offset(&self) -> f32 {
        f32::from_le_bytes(self.0[..4].try_into().unwrap())
    }

    fn step(&self) -> f32 {
        f32::from_le_bytes(self.0[4..8].try_into().unwrap())
    }

    /// The dequantized values: `offset + code · step` computed in f64 and clamped to the f32
    /// range, so they are always finite.
    pub fn values(&self) -> Vec<f32> {
        let (offset, step) = (self.offset() as f64, self.step() as f64);
        self.0[8..]
            .iter()
            .map(|&c| (offset + c as f64 * step).clamp(f32::MIN as f64, f32::MAX as f64) as f32)
            .collect()
    }
}

/// A sketch as 128 little-endian f32 values (the stored form before schema 3).
pub fn from_f32_bytes(b: &[u8]) -> Option<Vec<f32>> {
    if b.len() != SKETCH_DIM * 4 {
        return None;
    }
    let v: Vec<f32> = b
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    v.iter().all(|x| x.is_finite()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f32_bytes(values: impl Iterator<Item = f32>) -> Vec<u8> {
        values.flat_map(f32::to_le_bytes).collect()
    }

    #[test]
    fn close_tensors_have_close_sketches() {
        let a = f32_bytes((0..10_000).map(|i| ((i as f32) * 0.3).sin()));
        let b = f32_bytes((0..10_000).map(|i| ((i as f32) * 0.3).sin() + 1e-3));
        let c = f32_bytes((0..10_000).map(|i| ((i as f32) * 0.7).cos()));
        let (sa, sb, sc) = (
            sketch(DType::F32, &a).unwrap(),
            sketch(DType::F32, &b).unwrap(),
            sketch(DType::F32, &c).unwrap(),
        );
        assert!(distance(&sa, &sb) < distance(&sa, &sc) / 100.0);
        assert!(sketch(DType::I32, &a).is_none());
        assert_eq!(sketch(DType::F32, &a[..8]).unwrap().len(), SKETCH_DIM);
    }

    #[test]
    fn worth_sketching_needs_a_float_dtype_and_enough_elements() {
        assert!(worth_sketching(DType::F32, MIN_ELEMENTS));
        assert!(!worth_sketching(DType::F32, MIN_ELEMENTS - 1));
        assert!(!worth_sketching(DType::I32, MIN_ELEMENTS * 10));
    }

    /// A deterministic N(0, 1)-ish generator (sum of uniforms).
    fn normals(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        move || {
            let mut sum = 0.0f32;
            for _ in 0..12 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                sum += (s >> 40) as f32 / (1u64 << 24) as f32;
            }
            sum - 6.0
        }
    }

    /// Clustered sketches as the index sees them (a base and its fine-tunes at 1% noise, many
    /// bases): the nearest packed sketch to a query is the nearest f32 sketch, for every query.
    #[test]
    fn packing_preserves_the_nearest_neighbour_on_clustered_data() {
        let mut rng = normals(11);
        let scale = 0.05f32; // a weight matrix's spread
        let mut stored: Vec<Vec<f32>> = Vec::new();
        for _ in 0..40 {
            let centre: Vec<f32> = (0..SKETCH_DIM).map(|_| scale * rng()).collect();
            for _ in 0..5 {
                stored.push(centre.iter().map(|&c| c + 0.01 * scale * rng()).collect());
            }
        }
        let packed: Vec<Vec<f32>> = stored
            .iter()
            .map(|s| Packed::quantize(s).values())
            .collect();
        let nearest = |set: &[Vec<f32>], q: &[f32]| {
            (0..set.len())
                .min_by(|&a, &b| distance(q, &set[a]).total_cmp(&distance(q, &set[b])))
                .unwrap()
        };
        for (i, s) in stored.iter().enumerate() {
            let q: Vec<f32> = s.iter().map(|&v| v + 0.001 * scale * rng()).collect();
            assert_eq!(nearest(&stored, &q), i);
            assert_eq!(nearest(&packed, &q), i, "query near sketch {i}");
        }
    }

    #[test]
    fn packed_round_trips_and_bounds_the_error() {
        let mut rng = normals(3);
        let s: Vec<f32> = (0..SKETCH_DIM).map(|_| rng()).collect();
        let p = Packed::quantize(&s);
        assert_eq!(Packed::from_bytes(p.as_bytes()), Some(p));
        let step = p.step();
        for (a, b) in s.iter().zip(p.values()) {
            assert!((a - b).abs() <= step * 0.5001 + 1e-7, "{a} vs {b}");
        }
        let constant = Packed::quantize(&[0.25; SKETCH_DIM]);
        assert_eq!(constant.values(), vec![0.25; SKETCH_DIM]);
        assert!(Packed::from_bytes(&p.as_bytes()[..PACKED_LEN - 1]).is_none());
        let mut negative = *p.as_bytes();
        negative[4..8].copy_from_slice(&(-1.0f32).to_le_bytes());
        assert!(Packed::from_bytes(&negative).is_none());
    }

    #[test]
    fn f32_form_parses_strictly() {
        let s: Vec<f32> = (0..SKETCH_DIM).map(|j| j as f32).collect();
        assert_eq!(from_f32_bytes(&f32_bytes(s.iter().copied())), Some(s));
        assert!(from_f32_bytes(&[0u8; 12]).is_none());
        assert!(from_f32_bytes(&f32_bytes((0..SKETCH_DIM).map(|_| f32::NAN))).is_none());
    }

    proptest! {
        #[test]
        fn any_values_pack_into_a_valid_sketch(
            values in proptest::collection::vec(any::<f32>(), SKETCH_DIM)
        ) {
            let p = Packed::quantize(&values);
            prop_assert_eq!(Packed::from_bytes(p.as_bytes()), Some(p));
            prop_assert!(p.values().iter().all(|v| v.is_finite()));
        }

        #[test]
        fn parser_is_total(bytes in proptest::collection::vec(any::<u8>(), PACKED_LEN)) {
            if let Some(p) = Packed::from_bytes(&bytes) {
                prop_assert!(p.values().iter().all(|v| v.is_finite()));
            }
        }
    }
}
