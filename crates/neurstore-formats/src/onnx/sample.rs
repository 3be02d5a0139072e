//! Builds small ONNX protobufs by hand, for tests and fuzz seeds.

use super::wire::{put_bytes, put_varint, put_varint_field};

/// A `TensorProto` with `raw_data`.
pub fn tensor_raw(name: &str, data_type: u64, dims: &[u64], raw: &[u8]) -> Vec<u8> {
    let mut t = head(name, data_type, dims);
    put_bytes(&mut t, 9, raw);
    t
}

/// A FLOAT `TensorProto` with packed `float_data`.
pub fn tensor_float_data(name: &str, dims: &[u64], values: &[f32]) -> Vec<u8> {
    let mut t = head(name, 1, dims);
    let payload: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    put_bytes(&mut t, 4, &payload);
    t
}

/// An INT64 `TensorProto` with packed varint `int64_data`.
pub fn tensor_int64_data(name: &str, dims: &[u64], values: &[i64]) -> Vec<u8> {
    let mut t = head(name, 7, dims);
    let mut payload = Vec::new();
    values
        .iter()
        .for_each(|&v| put_varint(&mut payload, v as u64));
    put_bytes(&mut t, 7, &payload);
    t
}

/// A `TensorProto` whose data is in an external file.
pub fn tensor_external(
    name: &str,
    data_type: u64,
    dims: &[u64],
    location: &str,
    offset: u64,
    length: u64,
) -> Vec<u8> {
    let mut t = head(name, data_type, dims);
    for (k, v) in [
        ("location", location.to_string()),
        ("offset", offset.to_string()),
        ("length", length.to_string()),
    ] {
        let mut e = Vec::new();
        put_bytes(&mut e, 1, k.as_bytes());
        put_bytes(&mut e, 2, v.as_bytes());
        put_bytes(&mut t, 13, &e);
    }
    put_varint_field(&mut t, 14, 1);
    t
}

fn head(name: &str, data_type: u64, dims: &[u64]) -> Vec<u8> {
    let mut t = Vec::new();
    dims.iter().for_each(|&d| put_varint_field(&mut t, 1, d));
    put_varint_field(&mut t, 2, data_type);
    put_bytes(&mut t, 8, name.as_bytes());
    t
}

/// A `NodeProto` with tensor attributes (`AttributeProto.t`).
pub fn node(
    op_type: &str,
    inputs: &[&str],
    outputs: &[&str],
    tensor_attrs: &[(&str, Vec<u8>)],
) -> Vec<u8> {
    let mut n = Vec::new();
    inputs
        .iter()
        .for_each(|i| put_bytes(&mut n, 1, i.as_bytes()));
    outputs
        .iter()
        .for_each(|o| put_bytes(&mut n, 2, o.as_bytes()));
    put_bytes(&mut n, 4, op_type.as_bytes());
    for (name, tensor) in tensor_attrs {
        let mut a = Vec::new();
        put_bytes(&mut a, 1, name.as_bytes());
        put_bytes(&mut a, 5, tensor);
        put_varint_field(&mut a, 20, 4); // type = TENSOR
        put_bytes(&mut n, 5, &a);
    }
    n
}

/// A `ValueInfoProto` of a tensor with fixed dims.
pub fn value_info(name: &str, elem_type: u64, dims: &[u64]) -> Vec<u8> {
    let mut shape = Vec::new();
    for &d in dims {
        let mut dim = Vec::new();
        put_varint_field(&mut dim, 1, d);
        put_bytes(&mut shape, 1, &dim);
    }
    let mut tensor_type = Vec::new();
    put_varint_field(&mut tensor_type, 1, elem_type);
    put_bytes(&mut tensor_type, 2, &shape);
    let mut ty = Vec::new();
    put_bytes(&mut ty, 1, &tensor_type);
    let mut v = Vec::new();
    put_bytes(&mut v, 1, name.as_bytes());
    put_bytes(&mut v, 2, &ty);
    v
}

/// A `ModelProto` (IR 8, opset 17) around a graph of these nodes, initializers, inputs and outputs.
pub fn model(
    nodes: &[Vec<u8>],
    initializers: &[Vec<u8>],
    inputs: &[Vec<u8>],
    outputs: &[Vec<u8>],
) -> Vec<u8> {
    let mut g = Vec::new();
    nodes.iter().for_each(|n| put_bytes(&mut g, 1, n));
    put_bytes(&mut g, 2, b"main");
    initializers.iter().for_each(|t| put_bytes(&mut g, 5, t));
    inputs.iter().for_each(|v| put_bytes(&mut g, 11, v));
    outputs.iter().for_each(|v| put_bytes(&mut g, 12, v));
    let mut m = Vec::new();
    put_varint_field(&mut m, 1, 8);
    put_bytes(&mut m, 2, b"neurstore-test");
    put_bytes(&mut m, 7, &g);
    let mut opset = Vec::new();
    put_varint_field(&mut opset, 2, 17);
    put_bytes(&mut m, 8, &opset);
    m
}

/// A small model exercising every path: a raw initializer, a float_data one, an int64_data one
/// (kept in the skeleton), and a Constant node.
pub fn small_model() -> Vec<u8> {
    let w: Vec<u8> = (0..12u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let c: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    model(
        &[
            node(
                "Constant",
                &[],
                &["c"],
                &[("value", tensor_raw("", 1, &[2], &c))],
            ),
            node("MatMul", &["x", "w"], &["y"], &[]),
            node("Add", &["y", "b"], &["z"], &[]),
        ],
        &[
            tensor_raw("w", 1, &[3, 4], &w),
            tensor_float_data("b", &[4], &[0.5, 0.25, -1.0, 8.0]),
            tensor_int64_data("shape", &[2], &[-1, 4]),
        ],
        &[value_info("x", 1, &[2, 3])],
        &[value_info("z", 1, &[2, 4])],
    )
}
