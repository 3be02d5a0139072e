//! The format-1 fixture store (written by the last format-1 build) the upgrade's tests copy,
//! the bytes each of its models must read back as, and the check that a store holds exactly
//! them.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use neurstore::{NoProgress, Store, StoreOptions};
use neurstore_storage::backend::Backend;
use neurstore_storage::fault::FaultBackend;

/// The fixture: the store, and the files its models were put from.
pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/format-1");

/// The models of the fixture and the bytes each must read back as. The fixture was written by
/// the last format-1 build: `base`, a lossless fine-tune `ft` (deltas), `q` (tolerance 1e-3,
/// its output as that build gave it), a directory model `dir`, and a removed model's dead
/// bytes.
pub fn expected() -> Vec<(&'static str, PathBuf)> {
    let at = |p: &str| Path::new(FIXTURE).join(p);
    vec![
        ("base", at("base.safetensors")),
        ("dir", at("dir")),
        ("ft", at("ft.safetensors")),
        ("q", at("q-v1.safetensors")),
    ]
}

/// A copy of the fixture store (catalog and pack) under `to`; returns its root.
pub fn copy_fixture(to: &Path) -> PathBuf {
    let root = to.join("store");
    std::fs::create_dir_all(root.join("packs")).unwrap();
    std::fs::copy(
        Path::new(FIXTURE).join("store/catalog.db"),
        root.join("catalog.db"),
    )
    .unwrap();
    std::fs::copy(
        Path::new(FIXTURE).join("store/packs/00000001.pack"),
        root.join("packs/00000001.pack"),
    )
    .unwrap();
    root
}

/// True when the files (or directory trees) `a` and `b` hold the same names and bytes.
pub fn same_tree(a: &Path, b: &Path) -> bool {
    if a.is_dir() {
        let names = |p: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        names(a) == names(b) && names(a).iter().all(|n| same_tree(&a.join(n), &b.join(n)))
    } else {
        std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
    }
}

/// Every model reads back as expected; `verify` is clean.
pub fn check(store: &Store, scratch: &Path) -> Result<(), String> {
    let names: Vec<String> = store
        .list()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|m| m.name)
        .collect();
    let want: Vec<&str> = expected().iter().map(|e| e.0).collect();
    if names != want {
        return Err(format!("models {names:?}"));
    }
    for (i, (name, path)) in expected().into_iter().enumerate() {
        let out = scratch.join(format!("out-{name}-{i}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out).or_else(|_| std::fs::remove_file(&out));
        store
            .get(name, &out, &NoProgress)
            .map_err(|e| format!("get {name}: {e}"))?;
        if !same_tree(&out, &path) {
            return Err(format!("{name} reads back different bytes"));
        }
    }
    let problems = store
        .verify(&NoProgress)
        .map_err(|e| e.to_string())?
        .problems;
    if !problems.is_empty() {
        return Err(format!("verify: {problems:?}"));
    }
    Ok(())
}

/// The fixture's packs on a fault-injecting disk, every write synced.
pub fn fixture_disk() -> FaultBackend {
    let disk = FaultBackend::new();
    let bytes = std::fs::read(Path::new(FIXTURE).join("store/packs/00000001.pack")).unwrap();
    let file = disk.open("00000001.pack", true).unwrap();
    file.write_at(&bytes, 0).unwrap();
    file.sync().unwrap();
    disk.sync_dir().unwrap();
    disk
}

/// The store at `root` opened for writing, its packs on `disk`.
pub fn open(root: &Path, disk: &FaultBackend) -> neurstore::Result<Store> {
    Store::open_with(
        root,
        StoreOptions {
            write: true,
            backend: Some(Arc::new(disk.clone())),
            ..Default::default()
        },
    )
}
