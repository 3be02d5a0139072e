//! `get` and `load`: a model back out of the store, written as files or held in memory.
//!
//! **Invariant:** a losslessly stored model is written back byte for byte as imported: the
//! stored header JSON, then every tensor in its original offset order.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use neurstore_core::dtype::DType;
use neurstore_core::safetensors;
use neurstore_storage::StorageError;
use neurstore_storage::catalog::{FileKind, FileRow, ModelRow, ObjectKind, Queries, TensorRow};
use neurstore_storage::pack::BlobBytes;
use rayon::prelude::*;
use serde::Serialize;

use crate::Store;
use crate::error::{Error, Result};
use crate::progress::Progress;

/// Raw bytes decoded at once before they are written (bounds memory during `get`).
const WINDOW_BYTES: u64 = 128 << 20;
/// Attempts at a read that races a garbage collection moving its blobs.
const READ_ATTEMPTS: usize = 3;

/// What `get` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct GetReport {
    /// Model name.
    pub name: String,
    /// The output file or directory.
    pub path: PathBuf,
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes_written: u64,
}

/// A tensor loaded into memory.
pub struct LoadedTensor {
    /// File it belongs to.
    pub file: String,
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<u64>,
    /// Its bytes: a view of the pack file where stored raw, decoded otherwise.
    pub data: TensorData,
}

/// A loaded tensor's bytes.
pub enum TensorData {
    /// Stored bytes (raw codec), possibly a view of a mapped pack file.
    Stored(BlobBytes),
    /// Decoded bytes.
    Decoded(Vec<u8>),
}

impl std::ops::Deref for TensorData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            TensorData::Stored(b) => b,
            TensorData::Decoded(v) => v,
        }
    }
}

/// Everything needed to rebuild one model, read from one catalog snapshot.
struct Snapshot {
    model: ModelRow,
    files: Vec<FileRow>,
    tensors: Vec<TensorRow>,
}

impl Snapshot {
    /// The tensors of one safetensors file of the model, in position order.
    fn tensors_of(&self, path: &str) -> Vec<&TensorRow> {
        self.tensors.iter().filter(|t| t.path == path).collect()
    }
}

impl Store {
    fn snapshot(&self, name: &str) -> Result<Snapshot> {
        Ok(self.engine.read(|q| {
            let model = q
                .model(name)?
                .ok_or_else(|| StorageError::ModelNotFound(name.to_string()))?;
            let files = q.model_files(model.id)?;
            let tensors = q.model_tensors(model.id)?;
            q.check_manifest(&model, &files, &tensors)?;
            Ok(Snapshot {
                files,
                tensors,
                model,
            })
        })?)
    }

    /// Runs `f`, retrying when a concurrent garbage collection removed a pack it was about to read.
    fn with_retry<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let mut attempt = 1;
        loop {
            match f() {
                Err(Error::Storage(StorageError::PackMissing(_))) if attempt < READ_ATTEMPTS => {
                    attempt += 1
                }
                other => return other,
            }
        }
    }

    /// Writes model `name` to `out`: a safetensors file for a model imported from one, a
    /// directory for a model imported from a directory. Output appears atomically (renamed into
    /// place when complete); an existing file is replaced, an existing non-empty directory refused.
    pub fn get(&self, name: &str, out: &Path, progress: &dyn Progress) -> Result<GetReport> {
        self.with_retry(|| self.get_once(name, out, progress))
    }

    fn get_once(&self, name: &str, out: &Path, progress: &dyn Progress) -> Result<GetReport> {
        let snap = self.snapshot(name)?;
        // A progress total only: saturating, so damaged lengths cannot overflow it.
        let total = snap.files.iter().fold(snap.model.raw_bytes, |n, f| {
            n.saturating_add(f.object.raw_len)
        });
        progress.start("writing", total);
        let mut bytes_written = 0;
        let tmp = temp_sibling(out)?;
        let result = (|| {
            if snap.model.source_format == "safetensors" {
                let [file] = snap.files.as_slice() else {
                    return Err(StorageError::corrupt(
                        format!("model {name:?}"),
                        "a single-file model has several files",
                    )
                    .into());
                };
                bytes_written += self.write_file(&snap, file, &tmp, progress)?;
            } else {
                std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
                for file in &snap.files {
                    let dest = tmp.join(&file.path);
                    if let Some(parent) = dest.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
                    }
                    bytes_written += self.write_file(&snap, file, &dest, progress)?;
                }
            }
            replace(&tmp, out)
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp).or_else(|_| std::fs::remove_file(&tmp));
        }
        result?;
        progress.finish();
        Ok(GetReport {
            name: name.to_string(),
            path: out.to_path_buf(),
            files: snap.files.len() as u64,
            bytes_written,
        })
    }

    fn write_file(
        &self,
        snap: &Snapshot,
        file: &FileRow,
        dest: &Path,
        progress: &dyn Progress,
    ) -> Result<u64> {
        let what = format!("model {:?} file {:?}", snap.model.name, file.path);
        let head = self.decode_object(&file.object, &what)?;
        let handle = File::create(dest).map_err(|e| Error::io(dest, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, handle);
        let io = |e| Error::io(dest, e);
        let mut written = 0u64;
        match file.kind {
            FileKind::Plain => {
                w.write_all(&head).map_err(io)?;
                written += head.len() as u64;
                progress.advance(head.len() as u64);
            }
            FileKind::Safetensors => {
                let tensors = snap.tensors_of(&file.path);
                check_header(&head, &tensors, &what)?;
                w.write_all(&(head.len() as u64).to_le_bytes())
                    .map_err(io)?;
                w.write_all(&head).map_err(io)?;
                written += 8 + head.len() as u64;
                for window in windows(&tensors) {
                    let decoded = window
                        .par_iter()
                        .map(|t| {
                            self.decode_object(&t.object, &format!("{what} tensor {:?}", t.name))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    for data in decoded {
                        w.write_all(&data).map_err(io)?;
                        written += data.len() as u64;
                        progress.advance(data.len() as u64);
                    }
                }
            }
        }
        w.flush().map_err(io)?;
        Ok(written)
    }

    /// Loads every tensor of model `name` into memory, decoded, in file and offset order.
    pub fn load(&self, name: &str) -> Result<Vec<LoadedTensor>> {
        self.with_retry(|| {
            let snap = self.snapshot(name)?;
            self.check_headers(&snap)?;
            snap.tensors
                .par_iter()
                .map(|t| {
                    let what = format!("model {name:?} tensor {:?}", t.name);
                    let ObjectKind::Tensor { dtype } = t.object.kind else {
                        return Err(StorageError::corrupt(what, "object is not a tensor").into());
                    };
                    Ok(LoadedTensor {
                        file: t.path.clone(),
                        name: t.name.clone(),
                        dtype,
                        shape: t.object.shape.clone(),
                        data: self.decode_object(&t.object, &what)?,
                    })
                })
                .collect()
        })
    }
}

impl Store {
    /// Checks every stored safetensors header of a model against the catalog's tensors, as
    /// `get` does while writing, and that every tensor belongs to one of its files: the
    /// catalog's names, paths, dtypes, shapes and order are what `load` returns.
    fn check_headers(&self, snap: &Snapshot) -> Result<()> {
        let mut listed = 0;
        for file in snap
            .files
            .iter()
            .filter(|f| f.kind == FileKind::Safetensors)
        {
            let what = format!("model {:?} file {:?}", snap.model.name, file.path);
            let head = self.decode_object(&file.object, &what)?;
            let tensors = snap.tensors_of(&file.path);
            check_header(&head, &tensors, &what)?;
            listed += tensors.len();
        }
        if listed != snap.tensors.len() {
            return Err(StorageError::corrupt(
                format!("model {:?}", snap.model.name),
                "a tensor belongs to no safetensors file of the model",
            )
            .into());
        }
        Ok(())
    }
}

/// Checks that a stored header describes exactly the tensors the catalog lists, in order.
pub(crate) fn check_header(head: &[u8], tensors: &[&TensorRow], what: &str) -> Result<()> {
    let file_len = tensors
        .iter()
        .try_fold(8 + head.len() as u64, |n, t| {
            n.checked_add(t.object.raw_len)
        })
        .ok_or_else(|| StorageError::corrupt(what, "tensor lengths overflow"))?;
    let header = safetensors::parse_header(head, file_len)
        .map_err(|e| StorageError::corrupt(what, format!("stored header: {e}")))?;
    let agrees = header.tensors.len() == tensors.len()
        && header.tensors.iter().zip(tensors).all(|(h, t)| {
            h.name == t.name
                && t.object.kind == ObjectKind::Tensor { dtype: h.dtype }
                && h.shape == t.object.shape
        });
    if !agrees {
        return Err(StorageError::corrupt(
            what,
            "stored header disagrees with the catalog's tensors",
        )
        .into());
    }
    Ok(())
}

fn windows<'a, 'b>(tensors: &'b [&'a TensorRow]) -> Vec<&'b [&'a TensorRow]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0u64);
    for (i, t) in tensors.iter().enumerate() {
        if i > start && size + t.object.raw_len > WINDOW_BYTES {
            out.push(&tensors[start..i]);
            (start, size) = (i, 0);
        }
        size += t.object.raw_len;
    }
    if start < tensors.len() {
        out.push(&tensors[start..]);
    }
    out
}

/// A temporary path beside `out`, in the same directory so the final rename is atomic.
fn temp_sibling(out: &Path) -> Result<PathBuf> {
    let file_name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::invalid(out, "output path has no file name"))?;
    Ok(out.with_file_name(format!(
        ".{file_name}.neurstore-partial-{}",
        std::process::id()
    )))
}

/// Moves `tmp` to `out`: replaces a file, fills an empty directory, refuses a non-empty one.
fn replace(tmp: &Path, out: &Path) -> Result<()> {
    if out.is_dir() {
        let empty = std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_none();
        if !empty || tmp.is_file() {
            return Err(Error::invalid(
                out,
                "is a non-empty directory (or a directory where a file is due); choose another output path",
            ));
        }
        std::fs::remove_dir(out).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(tmp, out).map_err(|e| Error::io(out, e))
}
