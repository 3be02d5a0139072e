//! The native half of the `neurstore` Python package (`neurstore._neurstore`).
//!
//! A thin layer over the [`neurstore::Store`] facade: it converts arguments, releases the GIL
//! around every call into the store, and turns reports into Python dicts and errors into the
//! package's exceptions. The public API, dtype mapping and torch support live in the pure Python
//! half (`python/neurstore/__init__.py`).
//!
//! **Invariant:** no lock of this module is ever held while the GIL is being acquired: every
//! lock is taken inside `Python::detach`, so a thread blocked on it never holds the GIL.
//!
//! **Invariant:** an array handed to Python that views stored bytes (possibly a memory-mapped
//! pack file) is read-only and keeps those bytes alive through its base object.

#![deny(missing_docs)]

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

mod convert;
mod store;

create_exception!(
    neurstore,
    NeurStoreError,
    PyException,
    "Base class of every error raised by neurstore."
);
create_exception!(
    neurstore,
    NotFound,
    NeurStoreError,
    "A model, file or store that does not exist."
);
create_exception!(
    neurstore,
    InvalidInput,
    NeurStoreError,
    "Bad input: a malformed file or tensor, a bad name, a name already taken, a closed store."
);
create_exception!(
    neurstore,
    Corrupt,
    NeurStoreError,
    "Stored data failed a check."
);
create_exception!(
    neurstore,
    Locked,
    NeurStoreError,
    "Another writer holds the store."
);

/// Maps a store error to the package's exception of its kind, keeping the Rust message.
pub(crate) fn to_py_err(err: neurstore::Error) -> PyErr {
    use neurstore::ErrorKind;
    let message = err.to_string();
    match err.kind() {
        ErrorKind::NotFound => NotFound::new_err(message),
        ErrorKind::InvalidInput => InvalidInput::new_err(message),
        ErrorKind::Corrupt => Corrupt::new_err(message),
        ErrorKind::Locked => Locked::new_err(message),
        _ => NeurStoreError::new_err(message),
    }
}

#[pymodule]
fn _neurstore(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("NeurStoreError", py.get_type::<NeurStoreError>())?;
    m.add("NotFound", py.get_type::<NotFound>())?;
    m.add("InvalidInput", py.get_type::<InvalidInput>())?;
    m.add("Corrupt", py.get_type::<Corrupt>())?;
    m.add("Locked", py.get_type::<Locked>())?;
    m.add_class::<store::Store>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
