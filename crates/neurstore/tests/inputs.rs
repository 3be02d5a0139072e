//! Invariant: `put` reads only what the model directory holds (symbolic links that leave it
//! are refused unless asked for, special files always), checks every option once in the facade,
//! and a read-only open creates, migrates and locks nothing.

mod common;

use std::path::Path;

use common::safetensors_file;
use neurstore::{ErrorKind, Mode, NoProgress, PutOptions, Store, StoreOptions};
use neurstore_core::dtype::DType;

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn model_dir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let file = safetensors_file(
        &[("w", DType::F32, vec![4], f32_bytes(&[0.5, -1.5, 0.25, 1.0]))],
        None,
    );
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
}

fn new_store(dir: &Path) -> Store {
    let root = dir.join("store");
    Store::init(&root).unwrap();
    Store::open_writer(&root).unwrap()
}

fn listing(dir: &Path) -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let m = std::fs::metadata(&p).unwrap();
            (p, m.len(), m.modified().unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn links_out_of_the_directory_need_follow_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    let model = dir.path().join("model");
    model_dir(&model);
    std::fs::write(dir.path().join("outside.txt"), b"secret").unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside.txt"), model.join("x.txt")).unwrap();
    let err = store
        .put("m", &model, &PutOptions::default(), &NoProgress)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("x.txt"), "{err}");
    assert!(store.list().unwrap().is_empty());
    let follow = PutOptions {
        follow_symlinks: true,
        ..PutOptions::default()
    };
    let report = store.put("m", &model, &follow, &NoProgress).unwrap();
    assert_eq!(report.files, 2);
    // A link to a directory above makes a loop: refused, even when following links.
    std::fs::remove_file(model.join("x.txt")).unwrap();
    std::os::unix::fs::symlink("..", model.join("up")).unwrap();
    let err = store.put("loop", &model, &follow, &NoProgress).unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
}

#[test]
fn a_tolerance_past_a_tensor_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    let model = dir.path().join("model");
    model_dir(&model);
    let file = model.join("model.safetensors");
    let loose = PutOptions {
        mode: Mode::Absolute(1.5),
        ..PutOptions::default()
    };
    let err = store.put("m", &file, &loose, &NoProgress).unwrap_err();
    assert!(err.to_string().contains("largest magnitude"), "{err}");
    let forced = PutOptions {
        force: true,
        ..loose.clone()
    };
    store.put("m", &file, &forced, &NoProgress).unwrap();
    let bad = PutOptions {
        mode: Mode::Relative(1.0),
        ..PutOptions::default()
    };
    assert!(store.put("r", &file, &bad, &NoProgress).is_err());
}

#[test]
fn a_read_only_open_leaves_the_store_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let model = dir.path().join("model");
    model_dir(&model);
    Store::init(&root).unwrap();
    {
        let w = Store::open_writer(&root).unwrap();
        w.put("m", &model, &PutOptions::default(), &NoProgress)
            .unwrap();
    }
    let before = listing(&root);
    let store = Store::open(&root).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    store.verify(&NoProgress).unwrap();
    let err = store.remove("m").unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
    drop(store);
    assert_eq!(listing(&root), before);
    let both = StoreOptions {
        write: true,
        read_only: true,
        ..Default::default()
    };
    assert!(Store::open_with(&root, both).is_err());
}

#[test]
fn a_read_only_open_of_an_old_catalog_migrates_it_only_for_a_user_who_may_write_it() {
    // Here the user may write the catalog (the test's own store): the read-only open brings
    // it to the current schema (the migrations only add) and reads it. A user who may not
    // write it gets "run `neurstore upgrade`" and nothing changes: the CLI's shared-store
    // tests run that as an unprivileged user.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Store::init(&root).unwrap();
    let catalog = root.join("catalog.db");
    let conn = rusqlite::Connection::open(&catalog).unwrap();
    let current: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    // Back to schema 2 (before the format-2 columns, tables and packed sketches).
    conn.execute_batch(
        "ALTER TABLE models DROP COLUMN seq; ALTER TABLE models DROP COLUMN record_pack; \
         ALTER TABLE models DROP COLUMN record_offset; ALTER TABLE models DROP COLUMN record_len; \
         ALTER TABLE packs DROP COLUMN doomed; DROP TABLE tombstones; DROP TABLE sketches; \
         CREATE TABLE sketches (object_id INTEGER PRIMARY KEY, dtype TEXT NOT NULL, \
         elements INTEGER NOT NULL, sketch BLOB NOT NULL) STRICT; \
         UPDATE store_meta SET value = '1' WHERE key = 'format_version';",
    )
    .unwrap();
    conn.pragma_update(None, "user_version", 2).unwrap();
    drop(conn);
    let store = Store::open(&root).unwrap();
    assert!(store.list().unwrap().is_empty());
    drop(store);
    let conn = rusqlite::Connection::open(&catalog).unwrap();
    let after: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(after, current);
}
