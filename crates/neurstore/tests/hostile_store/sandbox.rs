//! The sandbox a forged store lives in, what is recorded of it before and after, and the
//! sequence a user runs on it, checked against the three promises.
//!
//! Layout of a sandbox (a fresh temporary directory):
//!
//! ```text
//! victim.txt                 victims: files outside the output directory that a forged
//! l1/victim.txt              path or a planted link could try to overwrite; escapes of up to
//! l1/l2/victim.txt           five levels from anywhere inside the output land on them (and
//! l1/l2/l3/victim.txt        stay inside the sandbox, whatever the code under test does)
//! victims/inside.txt         a victim directory, and an empty one
//! empty-victim/
//! input/                     inputs of the writer's put (created and removed by it)
//! store/                     the forged store
//! l1/l2/l3/out/              the output directory: every get writes below it
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use neurstore::{ErrorKind, NoProgress, Store, StoreOptions};

use crate::forge::Forgery;
use crate::reliability_fixture::{MAX_PACK_LEN, Model, copy_store, panic_message};

/// A forged store's sandbox.
pub struct Sandbox {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub store: PathBuf,
    pub out: PathBuf,
    pub input: PathBuf,
}

/// Directories holding a `victim.txt`, from the sandbox root down to the output's parent.
pub const VICTIM_LEVELS: [&str; 4] = ["", "l1", "l1/l2", "l1/l2/l3"];

impl Sandbox {
    /// A sandbox holding a copy of the store at `template`, victims and an empty output.
    pub fn new(template: &Path) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let store = root.join("store");
        copy_store(template, &store);
        let out = root.join("l1/l2/l3/out");
        std::fs::create_dir_all(&out).unwrap();
        for level in VICTIM_LEVELS {
            std::fs::write(
                root.join(level).join("victim.txt"),
                format!("victim at {level:?}\n"),
            )
            .unwrap();
        }
        std::fs::create_dir_all(root.join("victims")).unwrap();
        std::fs::write(root.join("victims/inside.txt"), b"victim in a directory\n").unwrap();
        std::fs::create_dir_all(root.join("empty-victim")).unwrap();
        let input = root.join("input");
        std::fs::create_dir_all(&input).unwrap();
        Sandbox {
            _dir: dir,
            root,
            store,
            out,
            input,
        }
    }

    /// Where `get` writes model `m`.
    pub fn dest(&self, m: &Model) -> PathBuf {
        self.out.join(dest_name(m))
    }
}

/// The output name of model `m`: `NAME.safetensors` for a file model, `NAME` for a directory.
pub fn dest_name(m: &Model) -> String {
    if m.directory {
        m.name.clone()
    } else {
        format!("{}.safetensors", m.name)
    }
}

/// What a path held, for comparing snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir,
    File(blake3::Hash),
    Link(PathBuf),
    Other,
}

/// Every entry of the sandbox outside the output directory and the store (whose pack files
/// the pack promise covers), with each file's content hash and each link's target.
fn outside(sb: &Sandbox) -> BTreeMap<PathBuf, Entry> {
    let mut map = BTreeMap::new();
    walk(&sb.root, &[&sb.out, &sb.store], &mut map);
    map
}

fn walk(dir: &Path, skip: &[&Path], out: &mut BTreeMap<PathBuf, Entry>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if skip.contains(&path.as_path()) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let e = if meta.file_type().is_symlink() {
            Entry::Link(std::fs::read_link(&path).unwrap_or_default())
        } else if meta.is_dir() {
            walk(&path, skip, out);
            Entry::Dir
        } else if meta.is_file() {
            Entry::File(blake3::hash(&std::fs::read(&path).unwrap_or_default()))
        } else {
            Entry::Other
        };
        out.insert(path, e);
    }
}

/// Differences between two snapshots, described.
fn differences(
    before: &BTreeMap<PathBuf, Entry>,
    after: &BTreeMap<PathBuf, Entry>,
    root: &Path,
) -> Vec<String> {
    let rel = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();
    let mut out = Vec::new();
    for (p, e) in before {
        match after.get(p) {
            None => out.push(format!("{} removed", rel(p))),
            Some(a) if a != e => out.push(format!("{} changed", rel(p))),
            _ => {}
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        out.push(format!("{} created", rel(p)));
    }
    out
}

/// A pack file as the forgery left it.
pub struct PackRecord {
    name: String,
    len: u64,
    hash: blake3::Hash,
}

/// The pack files of a store (regular files named like packs), with their lengths and hashes.
pub fn packs(store: &Path) -> Vec<PackRecord> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(store.join("packs")) else {
        return out;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && neurstore_storage::pack::pack_id_from_name(&name).is_some() {
            let bytes = std::fs::read(entry.path()).unwrap();
            out.push(PackRecord {
                name,
                len: bytes.len() as u64,
                hash: blake3::hash(&bytes),
            });
        }
    }
    out
}

/// The pack promise: every pack recorded before still holds at least its recorded bytes,
/// unchanged: in place, or in any file of the store it was moved to (a pack set aside counts
/// as kept). Packs in `may_remove` (those the undamaged reference's gc removed) may be gone.
fn lost_packs(store: &Path, before: &[PackRecord], may_remove: &BTreeSet<String>) -> Vec<String> {
    let mut files = Vec::new();
    collect_files(store, &mut files);
    let held = |p: &PackRecord, file: &Path| {
        std::fs::read(file)
            .is_ok_and(|b| b.len() as u64 >= p.len && blake3::hash(&b[..p.len as usize]) == p.hash)
    };
    let mut out = Vec::new();
    for p in before {
        let at = store.join("packs").join(&p.name);
        if held(p, &at) || may_remove.contains(&p.name) || files.iter().any(|f| held(p, f)) {
            continue;
        }
        let now = std::fs::symlink_metadata(&at).map(|m| m.len());
        out.push(match now {
            Err(_) => format!("pack {} ({} B) removed", p.name, p.len),
            Ok(n) if n < p.len => format!("pack {} cut from {} to {n} B", p.name, p.len),
            Ok(_) => format!("pack {} overwritten", p.name),
        });
    }
    out
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(t) = entry.file_type() else { continue };
        if t.is_dir() {
            collect_files(&entry.path(), out);
        } else if t.is_file() {
            out.push(entry.path());
        }
    }
}

/// What one forged store led to.
#[derive(Default, Debug)]
pub struct Outcome {
    /// Files outside the output directory created, changed or removed.
    pub outside: Vec<String>,
    /// Packs lost, cut or overwritten.
    pub packs: Vec<String>,
    /// Reads that returned Ok with bytes other than those put under that name.
    pub wrong: Vec<String>,
    /// Panics, with the step.
    pub panics: Vec<String>,
    /// A forged path not refused as `Corrupt` naming the model and the path.
    pub not_refused: Vec<String>,
    /// Typed errors returned (the damage detected).
    pub errors: u64,
    /// Packs gc removed (for the reference run).
    pub removed_packs: BTreeSet<String>,
}

impl Outcome {
    /// Broken promises of every class.
    pub fn violations(&self) -> usize {
        self.outside.len()
            + self.packs.len()
            + self.wrong.len()
            + self.panics.len()
            + self.not_refused.len()
    }

    /// Runs one step under `catch_unwind`: its value, or `None` after an error (counted) or a
    /// panic (a violation).
    fn step<T>(
        &mut self,
        what: &str,
        f: impl FnOnce() -> neurstore::Result<T>,
    ) -> Option<neurstore::Result<T>> {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => {
                if r.is_err() {
                    self.errors += 1;
                }
                Some(r)
            }
            Err(p) => {
                self.panics.push(format!("{what}: {}", panic_message(&*p)));
                None
            }
        }
    }

    fn check(&mut self, what: &str, r: Result<(), String>) {
        if let Err(e) = r {
            self.wrong.push(format!("{what}: {e}"));
        }
    }
}

/// The store a user would open for writing (the template's small packs).
fn writer(store: &Path) -> neurstore::Result<Store> {
    Store::open_with(
        store,
        StoreOptions {
            write: true,
            max_pack_len: Some(MAX_PACK_LEN),
            ..Default::default()
        },
    )
}

/// Runs what a user would on the forged store in `sb` and checks the three promises (and, for
/// a forged path, that it is refused as `Corrupt` naming the model and the path):
///
/// 1. a reader: `ls`, `info` of every listed model, `get` of every model of `models` into the
///    output directory, `load` of each, `verify`;
/// 2. a writer: open (recovery), `put` of `new` (which shares tensors with the stored models,
///    so it deduplicates against their blobs), `get` and `load` of it, `gc`, then `load` of
///    every model of `models` again (gc may have moved their blobs).
///
/// `may_remove` lists the packs the undamaged reference's gc removed.
pub fn run_user(
    sb: &Sandbox,
    models: &[Model],
    new: &Model,
    forgery: &Forgery,
    may_remove: &BTreeSet<String>,
) -> Outcome {
    let mut o = Outcome::default();
    let outside_before = outside(sb);
    let packs_before = packs(&sb.store);
    read_phase(sb, models, forgery, &mut o);
    write_phase(sb, models, new, &mut o);
    o.outside = differences(&outside_before, &outside(sb), &sb.root);
    o.packs = lost_packs(&sb.store, &packs_before, may_remove);
    let after: BTreeSet<String> = packs(&sb.store).into_iter().map(|p| p.name).collect();
    o.removed_packs = packs_before
        .into_iter()
        .map(|p| p.name)
        .filter(|n| !after.contains(n))
        .collect();
    o
}

fn read_phase(sb: &Sandbox, models: &[Model], forgery: &Forgery, o: &mut Outcome) {
    let Some(Ok(store)) = o.step("open", || Store::open(&sb.store)) else {
        return;
    };
    if let Some(Ok(list)) = o.step("ls", || store.list()) {
        for m in &list {
            let _ = o.step("info", || store.info(&m.name));
        }
    }
    for m in models {
        let dest = sb.dest(m);
        let got = o.step("get", || store.get(&m.name, &dest, &NoProgress));
        if let Some(r) = &got
            && let Some((model, path)) = &forgery.refused
            && *model == m.name
        {
            check_refusal(r, model, path, o);
        }
        if let Some(Ok(_)) = got {
            o.check(&format!("get {}", m.name), m.check_get(&dest));
        }
        if let Some(Ok(loaded)) = o.step("load", || store.load(&m.name)) {
            o.check(&format!("load {}", m.name), m.check_load(&loaded));
        }
    }
    let _ = o.step("verify", || store.verify(&NoProgress));
}

/// A forged path must make `get` fail with `Corrupt`, naming the model and the path.
fn check_refusal(
    r: &neurstore::Result<neurstore::GetReport>,
    model: &str,
    path: &str,
    o: &mut Outcome,
) {
    let refused = match r {
        Ok(_) => false,
        Err(e) => {
            let msg = e.to_string();
            e.kind() == ErrorKind::Corrupt
                && msg.contains(&format!("{model:?}"))
                && msg.contains(&format!("{path:?}"))
        }
    };
    if !refused {
        let got = match r {
            Ok(_) => "Ok".to_string(),
            Err(e) => format!("{:?}: {e}", e.kind()),
        };
        o.not_refused
            .push(format!("get {model} with path {path:?}: {got}"));
    }
}

fn write_phase(sb: &Sandbox, models: &[Model], new: &Model, o: &mut Outcome) {
    let Some(Ok(store)) = o.step("open_writer", || writer(&sb.store)) else {
        return;
    };
    if let Some(Ok(_)) = o.step("put", || new.put(&store, &sb.input)) {
        let dest = sb.dest(new);
        if let Some(Ok(_)) = o.step("get new", || store.get(&new.name, &dest, &NoProgress)) {
            o.check("get new", new.check_get(&dest));
        }
    }
    let _ = o.step("gc", || store.gc(&NoProgress));
    for m in models.iter().chain([new]) {
        if let Some(Ok(loaded)) = o.step("load after gc", || store.load(&m.name)) {
            o.check(&format!("load {} after gc", m.name), m.check_load(&loaded));
        }
    }
}
