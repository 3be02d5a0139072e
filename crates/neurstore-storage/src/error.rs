//! Errors of the storage layer.

use std::io;
use std::path::PathBuf;

use rusqlite::ErrorCode;

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
    /// The SQLite catalog reported an error (translated into words; no raw codes, so SQLite's
    /// own error is kept but not chained as the source).
    #[error("{}", describe_sqlite(.0))]
    Catalog(rusqlite::Error),
    /// A catalog error with what was being done, and to which store.
    #[error("could not {action} the store at {}: {}", .store.display(), describe_sqlite(.error))]
    CatalogIn {
        /// Store directory.
        store: PathBuf,
        /// What was being done ("open", "read", "write", ...).
        action: String,
        /// The SQLite error.
        error: rusqlite::Error,
    },
    /// The catalog's schema is older than this build reads without migrating it, and the store
    /// was opened read-only (a read-only open never migrates).
    #[error(
        "the store's catalog has schema version {found}, older than the {supported} this build reads; run `neurstore upgrade` (as a user who may write the store) first"
    )]
    NeedsUpgrade {
        /// Version found.
        found: i64,
        /// Version this build reads.
        supported: i64,
    },
    /// Stored data failed a check: a checksum, a length, a field out of range.
    #[error("{what} is corrupt: {detail}")]
    Corrupt {
        /// What is damaged (model, tensor, pack and offset where known).
        what: String,
        /// How it was detected.
        detail: String,
    },
    /// Another process holds the writer lock.
    #[error(
        "the store at {dir} is locked by {holder}; wait for it to finish (--wait waits for the lock) or stop it"
    )]
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
    #[error(
        "{0} already exists and is not empty (a directory with files, or a database with a store); choose another --store"
    )]
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
    FormatNeedsUpgrade(PathBuf),
    /// A write was attempted on a store opened for reading.
    #[error("the store was opened read-only")]
    ReadOnly,
    /// PostgreSQL reported an error (a store in a database).
    #[error("PostgreSQL: {}", describe_postgres(.0))]
    Postgres(postgres::Error),
    /// The database role may not do what was asked (a store in PostgreSQL).
    #[error("permission denied: {0}")]
    Denied(String),
    /// The operation exists only for one kind of store.
    #[error("{0}")]
    Unsupported(String),
}

impl From<postgres::Error> for StorageError {
    fn from(e: postgres::Error) -> Self {
        StorageError::Postgres(e)
    }
}

/// A PostgreSQL error as the server words it, with its SQLSTATE, or the client's own words.
pub fn describe_postgres(e: &postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        (None, Some(cause)) => format!("{e}: {cause}"),
        (None, None) => e.to_string(),
    }
}

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        StorageError::Catalog(e)
    }
}

impl StorageError {
    /// Wraps an I/O error with what it was about.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        StorageError::Io {
            what: what.into(),
            source,
        }
    }

    /// Names the store and the action in a catalog error; other errors pass unchanged.
    pub fn in_store(self, store: &std::path::Path, action: &str) -> Self {
        match self {
            StorageError::Catalog(error) => StorageError::CatalogIn {
                store: store.to_path_buf(),
                action: action.to_string(),
                error,
            },
            other => other,
        }
    }

    /// True when the error is SQLite's busy or locked timeout.
    pub fn is_busy(&self) -> bool {
        let source = match self {
            StorageError::Catalog(e) | StorageError::CatalogIn { error: e, .. } => e,
            _ => return false,
        };
        matches!(
            source.sqlite_error_code(),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
        )
    }

    /// A corruption error.
    pub fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Self {
        StorageError::Corrupt {
            what: what.into(),
            detail: detail.into(),
        }
    }
}

/// One sentence for an SQLite error: what it means for the catalog, without SQLite's codes.
pub fn describe_sqlite(e: &rusqlite::Error) -> String {
    let rusqlite::Error::SqliteFailure(failure, message) = e else {
        return format!("the catalog could not be used: {e}");
    };
    let plain = match failure.code {
        ErrorCode::ReadOnly => {
            "the catalog cannot be written: it or its directory is read-only to this user (commands that only read need no write access)"
        }
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
            "the catalog stayed busy: another process kept it locked for longer than the wait allows"
        }
        ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
            "the catalog file is damaged or is not a NeurStore catalog"
        }
        ErrorCode::DiskFull => "the disk holding the catalog is full",
        ErrorCode::CannotOpen => {
            "the catalog file cannot be opened (missing, or no permission to read it or to create its side files)"
        }
        ErrorCode::PermissionDenied => "permission to use the catalog was denied",
        ErrorCode::SystemIoFailure => "the operating system reported an I/O error on the catalog",
        ErrorCode::OutOfMemory => "memory ran out while using the catalog",
        ErrorCode::ConstraintViolation => "the catalog refused a change that breaks its rules",
        ErrorCode::SchemaChanged => "the catalog's schema changed while it was read; try again",
        _ => {
            return match message {
                Some(m) => format!("the catalog reported: {m}"),
                None => "the catalog reported an unexpected error".to_string(),
            };
        }
    };
    plain.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: i32, message: &str) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some(message.into()))
    }

    #[test]
    fn sqlite_errors_read_as_sentences_naming_store_and_action() {
        let e = StorageError::from(failure(8, "attempt to write a readonly database"))
            .in_store(std::path::Path::new("/srv/models"), "write to");
        let text = e.to_string();
        assert!(
            text.starts_with("could not write to the store at /srv/models: "),
            "{text}"
        );
        assert!(text.contains("read-only to this user"), "{text}");
        assert!(
            !text.contains("readonly database") && !text.contains("code"),
            "{text}"
        );
        assert!(StorageError::from(failure(5, "database is locked")).is_busy());
        let other = StorageError::from(failure(1, "no such table: models")).to_string();
        assert_eq!(other, "the catalog reported: no such table: models");
    }
}
