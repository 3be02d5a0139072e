//! Every error of the store as one PostgreSQL ERROR: one sentence and the SQLSTATE that fits.
//!
//! Bad input is class 22 (`22P03` a file that is not valid safetensors, `22023` a bad argument
//! such as a tolerance of 0 or NaN, `22004` a NULL where a value is needed); an unknown model
//! is `42704`, a taken name `42710`, missing rights `42501`; a damaged store `XX001`; a file
//! the server cannot read or write class 58. Errors PostgreSQL itself raises inside a call (a
//! permission check on a table, a cancel) are not mapped here: they reach the caller as raised.

use neurstore::Error;
use neurstore_storage::StorageError;
use pgrx::PgLogLevel;
use pgrx::pg_sys::errcodes::PgSqlErrorCode::{self, *};
use pgrx::pg_sys::panic::ErrorReport;

/// A failed SQL call: what the caller is told.
#[derive(Debug)]
pub struct Failure {
    /// The SQLSTATE.
    pub code: PgSqlErrorCode,
    /// One sentence saying what is wrong and, where useful, what to do.
    pub message: String,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// A NULL passed where the function needs a value.
    pub fn null(argument: &str) -> Self {
        Failure::new(
            ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{argument} must not be NULL"),
        )
    }

    /// The same failure with every mention of `path` (a temporary file's) said as `said`.
    pub fn naming(mut self, path: &std::path::Path, said: &str) -> Self {
        self.message = self.message.replace(&path.display().to_string(), said);
        self
    }

    /// Raises the failure as a PostgreSQL ERROR (unwinding to the SQL function's boundary,
    /// where pgrx hands it to PostgreSQL), which aborts the caller's transaction.
    pub fn raise(self) -> ! {
        ErrorReport::new(self.code, self.message, "neurstore").report(PgLogLevel::ERROR);
        unreachable!("an ERROR does not return")
    }
}

impl From<StorageError> for Failure {
    fn from(e: StorageError) -> Self {
        Failure::from(Error::Storage(e))
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = sqlstate(&e);
        Failure::new(code, message(&e))
    }
}

/// The SQLSTATE of a store error.
fn sqlstate(e: &Error) -> PgSqlErrorCode {
    match e {
        Error::BadSafetensors { .. } => ERRCODE_INVALID_BINARY_REPRESENTATION,
        Error::InvalidInput { .. } | Error::InvalidName(_) => ERRCODE_INVALID_PARAMETER_VALUE,
        Error::Io { source, .. } => match source.kind() {
            std::io::ErrorKind::NotFound => ERRCODE_UNDEFINED_FILE,
            std::io::ErrorKind::PermissionDenied => ERRCODE_INSUFFICIENT_PRIVILEGE,
            _ => ERRCODE_IO_ERROR,
        },
        Error::Storage(s) => match s {
            StorageError::ModelNotFound(_) | StorageError::NoStore(_) => ERRCODE_UNDEFINED_OBJECT,
            StorageError::ModelExists(_) | StorageError::AlreadyExists(_) => {
                ERRCODE_DUPLICATE_OBJECT
            }
            StorageError::Denied(_) => ERRCODE_INSUFFICIENT_PRIVILEGE,
            StorageError::Corrupt { .. }
            | StorageError::PackMissing(_)
            | StorageError::CatalogLost { .. }
            | StorageError::CatalogBehind { .. } => ERRCODE_DATA_CORRUPTED,
            StorageError::Locked { .. } => ERRCODE_LOCK_NOT_AVAILABLE,
            StorageError::Io { .. } | StorageError::Poisoned => ERRCODE_IO_ERROR,
            StorageError::ReadOnly => ERRCODE_READ_ONLY_SQL_TRANSACTION,
            StorageError::TooNew { .. }
            | StorageError::NeedsUpgrade { .. }
            | StorageError::FormatNeedsUpgrade(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            StorageError::Unsupported(_) => ERRCODE_FEATURE_NOT_SUPPORTED,
            _ => ERRCODE_INTERNAL_ERROR,
        },
        _ => ERRCODE_INTERNAL_ERROR,
    }
}

/// The sentence for a store error: the facade's own words, except where they name a
/// command-line flag or command, which SQL users say otherwise.
fn message(e: &Error) -> String {
    match e {
        Error::Storage(StorageError::ModelNotFound(name)) => format!(
            "no model named {name:?} in the store; SELECT name FROM neurstore.models lists them"
        ),
        Error::Storage(StorageError::ModelExists(name)) => format!(
            "a model named {name:?} already exists; choose another name or neurstore.rm it first"
        ),
        Error::Storage(StorageError::NoStore(_)) => {
            "this database holds no NeurStore store yet; neurstore.put or neurstore.put_bytes creates it"
                .into()
        }
        // Options are named as SQL arguments (tolerance, rel_tolerance), not as flags.
        Error::InvalidInput { path, detail } if path.to_string_lossy().starts_with("--") => {
            let arg = path.to_string_lossy();
            format!("{}: {detail}", arg.trim_start_matches("--").replace('-', "_"))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn bad_options_are_named_as_sql_arguments() {
        let e = neurstore::Mode::from_tolerances(Some(0.0), None).unwrap_err();
        let f = Failure::from(e);
        assert_eq!(f.code, ERRCODE_INVALID_PARAMETER_VALUE);
        assert!(
            f.message.starts_with("tolerance: 0 is not"),
            "{}",
            f.message
        );
        let e = neurstore::Mode::from_tolerances(None, Some(f64::NAN)).unwrap_err();
        assert!(Failure::from(e).message.starts_with("rel_tolerance: NaN"));
    }

    #[test]
    fn unknown_models_and_missing_stores_are_undefined_objects() {
        let f = Failure::from(StorageError::ModelNotFound("m".into()));
        assert_eq!(f.code, ERRCODE_UNDEFINED_OBJECT);
        assert!(f.message.contains("neurstore.models"));
        let f = Failure::from(StorageError::NoStore(PathBuf::from("db")));
        assert_eq!(f.code, ERRCODE_UNDEFINED_OBJECT);
        let f = Failure::from(StorageError::Denied("no".into()));
        assert_eq!(f.code, ERRCODE_INSUFFICIENT_PRIVILEGE);
    }
}
