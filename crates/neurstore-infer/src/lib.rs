//! Inference straight from the store: a BERT encoder (all-MiniLM-L6-v2 and its fine-tunes)
//! whose linear layers and embedding table compute on compressed weights, the bounded integer
//! codes the store keeps, through `neurstore_core::kernel`, instead of expanded f32 copies.
//!
//! Layering: this crate sits on top of `neurstore` (the store facade) and uses candle for the
//! tensor algebra (attention, layer norms, GELU) and tokenizers for text; only the compressed
//! kernel is ours.
#![deny(missing_docs)]

mod bert;
mod config;
mod error;
mod linear;
mod text;

pub use bert::{Bert, Pooling, resident_from_safetensors};
pub use config::BertConfig;
pub use error::{InferError, Result};
pub use linear::{Linear, Matrix};
pub use text::{Batch, TextEncoder};
