//! Helpers shared by the integration tests: safetensors files built in memory and deterministic
//! pseudo-random bytes.
#![allow(dead_code)] // each test file uses a part

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
    let spec: Vec<(String, DType, Vec<u64>)> = tensors
        .iter()
        .map(|(n, d, s, _)| (n.as_ref().to_string(), *d, s.clone()))
        .collect();
    let (json, infos) = build_header(&spec, metadata).expect("valid test header");
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    for ((name, _, _, data), info) in tensors.iter().zip(&infos) {
        assert_eq!(
            data.len() as u64,
            info.byte_len(),
            "test tensor {}",
            name.as_ref()
        );
        out.extend_from_slice(data);
    }
    out
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
