//! The store in this database, opened for one SQL call over SPI ([`crate::spi`]).
//!
//! **Invariant:** writers are serialized by `pg_advisory_xact_lock(WRITER_LOCK_KEY)`, taken
//! before the store is opened for writing and held until the caller's transaction ends, the
//! lock the client side takes for a whole session: two sessions putting at once both commit,
//! one after the other, and the second sees (and deduplicates against) what the first stored.

use std::path::PathBuf;
use std::sync::Arc;

use neurstore::{Progress, Store, StoreOptions};
use neurstore_storage::StorageError;
use neurstore_storage::postgres::blobs::ChunkBackend;
use neurstore_storage::postgres::{WRITER_LOCK_KEY, check_store};
use neurstore_storage::sql::{Sql, params};
use pgrx::pg_sys::errcodes::PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_STATE;

use crate::errors::Failure;
use crate::guard;
use crate::spi::{Access, SpiCatalog, SpiRunner, SpiSql};

/// How this database is named in errors.
fn label(sql: &dyn Sql) -> Result<PathBuf, Failure> {
    let name: String = sql.query_one("SELECT current_database()", &[])?.get(0)?;
    Ok(PathBuf::from(format!("database {name:?}")))
}

/// The store, open for reading on the calling statement's snapshot.
pub fn reader() -> Result<Store, Failure> {
    open(Access::Read)
}

/// The store, open for writing under the writer lock; with `create`, made first when the
/// database holds none.
pub fn writer(create: bool) -> Result<Store, Failure> {
    let sql = SpiSql::new(Access::Write);
    require_read_committed(&sql)?;
    sql.query("SELECT pg_advisory_xact_lock(?1)", params![WRITER_LOCK_KEY])?;
    let label = label(&sql)?;
    match check_store(&sql, &label, true) {
        Err(StorageError::NoStore(_)) if create => create_store(&sql, &label)?,
        other => other?,
    }
    open(Access::Write)
}

/// Creates the store's tables and views, without the notices of the `IF NOT EXISTS` the views'
/// schema may meet (the extension made it).
fn create_store(sql: &dyn Sql, label: &std::path::Path) -> Result<(), Failure> {
    let level: String = sql
        .query_one(
            "SELECT current_setting('client_min_messages'), \
                    set_config('client_min_messages', 'warning', true)",
            &[],
        )?
        .get(0)?;
    Store::init_in_database(Box::new(SpiCatalog::new(Access::Write)), label)?;
    sql.query(
        "SELECT set_config('client_min_messages', ?1, true)",
        params![level],
    )?;
    Ok(())
}

fn open(access: Access) -> Result<Store, Failure> {
    let sql = SpiSql::new(access);
    let label = label(&sql)?;
    let write = access == Access::Write;
    check_store(&sql, &label, write)?;
    let backend = ChunkBackend::over(Arc::new(SpiRunner::new(access)));
    let options = StoreOptions {
        write,
        read_only: !write,
        ..Default::default()
    };
    Ok(Store::open_in_database(
        &label,
        Box::new(SpiCatalog::new(access)),
        Arc::new(backend),
        options,
    )?)
}

/// A writer must see the rows other writers committed while it waited for the lock: each
/// statement's fresh snapshot at READ COMMITTED does; the one snapshot of a REPEATABLE READ or
/// SERIALIZABLE transaction may predate them.
fn require_read_committed(sql: &dyn Sql) -> Result<(), Failure> {
    let level: String = sql
        .query_one("SELECT current_setting('transaction_isolation')", &[])?
        .get(0)?;
    if level == "read committed" {
        return Ok(());
    }
    Err(Failure::new(
        ERRCODE_INVALID_TRANSACTION_STATE,
        format!(
            "NeurStore writes models only at isolation level READ COMMITTED (the default), not \
             {}: a transaction of that level may not see a model another session stored \
             meanwhile; run it in a READ COMMITTED transaction",
            level.to_uppercase()
        ),
    ))
}

/// Progress of a long call: none shown, but a cancel (statement_timeout, pg_cancel_backend,
/// Ctrl-C) stops it, raising PostgreSQL's own error.
pub struct Interrupts;

impl Progress for Interrupts {
    fn advance(&self, _bytes: u64) {
        if guard::check().is_ok() {
            guard::call(|| {
                pgrx::check_for_interrupts!();
            });
        }
    }
}
