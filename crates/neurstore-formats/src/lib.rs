//! Model-file formats as containers: a parser splits a file into its skeleton (every byte that is
//! not tensor data) and tensor byte ranges, so the store keeps tensors as tensors (dedup across
//! formats, deltas) and the skeleton as one small object; [`skeleton::reassemble`] gives the
//! original file back byte for byte. Converters write any model's tensors as safetensors or as a
//! PyTorch zip.
//!
//! **Invariant:** nothing in this crate performs I/O or executes file content: parsers read a
//! `&[u8]` (the caller memory-maps the file), check every length against the bytes present
//! before allocating, and a pickle is interpreted, never run.
//!
//! ```
//! use neurstore_formats::{detect, parse, skeleton};
//! let file = neurstore_formats::gguf::build::gguf(&[("w", 0, vec![2], &[0u8; 8])]);
//! let parsed = parse(&file, None).unwrap();
//! let sk = parsed.container.skeleton_bytes(&file).unwrap();
//! let t = &parsed.container.tensors[0];
//! let back = skeleton::reassemble_to_vec(&sk, &[&file[t.start as usize..t.end as usize]]).unwrap();
//! assert_eq!(back, file);
//! assert_eq!(detect(&file, None).unwrap(), neurstore_formats::Format::Gguf);
//! ```
#![deny(missing_docs)]

pub mod container;
pub mod convert;
mod describe;
pub mod detect;
pub mod element;
pub mod error;
pub mod gguf;
pub mod onnx;
pub mod pytorch;
pub mod safetensors;
pub mod skeleton;

pub use container::{Container, Format, Origin, Segment, Tensor, View};
pub use detect::{Parsed, Summary, detect, parse};
pub use element::{ElementType, GgmlType};
pub use error::{Error, Result};
