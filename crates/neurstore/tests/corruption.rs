//! Invariant: damaged stored data is detected and reported as Corrupt, naming what is damaged; it is never served as wrong bytes and never panics.

mod common;

use common::{noise, safetensors_file};
use std::path::{Path, PathBuf};

use neurstore::{ErrorKind, NoProgress, PutOptions, Store};
use neurstore_core::dtype::DType;

struct Fixture {
    dir: tempfile::TempDir,
    root: PathBuf,
    /// Model name and its file bytes.
    models: Vec<(&'static str, Vec<u8>)>,
    /// Bytes of the "weights" tensor of model "m", stored raw (incompressible).
    weights: Vec<u8>,
}

/// A store with model "m" (a raw tensor, a compressed tensor, a small one) and model "other"
/// sharing nothing with it.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Store::init(&root).unwrap();
    let store = Store::open_writer(&root).unwrap();
    let weights = noise(1, 4096);
    // Small integers as f32: compressible, so stored with the grouped codec.
    let packed: Vec<u8> = noise(2, 16384)
        .iter()
        .flat_map(|b| f32::from(b % 4).to_le_bytes())
        .collect();
    let m = safetensors_file(
        &[
            ("weights", DType::U8, vec![64, 64], weights.clone()),
            ("packed", DType::F32, vec![16384], packed),
            ("bias", DType::F32, vec![4], noise(3, 16)),
        ],
        None,
    );
    let other = safetensors_file(&[("other", DType::I16, vec![1000], noise(4, 2000))], None);
    let mut models = Vec::new();
    for (name, bytes) in [("m", m), ("other", other)] {
        let path = dir.path().join(format!("{name}.safetensors"));
        std::fs::write(&path, &bytes).unwrap();
        store
            .put(name, &path, &PutOptions::default(), &NoProgress)
            .unwrap();
        models.push((name, bytes));
    }
    let info = store.info("m").unwrap();
    let codecs: Vec<&str> = info.tensors.iter().map(|t| t.codec).collect();
    assert_eq!(codecs, ["raw", "grouped-zstd", "raw"], "fixture layout");
    Fixture {
        dir,
        root,
        models,
        weights,
    }
}

fn pack_files(root: &Path) -> Vec<PathBuf> {
    let mut packs: Vec<PathBuf> = std::fs::read_dir(root.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    packs.sort();
    assert!(!packs.is_empty(), "no pack files");
    packs
}

fn flip(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

/// Files left in `dir` whose name starts with `prefix` (partial outputs included).
fn leftovers(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|n| n.contains(prefix))
        .collect()
}

#[test]
fn flipped_byte_in_a_tensor_is_detected_and_named() {
    let f = fixture();
    let (pack, at) = pack_files(&f.root)
        .into_iter()
        .find_map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let at = bytes.windows(64).position(|w| w == &f.weights[..64])?;
            Some((p, at))
        })
        .expect("the raw tensor's bytes are in a pack");
    flip(&pack, at + 1000);

    let store = Store::open(&f.root).unwrap();
    let out = f.dir.path().join("m-out.safetensors");
    let err = store.get("m", &out, &NoProgress).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    let msg = err.to_string();
    for needle in ["model \"m\"", "tensor \"weights\"", "checksum mismatch"] {
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
    }
    assert!(
        leftovers(f.dir.path(), "m-out").is_empty(),
        "partial output left"
    );

    let err = store.load("m").err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("tensor \"weights\""), "{err}");

    let report = store.verify(&NoProgress).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].contains("checksum mismatch"));

    // The other model is untouched.
    let out = f.dir.path().join("other.out");
    store.get("other", &out, &NoProgress).unwrap();
    assert!(std::fs::read(&out).unwrap() == f.models[1].1);
}

#[test]
fn flips_across_the_packs_are_detected_or_harmless() {
    let f = fixture();
    let mut flips = 0;
    let mut detected = 0;
    for pack in pack_files(&f.root) {
        let original = std::fs::read(&pack).unwrap();
        // An odd stride visits every position within a page over the sweep.
        for offset in (0..original.len()).step_by(509) {
            flip(&pack, offset);
            flips += 1;
            let store = Store::open(&f.root).unwrap();
            let mut failed = false;
            for (name, bytes) in &f.models {
                let out = f.dir.path().join(format!("{name}.out"));
                match store.get(name, &out, &NoProgress) {
                    Ok(_) => assert!(
                        std::fs::read(&out).unwrap() == *bytes,
                        "flip at {offset}: {name} served wrong bytes"
                    ),
                    Err(e) => {
                        assert_eq!(e.kind(), ErrorKind::Corrupt, "flip at {offset}: {e}");
                        assert!(e.to_string().contains(&format!("model \"{name}\"")), "{e}");
                        failed = true;
                    }
                }
            }
            let problems = store.verify(&NoProgress).unwrap().problems;
            // A flip in the zero gap between blobs is harmless; one in a blob is reported.
            assert_eq!(
                !problems.is_empty(),
                failed,
                "flip at {offset}: {problems:?}"
            );
            detected += usize::from(failed);
            drop(store);
            std::fs::write(&pack, &original).unwrap();
        }
    }
    assert!(detected > 0 && detected <= flips, "{detected} of {flips}");
}

#[test]
fn truncated_or_missing_pack_is_reported() {
    let f = fixture();
    let pack = pack_files(&f.root).remove(0);
    let len = std::fs::metadata(&pack).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let store = Store::open(&f.root).unwrap();
    let out = f.dir.path().join("t.out");
    let mut errors = 0;
    for (name, _) in &f.models {
        if let Err(e) = store.get(name, &out, &NoProgress) {
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
            assert!(e.to_string().contains(&format!("model \"{name}\"")), "{e}");
            errors += 1;
        }
    }
    assert!(errors > 0);
    let problems = store.verify(&NoProgress).unwrap().problems;
    assert!(
        problems.iter().any(|p| p.contains("committed")),
        "{problems:?}"
    );
    drop(store);

    std::fs::remove_file(&pack).unwrap();
    let store = Store::open(&f.root).unwrap();
    let err = store.get("m", &out, &NoProgress).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    let err = store.load("m").err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(!store.verify(&NoProgress).unwrap().problems.is_empty());
    assert!(!out.exists());
}
