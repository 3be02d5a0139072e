//! Helpers shared by the integration tests: safetensors files built in memory, deterministic
//! pseudo-random numbers and bytes, float element conversion.
#![allow(dead_code)] // each test file uses a part

pub mod pg;

use std::collections::BTreeMap;

use neurstore_core::dtype::DType;
use neurstore_core::safetensors::build_header;

/// A tensor to write: name, dtype, shape, raw bytes.
pub type Tensor = (String, DType, Vec<u64>, Vec<u8>);

/// A safetensors file with a canonical header (via `build_header`) and the tensors back to back.
pub fn safetensors_file<N: AsRef<str>>(
    tensors: &[(N, DType, Vec<u64>, Vec<u8>)],
    metadata: Option<&BTreeMap<String, String>>,
) -> Vec<u8> {
    let parts = tensors
        .iter()
        .map(|(n, d, s, data)| (n.as_ref(), *d, &s[..], &data[..]));
    safetensors_from(parts, metadata)
}

/// The same from borrowed parts: (name, dtype, shape, bytes) of each tensor, in file order.
pub fn safetensors_from<'a>(
    tensors: impl IntoIterator<Item = (&'a str, DType, &'a [u64], &'a [u8])>,
    metadata: Option<&BTreeMap<String, String>>,
) -> Vec<u8> {
    let tensors: Vec<_> = tensors.into_iter().collect();
    let spec: Vec<(String, DType, Vec<u64>)> = tensors
        .iter()
        .map(|(n, d, s, _)| (n.to_string(), *d, s.to_vec()))
        .collect();
    let (json, infos) = build_header(&spec, metadata).expect("valid test header");
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    for ((name, _, _, data), info) in tensors.iter().zip(&infos) {
        assert_eq!(data.len() as u64, info.byte_len(), "test tensor {name}");
        out.extend_from_slice(data);
    }
    out
}

/// Deterministic pseudo-random numbers (xorshift64).
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Approximately standard normal (sum of 12 uniforms, minus 6).
    pub fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
    }
}

/// The float dtypes test models use.
pub fn is_float(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F64 | DType::BF16)
}

pub fn elem_size(dtype: DType) -> usize {
    (dtype.bits() / 8) as usize
}

/// One element's bytes as f64 (the float dtypes of `is_float` only).
pub fn element_value(dtype: DType, b: &[u8]) -> f64 {
    match dtype {
        DType::F32 => f32::from_le_bytes(b.try_into().unwrap()) as f64,
        DType::F64 => f64::from_le_bytes(b.try_into().unwrap()),
        DType::BF16 => f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16) as f64,
        other => panic!("{other} is not a float dtype of the test models"),
    }
}

/// `v` rounded to `dtype` (nearest, ties to even), as little-endian bytes.
pub fn encode_element(dtype: DType, v: f64) -> Vec<u8> {
    match dtype {
        DType::F32 => (v as f32).to_le_bytes().to_vec(),
        DType::F64 => v.to_le_bytes().to_vec(),
        DType::BF16 => {
            let bits = (v as f32).to_bits();
            let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1));
            ((rounded >> 16) as u16).to_le_bytes().to_vec()
        }
        other => panic!("{other} is not a float dtype of the test models"),
    }
}

/// A safetensors file with a header written by hand.
pub fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Deterministic pseudo-random bytes (xorshift64): incompressible, so stored raw.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
