//! Invariant: a model stored as deltas stays readable, exactly or within its bound, through the removal of its base model, gc, and a lost, damaged or stale similarity index; a damaged base makes it fail as Corrupt, never come back wrong.

mod family;

use family::{
    Fixture, assert_loaded, bounded, family, fine_tune, flip, is_delta, is_float, lossless, options,
};
use neurstore::{BaseChoice, ErrorKind, Mode, NoProgress, Store};
use neurstore_storage::index::TensorIndex;
use neurstore_storage::record::RecordHeader;

const ABS: Mode = Mode::Absolute(1e-3);

#[test]
fn removing_bases_keeps_fine_tunes_readable_through_gc() {
    let f = Fixture::new();
    let base = family(70);
    let ft1 = fine_tune(&base, 71, 0.01);
    let ft2 = fine_tune(&base, 72, 0.01);
    let ft3 = fine_tune(&ft1, 73, 0.01);
    f.put("base", &base, &lossless());
    // Paired by name, so tensors too small to be searched for a base are deltas too.
    let on_base = |mode| options(mode, BaseChoice::Model("base".into()));
    f.put("ft1", &ft1, &on_base(Mode::Lossless));
    f.put("ft2", &ft2, &on_base(ABS));
    // A chain: ft3's deltas sit on ft1's, which sit on base's.
    let r3 = f.put("ft3", &ft3, &options(ABS, BaseChoice::Model("ft1".into())));
    assert!(r3.delta_tensors > 0);
    let models = [
        ("ft1", &ft1, Mode::Lossless),
        ("ft2", &ft2, ABS),
        ("ft3", &ft3, ABS),
    ];
    let check = |f: &Fixture, live: &[&str]| {
        for (name, tensors, mode) in models.iter().filter(|m| live.contains(&m.0)) {
            f.assert_model(name, tensors, *mode);
            f.assert_model_fresh(name, tensors, *mode);
        }
        f.assert_clean();
    };

    // Every float tensor of base is still a delta base: removing base frees nothing.
    let removed = f.store.remove("base").unwrap();
    assert_eq!(removed.objects_freed, 0);
    assert_eq!(f.model_names(), ["ft1", "ft2", "ft3"]);
    check(&f, &["ft1", "ft2", "ft3"]);
    f.store.gc(&NoProgress).unwrap();
    check(&f, &["ft1", "ft2", "ft3"]);
    for t in ft1.iter().filter(|t| is_float(t.dtype)) {
        let info = f.store.info("ft1").unwrap();
        let ti = info.tensors.iter().find(|i| i.name == t.name).unwrap();
        assert_eq!(ti.codec, "delta", "{ti:?}");
    }

    // The middle of the chain goes too.
    f.store.remove("ft1").unwrap();
    check(&f, &["ft2", "ft3"]);
    f.store.gc(&NoProgress).unwrap();
    check(&f, &["ft2", "ft3"]);

    // A fresh handle after gc (no cached bases) reads the same.
    let f = f.reopen();
    check(&f, &["ft2", "ft3"]);

    f.store.remove("ft3").unwrap();
    f.store.gc(&NoProgress).unwrap();
    check(&f, &["ft2"]);
    f.store.remove("ft2").unwrap();
    let gc = f.store.gc(&NoProgress).unwrap();
    // What stays is the tombstones of the removals (a catalog rebuilt from the packs must not
    // bring the removed models back) in one pack.
    assert!(gc.pack_bytes_after < 1024, "{gc:?}");
    assert_eq!(f.pack_files_len(), gc.pack_bytes_after);
    let stats = f.store.stats().unwrap();
    assert_eq!(stats.models, 0);
    assert_eq!(stats.unique_tensors, 0);
    assert_eq!(stats.pack_bytes, gc.pack_bytes_after);
    assert_eq!(stats.live_object_bytes, 0);
    let objects: u64 = stats.by_kind.values().map(|k| k.objects).sum();
    assert_eq!(objects, 0, "{:?}", stats.by_kind);
    assert!(f.model_names().is_empty());
    f.assert_clean();
}

#[test]
fn a_missing_or_damaged_index_is_rebuilt() {
    for damage in ["delete", "flip", "truncate"] {
        let f = Fixture::new();
        let base = family(80);
        f.put("base", &base, &lossless());
        f.put("ft1", &fine_tune(&base, 81, 0.01), &lossless());
        let index = f.index_file();
        let good = std::fs::read(&index).expect("the index is persisted after a search");
        assert!(TensorIndex::decode(&good).is_ok());
        match damage {
            "delete" => std::fs::remove_file(&index).unwrap(),
            "flip" => flip(&index, good.len() / 2),
            _ => std::fs::write(&index, &good[..good.len() / 2]).unwrap(),
        }
        let damaged = std::fs::read(&index).ok();

        let f = f.reopen();
        let ft2 = fine_tune(&base, 82, 0.01);
        let report = f.put("ft2", &ft2, &lossless());
        assert!(report.delta_tensors > 0, "{damage}: {report:?}");
        assert!(report.tensors_searched > 0, "{damage}");
        for t in report.tensor_reports.iter().filter(|t| t.codec == "delta") {
            let base = t.base.as_deref().unwrap();
            assert!(base.ends_with(&format!("/{}", t.name)), "{damage}: {t:?}");
        }
        let rewritten = std::fs::read(&index).expect("the index is written again");
        assert_ne!(Some(&rewritten), damaged.as_ref(), "{damage}");
        let decoded = TensorIndex::decode(&rewritten).expect("a valid index file");
        assert!(!decoded.is_empty(), "{damage}");
        f.assert_model("ft2", &ft2, Mode::Lossless);
        f.assert_model_fresh("ft2", &ft2, Mode::Lossless);
    }
}

#[test]
fn a_stale_index_is_brought_up_to_date() {
    for removal in [false, true] {
        let f = Fixture::new();
        let base = family(85);
        let ft1 = fine_tune(&base, 86, 0.01);
        f.put("base", &base, &lossless());
        f.put("ft1", &ft1, &lossless());
        // Persisted by ft1's search: it knows base's tensors, not ft1's.
        let stale = std::fs::read(f.index_file()).unwrap();
        f.put("other", &family(87), &lossless());
        if removal {
            f.store.remove("other").unwrap();
        }
        std::fs::write(f.index_file(), &stale).unwrap();

        // A fine-tune of ft1 must find ft1's tensors, which only the catalog knows.
        let f = f.reopen();
        let ft1b = fine_tune(&ft1, 88, 0.01);
        let report = f.put("ft1b", &ft1b, &lossless());
        for t in ft1b.iter().filter(|t| is_float(t.dtype)) {
            let r = report
                .tensor_reports
                .iter()
                .find(|r| r.name == t.name)
                .unwrap();
            if r.codec == "delta" {
                assert_eq!(r.base, Some(format!("ft1/{}", t.name)), "{r:?}");
            }
        }
        assert!(is_delta(&f.store, "ft1b", "layers.0.weight"));
        let info = f.store.info("ft1b").unwrap();
        assert_eq!(info.base_model.as_deref(), Some("ft1"), "removal {removal}");
        f.assert_model("ft1b", &ft1b, Mode::Lossless);
    }
}

#[test]
fn a_damaged_base_fails_its_fine_tune_as_corrupt() {
    for mode in [Mode::Lossless, ABS] {
        let f = Fixture::new();
        let base = family(100);
        let ft = fine_tune(&base, 101, 0.01);
        f.put("base", &base, &bounded(mode));
        let packs = f.pack_files();
        assert_eq!(packs.len(), 1);
        let base_end = f.pack_files_len() as usize;
        // Paired by name, so tensors too small to be searched for a base are deltas too.
        f.put("ft", &ft, &options(mode, BaseChoice::Model("base".into())));
        let ft_end = f.pack_files_len() as usize;
        // ft depends on every object of base: deltas on its float tensors, the rest shared.
        let info = f.store.info("ft").unwrap();
        for (t, original) in info.tensors.iter().zip(&ft) {
            if is_float(original.dtype) {
                assert!(is_delta(&f.store, "ft", &t.name), "{mode:?}: {t:?}");
            } else {
                assert!(t.shared, "{mode:?}: {t:?}");
            }
        }

        let mut load_failures = 0;
        // Damage inside each object record of base (a byte of its header, of its payload's
        // end, or of its checksum) and of ft.
        let pack = &packs[0];
        let original = std::fs::read(pack).unwrap();
        let conn = rusqlite::Connection::open(f.root.join("catalog.db")).unwrap();
        let starts: Vec<usize> = conn
            .prepare("SELECT offset FROM objects ORDER BY offset")
            .unwrap()
            .query_map([], |r| r.get::<_, i64>(0))
            .unwrap()
            .map(|r| r.unwrap() as usize)
            .collect();
        drop(conn);
        let mut offsets = Vec::new();
        for start in starts {
            let header = RecordHeader::decode(&original[start..]).unwrap();
            let end = header.end(start as u64).unwrap() as usize;
            offsets.extend([start + 1, end - 1, end - 40]);
        }
        for offset in offsets.into_iter().filter(|&o| o < ft_end) {
            let in_base = offset < base_end;
            flip(pack, offset);
            let reader = Store::open(&f.root).unwrap();
            let out = f.dir.path().join("ft.out");
            let err = reader
                .get("ft", &out, &NoProgress)
                .expect_err(&format!("{mode:?}: flip at {offset} served ft"));
            assert_eq!(
                err.kind(),
                ErrorKind::Corrupt,
                "{mode:?} at {offset}: {err}"
            );
            assert!(err.to_string().contains("model \"ft\""), "{err}");
            // `load` reads no header, so a damaged header may leave it whole.
            match reader.load("ft") {
                Ok(loaded) => assert_loaded("ft", &loaded, &ft, mode),
                Err(err) => {
                    assert_eq!(
                        err.kind(),
                        ErrorKind::Corrupt,
                        "{mode:?} at {offset}: {err}"
                    );
                    load_failures += 1;
                }
            }
            let problems = reader.verify(&NoProgress).unwrap().problems;
            assert!(!problems.is_empty(), "{mode:?} at {offset}");
            if !in_base {
                // ft's own blobs are not base's: base still reads exactly.
                f.assert_model_with(&reader, "base", &base, mode);
            }
            drop(reader);
            std::fs::write(pack, &original).unwrap();
        }
        assert!(load_failures > 0, "{mode:?}: no flip failed load");
        f.assert_model_fresh("ft", &ft, mode);
    }
}

#[test]
fn a_removed_object_never_stands_in_for_a_new_one() {
    // Decoded bases are cached by object id; ids freed by `rm` must not name new objects.
    let f = Fixture::new();
    let a = family(110);
    let b = family(111);
    f.put("a", &a, &lossless());
    f.put("a-ft", &fine_tune(&a, 112, 0.01), &lossless());
    f.store.remove("a-ft").unwrap();
    f.store.remove("a").unwrap();
    f.store.gc(&NoProgress).unwrap();
    // Same names and shapes as a, unrelated values.
    f.put("b", &b, &lossless());
    let a_ft = fine_tune(&a, 113, 0.01);
    f.put("a-ft2", &a_ft, &lossless());
    f.assert_model("a-ft2", &a_ft, Mode::Lossless);
    f.assert_model_fresh("a-ft2", &a_ft, Mode::Lossless);
    f.assert_clean();
    let reader = Store::open(&f.root).unwrap();
    let problems = reader.verify(&NoProgress).unwrap().problems;
    assert!(problems.is_empty(), "{problems:?}");
}
