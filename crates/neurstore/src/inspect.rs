//! Read-only views of the store: `ls`, `info`, `stats`, `verify`.

use std::collections::{BTreeMap, HashMap};

use neurstore_core::codec::Codec;
use neurstore_core::key::{file_key, tensor_key};
use neurstore_storage::StorageError;
use neurstore_storage::catalog::{FileKind, FileRow, ObjectKind, ObjectRow, Queries};
use rayon::prelude::*;
use serde::Serialize;

use crate::Store;
use crate::error::Result;
use crate::progress::Progress;

/// One line of `ls`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    /// Name.
    pub name: String,
    /// Creation time (seconds since the Unix epoch).
    pub created_unix: i64,
    /// Creation time, RFC 3339 in UTC.
    pub created: String,
    /// "safetensors" or "directory".
    pub source_format: String,
    /// Bytes of every file as imported: `tensor_bytes` + `other_bytes`.
    pub raw_bytes: u64,
    /// Bytes of tensor data.
    pub tensor_bytes: u64,
    /// Bytes of everything else: safetensors headers, plain files, and the skeletons of other
    /// model files (their non-tensor bytes plus the layout that splices them).
    pub other_bytes: u64,
}

/// `info` of a model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// Name.
    pub name: String,
    /// Creation time (seconds since the Unix epoch).
    pub created_unix: i64,
    /// Creation time, RFC 3339 in UTC.
    pub created: String,
    /// "safetensors" or "directory".
    pub source_format: String,
    /// "lossless", "abs:X" or "rel:X".
    pub mode: String,
    /// Lineage: the model its deltas were taken against.
    pub base_model: Option<String>,
    /// User metadata.
    pub metadata: serde_json::Value,
    /// Bytes of every file as imported: `tensor_bytes` + `other_bytes`.
    pub raw_bytes: u64,
    /// Bytes of tensor data.
    pub tensor_bytes: u64,
    /// Bytes of everything else: safetensors headers, plain files, and the skeletons of other
    /// model files (their non-tensor bytes plus the layout that splices them).
    pub other_bytes: u64,
    /// Stored bytes of every distinct object the model uses (shared ones included).
    pub stored_bytes: u64,
    /// Stored bytes used by this model alone: what `rm` then `gc` would free.
    pub exclusive_bytes: u64,
    /// Its files.
    pub files: Vec<FileInfo>,
    /// Its tensors.
    pub tensors: Vec<TensorInfo>,
}

/// A file of a model.
#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    /// Relative path.
    pub path: String,
    /// "safetensors", "plain", or for a file stored as skeleton and tensors its format:
    /// "onnx", "onnx-data" (external data), "pytorch", "gguf".
    pub kind: &'static str,
    /// Bytes of the file's object (safetensors: the header; a container: its skeleton; tensors
    /// are listed apart).
    pub raw_bytes: u64,
    /// Stored bytes.
    pub stored_bytes: u64,
    /// For a file stored as skeleton and tensors: its format's description (an ONNX graph).
    pub format: Option<crate::containers::FormatInfo>,
}

/// A tensor of a model.
#[derive(Debug, Clone, Serialize)]
pub struct TensorInfo {
    /// File it belongs to.
    pub file: String,
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// Raw bytes.
    pub raw_bytes: u64,
    /// Stored bytes.
    pub stored_bytes: u64,
    /// Codec name.
    pub codec: &'static str,
    /// Bits stored per element.
    pub bits_per_element: f64,
    /// True when other models (or other names, or deltas) use the same stored object.
    pub shared: bool,
    /// "model/tensor" of the base this tensor is a delta against.
    pub base: Option<String>,
    /// Largest absolute error of any element, measured when stored.
    pub max_error: f64,
    /// The bound it was stored under (`None`: lossless).
    pub tolerance: Option<f64>,
}

/// `stats` of the store.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Models.
    pub models: u64,
    /// Tensors over all models (a tensor in two models counts twice).
    pub tensors: u64,
    /// Distinct tensor objects stored.
    pub unique_tensors: u64,
    /// Bytes of every file of every model as imported: `tensor_bytes` + `other_bytes`.
    pub raw_bytes: u64,
    /// Bytes of tensor data.
    pub tensor_bytes: u64,
    /// Bytes of everything else: safetensors headers, plain files, and the skeletons of other
    /// model files (their non-tensor bytes plus the layout that splices them).
    pub other_bytes: u64,
    /// Bytes the store occupies on disk: pack files plus catalog.
    pub stored_bytes: u64,
    /// Pack file bytes.
    pub pack_bytes: u64,
    /// Catalog bytes.
    pub catalog_bytes: u64,
    /// Stored bytes of live objects.
    pub live_object_bytes: u64,
    /// Pack bytes that `gc` would reclaim (records of deleted models, in the packs worth
    /// rewriting: an eighth of the pack dead or more, or nothing left alive in it).
    pub reclaimable_bytes: u64,
    /// raw_bytes / stored_bytes.
    pub ratio: f64,
    /// Objects by kind and codec.
    pub by_kind: BTreeMap<String, KindStats>,
}

/// Objects of one kind and codec.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KindStats {
    /// Objects.
    pub objects: u64,
    /// Their raw bytes.
    pub raw_bytes: u64,
    /// Their stored bytes.
    pub stored_bytes: u64,
}

/// Result of `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Models checked.
    pub models: u64,
    /// Objects read, decoded and re-keyed.
    pub objects: u64,
    /// Stored bytes read.
    pub stored_bytes: u64,
    /// Everything found wrong (empty when the store is sound).
    pub problems: Vec<String>,
}

/// "model/tensor" of a base object, or its id when no model uses it any more (its model was
/// removed while deltas still need it).
pub(crate) fn base_label(q: &impl Queries, object_id: i64) -> neurstore_storage::Result<String> {
    Ok(match q.first_user(object_id)? {
        Some((model, tensor)) => format!("{model}/{tensor}"),
        None => format!("object {object_id} (its models were removed)"),
    })
}

/// Sums lengths read from the catalog, saturating, so a damaged catalog cannot overflow them.
fn saturating_total(lens: impl IntoIterator<Item = u64>) -> u64 {
    lens.into_iter().fold(0, u64::saturating_add)
}

/// Bytes of a model's files other than tensor data: plain files whole, and for each
/// safetensors file its 8-byte length prefix and header.
fn other_bytes(files: &[FileRow]) -> u64 {
    saturating_total(files.iter().map(|f| match f.kind {
        FileKind::Safetensors => f.object.raw_len.saturating_add(8),
        FileKind::Plain => f.object.raw_len,
    }))
}

/// Seconds since the Unix epoch as RFC 3339 in UTC ("2026-12-02T10:41:07Z").
pub(crate) fn rfc3339_utc(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl Store {
    /// All models, by name.
    pub fn list(&self) -> Result<Vec<ModelSummary>> {
        let models = self.engine.read(|q| {
            q.models()?
                .into_iter()
                .map(|m| Ok((other_bytes(&q.model_files(m.id)?), m)))
                .collect::<neurstore_storage::Result<Vec<_>>>()
        })?;
        Ok(models
            .into_iter()
            .map(|(other, m)| ModelSummary {
                name: m.name,
                created_unix: m.created_unix,
                created: rfc3339_utc(m.created_unix),
                source_format: m.source_format,
                raw_bytes: m.raw_bytes.saturating_add(other),
                tensor_bytes: m.raw_bytes,
                other_bytes: other,
            })
            .collect())
    }

    /// Details of one model.
    pub fn info(&self, name: &str) -> Result<ModelInfo> {
        let (mut info, files, tensors) = self.engine.read(|q| {
            let model = q
                .model(name)?
                .ok_or_else(|| StorageError::ModelNotFound(name.to_string()))?;
            let files = q.model_files(model.id)?;
            let tensors = q.model_tensors(model.id)?;
            let mut base_names: HashMap<i64, String> = HashMap::new();
            for b in tensors.iter().filter_map(|t| t.object.base) {
                if let std::collections::hash_map::Entry::Vacant(slot) = base_names.entry(b) {
                    slot.insert(base_label(q, b)?);
                }
            }
            let mut uses: HashMap<i64, (i64, &ObjectRow)> = HashMap::new();
            for o in files
                .iter()
                .map(|f| &f.object)
                .chain(tensors.iter().map(|t| &t.object))
            {
                uses.entry(o.id).or_insert((0, o)).0 += 1;
            }
            let shared = |o: &ObjectRow| o.refcount > uses[&o.id].0;
            let stored_bytes = saturating_total(uses.values().map(|(_, o)| o.location.len));
            let exclusive_bytes = saturating_total(
                uses.values()
                    .filter(|(_, o)| !shared(o))
                    .map(|(_, o)| o.location.len),
            );
            let info = ModelInfo {
                name: model.name.clone(),
                created_unix: model.created_unix,
                source_format: model.source_format.clone(),
                mode: model.mode.clone(),
                base_model: model.base_model.clone(),
                metadata: serde_json::from_str(&model.metadata).unwrap_or(serde_json::Value::Null),
                created: rfc3339_utc(model.created_unix),
                raw_bytes: model.raw_bytes.saturating_add(other_bytes(&files)),
                tensor_bytes: model.raw_bytes,
                other_bytes: other_bytes(&files),
                stored_bytes,
                exclusive_bytes,
                files: files
                    .iter()
                    .map(|f| FileInfo {
                        path: f.path.clone(),
                        kind: match f.kind {
                            neurstore_storage::catalog::FileKind::Safetensors => "safetensors",
                            neurstore_storage::catalog::FileKind::Plain => "plain",
                        },
                        raw_bytes: f.object.raw_len,
                        stored_bytes: f.object.location.len,
                        format: None,
                    })
                    .collect(),
                tensors: tensors
                    .iter()
                    .map(|t| {
                        let dtype = match t.object.kind {
                            ObjectKind::Tensor { dtype } => dtype,
                            ObjectKind::File => neurstore_core::dtype::DType::U8,
                        };
                        let elements =
                            neurstore_core::dtype::element_count(&t.object.shape).unwrap_or(0);
                        TensorInfo {
                            file: t.path.clone(),
                            name: t.name.clone(),
                            dtype: dtype.to_string(),
                            shape: t.object.shape.clone(),
                            raw_bytes: t.object.raw_len,
                            stored_bytes: t.object.location.len,
                            codec: t.object.codec.name(),
                            bits_per_element: if elements == 0 {
                                0.0
                            } else {
                                t.object.location.len as f64 * 8.0 / elements as f64
                            },
                            // Any other reference: another model, another name, a delta on it.
                            shared: t.object.refcount > 1,
                            base: t.object.base.and_then(|b| base_names.get(&b).cloned()),
                            max_error: t.object.max_error,
                            tolerance: t.object.tolerance,
                        }
                    })
                    .collect(),
            };
            Ok((info, files, tensors))
        })?;
        self.describe_containers(&mut info, &files, &tensors)?;
        Ok(info)
    }

    /// Fills in the kind and format description of the files stored as containers.
    fn describe_containers(
        &self,
        info: &mut ModelInfo,
        files: &[FileRow],
        tensors: &[neurstore_storage::catalog::TensorRow],
    ) -> Result<()> {
        for (file, shown) in files.iter().zip(info.files.iter_mut()) {
            let rows: Vec<_> = tensors.iter().filter(|t| t.path == file.path).collect();
            let what = format!("model {:?} file {:?}", info.name, file.path);
            if file.kind != FileKind::Plain {
                continue;
            }
            if rows.is_empty() {
                // An ONNX file stored whole (its weights all external): its graph all the same.
                if file.path.to_ascii_lowercase().ends_with(".onnx") {
                    let bytes = self.decode_object(&file.object, &what)?;
                    if let Some(format) = crate::containers::describe_plain_onnx(&bytes) {
                        shown.kind = "onnx";
                        shown.format = Some(format);
                    }
                }
                continue;
            }
            let head = self.decode_object(&file.object, &what)?;
            let sk = crate::containers::decode_checked(&head, &rows, &what)?;
            shown.kind = match sk.layout.format {
                neurstore_formats::Format::Onnx => "onnx",
                neurstore_formats::Format::OnnxExternalData => "onnx-data",
                neurstore_formats::Format::PyTorchZip => "pytorch",
                neurstore_formats::Format::Gguf => "gguf",
                _ => "safetensors",
            };
            shown.format = Some(crate::containers::describe(&sk));
        }
        Ok(())
    }

    /// Store-wide figures.
    pub fn stats(&self) -> Result<Stats> {
        let (models, (_, tensor_refs, unique_tensors), objects, other) = self.engine.read(|q| {
            let models = q.models()?;
            let mut other = 0u64;
            for m in &models {
                other = other.saturating_add(other_bytes(&q.model_files(m.id)?));
            }
            Ok((models, q.counts()?, q.objects()?, other))
        })?;
        let usage = self.engine.disk_usage()?;
        let tensor_bytes = saturating_total(models.iter().map(|m| m.raw_bytes));
        let raw_bytes = tensor_bytes.saturating_add(other);
        let stored_bytes = usage.pack_bytes + usage.catalog_bytes;
        let live_object_bytes = saturating_total(objects.iter().map(|o| o.location.len));
        let reclaimable_bytes = self.engine.reclaimable_bytes()?;
        let mut by_kind: BTreeMap<String, KindStats> = BTreeMap::new();
        for o in &objects {
            let kind = match o.kind {
                ObjectKind::Tensor { .. } => "tensor",
                ObjectKind::File => "file",
            };
            let class = match (o.codec, o.base.is_some()) {
                (Codec::Raw, _) => "raw",
                (Codec::Grouped, _) => "lossless standalone",
                (Codec::Delta, _) => "lossless delta",
                (Codec::Quantized, true) => "quantized delta",
                (Codec::Quantized, false) => "quantized base",
                _ => "other",
            };
            let entry = by_kind.entry(format!("{kind}/{class}")).or_default();
            entry.objects += 1;
            entry.raw_bytes = entry.raw_bytes.saturating_add(o.raw_len);
            entry.stored_bytes = entry.stored_bytes.saturating_add(o.location.len);
        }
        Ok(Stats {
            models: models.len() as u64,
            tensors: tensor_refs,
            unique_tensors,
            raw_bytes,
            tensor_bytes,
            other_bytes: other,
            stored_bytes,
            pack_bytes: usage.pack_bytes,
            catalog_bytes: usage.catalog_bytes,
            live_object_bytes,
            reclaimable_bytes,
            ratio: if stored_bytes == 0 {
                0.0
            } else {
                raw_bytes as f64 / stored_bytes as f64
            },
            by_kind,
        })
    }

    /// Reads, checksums, decodes and re-keys every object, and checks every model's headers
    /// against its tensors. Problems are collected, not returned as errors.
    pub fn verify(&self, progress: &dyn Progress) -> Result<VerifyReport> {
        let (models, objects, packs) = self
            .engine
            .read(|q| Ok((q.models()?, q.objects()?, q.packs()?)))?;
        let mut problems = Vec::new();
        for (id, committed) in &packs {
            if let Err(e) = self.engine.pack_file_len(*id).and_then(|len| {
                if len < *committed {
                    Err(StorageError::corrupt(
                        format!("pack {id}"),
                        format!("{len} bytes on disk, {committed} committed"),
                    ))
                } else {
                    Ok(())
                }
            }) {
                problems.push(e.to_string());
            }
        }
        let total = saturating_total(objects.iter().map(|o| o.location.len));
        progress.start("verifying", total);
        let object_problems: Vec<String> = objects
            .par_iter()
            .filter_map(|o| {
                let what = format!("object {}", o.id);
                let result = self.decode_object(o, &what).and_then(|data| {
                    let key = match o.kind {
                        ObjectKind::Tensor { dtype } => tensor_key(dtype, &o.shape, &data),
                        ObjectKind::File => file_key(&data),
                    };
                    if key == o.decoded_key {
                        Ok(())
                    } else {
                        Err(StorageError::corrupt(
                            what.clone(),
                            "decoded content does not match its key",
                        )
                        .into())
                    }
                });
                progress.advance(o.location.len);
                result.err().map(|e| e.to_string())
            })
            .collect();
        problems.extend(object_problems);
        for m in &models {
            // Decoding every header checks it against the catalog's tensors.
            let snapshot_check = self.engine.read(|q| {
                let (files, tensors) = (q.model_files(m.id)?, q.model_tensors(m.id)?);
                q.check_manifest(m, &files, &tensors)?;
                Ok((files, tensors, q.model_record_location(m.id)?))
            });
            match snapshot_check {
                Ok((files, tensors, record)) => {
                    if let Err(e) = self.engine.check_model_record(m, &files, &tensors, record) {
                        problems.push(e.to_string());
                    }
                    for f in &files {
                        let what = format!("model {:?} file {:?}", m.name, f.path);
                        let rows: Vec<_> = tensors.iter().filter(|t| t.path == f.path).collect();
                        if f.kind == FileKind::Plain && rows.is_empty() {
                            continue;
                        }
                        let check = self.decode_object(&f.object, &what).and_then(|head| {
                            if f.kind == FileKind::Safetensors {
                                crate::export::check_header(&head, &rows, &what)
                            } else {
                                crate::containers::decode_checked(&head, &rows, &what).map(|_| ())
                            }
                        });
                        if let Err(e) = check {
                            problems.push(e.to_string());
                        }
                    }
                }
                Err(e) => problems.push(format!("model {:?}: {e}", m.name)),
            }
        }
        progress.finish();
        problems.sort();
        problems.dedup();
        Ok(VerifyReport {
            models: models.len() as u64,
            objects: objects.len() as u64,
            stored_bytes: total,
            problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_796_208_067), "2026-12-02T10:41:07Z");
        assert_eq!(rfc3339_utc(-1), "1969-12-31T23:59:59Z");
    }
}
