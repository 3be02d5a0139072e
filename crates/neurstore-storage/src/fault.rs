//! A fault-injecting [`Backend`] held entirely in memory, for the crash, I/O error and disk-full
//! loops (docs/reliability.md).
//!
//! **Model.** Every file is an inode with a *durable* image (its contents as of its last
//! `sync`) and the `write_at` / `set_len` calls made since. The directory has a *durable* name
//! table (as of the last `sync_dir`) and the creations, removals and renames made since. A
//! [`FaultBackend::crash_image`] starts from the durable state and replays, per a
//! [`CrashPolicy`], each unsynced operation or not: file operations may also be torn (cut at a
//! 512 B, 4 KiB or byte boundary) and replayed out of order; directory operations are each
//! atomic and replayed in order. Bytes a crash never wrote keep their old contents (zeros past
//! the old end).
//!
//! **Operations.** Every mutating call (create, `write_at`, `set_len`, `sync`, `remove`,
//! `rename`, `sync_dir`, `barrier`) takes the next number of one global counter, from 0; reads,
//! `len` and `list` are not counted. The catalog is SQLite's own I/O and is not under the trait:
//! it is modelled at commit granularity by [`Backend::barrier`], counted as one operation, so
//! a crash at the barrier falls before the catalog commit and a crash at any later operation after
//! it (SQLite's WAL with `synchronous=FULL` is assumed durable).
//!
//! ```
//! use neurstore_storage::backend::Backend;
//! use neurstore_storage::fault::{CrashPolicy, FaultBackend};
//! let disk = FaultBackend::new();
//! let f = disk.open("a", true).unwrap(); // op 0
//! f.write_at(b"durable", 0).unwrap(); // op 1
//! f.sync().unwrap(); // op 2
//! disk.sync_dir().unwrap(); // op 3
//! disk.crash_at(5);
//! f.write_at(b"lost", 7).unwrap(); // op 4
//! assert!(f.write_at(b"never", 11).is_err()); // op 5: power lost
//! let after = disk.crash_image(CrashPolicy::DropAll, 0);
//! assert_eq!(after.contents("a").unwrap(), b"durable");
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{Backend, StorageFile};

/// A kind of counted operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// `open` with `create` of a name that does not exist.
    Create,
    /// `write_at`.
    Write,
    /// `set_len`.
    SetLen,
    /// `sync` of a file.
    Sync,
    /// `remove`.
    Remove,
    /// `rename`.
    Rename,
    /// `sync_dir`.
    SyncDir,
    /// `barrier`: the catalog commit that publishes a write follows it.
    Barrier,
}

impl OpKind {
    /// Every kind, in declaration order.
    pub const ALL: [OpKind; 8] = [
        OpKind::Create,
        OpKind::Write,
        OpKind::SetLen,
        OpKind::Sync,
        OpKind::Remove,
        OpKind::Rename,
        OpKind::SyncDir,
        OpKind::Barrier,
    ];

    /// Lower-case name, as in reports.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Create => "create",
            OpKind::Write => "write",
            OpKind::SetLen => "set_len",
            OpKind::Sync => "sync",
            OpKind::Remove => "remove",
            OpKind::Rename => "rename",
            OpKind::SyncDir => "sync_dir",
            OpKind::Barrier => "barrier",
        }
    }
}

/// One counted operation, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpRecord {
    /// Its number (from 0).
    pub index: u64,
    /// What it was.
    pub kind: OpKind,
    /// The file name it addressed (the name at open time for file operations; empty for
    /// `sync_dir` and `barrier`).
    pub target: String,
    /// True when it succeeded.
    pub ok: bool,
}

/// An I/O error to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Number (from 0) of the operation that fails: among all operations, or among those of
    /// kind `only` when set.
    pub at: u64,
    /// Count and fail only operations of this kind.
    pub only: Option<OpKind>,
    /// Fail every matching operation from `at` on, not just the one.
    pub sticky: bool,
    /// `Other` injects EIO, `StorageFull` ENOSPC (both as OS errors); any other kind, an error
    /// of that kind.
    pub error: io::ErrorKind,
}

impl Fault {
    /// Operation `at` fails once with EIO.
    pub fn once(at: u64) -> Self {
        Fault {
            at,
            only: None,
            sticky: false,
            error: io::ErrorKind::Other,
        }
    }

    /// Operation `at` and every later one fail with EIO.
    pub fn sticky(at: u64) -> Self {
        Fault {
            sticky: true,
            ..Fault::once(at)
        }
    }
}

/// What a crash image keeps of the operations not yet made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPolicy {
    /// Everything, in order: the process died but the OS did not.
    KeepAll,
    /// Nothing: only synced data and dir-synced names survive.
    DropAll,
    /// Each unsynced file operation kept, dropped or (a write) torn, with equal odds, and the
    /// kept ones replayed in a random order per file; each unsynced directory operation kept or
    /// dropped; all drawn from the seed.
    Random,
}

/// How a crash image was made from the unsynced operations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageStats {
    /// File operations replayed whole.
    pub kept: u64,
    /// File operations dropped.
    pub dropped: u64,
    /// Writes replayed in part.
    pub torn: u64,
    /// Directory operations (create, remove, rename) not replayed.
    pub dir_ops_dropped: u64,
}

#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone)]
enum DirOp {
    Create(String, u64),
    Remove(String),
    Rename(String, String),
}

#[derive(Debug, Clone, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

#[derive(Debug, Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    dir_pending: Vec<DirOp>,
    ops: u64,
    per_kind: [u64; OpKind::ALL.len()],
    log: Vec<OpRecord>,
    crash_at: Option<u64>,
    dead: bool,
    faults: Vec<Fault>,
    injected: u64,
    budget: Option<u64>,
    peak_bytes: u64,
    image: ImageStats,
}

const EIO: i32 = 5;
const ENOSPC: i32 = 28;

fn power_lost() -> io::Error {
    io::Error::from_raw_os_error(EIO)
}

fn injected(kind: io::ErrorKind) -> io::Error {
    match kind {
        io::ErrorKind::Other => io::Error::from_raw_os_error(EIO),
        io::ErrorKind::StorageFull => no_space(),
        kind => io::Error::new(kind, "injected fault"),
    }
}

/// Files are vectors in memory: a length past `isize::MAX` cannot be one.
fn fits_memory(len: u64) -> bool {
    isize::try_from(len).is_ok()
}

fn too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "file length beyond what the in-memory backend can hold",
    )
}

fn no_space() -> io::Error {
    io::Error::from_raw_os_error(ENOSPC)
}

impl State {
    /// Numbers the operation and decides whether it may run.
    fn begin(&mut self, kind: OpKind, target: &str) -> io::Result<()> {
        let index = self.ops;
        self.ops += 1;
        let nth = self.per_kind[kind as usize];
        self.per_kind[kind as usize] += 1;
        let result = if self.dead {
            Err(power_lost())
        } else if self.crash_at.is_some_and(|k| index >= k) {
            self.dead = true;
            Err(power_lost())
        } else if let Some(fault) = self.faults.iter().find(|f| {
            let n = if f.only.is_some() { nth } else { index };
            f.only.is_none_or(|t| t == kind) && (n == f.at || (f.sticky && n > f.at))
        }) {
            self.injected += 1;
            Err(injected(fault.error))
        } else {
            Ok(())
        };
        self.log.push(OpRecord {
            index,
            kind,
            target: target.to_string(),
            ok: result.is_ok(),
        });
        result
    }

    /// Records the outcome of an operation `begin` let run.
    fn finish<T>(&mut self, result: io::Result<T>) -> io::Result<T> {
        if result.is_err()
            && let Some(last) = self.log.last_mut()
        {
            last.ok = false;
        }
        self.peak_bytes = self.peak_bytes.max(self.file_bytes());
        result
    }

    fn live(&self) -> io::Result<()> {
        if self.dead { Err(power_lost()) } else { Ok(()) }
    }

    fn file_bytes(&self) -> u64 {
        let ids: BTreeSet<u64> = self.names.values().copied().collect();
        ids.iter().map(|id| self.inodes[id].data.len() as u64).sum()
    }

    /// Bytes `inode` may still grow by under the budget (`u64::MAX` without one).
    fn room(&self, inode: u64) -> u64 {
        match self.budget {
            None => u64::MAX,
            Some(budget) if self.names.values().any(|&i| i == inode) => {
                budget.saturating_sub(self.file_bytes())
            }
            // An unlinked file's space is not counted.
            Some(_) => u64::MAX,
        }
    }

    fn image(&self, policy: CrashPolicy, seed: u64) -> State {
        let mut rng = SplitMix(seed);
        let mut stats = ImageStats::default();
        let mut names = self.durable_names.clone();
        for op in &self.dir_pending {
            let keep = match policy {
                CrashPolicy::KeepAll => true,
                CrashPolicy::DropAll => false,
                CrashPolicy::Random => rng.below(2) == 0,
            };
            if !keep {
                stats.dir_ops_dropped += 1;
                continue;
            }
            match op {
                DirOp::Create(name, id) => {
                    names.insert(name.clone(), *id);
                }
                DirOp::Remove(name) => {
                    names.remove(name);
                }
                DirOp::Rename(from, to) => {
                    if let Some(id) = names.remove(from) {
                        names.insert(to.clone(), id);
                    }
                }
            }
        }
        let ids: BTreeSet<u64> = names.values().copied().collect();
        let mut inodes = HashMap::new();
        for id in ids {
            let inode = &self.inodes[&id];
            let mut replay = Vec::new();
            for op in &inode.pending {
                let choice = match policy {
                    CrashPolicy::KeepAll => 0,
                    CrashPolicy::DropAll => 1,
                    CrashPolicy::Random => rng.below(3),
                };
                match (choice, op) {
                    (0, _) => {
                        replay.push(op.clone());
                        stats.kept += 1;
                    }
                    (1, _) => stats.dropped += 1,
                    (_, Pending::Write { offset, bytes }) if bytes.len() > 1 => {
                        replay.push(tear(*offset, bytes, &mut rng));
                        stats.torn += 1;
                    }
                    // Too small to tear: kept.
                    _ => {
                        replay.push(op.clone());
                        stats.kept += 1;
                    }
                }
            }
            if policy == CrashPolicy::Random {
                for i in (1..replay.len()).rev() {
                    let j = rng.below(i as u64 + 1) as usize;
                    replay.swap(i, j);
                }
            }
            let mut data = inode.durable.clone();
            for op in &replay {
                apply(&mut data, op);
            }
            inodes.insert(
                id,
                Inode {
                    data: data.clone(),
                    durable: data,
                    pending: Vec::new(),
                },
            );
        }
        let peak_bytes = names
            .values()
            .collect::<BTreeSet<_>>()
            .iter()
            .map(|id| inodes[*id].data.len() as u64)
            .sum();
        State {
            inodes,
            next_inode: self.next_inode,
            durable_names: names.clone(),
            names,
            peak_bytes,
            image: stats,
            ..State::default()
        }
    }
}

/// A write cut at a 512 B, 4 KiB or byte boundary (of the file), keeping the part before or
/// after the cut.
fn tear(offset: u64, bytes: &[u8], rng: &mut SplitMix) -> Pending {
    let end = offset + bytes.len() as u64;
    let mut grain = [512, 4096, 1][rng.below(3) as usize];
    // Boundaries strictly inside the write.
    let mut first = (offset / grain + 1) * grain;
    if first >= end {
        grain = 1;
        first = offset + 1;
    }
    let count = (end - 1 - first) / grain + 1;
    let cut = first + rng.below(count) * grain;
    let at = (cut - offset) as usize;
    if rng.below(2) == 0 {
        Pending::Write {
            offset,
            bytes: bytes[..at].to_vec(),
        }
    } else {
        Pending::Write {
            offset: cut,
            bytes: bytes[at..].to_vec(),
        }
    }
}

fn apply(data: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write { offset, bytes } => {
            let start = *offset as usize;
            let end = start + bytes.len();
            if data.len() < end {
                data.resize(end, 0);
            }
            data[start..end].copy_from_slice(bytes);
        }
        Pending::SetLen(len) => data.resize(*len as usize, 0),
    }
}

/// splitmix64: a small seeded generator, enough for choosing what a crash keeps.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// An in-memory backend that records every operation and injects power loss, I/O errors and
/// a full disk. Cloning gives another handle to the same disk.
#[derive(Clone, Default)]
pub struct FaultBackend {
    state: Arc<Mutex<State>>,
}

struct FaultFile {
    state: Arc<Mutex<State>>,
    inode: u64,
    name: String,
}

impl FaultBackend {
    /// An empty, healthy disk.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Power is lost at operation `k`: it and every later call fail, reads included.
    pub fn crash_at(&self, k: u64) {
        self.state().crash_at = Some(k);
    }

    /// Adds an I/O error to inject.
    pub fn inject(&self, fault: Fault) {
        self.state().faults.push(fault);
    }

    /// Caps the total length of the files present; writes and extensions past it fail with
    /// `StorageFull` (a write first fills what room there is). `None` lifts the cap.
    pub fn set_budget(&self, bytes: Option<u64>) {
        self.state().budget = bytes;
    }

    /// Operations counted so far.
    pub fn ops(&self) -> u64 {
        self.state().ops
    }

    /// Operations of `kind` counted so far.
    pub fn ops_of(&self, kind: OpKind) -> u64 {
        self.state().per_kind[kind as usize]
    }

    /// Every counted operation, in order.
    pub fn log(&self) -> Vec<OpRecord> {
        self.state().log.clone()
    }

    /// Injected I/O errors that fired (power loss not included).
    pub fn injected(&self) -> u64 {
        self.state().injected
    }

    /// True once power was lost.
    pub fn is_dead(&self) -> bool {
        self.state().dead
    }

    /// Total length of the files present now.
    pub fn file_bytes(&self) -> u64 {
        self.state().file_bytes()
    }

    /// The largest [`FaultBackend::file_bytes`] seen after any operation.
    pub fn peak_bytes(&self) -> u64 {
        self.state().peak_bytes
    }

    /// The names present now.
    pub fn names(&self) -> Vec<String> {
        self.state().names.keys().cloned().collect()
    }

    /// Current contents of `name`, if present.
    pub fn contents(&self, name: &str) -> Option<Vec<u8>> {
        let s = self.state();
        s.names.get(name).map(|id| s.inodes[id].data.clone())
    }

    /// For an image made by [`FaultBackend::crash_image`]: what it kept, dropped and tore.
    pub fn image_stats(&self) -> ImageStats {
        self.state().image
    }

    /// What the disk could hold after losing power now: the durable state plus, per `policy`
    /// (and `seed`, for [`CrashPolicy::Random`]), the operations not yet synced. The image is a
    /// new, healthy disk with everything durable, its counters at zero.
    pub fn crash_image(&self, policy: CrashPolicy, seed: u64) -> FaultBackend {
        let image = self.state().image(policy, seed);
        FaultBackend {
            state: Arc::new(Mutex::new(image)),
        }
    }

    /// The disk as it is now (every operation kept), healthy: what a reopened process sees after
    /// an I/O error that did not take the machine down.
    pub fn current_image(&self) -> FaultBackend {
        self.crash_image(CrashPolicy::KeepAll, 0)
    }
}

impl std::fmt::Debug for FaultBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state();
        f.debug_struct("FaultBackend")
            .field("files", &s.names.len())
            .field("ops", &s.ops)
            .field("dead", &s.dead)
            .finish()
    }
}

impl Backend for FaultBackend {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let mut s = self.state();
        s.live()?;
        let inode = match s.names.get(name) {
            Some(&id) => id,
            None if !create => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{name}: no such file"),
                ));
            }
            None => {
                s.begin(OpKind::Create, name)?;
                let id = s.next_inode;
                s.next_inode += 1;
                s.inodes.insert(id, Inode::default());
                s.names.insert(name.to_string(), id);
                s.dir_pending.push(DirOp::Create(name.to_string(), id));
                s.finish(Ok(()))?;
                id
            }
        };
        Ok(Arc::new(FaultFile {
            state: self.state.clone(),
            inode,
            name: name.to_string(),
        }))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut s = self.state();
        s.begin(OpKind::Remove, name)?;
        let result = match s.names.remove(name) {
            Some(_) => {
                s.dir_pending.push(DirOp::Remove(name.to_string()));
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{name}: no such file"),
            )),
        };
        s.finish(result)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut s = self.state();
        s.begin(OpKind::Rename, from)?;
        let result = match s.names.remove(from) {
            Some(id) => {
                s.names.insert(to.to_string(), id);
                s.dir_pending
                    .push(DirOp::Rename(from.to_string(), to.to_string()));
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{from}: no such file"),
            )),
        };
        s.finish(result)
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let s = self.state();
        s.live()?;
        Ok(s.names.keys().cloned().collect())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut s = self.state();
        s.begin(OpKind::SyncDir, "")?;
        s.durable_names = s.names.clone();
        s.dir_pending.clear();
        s.finish(Ok(()))
    }

    fn barrier(&self) -> io::Result<()> {
        let mut s = self.state();
        s.begin(OpKind::Barrier, "")?;
        s.finish(Ok(()))
    }
}

impl FaultFile {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StorageFile for FaultFile {
    fn len(&self) -> io::Result<u64> {
        let s = self.state();
        s.live()?;
        Ok(s.inodes[&self.inode].data.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = self.state();
        s.live()?;
        let data = &s.inodes[&self.inode].data;
        let range = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(buf.len())?))
            .filter(|r| r.end <= data.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        buf.copy_from_slice(&data[range]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.state();
        s.begin(OpKind::Write, &self.name)?;
        let len = s.inodes[&self.inode].data.len() as u64;
        let Some(end) = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| fits_memory(e))
        else {
            return s.finish(Err(too_large()));
        };
        let limit = len.saturating_add(s.room(self.inode));
        // A full disk takes what fits, then fails (as a real `write_all` may).
        let fits = if end <= limit {
            buf.len()
        } else {
            limit.saturating_sub(offset).min(buf.len() as u64) as usize
        };
        if fits > 0 {
            let op = Pending::Write {
                offset,
                bytes: buf[..fits].to_vec(),
            };
            let inode = s.inodes.get_mut(&self.inode).expect("open inode");
            apply(&mut inode.data, &op);
            inode.pending.push(op);
        }
        let result = if fits == buf.len() {
            Ok(())
        } else {
            Err(no_space())
        };
        s.finish(result)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.state();
        s.begin(OpKind::SetLen, &self.name)?;
        if !fits_memory(len) {
            return s.finish(Err(too_large()));
        }
        let old = s.inodes[&self.inode].data.len() as u64;
        if len > old && len - old > s.room(self.inode) {
            return s.finish(Err(no_space()));
        }
        let op = Pending::SetLen(len);
        let inode = s.inodes.get_mut(&self.inode).expect("open inode");
        apply(&mut inode.data, &op);
        inode.pending.push(op);
        s.finish(Ok(()))
    }

    fn sync(&self) -> io::Result<()> {
        let mut s = self.state();
        s.begin(OpKind::Sync, &self.name)?;
        let inode = s.inodes.get_mut(&self.inode).expect("open inode");
        inode.durable = inode.data.clone();
        inode.pending.clear();
        s.finish(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(disk: &FaultBackend, name: &str, bytes: &[u8], offset: u64) {
        disk.open(name, true)
            .unwrap()
            .write_at(bytes, offset)
            .unwrap();
    }

    #[test]
    fn unsynced_writes_and_names_survive_only_per_policy() {
        let disk = FaultBackend::new();
        write(&disk, "a", b"hello", 0);
        disk.open("a", false).unwrap().sync().unwrap();
        disk.sync_dir().unwrap();
        write(&disk, "a", b" world", 5);
        write(&disk, "b", b"new", 0);
        disk.remove("a").unwrap();
        let kept = disk.crash_image(CrashPolicy::KeepAll, 0);
        assert_eq!(kept.names(), ["b"]);
        assert_eq!(kept.contents("b").unwrap(), b"new");
        // Unsynced: a's tail, b's creation and a's removal are all lost.
        let dropped = disk.crash_image(CrashPolicy::DropAll, 0);
        assert_eq!(dropped.names(), ["a"]);
        assert_eq!(dropped.contents("a").unwrap(), b"hello");
        let stats = dropped.image_stats();
        assert_eq!(
            (stats.kept, stats.dropped, stats.dir_ops_dropped),
            (0, 1, 2)
        );
        // An image is a durable, healthy disk.
        assert_eq!(dropped.ops(), 0);
        let again = dropped.crash_image(CrashPolicy::DropAll, 0);
        assert_eq!(again.contents("a").unwrap(), b"hello");
    }

    #[test]
    fn random_images_tear_and_reorder_but_never_touch_synced_bytes() {
        let disk = FaultBackend::new();
        let synced = vec![7u8; 10_000];
        write(&disk, "p", &synced, 0);
        disk.open("p", false).unwrap().sync().unwrap();
        disk.sync_dir().unwrap();
        let tail: Vec<u8> = (0..9000u32).map(|i| (i % 251) as u8 + 1).collect();
        write(&disk, "p", &tail, 12_288);
        let (mut torn, mut shapes) = (0, BTreeSet::new());
        for seed in 0..200 {
            let image = disk.crash_image(CrashPolicy::Random, seed);
            let got = image.contents("p").unwrap();
            assert_eq!(&got[..10_000], &synced[..], "seed {seed}");
            if got.len() > 12_288 {
                // Whatever survived of the tail is a piece of it at its place.
                for (i, b) in got[12_288..].iter().enumerate() {
                    assert!(*b == 0 || *b == tail[i], "seed {seed} byte {i}");
                }
            }
            torn += image.image_stats().torn;
            shapes.insert(got.len());
        }
        assert!(torn > 20, "{torn}");
        assert!(shapes.len() > 10, "{shapes:?}");
    }

    #[test]
    fn power_loss_kills_every_later_call() {
        let disk = FaultBackend::new();
        let f = disk.open("a", true).unwrap();
        disk.crash_at(2);
        f.write_at(b"x", 0).unwrap();
        assert!(f.sync().is_err());
        assert!(disk.is_dead());
        assert!(f.len().is_err() && disk.list().is_err() && disk.barrier().is_err());
        let log = disk.log();
        assert_eq!(log.len(), 4);
        assert_eq!(
            log.iter().map(|o| (o.kind, o.ok)).collect::<Vec<_>>(),
            [
                (OpKind::Create, true),
                (OpKind::Write, true),
                (OpKind::Sync, false),
                (OpKind::Barrier, false)
            ]
        );
    }

    #[test]
    fn faults_once_sticky_and_per_kind() {
        let disk = FaultBackend::new();
        let f = disk.open("a", true).unwrap(); // op 0
        disk.inject(Fault::once(2));
        f.write_at(b"1", 0).unwrap(); // 1
        assert!(f.write_at(b"2", 1).is_err()); // 2
        f.write_at(b"3", 1).unwrap(); // 3
        let disk = FaultBackend::new();
        let f = disk.open("a", true).unwrap();
        disk.inject(Fault {
            only: Some(OpKind::Sync),
            ..Fault::sticky(1)
        });
        f.sync().unwrap(); // sync #0
        f.write_at(b"x", 0).unwrap();
        for _ in 0..3 {
            assert!(f.sync().is_err());
        }
        f.write_at(b"y", 0).unwrap();
        assert_eq!(disk.injected(), 3);
        assert_eq!(disk.ops_of(OpKind::Sync), 4);
    }

    #[test]
    fn budget_fills_what_fits_then_reports_storage_full() {
        let disk = FaultBackend::new();
        disk.set_budget(Some(100));
        let f = disk.open("a", true).unwrap();
        f.write_at(&[1; 60], 0).unwrap();
        let err = f.write_at(&[2; 60], 60).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(disk.file_bytes(), 100);
        assert_eq!(
            f.set_len(200).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        // Overwrites and removals need no room; removal frees it.
        f.write_at(&[3; 10], 0).unwrap();
        disk.remove("a").unwrap();
        disk.open("b", true)
            .unwrap()
            .write_at(&[4; 100], 0)
            .unwrap();
        assert_eq!(disk.peak_bytes(), 100);
    }
}
