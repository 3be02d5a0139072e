//! Model files stored as a skeleton and tensors (ONNX, PyTorch zip, GGUF, ONNX external data):
//! the skeleton checked against the catalog's tensor rows, and the model's tensors as their
//! format defines them (a PyTorch checkpoint's views rather than its storage ranges).
//!
//! **Invariant:** a plain file with tensor rows is a container file: its object is a skeleton
//! whose ranges are exactly those rows, in order (name, stored dtype and shape, length). A file
//! without tensors is stored whole (`put` never stores a container without a range).

use std::collections::HashMap;

use neurstore_core::dtype::DType;
use neurstore_formats::container::materialize;
use neurstore_formats::skeleton::{self, Skeleton};
use neurstore_formats::{Container, ElementType, View};
use neurstore_storage::StorageError;
use neurstore_storage::catalog::{FileKind, FileRow, ObjectKind, TensorRow};

use crate::Store;
use crate::error::Result;
use crate::snapshot::Snapshot;

/// Decodes a stored skeleton and checks its ranges against the file's tensor rows.
pub(crate) fn decode_checked<'a>(
    object: &'a [u8],
    rows: &[&TensorRow],
    what: &str,
) -> Result<Skeleton<'a>> {
    let sk = skeleton::decode(object)
        .map_err(|e| StorageError::corrupt(what, format!("stored skeleton: {e}")))?;
    check_layout(&sk.layout, rows, what)?;
    Ok(sk)
}

/// The dtype and shape a range is stored under: GGML block data as `U8 [bytes]`.
pub(crate) fn stored_form(t: &neurstore_formats::Tensor) -> (DType, Vec<u64>) {
    match t.element {
        ElementType::Dense(d) => (d, t.shape.clone()),
        ElementType::Ggml(_) => (DType::U8, vec![t.byte_len()]),
    }
}

fn check_layout(layout: &Container, rows: &[&TensorRow], what: &str) -> Result<()> {
    let bad = |detail: String| StorageError::corrupt(what, detail);
    if layout.tensors.len() != rows.len() {
        return Err(bad(format!(
            "the skeleton holds {} tensors, the catalog {}",
            layout.tensors.len(),
            rows.len()
        ))
        .into());
    }
    for (t, row) in layout.tensors.iter().zip(rows) {
        let (dtype, shape) = stored_form(t);
        let agrees = t.name == row.name
            && row.object.kind == (ObjectKind::Tensor { dtype })
            && row.object.shape == shape
            && row.object.raw_len == t.byte_len();
        if !agrees {
            return Err(bad(format!(
                "tensor {:?} of the skeleton disagrees with catalog tensor {:?}",
                t.name, row.name
            ))
            .into());
        }
    }
    Ok(())
}

/// True when a layout's model tensors are exactly its ranges (every format but PyTorch; a
/// PyTorch checkpoint with one storage per tensor too).
fn views_are_ranges(layout: &Container) -> bool {
    layout.views.is_empty()
        || (layout.views.len() == layout.tensors.len()
            && layout.views.iter().enumerate().all(|(i, v)| {
                let t = &layout.tensors[v.tensor];
                v.tensor == i
                    && v.name == t.name
                    && v.byte_offset == 0
                    && v.strides.is_none()
                    && v.element == t.element
                    && v.shape == t.shape
            }))
}

/// A file of a model whose tensors are views into its stored ranges.
pub(crate) struct ViewFile {
    /// The file.
    pub path: String,
    /// Its model tensors.
    pub views: Vec<View>,
}

impl Store {
    /// The files of a model that are containers, with their decoded layouts, in file order.
    pub(crate) fn container_layouts(&self, snap: &Snapshot) -> Result<Vec<(String, Container)>> {
        let mut out = Vec::new();
        for file in container_files(snap) {
            let what = format!("model {:?} file {:?}", snap.model.name, file.path);
            let head = self.decode_object(&file.object, &what)?;
            let sk = decode_checked(&head, &snap.tensors_of(&file.path), &what)?;
            out.push((file.path.clone(), sk.layout));
        }
        Ok(out)
    }

    /// The container files whose model tensors are not their ranges (PyTorch views).
    pub(crate) fn view_files(&self, snap: &Snapshot) -> Result<Vec<ViewFile>> {
        Ok(self
            .container_layouts(snap)?
            .into_iter()
            .filter(|(_, layout)| !views_are_ranges(layout))
            .map(|(path, layout)| ViewFile {
                path,
                views: layout.views,
            })
            .collect())
    }

    /// The contiguous bytes of every view of `file`, each range decoded once.
    pub(crate) fn materialize_views(
        &self,
        snap: &Snapshot,
        file: &ViewFile,
    ) -> Result<Vec<(View, Vec<u8>)>> {
        let rows = snap.tensors_of(&file.path);
        let mut decoded: HashMap<usize, crate::decode::TensorData> = HashMap::new();
        let mut out = Vec::with_capacity(file.views.len());
        for v in &file.views {
            let what = format!(
                "model {:?} file {:?} tensor {:?}",
                snap.model.name, file.path, v.name
            );
            let row = rows
                .get(v.tensor)
                .ok_or_else(|| StorageError::corrupt(&what, "view of a missing range"))?;
            if let std::collections::hash_map::Entry::Vacant(slot) = decoded.entry(v.tensor) {
                slot.insert(self.decode_object(&row.object, &what)?);
            }
            let bytes = materialize(v, &decoded[&v.tensor])
                .map_err(|e| StorageError::corrupt(&what, e.to_string()))?;
            out.push((v.clone(), bytes.into_owned()));
        }
        Ok(out)
    }
}

/// The files of a snapshot stored as containers (plain files with tensors).
pub(crate) fn container_files(snap: &Snapshot) -> impl Iterator<Item = &FileRow> {
    let with_tensors: std::collections::HashSet<&str> =
        snap.tensors.iter().map(|t| t.path.as_str()).collect();
    snap.files
        .iter()
        .filter(move |f| f.kind == FileKind::Plain && with_tensors.contains(f.path.as_str()))
}

/// Largest ONNX file whose graph `info` decodes (protobuf's own limit is 2 GiB): the graph is
/// read from the skeleton with zeros in place of the weights, so this bounds that buffer.
const MAX_GRAPH_FILE: u64 = 2 << 30;

/// What `info` shows of a file stored as a container.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FormatInfo {
    /// The file's format ("ONNX", "PyTorch zip", "GGUF", "ONNX external data").
    pub format: String,
    /// The file's length as imported.
    pub file_bytes: u64,
    /// Tensor ranges stored as tensors.
    pub ranges: u64,
    /// The model's tensors when they are views into the ranges (PyTorch), else 0.
    pub views: u64,
    /// Lines describing the file: how it was split, and for ONNX its graph.
    pub details: Vec<String>,
    /// What only the skeleton holds (a conversion to another format drops it).
    pub skeleton_only: Vec<String>,
    /// The graph of an ONNX model.
    pub graph: Option<GraphInfo>,
}

/// An ONNX model's graph, as `info` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GraphInfo {
    /// IR version.
    pub ir_version: i64,
    /// Producer name and version.
    pub producer: String,
    /// Opsets imported: (domain, version).
    pub opsets: Vec<(String, i64)>,
    /// Inputs that are not initializers.
    pub inputs: Vec<GraphValue>,
    /// Outputs.
    pub outputs: Vec<GraphValue>,
    /// Nodes of the main graph per operator.
    pub operators: std::collections::BTreeMap<String, usize>,
}

/// A graph input or output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GraphValue {
    /// Name.
    pub name: String,
    /// Element type (`float`, `int64`, ...).
    pub element: String,
    /// Dimensions: numbers, symbolic names or `?`.
    pub dims: Vec<String>,
}

/// Describes a stored skeleton (already checked against its rows).
pub(crate) fn describe(sk: &Skeleton<'_>) -> FormatInfo {
    let layout = &sk.layout;
    let mut info = FormatInfo {
        format: layout.format.name().to_string(),
        file_bytes: layout.file_len,
        ranges: layout.tensors.len() as u64,
        views: layout.views.len() as u64,
        details: Vec::new(),
        skeleton_only: layout.skeleton_only.clone(),
        graph: None,
    };
    if layout.format == neurstore_formats::Format::Onnx
        && layout.file_len <= MAX_GRAPH_FILE
        && let Some(parsed) = onnx_with_zeros(sk)
    {
        add_graph(&mut info, parsed);
        return info;
    }
    info.details.push(format!(
        "{}: {} tensor ranges, {} views, skeleton {} bytes",
        layout.format.name(),
        layout.tensors.len(),
        layout.views.len(),
        layout.skeleton_len()
    ));
    info.details
        .extend(layout.notes.iter().map(|n| format!("note: {n}")));
    info
}

/// The ONNX file rebuilt with zeros for its tensors, parsed: the graph without the weights.
fn onnx_with_zeros(sk: &Skeleton<'_>) -> Option<neurstore_formats::Parsed> {
    let mut file = Vec::with_capacity(usize::try_from(sk.layout.file_len).ok()?);
    let mut splice = skeleton::Splice::new(sk, &mut file);
    let zeros = vec![0u8; 1 << 16];
    let mut left: u64 = sk.layout.tensors.iter().map(|t| t.byte_len()).sum();
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        std::io::Write::write_all(&mut splice, &zeros[..n]).ok()?;
        left -= n as u64;
    }
    splice.finish().ok()?;
    neurstore_formats::parse(&file, Some("onnx")).ok()
}

/// What `info` shows of an ONNX file stored whole (all its weights in external data files, or
/// none): its graph, parsed from the stored bytes. `None` when it is not a readable ONNX model.
pub(crate) fn describe_plain_onnx(file: &[u8]) -> Option<FormatInfo> {
    if file.len() as u64 > MAX_GRAPH_FILE {
        return None;
    }
    let parsed = neurstore_formats::parse(file, Some("onnx")).ok()?;
    if parsed.container.format != neurstore_formats::Format::Onnx {
        return None;
    }
    let mut info = FormatInfo {
        format: parsed.container.format.name().to_string(),
        file_bytes: file.len() as u64,
        skeleton_only: parsed.container.skeleton_only.clone(),
        ..Default::default()
    };
    add_graph(&mut info, parsed);
    Some(info)
}

fn add_graph(info: &mut FormatInfo, parsed: neurstore_formats::Parsed) {
    info.details = parsed.describe();
    if let neurstore_formats::Summary::Onnx(g) = parsed.summary {
        let values = |v: Vec<neurstore_formats::onnx::info::ValueSummary>| {
            v.into_iter()
                .map(|v| GraphValue {
                    name: v.name,
                    element: v.element,
                    dims: v.dims,
                })
                .collect()
        };
        info.graph = Some(GraphInfo {
            ir_version: g.ir_version,
            producer: g.producer,
            opsets: g.opsets,
            inputs: values(g.inputs),
            outputs: values(g.outputs),
            operators: g.op_counts,
        });
    }
}
