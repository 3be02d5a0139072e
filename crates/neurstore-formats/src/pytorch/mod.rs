//! PyTorch checkpoints in the `torch.save` zip format (`.pt`, `.pth`, `pytorch_model.bin`): the
//! zip headers and the pickle are the skeleton; the storages (`data/<key>` entries, stored
//! uncompressed) hold the tensors. The pickle is read by a restricted interpreter
//! ([`pickle`]) that executes nothing.
//!
//! A storage that holds exactly one tensor becomes that tensor. Views of a shared storage that
//! are contiguous and do not partly overlap split it into one range each (identical views are
//! aliases of one range); storages with partly overlapping views stay one flat range, and bytes
//! no view references become flat ranges too. Non-contiguous views are recorded with their
//! strides, to be made contiguous when the model is converted or loaded.

pub mod pickle;
pub mod pickle_writer;
pub mod zip;

use std::collections::{BTreeMap, HashMap, HashSet};

use neurstore_core::dtype::{DType, element_count};

use crate::container::{Container, Format, Origin, Tensor, View};
use crate::element::ElementType;
use crate::error::{Error, Result, corrupt};
use pickle::{Id, Pickle, TensorRef, Value};

const FORMAT: &str = "PyTorch";
/// Deepest nesting of containers walked in a checkpoint's pickle.
pub const MAX_DEPTH: usize = 64;

/// What `info` shows of a PyTorch checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyTorchInfo {
    /// The archive's top folder (`archive`, or the name given to `torch.save`).
    pub archive: String,
    /// Zip entries.
    pub entries: usize,
    /// Bytes of `data.pkl`.
    pub pickle_len: u64,
    /// Storages referenced.
    pub storages: usize,
    /// Tensors (state_dict entries).
    pub tensors: usize,
    /// Tensors that are aliases of another (same bytes, e.g. tied weights).
    pub aliases: usize,
    /// Views that are not contiguous.
    pub non_contiguous: usize,
    /// Values in the pickle that are not tensors (epoch counters, config, ...).
    pub non_tensor_values: usize,
}

/// The error for a legacy (pre-1.6, non-zip) checkpoint, saying how to convert it.
pub fn legacy_refusal() -> Error {
    Error::Refused {
        format: FORMAT,
        reason: "this is a legacy (non-zip) PyTorch checkpoint, whose tensors sit inside the pickle stream; \
                 convert it to the zip format first, e.g. \
                 python -c \"import torch; torch.save(torch.load('in.pth', weights_only=True), 'out.pth')\" \
                 (PyTorch >= 1.6 writes the zip format)"
            .into(),
    }
}

/// Parses a `torch.save` zip archive held in memory.
pub fn parse(file: &[u8]) -> Result<(Container, PyTorchInfo)> {
    parse_with(file, zip::Crc::Verify)
}

/// [`parse`], with the CRC-32 check of the zip entries optional (see [`zip::Crc`]).
pub fn parse_with(file: &[u8], crc: zip::Crc) -> Result<(Container, PyTorchInfo)> {
    let archive = zip::read_with(file, crc)?;
    let prefix = archive_prefix(&archive)?;
    check_byteorder(file, &archive, &prefix)?;
    let pkl = archive
        .get(&format!("{prefix}data.pkl"))
        .expect("checked by archive_prefix");
    if !pkl.is_stored() {
        return Err(Error::Unsupported {
            format: FORMAT,
            detail: "a compressed data.pkl".into(),
        });
    }
    let program = pickle::interpret(&file[pkl.data_start as usize..pkl.data_end as usize])?;
    let found = collect(&program)?;
    let storages = storage_ranges(&archive, &prefix, &found.tensors)?;
    let split = split_storages(&prefix, &storages, &found.tensors)?;
    let info = PyTorchInfo {
        archive: prefix.trim_end_matches('/').to_string(),
        entries: archive.entries.len(),
        pickle_len: pkl.data_end - pkl.data_start,
        storages: storages.len(),
        tensors: found.tensors.len(),
        aliases: split.aliases,
        non_contiguous: split
            .views
            .iter()
            .filter(|(v, _)| v.strides.is_some())
            .count(),
        non_tensor_values: found.other_values,
    };
    let container = build_container(file.len() as u64, &archive, &prefix, split, &found, &info)?;
    Ok((container, info))
}

fn archive_prefix(archive: &zip::Archive) -> Result<String> {
    let pkl = archive
        .entries
        .iter()
        .find(|e| e.name.ends_with("/data.pkl") && e.name.matches('/').count() == 1)
        .ok_or_else(|| {
            corrupt(
                FORMAT,
                "archive",
                "no <name>/data.pkl entry (not a torch.save archive?)",
            )
        })?;
    let prefix = pkl.name.trim_end_matches("data.pkl").to_string();
    if let Some(e) = archive
        .entries
        .iter()
        .find(|e| !e.name.starts_with(&prefix))
    {
        return Err(corrupt(
            FORMAT,
            &e.name,
            format!("entry outside the archive folder {prefix:?}"),
        ));
    }
    Ok(prefix)
}

fn check_byteorder(file: &[u8], archive: &zip::Archive, prefix: &str) -> Result<()> {
    match archive.get(&format!("{prefix}byteorder")) {
        Some(e)
            if e.is_stored() && &file[e.data_start as usize..e.data_end as usize] != b"little" =>
        {
            Err(Error::Unsupported {
                format: FORMAT,
                detail: "a big-endian checkpoint".into(),
            })
        }
        _ => Ok(()),
    }
}

struct Found {
    /// (state_dict path, tensor) in pickle order; aliases appear once per name.
    tensors: Vec<(String, TensorRef)>,
    other_values: usize,
    dropped_empty: Vec<String>,
}

/// Walks the pickle's result and names every tensor by its path of keys.
fn collect(p: &Pickle) -> Result<Found> {
    let mut found = Found {
        tensors: vec![],
        other_values: 0,
        dropped_empty: vec![],
    };
    let mut walk = Walker {
        p,
        on_path: HashSet::new(),
        seen: HashSet::new(),
        names: HashSet::new(),
        found: &mut found,
    };
    walk.visit(p.root, String::new(), 0)?;
    Ok(found)
}

struct Walker<'p, 'f> {
    p: &'p Pickle,
    on_path: HashSet<Id>,
    seen: HashSet<Id>,
    names: HashSet<String>,
    found: &'f mut Found,
}

impl Walker<'_, '_> {
    fn visit(&mut self, id: Id, path: String, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(corrupt(
                FORMAT,
                &path,
                format!("containers nested deeper than {MAX_DEPTH}"),
            ));
        }
        let children: Vec<(String, Id)> = match &self.p.values[id] {
            Value::Tensor(t) => {
                if !self.names.insert(path.clone()) {
                    return Err(corrupt(FORMAT, &path, "two tensors have this name"));
                }
                if element_count(&t.size) == Some(0) {
                    self.found.dropped_empty.push(path);
                } else {
                    self.found.tensors.push((path, t.clone()));
                }
                return Ok(());
            }
            Value::Dict(items) => items
                .iter()
                .map(|&(k, v)| Ok((self.key(k, &path)?, v)))
                .collect::<Result<_>>()?,
            Value::List(items) | Value::Tuple(items) => items
                .iter()
                .enumerate()
                .map(|(i, &v)| (i.to_string(), v))
                .collect(),
            _ => {
                self.found.other_values += 1;
                return Ok(());
            }
        };
        if self.on_path.contains(&id) {
            return Err(corrupt(
                FORMAT,
                &path,
                "the pickle's containers form a cycle",
            ));
        }
        if !self.seen.insert(id) {
            // A container reached twice is walked once: sharing cannot blow the walk up.
            return Ok(());
        }
        self.on_path.insert(id);
        for (k, child) in children {
            let child_path = if path.is_empty() {
                k
            } else {
                format!("{path}.{k}")
            };
            self.visit(child, child_path, depth + 1)?;
        }
        self.on_path.remove(&id);
        Ok(())
    }

    fn key(&self, k: Id, path: &str) -> Result<String> {
        match &self.p.values[k] {
            Value::Str(s) => Ok(s.clone()),
            Value::Int(i) => Ok(i.to_string()),
            _ => Err(corrupt(
                FORMAT,
                path,
                "a dict key that is neither a string nor an integer",
            )),
        }
    }
}

/// A referenced storage and where its bytes are.
struct Storage {
    dtype: DType,
    start: u64,
    end: u64,
}

fn storage_ranges(
    archive: &zip::Archive,
    prefix: &str,
    tensors: &[(String, TensorRef)],
) -> Result<BTreeMap<String, Storage>> {
    let mut out: BTreeMap<String, Storage> = BTreeMap::new();
    for (name, t) in tensors {
        if let Some(s) = out.get(&t.storage) {
            if s.dtype != t.dtype {
                return Err(corrupt(
                    FORMAT,
                    name,
                    format!("storage {} is used with two dtypes", t.storage),
                ));
            }
            continue;
        }
        let entry_name = format!("{prefix}data/{}", t.storage);
        let e = archive.get(&entry_name).ok_or_else(|| {
            corrupt(
                FORMAT,
                name,
                format!("storage entry {entry_name:?} is missing"),
            )
        })?;
        if !e.is_stored() {
            return Err(Error::Unsupported {
                format: FORMAT,
                detail: format!("compressed storage {entry_name:?}"),
            });
        }
        let len = t.dtype.byte_len(t.storage_numel);
        if len != Some(e.size) {
            return Err(corrupt(
                FORMAT,
                &entry_name,
                format!(
                    "{} {} elements do not fill its {} bytes",
                    t.storage_numel, t.dtype, e.size
                ),
            ));
        }
        out.insert(
            t.storage.clone(),
            Storage {
                dtype: t.dtype,
                start: e.data_start,
                end: e.data_end,
            },
        );
    }
    Ok(out)
}

/// Row-major contiguity (dimensions of size 1 may have any stride).
fn is_contiguous(size: &[u64], stride: &[u64]) -> bool {
    let mut expected = 1u64;
    for (&n, &s) in size.iter().zip(stride).rev() {
        if n != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(n);
    }
    true
}

/// Byte extent of a view inside its storage, checked against the storage.
fn extent(name: &str, t: &TensorRef, esize: u64) -> Result<(u64, u64, bool)> {
    let bad = |d: &str| corrupt(FORMAT, name, d.to_string());
    let contiguous = is_contiguous(&t.size, &t.stride);
    let mut last = 0u64;
    for (&n, &s) in t.size.iter().zip(&t.stride) {
        last = (n - 1)
            .checked_mul(s)
            .and_then(|x| x.checked_add(last))
            .ok_or_else(|| bad("extent overflows"))?;
    }
    let end_elem = t
        .offset
        .checked_add(last)
        .and_then(|x| x.checked_add(1))
        .ok_or_else(|| bad("extent overflows"))?;
    if end_elem > t.storage_numel {
        return Err(bad(&format!(
            "view ends at element {end_elem} of a {}-element storage",
            t.storage_numel
        )));
    }
    Ok((t.offset * esize, end_elem * esize, contiguous))
}

struct Split {
    tensors: Vec<Tensor>,
    /// Views with absolute byte starts, resolved to tensor indices later.
    views: Vec<(View, u64)>,
    aliases: usize,
    unreferenced: usize,
}

fn split_storages(
    prefix: &str,
    storages: &BTreeMap<String, Storage>,
    tensors: &[(String, TensorRef)],
) -> Result<Split> {
    let mut by_storage: HashMap<&str, Vec<(usize, u64, u64, bool)>> = HashMap::new();
    for (i, (name, t)) in tensors.iter().enumerate() {
        let esize = t.dtype.bits() / 8;
        let (s, e, c) = extent(name, t, esize)?;
        by_storage
            .entry(t.storage.as_str())
            .or_default()
            .push((i, s, e, c));
    }
    let mut split = Split {
        tensors: vec![],
        views: vec![],
        aliases: 0,
        unreferenced: 0,
    };
    for (key, st) in storages {
        let mut uses = by_storage.remove(key.as_str()).unwrap_or_default();
        uses.sort_by_key(|u| (u.1, u.2, u.0));
        // Aliases: views with exactly the bytes, shape and strides of an earlier one.
        let mut distinct = HashSet::with_capacity(uses.len());
        split.aliases += uses
            .iter()
            .filter(|&&(i, s, e, _)| {
                !distinct.insert((s, e, &tensors[i].1.size, &tensors[i].1.stride))
            })
            .count();
        let partial_overlap = uses
            .windows(2)
            .any(|w| w[1].1 < w[0].2 && (w[1].1, w[1].2) != (w[0].1, w[0].2));
        let esize = st.dtype.bits() / 8;
        let flat = |start: u64, end: u64| Tensor {
            name: format!("{prefix}data/{key}@{start}"),
            element: ElementType::Dense(st.dtype),
            shape: vec![(end - start) / esize],
            start: st.start + start,
            end: st.start + end,
            origin: Origin::Storage(key.clone()),
        };
        if partial_overlap {
            split.tensors.push(flat(0, st.end - st.start));
        } else {
            let mut pos = 0u64;
            for &(i, s, e, contiguous) in &uses {
                if s < pos {
                    continue; // an alias: the same extent as the previous view
                }
                if s > pos {
                    split.tensors.push(flat(pos, s));
                    split.unreferenced += 1;
                }
                let (name, t) = &tensors[i];
                split.tensors.push(if contiguous {
                    Tensor {
                        name: name.clone(),
                        element: ElementType::Dense(t.dtype),
                        shape: t.size.clone(),
                        start: st.start + s,
                        end: st.start + e,
                        origin: Origin::Plain,
                    }
                } else {
                    flat(s, e)
                });
                pos = e;
            }
            if st.end - st.start > pos {
                split.tensors.push(flat(pos, st.end - st.start));
                split.unreferenced += 1;
            }
        }
        for &(i, s, _, contiguous) in &uses {
            let (name, t) = &tensors[i];
            let view = View {
                name: name.clone(),
                element: ElementType::Dense(t.dtype),
                shape: t.size.clone(),
                tensor: usize::MAX,
                byte_offset: 0,
                strides: (!contiguous).then(|| t.stride.clone()),
            };
            split.views.push((view, st.start + s));
        }
    }
    Ok(split)
}

fn build_container(
    file_len: u64,
    archive: &zip::Archive,
    prefix: &str,
    mut split: Split,
    found: &Found,
    info: &PyTorchInfo,
) -> Result<Container> {
    // Stored storage entries the pickle never references are still tensor bytes.
    let used: HashSet<u64> = split.tensors.iter().map(|t| t.start).collect();
    for e in &archive.entries {
        let is_storage = e
            .name
            .strip_prefix(prefix)
            .is_some_and(|n| n.starts_with("data/"));
        if is_storage
            && e.is_stored()
            && e.size > 0
            && !used.contains(&e.data_start)
            && !split
                .tensors
                .iter()
                .any(|t| t.start <= e.data_start && e.data_start < t.end)
        {
            split.tensors.push(Tensor {
                name: e.name.clone(),
                element: ElementType::Dense(DType::U8),
                shape: vec![e.size],
                start: e.data_start,
                end: e.data_end,
                origin: Origin::Storage(e.name.clone()),
            });
            split.unreferenced += 1;
        }
    }
    split.tensors.sort_by_key(|t| t.start);
    let starts: Vec<u64> = split.tensors.iter().map(|t| t.start).collect();
    let views = split
        .views
        .into_iter()
        .map(|(mut v, abs)| {
            let i = starts.partition_point(|&s| s <= abs).saturating_sub(1);
            v.tensor = i;
            v.byte_offset = abs - split.tensors[i].start;
            v
        })
        .collect();
    let mut skeleton_only = vec![];
    if found.other_values > 0 {
        skeleton_only.push(format!(
            "{} non-tensor values of the checkpoint's pickle",
            found.other_values
        ));
    }
    if !found.dropped_empty.is_empty() {
        skeleton_only.push(format!(
            "{} empty tensors: {}",
            found.dropped_empty.len(),
            found.dropped_empty.join(", ")
        ));
    }
    let mut notes = vec![];
    if info.aliases > 0 {
        notes.push(format!(
            "{} tensors share their bytes with another (tied weights)",
            info.aliases
        ));
    }
    if info.non_contiguous > 0 {
        notes.push(format!(
            "{} non-contiguous views, made contiguous when converted or loaded",
            info.non_contiguous
        ));
    }
    if split.unreferenced > 0 {
        notes.push(format!(
            "{} storage ranges no tensor references, kept as flat tensors",
            split.unreferenced
        ));
    }
    let container = Container {
        format: Format::PyTorchZip,
        file_len,
        tensors: split.tensors,
        views,
        skeleton_only,
        notes,
    };
    container.validate()?;
    Ok(container)
}

#[cfg(test)]
mod tests;
