//! The embedded store's catalog database: SQLite in `catalog.db`, behind [`CatalogDb`].

use rusqlite::Connection;
use rusqlite::types::{ToSqlOutput, ValueRef};

use crate::error::Result;
use crate::sql::{CatalogDb, Row, Sql, SqlTxn, Value};

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn value(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

impl Sql for Connection {
    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let mut stmt = self.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(columns);
            for i in 0..columns {
                row.push(value(r.get_ref(i)?));
            }
            out.push(Row(row));
        }
        Ok(out)
    }

    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        let mut stmt = self.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(params))? as u64)
    }

    fn batch(&self, sql: &str) -> Result<()> {
        Ok(self.execute_batch(sql)?)
    }
}

/// A transaction on an SQLite catalog.
struct SqliteTxn<'c>(rusqlite::Transaction<'c>);

impl Sql for SqliteTxn<'_> {
    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        Sql::query(&*self.0, sql, params)
    }

    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        Sql::execute(&*self.0, sql, params)
    }

    fn batch(&self, sql: &str) -> Result<()> {
        Sql::batch(&*self.0, sql)
    }
}

impl SqlTxn for SqliteTxn<'_> {
    fn commit(self: Box<Self>) -> Result<()> {
        Ok(self.0.commit()?)
    }
}

/// An open SQLite catalog.
pub(crate) struct SqliteDb(pub(crate) Connection);

impl CatalogDb for SqliteDb {
    fn read(&mut self) -> Result<Box<dyn SqlTxn + '_>> {
        let tx = self
            .0
            .transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)?;
        Ok(Box::new(SqliteTxn(tx)))
    }

    /// Takes SQLite's write lock at once.
    fn write(&mut self) -> Result<Box<dyn SqlTxn + '_>> {
        let tx = self
            .0
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        Ok(Box::new(SqliteTxn(tx)))
    }

    fn checkpoint(&mut self) -> Result<()> {
        self.0
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}
