//! Content keys (what exact dedup compares) and checksums (what every read verifies).

use crate::dtype::DType;

/// A 32-byte BLAKE3 digest.
pub type Digest = [u8; 32];

/// Key of a tensor's content: equal dtype, shape and bytes give equal keys, whatever the name.
pub fn tensor_key(dtype: DType, shape: &[u64], raw: &[u8]) -> Digest {
    let mut h = TensorKeyHasher::new(dtype, shape);
    h.update(raw);
    h.finalize()
}

/// [`tensor_key`] computed incrementally, over the raw bytes fed in order in pieces (a tensor
/// decoded and written block by block).
pub struct TensorKeyHasher(blake3::Hasher);

impl TensorKeyHasher {
    /// Starts the key of a tensor of this dtype and shape.
    pub fn new(dtype: DType, shape: &[u64]) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"neurstore/tensor/v1\0");
        h.update(dtype.as_str().as_bytes());
        h.update(&(shape.len() as u64).to_le_bytes());
        for d in shape {
            h.update(&d.to_le_bytes());
        }
        TensorKeyHasher(h)
    }

    /// Feeds the next raw bytes.
    pub fn update(&mut self, raw: &[u8]) {
        hash_large(&mut self.0, raw);
    }

    /// The key of everything fed.
    pub fn finalize(&self) -> Digest {
        *self.0.finalize().as_bytes()
    }
}

/// Key of a plain file's content (config, tokenizer, safetensors header).
pub fn file_key(raw: &[u8]) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"neurstore/file/v1\0");
    hash_large(&mut h, raw);
    *h.finalize().as_bytes()
}

/// Checksum of a blob's stored bytes, verified on every read.
pub fn checksum(stored: &[u8]) -> Digest {
    let mut h = blake3::Hasher::new();
    hash_large(&mut h, stored);
    *h.finalize().as_bytes()
}

fn hash_large(h: &mut blake3::Hasher, bytes: &[u8]) {
    if bytes.len() >= 1 << 20 {
        h.update_rayon(bytes);
    } else {
        h.update(bytes);
    }
}

/// Lower-case hex of a digest.
pub fn hex(d: &Digest) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_dtype_shape_and_kind() {
        let raw = [0u8; 8];
        let a = tensor_key(DType::F32, &[2], &raw);
        assert_ne!(a, tensor_key(DType::I32, &[2], &raw));
        assert_ne!(a, tensor_key(DType::F32, &[1, 2], &raw));
        assert_ne!(a, file_key(&raw));
        assert_eq!(a, tensor_key(DType::F32, &[2], &raw));
    }

    #[test]
    fn incremental_key_equals_one_shot() {
        let raw: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut h = TensorKeyHasher::new(DType::U8, &[3_000_000]);
        for piece in raw.chunks(1_234_567) {
            h.update(piece);
        }
        assert_eq!(h.finalize(), tensor_key(DType::U8, &[3_000_000], &raw));
    }
}
