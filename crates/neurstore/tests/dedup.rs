//! Invariant: each distinct tensor and file is stored once, removing a model never damages another that shares its objects, and `gc` returns the dead bytes of every pack where they are worth the copy (an eighth of the pack or more, or a pack nothing lives in) and copies nothing for less.

mod common;

use common::{Tensor, noise, safetensors_file};
use std::path::{Path, PathBuf};

use neurstore::{NoProgress, PutOptions, Store, StoreOptions};
use neurstore_core::dtype::DType;

fn f32_tensor(name: &str, elements: u64, seed: u64) -> Tensor {
    (
        name.to_string(),
        DType::F32,
        vec![elements],
        noise(seed, elements as usize * 4),
    )
}

struct Fixture {
    dir: tempfile::TempDir,
    root: PathBuf,
    store: Store,
}

fn fixture(options: StoreOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Store::init(&root).unwrap();
    let store = Store::open_with(
        &root,
        StoreOptions {
            write: true,
            ..options
        },
    )
    .unwrap();
    Fixture { dir, root, store }
}

impl Fixture {
    fn write(&self, file_name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(file_name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn put(&self, name: &str, path: &Path) -> neurstore::PutReport {
        self.store
            .put(name, path, &PutOptions::default(), &NoProgress)
            .unwrap_or_else(|e| panic!("put {name}: {e}"))
    }

    fn assert_gets(&self, name: &str, expected: &[u8]) {
        let out = self.dir.path().join(format!("{name}.out"));
        self.store.get(name, &out, &NoProgress).unwrap();
        assert!(
            std::fs::read(&out).unwrap() == expected,
            "{name} did not come back byte-identical"
        );
    }

    fn assert_clean(&self) {
        let report = self.store.verify(&NoProgress).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    /// Sum of pack file (`packs/*.pack`) lengths on disk, measured without the store.
    fn pack_files_len(&self) -> u64 {
        std::fs::read_dir(self.root.join("packs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "pack"))
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    }
}

#[test]
fn same_model_twice_adds_no_pack_bytes() {
    let f = fixture(StoreOptions::default());
    let tensors: Vec<Tensor> = (0..4)
        .map(|i| f32_tensor(&format!("layer.{i}.weight"), 1024 * 1024, i))
        .collect();
    let bytes = safetensors_file(&tensors, None);
    let path = f.write("model.safetensors", &bytes);
    let first = f.put("original", &path);
    assert_eq!(first.new_objects, 5); // header + 4 tensors
    let before = f.store.stats().unwrap();

    let second = f.put("copy", &path);
    assert_eq!(second.new_objects, 0);
    assert_eq!(second.deduplicated_objects, 5);
    assert_eq!(second.stored_bytes_added, 0);
    let after = f.store.stats().unwrap();
    // Only the copy's manifest record (its names and keys, for rebuilding the catalog).
    assert!(
        after.pack_bytes - before.pack_bytes < 1024,
        "{} -> {}",
        before.pack_bytes,
        after.pack_bytes
    );
    assert_eq!(after.pack_bytes, f.pack_files_len());
    assert_eq!(after.unique_tensors, before.unique_tensors);
    assert_eq!(after.tensors, 2 * before.tensors);
    assert_eq!(after.raw_bytes, 2 * before.raw_bytes);
    let growth = after.stored_bytes - before.stored_bytes;
    assert!(
        growth * 100 < before.stored_bytes,
        "stored bytes grew by {growth} of {}",
        before.stored_bytes
    );
    assert!(
        f.store
            .info("copy")
            .unwrap()
            .tensors
            .iter()
            .all(|t| t.shared)
    );
    f.assert_gets("copy", &bytes);
    f.assert_gets("original", &bytes);
}

#[test]
fn same_tensor_under_two_names_is_stored_once() {
    let f = fixture(StoreOptions::default());
    let shared = noise(1, 4096);
    let tensors: Vec<Tensor> = vec![
        (
            "embed.weight".into(),
            DType::F32,
            vec![32, 32],
            shared.clone(),
        ),
        (
            "lm_head.weight".into(),
            DType::F32,
            vec![32, 32],
            shared.clone(),
        ),
        // Same bytes under another dtype or shape are different tensors.
        ("as_i32".into(), DType::I32, vec![32, 32], shared.clone()),
        ("reshaped".into(), DType::F32, vec![1024], shared),
    ];
    let bytes = safetensors_file(&tensors, None);
    let report = f.put("tied", &f.write("tied.safetensors", &bytes));
    assert_eq!(report.tensors, 4);
    assert_eq!(report.new_objects, 4); // header + 3 distinct tensors
    let stats = f.store.stats().unwrap();
    assert_eq!(stats.tensors, 4);
    assert_eq!(stats.unique_tensors, 3);
    let info = f.store.info("tied").unwrap();
    let shared: Vec<&str> = info
        .tensors
        .iter()
        .filter(|t| t.shared)
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(shared, ["embed.weight", "lm_head.weight"]);
    f.assert_gets("tied", &bytes);
    f.assert_clean();
}

#[test]
fn fine_tune_adds_only_changed_tensor_and_gc_reclaims_everything() {
    let f = fixture(StoreOptions::default());
    let base: Vec<Tensor> = (0..4)
        .map(|i| f32_tensor(&format!("layer.{i}.weight"), 64 * 1024, 10 + i))
        .collect();
    let mut tuned = base.clone();
    tuned[2].3 = noise(99, tuned[2].3.len());
    let changed_len = tuned[2].3.len() as u64;
    let base_bytes = safetensors_file(&base, None);
    let tuned_bytes = safetensors_file(&tuned, None);
    f.put("base", &f.write("base.safetensors", &base_bytes));
    let before = f.store.stats().unwrap();

    let report = f.put("tuned", &f.write("tuned.safetensors", &tuned_bytes));
    // Same names, dtypes and shapes: the header is shared too.
    assert_eq!(report.new_objects, 1);
    assert_eq!(report.deduplicated_objects, 4);
    assert_eq!(report.stored_bytes_added, changed_len);
    let after = f.store.stats().unwrap();
    assert_eq!(after.unique_tensors, before.unique_tensors + 1);
    let growth = after.pack_bytes - before.pack_bytes;
    assert!(
        // The record around it, its page alignment and the model's manifest record.
        (changed_len..changed_len + 4096 + 1024).contains(&growth),
        "pack grew by {growth} for one {changed_len}-byte tensor"
    );
    let info = f.store.info("tuned").unwrap();
    assert_eq!(info.exclusive_bytes, changed_len);
    assert_eq!(
        info.tensors.iter().filter(|t| !t.shared).count(),
        1,
        "only the changed tensor is unshared"
    );

    // Removing the base keeps the fine-tune whole.
    let removed = f.store.remove("base").unwrap();
    assert_eq!(removed.objects_freed, 1);
    assert!(
        f.store
            .list()
            .unwrap()
            .iter()
            .map(|m| &m.name)
            .eq(["tuned"])
    );
    f.assert_gets("tuned", &tuned_bytes);
    f.assert_clean();
    let stats = f.store.stats().unwrap();
    assert!(stats.reclaimable_bytes >= changed_len, "{stats:?}");

    // gc moves the live blobs; the fine-tune still comes back whole.
    let gc = f.store.gc(&NoProgress).unwrap();
    assert!(gc.pack_bytes_after < gc.pack_bytes_before);
    let stats = f.store.stats().unwrap();
    assert_eq!(stats.reclaimable_bytes, 0);
    assert_eq!(stats.pack_bytes, f.pack_files_len());
    f.assert_gets("tuned", &tuned_bytes);
    f.assert_clean();

    // Removing the last model leaves garbage that gc returns entirely.
    f.store.remove("tuned").unwrap();
    let stats = f.store.stats().unwrap();
    assert!(stats.reclaimable_bytes > 0);
    assert_eq!(stats.models, 0);
    assert_eq!(stats.unique_tensors, 0);
    f.store.gc(&NoProgress).unwrap();
    let stats = f.store.stats().unwrap();
    // What stays is the removals' tombstones (a catalog rebuilt from the packs must not bring
    // the models back) until their names are reused.
    assert!(stats.pack_bytes < 1024, "{}", stats.pack_bytes);
    assert_eq!(stats.reclaimable_bytes, 0);
    assert_eq!(f.pack_files_len(), stats.pack_bytes);
    f.assert_clean();

    // The store is usable afterwards, from a fresh handle too.
    drop(f.store);
    let store = Store::open_writer(&f.root).unwrap();
    let path = f.dir.path().join("base.safetensors");
    store
        .put("base-again", &path, &PutOptions::default(), &NoProgress)
        .unwrap();
    let out = f.dir.path().join("again.out");
    store.get("base-again", &out, &NoProgress).unwrap();
    assert!(std::fs::read(&out).unwrap() == base_bytes);
}

#[test]
fn gc_across_small_packs_keeps_shared_and_empty_tensors() {
    // Small packs put blobs of one model in several packs, so gc must move a shared blob, and
    // an empty tensor shared by two models can be the only live blob of a pack.
    let f = fixture(StoreOptions {
        max_pack_len: Some(8192),
        ..Default::default()
    });
    let empty: Tensor = ("empty".into(), DType::F32, vec![0], vec![]);
    let shared = f32_tensor("shared", 1000, 5);
    let a = safetensors_file(
        &[empty.clone(), f32_tensor("a", 1500, 1), shared.clone()],
        None,
    );
    let b = safetensors_file(
        &[
            ("nothing".into(), DType::F32, vec![0], vec![]),
            f32_tensor("b", 1500, 2),
            shared,
        ],
        None,
    );
    f.put("a", &f.write("a.safetensors", &a));
    f.put("b", &f.write("b.safetensors", &b));
    assert_eq!(f.store.stats().unwrap().unique_tensors, 4);
    f.store.remove("a").unwrap();
    f.store.gc(&NoProgress).unwrap();
    assert_eq!(f.store.stats().unwrap().reclaimable_bytes, 0);
    f.assert_gets("b", &b);
    f.assert_clean();
    f.store.remove("b").unwrap();
    f.store.gc(&NoProgress).unwrap();
    assert_eq!(f.store.stats().unwrap().reclaimable_bytes, 0);
    f.assert_clean();
}

#[test]
fn gc_copies_a_pack_only_when_the_bytes_it_returns_are_worth_the_copy() {
    let f = fixture(StoreOptions::default());
    let tensors: Vec<Tensor> = (0..4)
        .map(|i| f32_tensor(&format!("layer.{i}.weight"), 64 * 1024, 20 + i))
        .collect();
    let bytes = safetensors_file(&tensors, None);
    let path = f.write("model.safetensors", &bytes);
    f.put("a", &path);
    f.put("b", &path);
    let before = f.store.stats().unwrap();

    // Removing a leaves only its manifest record dead (b uses every object): not worth
    // copying the megabyte b still uses.
    f.store.remove("a").unwrap();
    let gc = f.store.gc(&NoProgress).unwrap();
    assert_eq!(
        (gc.bytes_moved, gc.packs_rewritten, gc.packs_removed),
        (0, 0, 0),
        "{gc:?}"
    );
    let stats = f.store.stats().unwrap();
    assert!(stats.pack_bytes >= before.pack_bytes, "{stats:?}");
    assert_eq!(stats.reclaimable_bytes, 0, "{stats:?}");
    f.assert_gets("b", &bytes);
    f.assert_clean();

    // A model sharing half its tensors, then b removed: half of the pack's tensors are dead,
    // worth the copy of the other half.
    let mut half = tensors[..2].to_vec();
    half.extend((2..4).map(|i| f32_tensor(&format!("layer.{i}.weight"), 64 * 1024, 40 + i)));
    let half_bytes = safetensors_file(&half, None);
    f.put("c", &f.write("c.safetensors", &half_bytes));
    f.store.remove("b").unwrap();
    let gc = f.store.gc(&NoProgress).unwrap();
    assert_eq!(gc.packs_removed, 1, "{gc:?}");
    let moved_tensors = 4 * 64 * 1024 * 4;
    assert!(
        (moved_tensors..moved_tensors + 16 * 1024).contains(&gc.bytes_moved),
        "{gc:?}"
    );
    assert_eq!(f.store.stats().unwrap().reclaimable_bytes, 0);
    f.assert_gets("c", &half_bytes);
    f.assert_clean();

    // Removing the last model leaves no live object: the pack goes, its tombstones copied.
    f.store.remove("c").unwrap();
    let gc = f.store.gc(&NoProgress).unwrap();
    assert_eq!(gc.packs_removed, 1, "{gc:?}");
    assert!(gc.bytes_moved < 1024, "{gc:?}");
    assert!(f.pack_files_len() < 1024, "{}", f.pack_files_len());
    f.assert_clean();
}
