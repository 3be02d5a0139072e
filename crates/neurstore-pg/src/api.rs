//! What each SQL function does, over the facade: arguments already converted from SQL, a
//! report (the facade's, serialized as the CLI's `--json` prints it) or a [`Failure`] back.

use std::path::Path;

use neurstore::{BaseChoice, GcSummary, Mode, NoProgress, PutOptions, Store};
use pgrx::pg_sys::errcodes::PgSqlErrorCode::{
    ERRCODE_FEATURE_NOT_SUPPORTED, ERRCODE_PROGRAM_LIMIT_EXCEEDED,
};
use serde_json::Value;

use crate::errors::Failure;
use crate::files::{Scratch, ServerFiles};
use crate::spi::{Access, SpiSql};
use crate::store::{Interrupts, reader, writer};

/// The most bytes a `bytea` value holds (PostgreSQL's 1 GB allocation limit, less the length
/// word).
pub const MAX_BYTEA: u64 = 0x3fff_ffff - 4;

/// The options of a put or a dry run, checked before anything is opened.
pub fn put_options(
    tolerance: Option<f64>,
    rel_tolerance: Option<f64>,
    base: &str,
    dry_run: bool,
) -> Result<PutOptions, Failure> {
    let options = PutOptions {
        mode: Mode::from_tolerances(tolerance, rel_tolerance)?,
        base: BaseChoice::from_arg(base)?,
        dry_run,
        ..Default::default()
    };
    options.check()?;
    Ok(options)
}

fn to_json(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).expect("reports serialize")
}

/// `neurstore.put`: the safetensors file or model directory at `path` on the server.
pub fn put(name: &str, path: &str, options: &PutOptions) -> Result<Value, Failure> {
    ServerFiles::Read.require(&SpiSql::new(Access::Write), "neurstore.put")?;
    put_file(name, Path::new(path), options)
}

fn put_file(name: &str, path: &Path, options: &PutOptions) -> Result<Value, Failure> {
    let store = writer(true)?;
    let report = store.put(name, path, options, &Interrupts)?;
    Ok(to_json(&report))
}

/// `neurstore.put_bytes`: a safetensors file's bytes, through a temporary file.
pub fn put_bytes(name: &str, data: &[u8], options: &PutOptions) -> Result<Value, Failure> {
    let scratch = Scratch::new()?;
    let path = scratch.write_model(data)?;
    put_file(name, &path, options).map_err(|f| f.naming(&path, "the data given"))
}

/// `neurstore.get_bytes`: the model's file (safetensors, or the ONNX, PyTorch or GGUF file a
/// client put), byte for byte, built in memory.
pub fn get_bytes(name: &str) -> Result<Vec<u8>, Failure> {
    let store = reader()?;
    let info = store.info(name)?;
    if info.source_format == "directory" {
        return Err(Failure::new(
            ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "model {name:?} was imported from a directory of {} files, not one file; write \
                 it out with neurstore.export(name, directory) or the client's `neurstore get`",
                info.files.len()
            ),
        ));
    }
    if info.raw_bytes > MAX_BYTEA {
        return Err(too_big(name, info.raw_bytes));
    }
    Ok(store.get_bytes(name, MAX_BYTEA, &Interrupts)?)
}

fn too_big(name: &str, bytes: u64) -> Failure {
    Failure::new(
        ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        format!(
            "model {name:?} is {bytes} bytes, more than the 1 GB a bytea value holds; read it \
             with the client instead: neurstore --store postgresql://USER@HOST/DB get {name} FILE"
        ),
    )
}

/// `neurstore.export`: the model written to `path` on the server.
pub fn export(name: &str, path: &str) -> Result<Value, Failure> {
    ServerFiles::Write.require(&SpiSql::new(Access::Read), "neurstore.export")?;
    let path = Path::new(path);
    neurstore::check_output(path, false)?;
    let store = reader()?;
    Ok(to_json(&store.get(name, path, &Interrupts)?))
}

/// `neurstore.rm`.
pub fn rm(name: &str) -> Result<Value, Failure> {
    Ok(to_json(&writer(false)?.remove(name)?))
}

/// `neurstore.gc`: the fields of the CLI's `gc --json`.
pub fn gc() -> Result<Value, Failure> {
    let report = writer(false)?.gc(&Interrupts)?;
    Ok(to_json(&GcSummary::from(&report)))
}

/// `neurstore.verify`.
pub fn verify() -> Result<Value, Failure> {
    Ok(to_json(&reader()?.verify(&NoProgress)?))
}

/// `neurstore.stats`.
pub fn stats() -> Result<Value, Failure> {
    Ok(to_json(&reader()?.stats()?))
}

/// `neurstore.dry_run`: what a put of the file or directory at `path` on the server would
/// store; writes nothing.
pub fn dry_run(path: &str, options: &PutOptions) -> Result<Value, Failure> {
    ServerFiles::Read.require(&SpiSql::new(Access::Read), "neurstore.dry_run")?;
    let store = reader()?;
    let name = unused_name(&store)?;
    let report = store.put(&name, Path::new(path), options, &Interrupts)?;
    Ok(to_json(&report))
}

/// A model name no model has, for a dry run's report.
fn unused_name(store: &Store) -> Result<String, Failure> {
    let taken: std::collections::HashSet<String> =
        store.list()?.into_iter().map(|m| m.name).collect();
    Ok((0..)
        .map(|i| match i {
            0 => "dry-run".to_string(),
            i => format!("dry-run-{i}"),
        })
        .find(|n| !taken.contains(n))
        .expect("finitely many names are taken"))
}
