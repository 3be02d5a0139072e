//! `neurstore embed` is format-blind: a BERT model stored from a PyTorch checkpoint or from ONNX
//! (tensors read by name) embeds exactly as the same model stored from safetensors; `get`
//! converts by the output's extension or `--format`, and refuses a lossy conversion unless
//! `--force`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use common::bert::write_model;

fn ns(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_neurstore"))
        .env_remove("NEURSTORE_DIR")
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .unwrap()
}

fn ok(store: &Path, args: &[&str]) -> Output {
    let out = ns(store, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn embedding(store: &Path, name: &str) -> Value {
    let out = ok(
        store,
        &[
            "embed",
            name,
            "--json",
            "--dense",
            "--text",
            "Hello world.",
            "--text",
            "the models store",
        ],
    );
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["embeddings"].clone()
}

/// The model directory `from` with its weights replaced by `weights` (a file name and bytes).
fn beside(from: &Path, to: &Path, weights: (&str, &[u8])) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
    std::fs::write(to.join(weights.0), weights.1).unwrap();
}

/// The safetensors file's tensors as ONNX initializers around a one-node graph.
fn onnx_from_safetensors(file: &[u8]) -> Vec<u8> {
    use neurstore_formats::onnx::sample;
    let header = neurstore_core::safetensors::parse(file).unwrap();
    let at = header.data_start as usize;
    let initializers: Vec<Vec<u8>> = header
        .tensors
        .iter()
        .map(|t| {
            let bytes = &file[at + t.start as usize..at + t.end as usize];
            sample::tensor_raw(&t.name, 1, &t.shape, bytes)
        })
        .collect();
    sample::model(
        &[sample::node("Identity", &["x"], &["y"], &[])],
        &initializers,
        &[sample::value_info("x", 1, &[1])],
        &[sample::value_info("y", 1, &[1])],
    )
}

#[test]
fn bert_embeds_alike_from_safetensors_pytorch_and_onnx() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let bert = dir.path().join("bert");
    write_model(&bert, true);
    ok(&store, &["init"]);
    ok(&store, &["put", "st", bert.to_str().unwrap()]);

    // A PyTorch checkpoint of the same weights, by the output's extension.
    let bin = dir.path().join("weights.bin");
    ok(&store, &["get", "st", "-o", bin.to_str().unwrap()]);
    let bin_dir = dir.path().join("bert-bin");
    beside(
        &bert,
        &bin_dir,
        ("pytorch_model.bin", &std::fs::read(&bin).unwrap()),
    );
    ok(&store, &["put", "bin", bin_dir.to_str().unwrap()]);

    let st_file = std::fs::read(bert.join("model.safetensors")).unwrap();
    let onnx_dir = dir.path().join("bert-onnx");
    beside(
        &bert,
        &onnx_dir,
        ("model.onnx", &onnx_from_safetensors(&st_file)),
    );
    ok(&store, &["put", "onnx", onnx_dir.to_str().unwrap()]);

    let want = embedding(&store, "st");
    assert_eq!(want.as_array().unwrap().len(), 2);
    assert_eq!(embedding(&store, "bin"), want);
    assert_eq!(embedding(&store, "onnx"), want);

    // The ONNX model converts to safetensors only when forced (its graph is lost); the result
    // holds the very bytes of the original file's tensors.
    let out = dir.path().join("back.safetensors");
    let refused = ns(&store, &["get", "onnx", "-o", out.to_str().unwrap()]);
    assert!(!refused.status.success());
    let msg = String::from_utf8_lossy(&refused.stderr);
    assert!(msg.contains("lose information"), "{msg}");
    assert!(!out.exists());
    ok(
        &store,
        &[
            "get",
            "onnx",
            "-o",
            out.to_str().unwrap(),
            "--format",
            "safetensors",
            "--force",
        ],
    );
    let back = std::fs::read(&out).unwrap();
    let (a, b) = (
        neurstore_core::safetensors::parse(&back).unwrap(),
        neurstore_core::safetensors::parse(&st_file).unwrap(),
    );
    assert_eq!(a.tensors.len(), b.tensors.len());
    assert_eq!(
        back[a.data_start as usize..],
        st_file[b.data_start as usize..]
    );

    // info shows the ONNX graph.
    let info = String::from_utf8(ok(&store, &["info", "onnx"]).stdout).unwrap();
    assert!(info.contains("opsets: ai.onnx 17"), "{info}");
    assert!(info.contains("operators (1 nodes): Identity 1"), "{info}");
}
