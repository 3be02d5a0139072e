//! Choosing how one new tensor or file is stored: the candidates are encoded, the smallest
//! encoding wins (ties go to the simpler one), and the winner is decoded and checked before it
//! may be written: bit-exact for lossless encodings, every element within the bound otherwise.

use neurstore_core::codec::{self, Codec, delta, quantized};
use neurstore_core::dtype::{DType, element_count};
use neurstore_core::key::{Digest, tensor_key};
use neurstore_core::sketch;
use neurstore_storage::StorageError;
use neurstore_storage::catalog::ObjectRow;

use crate::Store;
use crate::error::Result;
use crate::options::Mode;

/// zstd level for deltas and quantized codes.
const LEVEL: i32 = 1;

/// One tensor or file of the input.
pub(crate) struct Item<'a> {
    /// File it belongs to (or is).
    pub file: &'a str,
    /// Tensor name (empty for files).
    pub name: String,
    /// Element type (`None` for files and safetensors headers).
    pub dtype: Option<DType>,
    /// Shape (empty for files).
    pub shape: Vec<u64>,
    /// Its bytes.
    pub raw: &'a [u8],
    /// Key of the exact content.
    pub exact_key: Digest,
    /// Key it is stored under: the exact key, or for a bounded tensor a key of the content and
    /// the bound (a lossy object must never stand in for an exact request).
    pub store_key: Digest,
    /// Absolute error bound for this tensor (`None`: lossless).
    pub tolerance: Option<f64>,
}

impl<'a> Item<'a> {
    pub(crate) fn file(path: &'a str, raw: &'a [u8]) -> Self {
        Item {
            file: path,
            name: String::new(),
            dtype: None,
            shape: vec![],
            raw,
            exact_key: [0; 32],
            store_key: [0; 32],
            tolerance: None,
        }
    }

    pub(crate) fn tensor(
        path: &'a str,
        name: &str,
        dtype: DType,
        shape: Vec<u64>,
        raw: &'a [u8],
    ) -> Self {
        Item {
            name: name.to_string(),
            dtype: Some(dtype),
            shape,
            ..Item::file(path, raw)
        }
    }

    pub(crate) fn elements(&self) -> u64 {
        element_count(&self.shape).unwrap_or(0)
    }

    /// Sets the tolerance and store key from the mode (after `exact_key` is known).
    pub(crate) fn set_mode(&mut self, mode: Mode) {
        self.tolerance = match (mode, self.dtype) {
            (Mode::Absolute(t), Some(d)) if quantized::supports(d) => Some(t),
            (Mode::Relative(r), Some(d)) if quantized::supports(d) => {
                Some(r * quantized::rms(d, self.raw)).filter(|t| t.is_finite() && *t > 0.0)
            }
            _ => None,
        };
        self.store_key = match self.tolerance {
            None => self.exact_key,
            Some(tol) => {
                let mut h = blake3::Hasher::new();
                h.update(b"neurstore/bounded/v1\0");
                h.update(&tol.to_le_bytes());
                h.update(&self.exact_key);
                *h.finalize().as_bytes()
            }
        };
    }
}

/// The base chosen for a delta.
pub(crate) struct BaseRef {
    pub id: i64,
    /// The base's decoded key, sealed in the new object's record.
    pub decoded_key: neurstore_core::key::Digest,
}

/// How a new object will be stored.
pub(crate) struct Plan {
    pub codec: Codec,
    /// Encoded bytes, or `None` to store the raw bytes as they are (or once written).
    pub bytes: Option<Vec<u8>>,
    /// Length of the stored blob.
    pub stored_len: u64,
    pub base: Option<BaseRef>,
    pub chain_depth: u32,
    pub tolerance: Option<f64>,
    pub max_error: f64,
    pub decoded_key: Digest,
    pub sketch: Option<Vec<f32>>,
}

impl Plan {
    pub(crate) fn stored_bytes<'b>(&'b self, raw: &'b [u8]) -> &'b [u8] {
        self.bytes.as_deref().unwrap_or(raw)
    }
}

struct Encoding {
    codec: Codec,
    bytes: Option<Vec<u8>>,
    /// Index into the base list, for deltas.
    base: Option<usize>,
}

impl Encoding {
    fn len(&self, raw: &[u8]) -> usize {
        self.bytes.as_ref().map_or(raw.len(), Vec::len)
    }
}

/// Plans one item against its candidate bases (already filtered by chain depth).
pub(crate) fn plan_item(store: &Store, item: &Item, candidates: &[&ObjectRow]) -> Result<Plan> {
    let Some(dtype) = item.dtype else {
        let enc = codec::encode_file(item.raw);
        return Ok(Plan {
            codec: enc.codec,
            stored_len: enc.bytes.as_ref().map_or(item.raw.len(), Vec::len) as u64,
            bytes: enc.bytes,
            base: None,
            chain_depth: 0,
            tolerance: None,
            max_error: 0.0,
            decoded_key: item.exact_key,
            sketch: None,
        });
    };
    let what = format!("tensor {:?}", item.name);

    // Exact re-ranking of the candidates on the full tensors.
    let mut best: Option<(&ObjectRow, std::sync::Arc<Vec<u8>>, f64)> = None;
    if sketch::indexable(dtype) {
        for row in candidates {
            if row.raw_len != item.raw.len() as u64
                || row.kind != (neurstore_storage::catalog::ObjectKind::Tensor { dtype })
            {
                continue;
            }
            let bytes = store.base_bytes(row.id, &what, 1)?;
            // A single candidate needs no ranking.
            let d = if candidates.len() > 1 {
                quantized::squared_distance(dtype, item.raw, &bytes)
            } else {
                0.0
            };
            if best
                .as_ref()
                .is_none_or(|(b, _, bd)| d < *bd || (d == *bd && row.id < b.id))
            {
                best = Some((row, bytes, d));
            }
        }
    }
    let base_bytes = best.as_ref().map(|(_, b, _)| b.as_slice());

    let mut options: Vec<Encoding> = Vec::new();
    match item.tolerance {
        None => {
            if let Some(base) = base_bytes {
                let d = delta::encode(
                    item.raw,
                    base,
                    dtype.plane_width(),
                    delta::Transform::IntDiff,
                    LEVEL,
                );
                options.push(Encoding {
                    codec: Codec::Delta,
                    bytes: Some(d),
                    base: Some(0),
                });
            }
        }
        Some(tol) => {
            // Encodings estimated at over 1.5 times the best estimate cannot win; skip them.
            let alone = quantized::estimate(dtype, item.raw, None, tol);
            let with_base = base_bytes.map(|b| quantized::estimate(dtype, item.raw, Some(b), tol));
            let best_estimate = with_base.map_or(alone, |d| d.min(alone));
            let worth = |estimate: f64| estimate <= 1.5 * best_estimate + 256.0;
            if worth(alone) {
                let q = quantized::encode(dtype, item.raw, None, tol, LEVEL)
                    .map_err(|e| StorageError::corrupt(&what, e.0))?;
                options.push(Encoding {
                    codec: Codec::Quantized,
                    bytes: Some(q.bytes),
                    base: None,
                });
            }
            if let Some(base) = base_bytes.filter(|_| with_base.is_some_and(worth)) {
                let q = quantized::encode(dtype, item.raw, Some(base), tol, LEVEL)
                    .map_err(|e| StorageError::corrupt(&what, e.0))?;
                options.push(Encoding {
                    codec: Codec::Quantized,
                    bytes: Some(q.bytes),
                    base: Some(0),
                });
            }
        }
    }
    // Standalone lossless goes first so it wins ties. In bounded mode it is tried only where
    // quantizing saves less than half: byte-grouped floats never compress by half losslessly,
    // so there it could not win.
    let best_len = options.iter().map(|o| o.len(item.raw)).min();
    if item.tolerance.is_none() || best_len.is_none_or(|l| l * 2 > item.raw.len()) {
        let standalone = codec::encode_tensor(dtype, item.raw);
        options.insert(
            0,
            Encoding {
                codec: standalone.codec,
                bytes: standalone.bytes,
                base: None,
            },
        );
    }
    // A delta must save a real margin over the best standalone encoding to be taken: a few
    // bytes of zstd noise vanish in blob alignment, while a base costs a second read and must
    // outlive the tensor.
    let margin = options
        .iter()
        .filter(|o| o.base.is_none())
        .map(|o| (o.len(item.raw) / 32).max(64))
        .min()
        .unwrap_or(0);
    let chosen = options
        .into_iter()
        .enumerate()
        .min_by_key(|(i, o)| {
            (
                o.len(item.raw) + if o.base.is_some() { margin } else { 0 },
                *i,
            )
        })
        .map(|(_, o)| o)
        .expect("a bounded tensor has a quantized option, a lossless one a standalone one");

    let base_row = chosen.base.and(best.as_ref().map(|(row, _, _)| *row));
    let base = chosen.base.and(base_bytes);
    let mut decoded = vec![0u8; item.raw.len()];
    codec::decode_with_base(
        chosen.codec,
        dtype,
        chosen.bytes.as_deref().unwrap_or(item.raw),
        base,
        &mut decoded,
    )
    .map_err(|e| StorageError::corrupt(&what, format!("fresh encoding does not decode: {e}")))?;
    let (tolerance, max_error) = match (chosen.codec, item.tolerance) {
        (Codec::Quantized, Some(tol)) => {
            let err = quantized::max_abs_error(dtype, item.raw, &decoded);
            if err > tol {
                return Err(StorageError::corrupt(
                    &what,
                    format!("encoding exceeds the bound: {err} > {tol}"),
                )
                .into());
            }
            (Some(tol), err)
        }
        _ => {
            if decoded != item.raw {
                return Err(
                    StorageError::corrupt(&what, "lossless encoding does not round-trip").into(),
                );
            }
            (None, 0.0)
        }
    };
    Ok(Plan {
        codec: chosen.codec,
        stored_len: chosen.len(item.raw) as u64,
        bytes: chosen.bytes,
        base: base_row.map(|r| BaseRef {
            id: r.id,
            decoded_key: r.decoded_key,
        }),
        chain_depth: base_row.map_or(0, |r| r.chain_depth + 1),
        tolerance,
        max_error,
        // Lossless encodings were just checked to decode to the input: its key stands.
        decoded_key: if tolerance.is_none() {
            item.exact_key
        } else {
            tensor_key(dtype, &item.shape, &decoded)
        },
        sketch: sketch::sketch(dtype, &decoded)
            .filter(|_| sketch::worth_sketching(dtype, item.elements())),
    })
}
