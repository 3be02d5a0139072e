//! Models held in memory for computation rather than expanded: a bounded (quantized) matrix
//! stays as its integer codes over a base matrix that every model derived from it shares.
//!
//! **Invariants:**
//! - one [`BaseMatrix`] per base object per [`SharedBases`], however many models use it;
//! - a resident element differs from what `get` writes by float rounding only (the kernel
//!   computes `base + code·step` in f32, the decoder in f64; see `neurstore_core::kernel`);
//! - with `verify`, every tensor held as codes over a base is first decoded once and checked
//!   against its stored key, as `get` does, so a damaged base reference is never computed on.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use neurstore_core::codec::{Codec, quantized};
use neurstore_core::dtype::DType;
use neurstore_core::kernel::{BaseMatrix, QuantMatrix};
use neurstore_storage::StorageError;
use neurstore_storage::catalog::{ObjectKind, ObjectRow, Queries};
use rayon::prelude::*;

use crate::Store;
use crate::error::Result;

/// How a tensor is held.
pub enum ResidentWeight {
    /// Plain f32 elements (small tensors, lossless ones, and every non-matrix tensor).
    Dense(Vec<f32>),
    /// Integer codes over an optional shared base: computed on without being expanded.
    Quant(Arc<QuantMatrix>),
    /// A tensor that is not floating point (kept as stored bytes).
    Bytes(DType, Vec<u8>),
}

/// One tensor of a resident model.
pub struct ResidentTensor {
    /// Shape as stored.
    pub shape: Vec<u64>,
    /// Its elements.
    pub weight: ResidentWeight,
}

impl ResidentWeight {
    /// A tensor's little-endian element bytes as held for computation: floats widened or
    /// narrowed to f32, anything else kept as bytes.
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> Self {
        match f32_elements(dtype, bytes) {
            Some(v) => ResidentWeight::Dense(v),
            None => ResidentWeight::Bytes(dtype, bytes.to_vec()),
        }
    }
}

impl ResidentTensor {
    /// Bytes this tensor holds on its own (a shared base is not counted).
    pub fn held_bytes(&self) -> usize {
        match &self.weight {
            ResidentWeight::Dense(v) => v.len() * 4,
            ResidentWeight::Quant(q) => q.held_bytes(),
            ResidentWeight::Bytes(_, b) => b.len(),
        }
    }

    /// The elements as f32, expanded (for tests and the dense reference).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        match &self.weight {
            ResidentWeight::Dense(v) => Some(v.clone()),
            ResidentWeight::Quant(q) => Some(q.to_dense()),
            ResidentWeight::Bytes(..) => None,
        }
    }
}

/// A model held in memory, tensors by name.
pub struct ResidentModel {
    /// Model name.
    pub name: String,
    /// Tensors by name (all safetensors files of the model together).
    pub tensors: BTreeMap<String, ResidentTensor>,
}

impl ResidentModel {
    /// Bytes the model holds on its own, shared bases excluded.
    pub fn held_bytes(&self) -> usize {
        self.tensors.values().map(ResidentTensor::held_bytes).sum()
    }
}

/// Decoded base matrices, one per base object, shared by every resident model loaded with it.
#[derive(Default)]
pub struct SharedBases {
    bases: Mutex<HashMap<i64, Arc<BaseMatrix>>>,
}

impl SharedBases {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held by all bases.
    pub fn held_bytes(&self) -> usize {
        self.lock().values().map(|b| b.held_bytes()).sum()
    }

    /// Number of bases held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no base is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<BaseMatrix>>> {
        self.bases.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Options of [`Store::load_resident`].
#[derive(Debug, Clone, Copy)]
pub struct ResidentOptions {
    /// Decode each tensor held over a base once and check it against its stored key
    /// (default true; off, a damaged base reference would go unnoticed).
    pub verify: bool,
}

impl Default for ResidentOptions {
    fn default() -> Self {
        ResidentOptions { verify: true }
    }
}

/// A matrix's (rows, cols) for the kernel: two dimensions, both non-zero.
fn matrix_dims(shape: &[u64]) -> Option<(usize, usize)> {
    match shape {
        [r, c] if *r > 0 && *c > 0 => Some((usize::try_from(*r).ok()?, usize::try_from(*c).ok()?)),
        _ => None,
    }
}

fn f32_elements(dtype: DType, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DType::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        _ => return None,
    })
}

impl Store {
    /// Loads model `name` for computation: bounded F32 matrices stay as codes over a base held
    /// once in `bases`; everything else is decoded (floats to f32).
    pub fn load_resident(
        &self,
        name: &str,
        bases: &SharedBases,
        options: ResidentOptions,
    ) -> Result<ResidentModel> {
        self.with_retry(|| {
            let snap = self.snapshot(name)?;
            self.check_headers(&snap)?;
            let view_files = self.view_files(&snap)?;
            let viewed: std::collections::HashSet<&str> =
                view_files.iter().map(|f| f.path.as_str()).collect();
            let mut tensors = snap
                .tensors
                .par_iter()
                .filter(|t| !viewed.contains(t.path.as_str()))
                .map(|t| {
                    let what = format!("model {name:?} tensor {:?}", t.name);
                    let tensor = self.resident_tensor(&t.object, bases, options, &what)?;
                    Ok((t.name.clone(), tensor))
                })
                .collect::<Result<BTreeMap<_, _>>>()?;
            // PyTorch views (tied weights, slices): decoded and made contiguous.
            for file in &view_files {
                for (view, bytes) in self.materialize_views(&snap, file)? {
                    let dtype = view.element.storage_dtype();
                    tensors.insert(
                        view.name,
                        ResidentTensor {
                            shape: view.shape,
                            weight: ResidentWeight::from_bytes(dtype, &bytes),
                        },
                    );
                }
            }
            Ok(ResidentModel {
                name: name.to_string(),
                tensors,
            })
        })
    }

    /// The bytes of plain file `path` (say "tokenizer.json") of a model imported from a
    /// directory (a model file stored as skeleton and tensors comes back whole); `None` when
    /// the model has no such file.
    pub fn model_file(&self, name: &str, path: &str) -> Result<Option<Vec<u8>>> {
        self.with_retry(|| {
            let snap = self.snapshot(name)?;
            let Some(file) = snap.files.iter().find(|f| f.path == path) else {
                return Ok(None);
            };
            if crate::containers::container_files(&snap).any(|f| f.path == path) {
                return Ok(Some(self.container_bytes(&snap, file)?));
            }
            let what = format!("model {name:?} file {path:?}");
            Ok(Some(self.decode_object(&file.object, &what)?.to_vec()))
        })
    }

    fn resident_tensor(
        &self,
        object: &ObjectRow,
        bases: &SharedBases,
        options: ResidentOptions,
        what: &str,
    ) -> Result<ResidentTensor> {
        let ObjectKind::Tensor { dtype } = object.kind else {
            return Err(StorageError::corrupt(what, "object is not a tensor").into());
        };
        let shape = object.shape.clone();
        if let (Codec::Quantized, DType::F32, Some((rows, cols))) =
            (object.codec, dtype, matrix_dims(&shape))
        {
            let base = match object.base {
                Some(id) => Some(self.shared_base(id, rows, cols, bases, what)?),
                None => None,
            };
            if options.verify && base.is_some() {
                // Decoding checks the result against the object's key; the bytes are dropped.
                self.decode_object(object, what)?;
            }
            let matrix = self.quant_matrix(object, rows, cols, base, what)?;
            return Ok(ResidentTensor {
                shape,
                weight: ResidentWeight::Quant(Arc::new(matrix)),
            });
        }
        let data = self.decode_object(object, what)?;
        Ok(ResidentTensor {
            shape,
            weight: ResidentWeight::from_bytes(dtype, &data),
        })
    }

    /// A quantized object as a kernel matrix over `base` (its reconstructed base).
    fn quant_matrix(
        &self,
        object: &ObjectRow,
        rows: usize,
        cols: usize,
        base: Option<Arc<BaseMatrix>>,
        what: &str,
    ) -> Result<QuantMatrix> {
        let stored = self.engine.read_blob(object, what)?;
        let raw_len = usize::try_from(object.raw_len)
            .map_err(|_| StorageError::corrupt(what, "tensor too large for this machine"))?;
        let codes = quantized::decode_codes(DType::F32, &stored, raw_len)
            .map_err(|e| StorageError::corrupt(what, format!("cannot decode: {e}")))?;
        if codes.has_base != base.is_some() {
            return Err(
                StorageError::corrupt(what, "base presence disagrees with the blob").into(),
            );
        }
        let exceptions: Vec<(usize, f32)> = codes
            .exceptions
            .iter()
            .map(|&(i, v)| (i, v as f32))
            .collect();
        QuantMatrix::new(rows, cols, codes.step, &codes.codes, &exceptions, base)
            .map_err(|e| StorageError::corrupt(what, format!("cannot hold as codes: {e}")).into())
    }

    /// The base object `id` as a shared matrix: codes when it is itself a standalone bounded
    /// F32 matrix, decoded f32 otherwise.
    fn shared_base(
        &self,
        id: i64,
        rows: usize,
        cols: usize,
        bases: &SharedBases,
        what: &str,
    ) -> Result<Arc<BaseMatrix>> {
        if let Some(hit) = bases.lock().get(&id) {
            return Ok(hit.clone());
        }
        let what = format!("{what} (base object {id})");
        let object = self
            .engine
            .read(|q| q.object(id))?
            .ok_or_else(|| StorageError::corrupt(&what, format!("base object {id} is missing")))?;
        if object.shape.iter().product::<u64>() != (rows as u64) * (cols as u64) {
            return Err(
                StorageError::corrupt(&what, "base shape differs from the tensor's").into(),
            );
        }
        let matrix = match (object.kind, object.codec, object.base) {
            (ObjectKind::Tensor { dtype: DType::F32 }, Codec::Quantized, None) => {
                BaseMatrix::Quant(self.quant_matrix(&object, rows, cols, None, &what)?)
            }
            (ObjectKind::Tensor { dtype: DType::F32 }, ..) => {
                // Through the store's base cache: verifying the models over this base then
                // finds it decoded instead of decoding it again.
                let data = self.base_bytes(id, &what, 1)?;
                BaseMatrix::Dense(f32_elements(DType::F32, &data).unwrap_or_default())
            }
            _ => return Err(StorageError::corrupt(&what, "base is not an F32 tensor").into()),
        };
        // Two loads racing on one base keep the first one stored: every model shares it.
        Ok(bases
            .lock()
            .entry(id)
            .or_insert_with(|| Arc::new(matrix))
            .clone())
    }
}
