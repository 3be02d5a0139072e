//! Invariant: a format-1 store (written by earlier builds) opens, reads and verifies as before,
//! refuses writes until upgraded, and `upgrade` rewrites it into format 2 without changing a
//! byte any model reads back, crash safe at every write point: after a power loss anywhere in
//! the upgrade, the store reopens as the format-1 store it was or as the upgraded one.

mod format_1_fixture;

use std::path::Path;

use format_1_fixture::{FIXTURE, check, copy_fixture, fixture_disk, open};
use neurstore::{ErrorKind, NoProgress, PutOptions, Store};
use neurstore_storage::fault::CrashPolicy;

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
