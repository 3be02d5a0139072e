//! A store inside PostgreSQL: the catalog's tables and the pack bytes live in the schema
//! [`DATA_SCHEMA`] of a database, reached over a client connection. The catalog runs the same
//! queries as the embedded store's SQLite catalog ([`crate::sql`]); packs are files of
//! [`blobs::PgBackend`], kept as chunks of at most 1 MiB in a `bytea` column stored
//! uncompressed (`STORAGE EXTERNAL`). Everything is WAL-logged like any table, so backups and
//! replication carry the models.
//!
//! A writer holds a session-level advisory lock ([`WRITER_LOCK_KEY`]) for as long as its store
//! is open, the counterpart of the embedded store's `LOCK` file; readers take none.

pub mod blobs;
mod schema;

use std::collections::HashMap;
use std::error::Error as StdError;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, NoTls, Statement};

use crate::catalog::Queries;
use crate::error::{Result, StorageError};
use crate::lock::LockWait;
use crate::sql::{CatalogDb, Row, Sql, SqlTxn, Value};

pub use schema::{DATA_SCHEMA, SCHEMA_VERSION, catalog_bytes, check_rights, check_version};

/// The advisory lock a writer holds (`pg_advisory_lock`), one per database.
pub const WRITER_LOCK_KEY: i64 = 0x6e65_7572_7374_6f72; // "neurstor"

/// True when `location` names a PostgreSQL store (`postgresql://` or `postgres://`).
pub fn is_url(location: &str) -> bool {
    location.starts_with("postgresql://") || location.starts_with("postgres://")
}

/// The URL without its password, for messages.
pub fn display_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.split_once('@') {
        Some((auth, host)) => (Some(auth), host),
        None => (None, rest),
    };
    match auth.map(|a| a.split_once(':').map_or(a, |(user, _)| user)) {
        Some(user) => format!("{scheme}://{user}@{host}"),
        None => format!("{scheme}://{host}"),
    }
}

/// Opens a client connection with the store's schema first on the search path.
pub fn connect(url: &str) -> Result<Client> {
    let mut client = Client::connect(url, NoTls)?;
    client.batch_execute(&format!(
        "SET search_path TO {DATA_SCHEMA}; SET client_min_messages TO warning"
    ))?;
    Ok(client)
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Int(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT4) => (*f as f32).to_sql(ty, out),
            (Value::Text(s), _) if <&str as ToSql>::accepts(ty) => s.as_str().to_sql(ty, out),
            (Value::Blob(b), &Type::BYTEA) => b.as_slice().to_sql(ty, out),
            (v, ty) => Err(format!("cannot bind {v:?} to a parameter of type {ty}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Column `i` of a PostgreSQL row as a [`Value`].
fn column(row: &postgres::Row, i: usize) -> Result<Value> {
    let ty = row.columns()[i].type_();
    let v = match *ty {
        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::Int),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)?
            .map(|v| Value::Int(v.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)?
            .map(|v| Value::Int(v.into())),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)?
            .map(|v| Value::Int(v.into())),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.map(Value::Real),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(i)?
            .map(|v| Value::Real(v.into())),
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob),
        _ if <String as postgres::types::FromSql>::accepts(ty) => {
            row.try_get::<_, Option<String>>(i)?.map(Value::Text)
        }
        _ => {
            return Err(StorageError::corrupt(
                "catalog",
                format!("column {i} has type {ty}, which the catalog never uses"),
            ));
        }
    };
    Ok(v.unwrap_or(Value::Null))
}

/// The catalog's dialect to PostgreSQL's: `?N` parameters become `$N` (outside quotes). The
/// server side (the extension's SPI) rewrites with it too.
pub fn to_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '\'' | '"') => quote = Some(c),
            (None, '?') => {
                out.push('$');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// A client connection with its prepared statements.
pub struct PgConn {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl PgConn {
    /// Wraps an open connection.
    pub fn new(client: Client) -> Self {
        PgConn {
            client,
            statements: HashMap::new(),
        }
    }

    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(&to_postgres(sql))?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    /// Runs a query in the catalog's dialect.
    pub fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let stmt = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let rows = self.client.query(&stmt, &refs)?;
        rows.iter()
            .map(|r| {
                Ok(Row((0..r.len())
                    .map(|i| column(r, i))
                    .collect::<Result<_>>()?))
            })
            .collect()
    }

    /// Runs a statement in the catalog's dialect.
    pub fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        let stmt = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        Ok(self.client.execute(&stmt, &refs)?)
    }

    /// Runs SQL text as is (transaction control, DDL).
    pub fn batch(&mut self, sql: &str) -> Result<()> {
        Ok(self.client.batch_execute(sql)?)
    }

    /// The underlying client.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// A transaction on a connection; rolled back when dropped uncommitted.
pub(crate) struct PgTxn<'c> {
    conn: &'c Mutex<PgConn>,
    done: bool,
}

impl<'c> PgTxn<'c> {
    /// Starts a transaction with `how` (`BEGIN ...`).
    pub(crate) fn begin(conn: &'c Mutex<PgConn>, how: &str) -> Result<Self> {
        conn.lock().unwrap_or_else(|e| e.into_inner()).batch(how)?;
        Ok(PgTxn { conn, done: false })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, PgConn> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commits.
    pub(crate) fn commit_txn(mut self) -> Result<()> {
        self.done = true;
        self.conn().batch("COMMIT")
    }
}

/// Statements on a connection outside any transaction each commit on their own.
impl Sql for Mutex<PgConn> {
    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .query(sql, params)
    }

    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .execute(sql, params)
    }

    fn batch(&self, sql: &str) -> Result<()> {
        self.lock().unwrap_or_else(|e| e.into_inner()).batch(sql)
    }
}

impl Sql for PgTxn<'_> {
    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.conn.query(sql, params)
    }

    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        self.conn.execute(sql, params)
    }

    fn batch(&self, sql: &str) -> Result<()> {
        Sql::batch(self.conn, sql)
    }
}

impl SqlTxn for PgTxn<'_> {
    fn commit(self: Box<Self>) -> Result<()> {
        (*self).commit_txn()
    }
}

impl Drop for PgTxn<'_> {
    fn drop(&mut self) {
        if !self.done {
            // A failed rollback leaves the connection broken; the next statement says so.
            let _ = self.conn().batch("ROLLBACK");
        }
    }
}

/// The catalog of a store in PostgreSQL, on its own connection.
pub struct PgCatalog {
    conn: Arc<Mutex<PgConn>>,
}

impl PgCatalog {
    /// A catalog over `conn`, whose schema must exist ([`init`] makes it).
    pub fn new(conn: Arc<Mutex<PgConn>>) -> Self {
        PgCatalog { conn }
    }

    fn begin(&mut self, how: &str) -> Result<Box<dyn SqlTxn + '_>> {
        Ok(Box::new(PgTxn::begin(&self.conn, how)?))
    }
}

impl CatalogDb for PgCatalog {
    fn read(&mut self) -> Result<Box<dyn SqlTxn + '_>> {
        self.begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    }

    /// Writers are serialized by the writer lock; a write transaction reads committed rows.
    fn write(&mut self) -> Result<Box<dyn SqlTxn + '_>> {
        self.begin("BEGIN ISOLATION LEVEL READ COMMITTED")
    }

    fn bytes(&mut self) -> Result<Option<u64>> {
        schema::catalog_bytes(&*self.conn).map(Some)
    }
}

/// Creates the store's schema in the database at `url`; the database must hold none yet.
pub fn init(url: &str, store_id: &str) -> Result<()> {
    let conn = Arc::new(Mutex::new(PgConn::new(connect(url)?)));
    init_in(
        Box::new(PgCatalog::new(conn)),
        Path::new(&display_url(url)),
        store_id,
    )
}

/// Creates the store's tables and views through `db` (a client connection, or the server's own
/// inside the caller's transaction) in one transaction, with store id `store_id` (hex); the
/// database, named `label` in errors, must hold none yet.
pub fn init_in(db: Box<dyn CatalogDb>, label: &Path, store_id: &str) -> Result<()> {
    let mut catalog = crate::catalog::Catalog::from_db(db);
    let tx = catalog.write()?;
    if schema::exists(tx.sql())? {
        return Err(StorageError::AlreadyExists(label.to_path_buf()));
    }
    schema::create(tx.sql())?;
    tx.init_store_meta(store_id)?;
    tx.commit()
}

/// Checks that the database (named `label` in errors) holds a store of this build's schema
/// that the current role may read, or, with `write`, write.
pub fn check_store(sql: &dyn Sql, label: &Path, write: bool) -> Result<()> {
    if !schema::exists(sql)? {
        return Err(StorageError::NoStore(label.to_path_buf()));
    }
    schema::check_rights(sql, write)?;
    schema::check_version(sql)
}

/// Opens the catalog connection of the store at `url`, checking it ([`check_store`]); with
/// `lock`, takes the writer lock on it (waiting as `wait` allows).
pub fn open(url: &str, lock: Option<LockWait>) -> Result<Arc<Mutex<PgConn>>> {
    let conn = Mutex::new(PgConn::new(connect(url)?));
    check_store(&conn, Path::new(&display_url(url)), lock.is_some())?;
    if let Some(wait) = lock {
        let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
        take_writer_lock(&mut conn, url, wait)?;
    }
    Ok(Arc::new(conn))
}

fn take_writer_lock(conn: &mut PgConn, url: &str, wait: LockWait) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        let got: bool = conn
            .client()
            .query_one("SELECT pg_try_advisory_lock($1)", &[&WRITER_LOCK_KEY])?
            .get(0);
        if got {
            return Ok(());
        }
        let more = match wait {
            LockWait::No => false,
            LockWait::For(limit) => started.elapsed() < limit,
            LockWait::Forever => true,
        };
        if !more {
            let holder: Option<i32> = conn
                .client()
                .query_opt(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
                     AND ((classid::bigint << 32) | objid::bigint) = $1 LIMIT 1",
                    &[&WRITER_LOCK_KEY],
                )?
                .and_then(|r| r.get(0));
            return Err(StorageError::Locked {
                dir: display_url(url).into(),
                holder: holder.map_or("another session".into(), |p| format!("backend pid {p}")),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_renumbered_outside_quotes_only() {
        assert_eq!(
            to_postgres("SELECT '?1', \"a?\" FROM t WHERE x = ?1 AND y = ?12"),
            "SELECT '?1', \"a?\" FROM t WHERE x = $1 AND y = $12"
        );
    }

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            display_url("postgresql://bob:secret@db:5432/models"),
            "postgresql://bob@db:5432/models"
        );
        assert_eq!(
            display_url("postgres://127.0.0.1/x"),
            "postgres://127.0.0.1/x"
        );
        assert!(is_url("postgresql://x") && is_url("postgres://x") && !is_url("./store"));
    }
}
