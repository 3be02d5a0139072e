//! Invariant: every model put into the store comes back byte for byte as it went in, whatever its dtypes, shapes, values, header layout or directory layout.

mod common;

use common::{Tensor, noise, raw_file, safetensors_file};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use neurstore::{NoProgress, PutOptions, Store};
use neurstore_core::dtype::{ALL_DTYPES, DType, element_count};
use proptest::prelude::*;

fn byte_len(dtype: DType, shape: &[u64]) -> usize {
    let n = element_count(shape).expect("small shape");
    dtype.byte_len(n).expect("shape fills whole bytes") as usize
}

struct TestStore {
    dir: tempfile::TempDir,
    root: PathBuf,
    store: Store,
}

fn new_store() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Store::init(&root).unwrap();
    let store = Store::open_writer(&root).unwrap();
    TestStore { dir, root, store }
}

impl TestStore {
    /// Writes `bytes` as `file_name`, puts it as `name`, gets it back and checks the bytes.
    fn round_trip_file(&self, name: &str, file_name: &str, bytes: &[u8]) {
        let input = self.dir.path().join(file_name);
        std::fs::write(&input, bytes).unwrap();
        self.store
            .put(name, &input, &PutOptions::default(), &NoProgress)
            .unwrap_or_else(|e| panic!("put {name}: {e}"));
        let output = self.dir.path().join(format!("{file_name}.out"));
        let report = self.store.get(name, &output, &NoProgress).unwrap();
        let back = std::fs::read(&output).unwrap();
        assert!(
            back == bytes,
            "{name}: the file did not come back byte-identical"
        );
        assert_eq!(report.bytes_written, bytes.len() as u64, "{name}");
        // The same bytes in memory, and a limit below the file's length refused.
        let in_memory = self.store.get_bytes(name, u64::MAX, &NoProgress).unwrap();
        assert!(
            in_memory == bytes,
            "{name}: get_bytes differs from the file"
        );
        if !bytes.is_empty() {
            let short = bytes.len() as u64 - 1;
            let err = self.store.get_bytes(name, short, &NoProgress).unwrap_err();
            assert_eq!(
                err.kind(),
                neurstore::ErrorKind::InvalidInput,
                "{name}: {err}"
            );
        }
    }

    /// Checks `load` gives exactly `tensors` (by file and name).
    fn check_load(&self, name: &str, expected: &HashMap<(String, String), &Tensor>) {
        let loaded = self.store.load(name).unwrap();
        assert_eq!(loaded.len(), expected.len(), "{name}: tensor count");
        for t in &loaded {
            let want = expected
                .get(&(t.file.clone(), t.name.clone()))
                .unwrap_or_else(|| panic!("{name}: unexpected tensor {}/{}", t.file, t.name));
            assert_eq!(t.dtype, want.1, "{name}/{}", t.name);
            assert_eq!(t.shape, want.2, "{name}/{}", t.name);
            assert!(&*t.data == want.3.as_slice(), "{name}/{}: bytes", t.name);
        }
    }
}

/// Tensors of one dtype: vector, matrix, empty ones, a scalar where the dtype allows one, and a
/// larger compressible one (so the lossless codec is used, not only raw storage).
fn tensors_of(dtype: DType, seed: u64) -> Vec<Tensor> {
    let mut shapes: Vec<(&str, Vec<u64>)> = vec![
        ("vec", vec![24]),
        ("matrix", vec![3, 8]),
        ("empty", vec![0]),
        ("empty2d", vec![4, 0, 2]),
        ("big", vec![64, 64]),
    ];
    if dtype.bits().is_multiple_of(8) {
        shapes.push(("scalar", vec![]));
    }
    shapes
        .into_iter()
        .enumerate()
        .map(|(i, (n, shape))| {
            let len = byte_len(dtype, &shape);
            let data = if n == "big" {
                // Low-entropy bytes: the codec will find something to save.
                noise(seed + i as u64, len)
                    .iter()
                    .map(|b| b & 0x3)
                    .collect()
            } else {
                noise(seed + i as u64, len)
            };
            (
                format!("{}.{n}", dtype.as_str().to_lowercase()),
                dtype,
                shape,
                data,
            )
        })
        .collect()
}

#[test]
fn every_dtype_round_trips() {
    let s = new_store();
    let mut all = Vec::new();
    for (i, dtype) in ALL_DTYPES.into_iter().enumerate() {
        let tensors = tensors_of(dtype, 100 * i as u64);
        let bytes = safetensors_file(&tensors, None);
        let name = format!("dtype-{dtype}");
        s.round_trip_file(&name, &format!("{dtype}.safetensors"), &bytes);
        let expected = tensors
            .iter()
            .map(|t| ((format!("{dtype}.safetensors"), t.0.clone()), t))
            .collect();
        s.check_load(&name, &expected);
        all.extend(tensors);
    }
    // Every dtype in one file; all its tensors are already stored, so only the header is new.
    let bytes = safetensors_file(&all, None);
    s.round_trip_file("all-dtypes", "all.safetensors", &bytes);
    let info = s.store.info("all-dtypes").unwrap();
    assert_eq!(info.tensors.len(), all.len());
    assert!(s.store.verify(&NoProgress).unwrap().problems.is_empty());
}

#[test]
fn headers_come_back_verbatim() {
    let s = new_store();
    let data: Vec<u8> = [1.0f32, -2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .chain(7i64.to_le_bytes())
        .collect();
    // Metadata first, fields in an unusual order, newlines, tabs, an escaped name, and trailing
    // spaces padding the header.
    let header = "{\n  \"__metadata__\" : { \"format\": \"pt\", \"z\": \"last\", \"a\": \"first\" },\n\t\"zeta\" : { \"data_offsets\" : [0, 8], \"shape\" : [2], \"dtype\" : \"F32\" },\n  \"caf\\u00e9\":{\"shape\":[],\"dtype\":\"I64\",\"data_offsets\":[8,16]}\n}        ";
    s.round_trip_file("spaced", "spaced.safetensors", &raw_file(header, &data));
    let loaded = s.store.load("spaced").unwrap();
    let names: Vec<&str> = loaded.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["zeta", "café"]);

    // Keys in reverse of their offset order, metadata last.
    let header = r#"{"b":{"dtype":"I64","shape":[],"data_offsets":[8,16]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"k":"v"}}"#;
    s.round_trip_file("reversed", "reversed.safetensors", &raw_file(header, &data));

    // Canonical header with metadata.
    let metadata = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            "note".to_string(),
            "\"quoted\" \\ and \u{1F600}".to_string(),
        ),
    ]);
    let tensors = tensors_of(DType::BF16, 7);
    s.round_trip_file(
        "with-metadata",
        "meta.safetensors",
        &safetensors_file(&tensors, Some(&metadata)),
    );

    // No tensors at all, with and without metadata.
    s.round_trip_file("empty", "empty.safetensors", &raw_file("{}      ", &[]));
    s.round_trip_file(
        "metadata-only",
        "meta-only.safetensors",
        &raw_file(r#"{"__metadata__":{"a":"b"}}"#, &[]),
    );
    assert!(s.store.load("empty").unwrap().is_empty());
    assert!(s.store.verify(&NoProgress).unwrap().problems.is_empty());
}

/// Every file under `root`, by '/'-separated relative path.
fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_str().unwrap();
                out.insert(rel.replace('\\', "/"), std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn model_directory_round_trips() {
    let s = new_store();
    let model = s.dir.path().join("hf-model");
    let write = |rel: &str, bytes: &[u8]| {
        let path = model.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    };
    let config = br#"{"architectures":["BertModel"],"hidden_size":32,"num_hidden_layers":2}"#;
    write("config.json", config);
    write(
        "1_Pooling/config.json",
        br#"{"word_embedding_dimension":32}"#,
    );
    write("nested/deeper/same_config.json", config); // a duplicate file within the model
    write("generation_config.json", b"{}\n");
    write("added_tokens.json", b""); // an empty file
    let vocab: String = (0..2000).map(|i| format!("\"tok{i}\":{i},")).collect();
    write(
        "tokenizer.json",
        format!("{{\"model\":{{\"vocab\":{{{vocab}\"end\":0}}}}}}").as_bytes(),
    );
    write("tokenizer_config.json", br#"{"do_lower_case":true}"#);
    write("special_tokens_map.json", br#"{"cls_token":"[CLS]"}"#);
    write("vocab.txt", b"[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n");

    let shard1: Vec<Tensor> = vec![
        (
            "embeddings.weight".into(),
            DType::F32,
            vec![64, 32],
            noise(1, 64 * 32 * 4),
        ),
        (
            "layer.0.weight".into(),
            DType::BF16,
            vec![32, 32],
            noise(2, 32 * 32 * 2),
        ),
        ("layer.0.bias".into(), DType::BF16, vec![32], noise(3, 64)),
    ];
    let shard2: Vec<Tensor> = vec![
        (
            "layer.1.weight".into(),
            DType::F16,
            vec![32, 32],
            noise(4, 32 * 32 * 2),
        ),
        ("layer.1.bias".into(), DType::F16, vec![32], noise(5, 64)),
        (
            "position_ids".into(),
            DType::I64,
            vec![1, 16],
            noise(6, 16 * 8),
        ),
    ];
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    write(names[0], &safetensors_file(&shard1, None));
    write(names[1], &safetensors_file(&shard2, None));
    let weight_map: serde_json::Map<String, serde_json::Value> = shard1
        .iter()
        .map(|t| (t.0.clone(), names[0].into()))
        .chain(shard2.iter().map(|t| (t.0.clone(), names[1].into())))
        .collect();
    let index = serde_json::json!({"metadata": {"total_size": 12345}, "weight_map": weight_map});
    write(
        "model.safetensors.index.json",
        serde_json::to_string_pretty(&index).unwrap().as_bytes(),
    );

    let report = s
        .store
        .put("hf", &model, &PutOptions::default(), &NoProgress)
        .unwrap();
    assert_eq!(report.tensors, 6);
    assert_eq!(report.files, 12);
    let out = s.dir.path().join("restored");
    let got = s.store.get("hf", &out, &NoProgress).unwrap();
    assert_eq!(got.files, 12);
    let original = read_tree(&model);
    let restored = read_tree(&out);
    assert_eq!(
        original.keys().collect::<Vec<_>>(),
        restored.keys().collect::<Vec<_>>()
    );
    for (path, bytes) in &original {
        assert!(restored[path] == *bytes, "{path} differs");
    }

    let expected = shard1
        .iter()
        .map(|t| ((names[0].to_string(), t.0.clone()), t))
        .chain(
            shard2
                .iter()
                .map(|t| ((names[1].to_string(), t.0.clone()), t)),
        )
        .collect();
    s.check_load("hf", &expected);

    // A second get into an existing empty directory works too.
    let empty = s.dir.path().join("empty-out");
    std::fs::create_dir(&empty).unwrap();
    s.store.get("hf", &empty, &NoProgress).unwrap();
    assert_eq!(read_tree(&empty), original);

    // Readers opened afresh see the same model.
    let reader = Store::open(&s.root).unwrap();
    let out2 = s.dir.path().join("restored-by-reader");
    reader.get("hf", &out2, &NoProgress).unwrap();
    assert_eq!(read_tree(&out2), original);

    // A directory is not one file: get_bytes refuses it.
    let err = reader.get_bytes("hf", u64::MAX, &NoProgress).unwrap_err();
    assert_eq!(err.kind(), neurstore::ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("directory"), "{err}");
}

// Float bit patterns that lossless storage must keep: NaNs with payloads and signs, infinities,
// subnormals, negative zero, and a few ordinary values that repeat (so the codec compresses).
const F16_SPECIAL: [u64; 11] = [
    0x7e00, 0x7c01, 0xfe01, 0x7c00, 0xfc00, 0x0001, 0x83ff, 0x8000, 0x3c00, 0xc100, 0x0000,
];
const BF16_SPECIAL: [u64; 11] = [
    0x7fc0, 0x7f81, 0xffc1, 0x7f80, 0xff80, 0x0001, 0x807f, 0x8000, 0x3f80, 0xc020, 0x0000,
];
const F32_SPECIAL: [u64; 11] = [
    0x7fc0_0000,
    0x7f80_0001,
    0xffc0_0001,
    0x7f80_0000,
    0xff80_0000,
    0x0000_0001,
    0x807f_ffff,
    0x8000_0000,
    0x3f80_0000,
    0xc020_0000,
    0x0000_0000,
];
const F64_SPECIAL: [u64; 11] = [
    0x7ff8_0000_0000_0000,
    0x7ff0_0000_0000_0001,
    0xfff8_0000_0000_0001,
    0x7ff0_0000_0000_0000,
    0xfff0_0000_0000_0000,
    0x0000_0000_0000_0001,
    0x800f_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    0x3ff0_0000_0000_0000,
    0xc004_0000_0000_0000,
    0x0000_0000_0000_0000,
];

/// Width in bytes of the values filled in, and the special patterns for that width.
fn value_layout(dtype: DType) -> (usize, &'static [u64]) {
    match dtype {
        DType::F16 => (2, &F16_SPECIAL),
        DType::BF16 => (2, &BF16_SPECIAL),
        DType::F32 | DType::C64 => (4, &F32_SPECIAL),
        DType::F64 => (8, &F64_SPECIAL),
        _ => (1, &[]),
    }
}

/// Raw bytes for a tensor: each value a special pattern (selector below the table length) or
/// random bits.
fn fill(dtype: DType, len: usize, values: &[(u8, u64)]) -> Vec<u8> {
    let (width, special) = value_layout(dtype);
    let mut out = Vec::with_capacity(len);
    for &(sel, random) in values.iter().cycle().take(len / width) {
        let bits = special.get(sel as usize).copied().unwrap_or(random);
        out.extend_from_slice(&bits.to_le_bytes()[..width]);
    }
    out
}

fn tensor_strategy() -> impl Strategy<Value = (DType, Vec<u64>, Vec<u8>)> {
    let shape = prop_oneof![
        4 => prop::collection::vec(0u64..5, 0..4),
        1 => (16u64..2048).prop_map(|n| vec![n]),
    ];
    (
        prop::sample::select(ALL_DTYPES.to_vec()),
        shape,
        prop::collection::vec((0u8..16, any::<u64>()), 1..64),
    )
        .prop_map(|(dtype, mut shape, values)| {
            let n = element_count(&shape).unwrap();
            if dtype.byte_len(n).is_none() {
                shape.push(4); // sub-byte types: 4 elements of 4 or 6 bits fill whole bytes
            }
            let len = byte_len(dtype, &shape);
            (dtype, shape, fill(dtype, len, &values))
        })
}

#[test]
fn empty_tensors_at_the_end_round_trip() {
    // An empty blob appended last must not push the pack's committed length past its end.
    let s = new_store();
    let data = noise(9, 8);
    let header = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"e":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}}"#;
    s.round_trip_file("empty-last", "a.safetensors", &raw_file(header, &data));
    let header = r#"{"z":{"dtype":"U8","shape":[0,3],"data_offsets":[0,0]}}"#;
    s.round_trip_file("only-empty", "b.safetensors", &raw_file(header, &[]));
    let tensors = tensors_of(DType::F64, 3);
    s.round_trip_file("after", "c.safetensors", &safetensors_file(&tensors, None));
    assert!(s.store.verify(&NoProgress).unwrap().problems.is_empty());
    let reopened = Store::open(&s.root).unwrap();
    assert!(reopened.verify(&NoProgress).unwrap().problems.is_empty());
    let loaded = reopened.load("empty-last").unwrap();
    let sizes: Vec<(&str, usize)> = loaded
        .iter()
        .map(|t| (t.name.as_str(), t.data.len()))
        .collect();
    assert_eq!(sizes, [("w", 8), ("e", 0)]);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_models_round_trip(
        tensors in prop::collection::vec(tensor_strategy(), 0..6),
        with_metadata in any::<bool>(),
    ) {
        let s = new_store();
        let tensors: Vec<Tensor> = tensors
            .into_iter()
            .enumerate()
            .map(|(i, (d, shape, data))| (format!("t{i}"), d, shape, data))
            .collect();
        let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = safetensors_file(&tensors, with_metadata.then_some(&metadata));
        s.round_trip_file("m", "m.safetensors", &bytes);
        let expected = tensors
            .iter()
            .map(|t| (("m.safetensors".to_string(), t.0.clone()), t))
            .collect();
        s.check_load("m", &expected);
        prop_assert!(s.store.verify(&NoProgress).unwrap().problems.is_empty());
    }
}
