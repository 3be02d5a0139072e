//! Reading a model from disk: one model file (safetensors, ONNX, a PyTorch zip checkpoint, GGUF)
//! or a directory holding any mix of them with other files, validated strictly before anything
//! is written to the store. Formats other than safetensors are split by `neurstore_formats` into
//! a skeleton (stored as the file's object) and tensor byte ranges (stored as tensors).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use memmap2::Mmap;
use neurstore_core::dtype::DType;
use neurstore_core::safetensors::{self, Header};
use neurstore_formats::{Container, ElementType, Format};
use neurstore_storage::catalog::FileKind;
use rayon::prelude::*;

use crate::error::{Error, Result};

/// Largest number of files taken from one model directory.
const MAX_FILES: usize = 100_000;

/// A model read from disk, every file mapped and every safetensors file validated.
pub struct SourceModel {
    /// The single file's format ([`single_file_format`]), or "directory" for a model directory.
    pub format: &'static str,
    /// The files, sorted by relative path.
    pub files: Vec<SourceFile>,
}

/// One input file.
pub struct SourceFile {
    /// Path relative to the model root, '/'-separated.
    pub rel_path: String,
    /// Where it was read from.
    pub disk_path: PathBuf,
    /// Its bytes.
    pub bytes: FileBytes,
    /// The parsed header, for safetensors files.
    pub header: Option<Header>,
    /// The split, for the other model formats (never with `header`).
    pub container: Option<ContainerFile>,
}

/// A model file of another format than safetensors, split into skeleton and tensor ranges.
///
/// **Invariant:** the container holds at least one tensor (a file without any is stored plain),
/// so in the catalog a plain file with tensors is exactly a file whose object is a skeleton.
pub struct ContainerFile {
    /// The layout: ranges, views, what only the skeleton holds.
    pub container: Container,
    /// `container.skeleton_bytes(file)`: the file's stored object.
    pub skeleton: Vec<u8>,
}

/// One tensor of an input file, as it is stored.
pub struct SourceTensor<'a> {
    /// Name, unique within the file.
    pub name: &'a str,
    /// Element type (`U8` for GGML block-quantized data).
    pub dtype: DType,
    /// Shape (`[byte length]` for GGML block-quantized data, whose true type and shape the
    /// skeleton keeps).
    pub shape: Vec<u64>,
    /// Its bytes.
    pub bytes: &'a [u8],
}

/// Model formats a single-file model can have (`SourceModel::format`); any other value means a
/// directory.
pub const SINGLE_FILE_FORMATS: [&str; 4] = ["safetensors", "onnx", "pytorch", "gguf"];

/// The `SourceModel::format` of a single file of `format`.
pub fn single_file_format(format: Format) -> &'static str {
    match format {
        Format::Safetensors => "safetensors",
        Format::Onnx | Format::OnnxExternalData => "onnx",
        Format::PyTorchZip => "pytorch",
        _ => "gguf",
    }
}

/// A file's bytes: mapped, or empty (an empty file cannot be mapped).
pub enum FileBytes {
    /// Memory-mapped.
    Mapped(Mmap),
    /// A zero-length file.
    Empty,
    /// Bytes assembled in memory.
    Owned(Vec<u8>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Empty => &[],
            FileBytes::Owned(v) => v,
        }
    }
}

impl SourceFile {
    /// How the catalog lists the file: a container file is listed plain, its tensors beside it.
    pub fn kind(&self) -> FileKind {
        if self.header.is_some() {
            FileKind::Safetensors
        } else {
            FileKind::Plain
        }
    }

    /// The bytes stored as the file's object: a safetensors header, a skeleton, or the file.
    pub fn object_bytes(&self) -> &[u8] {
        match (&self.header, &self.container) {
            (Some(_), _) => self.header_json(),
            (None, Some(c)) => &c.skeleton,
            (None, None) => &self.bytes,
        }
    }

    /// The file's tensors in offset order, as stored.
    pub fn tensors(&self) -> Vec<SourceTensor<'_>> {
        if let Some(h) = &self.header {
            return h
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| SourceTensor {
                    name: &t.name,
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    bytes: self.tensor_bytes(i),
                })
                .collect();
        }
        let Some(c) = &self.container else {
            return Vec::new();
        };
        c.container
            .tensors
            .iter()
            .map(|t| SourceTensor {
                name: &t.name,
                dtype: t.element.storage_dtype(),
                shape: match t.element {
                    ElementType::Dense(_) => t.shape.clone(),
                    _ => vec![t.byte_len()],
                },
                bytes: &self.bytes[t.start as usize..t.end as usize],
            })
            .collect()
    }

    /// Names of the model's tensors in this file, as a shard index lists them: the views of a
    /// PyTorch checkpoint, the tensors of any other model file.
    fn model_tensor_names(&self) -> HashSet<&str> {
        if let Some(h) = &self.header {
            return h.tensors.iter().map(|t| t.name.as_str()).collect();
        }
        match &self.container {
            Some(c) if !c.container.views.is_empty() => {
                c.container.views.iter().map(|v| v.name.as_str()).collect()
            }
            Some(c) => c
                .container
                .tensors
                .iter()
                .map(|t| t.name.as_str())
                .collect(),
            None => HashSet::new(),
        }
    }

    /// The header JSON bytes of a safetensors file.
    pub fn header_json(&self) -> &[u8] {
        let h = self.header.as_ref().expect("safetensors file");
        &self.bytes[8..h.data_start as usize]
    }

    /// The bytes of the tensor at `index` in offset order.
    pub fn tensor_bytes(&self, index: usize) -> &[u8] {
        let h = self.header.as_ref().expect("safetensors file");
        let t = &h.tensors[index];
        &self.bytes[(h.data_start + t.start) as usize..(h.data_start + t.end) as usize]
    }
}

/// Reads `path`: a model file or a model directory. Inside a directory, symbolic links are
/// followed only where they stay inside it (or, in a Hugging Face cache snapshot, point into the
/// same repository's `blobs/`), unless `follow_symlinks`; special files (fifos, devices, sockets)
/// are refused.
pub fn read_source(path: &Path, follow_symlinks: bool) -> Result<SourceModel> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        read_directory(path, follow_symlinks)
    } else {
        check_regular(path, &meta)?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::invalid(path, "file name is not valid UTF-8"))?;
        crate::paths::validate_stored_path(name)
            .map_err(|e| Error::invalid(path, format!("cannot be stored under its name: {e}")))?;
        let mut file = map_file(path, name.to_string())?;
        let role = role_of(&file, true)?;
        let external = split(&mut file, role)?;
        if !external.is_empty() {
            let mut locations: Vec<&str> = external.iter().map(|r| r.location.as_str()).collect();
            locations.dedup();
            return Err(Error::invalid(
                path,
                format!(
                    "keeps tensors in external data files ({}): put the directory holding the model and its data files",
                    locations.join(", ")
                ),
            ));
        }
        let format = match role {
            Role::Model(f) => single_file_format(f),
            _ => "safetensors",
        };
        Ok(SourceModel {
            format,
            files: vec![file],
        })
    }
}

/// Refuses anything but a regular file: reading a fifo blocks, a device never ends.
fn check_regular(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let what = if t.is_file() {
        return Ok(());
    } else if t.is_fifo() {
        "a fifo"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    };
    Err(Error::invalid(
        path,
        format!("is {what}; only regular files and directories can be imported"),
    ))
}

/// Maps a file (nothing parsed yet).
fn map_file(disk_path: &Path, rel_path: String) -> Result<SourceFile> {
    let file = File::open(disk_path).map_err(|e| Error::io(disk_path, e))?;
    let len = file.metadata().map_err(|e| Error::io(disk_path, e))?.len();
    let bytes = if len == 0 {
        FileBytes::Empty
    } else {
        // SAFETY: the map is read-only; a file changed under us during import can at worst yield
        // bytes that fail validation or a checksum, never memory unsafety in our code.
        FileBytes::Mapped(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(disk_path, e))?)
    };
    Ok(SourceFile {
        rel_path,
        disk_path: disk_path.to_path_buf(),
        bytes,
        header: None,
        container: None,
    })
}

/// How an input file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A safetensors file (strict header parser).
    Safetensors,
    /// A model file of another format, split into skeleton and tensors.
    Model(Format),
    /// Any other file, stored whole.
    Plain,
}

/// Extensions of PyTorch checkpoints: a zip is one, a pickle a refused legacy one, anything
/// else (inside a directory) a plain file.
const TORCH_EXTENSIONS: [&str; 4] = ["pt", "pth", "bin", "ckpt"];

/// The one rule for which reader a file gets. Inside a directory the extension selects:
/// `.safetensors`, `.onnx`, `.gguf`, and `.pt`/`.pth`/`.bin`/`.ckpt` holding a zip (a pickle is a
/// refused legacy checkpoint); everything else is plain. A single file must be a model file:
/// its bytes decide, the extension breaks ties (ONNX has no magic number).
fn role_of(file: &SourceFile, single: bool) -> Result<Role> {
    let ext = file
        .rel_path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase());
    let bytes: &[u8] = &file.bytes;
    let bad = |e| bad_model(&file.disk_path, e);
    match ext.as_deref() {
        Some("safetensors") => return Ok(Role::Safetensors),
        Some("onnx") => return Ok(Role::Model(Format::Onnx)),
        Some("gguf") => return Ok(Role::Model(Format::Gguf)),
        Some(e) if TORCH_EXTENSIONS.contains(&e) => {
            return match neurstore_formats::detect(bytes, None) {
                Ok(Format::PyTorchZip) => Ok(Role::Model(Format::PyTorchZip)),
                Err(e @ neurstore_formats::Error::Refused { .. }) => Err(bad(e)),
                Ok(Format::Safetensors) if single => Ok(Role::Safetensors),
                Ok(f) if single => Ok(Role::Model(f)),
                Err(e) if single => Err(bad(e)),
                _ => Ok(Role::Plain),
            };
        }
        _ => {}
    }
    if !single {
        return Ok(Role::Plain);
    }
    match neurstore_formats::detect(bytes, ext.as_deref()) {
        Ok(Format::Safetensors) => Ok(Role::Safetensors),
        Ok(f) => Ok(Role::Model(f)),
        Err(e @ neurstore_formats::Error::Refused { .. }) => Err(bad(e)),
        // Not recognized: the safetensors parser says precisely what is wrong.
        Err(_) => Ok(Role::Safetensors),
    }
}

fn bad_model(path: &Path, source: neurstore_formats::Error) -> Error {
    Error::BadModelFile {
        path: path.to_path_buf(),
        source,
    }
}

/// Parses `file` as `role` says; returns the external data an ONNX file points to.
fn split(file: &mut SourceFile, role: Role) -> Result<Vec<neurstore_formats::onnx::ExternalRef>> {
    match role {
        Role::Plain => Ok(Vec::new()),
        Role::Safetensors => {
            let header =
                safetensors::parse(&file.bytes).map_err(|source| Error::BadSafetensors {
                    path: file.disk_path.clone(),
                    source,
                })?;
            file.header = Some(header);
            Ok(Vec::new())
        }
        Role::Model(format) => {
            let bytes: &[u8] = &file.bytes;
            let bad = |e| bad_model(&file.disk_path, e);
            let parsed = match format {
                Format::Onnx => neurstore_formats::parse(bytes, Some("onnx")),
                _ => neurstore_formats::parse(bytes, None),
            }
            .map_err(bad)?;
            if parsed.container.format != format {
                return Err(Error::invalid(
                    &file.disk_path,
                    format!(
                        "its name says {} but it holds a {} file",
                        format.name(),
                        parsed.container.format.name()
                    ),
                ));
            }
            file.container = contained(parsed.container, bytes).map_err(bad)?;
            Ok(parsed.external)
        }
    }
}

/// The container file of `bytes` split as `container`, or `None` when it holds no tensor range
/// (the file is then stored plain).
fn contained(
    container: Container,
    bytes: &[u8],
) -> neurstore_formats::Result<Option<ContainerFile>> {
    if container.tensors.is_empty() {
        return Ok(None);
    }
    let skeleton = container.skeleton_bytes(bytes)?;
    Ok(Some(ContainerFile {
        container,
        skeleton,
    }))
}

fn read_directory(root: &Path, follow_symlinks: bool) -> Result<SourceModel> {
    let mut walk = Walk::new(root, follow_symlinks)?;
    let mut rel_paths = Vec::new();
    walk.collect(root, &mut rel_paths)?;
    rel_paths.sort();
    let mut files = rel_paths
        .into_iter()
        .map(|rel| map_file(&root.join(&rel), rel))
        .collect::<Result<Vec<_>>>()?;
    let roles = files
        .iter()
        .map(|f| role_of(f, false))
        .collect::<Result<Vec<_>>>()?;
    let external = files
        .par_iter_mut()
        .zip(&roles)
        .map(|(f, role)| split(f, *role))
        .collect::<Result<Vec<_>>>()?;
    split_external_data(&mut files, &roles, external)?;
    if !files
        .iter()
        .any(|f| f.header.is_some() || f.container.is_some())
    {
        return Err(Error::invalid(
            root,
            "the directory holds no model file (.safetensors, .onnx, .gguf, or a PyTorch zip .bin/.pt/.pth with tensors)",
        ));
    }
    for index in files.iter().filter(|f| {
        f.rel_path.ends_with(".safetensors.index.json") || f.rel_path.ends_with(".bin.index.json")
    }) {
        check_shard_index(index, &files)?;
    }
    Ok(SourceModel {
        format: "directory",
        files,
    })
}

/// Splits the data files ONNX models of the directory keep tensors in: each location must be a
/// plain relative path to a file of the directory (links leaving it were refused by the walk)
/// that is no model file itself.
fn split_external_data(
    files: &mut [SourceFile],
    roles: &[Role],
    external: Vec<Vec<neurstore_formats::onnx::ExternalRef>>,
) -> Result<()> {
    let index: HashMap<String, usize> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.rel_path.clone(), i))
        .collect();
    let mut by_file: BTreeMap<usize, Vec<neurstore_formats::onnx::ExternalRef>> = BTreeMap::new();
    for (i, refs) in external.into_iter().enumerate() {
        let model = &files[i];
        let dir = model
            .rel_path
            .rsplit_once('/')
            .map(|(d, _)| format!("{d}/"))
            .unwrap_or_default();
        for r in refs {
            let location = neurstore_formats::onnx::check_location(&r.location)
                .map_err(|e| bad_model(&model.disk_path, e))?;
            let rel = format!("{dir}{location}");
            let Some(&j) = index.get(&rel) else {
                return Err(Error::invalid(
                    &model.disk_path,
                    format!(
                        "keeps tensor {:?} in {location:?}, which is not in the model directory",
                        r.name
                    ),
                ));
            };
            if roles[j] != Role::Plain {
                return Err(Error::invalid(
                    &files[j].disk_path,
                    format!(
                        "is a model file and also external data of {}",
                        model.rel_path
                    ),
                ));
            }
            by_file.entry(j).or_default().push(r);
        }
    }
    for (j, mut refs) in by_file {
        // Two models of the directory may share one data file: each range is one tensor.
        refs.sort_by(|a, b| (a.offset, a.length, &a.name).cmp(&(b.offset, b.length, &b.name)));
        refs.dedup_by(|a, b| a.offset == b.offset && a.length == b.length && a.name == b.name);
        let file = &mut files[j];
        let bad = |e| bad_model(&file.disk_path, e);
        let refs: Vec<&_> = refs.iter().collect();
        let container = neurstore_formats::onnx::external_container(file.bytes.len() as u64, &refs)
            .map_err(bad)?;
        file.container = contained(container, &file.bytes).map_err(bad)?;
    }
    Ok(())
}

/// A walk of a model directory: which symbolic links it may follow, and the directories
/// already entered (a link back up must not loop).
struct Walk {
    /// The directory as given (paths are made relative to it).
    root: PathBuf,
    /// The directory, resolved.
    real_root: PathBuf,
    /// For a Hugging Face cache snapshot (`models--ORG--NAME/snapshots/REV`), the repository's
    /// `blobs/` folder, where its links point.
    hf_blobs: Option<PathBuf>,
    follow_symlinks: bool,
    entered: HashSet<PathBuf>,
}

impl Walk {
    fn new(root: &Path, follow_symlinks: bool) -> Result<Self> {
        let real_root = std::fs::canonicalize(root).map_err(|e| Error::io(root, e))?;
        Ok(Walk {
            root: root.to_path_buf(),
            hf_blobs: hf_blobs_of(&real_root),
            real_root,
            follow_symlinks,
            entered: HashSet::new(),
        })
    }

    fn collect(&mut self, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        let real = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
        if !self.entered.insert(real) {
            return Err(Error::invalid(
                dir,
                "is reached twice through symbolic links (a loop?); remove the link",
            ));
        }
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let path = entry.path();
            let mut meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
            if meta.file_type().is_symlink() {
                self.check_link(&path)?;
                meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
            }
            if meta.is_dir() {
                self.collect(&path, out)?;
            } else {
                check_regular(&path, &meta)?;
                out.push(relative_path(&self.root, &path)?);
                if out.len() > MAX_FILES {
                    return Err(Error::invalid(dir, format!("more than {MAX_FILES} files")));
                }
            }
        }
        Ok(())
    }

    /// A link is followed when it resolves inside the directory, into a Hugging Face
    /// snapshot's blobs, or anywhere with `--follow-symlinks`.
    fn check_link(&self, link: &Path) -> Result<()> {
        let target = std::fs::canonicalize(link).map_err(|e| Error::io(link, e))?;
        let inside = target.starts_with(&self.real_root)
            || self
                .hf_blobs
                .as_ref()
                .is_some_and(|b| target.starts_with(b));
        if inside || self.follow_symlinks {
            return Ok(());
        }
        Err(Error::invalid(
            link,
            format!(
                "is a symbolic link to {}, outside the model directory; pass --follow-symlinks to read it anyway",
                target.display()
            ),
        ))
    }
}

/// `REPO/blobs` when `snapshot` is `.../models--ORG--NAME/snapshots/REV` (also `datasets--`
/// and `spaces--` repositories).
fn hf_blobs_of(snapshot: &Path) -> Option<PathBuf> {
    let snapshots = snapshot.parent()?;
    let repo = snapshots.parent()?;
    let repo_name = repo.file_name()?.to_str()?;
    let is_repo = ["models--", "datasets--", "spaces--"]
        .iter()
        .any(|p| repo_name.starts_with(p));
    (snapshots.file_name()? == "snapshots" && is_repo).then(|| repo.join("blobs"))
}

fn relative_path(root: &Path, path: &Path) -> Result<String> {
    let rel = path.strip_prefix(root).expect("walked below root");
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(p) => parts.push(
                p.to_str()
                    .ok_or_else(|| Error::invalid(path, "path is not valid UTF-8"))?
                    .to_string(),
            ),
            _ => return Err(Error::invalid(path, "unexpected path component")),
        }
    }
    let rel = parts.join("/");
    crate::paths::validate_stored_path(&rel)
        .map_err(|e| Error::invalid(path, format!("cannot be stored under its path: {e}")))?;
    Ok(rel)
}

/// Checks a shard index (`*.safetensors.index.json`, `pytorch_model.bin.index.json`): every
/// tensor it maps exists in the shard it names, and every tensor of those shards is mapped.
fn check_shard_index(index: &SourceFile, files: &[SourceFile]) -> Result<()> {
    let bad = |detail: String| Error::invalid(&index.disk_path, detail);
    let json: serde_json::Value =
        serde_json::from_slice(&index.bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("has no \"weight_map\" object".into()))?;
    let dir = index
        .rel_path
        .rsplit_once('/')
        .map(|(d, _)| format!("{d}/"))
        .unwrap_or_default();
    let shards: HashMap<&str, HashSet<&str>> = files
        .iter()
        .filter(|f| f.header.is_some() || f.container.is_some())
        .map(|f| (f.rel_path.as_str(), f.model_tensor_names()))
        .collect();
    let mut mapped: BTreeMap<String, HashSet<&str>> = BTreeMap::new();
    for (tensor, shard) in map {
        let shard = shard
            .as_str()
            .ok_or_else(|| bad(format!("shard of {tensor:?} is not a string")))?;
        let shard_path = format!("{dir}{shard}");
        let names = shards.get(shard_path.as_str()).ok_or_else(|| {
            bad(format!(
                "maps {tensor:?} to {shard:?}, which is not in the directory"
            ))
        })?;
        if !names.contains(tensor.as_str()) {
            return Err(bad(format!(
                "maps {tensor:?} to {shard:?}, which has no such tensor"
            )));
        }
        mapped
            .entry(shard_path)
            .or_default()
            .insert(tensor.as_str());
    }
    for (shard, names) in &mapped {
        let missing = shards[shard.as_str()].iter().find(|n| !names.contains(*n));
        if let Some(n) = missing {
            return Err(bad(format!("does not map tensor {n:?} of {shard}")));
        }
    }
    Ok(())
}

/// A tensor given in memory to [`crate::Store::put_tensors`].
#[derive(Debug, Clone, Copy)]
pub struct TensorInput<'a> {
    /// Tensor name (unique within the model).
    pub name: &'a str,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: &'a [u64],
    /// Little-endian element bytes; the length must match dtype and shape.
    pub data: &'a [u8],
}

/// Builds a one-file model from tensors in memory: a safetensors file assembled in memory and
/// validated by the same parser as files from disk.
pub fn from_tensors(
    tensors: &[TensorInput],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<SourceModel> {
    let path = Path::new("model.safetensors");
    let spec: Vec<_> = tensors
        .iter()
        .map(|t| (t.name.to_string(), t.dtype, t.shape.to_vec()))
        .collect();
    let (header, infos) =
        safetensors::build_header(&spec, metadata).map_err(|source| Error::BadSafetensors {
            path: path.to_path_buf(),
            source,
        })?;
    let data_len: u64 = infos.last().map_or(0, |t| t.end);
    let mut bytes = Vec::with_capacity(8 + header.len() + data_len as usize);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&header);
    for (t, info) in tensors.iter().zip(&infos) {
        if t.data.len() as u64 != info.byte_len() {
            return Err(Error::invalid(
                path,
                format!(
                    "tensor {:?}: {} bytes given, dtype and shape need {}",
                    t.name,
                    t.data.len(),
                    info.byte_len()
                ),
            ));
        }
        bytes.extend_from_slice(t.data);
    }
    let header = safetensors::parse(&bytes).map_err(|source| Error::BadSafetensors {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(SourceModel {
        format: "safetensors",
        files: vec![SourceFile {
            rel_path: "model.safetensors".to_string(),
            disk_path: path.to_path_buf(),
            bytes: FileBytes::Owned(bytes),
            header: Some(header),
            container: None,
        }],
    })
}
