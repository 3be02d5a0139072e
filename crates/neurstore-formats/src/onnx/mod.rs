//! ONNX models: every `TensorProto` of the graph (initializers, also in subgraphs, and tensor
//! attributes such as `Constant` values) whose bytes are the little-endian tensor becomes a
//! tensor range; the rest of the protobuf is the skeleton, and the graph is the architecture.
//!
//! A tensor is a range when its values are in `raw_data`, or in a packed fixed-width typed field
//! (`float_data` for FLOAT, `double_data` for DOUBLE): those payloads are exactly the
//! little-endian values. Varint typed fields (`int32_data`, `int64_data`, `uint64_data`), strings,
//! sub-byte and FNUZ types stay inside the skeleton: their bytes are an encoding, not the tensor,
//! and exporters only use them for small constants. Tensors in external data files are listed as
//! [`ExternalRef`]s; [`external_container`] splits such a file.

pub mod info;
#[doc(hidden)]
pub mod sample;
pub mod wire;

use std::collections::HashSet;

use neurstore_core::dtype::{DType, element_count};

use crate::container::{Container, Format, Origin, Tensor};
use crate::element::ElementType;
use crate::error::{Error, Result, corrupt};
use wire::{Fields, Value};

const FORMAT: &str = "ONNX";
/// Deepest nesting of subgraphs (`If`, `Loop`, `Scan` bodies) walked.
pub const MAX_GRAPH_DEPTH: u32 = 32;
/// Most dimensions a tensor may have.
pub const MAX_RANK: usize = 64;

/// A tensor whose bytes live in an external data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalRef {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<u64>,
    /// Path of the data file relative to the model's directory, checked by [`check_location`].
    pub location: String,
    /// First byte in the data file.
    pub offset: u64,
    /// Byte length.
    pub length: u64,
}

/// An ONNX model split into skeleton and tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxModel {
    /// The split.
    pub container: Container,
    /// Tensors stored in external data files.
    pub external: Vec<ExternalRef>,
}

/// Parses a model (`ModelProto`) held in memory.
pub fn parse(file: &[u8]) -> Result<OnnxModel> {
    let mut walk = Walk::default();
    let mut saw_graph = false;
    for field in Fields::new(file, 0, file.len()) {
        let field = field?;
        if let (7, Value::Bytes { start, end }) = (field.number, field.value) {
            if saw_graph {
                return Err(corrupt(FORMAT, "ModelProto", "more than one graph"));
            }
            saw_graph = true;
            walk.graph(file, (start, end), 0, "")?;
        }
    }
    if !saw_graph {
        return Err(corrupt(
            FORMAT,
            "ModelProto",
            "no graph (is this an ONNX model?)",
        ));
    }
    walk.finish(file.len() as u64)
}

#[derive(Default)]
struct Walk {
    tensors: Vec<Tensor>,
    external: Vec<ExternalRef>,
    names: HashSet<String>,
    kept: Vec<String>,
    typed: usize,
    nodes: usize,
}

/// A `TensorProto` as the walker sees it.
#[derive(Default)]
struct Proto {
    name: String,
    data_type: u64,
    dims: Vec<u64>,
    raw: Option<(usize, usize)>,
    packed_fixed: Vec<(u32, usize, usize)>,
    other_data: bool,
    external: Vec<(String, String)>,
    data_location: u64,
}

impl Walk {
    fn graph(
        &mut self,
        buf: &[u8],
        (start, end): (usize, usize),
        depth: u32,
        scope: &str,
    ) -> Result<()> {
        if depth > MAX_GRAPH_DEPTH {
            return Err(corrupt(
                FORMAT,
                format!("graph at byte {start}"),
                "subgraphs nested too deep",
            ));
        }
        for field in Fields::new(buf, start, end) {
            let field = field?;
            match (field.number, field.value) {
                (1, Value::Bytes { start, end }) => self.node(buf, (start, end), depth, scope)?,
                (5, Value::Bytes { start, end }) => {
                    let proto = tensor_proto(buf, start, end)?;
                    let name = self.scoped(&proto.name, scope);
                    self.add(proto, name)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A subgraph's tensor keeps its own name unless an outer one took it (the two branches of
    /// an `If` often hold initializers of the same name): then it is prefixed by its scope.
    fn scoped(&self, name: &str, scope: &str) -> String {
        if name.is_empty() || !self.names.contains(name) {
            name.to_string()
        } else {
            format!("{scope}{name}")
        }
    }

    fn node(
        &mut self,
        buf: &[u8],
        (start, end): (usize, usize),
        depth: u32,
        scope: &str,
    ) -> Result<()> {
        self.nodes += 1;
        let mut node_name = None;
        let mut first_output = None;
        let mut attributes = Vec::new();
        for field in Fields::new(buf, start, end) {
            let field = field?;
            match (field.number, field.value) {
                (2, Value::Bytes { start, end }) if first_output.is_none() => {
                    first_output = Some(wire::string(buf, start, end)?);
                }
                (3, Value::Bytes { start, end }) => {
                    node_name = Some(wire::string(buf, start, end)?)
                }
                (5, Value::Bytes { start, end }) => attributes.push((start, end)),
                _ => {}
            }
        }
        let output = first_output.unwrap_or_default();
        let label = node_name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| output.clone());
        let node_scope = format!("{scope}{label}/");
        for range in attributes {
            self.attribute(buf, range, depth, &output, &node_scope)?;
        }
        Ok(())
    }

    fn attribute(
        &mut self,
        buf: &[u8],
        (start, end): (usize, usize),
        depth: u32,
        output: &str,
        node_scope: &str,
    ) -> Result<()> {
        let mut protos = Vec::new();
        let mut attr_name = String::new();
        for field in Fields::new(buf, start, end) {
            let field = field?;
            match (field.number, field.value) {
                (1, Value::Bytes { start, end }) => attr_name = wire::string(buf, start, end)?,
                (5 | 10, Value::Bytes { start, end }) => {
                    protos.push(tensor_proto(buf, start, end)?)
                }
                (6 | 11, Value::Bytes { start, end }) => {
                    let scope = format!("{node_scope}{attr_name}/");
                    self.graph(buf, (start, end), depth + 1, &scope)?;
                }
                _ => {}
            }
        }
        let many = protos.len() > 1;
        for (i, proto) in protos.into_iter().enumerate() {
            // A Constant's value is usually unnamed: it takes the node's output name.
            let name = match (proto.name.is_empty(), many) {
                (false, _) => self.scoped(&proto.name, node_scope),
                (true, false) if !output.is_empty() => output.to_string(),
                (true, _) => format!("{output}/{attr_name}/{i}"),
            };
            self.add(proto, name)?;
        }
        Ok(())
    }

    fn add(&mut self, proto: Proto, name: String) -> Result<()> {
        let dtype = onnx_dtype(proto.data_type);
        if proto.data_location == 1 {
            let dtype = dtype.ok_or_else(|| {
                corrupt(
                    FORMAT,
                    &name,
                    format!("external data of unsupported type {}", proto.data_type),
                )
            })?;
            self.external
                .push(external_ref(name, dtype, proto.dims, &proto.external)?);
            return Ok(());
        }
        let Some(dtype) = dtype.filter(|_| !name.is_empty() && !self.names.contains(&name)) else {
            if proto.raw.is_some() || !proto.packed_fixed.is_empty() || proto.other_data {
                self.kept.push(name);
            }
            return Ok(());
        };
        let expected = element_count(&proto.dims)
            .and_then(|n| dtype.byte_len(n))
            .ok_or_else(|| corrupt(FORMAT, &name, format!("shape {:?} overflows", proto.dims)))?;
        let (range, origin) = match (&proto.raw, proto.packed_fixed.as_slice(), proto.other_data) {
            (Some(r), [], false) => (*r, Origin::Plain),
            (None, [(field, s, e)], false) if fixed_field_matches(*field, dtype) => (
                (*s, *e),
                Origin::TypedField(
                    if *field == 4 {
                        "float_data"
                    } else {
                        "double_data"
                    }
                    .into(),
                ),
            ),
            (None, [], false) if expected == 0 => return Ok(()),
            _ => {
                self.kept.push(name);
                return Ok(());
            }
        };
        if (range.1 - range.0) as u64 != expected {
            return Err(corrupt(
                FORMAT,
                &name,
                format!(
                    "shape {:?} of {dtype} needs {expected} bytes, the data holds {}",
                    proto.dims,
                    range.1 - range.0
                ),
            ));
        }
        if expected == 0 {
            return Ok(());
        }
        if matches!(origin, Origin::TypedField(_)) {
            self.typed += 1;
        }
        self.names.insert(name.clone());
        self.tensors.push(Tensor {
            name,
            element: ElementType::Dense(dtype),
            shape: proto.dims,
            start: range.0 as u64,
            end: range.1 as u64,
            origin,
        });
        Ok(())
    }

    fn finish(mut self, file_len: u64) -> Result<OnnxModel> {
        self.tensors.sort_by_key(|t| t.start);
        let mut skeleton_only = vec![format!(
            "ONNX graph ({} nodes): the architecture",
            self.nodes
        )];
        let mut notes = Vec::new();
        if !self.kept.is_empty() {
            skeleton_only.push(format!(
                "{} tensors kept inside the skeleton (varint-typed, string, sub-byte or unnamed): {}",
                self.kept.len(),
                preview(&self.kept)
            ));
        }
        if self.typed > 0 {
            notes.push(format!(
                "{} tensors read from packed float_data/double_data fields",
                self.typed
            ));
        }
        let container = Container {
            format: Format::Onnx,
            file_len,
            tensors: self.tensors,
            views: vec![],
            skeleton_only,
            notes,
        };
        container.validate()?;
        Ok(OnnxModel {
            container,
            external: self.external,
        })
    }
}

fn preview(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(5)
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > 5 {
        s.push_str(", ...");
    }
    s
}

fn fixed_field_matches(field: u32, dtype: DType) -> bool {
    matches!((field, dtype), (4, DType::F32) | (10, DType::F64))
}

/// The dtype of an ONNX `TensorProto.DataType` the store keeps as a tensor.
pub fn onnx_dtype(code: u64) -> Option<DType> {
    Some(match code {
        1 => DType::F32,
        2 => DType::U8,
        3 => DType::I8,
        4 => DType::U16,
        5 => DType::I16,
        6 => DType::I32,
        7 => DType::I64,
        9 => DType::Bool,
        10 => DType::F16,
        11 => DType::F64,
        12 => DType::U32,
        13 => DType::U64,
        14 => DType::C64,
        16 => DType::BF16,
        17 => DType::F8E4M3,
        19 => DType::F8E5M2,
        23 => DType::F4,
        24 => DType::F8E8M0,
        _ => return None,
    })
}

fn tensor_proto(buf: &[u8], start: usize, end: usize) -> Result<Proto> {
    let mut p = Proto::default();
    for field in Fields::new(buf, start, end) {
        let field = field?;
        let bad = |detail: &str| {
            corrupt(
                FORMAT,
                format!(
                    "TensorProto field {} at byte {}",
                    field.number, field.tag_at
                ),
                detail,
            )
        };
        match (field.number, field.value) {
            (1, Value::Varint(d)) => push_dim(&mut p.dims, d).map_err(|_| bad("bad dims"))?,
            (1, Value::Bytes { start, end }) => {
                let mut pos = start;
                while pos < end {
                    let d = wire::read_varint(buf, &mut pos, end)?;
                    push_dim(&mut p.dims, d).map_err(|_| bad("bad dims"))?;
                }
            }
            (2, Value::Varint(t)) => p.data_type = t,
            (8, Value::Bytes { start, end }) => p.name = wire::string(buf, start, end)?,
            (9, Value::Bytes { .. }) if p.raw.is_some() => {
                return Err(bad("raw_data appears twice"));
            }
            (9, Value::Bytes { start, end }) => p.raw = Some((start, end)),
            (4 | 10, Value::Bytes { start, end }) => {
                p.packed_fixed.push((field.number, start, end))
            }
            (3 | 4 | 5 | 6 | 7 | 10 | 11, _) => p.other_data = true,
            (13, Value::Bytes { start, end }) => p.external.push(string_entry(buf, start, end)?),
            (14, Value::Varint(l)) => p.data_location = l,
            _ => {}
        }
    }
    Ok(p)
}

fn push_dim(dims: &mut Vec<u64>, d: u64) -> std::result::Result<(), ()> {
    // int64 on the wire: a negative dimension reads as a huge u64.
    if dims.len() >= MAX_RANK || d > i64::MAX as u64 {
        return Err(());
    }
    dims.push(d);
    Ok(())
}

fn string_entry(buf: &[u8], start: usize, end: usize) -> Result<(String, String)> {
    let (mut key, mut value) = (String::new(), String::new());
    for field in Fields::new(buf, start, end) {
        match field? {
            wire::Field {
                number: 1,
                value: Value::Bytes { start, end },
                ..
            } => key = wire::string(buf, start, end)?,
            wire::Field {
                number: 2,
                value: Value::Bytes { start, end },
                ..
            } => value = wire::string(buf, start, end)?,
            _ => {}
        }
    }
    Ok((key, value))
}

fn external_ref(
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    entries: &[(String, String)],
) -> Result<ExternalRef> {
    let bad = |detail: String| corrupt(FORMAT, format!("external data of {name:?}"), detail);
    let mut seen = HashSet::new();
    let (mut location, mut offset, mut length) = (None, 0u64, None);
    for (k, v) in entries {
        if !seen.insert(k.as_str()) {
            return Err(bad(format!("key {k:?} appears twice")));
        }
        let number = || {
            (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .then(|| v.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| bad(format!("{k} {v:?} is not a non-negative integer")))
        };
        match k.as_str() {
            "location" => location = Some(check_location(v)?),
            "offset" => offset = number()?,
            "length" => length = Some(number()?),
            _ => {}
        }
    }
    let location = location.ok_or_else(|| bad("no location".into()))?;
    let expected = element_count(&shape)
        .and_then(|n| dtype.byte_len(n))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    if length.is_some_and(|l| l != expected) {
        return Err(bad(format!(
            "length {length:?} but shape {shape:?} of {dtype} needs {expected} bytes"
        )));
    }
    offset
        .checked_add(expected)
        .ok_or_else(|| bad("offset overflows".into()))?;
    Ok(ExternalRef {
        name,
        dtype,
        shape,
        location,
        offset,
        length: expected,
    })
}

/// Checks that an external data location is a plain relative path that stays inside the
/// model's directory: no absolute path, drive, `..`, backslash or NUL. Returns it with `.`
/// components removed. The caller must still refuse symlinks that lead outside the directory.
pub fn check_location(location: &str) -> Result<String> {
    let refuse = |why: &str| Error::Refused {
        format: FORMAT,
        reason: format!("external data location {location:?} {why}"),
    };
    if location.is_empty() || location.contains(['\\', '\0']) {
        return Err(refuse("is empty or holds a backslash or NUL"));
    }
    if location.starts_with('/') || location.as_bytes().get(1) == Some(&b':') {
        return Err(refuse(
            "is absolute; it must be relative to the model's directory",
        ));
    }
    let mut parts = Vec::new();
    for part in location.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(refuse("leaves the model's directory")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(refuse("names no file"));
    }
    Ok(parts.join("/"))
}

/// Splits an external data file of `file_len` bytes: the ranges `refs` (those whose location is
/// this file) point at become tensors, everything else skeleton.
pub fn external_container(file_len: u64, refs: &[&ExternalRef]) -> Result<Container> {
    let mut tensors = Vec::with_capacity(refs.len());
    for r in refs {
        let end = r
            .offset
            .checked_add(r.length)
            .filter(|&e| e <= file_len)
            .ok_or_else(|| {
                corrupt(
                    FORMAT,
                    format!("external data of {:?}", r.name),
                    format!("range runs past the {file_len}-byte file {:?}", r.location),
                )
            })?;
        if r.length > 0 {
            tensors.push(Tensor {
                name: r.name.clone(),
                element: ElementType::Dense(r.dtype),
                shape: r.shape.clone(),
                start: r.offset,
                end,
                origin: Origin::Plain,
            });
        }
    }
    tensors.sort_by_key(|t| t.start);
    let container = Container {
        format: Format::OnnxExternalData,
        file_len,
        tensors,
        views: vec![],
        skeleton_only: vec![],
        notes: vec![],
    };
    container.validate()?;
    Ok(container)
}

#[cfg(test)]
mod tests;
