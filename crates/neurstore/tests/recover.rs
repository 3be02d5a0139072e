//! Invariant: the packs alone are enough to rebuild the catalog (every committed model comes
//! back byte for byte, removed models stay removed), and a missing, emptied or foreign catalog
//! is reported, never silently re-initialized, and never a reason to delete a pack.

mod common;

use std::path::{Path, PathBuf};

use common::{Rng, safetensors_file};
use neurstore::{ErrorKind, Mode, NoProgress, PutOptions, Store};
use neurstore_core::dtype::DType;

fn model(seed: u64, base: Option<&[f32]>) -> (Vec<f32>, Vec<u8>) {
    let mut rng = Rng::new(seed);
    let w: Vec<f32> = match base {
        Some(b) => b.iter().map(|v| v + 1e-3 * rng.normal() as f32).collect(),
        None => (0..20_000).map(|_| rng.normal() as f32).collect(),
    };
    let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
    let small: Vec<u8> = (0..64u8).collect();
    let file = safetensors_file(
        &[
            ("w".to_string(), DType::F32, vec![20_000], bytes),
            ("b".to_string(), DType::U8, vec![64], small),
        ],
        None,
    );
    (w, file)
}

fn put(store: &Store, dir: &Path, name: &str, file: &[u8], mode: Mode) {
    let path = dir.join(format!("{name}.safetensors"));
    std::fs::write(&path, file).unwrap();
    let options = PutOptions {
        mode,
        ..PutOptions::default()
    };
    store.put(name, &path, &options, &NoProgress).unwrap();
}

fn get(store: &Store, dir: &Path, name: &str) -> Vec<u8> {
    let out = dir.join(format!("out-{name}-{}.safetensors", rand_suffix()));
    store.get(name, &out, &NoProgress).unwrap();
    std::fs::read(out).unwrap()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn packs(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut v: Vec<_> = std::fs::read_dir(root.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .map(|p| {
            let len = std::fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_lost_catalog_is_rebuilt_from_the_packs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Store::init(&root).unwrap();
    let (w, base) = model(1, None);
    let (_, ft) = model(2, Some(&w));
    let (_, ft2) = model(3, Some(&w));
    let (_, gone) = model(4, None);
    {
        let store = Store::open_writer(&root).unwrap();
        put(&store, dir.path(), "base", &base, Mode::Lossless);
        put(&store, dir.path(), "ft", &ft, Mode::Lossless);
        put(&store, dir.path(), "ft-q", &ft2, Mode::Absolute(1e-4));
        put(&store, dir.path(), "gone", &gone, Mode::Lossless);
        store.remove("gone").unwrap();
        put(&store, dir.path(), "again", &base, Mode::Lossless);
    }
    let expected_q = get(&Store::open(&root).unwrap(), dir.path(), "ft-q");
    let before = packs(&root);

    // The catalog is lost: every command says so, and nothing is created or removed.
    std::fs::remove_file(root.join("catalog.db")).unwrap();
    for write in [false, true] {
        let err = if write {
            Store::open_writer(&root).err().unwrap()
        } else {
            Store::open(&root).err().unwrap()
        };
        assert!(err.to_string().contains("neurstore recover"), "{err}");
    }
    assert!(!root.join("catalog.db").exists());
    assert_eq!(packs(&root), before);

    let report = Store::recover(&root).unwrap();
    assert_eq!(report.models, 4, "{report:?}");
    assert!(report.lost_models.is_empty());
    let store = Store::open_writer(&root).unwrap();
    let names: Vec<String> = store.list().unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["again", "base", "ft", "ft-q"]);
    assert_eq!(get(&store, dir.path(), "base"), base);
    assert_eq!(get(&store, dir.path(), "again"), base);
    assert_eq!(get(&store, dir.path(), "ft"), ft);
    assert_eq!(get(&store, dir.path(), "ft-q"), expected_q);
    let verify = store.verify(&NoProgress).unwrap();
    assert!(verify.problems.is_empty(), "{:?}", verify.problems);
    // The rebuilt store takes writes, and gc reclaims the removed model's records.
    store.remove("ft").unwrap();
    store.gc(&NoProgress).unwrap();
    assert_eq!(get(&store, dir.path(), "ft-q"), expected_q);
    assert_eq!(get(&store, dir.path(), "base"), base);
    drop(store);
    // Rebuilding again after gc gives the same models.
    std::fs::remove_file(root.join("catalog.db")).unwrap();
    let report = Store::recover(&root).unwrap();
    assert_eq!(report.models, 3, "{report:?}");
    let store = Store::open(&root).unwrap();
    assert_eq!(get(&store, dir.path(), "ft-q"), expected_q);
}

#[test]
fn an_emptied_or_foreign_catalog_is_reported_and_packs_stay() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Store::init(&root).unwrap();
    let (_, file) = model(5, None);
    put(
        &Store::open_writer(&root).unwrap(),
        dir.path(),
        "m",
        &file,
        Mode::Lossless,
    );
    let before = packs(&root);
    for damage in [&b""[..], &b"not a database at all, just some bytes"[..]] {
        std::fs::write(root.join("catalog.db"), damage).unwrap();
        for _ in 0..2 {
            let err = Store::open_writer(&root).err().unwrap();
            assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
            assert!(err.to_string().contains("neurstore recover"), "{err}");
        }
        assert_eq!(packs(&root), before);
        assert_eq!(std::fs::read(root.join("catalog.db")).unwrap(), damage);
    }
    Store::recover(&root).unwrap();
    let store = Store::open(&root).unwrap();
    assert_eq!(get(&store, dir.path(), "m"), file);
}

#[test]
fn an_older_catalog_never_costs_a_newer_model() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Store::init(&root).unwrap();
    let (_, a) = model(6, None);
    let (_, b) = model(7, None);
    let (_, c) = model(8, None);
    put(
        &Store::open_writer(&root).unwrap(),
        dir.path(),
        "a",
        &a,
        Mode::Lossless,
    );
    let old = std::fs::read(root.join("catalog.db")).unwrap();
    {
        let store = Store::open_writer(&root).unwrap();
        put(&store, dir.path(), "b", &b, Mode::Lossless);
        put(&store, dir.path(), "c", &c, Mode::Lossless);
    }
    // A backup of the catalog from before b and c is restored over the current one.
    std::fs::write(root.join("catalog.db"), &old).unwrap();
    let before = packs(&root);
    let err = Store::open_writer(&root).err().unwrap();
    assert!(err.to_string().contains("neurstore recover"), "{err}");
    assert_eq!(packs(&root), before, "no pack was cut or removed");
    Store::recover(&root).unwrap();
    let store = Store::open(&root).unwrap();
    for (name, file) in [("a", &a), ("b", &b), ("c", &c)] {
        assert_eq!(&get(&store, dir.path(), name), file);
    }
}

#[test]
fn a_put_never_shares_a_blob_that_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Store::init(&root).unwrap();
    let (_, file) = model(9, None);
    put(
        &Store::open_writer(&root).unwrap(),
        dir.path(),
        "m",
        &file,
        Mode::Lossless,
    );
    // The pack loses its second half (a damaged disk, a careless copy).
    let (pack, len) = packs(&root).remove(0);
    let f = std::fs::OpenOptions::new().write(true).open(&pack).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let store = Store::open_writer(&root).unwrap();
    let path = dir.path().join("again.safetensors");
    std::fs::write(&path, &file).unwrap();
    let err = store
        .put("again", &path, &PutOptions::default(), &NoProgress)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("neurstore verify"), "{err}");
    let names: Vec<String> = store.list().unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["m"]);
    assert_eq!(packs(&root)[0].1, len / 2, "nothing was appended or cut");
}
