//! NeurStore's storage layer: the I/O backend trait, append-only pack files, the SQLite
//! catalog, the writer lock, the commit protocol, recovery and garbage collection.
//!
//! ```
//! use neurstore_storage::{Engine, EngineOptions};
//! let dir = tempfile::tempdir().unwrap();
//! let root = dir.path().join("store");
//! Engine::init(&root).unwrap();
//! let (engine, recovery) = Engine::open(&root, EngineOptions { write: true, ..Default::default() }).unwrap();
//! assert_eq!(recovery.truncated_bytes, 0);
//! assert!(engine.is_writer());
//! ```
#![deny(missing_docs)]

pub mod backend;
pub mod catalog;
pub mod engine;
pub mod error;
#[cfg(any(test, feature = "fault-injection"))]
pub mod fault;
mod gc;
pub mod index;
pub mod lock;
pub mod pack;
pub mod postgres;
pub mod rebuild;
pub mod record;
mod recovery;
mod schema;
pub mod sql;
mod sqlite;

pub use engine::{DiskUsage, Engine, EngineOptions, GcReport, RecoveryReport, WriteSession};
pub use error::{Result, StorageError};
pub use gc::{GC_MIN_DEAD_SHARE, pack_worth_collecting};
