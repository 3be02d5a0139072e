//! Content keys (what exact dedup compares) and checksums (what every read verifies).

use crate::dtype::DType;

/// A 32-byte BLAKE3 digest.
pub type Digest = [u8; 32];

/// Key of a tensor's content: equal dtype, shape and bytes give equal keys, whatever the name.
pub fn tensor_key(dtype: DType, shape: &[u64], raw: &[u8]) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"neurstore/tensor/v1\0");
    h.update(dtype.as_str().as_bytes());
    h.update(&(shape.len() as u64).to_le_bytes());
    for d in shape {
        h.update(&d.to_le_bytes());
    }
    hash_large(&mut h, raw);
    *h.finalize().as_bytes()
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
}
