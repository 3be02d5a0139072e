//! The graph of an ONNX model as the architecture: inputs, outputs, opsets and operator counts,
//! decoded with prost.
//!
//! The messages below are the subset of `onnx.proto` (ONNX, Apache-2.0, Copyright (c) ONNX
//! Project Contributors) that `info` needs, with the field numbers of the official schema.
//! Fields left out (initializers, attributes, ...) are skipped by the decoder without being
//! copied, so decoding the graph never duplicates the weights in memory.

use std::collections::BTreeMap;

use prost::Message;

use crate::error::{Result, corrupt};

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(string, tag = "2")]
    producer_name: String,
    #[prost(string, tag = "3")]
    producer_version: String,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<OperatorSetIdProto>,
}

#[derive(Clone, PartialEq, Message)]
struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(int64, tag = "2")]
    version: i64,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(string, tag = "7")]
    domain: String,
}

#[derive(Clone, PartialEq, Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeProto {
    #[prost(message, optional, tag = "1")]
    tensor_type: Option<TensorTypeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    elem_type: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
struct Dimension {
    #[prost(int64, optional, tag = "1")]
    dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    dim_param: Option<String>,
}

/// A graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueSummary {
    /// Name.
    pub name: String,
    /// Element type name (`float`, `int64`, ...), or `?` when not a tensor.
    pub element: String,
    /// Dimensions: numbers, symbolic names, or `?`.
    pub dims: Vec<String>,
}

/// What `info` shows of an ONNX model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnnxInfo {
    /// IR version.
    pub ir_version: i64,
    /// Producer name and version.
    pub producer: String,
    /// Opsets imported: (domain, version); the default domain is "ai.onnx".
    pub opsets: Vec<(String, i64)>,
    /// Graph inputs that are not initializers.
    pub inputs: Vec<ValueSummary>,
    /// Graph outputs.
    pub outputs: Vec<ValueSummary>,
    /// Nodes of the main graph per operator (`domain::op` outside the default domain).
    pub op_counts: BTreeMap<String, usize>,
}

/// Decodes the graph's description. `initializers` are left out of the inputs (older exporters
/// list every weight as an input too).
pub fn info(file: &[u8], initializers: &dyn Fn(&str) -> bool) -> Result<OnnxInfo> {
    let model =
        ModelProto::decode(file).map_err(|e| corrupt("ONNX", "ModelProto", e.to_string()))?;
    let graph = model.graph.unwrap_or_default();
    let mut op_counts = BTreeMap::new();
    for n in &graph.node {
        let key = match n.domain.as_str() {
            "" | "ai.onnx" => n.op_type.clone(),
            d => format!("{d}::{}", n.op_type),
        };
        *op_counts.entry(key).or_insert(0) += 1;
    }
    Ok(OnnxInfo {
        ir_version: model.ir_version,
        producer: format!("{} {}", model.producer_name, model.producer_version)
            .trim()
            .to_string(),
        opsets: model
            .opset_import
            .iter()
            .map(|o| {
                let d = if o.domain.is_empty() {
                    "ai.onnx"
                } else {
                    &o.domain
                };
                (d.to_string(), o.version)
            })
            .collect(),
        inputs: graph
            .input
            .iter()
            .filter(|v| !initializers(&v.name))
            .map(summary)
            .collect(),
        outputs: graph.output.iter().map(summary).collect(),
        op_counts,
    })
}

fn summary(v: &ValueInfoProto) -> ValueSummary {
    let tensor = v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
    ValueSummary {
        name: v.name.clone(),
        element: tensor.map_or("?".into(), |t| elem_name(t.elem_type).into()),
        dims: tensor
            .and_then(|t| t.shape.as_ref())
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match (&d.dim_value, &d.dim_param) {
                        (Some(v), _) => v.to_string(),
                        (None, Some(p)) if !p.is_empty() => p.clone(),
                        _ => "?".into(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn elem_name(code: i32) -> &'static str {
    const NAMES: [&str; 25] = [
        "undefined",
        "float",
        "uint8",
        "int8",
        "uint16",
        "int16",
        "int32",
        "int64",
        "string",
        "bool",
        "float16",
        "double",
        "uint32",
        "uint64",
        "complex64",
        "complex128",
        "bfloat16",
        "float8e4m3fn",
        "float8e4m3fnuz",
        "float8e5m2",
        "float8e5m2fnuz",
        "uint4",
        "int4",
        "float4e2m1",
        "float8e8m0",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("?")
}
