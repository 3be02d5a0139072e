//! `neurstore._neurstore.Store`: one open store, shared by any number of Python threads.
//!
//! Reads go through a reader handle, which takes no lock. The writer lock is taken at the first
//! write (`put`, `delete`, `gc`) and held until `close`; from then on every call uses the writer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use neurstore::{ErrorKind, LockWait, NoProgress, Store as CoreStore, StoreOptions, TensorInput};
use numpy::{PyReadonlyArray1, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::convert::{TensorTuple, put_options, report, tensor_tuple};
use crate::{InvalidInput, to_py_err};

struct Handle {
    store: Arc<CoreStore>,
    writer: bool,
}

/// An open store (native half; see `neurstore.Store` for the documented API).
#[pyclass(frozen, module = "neurstore._neurstore")]
pub(crate) struct Store {
    root: PathBuf,
    writable: bool,
    wait: LockWait,
    /// `None` once closed.
    handle: Mutex<Option<Handle>>,
}

/// One tensor given to `put_arrays`: `(name, dtype, shape, bytes)`.
type ArrayInput<'py> = (String, String, Vec<u64>, PyReadonlyArray1<'py, u8>);

fn closed() -> PyErr {
    InvalidInput::new_err("the store is closed")
}

impl Store {
    /// The handle for reading. Called without the GIL.
    fn reader(&self) -> PyResult<Arc<CoreStore>> {
        let handle = self.handle.lock().unwrap_or_else(|e| e.into_inner());
        handle.as_ref().map(|h| h.store.clone()).ok_or_else(closed)
    }

    /// The handle for writing, taking the writer lock the first time. Called without the GIL.
    fn writer(&self) -> PyResult<Arc<CoreStore>> {
        if !self.writable {
            return Err(InvalidInput::new_err(format!(
                "{} is open read-only; open it with read_only=False to change it",
                neurstore::store_label(&self.root)
            )));
        }
        let mut guard = self.handle.lock().unwrap_or_else(|e| e.into_inner());
        let handle = guard.as_mut().ok_or_else(closed)?;
        if !handle.writer {
            let options = StoreOptions {
                write: true,
                wait: self.wait,
                ..Default::default()
            };
            let store = CoreStore::open_with(&self.root, options)
                .map_err(|e| to_py_err(neurstore::in_store(e, &self.root, "open for writing")))?;
            handle.store = Arc::new(store);
            handle.writer = true;
        }
        Ok(handle.store.clone())
    }
}

/// The reading handle: read-only (nothing created, migrated or locked) for a store opened
/// `read_only=True`; otherwise an ordinary reader, creating the store when asked.
fn open_or_create(root: &Path, create: bool, read_only: bool) -> PyResult<CoreStore> {
    let open = || {
        CoreStore::open_with(
            root,
            StoreOptions {
                read_only,
                ..Default::default()
            },
        )
    };
    let err = |e| to_py_err(neurstore::in_store(e, root, "open"));
    match open() {
        Err(e) if create && !read_only && e.kind() == ErrorKind::NotFound => {
            CoreStore::init(root).map_err(to_py_err)?;
            open().map_err(err)
        }
        other => other.map_err(err),
    }
}

#[pymethods]
impl Store {
    #[new]
    #[pyo3(signature = (path, create = true, writable = true, wait = None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        create: bool,
        writable: bool,
        wait: Option<f64>,
    ) -> PyResult<Self> {
        let wait = neurstore::lock_wait(wait).map_err(to_py_err)?;
        let store = py.detach(|| open_or_create(&path, create && writable, !writable))?;
        Ok(Store {
            root: path,
            writable,
            wait,
            handle: Mutex::new(Some(Handle {
                store: Arc::new(store),
                writer: false,
            })),
        })
    }

    /// The store's directory (a `pathlib.Path`), or the URL of a store in PostgreSQL (a `str`,
    /// without its password: a path would fold its `//`).
    #[getter]
    fn path<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if neurstore::is_database_url(&self.root) {
            Ok(neurstore::store_label(&self.root)
                .into_pyobject(py)?
                .into_any())
        } else {
            Ok(self.root.clone().into_pyobject(py)?.into_any())
        }
    }

    /// True when writes are allowed (the lock is taken at the first one).
    #[getter]
    fn writable(&self) -> bool {
        self.writable
    }

    /// True while this object holds the store's writer lock.
    #[getter]
    fn holds_lock(&self, py: Python<'_>) -> bool {
        py.detach(|| {
            let handle = self.handle.lock().unwrap_or_else(|e| e.into_inner());
            handle.as_ref().is_some_and(|h| h.writer)
        })
    }

    /// True once closed.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        py.detach(|| {
            let handle = self.handle.lock().unwrap_or_else(|e| e.into_inner());
            handle.is_none()
        })
    }

    /// Releases the store (and its writer lock); calls in flight on other threads finish first.
    fn close(&self, py: Python<'_>) {
        let handle = py.detach(|| self.handle.lock().unwrap_or_else(|e| e.into_inner()).take());
        // Dropping the last handle may wait on I/O: do it without the GIL.
        py.detach(move || drop(handle));
    }

    #[pyo3(signature = (name, path, base, tolerance, rel_tolerance, metadata_json, dry_run, max_chain_depth, force = false, follow_symlinks = false))]
    #[allow(clippy::too_many_arguments)]
    fn put_path<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        path: PathBuf,
        base: &str,
        tolerance: Option<f64>,
        rel_tolerance: Option<f64>,
        metadata_json: Option<&str>,
        dry_run: bool,
        max_chain_depth: u32,
        force: bool,
        follow_symlinks: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let options = put_options(
            base,
            tolerance,
            rel_tolerance,
            metadata_json,
            dry_run,
            max_chain_depth,
            force,
            follow_symlinks,
        )?;
        let done = py.detach(|| {
            let store = if dry_run {
                self.reader()?
            } else {
                self.writer()?
            };
            store
                .put(name, &path, &options, &NoProgress)
                .map_err(to_py_err)
        })?;
        report(py, &done)
    }

    #[pyo3(signature = (name, tensors, file_metadata, base, tolerance, rel_tolerance, metadata_json, dry_run, max_chain_depth, force = false))]
    #[allow(clippy::too_many_arguments)]
    fn put_arrays<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        tensors: Vec<ArrayInput<'py>>,
        file_metadata: Option<BTreeMap<String, String>>,
        base: &str,
        tolerance: Option<f64>,
        rel_tolerance: Option<f64>,
        metadata_json: Option<&str>,
        dry_run: bool,
        max_chain_depth: u32,
        force: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let options = put_options(
            base,
            tolerance,
            rel_tolerance,
            metadata_json,
            dry_run,
            max_chain_depth,
            force,
            false,
        )?;
        let mut dtypes = Vec::with_capacity(tensors.len());
        for (tensor, dtype, _, array) in &tensors {
            dtypes.push(
                dtype
                    .parse::<neurstore::DType>()
                    .map_err(|e| InvalidInput::new_err(format!("tensor {tensor:?}: {e}")))?,
            );
            if !array.is_c_contiguous() {
                return Err(InvalidInput::new_err(format!(
                    "tensor {tensor:?}: bytes are not contiguous"
                )));
            }
        }
        let inputs = tensors
            .iter()
            .zip(&dtypes)
            .map(|((tensor, _, shape, array), &dtype)| {
                Ok(TensorInput {
                    name: tensor,
                    dtype,
                    shape,
                    data: array
                        .as_slice()
                        .map_err(|e| InvalidInput::new_err(format!("tensor {tensor:?}: {e}")))?,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let done = py.detach(|| {
            let store = if dry_run {
                self.reader()?
            } else {
                self.writer()?
            };
            store
                .put_tensors(name, &inputs, file_metadata.as_ref(), &options, &NoProgress)
                .map_err(to_py_err)
        })?;
        report(py, &done)
    }

    /// Every tensor of model `name` as `(file, name, dtype, shape, bytes, owned)` tuples.
    fn load<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Vec<TensorTuple<'py>>> {
        let tensors = py.detach(|| self.reader()?.load(name).map_err(to_py_err))?;
        tensors.into_iter().map(|t| tensor_tuple(py, t)).collect()
    }

    #[pyo3(signature = (name, path, force = false, format = None))]
    fn export<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        path: PathBuf,
        force: bool,
        format: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let format = format
            .map(|f| {
                neurstore::OutputFormat::from_name(f).ok_or_else(|| {
                    pyo3::exceptions::PyValueError::new_err(format!(
                        "unknown format {f:?}: use \"safetensors\" or \"pt\""
                    ))
                })
            })
            .transpose()?;
        let options = neurstore::GetOptions { format, force };
        let done = py.detach(|| {
            neurstore::check_output(&path, force).map_err(to_py_err)?;
            self.reader()?
                .get_with(name, &path, &options, &NoProgress)
                .map_err(to_py_err)
        })?;
        report(py, &done)
    }

    fn list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let models = py.detach(|| self.reader()?.list().map_err(to_py_err))?;
        report(py, &models)
    }

    fn info<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let info = py.detach(|| self.reader()?.info(name).map_err(to_py_err))?;
        report(py, &info)
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let stats = py.detach(|| self.reader()?.stats().map_err(to_py_err))?;
        report(py, &stats)
    }

    fn verify<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let done = py.detach(|| self.reader()?.verify(&NoProgress).map_err(to_py_err))?;
        report(py, &done)
    }

    fn delete<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let done = py.detach(|| self.writer()?.remove(name).map_err(to_py_err))?;
        report(py, &done)
    }

    fn gc<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let done = py.detach(|| self.writer()?.gc(&NoProgress).map_err(to_py_err))?;
        report(py, &neurstore::GcSummary::from(&done))
    }
}
