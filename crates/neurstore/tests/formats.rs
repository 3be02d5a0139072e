//! Models in every format go in and come back: ONNX, PyTorch zip checkpoints and GGUF files
//! are stored as tensors plus a skeleton, written back byte for byte, converted on request,
//! deduplicated against the same weights in another format; a hostile pickle is refused before
//! anything is written and never runs.

use std::path::Path;

use neurstore::{
    DType, ErrorKind, GetOptions, NoProgress, OutputFormat, PutOptions, Store, TensorInput,
};
use neurstore_formats::onnx::sample;
use neurstore_formats::pytorch::zip;

fn store(dir: &Path) -> Store {
    let root = dir.join("store");
    Store::init(&root).unwrap();
    Store::open_writer(&root).unwrap()
}

/// Deterministic float weights (a simple generator: no two tensors alike).
fn weights(seed: u32, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            ((x as f32 / u32::MAX as f32 - 0.5) * 0.2).to_le_bytes()
        })
        .collect()
}

/// A small model: (name, shape, F32 bytes), in file order.
fn model_tensors() -> Vec<(String, Vec<u64>, Vec<u8>)> {
    let shapes: [(&str, &[u64]); 4] = [
        ("encoder.weight", &[256, 128]),
        ("encoder.bias", &[256]),
        ("decoder.weight", &[64, 256]),
        ("decoder.bias", &[64]),
    ];
    shapes
        .iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n = shape.iter().product::<u64>() as usize;
            (name.to_string(), shape.to_vec(), weights(i as u32 + 7, n))
        })
        .collect()
}

fn onnx_of(tensors: &[(String, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let initializers: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(name, shape, bytes)| sample::tensor_raw(name, 1, shape, bytes))
        .collect();
    sample::model(
        &[
            sample::node(
                "Gemm",
                &["x", "encoder.weight", "encoder.bias"],
                &["h"],
                &[],
            ),
            sample::node("Relu", &["h"], &["r"], &[]),
            sample::node(
                "Gemm",
                &["r", "decoder.weight", "decoder.bias"],
                &["y"],
                &[],
            ),
        ],
        &initializers,
        &[sample::value_info("x", 1, &[1, 128])],
        &[sample::value_info("y", 1, &[1, 64])],
    )
}

fn put_file(store: &Store, name: &str, path: &Path) -> neurstore::PutReport {
    store
        .put(name, path, &PutOptions::default(), &NoProgress)
        .unwrap_or_else(|e| panic!("put {}: {e}", path.display()))
}

fn tensors_by_name(store: &Store, name: &str) -> Vec<(String, DType, Vec<u64>, Vec<u8>)> {
    let mut out: Vec<_> = store
        .load(name)
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.dtype, t.shape, t.data.to_vec()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn the_same_weights_in_three_formats_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let tensors = model_tensors();
    let inputs: Vec<TensorInput> = tensors
        .iter()
        .map(|(name, shape, data)| TensorInput {
            name,
            dtype: DType::F32,
            shape,
            data,
        })
        .collect();
    let first = store
        .put_tensors("st", &inputs, None, &PutOptions::default(), &NoProgress)
        .unwrap();

    // The same weights as a PyTorch checkpoint (written by the store's converter) and ONNX.
    let bin = dir.path().join("pytorch_model.bin");
    let options = GetOptions {
        format: Some(OutputFormat::PyTorch),
        force: false,
    };
    store.get_with("st", &bin, &options, &NoProgress).unwrap();
    let onnx = dir.path().join("model.onnx");
    std::fs::write(&onnx, onnx_of(&tensors)).unwrap();

    let as_bin = put_file(&store, "bin", &bin);
    let as_onnx = put_file(&store, "onnx", &onnx);
    for (report, path) in [(&as_bin, &bin), (&as_onnx, &onnx)] {
        assert_eq!(report.tensors, 4);
        let file_len = std::fs::metadata(path).unwrap().len();
        assert!(
            report.stored_bytes_added * 100 <= file_len,
            "{}: {} bytes added for a {file_len}-byte model",
            path.display(),
            report.stored_bytes_added
        );
    }
    assert!(first.stored_bytes_added > 0);
    assert_eq!(store.stats().unwrap().unique_tensors, 4);

    // Byte for byte back, and the same tensors by name.
    for (name, path) in [("bin", &bin), ("onnx", &onnx)] {
        let out = dir.path().join(format!("out-{name}"));
        store.get(name, &out, &NoProgress).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(path).unwrap());
        assert_eq!(tensors_by_name(&store, name), tensors_by_name(&store, "st"));
    }
    assert!(store.verify(&NoProgress).unwrap().problems.is_empty());

    // The ONNX graph is shown, from the skeleton.
    let info = store.info("onnx").unwrap();
    assert_eq!(info.source_format, "onnx");
    let file = &info.files[0];
    assert_eq!(file.kind, "onnx");
    let graph = file.format.as_ref().unwrap().graph.as_ref().unwrap();
    assert_eq!(graph.inputs[0].name, "x");
    assert_eq!(graph.outputs[0].dims, vec!["1", "64"]);
    assert_eq!(graph.operators.get("Gemm"), Some(&2));
    assert_eq!(graph.opsets, vec![("ai.onnx".to_string(), 17)]);
    assert_eq!(store.info("bin").unwrap().files[0].kind, "pytorch");

    // A directory holding the model twice (safetensors and .bin, as many repositories do)
    // converts without loss: each name is written once, from the one stored tensor.
    let both = dir.path().join("both");
    std::fs::create_dir(&both).unwrap();
    store
        .get("st", &both.join("model.safetensors"), &NoProgress)
        .unwrap();
    std::fs::copy(&bin, both.join("pytorch_model.bin")).unwrap();
    put_file(&store, "both", &both);
    let pt = dir.path().join("both.pt");
    let report = store
        .get_with("both", &pt, &GetOptions::default(), &NoProgress)
        .unwrap();
    assert_eq!(report.converted_to, Some("PyTorch"));
    assert!(report.losses.is_empty(), "{:?}", report.losses);
    assert_eq!(std::fs::read(&pt).unwrap(), std::fs::read(&bin).unwrap());
}

#[test]
fn conversions_keep_the_tensors_and_refuse_losses_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let tensors = model_tensors();
    let onnx = dir.path().join("model.onnx");
    std::fs::write(&onnx, onnx_of(&tensors)).unwrap();
    put_file(&store, "onnx", &onnx);

    // The graph would be lost: refused, nothing written.
    let out = dir.path().join("out.safetensors");
    let err = store
        .get_with("onnx", &out, &GetOptions::default(), &NoProgress)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("lose information"), "{err}");
    assert!(!out.exists());

    let forced = GetOptions {
        format: None,
        force: true,
    };
    let report = store.get_with("onnx", &out, &forced, &NoProgress).unwrap();
    assert_eq!(report.converted_to, Some("safetensors"));
    assert!(!report.losses.is_empty());
    let file = std::fs::read(&out).unwrap();
    let header = neurstore_core::safetensors::parse(&file).unwrap();
    assert_eq!(header.tensors.len(), tensors.len());
    for ((name, shape, bytes), t) in tensors.iter().zip(&header.tensors) {
        assert_eq!((&t.name, &t.shape), (name, shape));
        let at = header.data_start as usize;
        assert_eq!(
            &file[at + t.start as usize..at + t.end as usize],
            &bytes[..]
        );
    }

    // Back in as safetensors: every tensor deduplicated.
    let again = put_file(&store, "back", &out);
    assert_eq!(again.tensors, 4);
    assert!(again.tensor_reports.iter().all(|t| t.deduplicated));

    // A single safetensors model asked for as safetensors is written as stored.
    let copy = dir.path().join("copy.safetensors");
    let report = store
        .get_with("back", &copy, &GetOptions::default(), &NoProgress)
        .unwrap();
    assert_eq!(report.converted_to, None);
    assert_eq!(std::fs::read(&copy).unwrap(), file);
}

/// A `torch.save`-style zip whose pickle calls `module.system(command)` when unpickled.
fn evil_checkpoint(module: &str, command: &str) -> Vec<u8> {
    let mut pickle = vec![0x80, 2]; // PROTO 2
    pickle.push(b'c'); // GLOBAL module\nname\n
    pickle.extend_from_slice(format!("{module}\nsystem\n").as_bytes());
    pickle.push(b'X'); // BINUNICODE
    pickle.extend_from_slice(&(command.len() as u32).to_le_bytes());
    pickle.extend_from_slice(command.as_bytes());
    pickle.push(0x85); // TUPLE1
    pickle.push(b'R'); // REDUCE: module.system(command)
    pickle.push(b'.'); // STOP
    zip::write_archive(&[("archive/data.pkl", &pickle), ("archive/version", b"3\n")])
}

#[test]
fn a_pickle_that_would_run_a_command_fails_the_put_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    put_file(&store, "fine", &{
        let p = dir.path().join("fine.onnx");
        std::fs::write(&p, onnx_of(&model_tensors())).unwrap();
        p
    });
    let before = store.stats().unwrap();
    let marker = dir.path().join("marker");
    let command = format!("touch {}", marker.display());
    for module in ["posix", "os", "subprocess", "nt"] {
        let evil = evil_checkpoint(module, &command);
        // Alone, and inside a model directory beside harmless files.
        let file = dir.path().join(format!("{module}.pt"));
        std::fs::write(&file, &evil).unwrap();
        let model_dir = dir.path().join(format!("dir-{module}"));
        std::fs::create_dir(&model_dir).unwrap();
        std::fs::write(model_dir.join("config.json"), b"{}").unwrap();
        std::fs::write(model_dir.join("pytorch_model.bin"), &evil).unwrap();
        for path in [&file, &model_dir] {
            let err = store
                .put("evil", path, &PutOptions::default(), &NoProgress)
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("global {module}.system is not allowed")),
                "{msg}"
            );
            assert!(!marker.exists(), "the pickle's command ran");
        }
    }
    let after = store.stats().unwrap();
    assert_eq!(after.models, 1);
    assert_eq!(after.pack_bytes, before.pack_bytes, "a refused put wrote");
}

#[test]
fn a_legacy_checkpoint_is_refused_with_the_way_to_convert_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let legacy = dir.path().join("old.pth");
    // Pre-1.6 torch.save: a bare pickle stream (magic number first).
    std::fs::write(&legacy, b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.").unwrap();
    let err = store
        .put("old", &legacy, &PutOptions::default(), &NoProgress)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("torch.save"), "{err}");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn gguf_and_onnx_external_data_round_trip_in_directories() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let tensors = model_tensors();
    // ONNX with its weights in model.onnx.data, one file beside a tokenizer and a GGUF.
    let mut data = Vec::new();
    let mut initializers = Vec::new();
    for (name, shape, bytes) in &tensors {
        initializers.push(sample::tensor_external(
            name,
            1,
            shape,
            "model.onnx.data",
            data.len() as u64,
            bytes.len() as u64,
        ));
        data.extend_from_slice(bytes);
        data.extend_from_slice(&[0; 12]); // padding between tensors stays skeleton
    }
    let graph = sample::model(
        &[sample::node("Relu", &["x"], &["y"], &[])],
        &initializers,
        &[sample::value_info("x", 1, &[4])],
        &[sample::value_info("y", 1, &[4])],
    );
    std::fs::write(model.join("model.onnx"), &graph).unwrap();
    std::fs::write(model.join("model.onnx.data"), &data).unwrap();
    std::fs::write(model.join("tokenizer.json"), b"{\"version\":\"1.0\"}").unwrap();
    let q8_block = [0u8; 34]; // one Q8_0 block: f16 scale and 32 int8
    let gguf = neurstore_formats::gguf::build::gguf(&[
        ("f", 0, vec![8], &weights(1, 8)),
        ("q", 8, vec![32], &q8_block),
    ]);
    std::fs::write(model.join("model.gguf"), &gguf).unwrap();

    let report = put_file(&store, "dir", &model);
    assert_eq!(report.tensors, 4 + 2);
    let out = dir.path().join("out");
    store.get("dir", &out, &NoProgress).unwrap();
    for file in [
        "model.onnx",
        "model.onnx.data",
        "tokenizer.json",
        "model.gguf",
    ] {
        assert_eq!(
            std::fs::read(out.join(file)).unwrap(),
            std::fs::read(model.join(file)).unwrap(),
            "{file}"
        );
    }
    assert_eq!(store.model_file("dir", "model.gguf").unwrap(), Some(gguf));
    let info = store.info("dir").unwrap();
    let kinds: Vec<(&str, &str)> = info
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("model.gguf", "gguf"),
            ("model.onnx", "onnx"),
            ("model.onnx.data", "onnx-data"),
            ("tokenizer.json", "plain"),
        ]
    );

    // A location leaving the directory is refused.
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let escaping = sample::model(
        &[],
        &[sample::tensor_external("w", 1, &[2], "../secret", 0, 8)],
        &[],
        &[],
    );
    std::fs::write(bad.join("model.onnx"), &escaping).unwrap();
    let err = store
        .put("bad", &bad, &PutOptions::default(), &NoProgress)
        .unwrap_err();
    assert!(
        err.to_string().contains("leaves the model's directory"),
        "{err}"
    );
}
