//! The facade's error type: what a user of the `Store` can be told.

use std::io;
use std::path::PathBuf;

use neurstore_core::safetensors::FormatError;
use neurstore_storage::StorageError;

/// Result alias for the facade.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Broad classes of errors, for callers that map them (exit codes, Python exceptions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A model, file or store that does not exist.
    NotFound,
    /// Bad input from the caller: a malformed file, a bad name, a name taken.
    InvalidInput,
    /// Stored data failed a check.
    Corrupt,
    /// Another writer holds the store.
    Locked,
    /// The operating system reported an error.
    Io,
    /// Anything else.
    Other,
}

/// An error from the `Store`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// From the storage layer.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A safetensors file failed validation.
    #[error("{path} is not a valid safetensors file: {source}")]
    BadSafetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: FormatError,
    },
    /// A model file of another format (ONNX, PyTorch, GGUF) was refused: corrupt, unsafe (a
    /// pickle naming a forbidden global: nothing was executed) or legacy.
    #[error("{path}: {source}")]
    BadModelFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: neurstore_formats::Error,
    },
    /// A conversion on the way out was refused or failed.
    #[error("cannot write model {model:?} as {target}: {source}")]
    Convert {
        /// The model.
        model: String,
        /// The target format.
        target: &'static str,
        /// Why.
        #[source]
        source: neurstore_formats::Error,
    },
    /// An input is unusable for another reason.
    #[error("{path}: {detail}")]
    InvalidInput {
        /// The input.
        path: PathBuf,
        /// What is wrong and, where useful, what to do.
        detail: String,
    },
    /// A model name breaks the naming rules.
    #[error("invalid model name {0:?}: use 1 to 200 characters, no control characters or '/'")]
    InvalidName(String),
    /// Reading an input or writing an output failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Storage(e) => match e {
                StorageError::ModelNotFound(_) | StorageError::NoStore(_) => ErrorKind::NotFound,
                StorageError::ModelExists(_)
                | StorageError::AlreadyExists(_)
                | StorageError::ReadOnly
                | StorageError::FormatNeedsUpgrade(_) => ErrorKind::InvalidInput,
                StorageError::Corrupt { .. }
                | StorageError::PackMissing(_)
                | StorageError::CatalogLost { .. }
                | StorageError::CatalogBehind { .. } => ErrorKind::Corrupt,
                StorageError::Locked { .. } => ErrorKind::Locked,
                StorageError::Io { .. } | StorageError::Poisoned => ErrorKind::Io,
                _ => ErrorKind::Other,
            },
            Error::BadSafetensors { .. }
            | Error::BadModelFile { .. }
            | Error::Convert { .. }
            | Error::InvalidInput { .. }
            | Error::InvalidName(_) => ErrorKind::InvalidInput,
            Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            Error::Io { .. } => ErrorKind::Io,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Error::InvalidInput {
            path: path.into(),
            detail: detail.into(),
        }
    }
}
