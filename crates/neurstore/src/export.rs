//! `get` and `load`: a model back out of the store, written as files or held in memory.
//!
//! **Invariant:** a losslessly stored model is written back byte for byte as imported: the
//! stored header JSON, then every tensor in its original offset order.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use neurstore_core::dtype::DType;
use neurstore_core::safetensors;
use neurstore_storage::StorageError;
use neurstore_storage::catalog::{FileKind, FileRow, ObjectKind, TensorRow};
use neurstore_storage::pack::BlobBytes;
use rayon::prelude::*;
use serde::Serialize;

use neurstore_core::codec::{self, Codec};
use neurstore_core::key::TensorKeyHasher;
use neurstore_formats::skeleton::Splice;

use crate::Store;
use crate::decode::{
    Fill, StreamBase, TensorData, check_key, release, release_range, tensor_dtype,
};
use crate::error::{Error, Result};
use crate::paths::Staging;
use crate::progress::Progress;
use crate::snapshot::Snapshot;

/// Raw bytes of small tensors decoded at once before they are written (`get` holds two such
/// windows: one decoding, one writing).
const WINDOW_BYTES: u64 = 16 << 20;
/// Bytes of a large tensor decoded at once when streamed (rounded to the codec's chunks).
const STREAM_BLOCK: usize = 8 << 20;
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
    /// The format the model was converted to (`None`: written as stored, byte for byte).
    pub converted_to: Option<&'static str>,
    /// What a forced conversion left out.
    pub losses: Vec<String>,
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

impl Store {
    /// Runs `f`, retrying when a concurrent garbage collection removed a pack it was about to read.
    pub(crate) fn with_retry<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<T> {
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
    /// directory for a model imported from a directory. Output appears atomically (built in a
    /// fresh private directory beside `out`, renamed into place when complete); an existing file
    /// is replaced, an existing non-empty directory or a symbolic link refused. A stored path
    /// that breaks [`crate::validate_stored_path`] is a `Corrupt` error naming it.
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
        // Every file is created inside a fresh private directory, then moved into place.
        let staging = Staging::beside(out)?;
        if crate::import::SINGLE_FILE_FORMATS.contains(&snap.model.source_format.as_str()) {
            let [file] = snap.files.as_slice() else {
                return Err(StorageError::corrupt(
                    format!("model {name:?}"),
                    "a single-file model has several files",
                )
                .into());
            };
            let (handle, dest) = staging.create_file()?;
            bytes_written += self.write_file_to(&snap, file, handle, &dest, progress)?;
        } else {
            staging.create_root_dir()?;
            for file in &snap.files {
                let (handle, dest) = staging.create_file_under(name, &file.path)?;
                bytes_written += self.write_file_to(&snap, file, handle, &dest, progress)?;
            }
        }
        staging.finish(out)?;
        progress.finish();
        Ok(GetReport {
            name: name.to_string(),
            path: out.to_path_buf(),
            files: snap.files.len() as u64,
            bytes_written,
            converted_to: None,
            losses: Vec::new(),
        })
    }

    /// The one file of model `name`, imported from a single file, in memory: the bytes `get`
    /// would write (for a server that returns them as a value rather than a file). A model
    /// imported from a directory is an `InvalidInput` error; so is one whose file is larger
    /// than `max_bytes`, checked before anything is decoded.
    pub fn get_bytes(
        &self,
        name: &str,
        max_bytes: u64,
        progress: &dyn Progress,
    ) -> Result<Vec<u8>> {
        self.with_retry(|| {
            let snap = self.snapshot(name)?;
            let label = || PathBuf::from(format!("model {name:?}"));
            let single =
                crate::import::SINGLE_FILE_FORMATS.contains(&snap.model.source_format.as_str());
            let file = match snap.files.as_slice() {
                [file] if single => file,
                files => {
                    return Err(Error::InvalidInput {
                        path: label(),
                        detail: format!(
                            "it was imported from a directory of {} files, not one file; \
                             write it out to a directory instead",
                            files.len()
                        ),
                    });
                }
            };
            // The model's tensor bytes, a lower bound of the file's length: refused before
            // anything is decoded; the exact length is capped while writing.
            let too_big = |len: String| Error::InvalidInput {
                path: label(),
                detail: format!("it is {len} bytes, more than the {max_bytes} allowed here"),
            };
            let tensor_bytes = snap.model.raw_bytes;
            if tensor_bytes > max_bytes {
                return Err(too_big(tensor_bytes.to_string()));
            }
            let mut out = Capped {
                bytes: Vec::new(),
                max: max_bytes,
            };
            // Room for the file up front when it can be had; the length comes from the
            // catalog, so a failed reservation is no error (the output then grows as written).
            let _ = out.bytes.try_reserve(tensor_bytes as usize);
            progress.start("reading", tensor_bytes);
            match self.write_file(&snap, file, &mut out, &label(), progress) {
                Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::FileTooLarge => {
                    return Err(too_big("more than that".to_string()));
                }
                other => other?,
            };
            progress.finish();
            Ok(out.bytes)
        })
    }

    /// Writes `file` of `snap` into the file `handle` (at `dest`), buffered.
    fn write_file_to(
        &self,
        snap: &Snapshot,
        file: &FileRow,
        handle: File,
        dest: &Path,
        progress: &dyn Progress,
    ) -> Result<u64> {
        let mut w = BufWriter::with_capacity(1 << 20, handle);
        let written = self.write_file(snap, file, &mut w, dest, progress)?;
        w.flush().map_err(|e| Error::io(dest, e))?;
        Ok(written)
    }

    /// Writes `file` of `snap` to `w`; `dest` names the output in errors.
    fn write_file(
        &self,
        snap: &Snapshot,
        file: &FileRow,
        w: &mut (dyn Write + Send),
        dest: &Path,
        progress: &dyn Progress,
    ) -> Result<u64> {
        let what = format!("model {:?} file {:?}", snap.model.name, file.path);
        let head = self.decode_object_with(&file.object, &what, Fill::No)?;
        let io = |e| Error::io(dest, e);
        let mut written = 0u64;
        match file.kind {
            FileKind::Plain => {
                let tensors = snap.tensors_of(&file.path);
                if tensors.is_empty() {
                    w.write_all(&head).map_err(io)?;
                    written += head.len() as u64;
                    progress.advance(head.len() as u64);
                } else {
                    // A container: the skeleton's pieces spliced between the streamed tensors.
                    let sk = crate::containers::decode_checked(&head, &tensors, &what)?;
                    let mut splice = Splice::new(&sk, &mut *w);
                    self.write_tensors(&tensors, &what, &mut splice, dest, progress)?;
                    splice.finish().map_err(|e| match e {
                        neurstore_formats::Error::Io(e) => Error::io(dest, e),
                        e => StorageError::corrupt(&what, e.to_string()).into(),
                    })?;
                    written += sk.layout.file_len;
                    progress.advance(sk.layout.skeleton_len());
                }
            }
            FileKind::Safetensors => {
                let tensors = snap.tensors_of(&file.path);
                check_header(&head, &tensors, &what)?;
                w.write_all(&(head.len() as u64).to_le_bytes())
                    .map_err(io)?;
                w.write_all(&head).map_err(io)?;
                written += 8 + head.len() as u64;
                written += self.write_tensors(&tensors, &what, w, dest, progress)?;
            }
        }
        Ok(written)
    }

    /// A container file of a snapshot rebuilt in memory, byte for byte.
    pub(crate) fn container_bytes(&self, snap: &Snapshot, file: &FileRow) -> Result<Vec<u8>> {
        let what = format!("model {:?} file {:?}", snap.model.name, file.path);
        let head = self.decode_object(&file.object, &what)?;
        let tensors = snap.tensors_of(&file.path);
        let sk = crate::containers::decode_checked(&head, &tensors, &what)?;
        let len = usize::try_from(sk.layout.file_len)
            .map_err(|_| StorageError::corrupt(&what, "too large for this machine"))?;
        let mut out = Vec::with_capacity(len);
        let mut splice = Splice::new(&sk, &mut out);
        let dest = Path::new(&file.path);
        let progress = crate::progress::NoProgress;
        self.write_tensors(&tensors, &what, &mut splice, dest, &progress)?;
        splice
            .finish()
            .map_err(|e| StorageError::corrupt(&what, e.to_string()))?;
        Ok(out)
    }

    /// Loads every tensor of model `name` into memory, decoded, in file and offset order. A
    /// PyTorch checkpoint's tensors are its views, made contiguous (tied weights come once per
    /// name), not the storages they point into.
    pub fn load(&self, name: &str) -> Result<Vec<LoadedTensor>> {
        self.with_retry(|| {
            let snap = self.snapshot(name)?;
            self.check_headers(&snap)?;
            let view_files = self.view_files(&snap)?;
            let viewed: std::collections::HashSet<&str> =
                view_files.iter().map(|f| f.path.as_str()).collect();
            let mut out = snap
                .tensors
                .par_iter()
                .filter(|t| !viewed.contains(t.path.as_str()))
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
                .collect::<Result<Vec<_>>>()?;
            for file in &view_files {
                for (view, bytes) in self.materialize_views(&snap, file)? {
                    out.push(LoadedTensor {
                        file: file.path.clone(),
                        name: view.name,
                        dtype: view.element.storage_dtype(),
                        shape: view.shape,
                        data: TensorData::Decoded(bytes),
                    });
                }
            }
            // Files are listed by path: a stable sort keeps each file's tensors in order.
            out.sort_by(|a, b| a.file.cmp(&b.file));
            Ok(out)
        })
    }
}

impl Store {
    /// Writes the tensors of one file in order. Small tensors are decoded in parallel, a
    /// window at a time, into one of two reused buffers, the next window decoding while the
    /// previous one is written; large ones are streamed block by block. Bases come from the
    /// cache when there but are not added to it (a one-pass export would otherwise keep a
    /// decoded copy of the whole base model). Memory stays within two windows plus the bases
    /// of the small tensors in flight; a large tensor's base is decoded block by block too
    /// when it is a standalone object (else whole: see `stream_tensor`).
    fn write_tensors(
        &self,
        tensors: &[&TensorRow],
        what: &str,
        w: &mut (dyn Write + Send),
        dest: &Path,
        progress: &dyn Progress,
    ) -> Result<u64> {
        let mut written = 0u64;
        let (mut ready, mut spare) = (Vec::new(), Vec::new());
        let mut pending: Option<Decoded> = None;
        let write = |batch: Decoded, buf: &[u8], w: &mut (dyn Write + Send)| -> Result<u64> {
            let mut at = 0;
            let mut n = 0;
            for (t, stored) in batch.tensors.iter().zip(&batch.stored) {
                let len = t.object.raw_len as usize;
                let bytes = match stored {
                    Some(b) => &b[..],
                    None => &buf[at..at + len],
                };
                w.write_all(bytes).map_err(|e| Error::io(dest, e))?;
                if let Some(b) = stored {
                    release(b);
                }
                at += len;
                n += len as u64;
                progress.advance(len as u64);
            }
            Ok(n)
        };
        for batch in batches(tensors) {
            match batch {
                Batch::Small(group) => {
                    // Write the previous batch while this one decodes.
                    let (wrote, decoded) = rayon::join(
                        || match pending.take() {
                            Some(p) => write(p, &ready, w),
                            None => Ok(0),
                        },
                        || self.decode_batch(group, what, &mut spare),
                    );
                    written += wrote?;
                    pending = Some(decoded?);
                    std::mem::swap(&mut ready, &mut spare);
                }
                Batch::Large(t) => {
                    if let Some(p) = pending.take() {
                        written += write(p, &ready, w)?;
                    }
                    written += self.stream_tensor(t, what, &mut spare, w, dest, progress)?;
                }
            }
        }
        if let Some(p) = pending.take() {
            written += write(p, &ready, w)?;
        }
        Ok(written)
    }

    /// Decodes a batch of small tensors into `buf` (resized, reused between batches).
    fn decode_batch<'b, 'a>(
        &self,
        group: &'b [&'a TensorRow],
        what: &str,
        buf: &mut Vec<u8>,
    ) -> Result<Decoded<'b, 'a>> {
        let total: u64 = group.iter().map(|t| t.object.raw_len).sum();
        buf.resize(total as usize, 0);
        let mut slices = Vec::with_capacity(group.len());
        let mut rest = &mut buf[..];
        for t in group {
            let (head, tail) = rest.split_at_mut(t.object.raw_len as usize);
            slices.push(head);
            rest = tail;
        }
        let stored = group
            .par_iter()
            .zip(slices)
            .map(|(t, dst)| {
                let what = format!("{what} tensor {:?}", t.name);
                if t.object.codec == Codec::Raw {
                    self.decode_object(&t.object, &what).map(|d| match d {
                        TensorData::Stored(b) => Some(b),
                        TensorData::Decoded(v) => Some(BlobBytes::Owned(v)),
                    })
                } else {
                    self.decode_object_into(&t.object, &what, Fill::No, dst)
                        .map(|()| None)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Decoded {
            tensors: group,
            stored,
        })
    }

    /// Writes one large tensor: raw ones straight from the pack's map, grouped, lossless delta
    /// and bounded ones decoded `STREAM_BLOCK` bytes at a time into `buf`, anything else decoded
    /// whole. A streamed tensor's base is decoded block by block too when it is a standalone
    /// raw, grouped or bounded object (else whole, or taken from the cache), and the tensor's key
    /// is checked over the blocks as they pass: on a mismatch `get` fails and its partial output
    /// is removed.
    fn stream_tensor(
        &self,
        t: &TensorRow,
        what: &str,
        buf: &mut Vec<u8>,
        w: &mut dyn Write,
        dest: &Path,
        progress: &dyn Progress,
    ) -> Result<u64> {
        let what = format!("{what} tensor {:?}", t.name);
        let object = &t.object;
        let io = |e| Error::io(dest, e);
        let dtype = tensor_dtype(object.kind);
        // Raw tensors are written straight from the pack's map (below); the rest stream where
        // their codec decodes by ranges.
        let streamable =
            object.codec != Codec::Raw && object.codec.ranged(dtype, object.base.is_some());
        if !streamable {
            let data = self.decode_object_with(object, &what, Fill::No)?;
            w.write_all(&data).map_err(io)?;
            if let TensorData::Stored(b) = &data {
                release(b);
            }
            progress.advance(data.len() as u64);
            return Ok(data.len() as u64);
        }
        let stored = self.engine.read_blob(object, &what)?;
        let raw_len = object.raw_len;
        let corrupt =
            |e: codec::CodecError| StorageError::corrupt(&what, format!("cannot decode: {e}"));
        let ranged =
            codec::Ranged::new(object.codec, dtype, object.base.is_some(), &stored, raw_len)
                .map_err(corrupt)?;
        let block = (STREAM_BLOCK / ranged.align()).max(1) * ranged.align();
        buf.resize(block.min(raw_len as usize), 0);
        let (base_src, mut hasher) = match (object.base, object.kind) {
            (Some(base_id), ObjectKind::Tensor { dtype }) => (
                Some((base_id, self.stream_base(base_id, &what)?)),
                // Format 2 seals the base's key in the verified record: no second hash.
                (!self.engine.seals_bases()).then(|| TensorKeyHasher::new(dtype, &object.shape)),
            ),
            _ => (None, None),
        };
        let base_what = |id: i64| format!("{what} (base object {id})");
        let base_len = match &base_src {
            Some((_, StreamBase::Whole(b))) => Some(b.len() as u64),
            Some((_, StreamBase::Stored(row, _))) => Some(row.raw_len),
            None => None,
        };
        if base_len.is_some_and(|n| n != raw_len) {
            return Err(
                StorageError::corrupt(&what, "base length disagrees with the tensor").into(),
            );
        }
        let base = match &base_src {
            None => None,
            Some((_, StreamBase::Whole(b))) => Some(BaseReader::Bytes(&b[..], None)),
            Some((id, StreamBase::Stored(row, bytes))) => {
                let base_corrupt = |e: codec::CodecError| {
                    StorageError::corrupt(base_what(*id), format!("cannot decode: {e}"))
                };
                Some(match row.codec {
                    Codec::Raw => {
                        if bytes.len() as u64 != raw_len {
                            return Err(StorageError::corrupt(
                                base_what(*id),
                                "raw length disagrees with the stored bytes",
                            )
                            .into());
                        }
                        // Verified: its pages come back block by block as they are read.
                        release(bytes);
                        BaseReader::Bytes(&bytes[..], Some(bytes))
                    }
                    _ => BaseReader::Ranged(
                        codec::Ranged::new(
                            row.codec,
                            tensor_dtype(row.kind),
                            false,
                            bytes,
                            raw_len,
                        )
                        .map_err(base_corrupt)?,
                    ),
                })
            }
        };
        let (mut base_buf, mut scratch) = (Vec::new(), Vec::new());
        let mut start = 0u64;
        while start < raw_len {
            let len = (raw_len - start).min(block as u64) as usize;
            let base_range = match &base {
                Some(reader) => Some(
                    reader
                        .range(start, len, &mut base_buf, &mut scratch)
                        .map_err(|e| {
                            let id = object.base.unwrap_or_default();
                            StorageError::corrupt(base_what(id), format!("cannot decode: {e}"))
                        })?,
                ),
                None => None,
            };
            let out = &mut buf[..len];
            ranged
                .decode_range(start, base_range, out)
                .map_err(corrupt)?;
            if let Some(BaseReader::Bytes(_, Some(blob))) = &base {
                release_range(blob, start as usize..start as usize + len);
            }
            if let Some(h) = hasher.as_mut() {
                h.update(out);
            }
            w.write_all(out).map_err(io)?;
            progress.advance(len as u64);
            start += len as u64;
        }
        release(&stored);
        if let Some((_, StreamBase::Stored(_, bytes))) = &base_src {
            release(bytes);
        }
        if let Some(h) = hasher {
            check_key(object, &h.finalize(), &what)?;
        }
        Ok(raw_len)
    }
}

impl Store {
    /// Checks every stored safetensors header and skeleton of a model against the catalog's
    /// tensors, as `get` does while writing, and that every tensor belongs to one of its files: the
    /// catalog's names, paths, dtypes, shapes and order are what `load` returns.
    pub(crate) fn check_headers(&self, snap: &Snapshot) -> Result<()> {
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
        for file in crate::containers::container_files(snap) {
            let what = format!("model {:?} file {:?}", snap.model.name, file.path);
            let head = self.decode_object(&file.object, &what)?;
            let tensors = snap.tensors_of(&file.path);
            crate::containers::decode_checked(&head, &tensors, &what)?;
            listed += tensors.len();
        }
        if listed != snap.tensors.len() {
            return Err(StorageError::corrupt(
                format!("model {:?}", snap.model.name),
                "a tensor belongs to no model file of the model",
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

/// One step of a streamed export: small tensors decoded together, or one large tensor.
enum Batch<'b, 'a> {
    Small(&'b [&'a TensorRow]),
    Large(&'a TensorRow),
}

/// Cuts tensors (in file order) into batches of at most `WINDOW_BYTES` raw bytes; a tensor past
/// `WINDOW_BYTES / 2` is a batch of its own, streamed block by block where its codec allows.
fn batches<'b, 'a>(tensors: &'b [&'a TensorRow]) -> Vec<Batch<'b, 'a>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0u64);
    for (i, t) in tensors.iter().enumerate() {
        let len = t.object.raw_len;
        if len > WINDOW_BYTES / 2 || size.saturating_add(len) > WINDOW_BYTES {
            if i > start {
                out.push(Batch::Small(&tensors[start..i]));
            }
            (start, size) = (i, 0);
        }
        if len > WINDOW_BYTES / 2 {
            out.push(Batch::Large(t));
            start = i + 1;
        } else {
            size += len;
        }
    }
    if start < tensors.len() {
        out.push(Batch::Small(&tensors[start..]));
    }
    out
}

/// A batch decoded and waiting to be written: per tensor, its verified stored bytes (raw codec,
/// written straight from the pack's map) or `None` (decoded into the batch buffer, in order).
struct Decoded<'b, 'a> {
    tensors: &'b [&'a TensorRow],
    stored: Vec<Option<BlobBytes>>,
}

/// Where the base ranges of a streamed tensor come from.
enum BaseReader<'s> {
    /// Bytes held whole: decoded, or a raw object's stored bytes (then also its blob, whose
    /// mapped pages are released block by block).
    Bytes(&'s [u8], Option<&'s BlobBytes>),
    /// A standalone grouped or bounded object, decoded by ranges.
    Ranged(codec::Ranged<'s>),
}

impl BaseReader<'_> {
    /// Base bytes `start..start + len`, decoded into `buf` when not held whole; `scratch` takes
    /// the chunks around a range not aligned to a grouped base's chunks.
    fn range<'b>(
        &'b self,
        start: u64,
        len: usize,
        buf: &'b mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> std::result::Result<&'b [u8], codec::CodecError> {
        match self {
            BaseReader::Bytes(b, _) => Ok(&b[start as usize..start as usize + len]),
            BaseReader::Ranged(r) => {
                buf.resize(len, 0);
                r.decode_unaligned(start, &mut buf[..len], scratch)?;
                Ok(&buf[..len])
            }
        }
    }
}

/// An in-memory output that refuses to grow past `max` bytes (`ErrorKind::FileTooLarge`).
struct Capped {
    bytes: Vec<u8>,
    max: u64,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len() as u64 + buf.len() as u64 > self.max {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "the output outgrew its limit",
            ));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
