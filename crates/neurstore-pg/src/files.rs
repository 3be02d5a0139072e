//! Files on the server: who may name them, and the private temporary files through which
//! models given as `bytea` pass (the store imports files).

use std::path::{Path, PathBuf};

use neurstore_storage::sql::{Sql, params};
use pgrx::pg_sys::errcodes::PgSqlErrorCode::{ERRCODE_INSUFFICIENT_PRIVILEGE, ERRCODE_IO_ERROR};

use crate::errors::Failure;

/// Reading or writing files of the server's file system, with the role PostgreSQL requires
/// for the same (`pg_read_binary_file`, `COPY ... TO 'file'`).
#[derive(Debug, Clone, Copy)]
pub enum ServerFiles {
    /// `pg_read_server_files`.
    Read,
    /// `pg_write_server_files`.
    Write,
}

impl ServerFiles {
    fn role(self) -> &'static str {
        match self {
            ServerFiles::Read => "pg_read_server_files",
            ServerFiles::Write => "pg_write_server_files",
        }
    }

    /// Refuses a role that is neither superuser nor has the privileges of [`Self::role`]
    /// (superusers have every role's).
    pub fn require(self, sql: &dyn Sql, function: &str) -> Result<(), Failure> {
        let row = sql.query_one(
            "SELECT CAST(current_user AS text), pg_has_role(current_user, CAST(?1 AS name), 'USAGE')",
            params![self.role()],
        )?;
        let (user, allowed): (String, i64) = (row.get(0)?, row.get(1)?);
        if allowed != 0 {
            return Ok(());
        }
        let instead = match self {
            ServerFiles::Read => "; send the file's bytes with neurstore.put_bytes instead",
            ServerFiles::Write => "; fetch the bytes with neurstore.get_bytes instead",
        };
        Err(Failure::new(
            ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied: {function} {} files on the database server, which needs \
                 superuser or the role {} (role {user:?} has neither){instead}",
                match self {
                    ServerFiles::Read => "reads",
                    ServerFiles::Write => "writes",
                },
                self.role()
            ),
        ))
    }
}

/// A private directory for one call's temporary file, removed when dropped (also when an
/// error unwinds).
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// A new directory under the server's temporary directory.
    pub fn new() -> Result<Self, Failure> {
        let dir = tempfile::Builder::new()
            .prefix("neurstore-")
            .tempdir()
            .map_err(|e| {
                Failure::new(
                    ERRCODE_IO_ERROR,
                    format!("could not create a temporary directory on the server: {e}"),
                )
            })?;
        Ok(Scratch { dir })
    }

    /// The path of the model file inside it.
    pub fn model_file(&self) -> PathBuf {
        self.dir.path().join("model.safetensors")
    }

    /// Writes `bytes` to the model file and returns its path.
    pub fn write_model(&self, bytes: &[u8]) -> Result<PathBuf, Failure> {
        let path = self.model_file();
        std::fs::write(&path, bytes).map_err(|e| io_failure(&path, "write", e))?;
        Ok(path)
    }
}

/// An I/O failure on a temporary file.
pub fn io_failure(path: &Path, action: &str, e: std::io::Error) -> Failure {
    Failure::new(
        ERRCODE_IO_ERROR,
        format!(
            "could not {action} the temporary file {} on the server: {e}",
            path.display()
        ),
    )
}
