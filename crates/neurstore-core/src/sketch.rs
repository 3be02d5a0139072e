//! Tensor sketches: a fixed-size, deterministic sample of a float tensor's values, the vectors
//! the similarity index is built on. Tensors are compared only within a bucket of equal dtype and
//! element count, so the sampled positions line up across tensors.

use crate::dtype::DType;

/// Values per sketch.
pub const SKETCH_DIM: usize = 128;

/// True for dtypes that take part in similarity search (the bounded-mode float types).
pub fn indexable(dtype: DType) -> bool {
    crate::codec::quantized::supports(dtype)
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

/// Squared Euclidean distance.
pub fn distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Sketch as little-endian bytes (catalog storage).
pub fn to_bytes(s: &[f32]) -> Vec<u8> {
    s.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Sketch from little-endian bytes; `None` unless exactly `SKETCH_DIM` finite values.
pub fn from_bytes(b: &[u8]) -> Option<Vec<f32>> {
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

    #[test]
    fn close_tensors_have_close_sketches() {
        let a: Vec<u8> = (0..10_000)
            .flat_map(|i| ((i as f32) * 0.3).sin().to_le_bytes())
            .collect();
        let b: Vec<u8> = (0..10_000)
            .flat_map(|i| (((i as f32) * 0.3).sin() + 1e-3).to_le_bytes())
            .collect();
        let c: Vec<u8> = (0..10_000)
            .flat_map(|i| ((i as f32) * 0.7).cos().to_le_bytes())
            .collect();
        let (sa, sb, sc) = (
            sketch(DType::F32, &a).unwrap(),
            sketch(DType::F32, &b).unwrap(),
            sketch(DType::F32, &c).unwrap(),
        );
        assert!(distance(&sa, &sb) < distance(&sa, &sc) / 100.0);
        assert_eq!(from_bytes(&to_bytes(&sa)).unwrap(), sa);
        assert!(sketch(DType::I32, &a).is_none());
        assert_eq!(sketch(DType::F32, &a[..8]).unwrap().len(), SKETCH_DIM);
    }
}
