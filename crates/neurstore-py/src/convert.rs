//! Conversions between Python values and the facade's types: put options, reports as dicts,
//! tensors as numpy arrays.

use neurstore::{BaseChoice, LoadedTensor, Mode, PutOptions, TensorData};
use numpy::ndarray::ArrayView1;
use numpy::{PyArray1, PyArrayMethods};
use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use serde_json::Value;

use crate::to_py_err;

/// Builds `PutOptions` from the keyword arguments of `put`; the facade checks every value
/// (the same rules and words as the command line).
#[allow(clippy::too_many_arguments)]
pub(crate) fn put_options(
    base: &str,
    tolerance: Option<f64>,
    rel_tolerance: Option<f64>,
    metadata_json: Option<&str>,
    dry_run: bool,
    max_chain_depth: u32,
    force: bool,
    follow_symlinks: bool,
) -> PyResult<PutOptions> {
    let options = PutOptions {
        mode: Mode::from_tolerances(tolerance, rel_tolerance).map_err(to_py_err)?,
        base: BaseChoice::from_arg(base).map_err(to_py_err)?,
        metadata: match metadata_json {
            None => serde_json::Map::new(),
            Some(text) => neurstore::metadata_from_json(text).map_err(to_py_err)?,
        },
        dry_run,
        max_chain_depth,
        force,
        follow_symlinks,
    };
    options.check().map_err(to_py_err)?;
    Ok(options)
}

/// A report (any `Serialize` type) as plain Python dicts, lists and scalars.
pub(crate) fn report<'py>(
    py: Python<'py>,
    value: &impl serde::Serialize,
) -> PyResult<Bound<'py, PyAny>> {
    let value = serde_json::to_value(value)
        .map_err(|e| crate::NeurStoreError::new_err(format!("serializing a report: {e}")))?;
    json_to_py(py, &value)
}

/// A JSON value as the Python value `json.loads` would give.
pub(crate) fn json_to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    match value {
        Value::Null => Ok(py.None().into_bound(py)),
        Value::Bool(b) => b.into_bound_py_any(py),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u.into_bound_py_any(py),
            (None, Some(i)) => i.into_bound_py_any(py),
            _ => n.as_f64().unwrap_or(f64::NAN).into_bound_py_any(py),
        },
        Value::String(s) => s.into_bound_py_any(py),
        Value::Array(items) => {
            let items = items
                .iter()
                .map(|v| json_to_py(py, v))
                .collect::<PyResult<Vec<_>>>()?;
            Ok(PyList::new(py, items)?.into_any())
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                dict.set_item(k, json_to_py(py, v)?)?;
            }
            Ok(dict.into_any())
        }
    }
}

/// Owns the stored bytes of one tensor on behalf of the numpy arrays that view them.
#[pyclass(frozen, module = "neurstore._neurstore")]
pub(crate) struct StoredBytes {
    data: TensorData,
}

/// One loaded tensor as `(file, name, dtype, shape, bytes, owned)`: `bytes` is a 1-D uint8 array;
/// `owned` is true when nothing else shares them (decoded bytes, writable), false when the array
/// is a read-only view of stored bytes.
pub(crate) type TensorTuple<'py> = (
    String,
    String,
    &'static str,
    Vec<u64>,
    Bound<'py, PyArray1<u8>>,
    bool,
);

/// Hands a loaded tensor to Python without copying its bytes.
pub(crate) fn tensor_tuple(py: Python<'_>, tensor: LoadedTensor) -> PyResult<TensorTuple<'_>> {
    let LoadedTensor {
        file,
        name,
        dtype,
        shape,
        data,
    } = tensor;
    let (array, owned) = match data {
        TensorData::Decoded(bytes) => (PyArray1::from_vec(py, bytes), true),
        stored => (read_only_view(py, stored)?, false),
    };
    Ok((file, name, dtype.as_str(), shape, array, owned))
}

fn read_only_view(py: Python<'_>, data: TensorData) -> PyResult<Bound<'_, PyArray1<u8>>> {
    let array = if data.is_empty() {
        PyArray1::from_vec(py, Vec::new())
    } else {
        let len = data.len();
        let holder = Bound::new(py, StoredBytes { data })?;
        // SAFETY: the bytes belong to `holder`, which is frozen (never mutated, so never
        // reallocated) and becomes the array's base object, so they outlive the array. Mapped
        // pack bytes stay valid after a `gc` removes their file: the mapping keeps them.
        unsafe {
            let view = ArrayView1::from_shape_ptr(len, holder.get().data.as_ptr());
            PyArray1::borrow_from_array(&view, holder.into_any())
        }
    };
    array.readwrite().make_nonwriteable();
    Ok(array)
}
