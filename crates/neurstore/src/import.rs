//! Reading a model from disk: a safetensors file or a Hugging Face style directory, validated
//! strictly before anything is written to the store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use memmap2::Mmap;
use neurstore_core::safetensors::{self, Header};

use crate::error::{Error, Result};

/// Largest number of files taken from one model directory.
const MAX_FILES: usize = 100_000;

/// A model read from disk, every file mapped and every safetensors file validated.
pub struct SourceModel {
    /// "safetensors" for a single file, "directory" for a model directory.
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

/// Reads `path`: a `.safetensors` file or a model directory. Inside a directory, symbolic
/// links are followed only where they stay inside it (or, in a Hugging Face cache snapshot,
/// point into the same repository's `blobs/`), unless `follow_symlinks`; special files (fifos,
/// devices, sockets) are refused.
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
        let file = read_file(path, name.to_string(), true)?;
        Ok(SourceModel {
            format: "safetensors",
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

fn read_file(disk_path: &Path, rel_path: String, safetensors: bool) -> Result<SourceFile> {
    let file = File::open(disk_path).map_err(|e| Error::io(disk_path, e))?;
    let len = file.metadata().map_err(|e| Error::io(disk_path, e))?.len();
    let bytes = if len == 0 {
        FileBytes::Empty
    } else {
        // SAFETY: the map is read-only; a file changed under us during import can at worst yield
        // bytes that fail validation or a checksum, never memory unsafety in our code.
        FileBytes::Mapped(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(disk_path, e))?)
    };
    let header = if safetensors {
        Some(
            safetensors::parse(&bytes).map_err(|source| Error::BadSafetensors {
                path: disk_path.to_path_buf(),
                source,
            })?,
        )
    } else {
        None
    };
    Ok(SourceFile {
        rel_path,
        disk_path: disk_path.to_path_buf(),
        bytes,
        header,
    })
}

fn read_directory(root: &Path, follow_symlinks: bool) -> Result<SourceModel> {
    let mut walk = Walk::new(root, follow_symlinks)?;
    let mut rel_paths = Vec::new();
    walk.collect(root, &mut rel_paths)?;
    rel_paths.sort();
    if !rel_paths.iter().any(|p| p.ends_with(".safetensors")) {
        return Err(Error::invalid(
            root,
            "the directory holds no .safetensors file; convert the weights to safetensors first",
        ));
    }
    let files = rel_paths
        .into_iter()
        .map(|rel| {
            let is_st = rel.ends_with(".safetensors");
            read_file(&root.join(&rel), rel, is_st)
        })
        .collect::<Result<Vec<_>>>()?;
    for index in files
        .iter()
        .filter(|f| f.rel_path.ends_with(".safetensors.index.json"))
    {
        check_shard_index(index, &files)?;
    }
    Ok(SourceModel {
        format: "directory",
        files,
    })
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

/// Checks a `*.safetensors.index.json`: every tensor it maps exists in the shard it names, and
/// every tensor of those shards is mapped.
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
        .filter_map(|f| {
            let h = f.header.as_ref()?;
            Some((
                f.rel_path.as_str(),
                h.tensors.iter().map(|t| t.name.as_str()).collect(),
            ))
        })
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

/// Builds a one-file model from tensors in memory: a safetensors file assembled in memory and
/// validated by the same parser as files from disk.
pub fn from_tensors(
    tensors: &[crate::put::TensorInput],
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
        }],
    })
}
