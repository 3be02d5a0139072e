//! Invariant: a format-1 store (written by earlier builds) opens, reads and verifies as before,
//! refuses writes until upgraded, and `upgrade` rewrites it into format 2 without changing a
//! byte any model reads back, crash safe at every write point: after a power loss anywhere in
//! the upgrade, the store reopens as the format-1 store it was or as the upgraded one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use neurstore::{ErrorKind, NoProgress, PutOptions, Store, StoreOptions};
use neurstore_storage::backend::Backend;
use neurstore_storage::fault::{CrashPolicy, FaultBackend};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/format-1");

/// The models of the fixture and the bytes each must read back as. The fixture was written by
/// the last format-1 build: `base`, a lossless fine-tune `ft` (deltas), `q` (tolerance 1e-3,
/// its output as that build gave it), a directory model `dir`, and a removed model's dead
/// bytes.
fn expected() -> Vec<(&'static str, PathBuf)> {
    let at = |p: &str| Path::new(FIXTURE).join(p);
    vec![
        ("base", at("base.safetensors")),
        ("dir", at("dir")),
        ("ft", at("ft.safetensors")),
        ("q", at("q-v1.safetensors")),
    ]
}

fn copy_fixture(to: &Path) -> PathBuf {
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

fn same_tree(a: &Path, b: &Path) -> bool {
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
fn check(store: &Store, scratch: &Path) -> Result<(), String> {
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

#[test]
fn a_format_1_store_reads_refuses_writes_and_upgrades() {
    let dir = tempfile::tempdir().unwrap();
    let root = copy_fixture(dir.path());
    let reader = Store::open(&root).unwrap();
    assert_eq!(reader.format_version(), 1);
    check(&reader, dir.path()).unwrap();
    drop(reader);

    let writer = Store::open_writer(&root).unwrap();
    let input = Path::new(FIXTURE).join("base.safetensors");
    let err = writer
        .put("new", &input, &PutOptions::default(), &NoProgress)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("neurstore upgrade"), "{err}");
    let err = writer.remove("ft").unwrap_err();
    assert!(err.to_string().contains("neurstore upgrade"), "{err}");

    let before = writer.stats().unwrap().pack_bytes;
    let report = writer.upgrade(&NoProgress).unwrap();
    assert_eq!(writer.format_version(), 2);
    assert_eq!(report.packs_removed, 1);
    check(&writer, dir.path()).unwrap();
    // Format 2 packs blobs back to back: the same models take less room.
    let after = writer.stats().unwrap().pack_bytes;
    assert!(after < before, "{before} -> {after}");
    // Now it takes writes, and its catalog can be rebuilt from its packs.
    writer
        .put("new", &input, &PutOptions::default(), &NoProgress)
        .unwrap();
    drop(writer);
    std::fs::remove_file(root.join("catalog.db")).unwrap();
    let rebuilt = Store::recover(&root).unwrap();
    assert_eq!(rebuilt.models, 5, "{rebuilt:?}");
    let store = Store::open_writer(&root).unwrap();
    store.remove("new").unwrap();
    check(&store, dir.path()).unwrap();
}

/// The fixture's packs on a fault-injecting disk, every write synced.
fn fixture_disk() -> FaultBackend {
    let disk = FaultBackend::new();
    let bytes = std::fs::read(Path::new(FIXTURE).join("store/packs/00000001.pack")).unwrap();
    let file = disk.open("00000001.pack", true).unwrap();
    file.write_at(&bytes, 0).unwrap();
    file.sync().unwrap();
    disk.sync_dir().unwrap();
    disk
}

fn open(root: &Path, disk: &FaultBackend) -> neurstore::Result<Store> {
    Store::open_with(
        root,
        StoreOptions {
            write: true,
            backend: Some(Arc::new(disk.clone())),
            ..Default::default()
        },
    )
}

#[test]
fn a_power_loss_anywhere_in_the_upgrade_leaves_one_format_or_the_other() {
    let clean = fixture_disk();
    let start = clean.ops();
    let dir = tempfile::tempdir().unwrap();
    let root = copy_fixture(&dir.path().join("clean"));
    open(&root, &clean).unwrap().upgrade(&NoProgress).unwrap();
    let n = clean.ops() - start;
    assert!(n > 5, "{n} operations");
    let mut checked = 0;
    let mut upgraded = 0;
    for k in 0..=n {
        let disk = fixture_disk();
        disk.crash_at(start + k);
        let root = copy_fixture(&dir.path().join(format!("k{k}")));
        let result = open(&root, &disk).and_then(|s| s.upgrade(&NoProgress));
        assert!(
            k == n || result.is_err(),
            "k={k}: the power loss surfaced no error"
        );
        for (policy, seed) in [
            (CrashPolicy::KeepAll, 0),
            (CrashPolicy::DropAll, 0),
            (CrashPolicy::Random, k),
        ] {
            let image = disk.crash_image(policy, seed);
            // The catalog as the crash left it, for each image.
            let at = dir.path().join(format!("k{k}-{policy:?}/store"));
            std::fs::create_dir_all(at.join("packs")).unwrap();
            for f in ["catalog.db", "catalog.db-wal"] {
                if root.join(f).exists() {
                    std::fs::copy(root.join(f), at.join(f)).unwrap();
                }
            }
            let store = open(&at, &image)
                .unwrap_or_else(|e| panic!("k={k} {policy:?}: reopen failed: {e}"));
            if store.format_version() == 2 {
                upgraded += 1;
            }
            check(&store, dir.path()).unwrap_or_else(|e| panic!("k={k} {policy:?}: {e}"));
            // Whatever the state, the upgrade (again) completes and reads the same.
            store.upgrade(&NoProgress).unwrap();
            check(&store, dir.path()).unwrap_or_else(|e| panic!("k={k} {policy:?} after: {e}"));
            checked += 1;
        }
    }
    eprintln!(
        "upgrade crash points: {} points x 3 images = {checked} images; {upgraded} reopened upgraded, \
         the rest as format 1; violations = 0",
        n + 1
    );
}
