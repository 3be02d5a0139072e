//! Pure building blocks of NeurStore: tensor element types, the strict safetensors parser and
//! writer, lossless codecs, and content keys.
//!
//! **Invariant:** nothing in this crate performs I/O; every function maps bytes to bytes.
//!
//! ```
//! use neurstore_core::{codec, dtype::DType};
//! let raw: Vec<u8> = (0..4096u32).flat_map(|i| (i as f32 * 1e-3).to_le_bytes()).collect();
//! let enc = codec::encode_tensor(DType::F32, &raw);
//! let stored = enc.bytes.as_deref().unwrap_or(&raw);
//! let mut back = vec![0u8; raw.len()];
//! codec::decode_into(enc.codec, stored, &mut back).unwrap();
//! assert_eq!(back, raw);
//! ```
#![deny(missing_docs)]

pub mod codec;
pub mod dtype;
pub mod hnsw;
pub mod kernel;
pub mod key;
pub mod safetensors;
pub mod sketch;
