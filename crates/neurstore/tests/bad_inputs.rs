//! Invariant: a bad input is refused with a clear error naming the input and the problem, and leaves the store exactly as it was.

use std::path::{Path, PathBuf};

use neurstore::{Error, ErrorKind, NoProgress, PutOptions, Store};

/// A safetensors file: 8-byte little-endian header length, header, data.
fn file(header: &str, data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend(std::iter::repeat_n(0x5au8, data_len));
    out
}

/// Everything about the store a failed put must not change.
#[derive(Debug, PartialEq)]
struct Snapshot {
    models: Vec<(String, i64, String, u64)>,
    pack_bytes: u64,
    unique_tensors: u64,
    tensors: u64,
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
    good: Vec<u8>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Store::init(&root).unwrap();
    let store = Store::open_writer(&root).unwrap();
    let good = file(
        r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
        8,
    );
    let path = dir.path().join("good.safetensors");
    std::fs::write(&path, &good).unwrap();
    store
        .put("good", &path, &PutOptions::default(), &NoProgress)
        .unwrap();
    Fixture { dir, store, good }
}

impl Fixture {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn snapshot(&self) -> Snapshot {
        let stats = self.store.stats().unwrap();
        Snapshot {
            models: self
                .store
                .list()
                .unwrap()
                .into_iter()
                .map(|m| (m.name, m.created_unix, m.source_format, m.raw_bytes))
                .collect(),
            pack_bytes: stats.pack_bytes,
            unique_tensors: stats.unique_tensors,
            tensors: stats.tensors,
        }
    }

    /// Puts `path` as `name`, expects an error of `kind` whose message holds every needle, and
    /// checks the store did not change and stays usable.
    fn refuse(&self, name: &str, path: &Path, kind: ErrorKind, needles: &[&str]) -> Error {
        let before = self.snapshot();
        let err = match self
            .store
            .put(name, path, &PutOptions::default(), &NoProgress)
        {
            Ok(r) => panic!("{} was accepted as {name:?}: {r:?}", path.display()),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert_eq!(err.kind(), kind, "{msg}");
        for needle in needles {
            assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
        }
        assert_eq!(self.snapshot(), before, "after {msg}");
        let report = self.store.verify(&NoProgress).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let out = self.path("good.out");
        self.store.get("good", &out, &NoProgress).unwrap();
        assert!(std::fs::read(&out).unwrap() == self.good);
        err
    }

    /// A safetensors file that must be refused, its message naming the file and the problem.
    fn refuse_file(&self, rel: &str, bytes: &[u8], problem: &str) {
        let path = self.write(rel, bytes);
        let shown = path.display().to_string();
        self.refuse("new", &path, ErrorKind::InvalidInput, &[&shown, problem]);
    }
}

#[test]
fn malformed_safetensors_files_are_refused() {
    let f = fixture();
    let f32x2 = |start: u64, end: u64| {
        format!(r#"{{"dtype":"F32","shape":[2],"data_offsets":[{start},{end}]}}"#)
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "duplicate.safetensors",
            file(
                &format!(r#"{{"a":{},"a":{}}}"#, f32x2(0, 8), f32x2(8, 16)),
                16,
            ),
            "duplicate key \"a\"",
        ),
        (
            "overlap.safetensors",
            file(
                &format!(r#"{{"a":{},"b":{}}}"#, f32x2(0, 8), f32x2(4, 12)),
                12,
            ),
            "overlap",
        ),
        (
            "out-of-range.safetensors",
            file(&format!(r#"{{"a":{}}}"#, f32x2(0, 80)), 8),
            "run past the 8-byte data buffer",
        ),
        (
            "backwards.safetensors",
            file(&format!(r#"{{"a":{}}}"#, f32x2(8, 0)), 8),
            "run backwards",
        ),
        (
            "size-mismatch.safetensors",
            file(
                r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                8,
            ),
            "needs 12 bytes",
        ),
        (
            "shape-overflow.safetensors",
            file(
                r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}"#,
                8,
            ),
            "overflows",
        ),
        (
            "negative-dim.safetensors",
            file(
                r#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#,
                8,
            ),
            "non-negative",
        ),
        (
            "split-byte.safetensors",
            file(
                r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#,
                2,
            ),
            "do not fill whole bytes",
        ),
        (
            "huge-header.safetensors",
            {
                let mut b = (1u64 << 63).to_le_bytes().to_vec();
                b.extend_from_slice(b"{}");
                b
            },
            "exceeds the limit",
        ),
        (
            "header-past-end.safetensors",
            {
                let mut b = 1000u64.to_le_bytes().to_vec();
                b.extend_from_slice(b"{}");
                b
            },
            "runs past the end",
        ),
        (
            "not-json.safetensors",
            file(r#"{"a": nope}"#, 0),
            "header is not valid",
        ),
        (
            "not-utf8.safetensors",
            {
                let mut b = 4u64.to_le_bytes().to_vec();
                b.extend_from_slice(&[b'{', 0xff, 0xfe, b'}']);
                b
            },
            "header is not valid",
        ),
        ("array.safetensors", file("[1,2]", 0), "must start with '{'"),
        (
            "string.safetensors",
            file(r#""hello""#, 0),
            "must start with '{'",
        ),
        (
            "entry-not-object.safetensors",
            file(r#"{"a":5}"#, 0),
            "entry must be an object",
        ),
        (
            "bad-metadata.safetensors",
            file(r#"{"__metadata__":{"k":1}}"#, 0),
            "must be a string",
        ),
        (
            "unknown-dtype.safetensors",
            file(
                r#"{"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}"#,
                8,
            ),
            "unknown dtype \"F33\"",
        ),
        (
            "extra-field.safetensors",
            file(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}"#,
                8,
            ),
            "unexpected field",
        ),
        (
            "trailing.safetensors",
            file(&format!(r#"{{"a":{}}}"#, f32x2(0, 8)), 12),
            "4 trailing bytes",
        ),
        (
            "hole.safetensors",
            file(
                &format!(r#"{{"a":{},"b":{}}}"#, f32x2(0, 8), f32x2(12, 20)),
                20,
            ),
            "bytes 8..12 of the data buffer belong to no tensor",
        ),
        (
            "leading-hole.safetensors",
            file(&format!(r#"{{"a":{}}}"#, f32x2(4, 12)), 12),
            "bytes 0..4",
        ),
        ("short.safetensors", vec![1, 2, 3], "3 bytes, too short"),
        ("empty.safetensors", vec![], "0 bytes, too short"),
    ];
    for (rel, bytes, problem) in &cases {
        f.refuse_file(rel, bytes, problem);
    }
}

#[test]
fn bad_model_directories_are_refused() {
    let f = fixture();
    let shard = file(
        r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}}"#,
        12,
    );

    // No model file at all (a .bin that is no checkpoint is a plain file).
    f.write("no-weights/config.json", b"{}");
    f.write("no-weights/pytorch_model.bin", b"not weights");
    let dir = f.path("no-weights");
    f.refuse(
        "new",
        &dir,
        ErrorKind::InvalidInput,
        &[&dir.display().to_string(), "no model file"],
    );

    // A bad shard inside an otherwise fine directory names the shard.
    f.write("bad-shard/config.json", b"{}");
    f.write("bad-shard/model.safetensors", &file("[]", 0));
    let shard_path = f.path("bad-shard/model.safetensors");
    f.refuse(
        "new",
        &f.path("bad-shard"),
        ErrorKind::InvalidInput,
        &[&shard_path.display().to_string(), "must start with '{'"],
    );

    // Index files that disagree with the shards.
    let index_cases = [
        (
            r#"{"weight_map":{"w":"model-00002.safetensors"}}"#,
            "maps \"w\" to \"model-00002.safetensors\", which is not in the directory",
        ),
        (
            r#"{"weight_map":{"w":"model-00001.safetensors","v":"model-00001.safetensors"}}"#,
            "maps \"v\" to \"model-00001.safetensors\", which has no such tensor",
        ),
        (
            r#"{"weight_map":{"w":"model-00001.safetensors"}}"#,
            "does not map tensor \"b\" of model-00001.safetensors",
        ),
        (r#"{"metadata":{}}"#, "has no \"weight_map\" object"),
        (r#"{"weight_map":{"w":7}}"#, "is not a string"),
        ("{not json", "not valid JSON"),
    ];
    for (i, (index, problem)) in index_cases.iter().enumerate() {
        let rel = format!("indexed-{i}");
        f.write(&format!("{rel}/model-00001.safetensors"), &shard);
        let index_path = f.write(
            &format!("{rel}/model.safetensors.index.json"),
            index.as_bytes(),
        );
        f.refuse(
            "new",
            &f.path(&rel),
            ErrorKind::InvalidInput,
            &[&index_path.display().to_string(), problem],
        );
    }
}

#[test]
fn bad_names_and_paths_are_refused() {
    let f = fixture();
    let good = f.path("good.safetensors");
    let long = "x".repeat(201);
    for name in [
        "",
        "a/b",
        "/",
        "tab\there",
        " padded",
        "padded ",
        long.as_str(),
    ] {
        let err = f.refuse(
            name,
            &good,
            ErrorKind::InvalidInput,
            &["invalid model name"],
        );
        assert!(matches!(err, Error::InvalidName(_)), "{name:?}: {err}");
    }
    // A name of 200 characters, unicode included, is fine (and is removed again).
    let ok = "é".repeat(200);
    f.store
        .put(&ok, &good, &PutOptions::default(), &NoProgress)
        .unwrap();
    f.store.remove(&ok).unwrap();

    f.refuse(
        "good",
        &good,
        ErrorKind::InvalidInput,
        &["\"good\"", "already exists"],
    );
    let missing = f.path("does-not-exist.safetensors");
    f.refuse(
        "new",
        &missing,
        ErrorKind::NotFound,
        &[&missing.display().to_string()],
    );
}

#[test]
fn unknown_models_and_missing_stores_are_not_found() {
    let f = fixture();
    let out = f.path("out.safetensors");
    let before = f.snapshot();
    for err in [
        f.store.get("nope", &out, &NoProgress).err().unwrap(),
        f.store.load("nope").err().unwrap(),
        f.store.info("nope").err().unwrap(),
        f.store.remove("nope").err().unwrap(),
    ] {
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("\"nope\""), "{err}");
    }
    assert!(!out.exists());
    assert_eq!(f.snapshot(), before);
    // A refused remove does not latch the writer: it still writes.
    f.store
        .put(
            "another",
            &f.path("good.safetensors"),
            &PutOptions::default(),
            &NoProgress,
        )
        .unwrap();

    let empty = f.path("empty-dir");
    std::fs::create_dir(&empty).unwrap();
    for path in [empty.clone(), f.path("absent"), f.path("good.safetensors")] {
        for err in [
            Store::open(&path).err().unwrap(),
            Store::open_writer(&path).err().unwrap(),
        ] {
            assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
            let msg = err.to_string();
            assert!(msg.contains("no NeurStore store"), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
    }
    // Opening a non-store created nothing in it.
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    assert!(!f.path("absent").exists());

    // init refuses a directory that holds anything.
    let err = Store::init(&f.path("store")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[test]
fn second_writer_is_locked() {
    let f = fixture();
    let root = f.path("store");
    let err = Store::open_writer(&root).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Locked, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    // Readers are not locked out.
    let reader = Store::open(&root).unwrap();
    assert_eq!(reader.list().unwrap().len(), 1);
    // Once the writer is gone, the next one gets in.
    drop(f.store);
    Store::open_writer(&root).unwrap();
}
