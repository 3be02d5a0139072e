//! The storage engine: a store directory's catalog, pack files and writer lock, the commit
//! protocol, recovery and garbage collection.
//!
//! Commit protocol (docs/format.md has the crash analysis):
//! 1. blobs are appended to pack files past their committed length;
//! 2. the pack files (and, for a new pack, the directory) are synced;
//! 3. one catalog transaction records the new pack lengths and publishes the change.
//!
//! **Invariant:** a reader never sees a half-written model: it sees the catalog before or after
//! step 3, and every blob the catalog names was durable before the catalog named it.
//! **Invariant:** nothing outside this crate calls fsync on store files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{Backend, FsBackend};
use crate::catalog::{Catalog, ObjectRow, Queries, ReadTxn, WriteTxn};
use crate::error::{Result, StorageError};
use crate::index::{IndexWrite, TensorIndex};
use crate::lock::{LockWait, WriterLock};
use crate::pack::{
    BlobBytes, BlobLocation, PackAppender, PackReader, pack_file_name, pack_id_from_name,
};
use crate::record::{
    ModelRecord, ObjectMeta, PACK_HEADER_LEN, RECORD_HEADER_LEN, RecordHeader, RecordType,
    encode_pack_header, encode_tombstone, object_alignment, record_checksum,
};

/// Default size at which a pack file is closed and a new one started.
pub const DEFAULT_MAX_PACK_LEN: u64 = 1 << 30;

/// How to open a store.
#[derive(Clone)]
pub struct EngineOptions {
    /// Take the writer lock (and run recovery).
    pub write: bool,
    /// Pack files are closed past this length.
    pub max_pack_len: u64,
    /// Backend for pack files; the local directory `packs/` when `None`.
    pub backend: Option<Arc<dyn Backend>>,
    /// For a reader: open the catalog read-only ([`Catalog::open_read_only`]), so a user who
    /// can read the store but not write it can use it; nothing is created or migrated.
    pub read_only: bool,
    /// For a writer: how long to wait for the writer lock another process holds.
    pub lock_wait: LockWait,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            write: false,
            max_pack_len: DEFAULT_MAX_PACK_LEN,
            backend: None,
            read_only: false,
            lock_wait: LockWait::No,
        }
    }
}

/// What recovery did when a writer opened the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Uncommitted bytes cut off the ends of pack files.
    pub truncated_bytes: u64,
    /// Pack files the catalog does not know, removed.
    pub orphan_packs_removed: u64,
    /// Bytes in those orphan packs.
    pub orphan_bytes: u64,
    /// Files of packs a committed gc had doomed, removed now.
    pub doomed_packs_removed: u64,
    /// Packs shorter than the catalog says (damaged; left as they are, reads of what is
    /// missing fail, and `verify` names them).
    pub short_packs: u64,
}

/// What garbage collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Recovery done first.
    pub recovery: RecoveryReport,
    /// Packs rewritten to drop dead blobs.
    pub packs_rewritten: u64,
    /// Packs removed (all their blobs were dead, or they were rewritten).
    pub packs_removed: u64,
    /// Live bytes copied.
    pub bytes_moved: u64,
    /// Pack bytes before and after.
    pub pack_bytes_before: u64,
    /// Pack bytes after.
    pub pack_bytes_after: u64,
}

/// Bytes the store occupies on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Pack files, as their lengths on disk.
    pub pack_bytes: u64,
    /// Catalog database and its write-ahead log.
    pub catalog_bytes: u64,
}

pub(crate) struct WriterState {
    /// The embedded store's `LOCK` file; a store in PostgreSQL holds an advisory lock on its
    /// catalog connection instead.
    _lock: Option<WriterLock>,
    pub(crate) poisoned: bool,
    pub(crate) max_pack_len: u64,
}

/// An open store.
pub struct Engine {
    pub(crate) root: PathBuf,
    pub(crate) catalog: Mutex<Catalog>,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) reader: PackReader,
    writer: Option<Mutex<WriterState>>,
    /// Store format: 1 (blobs only) or 2 (self-describing records); an upgrade changes it.
    pub(crate) format: AtomicU32,
    /// Random id of the store, written in every format-2 pack header.
    pub(crate) store_id: Mutex<[u8; 16]>,
    index: Mutex<Option<TensorIndex>>,
    index_rebuilds: std::sync::atomic::AtomicU64,
}

const INDEX_FILE: &str = "index.hnsw";
pub(crate) const CATALOG_FILE: &str = "catalog.db";
pub(crate) const PACK_DIR: &str = "packs";

/// A fresh random store id (format 2 pack headers carry it).
pub(crate) fn new_store_id(root: &Path) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(b"neurstore/store-id\0");
    h.update(root.as_os_str().as_encoded_bytes());
    h.update(&std::process::id().to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(&now.as_nanos().to_le_bytes());
    h.update(&(&h as *const _ as usize).to_le_bytes());
    h.finalize().as_bytes()[..16].try_into().expect("16 bytes")
}

/// A fresh random store id, in hex (a store in a database takes one at `init`).
pub fn new_store_id_hex(label: &Path) -> String {
    hex(&new_store_id(label))
}

/// Hex spelling of a store id.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_store_id(v: &str) -> Option<[u8; 16]> {
    if v.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(v.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The header and meta an object's format-2 record must have, as its row implies.
pub(crate) fn expected_record(object: &ObjectRow) -> (RecordHeader, Vec<u8>) {
    let meta = object.meta().encode();
    let is_tensor = matches!(object.kind, crate::catalog::ObjectKind::Tensor { .. });
    let header = RecordHeader {
        kind: RecordType::Object,
        align_log2: object_alignment(object.codec, is_tensor, object.location.len),
        meta_len: meta.len() as u16,
        payload_len: object.location.len,
    };
    (header, meta)
}

/// The URL when `root` names a store in PostgreSQL.
pub fn postgres_url(root: &Path) -> Option<&str> {
    root.to_str().filter(|s| crate::postgres::is_url(s))
}

/// True when the backend's namespace holds at least one pack file.
fn has_pack_files(backend: &dyn Backend) -> bool {
    backend
        .list()
        .map(|names| names.iter().any(|n| pack_id_from_name(n).is_some()))
        .unwrap_or(false)
}

impl Engine {
    /// Creates an empty store at `root`, which must not exist or be an empty directory; or,
    /// when `root` is a `postgresql://` URL, in that database, which must hold none yet.
    pub fn init(root: &Path) -> Result<()> {
        if let Some(url) = postgres_url(root) {
            return crate::postgres::init(url, &hex(&new_store_id(root)));
        }
        if root.exists() {
            let empty = std::fs::read_dir(root)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if !empty {
                return Err(StorageError::AlreadyExists(root.to_path_buf()));
            }
        }
        let io = |e| StorageError::io(root.display().to_string(), e);
        std::fs::create_dir_all(root.join(PACK_DIR)).map_err(io)?;
        crate::backend::share_path_like_dir(&root.join(PACK_DIR), root).map_err(io)?;
        let mut catalog = Catalog::open(&root.join(CATALOG_FILE), true)?;
        crate::backend::share_path_like_dir(&root.join(CATALOG_FILE), root).map_err(io)?;
        let tx = catalog.write()?;
        tx.init_store_meta(&hex(&new_store_id(root)))?;
        tx.commit()?;
        std::fs::File::open(root)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }

    /// Opens the store at `root` (a directory, or a `postgresql://` URL). A catalog that is
    /// missing, empty or unreadable while pack files hold data is an error that changes nothing
    /// (`recover` rebuilds it).
    pub fn open(root: &Path, options: EngineOptions) -> Result<(Self, RecoveryReport)> {
        if let Some(url) = postgres_url(root) {
            return Self::open_postgres(url, options);
        }
        let catalog_path = root.join(CATALOG_FILE);
        let backend = options
            .backend
            .clone()
            .unwrap_or_else(|| Arc::new(FsBackend::new(root.join(PACK_DIR))));
        // Beside pack files, a catalog that is missing or unusable is "lost" (`recover`);
        // without any, a missing one means no store, and an unusable one is reported as is.
        let lost = |detail: String, error: Option<StorageError>| {
            if has_pack_files(&*backend) {
                StorageError::CatalogLost {
                    dir: root.to_path_buf(),
                    detail,
                }
            } else {
                error.unwrap_or_else(|| StorageError::NoStore(root.to_path_buf()))
            }
        };
        match std::fs::metadata(&catalog_path) {
            // Not "no store": one this user may not enter.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(StorageError::io(catalog_path.display().to_string(), e));
            }
            Ok(m) if m.is_file() && m.len() > 0 => {}
            Ok(m) if m.is_file() => return Err(lost("empty".into(), None)),
            _ => return Err(lost("missing".into(), None)),
        }
        // Lock before touching anything, so recovery never races another writer.
        let lock = options
            .write
            .then(|| WriterLock::acquire_waiting(root, options.lock_wait))
            .transpose()?;
        let opened = if options.read_only && !options.write {
            Catalog::open_read_only(&catalog_path)
        } else {
            Catalog::open(&catalog_path, false)
        };
        let catalog = opened.map_err(|e| match e {
            StorageError::Corrupt { .. } => lost(format!("not a catalog ({e})"), Some(e)),
            StorageError::Catalog(rusqlite::Error::SqliteFailure(f, m))
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt
                ) =>
            {
                lost(
                    format!("unreadable ({f})"),
                    Some(
                        StorageError::Catalog(rusqlite::Error::SqliteFailure(f, m))
                            .in_store(root, "open"),
                    ),
                )
            }
            other => other.in_store(root, "open"),
        })?;
        Self::assemble(root.to_path_buf(), catalog, backend, lock, options)
    }

    /// Opens the store in the PostgreSQL database at `url`: its catalog on one connection
    /// (holding the writer lock, for a writer), its packs through [`crate::postgres::blobs`].
    fn open_postgres(url: &str, options: EngineOptions) -> Result<(Self, RecoveryReport)> {
        let lock = options.write.then_some(options.lock_wait);
        let conn = crate::postgres::open(url, lock)?;
        let catalog = Catalog::from_db(Box::new(crate::postgres::PgCatalog::new(conn.clone())));
        let backend = options.backend.clone().unwrap_or_else(|| {
            Arc::new(crate::postgres::blobs::PgBackend::new(url)) as Arc<dyn Backend>
        });
        let root = PathBuf::from(crate::postgres::display_url(url));
        Self::assemble(root, catalog, backend, None, options)
    }

    /// Opens a store over a catalog database and a backend the caller made (the PostgreSQL
    /// extension's, inside the server); `label` names it in messages. The caller serializes
    /// writers: no lock is taken here.
    pub fn open_parts(
        label: PathBuf,
        db: Box<dyn crate::sql::CatalogDb>,
        backend: Arc<dyn Backend>,
        options: EngineOptions,
    ) -> Result<(Self, RecoveryReport)> {
        Self::assemble(label, Catalog::from_db(db), backend, None, options)
    }

    /// The engine over an open catalog and backend; a writer (`options.write`) runs recovery.
    fn assemble(
        root: PathBuf,
        mut catalog: Catalog,
        backend: Arc<dyn Backend>,
        lock: Option<WriterLock>,
        options: EngineOptions,
    ) -> Result<(Self, RecoveryReport)> {
        let (format, store_id) = {
            let tx = catalog.read()?;
            let format = tx.format_version()?;
            let id = tx.meta_value("store_id")?;
            let store_id = match (format, id.as_deref().map(parse_store_id)) {
                (1, _) => [0; 16],
                (2, Some(Some(id))) => id,
                (2, _) => return Err(StorageError::corrupt("store_meta", "store_id")),
                (v, _) => {
                    return Err(StorageError::corrupt(
                        "store_meta",
                        format!("format_version {v} is not known to this build"),
                    ));
                }
            };
            (format, store_id)
        };
        let engine = Engine {
            root,
            catalog: Mutex::new(catalog),
            reader: PackReader::new(backend.clone()),
            backend,
            index: Mutex::new(None),
            index_rebuilds: std::sync::atomic::AtomicU64::new(0),
            format: AtomicU32::new(format),
            store_id: Mutex::new(store_id),
            writer: options.write.then(|| {
                Mutex::new(WriterState {
                    _lock: lock,
                    poisoned: false,
                    max_pack_len: options.max_pack_len,
                })
            }),
        };
        let report = if engine.writer.is_some() {
            engine.recover()?
        } else {
            RecoveryReport::default()
        };
        Ok((engine, report))
    }

    /// The store's format version (1 or 2).
    pub fn format_version(&self) -> u32 {
        self.format.load(Ordering::Acquire)
    }

    /// True when every blob's record seals the key of the base it is decoded against (format
    /// 2), so a delta decoded from verified records needs no second hash of its output.
    pub fn seals_bases(&self) -> bool {
        self.format_version() >= 2
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// True when opened for writing.
    pub fn is_writer(&self) -> bool {
        self.writer.is_some()
    }

    /// Runs `f` on one consistent snapshot of the catalog.
    pub fn read<T>(&self, f: impl FnOnce(&ReadTxn) -> Result<T>) -> Result<T> {
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        let tx = catalog.read()?;
        f(&tx)
    }

    /// Reads an object's stored bytes, verifying the checksum. `what` names it in errors. In
    /// format 2 the object's record must also be the one the row describes: same keys, base
    /// key, codec, dtype and shape (the record's meta, compared byte for byte).
    pub fn read_blob(&self, object: &ObjectRow, what: &str) -> Result<BlobBytes> {
        if self.format_version() == 1 {
            return self
                .reader
                .read_verified(object.location, &object.checksum, what);
        }
        let (header, meta) = expected_record(object);
        let at = object.location.offset;
        let place = || format!("pack {} at offset {at}", object.location.pack_id);
        let end = header.end(at).ok_or_else(|| {
            StorageError::corrupt(what, format!("record at {} overflows", place()))
        })?;
        let bytes = self.reader.read(
            BlobLocation {
                pack_id: object.location.pack_id,
                offset: at,
                len: end - at,
            },
            what,
        )?;
        let head = header.encode();
        let h = head.len();
        let found = RecordHeader::decode(&bytes[..h]);
        if bytes[..h] != head || bytes[h..h + meta.len()] != meta[..] {
            let Some(found) = found.filter(|f| f.kind == RecordType::Object) else {
                return Err(StorageError::corrupt(
                    what,
                    format!("no object record starts at {}", place()),
                ));
            };
            let stored = self.reader.read(
                BlobLocation {
                    pack_id: object.location.pack_id,
                    offset: at + RECORD_HEADER_LEN,
                    len: found.meta_len as u64,
                },
                what,
            )?;
            let differs = match ObjectMeta::decode(&stored) {
                Ok(found) => found.differences(&object.meta()).join(", "),
                Err(e) => format!("an unreadable meta ({e})"),
            };
            return Err(StorageError::corrupt(
                what,
                format!(
                    "the record at {} is not the object the catalog row describes ({differs})",
                    place()
                ),
            ));
        }
        let start = (header.payload_offset(at).expect("end exists") - at) as usize;
        let stop = start + object.location.len as usize;
        let sum = record_checksum(&head, &meta, &bytes[start..stop]);
        if bytes[stop..] != sum {
            return Err(StorageError::corrupt(
                what,
                format!(
                    "checksum mismatch in {} ({} bytes)",
                    place(),
                    object.location.len
                ),
            ));
        }
        if sum != object.checksum {
            return Err(StorageError::corrupt(
                what,
                "the catalog's checksum disagrees with the record's",
            ));
        }
        Ok(bytes.slice(start..stop))
    }

    /// Checks, cheaply, that an object's record is present and is that object's: the pack
    /// covers the record's whole extent, and its header and meta are what the row implies (the
    /// payload is not read). A writer calls it before deduplicating against an object, so a new
    /// model never points at a blob that is gone.
    pub fn check_present(&self, object: &ObjectRow, what: &str) -> Result<()> {
        if self.format_version() == 1 {
            return Ok(());
        }
        let (header, meta) = expected_record(object);
        let at = object.location.offset;
        let missing = |detail: String| {
            StorageError::corrupt(
                what,
                format!(
                    "{detail} (pack {} at offset {at}); nothing was written: run `neurstore verify`",
                    object.location.pack_id
                ),
            )
        };
        let end = header
            .end(at)
            .ok_or_else(|| missing("its record overflows".into()))?;
        let len = match self.pack_file_len(object.location.pack_id) {
            Ok(len) => len,
            Err(_) => return Err(missing("its pack file is missing".into())),
        };
        if len < end {
            return Err(missing(format!(
                "its record ends at {end} but the pack holds {len} bytes"
            )));
        }
        let head = self.reader.read(
            BlobLocation {
                pack_id: object.location.pack_id,
                offset: at,
                len: RECORD_HEADER_LEN + meta.len() as u64,
            },
            what,
        )?;
        let expected: Vec<u8> = header.encode().iter().chain(&meta).copied().collect();
        if head[..] != expected[..] {
            return Err(missing("its record is not there".into()));
        }
        Ok(())
    }

    /// Bytes on disk.
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let mut pack_bytes = 0;
        for name in self
            .backend
            .list()
            .map_err(|e| StorageError::io("listing packs", e))?
        {
            if pack_id_from_name(&name).is_some() {
                let file = self
                    .backend
                    .open(&name, false)
                    .map_err(|e| StorageError::io(&name, e))?;
                pack_bytes += file.len().map_err(|e| StorageError::io(&name, e))?;
            }
        }
        let measured = self
            .catalog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bytes()?;
        let catalog_bytes =
            measured.unwrap_or_else(|| Catalog::file_bytes(&self.root.join(CATALOG_FILE)));
        Ok(DiskUsage {
            pack_bytes,
            catalog_bytes,
        })
    }

    /// Runs `f` with the similarity index brought up to date with the catalog: loaded from its
    /// file, extended with objects added since, or rebuilt from the catalog's sketches when the
    /// file is missing, damaged or stale. A writer then brings the file up to date (appending
    /// what it lacks, or rewriting it).
    pub fn with_index<T>(&self, f: impl FnOnce(&TensorIndex) -> T) -> Result<T> {
        let mut slot = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.read(|q| q.index_generation())?;
        if slot.as_ref().is_none_or(|i| i.generation() != generation) {
            let candidate = slot.take().or_else(|| self.load_index_file());
            *slot = Some(self.index_up_to_date(candidate, generation)?);
        }
        let index = slot.as_mut().expect("set above");
        self.persist_index_as_writer(index)?;
        Ok(f(index))
    }

    /// `candidate` (from the file or memory) extended to `generation` when only additions
    /// happened since it was current, else the index rebuilt from every sketch.
    fn index_up_to_date(
        &self,
        candidate: Option<TensorIndex>,
        generation: u64,
    ) -> Result<TensorIndex> {
        if let Some(mut idx) = candidate {
            if idx.generation() == generation {
                return Ok(idx);
            }
            let (added, total) =
                self.read(|q| Ok((q.sketches_after(idx.last_id())?, q.sketch_count()?)))?;
            if idx.generation() < generation && idx.len() + added.len() == total as usize {
                for (id, dtype, elements, sketch) in &added {
                    idx.insert(*id, *dtype, *elements, sketch);
                }
                idx.set_generation(generation);
                return Ok(idx);
            }
        }
        self.index_rebuilds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(TensorIndex::build(
            generation,
            &self.read(|q| q.sketches_after(0))?,
        ))
    }

    /// How many times the index was rebuilt from the catalog since the store was opened.
    pub fn index_rebuilds(&self) -> u64 {
        self.index_rebuilds
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The index in its file: its snapshot and every intact record after it (a torn or
    /// damaged tail is dropped), or `None` when missing or its snapshot is damaged.
    fn load_index_file(&self) -> Option<TensorIndex> {
        let file = self.backend.open(INDEX_FILE, false).ok()?;
        let len = usize::try_from(file.len().ok()?).ok()?;
        let mut bytes = vec![0u8; len];
        file.read_at(&mut bytes, 0).ok()?;
        TensorIndex::decode(&bytes).ok()
    }

    /// Brings the index file up to date when this engine is a writer that may still write. A
    /// latched writer writes nothing, derived data included, and a failed write latches it like
    /// any other (docs/format.md, commit protocol). While a write session holds the writer
    /// state, the file is left as it is; it is extended or rebuilt when next needed.
    fn persist_index_as_writer(&self, index: &mut TensorIndex) -> Result<()> {
        let Some(writer) = &self.writer else {
            return Ok(());
        };
        let mut state = match writer.try_lock() {
            Ok(state) => state,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
        };
        if state.poisoned {
            return Ok(());
        }
        let write = index.pending_write();
        if write == IndexWrite::Nothing {
            return Ok(());
        }
        match self.persist_index(index, write) {
            Ok(done) => {
                index.written(&done);
                Ok(())
            }
            Err(e) => {
                state.poisoned = true;
                Err(e)
            }
        }
    }

    /// Performs `write` on the index file beside the packs and returns what was written: a
    /// record appended in place (when the file still ends where the index knows it ends; a
    /// snapshot otherwise), or a snapshot written to a temporary file renamed over the old one.
    /// The index is derived data, so nothing is synced: a torn snapshot fails its checksum and
    /// is rebuilt, a torn record is dropped and its inserts are taken from the catalog again.
    fn persist_index(&self, index: &TensorIndex, write: IndexWrite) -> Result<IndexWrite> {
        let io = |e| StorageError::io("writing the similarity index", e);
        if let IndexWrite::Append { offset, bytes } = &write {
            // Opened for writing (`create`); a missing file is created empty, fails the length
            // check, and is replaced by the snapshot below.
            let file = self.backend.open(INDEX_FILE, true).map_err(io)?;
            if file.len().map_err(io)? == *offset {
                file.write_at(bytes, *offset).map_err(io)?;
                return Ok(write);
            }
        }
        let bytes = match write {
            IndexWrite::Rewrite(bytes) => bytes,
            _ => index.encode(),
        };
        let tmp = format!("{INDEX_FILE}.tmp");
        let file = self.backend.open(&tmp, true).map_err(io)?;
        file.set_len(0).map_err(io)?;
        file.write_at(&bytes, 0).map_err(io)?;
        drop(file);
        self.backend.rename(&tmp, INDEX_FILE).map_err(io)?;
        Ok(IndexWrite::Rewrite(bytes))
    }

    /// Length of a pack file on disk.
    pub fn pack_file_len(&self, pack_id: u64) -> Result<u64> {
        let name = pack_file_name(pack_id);
        let file = self
            .backend
            .open(&name, false)
            .map_err(|e| StorageError::io(&name, e))?;
        file.len().map_err(|e| StorageError::io(&name, e))
    }

    pub(crate) fn writer(&self) -> Result<MutexGuard<'_, WriterState>> {
        let state = self.writer.as_ref().ok_or(StorageError::ReadOnly)?;
        let state = state.lock().unwrap_or_else(|e| e.into_inner());
        if state.poisoned {
            return Err(StorageError::Poisoned);
        }
        Ok(state)
    }

    /// Starts a write: blobs appended through the session become visible only at commit.
    /// A format-1 store takes no writes until upgraded.
    pub fn begin_write(&self) -> Result<WriteSession<'_>> {
        if self.format_version() < 2 {
            // Checked under the writer state, so a reader's handle reports it too.
            drop(self.writer()?);
            return Err(StorageError::FormatNeedsUpgrade(self.root.clone()));
        }
        self.begin_write_any()
    }

    /// A write session whatever the store's format (the upgrade writes format-2 packs into a
    /// format-1 store before it switches the format).
    pub(crate) fn begin_write_any(&self) -> Result<WriteSession<'_>> {
        let state = self.writer()?;
        Ok(WriteSession {
            engine: self,
            state,
            sealed: Vec::new(),
            current: None,
            fresh_pack: false,
            seq: None,
        })
    }

    /// Like [`Engine::begin_write`], but never appends to an existing pack (gc, upgrade).
    pub(crate) fn begin_write_fresh(&self) -> Result<WriteSession<'_>> {
        let mut session = self.begin_write_any()?;
        session.fresh_pack = true;
        Ok(session)
    }
}

/// One write in progress: holds the writer state, appends records, commits them in one catalog
/// transaction. Dropping it without committing cuts the appended bytes off again.
pub struct WriteSession<'e> {
    engine: &'e Engine,
    state: MutexGuard<'e, WriterState>,
    sealed: Vec<PackAppender>,
    current: Option<PackAppender>,
    fresh_pack: bool,
    /// The commit sequence number this write's model or tombstone records carry.
    seq: Option<u64>,
}

impl WriteSession<'_> {
    /// Appends an object's record; it becomes reachable only through what
    /// [`WriteSession::commit`] records. Returns the record's location (its offset, and the
    /// payload's length) and its checksum.
    pub fn append_object(
        &mut self,
        meta: &ObjectMeta,
        payload: &[u8],
    ) -> Result<(BlobLocation, neurstore_core::key::Digest)> {
        let meta_bytes = meta.encode();
        let header = RecordHeader {
            kind: RecordType::Object,
            align_log2: object_alignment(meta.codec, meta.dtype.is_some(), payload.len() as u64),
            meta_len: meta_bytes.len() as u16,
            payload_len: payload.len() as u64,
        };
        let (mut at, sum) = self.append_record(&header, &meta_bytes, payload)?;
        at.len = payload.len() as u64;
        Ok((at, sum))
    }

    /// Appends a model's manifest record; the location's length is the whole record's. The
    /// record's sequence number is this session's ([`WriteSession::seq`]).
    pub fn append_model(&mut self, record: &ModelRecord) -> Result<BlobLocation> {
        let payload = record.encode();
        let header = RecordHeader {
            kind: RecordType::Model,
            align_log2: 0,
            meta_len: 0,
            payload_len: payload.len() as u64,
        };
        Ok(self.append_record(&header, &[], &payload)?.0)
    }

    /// Appends the tombstone of model `name`; returns its sequence number and location.
    pub fn append_tombstone(&mut self, name: &str) -> Result<(u64, BlobLocation)> {
        let seq = self.seq()?;
        let payload = encode_tombstone(seq, name);
        let header = RecordHeader {
            kind: RecordType::Tombstone,
            align_log2: 0,
            meta_len: 0,
            payload_len: payload.len() as u64,
        };
        Ok((seq, self.append_record(&header, &[], &payload)?.0))
    }

    /// Copies a verified record into this session's packs (gc). Its checksum does not change:
    /// padding is not covered by it.
    pub(crate) fn copy_record(
        &mut self,
        header: &RecordHeader,
        meta: &[u8],
        payload: &[u8],
    ) -> Result<BlobLocation> {
        Ok(self.append_record(header, meta, payload)?.0)
    }

    /// The commit sequence number of this write, taken from the catalog once; the commit
    /// advances the catalog's counter past it.
    pub fn seq(&mut self) -> Result<u64> {
        if let Some(seq) = self.seq {
            return Ok(seq);
        }
        let seq = self.engine.read(|q| q.next_seq())?;
        self.seq = Some(seq);
        Ok(seq)
    }

    /// Appends one record; the location's length is the whole record's.
    fn append_record(
        &mut self,
        header: &RecordHeader,
        meta: &[u8],
        payload: &[u8],
    ) -> Result<(BlobLocation, neurstore_core::key::Digest)> {
        let result = self.append_record_inner(header, meta, payload);
        if result.is_err() {
            self.state.poisoned = true;
        }
        result
    }

    fn append_record_inner(
        &mut self,
        header: &RecordHeader,
        meta: &[u8],
        payload: &[u8],
    ) -> Result<(BlobLocation, neurstore_core::key::Digest)> {
        // At most this many bytes, whatever the padding.
        let bound = header
            .end(0)
            .and_then(|n| n.checked_add(1 << header.align_log2))
            .ok_or_else(|| StorageError::corrupt("a record", "its length overflows"))?;
        let max = self.state.max_pack_len;
        let full = self
            .current
            .as_ref()
            .is_some_and(|a| a.end() > PACK_HEADER_LEN && a.end() + bound > max);
        if full {
            self.sealed.extend(self.current.take());
        }
        if self.current.is_none() {
            self.current = Some(self.open_appender(bound)?);
        }
        let appender = self.current.as_mut().expect("opened above");
        let (offset, sum) = appender.append_record(header, meta, payload)?;
        let location = BlobLocation {
            pack_id: appender.pack_id(),
            offset,
            len: appender.end() - offset,
        };
        Ok((location, sum))
    }

    fn open_appender(&mut self, first_record: u64) -> Result<PackAppender> {
        let engine = self.engine;
        let last = engine.read(|q| q.packs())?.last().copied();
        if let Some((id, len)) = last {
            let taken = self.sealed.iter().any(|a| a.pack_id() == id);
            let fits = len <= PACK_HEADER_LEN || len + first_record <= self.state.max_pack_len;
            if !self.fresh_pack && !taken && fits && engine.backend.appends_in_place() {
                return self.with_header(PackAppender::open(&*engine.backend, id, len, false)?);
            }
        }
        // A new pack: take the next id from the catalog, never reusing one, and name the pack
        // at once, so a pack file the catalog does not know is never one of ours.
        let mut catalog = engine.catalog.lock().unwrap_or_else(|e| e.into_inner());
        let tx = catalog.write()?;
        let used = self
            .sealed
            .iter()
            .chain(&self.current)
            .map(|a| a.pack_id())
            .max()
            .unwrap_or(0);
        let id = tx.take_pack_id(used + 1)?;
        tx.set_pack_len(id, 0)?;
        tx.commit()?;
        drop(catalog);
        self.with_header(PackAppender::open(&*engine.backend, id, 0, true)?)
    }

    /// Writes the pack header when the pack holds nothing committed yet.
    fn with_header(&self, mut appender: PackAppender) -> Result<PackAppender> {
        if appender.end() == 0 {
            let id = *self
                .engine
                .store_id
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            appender.write_header(&encode_pack_header(&id, appender.pack_id()))?;
        }
        Ok(appender)
    }

    /// Syncs every appended record, then runs `publish` in one catalog transaction together
    /// with the new pack lengths (and the next sequence number), and commits it. On failure,
    /// nothing becomes visible.
    pub fn commit(mut self, publish: impl FnOnce(&WriteTxn) -> Result<()>) -> Result<()> {
        let result = self.commit_inner(publish);
        match &result {
            Ok(()) => {}
            Err(StorageError::ModelExists(_) | StorageError::ModelNotFound(_)) => {}
            Err(_) => self.state.poisoned = true,
        }
        result
    }

    fn commit_inner(&mut self, publish: impl FnOnce(&WriteTxn) -> Result<()>) -> Result<()> {
        let backend = &*self.engine.backend;
        for appender in self.sealed.iter_mut().chain(self.current.as_mut()) {
            appender.sync(backend)?;
        }
        let mut catalog = self
            .engine
            .catalog
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let tx = catalog.write()?;
        for appender in self.sealed.iter().chain(&self.current) {
            if appender.pending() > 0 {
                tx.set_pack_len(appender.pack_id(), appender.end())?;
            }
        }
        if let Some(seq) = self.seq {
            tx.set_meta("next_seq", &(seq + 1).to_string())?;
        }
        publish(&tx)?;
        // An error drops `tx` uncommitted; `commit` latches the writer.
        backend
            .barrier()
            .map_err(|e| StorageError::io("the catalog commit barrier", e))?;
        tx.commit()?;
        for appender in self.sealed.iter_mut().chain(self.current.as_mut()) {
            appender.mark_committed();
        }
        Ok(())
    }
}

impl Drop for WriteSession<'_> {
    fn drop(&mut self) {
        for appender in self.sealed.iter_mut().chain(self.current.as_mut()) {
            if appender.pending() > 0 && appender.rollback().is_err() {
                self.state.poisoned = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{FileKind, ModelRow, NewObject, ObjectKind};
    use crate::record::ModelRecord;
    use neurstore_core::codec::Codec;
    use neurstore_core::key::file_key;

    fn writer(dir: &Path) -> Engine {
        Engine::open(
            dir,
            EngineOptions {
                write: true,
                max_pack_len: 10_000,
                backend: None,
                ..Default::default()
            },
        )
        .unwrap()
        .0
    }

    fn file_meta(content: &[u8]) -> crate::record::ObjectMeta {
        crate::record::ObjectMeta {
            key: file_key(content),
            decoded_key: file_key(content),
            base_key: None,
            dtype: None,
            shape: vec![],
            raw_len: content.len() as u64,
            codec: Codec::Raw,
            chain_depth: 0,
            tolerance: None,
            max_error: 0.0,
        }
    }

    fn append(s: &mut WriteSession<'_>, content: &[u8]) -> BlobLocation {
        s.append_object(&file_meta(content), content).unwrap().0
    }

    fn put(engine: &Engine, name: &str, content: &[u8]) {
        let mut s = engine.begin_write().unwrap();
        let (location, sum) = s.append_object(&file_meta(content), content).unwrap();
        let record = ModelRecord {
            seq: s.seq().unwrap(),
            name: name.into(),
            created_unix: 0,
            source_format: "test".into(),
            metadata: "{}".into(),
            raw_bytes: content.len() as u64,
            base_model: None,
            mode: "lossless".into(),
            files: vec![("f".into(), 1, file_key(content))],
            tensors: vec![],
        };
        let at = s.append_model(&record).unwrap();
        let object = NewObject {
            key: file_key(content),
            kind: ObjectKind::File,
            shape: vec![],
            raw_len: content.len() as u64,
            codec: Codec::Raw,
            location,
            checksum: sum,
            base: None,
            chain_depth: 0,
            tolerance: None,
            max_error: 0.0,
            decoded_key: file_key(content),
            base_key: None,
            sketch: None,
        };
        s.commit(|tx| {
            let id = tx.insert_object(&object)?;
            let model = ModelRow {
                id: 0,
                name: name.into(),
                created_unix: 0,
                source_format: "test".into(),
                metadata: "{}".into(),
                raw_bytes: content.len() as u64,
                base_model: None,
                mode: "lossless".into(),
            };
            let m = tx.insert_model(&model)?;
            tx.insert_model_file(m, "f", FileKind::Plain, id)?;
            tx.set_model_record(m, record.seq, at)
        })
        .unwrap();
    }

    #[test]
    fn commit_recover_delete_and_gc() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("s");
        Engine::init(&root).unwrap();
        assert!(matches!(
            Engine::init(&root),
            Err(StorageError::AlreadyExists(_))
        ));
        let engine = writer(&root);
        put(&engine, "a", &[1u8; 6000]);
        put(&engine, "b", &[2u8; 6000]); // over max_pack_len: goes to a second pack
        assert_eq!(engine.read(|q| q.packs()).unwrap().len(), 2);

        // An uncommitted append is cut off when the session is dropped.
        {
            let mut s = engine.begin_write().unwrap();
            append(&mut s, &[3u8; 100]);
        }
        drop(engine);
        let options = EngineOptions {
            write: true,
            max_pack_len: 10_000,
            backend: None,
            ..Default::default()
        };
        let (engine, report) = Engine::open(&root, options).unwrap();
        assert_eq!(report, RecoveryReport::default());
        let before = engine.disk_usage().unwrap().pack_bytes;
        engine
            .begin_write()
            .unwrap()
            .commit(|tx| tx.delete_model("a").map(|_| ()))
            .unwrap();
        let gc = engine.gc(|_, _| {}).unwrap();
        assert_eq!(gc.packs_removed, 1);
        assert!(engine.disk_usage().unwrap().pack_bytes < before);
        let b = engine.read(|q| q.model("b")).unwrap().unwrap();
        let files = engine.read(|q| q.model_files(b.id)).unwrap();
        assert_eq!(
            &*engine.read_blob(&files[0].object, "b").unwrap(),
            &[2u8; 6000][..]
        );
        // Ids are never reused.
        put(&engine, "c", &[4u8; 6000]);
        let ids: Vec<u64> = engine
            .read(|q| q.packs())
            .unwrap()
            .iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(ids, vec![2, 3]);
    }

    #[test]
    fn recovery_cuts_tails_but_never_removes_unknown_packs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("s");
        Engine::init(&root).unwrap();
        let engine = writer(&root);
        put(&engine, "a", &[1u8; 100]);
        drop(engine);
        std::fs::write(root.join("packs").join(pack_file_name(77)), [0u8; 10]).unwrap();
        let p1 = root.join("packs").join(pack_file_name(1));
        let mut bytes = std::fs::read(&p1).unwrap();
        bytes.extend_from_slice(&[9u8; 50]);
        std::fs::write(&p1, bytes).unwrap();
        let options = EngineOptions {
            write: true,
            ..Default::default()
        };
        // A pack the catalog does not name: the writer refuses, and nothing is removed.
        let err = Engine::open(&root, options.clone()).err().unwrap();
        assert!(matches!(err, StorageError::CatalogBehind { .. }), "{err}");
        assert!(root.join("packs").join(pack_file_name(77)).exists());
        std::fs::remove_file(root.join("packs").join(pack_file_name(77))).unwrap();
        let (_engine, report) = Engine::open(&root, options).unwrap();
        assert_eq!(
            report,
            RecoveryReport {
                truncated_bytes: 50,
                ..Default::default()
            }
        );
    }

    #[test]
    fn readers_cannot_write_and_second_writer_is_locked() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("s");
        assert!(matches!(
            Engine::open(&root, EngineOptions::default()),
            Err(StorageError::NoStore(_))
        ));
        Engine::init(&root).unwrap();
        let (reader, _) = Engine::open(&root, EngineOptions::default()).unwrap();
        assert!(matches!(reader.begin_write(), Err(StorageError::ReadOnly)));
        let _w = writer(&root);
        assert!(matches!(
            Engine::open(
                &root,
                EngineOptions {
                    write: true,
                    ..Default::default()
                }
            ),
            Err(StorageError::Locked { .. })
        ));
    }

    /// A backend whose files fail `sync` once `fail` is set.
    struct FailingSync {
        inner: FsBackend,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    struct FailingFile {
        inner: Arc<dyn crate::backend::StorageFile>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Backend for FailingSync {
        fn open(
            &self,
            name: &str,
            create: bool,
        ) -> std::io::Result<Arc<dyn crate::backend::StorageFile>> {
            let inner = self.inner.open(name, create)?;
            Ok(Arc::new(FailingFile {
                inner,
                fail: self.fail.clone(),
            }))
        }
        fn remove(&self, name: &str) -> std::io::Result<()> {
            self.inner.remove(name)
        }
        fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
            self.inner.rename(from, to)
        }
        fn list(&self) -> std::io::Result<Vec<String>> {
            self.inner.list()
        }
        fn sync_dir(&self) -> std::io::Result<()> {
            self.inner.sync_dir()
        }
    }

    impl crate::backend::StorageFile for FailingFile {
        fn len(&self) -> std::io::Result<u64> {
            self.inner.len()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            self.inner.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.inner.write_at(buf, offset)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.inner.set_len(len)
        }
        fn sync(&self) -> std::io::Result<()> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::other("injected fsync failure"));
            }
            self.inner.sync()
        }
    }

    fn fault_writer(root: &Path, disk: &crate::fault::FaultBackend) -> Engine {
        let options = EngineOptions {
            write: true,
            max_pack_len: DEFAULT_MAX_PACK_LEN,
            backend: Some(Arc::new(disk.clone())),
            ..Default::default()
        };
        Engine::open(root, options).unwrap().0
    }

    /// A new store in a temporary directory and a fault-injecting disk for its packs.
    fn fault_store() -> (tempfile::TempDir, PathBuf, crate::fault::FaultBackend) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("s");
        Engine::init(&root).unwrap();
        (tmp, root, crate::fault::FaultBackend::new())
    }

    #[test]
    fn failed_barrier_publishes_nothing_and_latches() {
        use crate::fault::{Fault, OpKind};
        let (_tmp, root, disk) = fault_store();
        let engine = fault_writer(&root, &disk);
        put(&engine, "a", &[1u8; 100]);
        disk.inject(Fault {
            only: Some(OpKind::Barrier),
            ..Fault::once(1)
        });
        let mut s = engine.begin_write().unwrap();
        append(&mut s, &[2u8; 100]);
        assert!(s.commit(|tx| tx.delete_model("a").map(|_| ())).is_err());
        assert!(matches!(engine.begin_write(), Err(StorageError::Poisoned)));
        drop(engine);
        let engine = fault_writer(&root, &disk.current_image());
        assert_eq!(engine.read(|q| q.models()).unwrap().len(), 1);
        let committed = engine.read(|q| q.packs()).unwrap()[0].1;
        assert_eq!(engine.pack_file_len(1).unwrap(), committed);
    }

    #[test]
    fn failed_pack_removal_after_a_gc_commit_latches_until_reopen() {
        use crate::fault::{Fault, OpKind};
        let (_tmp, root, disk) = fault_store();
        let engine = fault_writer(&root, &disk);
        put(&engine, "a", &[1u8; 100]);
        put(&engine, "b", &[2u8; 100]);
        engine
            .begin_write()
            .unwrap()
            .commit(|tx| tx.delete_model("a").map(|_| ()))
            .unwrap();
        disk.inject(Fault {
            only: Some(OpKind::Remove),
            ..Fault::sticky(disk.ops_of(OpKind::Remove))
        });
        // gc commits, then fails to remove the pack it doomed: an error, and a latched writer.
        assert!(engine.gc(|_, _| {}).is_err());
        assert_eq!(disk.injected(), 1);
        assert!(matches!(engine.begin_write(), Err(StorageError::Poisoned)));
        let ops = disk.ops();
        assert!(engine.gc(|_, _| {}).is_err());
        assert_eq!(disk.ops(), ops);
        drop(engine);
        // Reopened on a healthy disk, recovery removes the doomed pack; b reads back.
        let image = disk.current_image();
        let engine = fault_writer(&root, &image);
        assert_eq!(engine.read(|q| q.packs()).unwrap().len(), 1);
        assert_eq!(
            image
                .names()
                .iter()
                .filter(|n| n.ends_with(".pack"))
                .count(),
            1
        );
        let b = engine.read(|q| q.model("b")).unwrap().unwrap();
        let files = engine.read(|q| q.model_files(b.id)).unwrap();
        assert_eq!(
            &*engine.read_blob(&files[0].object, "b").unwrap(),
            &[2u8; 100][..]
        );
    }

    #[test]
    fn failed_index_write_latches_and_a_latched_writer_writes_no_index() {
        use crate::fault::Fault;
        let (_tmp, root, disk) = fault_store();
        disk.inject(Fault::once(0)); // creating index.hnsw.tmp
        let engine = fault_writer(&root, &disk);
        assert!(engine.with_index(|_| ()).is_err());
        assert!(matches!(engine.begin_write(), Err(StorageError::Poisoned)));
        // The disk is healthy again, but the writer stays latched and writes nothing.
        assert!(engine.with_index(|i| i.len()).is_ok());
        assert!(disk.names().is_empty(), "{:?}", disk.names());
    }

    /// Commits `n` tensor objects with sketches (ids in commit order).
    fn put_sketched(engine: &Engine, name: &str, n: usize, seed: usize) {
        let mut s = engine.begin_write().unwrap();
        let mut objects = Vec::new();
        for i in 0..n {
            let mut content: Vec<u8> = format!("{name}/{i}").into_bytes();
            content.resize(content.len().next_multiple_of(4), b' ');
            let sketch: Vec<f32> = (0..neurstore_core::sketch::SKETCH_DIM)
                .map(|j| (((seed + i) * 31 + j) as f32 * 0.7).sin())
                .collect();
            let mut object = NewObject {
                key: file_key(&content),
                kind: ObjectKind::Tensor {
                    dtype: neurstore_core::dtype::DType::F32,
                },
                shape: vec![content.len() as u64 / 4],
                raw_len: content.len() as u64,
                codec: Codec::Raw,
                location: BlobLocation {
                    pack_id: 0,
                    offset: 0,
                    len: 0,
                },
                checksum: [0; 32],
                base: None,
                chain_depth: 0,
                tolerance: None,
                max_error: 0.0,
                decoded_key: file_key(&content),
                base_key: None,
                sketch: Some(sketch),
            };
            (object.location, object.checksum) = s.append_object(&object.meta(), &content).unwrap();
            objects.push(object);
        }
        s.commit(|tx| {
            let model = ModelRow {
                id: 0,
                name: name.into(),
                created_unix: 0,
                source_format: "test".into(),
                metadata: "{}".into(),
                raw_bytes: 0,
                base_model: None,
                mode: "lossless".into(),
            };
            let m = tx.insert_model(&model)?;
            for (i, o) in objects.iter().enumerate() {
                let id = tx.insert_object(o)?;
                tx.insert_model_file(m, &format!("f{i}"), FileKind::Plain, id)?;
            }
            Ok(())
        })
        .unwrap();
    }

    /// The index file grows by appended records, which a reopened store replays to the index a
    /// rebuild gives; a damaged record is dropped, its inserts are taken from the catalog
    /// again, and the file is rewritten.
    #[test]
    fn the_index_file_grows_by_appending_and_survives_a_damaged_tail() {
        let (_tmp, root, disk) = fault_store();
        let engine = fault_writer(&root, &disk);
        put_sketched(&engine, "a", 40, 0);
        engine.with_index(|i| assert_eq!(i.len(), 40)).unwrap();
        let snapshot = disk.contents(INDEX_FILE).unwrap();
        put_sketched(&engine, "b", 3, 100);
        engine.with_index(|i| assert_eq!(i.len(), 43)).unwrap();
        let appended = disk.contents(INDEX_FILE).unwrap();
        assert!(appended.len() > snapshot.len());
        assert_eq!(
            &appended[..snapshot.len()],
            &snapshot[..],
            "appended, not rewritten"
        );
        put_sketched(&engine, "c", 2, 200);
        engine.with_index(|_| ()).unwrap();
        let twice = disk.contents(INDEX_FILE).unwrap();
        assert_eq!(&twice[..appended.len()], &appended[..]);
        let built = TensorIndex::build(
            engine.read(|q| q.index_generation()).unwrap(),
            &engine.read(|q| q.sketches_after(0)).unwrap(),
        );
        drop(engine);

        // Reopened: the file replays to the rebuilt index, with no rebuild.
        let engine = fault_writer(&root, &disk);
        engine.with_index(|i| assert_eq!(i, &built)).unwrap();
        assert_eq!(engine.index_rebuilds(), 0);
        drop(engine);

        // The last record damaged: dropped, extended from the catalog, the file rewritten.
        let mut damaged = twice.clone();
        let at = appended.len() + 20;
        damaged[at] ^= 0x40;
        disk.open(INDEX_FILE, false)
            .unwrap()
            .write_at(&damaged[at..at + 1], at as u64)
            .unwrap();
        let engine = fault_writer(&root, &disk);
        engine.with_index(|i| assert_eq!(i, &built)).unwrap();
        assert_eq!(engine.index_rebuilds(), 0, "extended, not rebuilt");
        let rewritten = disk.contents(INDEX_FILE).unwrap();
        assert_eq!(rewritten, built.encode());
    }

    /// The same on the local file system, whose files opened without `create` are read-only.
    #[test]
    fn the_index_file_is_appended_on_the_file_system() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("s");
        Engine::init(&root).unwrap();
        let engine = writer(&root);
        put_sketched(&engine, "a", 30, 0);
        engine.with_index(|_| ()).unwrap();
        let path = root.join("packs").join(INDEX_FILE);
        let snapshot = std::fs::read(&path).unwrap();
        put_sketched(&engine, "b", 2, 50);
        engine.with_index(|i| assert_eq!(i.len(), 32)).unwrap();
        let appended = std::fs::read(&path).unwrap();
        assert!(appended.len() > snapshot.len());
        assert_eq!(&appended[..snapshot.len()], &snapshot[..]);
        assert_eq!(TensorIndex::decode(&appended).unwrap().len(), 32);
    }

    #[test]
    fn failed_sync_latches_until_reopen_and_publishes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("s");
        Engine::init(&root).unwrap();
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let backend: Arc<dyn Backend> = Arc::new(FailingSync {
            inner: FsBackend::new(root.join("packs")),
            fail: fail.clone(),
        });
        let options = EngineOptions {
            write: true,
            max_pack_len: DEFAULT_MAX_PACK_LEN,
            backend: Some(backend),
            ..Default::default()
        };
        let (engine, _) = Engine::open(&root, options).unwrap();
        put(&engine, "a", &[1u8; 100]);
        fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut s = engine.begin_write().unwrap();
        append(&mut s, &[2u8; 100]);
        let err = s.commit(|_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("injected fsync failure"), "{err}");
        // Latched: no further writes, even once the disk is healthy again.
        fail.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(engine.begin_write(), Err(StorageError::Poisoned)));
        drop(engine);
        let engine = writer(&root);
        let models = engine.read(|q| q.models()).unwrap();
        assert_eq!(models.len(), 1);
        let committed = engine.read(|q| q.packs()).unwrap()[0].1;
        assert_eq!(engine.pack_file_len(1).unwrap(), committed);
        put(&engine, "b", &[3u8; 100]);
    }
}
