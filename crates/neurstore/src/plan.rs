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

/// Plans one item against its candidate bases (already filtered by chain depth). Steps: a file
/// is encoded losslessly alone; a tensor's candidates are re-ranked exactly and the closest
/// kept as its base, its encodings made, the smallest chosen, and that one decoded and checked.
pub(crate) fn plan_item(store: &Store, item: &Item, candidates: &[&ObjectRow]) -> Result<Plan> {
    let Some(dtype) = item.dtype else {
        return Ok(plan_file(item));
    };
    let what = format!("tensor {:?}", item.name);
    let closest = closest_base(store, item, dtype, candidates, &what)?;
    let base_bytes = closest.as_ref().map(|(_, b)| b.as_slice());
    let chosen = smallest(item, encodings(item, dtype, base_bytes, &what)?);
    let base_row = chosen.base.and(closest.as_ref().map(|(row, _)| *row));
    let checked = check_encoding(item, dtype, &chosen, chosen.base.and(base_bytes), &what)?;
    Ok(tensor_plan(item, dtype, chosen, base_row, checked))
}

/// A file's plan: encoded losslessly on its own (files are never deltas).
fn plan_file(item: &Item) -> Plan {
    let enc = codec::encode_file(item.raw);
    Plan {
        codec: enc.codec,
        stored_len: enc.bytes.as_ref().map_or(item.raw.len(), Vec::len) as u64,
        bytes: enc.bytes,
        base: None,
        chain_depth: 0,
        tolerance: None,
        max_error: 0.0,
        decoded_key: item.exact_key,
        sketch: None,
    }
}

/// A candidate base: its row and its decoded bytes.
type Candidate<'r> = (&'r ObjectRow, std::sync::Arc<Vec<u8>>);

/// Exact re-ranking of the candidates on the full tensors: the closest candidate of the same
/// dtype and length (ties to the lowest id), decoded, or `None`.
fn closest_base<'r>(
    store: &Store,
    item: &Item,
    dtype: DType,
    candidates: &[&'r ObjectRow],
    what: &str,
) -> Result<Option<Candidate<'r>>> {
    let mut best: Option<(&ObjectRow, std::sync::Arc<Vec<u8>>, f64)> = None;
    if sketch::indexable(dtype) {
        for row in candidates {
            if row.raw_len != item.raw.len() as u64
                || row.kind != (neurstore_storage::catalog::ObjectKind::Tensor { dtype })
            {
                continue;
            }
            let bytes = store.base_bytes(row.id, what, 1)?;
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
    Ok(best.map(|(row, bytes, _)| (row, bytes)))
}

/// The encodings that compete for a tensor: those against `base` (a lossless delta, or bounded
/// ones with and without it), then the standalone lossless one first where it could win.
fn encodings(item: &Item, dtype: DType, base: Option<&[u8]>, what: &str) -> Result<Vec<Encoding>> {
    let mut options = match item.tolerance {
        None => lossless_delta(item, dtype, base).into_iter().collect(),
        Some(tol) => bounded_encodings(item, dtype, base, tol, what)?,
    };
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
    Ok(options)
}

/// A lossless tensor's delta against its base, if it has one.
fn lossless_delta(item: &Item, dtype: DType, base: Option<&[u8]>) -> Option<Encoding> {
    let d = delta::encode(
        item.raw,
        base?,
        dtype.plane_width(),
        delta::Transform::IntDiff,
        LEVEL,
    );
    Some(Encoding {
        codec: Codec::Delta,
        bytes: Some(d),
        base: Some(0),
    })
}

/// A bounded tensor's quantized encodings, alone and against its base, skipping those whose
/// estimated size is over 1.5 times the best estimate (they cannot win).
fn bounded_encodings(
    item: &Item,
    dtype: DType,
    base: Option<&[u8]>,
    tol: f64,
    what: &str,
) -> Result<Vec<Encoding>> {
    let mut options = Vec::new();
    let alone = quantized::estimate(dtype, item.raw, None, tol);
    let with_base = base.map(|b| quantized::estimate(dtype, item.raw, Some(b), tol));
    let best_estimate = with_base.map_or(alone, |d| d.min(alone));
    let worth = |estimate: f64| estimate <= 1.5 * best_estimate + 256.0;
    if worth(alone) {
        let q = quantized::encode(dtype, item.raw, None, tol, LEVEL)
            .map_err(|e| StorageError::corrupt(what, e.0))?;
        options.push(Encoding {
            codec: Codec::Quantized,
            bytes: Some(q.bytes),
            base: None,
        });
    }
    if let Some(base) = base.filter(|_| with_base.is_some_and(worth)) {
        let q = quantized::encode(dtype, item.raw, Some(base), tol, LEVEL)
            .map_err(|e| StorageError::corrupt(what, e.0))?;
        options.push(Encoding {
            codec: Codec::Quantized,
            bytes: Some(q.bytes),
            base: Some(0),
        });
    }
    Ok(options)
}

/// The smallest encoding, ties to the earlier one. A delta must save a real margin over the best
/// standalone encoding to be taken: a few bytes of zstd noise vanish in blob alignment, while a
/// base costs a second read and must outlive the tensor.
fn smallest(item: &Item, options: Vec<Encoding>) -> Encoding {
    let margin = options
        .iter()
        .filter(|o| o.base.is_none())
        .map(|o| (o.len(item.raw) / 32).max(64))
        .min()
        .unwrap_or(0);
    options
        .into_iter()
        .enumerate()
        .min_by_key(|(i, o)| {
            (
                o.len(item.raw) + if o.base.is_some() { margin } else { 0 },
                *i,
            )
        })
        .map(|(_, o)| o)
        .expect("a bounded tensor has a quantized option, a lossless one a standalone one")
}

/// What decoding the chosen encoding gave, once checked.
struct Checked {
    decoded: Vec<u8>,
    tolerance: Option<f64>,
    max_error: f64,
}

/// Decodes the chosen encoding (against `base` when it has one) and checks it: every element
/// within the bound for a bounded encoding, bit-exact otherwise.
fn check_encoding(
    item: &Item,
    dtype: DType,
    chosen: &Encoding,
    base: Option<&[u8]>,
    what: &str,
) -> Result<Checked> {
    let mut decoded = vec![0u8; item.raw.len()];
    codec::decode_with_base(
        chosen.codec,
        dtype,
        chosen.bytes.as_deref().unwrap_or(item.raw),
        base,
        &mut decoded,
    )
    .map_err(|e| StorageError::corrupt(what, format!("fresh encoding does not decode: {e}")))?;
    let (tolerance, max_error) = match (chosen.codec, item.tolerance) {
        (Codec::Quantized, Some(tol)) => {
            let err = quantized::max_abs_error(dtype, item.raw, &decoded);
            if err > tol {
                return Err(StorageError::corrupt(
                    what,
                    format!("encoding exceeds the bound: {err} > {tol}"),
                )
                .into());
            }
            (Some(tol), err)
        }
        _ => {
            if decoded != item.raw {
                return Err(
                    StorageError::corrupt(what, "lossless encoding does not round-trip").into(),
                );
            }
            (None, 0.0)
        }
    };
    Ok(Checked {
        decoded,
        tolerance,
        max_error,
    })
}

/// A tensor's plan from its chosen, checked encoding: its base and chain depth, the key of what
/// it decodes to, and the sketch it is indexed under.
fn tensor_plan(
    item: &Item,
    dtype: DType,
    chosen: Encoding,
    base_row: Option<&ObjectRow>,
    checked: Checked,
) -> Plan {
    let Checked {
        decoded,
        tolerance,
        max_error,
    } = checked;
    Plan {
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
    }
}
