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

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{Backend, FsBackend};
use crate::catalog::{Catalog, ObjectRow, Queries, ReadTxn, WriteTxn};
use crate::error::{Result, StorageError};
use crate::index::TensorIndex;
use crate::lock::{LockWait, WriterLock};
use crate::pack::{
    BlobBytes, BlobLocation, PackAppender, PackReader, align_up, pack_file_name, pack_id_from_name,
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

struct WriterState {
    _lock: WriterLock,
    poisoned: bool,
    max_pack_len: u64,
}

/// An open store.
pub struct Engine {
    root: PathBuf,
    catalog: Mutex<Catalog>,
    backend: Arc<dyn Backend>,
    reader: PackReader,
    writer: Option<Mutex<WriterState>>,
    index: Mutex<Option<TensorIndex>>,
    index_rebuilds: std::sync::atomic::AtomicU64,
}

const INDEX_FILE: &str = "index.hnsw";
const CATALOG_FILE: &str = "catalog.db";
const PACK_DIR: &str = "packs";

impl Engine {
    /// Creates an empty store at `root`, which must not exist or be an empty directory.
    pub fn init(root: &Path) -> Result<()> {
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
        tx.conn().execute(
            "INSERT INTO store_meta (key, value) VALUES ('format', 'neurstore'), ('next_pack_id', '1')",
            [],
        )?;
        tx.commit()?;
        std::fs::File::open(root)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }

    /// Opens the store at `root`.
    pub fn open(root: &Path, options: EngineOptions) -> Result<(Self, RecoveryReport)> {
        let catalog_path = root.join(CATALOG_FILE);
        match std::fs::metadata(&catalog_path) {
            Ok(meta) if meta.is_file() => {}
            // Not "no store": one this user may not enter.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(StorageError::io(catalog_path.display().to_string(), e));
            }
            _ => return Err(StorageError::NoStore(root.to_path_buf())),
        }
        // Lock before touching anything, so recovery never races another writer.
        let lock = options
            .write
            .then(|| WriterLock::acquire_waiting(root, options.lock_wait))
            .transpose()?;
        let catalog = if options.read_only && !options.write {
            Catalog::open_read_only(&catalog_path)
        } else {
            Catalog::open(&catalog_path, false)
        }
        .map_err(|e| e.in_store(root, "open"))?;
        let backend = options
            .backend
            .unwrap_or_else(|| Arc::new(FsBackend::new(root.join(PACK_DIR))));
        let engine = Engine {
            root: root.to_path_buf(),
            catalog: Mutex::new(catalog),
            reader: PackReader::new(backend.clone()),
            backend,
            index: Mutex::new(None),
            index_rebuilds: std::sync::atomic::AtomicU64::new(0),
            writer: lock.map(|l| {
                Mutex::new(WriterState {
                    _lock: l,
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

    /// Reads an object's stored bytes, verifying the checksum. `what` names it in errors.
    pub fn read_blob(&self, object: &ObjectRow, what: &str) -> Result<BlobBytes> {
        self.reader
            .read_verified(object.location, &object.checksum, what)
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
        Ok(DiskUsage {
            pack_bytes,
            catalog_bytes: Catalog::file_bytes(&self.root.join(CATALOG_FILE)),
        })
    }

    /// Runs `f` with the similarity index brought up to date with the catalog: loaded from its
    /// file, extended with objects added since, or rebuilt from the catalog's sketches when the
    /// file is missing, damaged or stale. A writer persists the result.
    pub fn with_index<T>(&self, f: impl FnOnce(&TensorIndex) -> T) -> Result<T> {
        let mut slot = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.read(|q| q.index_generation())?;
        let current = slot.as_ref().is_some_and(|i| i.generation() == generation);
        if !current {
            let mut candidate = slot.take().or_else(|| self.load_index_file());
            let mut changed = false;
            if let Some(idx) = candidate.as_mut().filter(|i| i.generation() != generation) {
                // Only additions since? Then extend; otherwise rebuild.
                let (added, total) =
                    self.read(|q| Ok((q.sketches_after(idx.last_id())?, q.sketch_count()?)))?;
                if idx.len() + added.len() == total as usize {
                    for (id, dtype, elements, sketch) in &added {
                        idx.insert(*id, *dtype, *elements, sketch);
                    }
                    idx.set_generation(generation);
                    changed = true;
                } else {
                    candidate = None;
                }
            }
            let index = match candidate {
                Some(idx) => idx,
                None => {
                    self.index_rebuilds
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    changed = true;
                    TensorIndex::build(generation, &self.read(|q| q.sketches_after(0))?)
                }
            };
            if changed {
                self.persist_index_as_writer(&index)?;
            }
            *slot = Some(index);
        }
        Ok(f(slot.as_ref().expect("set above")))
    }

    /// How many times the index was rebuilt from the catalog since the store was opened.
    pub fn index_rebuilds(&self) -> u64 {
        self.index_rebuilds
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn load_index_file(&self) -> Option<TensorIndex> {
        let file = self.backend.open(INDEX_FILE, false).ok()?;
        let len = usize::try_from(file.len().ok()?).ok()?;
        let mut bytes = vec![0u8; len];
        file.read_at(&mut bytes, 0).ok()?;
        TensorIndex::decode(&bytes).ok()
    }

    /// Persists the index when this engine is a writer that may still write. A latched writer
    /// writes nothing, derived data included, and a failed write latches it like any other
    /// (docs/format.md, commit protocol). While a write session holds the writer state, the
    /// file is left as it is; it is rebuilt or extended when next needed.
    fn persist_index_as_writer(&self, index: &TensorIndex) -> Result<()> {
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
        let result = self.persist_index(index);
        if result.is_err() {
            state.poisoned = true;
        }
        result
    }

    /// Writes the index beside the packs: a temporary file renamed over the old one. The index
    /// is derived data, so it is not synced: a torn file fails its checksum and is rebuilt.
    fn persist_index(&self, index: &TensorIndex) -> Result<()> {
        let tmp = format!("{INDEX_FILE}.tmp");
        let io = |e| StorageError::io("writing the similarity index", e);
        let bytes = index.encode();
        let file = self.backend.open(&tmp, true).map_err(io)?;
        file.set_len(0).map_err(io)?;
        file.write_at(&bytes, 0).map_err(io)?;
        drop(file);
        self.backend.rename(&tmp, INDEX_FILE).map_err(io)
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

    fn writer(&self) -> Result<MutexGuard<'_, WriterState>> {
        let state = self.writer.as_ref().ok_or(StorageError::ReadOnly)?;
        let state = state.lock().unwrap_or_else(|e| e.into_inner());
        if state.poisoned {
            return Err(StorageError::Poisoned);
        }
        Ok(state)
    }

    /// Starts a write: blobs appended through the session become visible only at commit.
    pub fn begin_write(&self) -> Result<WriteSession<'_>> {
        let state = self.writer()?;
        Ok(WriteSession {
            engine: self,
            state,
            sealed: Vec::new(),
            current: None,
            fresh_pack: false,
        })
    }

    /// Like [`Engine::begin_write`], but never appends to an existing pack (used by gc).
    fn begin_write_fresh(&self) -> Result<WriteSession<'_>> {
        let mut session = self.begin_write()?;
        session.fresh_pack = true;
        Ok(session)
    }

    /// Cuts uncommitted tails off pack files and removes pack files the catalog does not know.
    /// Only a writer may run it: it holds the lock, so no write is in progress.
    pub fn recover(&self) -> Result<RecoveryReport> {
        let _state = self.writer()?;
        let packs: HashMap<u64, u64> = self.read(|q| q.packs())?.into_iter().collect();
        let mut report = RecoveryReport::default();
        let io = |what: String| move |e| StorageError::io(what, e);
        for name in self.backend.list().map_err(io("listing packs".into()))? {
            let Some(id) = pack_id_from_name(&name) else {
                continue;
            };
            let file = self.backend.open(&name, true).map_err(io(name.clone()))?;
            let len = file.len().map_err(io(name.clone()))?;
            match packs.get(&id) {
                None => {
                    drop(file);
                    self.backend.remove(&name).map_err(io(name.clone()))?;
                    self.reader.forget(id);
                    report.orphan_packs_removed += 1;
                    report.orphan_bytes += len;
                }
                Some(&committed) if len > committed => {
                    file.set_len(committed).map_err(io(name.clone()))?;
                    file.sync().map_err(io(name.clone()))?;
                    report.truncated_bytes += len - committed;
                }
                Some(_) => {}
            }
        }
        if report.orphan_packs_removed > 0 {
            self.backend
                .sync_dir()
                .map_err(io("syncing the pack directory".into()))?;
        }
        Ok(report)
    }

    /// Rewrites pack files holding dead blobs (of deleted models) so their space returns to the
    /// file system. Readers that still hold a removed pack open keep reading it safely.
    pub fn gc(&self, mut progress: impl FnMut(u64, u64)) -> Result<GcReport> {
        let recovery = self.recover()?;
        let before = self.disk_usage()?.pack_bytes;
        let (packs, objects) = self.read(|q| Ok((q.packs()?, q.objects()?)))?;
        let mut live: HashMap<u64, Vec<&ObjectRow>> = HashMap::new();
        for o in &objects {
            live.entry(o.location.pack_id).or_default().push(o);
        }
        let mut doomed = BTreeSet::new();
        let mut to_move: Vec<&ObjectRow> = Vec::new();
        for (id, committed) in &packs {
            let blobs = live.get(id).map(Vec::as_slice).unwrap_or(&[]);
            let live_extent: u64 = blobs.iter().map(|o| align_up(o.location.len)).sum();
            if align_up(*committed) > live_extent {
                doomed.insert(*id);
                to_move.extend(blobs);
            }
        }
        let total: u64 = to_move.iter().map(|o| o.location.len).sum();
        let mut report = GcReport {
            recovery,
            pack_bytes_before: before,
            ..GcReport::default()
        };
        if doomed.is_empty() {
            report.pack_bytes_after = before;
            return Ok(report);
        }
        let mut session = self.begin_write_fresh()?;
        let mut moves = Vec::with_capacity(to_move.len());
        for o in &to_move {
            let bytes = self.read_blob(o, &format!("object {}", o.id))?;
            let to = session.append(&bytes)?;
            moves.push((o.id, to));
            report.bytes_moved += o.location.len;
            progress(report.bytes_moved, total);
        }
        session.commit(|tx| {
            for (id, to) in &moves {
                tx.relocate_object(*id, *to)?;
            }
            for id in &doomed {
                tx.delete_pack(*id)?;
            }
            Ok(())
        })?;
        report.packs_rewritten = doomed.iter().filter(|id| live.contains_key(id)).count() as u64;
        report.packs_removed = doomed.len() as u64;
        // The catalog no longer names these packs; a crash here leaves orphans recovery removes.
        for id in &doomed {
            self.reader.forget(*id);
            self.backend
                .remove(&pack_file_name(*id))
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| StorageError::io(format!("removing pack {id}"), e))?;
        }
        self.backend
            .sync_dir()
            .map_err(|e| StorageError::io("syncing the pack directory", e))?;
        report.pack_bytes_after = self.disk_usage()?.pack_bytes;
        Ok(report)
    }
}

/// One write in progress: holds the writer state, appends blobs, commits them in one catalog
/// transaction. Dropping it without committing cuts the appended bytes off again.
pub struct WriteSession<'e> {
    engine: &'e Engine,
    state: MutexGuard<'e, WriterState>,
    sealed: Vec<PackAppender>,
    current: Option<PackAppender>,
    fresh_pack: bool,
}

impl WriteSession<'_> {
    /// Appends a blob; it becomes reachable only through what [`WriteSession::commit`] records.
    pub fn append(&mut self, bytes: &[u8]) -> Result<BlobLocation> {
        let result = self.append_inner(bytes);
        if result.is_err() {
            self.state.poisoned = true;
        }
        result
    }

    fn append_inner(&mut self, bytes: &[u8]) -> Result<BlobLocation> {
        let full = self.current.as_ref().is_some_and(|a| {
            a.end() > 0 && align_up(a.end()) + bytes.len() as u64 > self.state.max_pack_len
        });
        if full {
            self.sealed.extend(self.current.take());
        }
        if self.current.is_none() {
            self.current = Some(self.open_appender(bytes.len() as u64)?);
        }
        self.current.as_mut().expect("opened above").append(bytes)
    }

    fn open_appender(&mut self, first_blob: u64) -> Result<PackAppender> {
        let engine = self.engine;
        let last = engine.read(|q| q.packs())?.last().copied();
        if let Some((id, len)) = last {
            let taken = self.sealed.iter().any(|a| a.pack_id() == id);
            let fits = len == 0 || align_up(len) + first_blob <= self.state.max_pack_len;
            if !self.fresh_pack && !taken && fits {
                return PackAppender::open(&*engine.backend, id, len, false);
            }
        }
        // A new pack: take the next id from the catalog, never reusing one.
        let mut catalog = engine.catalog.lock().unwrap_or_else(|e| e.into_inner());
        let tx = catalog.write()?;
        let next: String = tx.conn().query_row(
            "SELECT value FROM store_meta WHERE key = 'next_pack_id'",
            [],
            |r| r.get(0),
        )?;
        let id: u64 = next
            .parse()
            .map_err(|_| StorageError::corrupt("store_meta", format!("next_pack_id {next:?}")))?;
        let used = self
            .sealed
            .iter()
            .chain(&self.current)
            .map(|a| a.pack_id())
            .max()
            .unwrap_or(0);
        let id = id.max(used + 1);
        tx.conn().execute(
            "UPDATE store_meta SET value = ?1 WHERE key = 'next_pack_id'",
            [(id + 1).to_string()],
        )?;
        tx.commit()?;
        PackAppender::open(&*engine.backend, id, 0, true)
    }

    /// Syncs every appended blob, then runs `publish` in one catalog transaction together with
    /// the new pack lengths, and commits it. On failure, nothing becomes visible.
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
            // A new pack holding only empty blobs still needs its row: objects reference it.
            if appender.pending() > 0 || appender.end() == 0 {
                tx.set_pack_len(appender.pack_id(), appender.end())?;
            }
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
    use neurstore_core::codec::Codec;
    use neurstore_core::key::{checksum, file_key};

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

    fn put(engine: &Engine, name: &str, content: &[u8]) {
        let mut s = engine.begin_write().unwrap();
        let location = s.append(content).unwrap();
        let object = NewObject {
            key: file_key(content),
            kind: ObjectKind::File,
            shape: vec![],
            raw_len: content.len() as u64,
            codec: Codec::Raw,
            location,
            checksum: checksum(content),
            base: None,
            chain_depth: 0,
            tolerance: None,
            max_error: 0.0,
            decoded_key: file_key(content),
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
            tx.insert_model_file(m, "f", FileKind::Plain, id)
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
            s.append(&[3u8; 100]).unwrap();
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
    fn recovery_removes_orphans_and_tails() {
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
        let (_engine, report) = Engine::open(
            &root,
            EngineOptions {
                write: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            report,
            RecoveryReport {
                truncated_bytes: 50,
                orphan_packs_removed: 1,
                orphan_bytes: 10
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

    #[test]
    fn failed_barrier_publishes_nothing_and_latches() {
        use crate::fault::{Fault, FaultBackend, OpKind};
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("s");
        Engine::init(&root).unwrap();
        let disk = FaultBackend::new();
        let engine = fault_writer(&root, &disk);
        put(&engine, "a", &[1u8; 100]);
        disk.inject(Fault {
            only: Some(OpKind::Barrier),
            ..Fault::once(1)
        });
        let mut s = engine.begin_write().unwrap();
        s.append(&[2u8; 100]).unwrap();
        assert!(s.commit(|tx| tx.delete_model("a").map(|_| ())).is_err());
        assert!(matches!(engine.begin_write(), Err(StorageError::Poisoned)));
        drop(engine);
        let engine = fault_writer(&root, &disk.current_image());
        assert_eq!(engine.read(|q| q.models()).unwrap().len(), 1);
        assert_eq!(engine.pack_file_len(1).unwrap(), 100);
    }

    #[test]
    fn failed_index_write_latches_and_a_latched_writer_writes_no_index() {
        use crate::fault::{Fault, FaultBackend};
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("s");
        Engine::init(&root).unwrap();
        let disk = FaultBackend::new();
        disk.inject(Fault::once(0)); // creating index.hnsw.tmp
        let engine = fault_writer(&root, &disk);
        assert!(engine.with_index(|_| ()).is_err());
        assert!(matches!(engine.begin_write(), Err(StorageError::Poisoned)));
        // The disk is healthy again, but the writer stays latched and writes nothing.
        assert!(engine.with_index(|i| i.len()).is_ok());
        assert!(disk.names().is_empty(), "{:?}", disk.names());
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
        s.append(&[2u8; 100]).unwrap();
        let err = s.commit(|_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("injected fsync failure"), "{err}");
        // Latched: no further writes, even once the disk is healthy again.
        fail.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(engine.begin_write(), Err(StorageError::Poisoned)));
        drop(engine);
        let engine = writer(&root);
        let models = engine.read(|q| q.models()).unwrap();
        assert_eq!(models.len(), 1);
        assert_eq!(engine.pack_file_len(1).unwrap(), 100);
        put(&engine, "b", &[3u8; 100]);
    }
}
