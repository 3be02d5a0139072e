//! Errors of the storage layer.

use std::io;
use std::path::PathBuf;

/// Result alias for the storage layer.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Everything that can go wrong below the `Store` facade.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A file operation failed.
    #[error("I/O error on {what}: {source}")]
    Io {
        /// The file or operation.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The SQLite catalog reported an error.
    #[error("catalog error: {0}")]
    Catalog(#[from] rusqlite::Error),
    /// Stored data failed a check: a checksum, a length, a field out of range.
    #[error("{what} is corrupt: {detail}")]
    Corrupt {
        /// What is damaged (model, tensor, pack and offset where known).
        what: String,
        /// How it was detected.
        detail: String,
    },
    /// Another process holds the writer lock.
    #[error("the store at {dir} is locked by {holder}; wait for it to finish or stop it")]
    Locked {
        /// Store directory.
        dir: PathBuf,
        /// "pid N" when known.
        holder: String,
    },
    /// The directory holds no store.
    #[error("no NeurStore store at {0}; create one with `neurstore init`")]
    NoStore(PathBuf),
    /// `init` on a directory that already holds a store or other files.
    #[error("{0} already exists and is not an empty directory; choose another --store")]
    AlreadyExists(PathBuf),
    /// An earlier write or sync failed; the store refuses writes until reopened.
    #[error("the store refuses writes after an earlier I/O failure; reopen it")]
    Poisoned,
    /// A pack file referenced by the catalog is gone (garbage collected since it was looked up).
    #[error("pack file {0} is missing")]
    PackMissing(u64),
    /// The store was written by a newer version of NeurStore.
    #[error(
        "the store's catalog has schema version {found}, newer than the {supported} this build knows; upgrade neurstore"
    )]
    TooNew {
        /// Version found.
        found: i64,
        /// Newest version this build supports.
        supported: i64,
    },
    /// No model of that name.
    #[error("no model named {0:?} in the store; `neurstore ls` lists them")]
    ModelNotFound(String),
    /// A model of that name already exists.
    #[error("a model named {0:?} already exists; choose another name or `neurstore rm` it first")]
    ModelExists(String),
    /// The catalog is missing, empty or unreadable while pack files hold data.
    #[error(
        "the store at {dir} has pack files but its catalog is {detail}; nothing was changed. \
         Run `neurstore recover` to rebuild the catalog from the packs"
    )]
    CatalogLost {
        /// Store directory.
        dir: PathBuf,
        /// What is wrong with the catalog.
        detail: String,
    },
    /// The packs hold committed writes, or packs, that the catalog does not know: the catalog
    /// is damaged or an older copy. Writing could destroy them, so the store refuses to.
    #[error(
        "{detail}: the catalog may be damaged or an older copy, so nothing was written or \
         removed. Run `neurstore recover` to rebuild the catalog from the packs"
    )]
    CatalogBehind {
        /// What was found.
        detail: String,
    },
    /// A format-1 store must be upgraded before it takes writes.
    #[error(
        "the store at {0} is in format 1, which this build reads but does not write; run \
         `neurstore upgrade` (or `neurstore gc`) to rewrite it in format 2"
    )]
    NeedsUpgrade(PathBuf),
    /// A write was attempted on a store opened for reading.
    #[error("the store was opened read-only")]
    ReadOnly,
}

impl StorageError {
    /// Wraps an I/O error with what it was about.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        StorageError::Io {
            what: what.into(),
            source,
        }
    }

    /// A corruption error.
    pub fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Self {
        StorageError::Corrupt {
            what: what.into(),
            detail: detail.into(),
        }
    }
}
