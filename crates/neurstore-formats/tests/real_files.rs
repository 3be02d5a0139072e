//! Every real model file under data/formats (fetched by scripts/fetch-formats.sh) is split and
//! reassembled byte for byte, and legacy PyTorch checkpoints are refused with a conversion hint.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use neurstore_formats::{Error, Summary, skeleton};

fn data_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/formats");
    dir.is_dir().then_some(dir)
}

fn model_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(
                ext(&p).as_str(),
                "onnx" | "pth" | "pt" | "bin" | "gguf" | "safetensors"
            ) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn ext(p: &Path) -> String {
    p.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

#[test]
fn real_files_round_trip_byte_for_byte() {
    let Some(dir) = data_dir() else {
        println!(
            "SKIPPED: data/formats is missing; run scripts/fetch-formats.sh to test real files"
        );
        return;
    };
    let mut by_format = std::collections::BTreeMap::<String, usize>::new();
    for path in model_files(&dir) {
        let file = std::fs::read(&path).unwrap();
        let name = path.strip_prefix(&dir).unwrap().display().to_string();
        let parsed = match neurstore_formats::parse(&file, Some(&ext(&path))) {
            Ok(p) => p,
            Err(Error::Refused { reason, .. }) if reason.contains("legacy") => {
                println!("{name}: refused as legacy PyTorch");
                *by_format
                    .entry("legacy PyTorch (refused)".into())
                    .or_default() += 1;
                continue;
            }
            Err(e) => panic!("{name}: {e}"),
        };
        let c = &parsed.container;
        let sk = c.skeleton_bytes(&file).unwrap();
        let parts: Vec<&[u8]> = c
            .tensors
            .iter()
            .map(|t| &file[t.start as usize..t.end as usize])
            .collect();
        let back = skeleton::reassemble_to_vec(&sk, &parts).unwrap();
        assert!(back == file, "{name}: reassembly differs");
        assert_eq!(&skeleton::decode(&sk).unwrap().layout, c);
        assert!(
            !c.tensors.is_empty() || !parsed.external.is_empty(),
            "{name}: no tensors found"
        );
        let tensor_bytes: u64 = c.tensors.iter().map(|t| t.byte_len()).sum();
        println!(
            "{name}: {} ({} tensor ranges, {} model tensors) tensors {:.2}% of {} bytes, skeleton {} bytes",
            c.format.name(),
            c.tensors.len(),
            c.logical_tensors().len(),
            100.0 * tensor_bytes as f64 / file.len() as f64,
            file.len(),
            sk.len()
        );
        if let Summary::Onnx(info) = &parsed.summary {
            println!(
                "  opsets {:?}, {} inputs, {} outputs, {} op types",
                info.opsets,
                info.inputs.len(),
                info.outputs.len(),
                info.op_counts.len()
            );
        }
        *by_format.entry(c.format.name().into()).or_default() += 1;
    }
    println!("files per format: {by_format:?}");
}

/// The same weights as safetensors and as ONNX export share their tensor bytes.
#[test]
fn silero_vad_onnx_and_safetensors_share_tensors() {
    let Some(dir) = data_dir() else {
        println!("SKIPPED: data/formats is missing; run scripts/fetch-formats.sh");
        return;
    };
    let base = dir.join("silero-vad/silero_vad/data");
    let st = std::fs::read(base.join("silero_vad_16k.safetensors")).unwrap();
    let c = neurstore_formats::safetensors::parse(&st).unwrap();
    let keys: HashSet<Vec<u8>> = c
        .tensors
        .iter()
        .map(|t| st[t.start as usize..t.end as usize].to_vec())
        .collect();
    let total: u64 = c.tensors.iter().map(|t| t.byte_len()).sum();
    for name in ["silero_vad_16k_op15.onnx", "silero_vad.onnx"] {
        let file = std::fs::read(base.join(name)).unwrap();
        let m = neurstore_formats::onnx::parse(&file).unwrap();
        let shared: u64 = m
            .container
            .tensors
            .iter()
            .filter(|t| keys.contains(&file[t.start as usize..t.end as usize]))
            .map(|t| t.byte_len())
            .sum();
        println!(
            "{name}: {shared} of the safetensors file's {total} tensor bytes found as identical tensors"
        );
    }
}

/// The same weights written as safetensors and converted to a PyTorch zip are the same tensor
/// bytes: stored once by exact dedup.
#[test]
fn safetensors_and_converted_pytorch_share_every_tensor() {
    let Some(dir) = data_dir() else {
        println!("SKIPPED: data/formats is missing; run scripts/fetch-formats.sh");
        return;
    };
    let st =
        std::fs::read(dir.join("silero-vad/silero_vad/data/silero_vad_16k.safetensors")).unwrap();
    let c = neurstore_formats::safetensors::parse(&st).unwrap();
    let plan = neurstore_formats::convert::plan(&c, neurstore_formats::convert::Target::PyTorch);
    let mut pt = Vec::new();
    plan.write(&mut pt, &mut |t| {
        let r = &c.tensors[t.source.tensor];
        Ok(std::borrow::Cow::Borrowed(
            &st[r.start as usize..r.end as usize],
        ))
    })
    .unwrap();
    let (back, _) = neurstore_formats::pytorch::parse(&pt).unwrap();
    let keys = |file: &[u8], c: &neurstore_formats::Container| -> HashSet<(String, Vec<u8>)> {
        c.tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    file[t.start as usize..t.end as usize].to_vec(),
                )
            })
            .collect()
    };
    assert_eq!(keys(&st, &c), keys(&pt, &back));
    let tensor_bytes: u64 = back.tensors.iter().map(|t| t.byte_len()).sum();
    println!(
        "safetensors -> .pt: {} tensors identical; the .pt adds a {}-byte skeleton",
        back.tensors.len(),
        pt.len() as u64 - tensor_bytes
    );
}

/// Views torch itself wrote (tied, transposed, sliced, a column, a scalar, several dtypes) come
/// out of a checkpoint exactly as torch made them contiguous.
#[test]
fn torch_written_views_materialize_as_torch_does() {
    let Some(dir) = data_dir()
        .map(|d| d.join("torch-written"))
        .filter(|d| d.is_dir())
    else {
        println!("SKIPPED: data/formats/torch-written is missing (needs a Python with torch)");
        return;
    };
    let pt = std::fs::read(dir.join("views.pt")).unwrap();
    let (c, info) = neurstore_formats::pytorch::parse(&pt).unwrap();
    let expected = std::fs::read(dir.join("views_expected.safetensors")).unwrap();
    let e = neurstore_formats::safetensors::parse(&expected).unwrap();
    assert_eq!(c.views.len(), e.tensors.len());
    for want in &e.tensors {
        let v = c
            .views
            .iter()
            .find(|v| v.name == want.name)
            .unwrap_or_else(|| panic!("{} missing", want.name));
        assert_eq!(
            (v.element, &v.shape),
            (want.element, &want.shape),
            "{}",
            want.name
        );
        let r = &c.tensors[v.tensor];
        let got =
            neurstore_formats::container::materialize(v, &pt[r.start as usize..r.end as usize])
                .unwrap();
        assert_eq!(
            &*got,
            &expected[want.start as usize..want.end as usize],
            "{}",
            want.name
        );
    }
    assert_eq!(info.non_tensor_values, 1, "the epoch counter");
    assert!(info.aliases >= 1 && info.non_contiguous >= 2, "{info:?}");
    println!("views.pt: {info:?}\n  notes {:?}", c.notes);
}

/// One model as safetensors, pytorch_model.bin and ONNX (all written by torch): after the first,
/// the other two add only their skeletons, under 1% of the model each, because every tensor is
/// byte-identical across the three.
#[test]
fn same_weights_in_three_formats_are_stored_once() {
    let Some(dir) = data_dir()
        .map(|d| d.join("torch-written/mlp"))
        .filter(|d| d.is_dir())
    else {
        println!("SKIPPED: data/formats/torch-written/mlp is missing (needs a Python with torch)");
        return;
    };
    let mut stored: HashSet<Vec<u8>> = HashSet::new();
    for (i, name) in ["model.safetensors", "pytorch_model.bin", "model.onnx"]
        .iter()
        .enumerate()
    {
        let file = std::fs::read(dir.join(name)).unwrap();
        let c = neurstore_formats::parse(&file, Some(&ext(Path::new(name))))
            .unwrap()
            .container;
        let mut added = c.skeleton_bytes(&file).unwrap().len() as u64;
        for t in &c.tensors {
            if stored.insert(file[t.start as usize..t.end as usize].to_vec()) {
                added += t.byte_len();
            }
        }
        let share = 100.0 * added as f64 / file.len() as f64;
        println!(
            "{name}: {} tensors, adds {added} bytes ({share:.3}% of {})",
            c.tensors.len(),
            file.len()
        );
        if i > 0 {
            assert!(share <= 1.0, "{name} adds {share:.3}%");
        }
    }
}

/// An ONNX model in the external-data layout (written by the onnx package): the model lists its
/// tensors, the data file splits into exactly the weights of the same model's safetensors file,
/// and both files reassemble byte for byte.
#[test]
fn onnx_external_data_splits_into_the_same_tensors() {
    let Some(dir) = data_dir()
        .map(|d| d.join("onnx-external"))
        .filter(|d| d.is_dir())
    else {
        println!("SKIPPED: data/formats/onnx-external is missing (needs python3-onnx and torch)");
        return;
    };
    let model = std::fs::read(dir.join("model.onnx")).unwrap();
    let parsed = neurstore_formats::parse(&model, Some("onnx")).unwrap();
    assert!(!parsed.external.is_empty());
    let location = parsed.external[0].location.clone();
    assert!(parsed.external.iter().all(|e| e.location == location));
    let data = std::fs::read(dir.join(&location)).unwrap();
    let refs: Vec<&neurstore_formats::onnx::ExternalRef> = parsed.external.iter().collect();
    let c = neurstore_formats::onnx::external_container(data.len() as u64, &refs).unwrap();
    for (file, c) in [(&model, &parsed.container), (&data, &c)] {
        let sk = c.skeleton_bytes(file).unwrap();
        let parts: Vec<&[u8]> = c
            .tensors
            .iter()
            .map(|t| &file[t.start as usize..t.end as usize])
            .collect();
        assert!(skeleton::reassemble_to_vec(&sk, &parts).unwrap() == *file);
    }
    let st = std::fs::read(
        data_dir()
            .unwrap()
            .join("torch-written/mlp/model.safetensors"),
    )
    .unwrap();
    let sc = neurstore_formats::safetensors::parse(&st).unwrap();
    let weights: HashSet<&[u8]> = sc
        .tensors
        .iter()
        .map(|t| &st[t.start as usize..t.end as usize])
        .collect();
    let shared = c
        .tensors
        .iter()
        .filter(|t| weights.contains(&data[t.start as usize..t.end as usize]))
        .count();
    assert_eq!(
        shared,
        c.tensors.len(),
        "every external tensor is a weight of the safetensors file"
    );
    println!(
        "{location}: {} external tensors, all identical to the safetensors weights; skeleton of the data file {} bytes",
        c.tensors.len(),
        c.skeleton_len()
    );
}
