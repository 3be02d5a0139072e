//! NeurStore inside PostgreSQL: the `neurstore` extension.
//!
//! `CREATE EXTENSION neurstore;` installs SQL functions in the schema `neurstore` that run the
//! store inside the caller's transaction, through SPI: a model put in a transaction that rolls
//! back leaves nothing behind. The store's tables (schema `neurstore_data`) and its views
//! (`neurstore.models`, `neurstore.tensors`, `neurstore.files`) are the ones the client side
//! (`neurstore --store postgresql://...`) uses, created by the first put when absent, so a
//! model stored one way reads back the other.
//!
//! This file is the SQL face only: each function converts its arguments, runs [`api`] and
//! turns a failure into one PostgreSQL ERROR ([`errors`]). [`spi`] implements the store's
//! catalog and blob traits over SPI; [`guard`] keeps every call to PostgreSQL on the backend's
//! thread.

mod api;
mod errors;
mod files;
mod guard;
mod spi;
mod store;

use pgrx::prelude::*;
use pgrx::{JsonB, pg_sys::errcodes::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR};

use crate::errors::Failure;

::pgrx::pg_module_magic!(name, version);

/// Runs once per backend, when PostgreSQL loads the library, on its main thread.
#[pg_guard]
extern "C-unwind" fn _PG_init() {
    guard::init();
}

/// Runs one SQL function's work, raising its failure as an ERROR.
fn run<T>(f: impl FnOnce() -> Result<T, Failure>) -> T {
    if let Err(why) = guard::enter() {
        Failure::new(ERRCODE_INTERNAL_ERROR, why).raise();
    }
    f().unwrap_or_else(|failure| failure.raise())
}

fn given<'a>(value: Option<&'a str>, argument: &str) -> Result<&'a str, Failure> {
    value.ok_or_else(|| Failure::null(argument))
}

/// Stores the safetensors file or model directory at `path` on the database server as model
/// `name` (needs superuser or `pg_read_server_files`); the put's report.
#[pg_extern]
#[search_path(neurstore_data, pg_catalog, pg_temp)]
fn put(
    name: Option<&str>,
    path: Option<&str>,
    tolerance: default!(Option<f64>, "NULL"),
    rel_tolerance: default!(Option<f64>, "NULL"),
    base: default!(Option<&str>, "'auto'"),
) -> JsonB {
    JsonB(run(|| {
        let options = api::put_options(tolerance, rel_tolerance, given(base, "base")?, false)?;
        api::put(given(name, "name")?, given(path, "path")?, &options)
    }))
}

/// Stores a safetensors file's bytes as model `name`; the put's report.
#[pg_extern]
#[search_path(neurstore_data, pg_catalog, pg_temp)]
fn put_bytes(
    name: Option<&str>,
    data: Option<&[u8]>,
    tolerance: default!(Option<f64>, "NULL"),
    rel_tolerance: default!(Option<f64>, "NULL"),
    base: default!(Option<&str>, "'auto'"),
) -> JsonB {
    JsonB(run(|| {
        let options = api::put_options(tolerance, rel_tolerance, given(base, "base")?, false)?;
        let data = data.ok_or_else(|| Failure::null("data"))?;
        api::put_bytes(given(name, "name")?, data, &options)
    }))
}

/// Model `name` as its safetensors file's bytes (byte for byte as stored losslessly).
#[pg_extern]
#[search_path(neurstore_data, pg_catalog, pg_temp)]
fn get_bytes(name: Option<&str>) -> Vec<u8> {
    run(|| api::get_bytes(given(name, "name")?))
}

/// Writes model `name` to `path` on the database server (needs superuser or
/// `pg_write_server_files`); the report of what was written.
#[pg_extern]
#[search_path(neurstore_data, pg_catalog, pg_temp)]
fn export(name: Option<&str>, path: Option<&str>) -> JsonB {
    JsonB(run(|| {
        api::export(given(name, "name")?, given(path, "path")?)
    }))
}

/// Removes model `name`; its space returns with `neurstore.gc()`.
#[pg_extern]
#[search_path(neurstore_data, pg_catalog, pg_temp)]
fn rm(name: Option<&str>) -> JsonB {
    JsonB(run(|| api::rm(given(name, "name")?)))
}

/// Rewrites packs to drop the blobs of removed models; what it reclaimed.
#[pg_extern]
#[search_path(neurstore_data, pg_catalog, pg_temp)]
fn gc() -> JsonB {
    JsonB(run(api::gc))
}

/// Reads, decodes and checks every stored object; what it found.
#[pg_extern]
#[search_path(neurstore_data, pg_catalog, pg_temp)]
fn verify() -> JsonB {
    JsonB(run(api::verify))
}

/// The store's figures, as the CLI's `stats --json`.
#[pg_extern]
#[search_path(neurstore_data, pg_catalog, pg_temp)]
fn stats() -> JsonB {
    JsonB(run(api::stats))
}

/// What a put of the file or directory at `path` on the server would store (ratio, and per
/// tensor codec, base and error); writes nothing.
#[pg_extern]
#[search_path(neurstore_data, pg_catalog, pg_temp)]
fn dry_run(
    path: Option<&str>,
    tolerance: default!(Option<f64>, "NULL"),
    base: default!(Option<&str>, "'auto'"),
) -> JsonB {
    JsonB(run(|| {
        let options = api::put_options(tolerance, None, given(base, "base")?, true)?;
        api::dry_run(given(path, "path")?, &options)
    }))
}
