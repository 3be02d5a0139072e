//! A model converted to the PyTorch zip format loads with `torch.load(path, weights_only=True)`
//! and gives back exactly the source tensors (dtype, shape and bytes), including non-contiguous
//! views made contiguous. Skipped, saying so, when no Python with torch is found.

use std::borrow::Cow;
use std::process::Command;

use neurstore_core::dtype::DType;
use neurstore_formats::container::materialize;
use neurstore_formats::convert::{self, Target};
use neurstore_formats::pytorch::{pickle_writer, zip};

const PYTHON: &str = "/usr/bin/python3";

fn torch_available() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import torch"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn torch_dtype(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::I64 => "int64",
        DType::U8 => "uint8",
        DType::Bool => "bool",
        _ => "other",
    }
}

/// Converts `file` to a .pt in a temp dir, loads it in torch and compares every tensor.
fn convert_and_load(file: &[u8], ext: &str) -> usize {
    let parsed = neurstore_formats::parse(file, Some(ext)).unwrap();
    let c = &parsed.container;
    let plan = convert::plan(c, Target::PyTorch);
    plan.check(false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("model.pt");
    let mut out = Vec::new();
    plan.write(&mut out, &mut |t| {
        let r = &c.tensors[t.source.tensor];
        Ok(Cow::Owned(
            materialize(&t.source, &file[r.start as usize..r.end as usize])?.into_owned(),
        ))
    })
    .unwrap();
    std::fs::write(&out_path, &out).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/check_torch_load.py"
    );
    let o = Command::new(PYTHON)
        .arg(script)
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "torch.load failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines: Vec<String> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), plan.tensors.len());
    for (t, line) in plan.tensors.iter().zip(&lines) {
        let r = &c.tensors[t.source.tensor];
        let bytes = materialize(&t.source, &file[r.start as usize..r.end as usize]).unwrap();
        let want = format!(
            "{}\t{}\t{:?}\t{}",
            t.name,
            torch_dtype(t.dtype),
            t.shape,
            crc32fast::hash(&bytes)
        );
        assert_eq!(
            line.replace(", ", ","),
            want.replace(", ", ","),
            "tensor {}",
            t.name
        );
    }
    lines.len()
}

#[test]
fn converted_checkpoints_load_in_torch_with_weights_only() {
    if !torch_available() {
        println!("SKIPPED: {PYTHON} cannot import torch (Debian: apt-get install python3-torch)");
        return;
    }
    // A synthetic checkpoint with a transposed view and a tied pair, in three dtypes.
    let floats: Vec<u8> = (0..6)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let halves: Vec<u8> = (0..4u16).flat_map(|i| (0x3c00 + i).to_le_bytes()).collect();
    let longs: Vec<u8> = [7i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
    let e = |name: &str, dtype, storage: &str, numel, size: Vec<u64>, stride: Vec<u64>| {
        pickle_writer::Entry {
            name: name.into(),
            dtype,
            storage: storage.into(),
            storage_numel: numel,
            offset: 0,
            size,
            stride,
        }
    };
    let pkl = pickle_writer::state_dict(&[
        e("w", DType::F32, "0", 6, vec![2, 3], vec![3, 1]),
        e("w_t", DType::F32, "0", 6, vec![3, 2], vec![1, 3]),
        e("h", DType::F16, "1", 4, vec![4], vec![1]),
        e("n", DType::I64, "2", 2, vec![2], vec![1]),
    ]);
    let file = zip::write_archive(&[
        ("archive/data.pkl", &pkl),
        ("archive/data/0", &floats),
        ("archive/data/1", &halves),
        ("archive/data/2", &longs),
        ("archive/version", b"3\n"),
    ]);
    assert_eq!(convert_and_load(&file, "pt"), 4);
    // Real files, when fetched: safetensors and ONNX to PyTorch.
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/formats/silero-vad/silero_vad/data");
    if data.is_dir() {
        let st = std::fs::read(data.join("silero_vad_16k.safetensors")).unwrap();
        println!(
            "silero_vad_16k.safetensors -> .pt: {} tensors loaded",
            convert_and_load(&st, "safetensors")
        );
    } else {
        println!("real files SKIPPED: run scripts/fetch-formats.sh");
    }
}
