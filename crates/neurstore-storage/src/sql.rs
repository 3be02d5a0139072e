//! The catalog's database, behind traits: the SQL the catalog speaks is one dialect that
//! SQLite (the embedded store) and PostgreSQL both accept, sent through [`Sql`]; transactions
//! come from a [`CatalogDb`]. `catalog` holds every query once; `sqlite` and `postgres`
//! implement these traits.
//!
//! The dialect: parameters are written `?1`, `?2`, ... (each implementation binds them its way);
//! integers are 64-bit, `BLOB`/`bytea` columns hold bytes; `SUM`/`MAX` over integers are cast
//! back to `BIGINT`; no function one of the two lacks (`max(a, b)`, `GREATEST`, `IFNULL`) is used;
//! the column named `offset` is always quoted.

use crate::error::{Result, StorageError};

/// One SQL value, as bound to a parameter or read from a column.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit integer.
    Int(i64),
    /// A double.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<u64> for Value {
    /// Catalog integers are stored signed; every count and length the engine keeps fits.
    fn from(v: u64) -> Self {
        Value::Int(v as i64)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Blob(v.to_vec())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Parameters for [`Sql`] calls: `params![a, b]` is `&[Value::from(a), Value::from(b)]`.
#[macro_export]
#[doc(hidden)]
macro_rules! sql_params {
    ($($v:expr),* $(,)?) => {
        &[$($crate::sql::Value::from($v)),*][..]
    };
}
pub use crate::sql_params as params;

/// A value read from a column, converted to a Rust type.
pub trait FromValue: Sized {
    /// `None` when the value has another type.
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl FromValue for f64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Real(f) => Some(*f),
            // SQLite hands back a REAL column holding a whole number as written.
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
}

impl FromValue for String {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// One result row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Value>);

impl Row {
    /// Column `i` as `T`; a missing column or another type is a corrupt catalog.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T> {
        let v = self
            .0
            .get(i)
            .ok_or_else(|| StorageError::corrupt("catalog", format!("a row lacks column {i}")))?;
        T::from_value(v).ok_or_else(|| {
            StorageError::corrupt(
                "catalog",
                format!(
                    "column {i} holds {v:?}, not a {}",
                    std::any::type_name::<T>()
                ),
            )
        })
    }
}

/// A connection (inside a transaction) that runs the catalog's SQL.
pub trait Sql {
    /// Runs a query and returns every row.
    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;

    /// Runs a statement and returns the number of rows it changed.
    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64>;

    /// Runs SQL text of one or more statements without parameters (DDL, transaction control).
    fn batch(&self, sql: &str) -> Result<()>;

    /// The first row of a query, if any.
    fn query_opt(&self, sql: &str, params: &[Value]) -> Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The one row a query must return.
    fn query_one(&self, sql: &str, params: &[Value]) -> Result<Row> {
        self.query_opt(sql, params)?
            .ok_or_else(|| StorageError::corrupt("catalog", format!("no row for {sql:?}")))
    }
}

/// An open transaction.
pub trait SqlTxn: Sql {
    /// Makes the transaction's changes durable and visible. Dropping it uncommitted rolls
    /// them back.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// A catalog database: hands out transactions.
pub trait CatalogDb: Send {
    /// A read transaction: every query through it sees one consistent snapshot.
    fn read(&mut self) -> Result<Box<dyn SqlTxn + '_>>;

    /// A write transaction, serialized with every other writer of the catalog.
    fn write(&mut self) -> Result<Box<dyn SqlTxn + '_>>;

    /// Folds any log back into the main database file (SQLite's WAL); nothing elsewhere.
    fn checkpoint(&mut self) -> Result<()> {
        Ok(())
    }

    /// Bytes the catalog takes where the database can say (a store in PostgreSQL: its tables
    /// with TOAST and indexes); `None` for SQLite, whose file the engine measures itself.
    fn bytes(&mut self) -> Result<Option<u64>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_convert_by_type_and_reject_others() {
        let row = Row(vec![
            Value::Int(7),
            Value::Null,
            Value::Text("x".into()),
            Value::Blob(vec![1, 2]),
            Value::Int(2),
        ]);
        assert_eq!(row.get::<i64>(0).unwrap(), 7);
        assert_eq!(row.get::<Option<i64>>(1).unwrap(), None);
        assert_eq!(row.get::<Option<String>>(2).unwrap().as_deref(), Some("x"));
        assert_eq!(row.get::<Vec<u8>>(3).unwrap(), vec![1, 2]);
        assert_eq!(row.get::<f64>(4).unwrap(), 2.0);
        assert!(row.get::<String>(0).is_err());
        assert!(row.get::<i64>(1).is_err());
        assert!(row.get::<i64>(9).is_err());
    }

    #[test]
    fn params_convert_every_rust_type_the_catalog_binds() {
        let none: Option<i64> = None;
        let p = params![1i64, 2u64, "a", &[9u8][..], none, Some(0.5f64)];
        assert_eq!(
            p,
            &[
                Value::Int(1),
                Value::Int(2),
                Value::Text("a".into()),
                Value::Blob(vec![9]),
                Value::Null,
                Value::Real(0.5)
            ][..]
        );
    }
}
