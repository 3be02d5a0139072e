//! NeurStore: an embedded storage engine for deep learning models.
//!
//! A store is one directory. Models go in as safetensors files or Hugging Face style model
//! directories; each distinct tensor and file is stored once, compressed losslessly where that
//! pays, and every model comes back byte for byte.
//!
//! ```
//! use neurstore::{NoProgress, PutOptions, Store};
//! # fn main() -> Result<(), neurstore::Error> {
//! let dir = tempfile::tempdir().unwrap();
//! let root = dir.path().join("store");
//! Store::init(&root)?;
//! let store = Store::open_writer(&root)?;
//!
//! // A one-tensor safetensors file.
//! let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
//! let mut file = (header.len() as u64).to_le_bytes().to_vec();
//! file.extend_from_slice(header);
//! file.extend_from_slice(&[0, 0, 128, 63, 0, 0, 0, 64]);
//! let input = dir.path().join("tiny.safetensors");
//! std::fs::write(&input, &file).unwrap();
//!
//! store.put("tiny", &input, &PutOptions::default(), &NoProgress)?;
//! store.put("tiny-again", &input, &PutOptions::default(), &NoProgress)?;
//! assert_eq!(store.stats()?.unique_tensors, 1);
//!
//! let output = dir.path().join("out.safetensors");
//! store.get("tiny", &output, &NoProgress)?;
//! assert_eq!(std::fs::read(&output).unwrap(), file);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod containers;
mod convert;
mod decode;
mod error;
mod export;
mod gc;
mod import;
mod inspect;
mod options;
mod paths;
mod plan;
mod progress;
mod put;
mod resident;
mod snapshot;

use std::path::Path;

pub use containers::{FormatInfo, GraphInfo, GraphValue};
pub use convert::{GetOptions, OutputFormat, conversion};
pub use decode::BaseCacheStats;
pub use decode::TensorData;
pub use error::{Error, ErrorKind, Result};
pub use export::{GetReport, LoadedTensor};
pub use gc::{GcSummary, RecoverySummary};
pub use import::TensorInput;
pub use inspect::{
    FileInfo, KindStats, ModelInfo, ModelSummary, Stats, TensorInfo, VerifyReport, civil_from_days,
};
pub use neurstore_core::dtype::DType;
pub use neurstore_core::kernel::{BaseMatrix, QuantMatrix};
pub use neurstore_storage::lock::LockWait;
pub use neurstore_storage::rebuild::RebuildReport;
pub use neurstore_storage::{GcReport, RecoveryReport, StorageError};
pub use options::{
    BaseChoice, Mode, PutOptions, Threads, check_output, lock_wait, metadata_from_json,
    metadata_from_pairs, threads,
};
pub use paths::{MAX_STORED_PATH_BYTES, StoredPathError, validate_stored_path};
pub use progress::{NoProgress, Progress};
pub use put::{PutReport, TensorReport};
pub use resident::{ResidentModel, ResidentOptions, ResidentTensor, ResidentWeight, SharedBases};

use neurstore_storage::catalog::Queries;
use neurstore_storage::{Engine, EngineOptions};

/// An open store.
pub struct Store {
    engine: Engine,
    recovery: RecoveryReport,
    /// Whether a gc report already counted `recovery`.
    open_recovery_reported: std::sync::atomic::AtomicBool,
    base_cache: std::sync::Mutex<decode::BaseCache>,
}

/// How to open a store.
#[derive(Clone, Default)]
pub struct StoreOptions {
    /// Take the writer lock. Readers need no lock and may run alongside one writer.
    pub write: bool,
    /// Close pack files past this many bytes (default 1 GiB).
    pub max_pack_len: Option<u64>,
    /// Bytes of decoded base tensors kept in memory for reuse (default 1 GiB).
    pub base_cache_bytes: Option<u64>,
    /// I/O backend for pack files (default: the store's `packs/` directory). Tests pass a
    /// fault-injecting one; the catalog stays in `root` whatever the backend.
    pub backend: Option<std::sync::Arc<dyn neurstore_storage::backend::Backend>>,
    /// Open for reading only (not with `write`): works on a store the user can read but not
    /// write. Nothing is created, no lock is taken, and an old catalog is not migrated (the
    /// open says to run `neurstore upgrade`). [`Store::open`] sets it.
    pub read_only: bool,
    /// With `write`: how long to wait for the writer lock another process holds (default: fail
    /// at once, naming the holder).
    pub wait: LockWait,
}

/// What `rm` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RemoveReport {
    /// Model removed.
    pub name: String,
    /// Stored objects no other model used, now dead (their space returns with `gc`).
    pub objects_freed: u64,
}

impl Store {
    /// Creates an empty store at `root` (a new or empty directory).
    pub fn init(root: &Path) -> Result<()> {
        Ok(Engine::init(root)?)
    }

    /// Creates an empty store in a PostgreSQL database through `db` (the server's own connection,
    /// inside the caller's transaction: the PostgreSQL extension); `label` names it in errors.
    pub fn init_in_database(
        db: Box<dyn neurstore_storage::sql::CatalogDb>,
        label: &Path,
    ) -> Result<()> {
        let id: String = neurstore_storage::engine::new_store_id_hex(label);
        Ok(neurstore_storage::postgres::init_in(db, label, &id)?)
    }

    /// Opens the store in a database over a catalog database and a pack backend the caller
    /// made (the PostgreSQL extension's). The caller serializes writers (`options.wait` and
    /// the lock file do not apply).
    pub fn open_in_database(
        label: &Path,
        db: Box<dyn neurstore_storage::sql::CatalogDb>,
        backend: std::sync::Arc<dyn neurstore_storage::backend::Backend>,
        options: StoreOptions,
    ) -> Result<Store> {
        let engine_options = EngineOptions {
            write: options.write,
            backend: None,
            read_only: options.read_only,
            max_pack_len: options
                .max_pack_len
                .unwrap_or(neurstore_storage::engine::DEFAULT_MAX_PACK_LEN),
            ..Default::default()
        };
        let (engine, recovery) =
            Engine::open_parts(label.to_path_buf(), db, backend, engine_options)?;
        Ok(Self::over(engine, recovery, options.base_cache_bytes))
    }

    /// Opens a store for reading only: it takes no lock and writes nothing, so it works on a
    /// store the user can read but not write.
    pub fn open(root: &Path) -> Result<Store> {
        Self::open_with(
            root,
            StoreOptions {
                read_only: true,
                ..Default::default()
            },
        )
    }

    /// Opens a store for writing, taking its lock and recovering from any interrupted write.
    pub fn open_writer(root: &Path) -> Result<Store> {
        Self::open_with(
            root,
            StoreOptions {
                write: true,
                ..Default::default()
            },
        )
    }

    /// Opens a store with explicit options.
    pub fn open_with(root: &Path, options: StoreOptions) -> Result<Store> {
        if options.write && options.read_only {
            return Err(Error::invalid(
                root,
                "a store cannot be opened both for writing and read-only",
            ));
        }
        let mut engine_options = EngineOptions {
            write: options.write,
            backend: options.backend,
            read_only: options.read_only,
            lock_wait: options.wait,
            ..Default::default()
        };
        if let Some(len) = options.max_pack_len {
            engine_options.max_pack_len = len;
        }
        let base_cache_bytes = options.base_cache_bytes;
        let (engine, recovery) = Engine::open(root, engine_options)?;
        Ok(Self::over(engine, recovery, base_cache_bytes))
    }

    /// The store over an opened engine, with a cache of decoded bases of that many bytes
    /// (default 1 GiB).
    fn over(engine: Engine, recovery: RecoveryReport, base_cache_bytes: Option<u64>) -> Store {
        let cache = decode::BaseCache::new(base_cache_bytes.unwrap_or(1 << 30));
        Store {
            engine,
            recovery,
            open_recovery_reported: std::sync::atomic::AtomicBool::new(false),
            base_cache: std::sync::Mutex::new(cache),
        }
    }

    /// Counters of the cache of decoded bases this handle shares between reads: a model
    /// decoded against a cached base reads and decodes that base only once.
    pub fn base_cache_stats(&self) -> BaseCacheStats {
        self.base_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stats()
    }

    /// What recovery did when this store was opened for writing.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Removes model `name`. Objects other models use stay; the rest become garbage for `gc`.
    pub fn remove(&self, name: &str) -> Result<RemoveReport> {
        let mut freed = 0;
        let mut session = self.engine.begin_write()?;
        if self.engine.read(|q| q.model(name))?.is_none() {
            return Err(StorageError::ModelNotFound(name.to_string()).into());
        }
        // The removal is written into the packs too, so a catalog rebuilt from them agrees.
        let (seq, at) = session.append_tombstone(name)?;
        session.commit(|tx| {
            freed = tx.delete_model(name)?;
            tx.insert_tombstone(seq, name, at)
        })?;
        Ok(RemoveReport {
            name: name.to_string(),
            objects_freed: freed,
        })
    }

    /// Rebuilds the catalog of the store at `root` from its packs alone (a lost, emptied or
    /// damaged `catalog.db`); the old catalog is kept beside it, renamed. Models whose records
    /// are all intact come back byte for byte; the report names any that cannot.
    pub fn recover(root: &Path) -> Result<RebuildReport> {
        Self::recover_with(root, None)
    }

    /// [`Store::recover`] over another pack backend (tests pass a fault-injecting one).
    pub fn recover_with(
        root: &Path,
        backend: Option<std::sync::Arc<dyn neurstore_storage::backend::Backend>>,
    ) -> Result<RebuildReport> {
        Ok(neurstore_storage::rebuild::rebuild(root, backend)?)
    }

    /// The store's format version (1 or 2).
    pub fn format_version(&self) -> u32 {
        self.engine.format_version()
    }
}

/// Names the store and the action in a catalog error (SQLite's own words become one sentence
/// such as "could not read the store at DIR: ..."); other errors pass unchanged. Front ends
/// call it with the command they ran.
pub fn in_store(err: Error, root: &Path, action: &str) -> Error {
    match err {
        Error::Storage(e) => Error::Storage(e.in_store(root, action)),
        other => other,
    }
}

/// True when `location` is the URL of a store in PostgreSQL rather than a directory.
pub fn is_database_url(location: &Path) -> bool {
    neurstore_storage::engine::postgres_url(location).is_some()
}

/// How messages and front ends name the store at `location`: its directory, or the URL of a
/// store in PostgreSQL without its password.
pub fn store_label(location: &Path) -> String {
    match neurstore_storage::engine::postgres_url(location) {
        Some(url) => neurstore_storage::postgres::display_url(url),
        None => location.display().to_string(),
    }
}
