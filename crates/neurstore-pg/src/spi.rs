//! The store's traits over SPI, inside the caller's transaction: [`SpiSql`] runs the catalog's
//! SQL ([`Sql`]), [`SpiCatalog`] hands it out as transactions that start and commit nothing
//! ([`CatalogDb`]: the caller's transaction commits or rolls back everything), and [`SpiRunner`]
//! gives it to the pack chunks ([`SqlRunner`]).
//!
//! Each statement is one `SPI_connect` .. `SPI_finish`: parameters arrive in the catalog's
//! dialect (`?N`), are renumbered `$N`, and their types are inferred by the parser from the
//! statement, as a client's prepared statement has them inferred, so a NULL takes the type of
//! the column it goes to. Rows are copied out before `SPI_finish` frees them.
//!
//! Readers ([`Access::Read`]) run every statement on the calling statement's snapshot (SPI's
//! read-only mode), so one SQL call sees one consistent store even while a writer commits;
//! writers see each statement's fresh snapshot (after the writer lock, the rows others
//! committed) and their own writes.

use std::ffi::{CStr, CString, c_int, c_void};
use std::ptr;

use neurstore_storage::postgres::blobs::SqlRunner;
use neurstore_storage::sql::{CatalogDb, Row, Sql, SqlTxn, Value};
use neurstore_storage::{Result, StorageError};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{FromDatum, IntoDatum};

use crate::guard;

/// What the statements of one SQL call may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read only, on the calling statement's snapshot.
    Read,
    /// Read and write, each statement on a fresh snapshot.
    Write,
}

/// The catalog's SQL, run through SPI.
#[derive(Debug, Clone, Copy)]
pub struct SpiSql {
    access: Access,
}

impl SpiSql {
    /// Statements with `access`.
    pub fn new(access: Access) -> Self {
        SpiSql { access }
    }

    /// Runs one statement, returning its rows (for a query) and the rows it processed.
    fn run(&self, sql: &str, params: &[Value]) -> Result<(Vec<Row>, u64)> {
        guard::check().map_err(refused)?;
        let text = CString::new(neurstore_storage::postgres::to_postgres(sql))
            .map_err(|_| StorageError::Unsupported("a statement holds a NUL byte".into()))?;
        let read_only = self.access == Access::Read;
        guard::call(|| unsafe { connected(|| prepare_and_execute(&text, params, read_only)) })
    }
}

fn refused(why: &'static str) -> StorageError {
    StorageError::Unsupported(why.to_string())
}

impl Sql for SpiSql {
    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        Ok(self.run(sql, params)?.0)
    }

    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        Ok(self.run(sql, params)?.1)
    }

    fn batch(&self, sql: &str) -> Result<()> {
        guard::check().map_err(refused)?;
        let text = CString::new(sql)
            .map_err(|_| StorageError::Unsupported("a statement holds a NUL byte".into()))?;
        let read_only = self.access == Access::Read;
        guard::call(|| unsafe {
            connected(|| {
                let rc = pg_sys::SPI_execute(text.as_ptr(), read_only, 0);
                spi_status(rc, "run")
            })
        })
    }
}

/// The caller's transaction, seen as a transaction of the catalog: it commits with the caller.
struct InCallerTxn(SpiSql);

impl Sql for InCallerTxn {
    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.0.query(sql, params)
    }

    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        self.0.execute(sql, params)
    }

    fn batch(&self, sql: &str) -> Result<()> {
        self.0.batch(sql)
    }
}

impl SqlTxn for InCallerTxn {
    /// Nothing to do: the caller's transaction commits (or rolls back) every statement of the
    /// call together. An error from the store becomes a PostgreSQL ERROR, which aborts it.
    fn commit(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// The catalog database of a store in this database, inside the caller's transaction.
pub struct SpiCatalog {
    access: Access,
}

impl SpiCatalog {
    /// A catalog whose transactions run with `access`.
    pub fn new(access: Access) -> Self {
        SpiCatalog { access }
    }
}

impl CatalogDb for SpiCatalog {
    fn read(&mut self) -> Result<Box<dyn SqlTxn + '_>> {
        Ok(Box::new(InCallerTxn(SpiSql::new(self.access))))
    }

    fn write(&mut self) -> Result<Box<dyn SqlTxn + '_>> {
        if self.access == Access::Read {
            return Err(StorageError::ReadOnly);
        }
        Ok(Box::new(InCallerTxn(SpiSql::new(Access::Write))))
    }

    fn bytes(&mut self) -> Result<Option<u64>> {
        neurstore_storage::postgres::catalog_bytes(&SpiSql::new(self.access)).map(Some)
    }
}

/// Pack chunks in this database, inside the caller's transaction.
pub struct SpiRunner {
    access: Access,
}

impl SpiRunner {
    /// Chunk statements with `access`.
    pub fn new(access: Access) -> Self {
        SpiRunner { access }
    }
}

impl SqlRunner for SpiRunner {
    fn run(&self, f: &mut dyn FnMut(&dyn Sql) -> Result<()>) -> Result<()> {
        f(&SpiSql::new(self.access))
    }
}

/// Runs `f` between `SPI_connect` and `SPI_finish`. An error PostgreSQL raises skips
/// `SPI_finish`: the transaction's abort cleans up SPI.
unsafe fn connected<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let rc = unsafe { pg_sys::SPI_connect() };
    if rc != pg_sys::SPI_OK_CONNECT as c_int {
        return Err(spi_error(rc, "connect"));
    }
    let out = f();
    unsafe { pg_sys::SPI_finish() };
    out
}

fn spi_error(rc: c_int, what: &str) -> StorageError {
    // SAFETY: SPI_result_code_string returns a static string for every code.
    let name = unsafe { CStr::from_ptr(pg_sys::SPI_result_code_string(rc)) };
    StorageError::Unsupported(format!(
        "SPI could not {what} a statement: {}",
        name.to_string_lossy()
    ))
}

fn spi_status(rc: c_int, what: &str) -> Result<()> {
    if rc < 0 {
        Err(spi_error(rc, what))
    } else {
        Ok(())
    }
}

unsafe extern "C-unwind" {
    /// parser/parse_param.h: parameters whose types the parser infers from their use, as for a
    /// client's prepared statement. Not in pgrx's bindings.
    fn setup_parse_variable_parameters(
        pstate: *mut pg_sys::ParseState,
        param_types: *mut *mut pg_sys::Oid,
        num_params: *mut c_int,
    );
}

/// The parser's state for inferred parameter types: an array of `count` types, allocated in
/// SPI's procedure memory before the statement is parsed so that it outlives parsing.
#[repr(C)]
struct InferredTypes {
    types: *mut pg_sys::Oid,
    count: c_int,
}

#[pg_guard]
unsafe extern "C-unwind" fn infer_parameter_types(
    pstate: *mut pg_sys::ParseState,
    arg: *mut c_void,
) {
    let state = arg.cast::<InferredTypes>();
    // SAFETY: `arg` is the `InferredTypes` that `prepare_and_execute` passed and keeps alive.
    unsafe {
        setup_parse_variable_parameters(pstate, &raw mut (*state).types, &raw mut (*state).count)
    };
}

/// Prepares `text` with its parameters' types inferred, binds `params` and executes it.
unsafe fn prepare_and_execute(
    text: &CStr,
    params: &[Value],
    read_only: bool,
) -> Result<(Vec<Row>, u64)> {
    let n = c_int::try_from(params.len())
        .map_err(|_| StorageError::Unsupported("too many parameters".into()))?;
    let types: *mut pg_sys::Oid = if n > 0 {
        // Zeroed: InvalidOid until the parser sees the parameter.
        unsafe { pg_sys::palloc0(params.len() * size_of::<pg_sys::Oid>()).cast() }
    } else {
        ptr::null_mut()
    };
    let mut inferred = InferredTypes { types, count: n };
    let options = pg_sys::SPIPrepareOptions {
        parserSetup: Some(infer_parameter_types),
        parserSetupArg: (&raw mut inferred).cast(),
        parseMode: pg_sys::RawParseMode::RAW_PARSE_DEFAULT,
        cursorOptions: 0,
    };
    let plan = unsafe { pg_sys::SPI_prepare_extended(text.as_ptr(), &options) };
    if plan.is_null() {
        return Err(spi_error(unsafe { pg_sys::SPI_result }, "prepare"));
    }
    if inferred.count != n || inferred.types != types {
        return Err(StorageError::Unsupported(format!(
            "a statement uses {} parameters but {} were given: {}",
            inferred.count,
            n,
            text.to_string_lossy()
        )));
    }
    let list = if n > 0 {
        let list = unsafe { pg_sys::makeParamList(n) };
        let slots = unsafe { (*list).params.as_mut_slice(params.len()) };
        for (i, (value, slot)) in params.iter().zip(slots.iter_mut()).enumerate() {
            let ty = unsafe { *types.add(i) };
            let (datum, isnull) = unsafe { to_datum(value, ty, i + 1)? };
            slot.value = datum;
            slot.isnull = isnull;
            slot.pflags = pg_sys::PARAM_FLAG_CONST as u16;
            slot.ptype = ty;
        }
        list
    } else {
        ptr::null_mut()
    };
    let rc = unsafe { pg_sys::SPI_execute_plan_with_paramlist(plan, list, read_only, 0) };
    spi_status(rc, "execute")?;
    let processed = unsafe { pg_sys::SPI_processed };
    let rows = unsafe { copy_rows()? };
    Ok((rows, processed))
}

/// A parameter's value as a datum of the type the parser inferred for it (`number`: 1-based).
unsafe fn to_datum(value: &Value, ty: pg_sys::Oid, number: usize) -> Result<(pg_sys::Datum, bool)> {
    let datum = match (value, ty) {
        (Value::Null, _) => return Ok((pg_sys::Datum::from(0usize), true)),
        (Value::Int(i), pg_sys::INT8OID) => i.into_datum(),
        (Value::Int(i), pg_sys::INT4OID) => i32::try_from(*i)
            .map_err(|_| out_of_range(number))?
            .into_datum(),
        (Value::Int(i), pg_sys::INT2OID) => i16::try_from(*i)
            .map_err(|_| out_of_range(number))?
            .into_datum(),
        (Value::Int(i), pg_sys::FLOAT8OID) => (*i as f64).into_datum(),
        (Value::Real(f), pg_sys::FLOAT8OID) => f.into_datum(),
        (Value::Real(f), pg_sys::FLOAT4OID) => (*f as f32).into_datum(),
        (Value::Text(s), pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::BPCHAROID) => {
            s.as_str().into_datum()
        }
        (Value::Blob(b), pg_sys::BYTEAOID) => b.as_slice().into_datum(),
        (Value::Blob(_), _) => return Err(cannot_bind(value, ty, number)),
        (_, pg_sys::UNKNOWNOID | pg_sys::InvalidOid) => {
            return Err(StorageError::Unsupported(format!(
                "the type of parameter ${number} cannot be inferred from the statement"
            )));
        }
        // Any other type (name, numeric, ...) from the value's text, by the type's input function.
        (Value::Int(i), _) => Some(unsafe { from_text(&i.to_string(), ty)? }),
        (Value::Real(f), _) => Some(unsafe { from_text(&f.to_string(), ty)? }),
        (Value::Text(s), _) => Some(unsafe { from_text(s, ty)? }),
    };
    datum
        .map(|d| (d, false))
        .ok_or_else(|| cannot_bind(value, ty, number))
}

fn out_of_range(number: usize) -> StorageError {
    StorageError::Unsupported(format!("parameter ${number} is out of its column's range"))
}

fn cannot_bind(value: &Value, ty: pg_sys::Oid, number: usize) -> StorageError {
    let kind = match value {
        Value::Null => "NULL",
        Value::Int(_) => "an integer",
        Value::Real(_) => "a double",
        Value::Text(_) => "text",
        Value::Blob(_) => "bytes",
    };
    StorageError::Unsupported(format!(
        "cannot bind {kind} to parameter ${number} of type oid {}",
        ty.to_u32()
    ))
}

/// A datum of type `ty` parsed from `text` by the type's input function.
unsafe fn from_text(text: &str, ty: pg_sys::Oid) -> Result<pg_sys::Datum> {
    let c = CString::new(text)
        .map_err(|_| StorageError::Unsupported("a parameter holds a NUL byte".into()))?;
    let mut func = pg_sys::InvalidOid;
    let mut ioparam = pg_sys::InvalidOid;
    unsafe {
        pg_sys::getTypeInputInfo(ty, &mut func, &mut ioparam);
        Ok(pg_sys::OidInputFunctionCall(
            func,
            c.as_ptr().cast_mut(),
            ioparam,
            -1,
        ))
    }
}

/// The rows of the last statement, copied out of SPI's memory.
unsafe fn copy_rows() -> Result<Vec<Row>> {
    let table = unsafe { pg_sys::SPI_tuptable };
    if table.is_null() {
        return Ok(Vec::new());
    }
    let (desc, count) = unsafe { ((*table).tupdesc, pg_sys::SPI_processed as usize) };
    let width = unsafe { (*desc).natts } as usize;
    let mut rows = Vec::with_capacity(count);
    for r in 0..count {
        let tuple = unsafe { *(*table).vals.add(r) };
        let mut row = Vec::with_capacity(width);
        for c in 1..=width {
            let c = c as c_int;
            let mut isnull = false;
            let ty = unsafe { pg_sys::SPI_gettypeid(desc, c) };
            let datum = unsafe { pg_sys::SPI_getbinval(tuple, desc, c, &mut isnull) };
            row.push(if isnull {
                Value::Null
            } else {
                unsafe { column(datum, ty)? }
            });
        }
        rows.push(Row(row));
    }
    Ok(rows)
}

/// A non-null column of type `ty` as a [`Value`], as the client side reads it: integers and
/// booleans as integers, floats as doubles, bytea as bytes, anything else as its text.
unsafe fn column(datum: pg_sys::Datum, ty: pg_sys::Oid) -> Result<Value> {
    let value = unsafe {
        match ty {
            pg_sys::INT8OID => i64::from_datum(datum, false).map(Value::Int),
            pg_sys::INT4OID => i32::from_datum(datum, false).map(|v| Value::Int(v.into())),
            pg_sys::INT2OID => i16::from_datum(datum, false).map(|v| Value::Int(v.into())),
            pg_sys::BOOLOID => bool::from_datum(datum, false).map(|v| Value::Int(v.into())),
            pg_sys::FLOAT8OID => f64::from_datum(datum, false).map(Value::Real),
            pg_sys::FLOAT4OID => f32::from_datum(datum, false).map(|v| Value::Real(v.into())),
            pg_sys::BYTEAOID => Vec::<u8>::from_datum(datum, false).map(Value::Blob),
            pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::BPCHAROID => {
                String::from_datum(datum, false).map(Value::Text)
            }
            _ => {
                let mut func = pg_sys::InvalidOid;
                let mut varlena = false;
                pg_sys::getTypeOutputInfo(ty, &mut func, &mut varlena);
                let text = pg_sys::OidOutputFunctionCall(func, datum);
                Some(Value::Text(
                    CStr::from_ptr(text).to_string_lossy().into_owned(),
                ))
            }
        }
    };
    value.ok_or_else(|| {
        StorageError::corrupt(
            "catalog",
            format!("a column of type oid {} reads as NULL", ty.to_u32()),
        )
    })
}
