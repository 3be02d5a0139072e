//! Real model files (fetched by scripts/fetch-formats.sh into data/formats; skipped when absent)
//! go through the store and come back byte for byte: every ONNX, PyTorch zip, GGUF and
//! safetensors file alone, the model directories (a sharded `pytorch_model.bin` with its index,
//! ONNX with external data) whole; legacy checkpoints are refused; the same MLP put as
//! safetensors, then `.bin`, then `.onnx` adds at most 1% the second and third time; a PyTorch
//! checkpoint of views loads as torch makes them contiguous.

use std::path::{Path, PathBuf};

use neurstore::{NoProgress, PutOptions, Store};

fn data_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/formats");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("SKIPPED: data/formats is missing; run scripts/fetch-formats.sh");
        None
    }
}

fn store(dir: &Path) -> Store {
    let root = dir.join("store");
    Store::init(&root).unwrap();
    Store::open_writer(&root).unwrap()
}

fn model_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            if p.is_dir() {
                stack.push(p);
            } else if ["onnx", "pth", "pt", "bin", "gguf", "safetensors"].contains(&ext) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn same_files(a: &Path, b: &Path) {
    for e in std::fs::read_dir(a).unwrap() {
        let p = e.unwrap().path();
        let q = b.join(p.file_name().unwrap());
        if p.is_dir() {
            same_files(&p, &q);
        } else {
            let same = std::fs::read(&p).unwrap() == std::fs::read(&q).unwrap();
            assert!(same, "{} differs from {}", q.display(), p.display());
        }
    }
}

#[test]
fn every_real_file_round_trips_through_the_store() {
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let (mut stored, mut refused) = (0, 0);
    for (i, path) in model_files(&data).into_iter().enumerate() {
        let name = format!("m{i}");
        let shown = path.strip_prefix(&data).unwrap().display().to_string();
        match store.put(&name, &path, &PutOptions::default(), &NoProgress) {
            Ok(_) => {}
            Err(e) if e.to_string().contains("legacy") => {
                println!("{shown}: refused: {e}");
                refused += 1;
                continue;
            }
            // An ONNX file whose weights are in a data file beside it: put as a directory below.
            Err(e) if e.to_string().contains("external data files") => continue,
            Err(e) => panic!("{shown}: {e}"),
        }
        let out = dir.path().join(format!("out-{i}"));
        store.get(&name, &out, &NoProgress).unwrap();
        let same = std::fs::read(&out).unwrap() == std::fs::read(&path).unwrap();
        assert!(same, "{shown} changed on its way through the store");
        std::fs::remove_file(&out).unwrap();
        stored += 1;
    }
    println!("{stored} files round-tripped, {refused} legacy checkpoints refused");
    assert!(stored >= 10, "only {stored} files");

    for sub in ["torch-written/minilm", "torch-written/mlp", "onnx-external"] {
        let model = data.join(sub);
        if !model.is_dir() {
            println!("SKIPPED {sub}: not fetched (needs torch and onnx)");
            continue;
        }
        let name = sub.replace('/', "-");
        store
            .put(&name, &model, &PutOptions::default(), &NoProgress)
            .unwrap_or_else(|e| panic!("{sub}: {e}"));
        let out = dir.path().join(format!("dir-{name}"));
        store.get(&name, &out, &NoProgress).unwrap();
        same_files(&model, &out);
    }
    let problems = store.verify(&NoProgress).unwrap().problems;
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn one_model_in_three_formats_adds_under_one_percent() {
    let Some(data) = data_dir() else { return };
    let mlp = data.join("torch-written/mlp");
    if !mlp.is_dir() {
        println!("SKIPPED: torch-written/mlp not fetched (needs torch)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let mut names = Vec::new();
    for file in ["model.safetensors", "pytorch_model.bin", "model.onnx"] {
        let path = mlp.join(file);
        let report = store
            .put(file, &path, &PutOptions::default(), &NoProgress)
            .unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        println!(
            "{file}: {len} bytes, {} added ({:.3}%)",
            report.stored_bytes_added,
            report.stored_bytes_added as f64 * 100.0 / len as f64
        );
        if !names.is_empty() {
            assert!(
                report.stored_bytes_added * 100 <= len,
                "{file} added {} bytes",
                report.stored_bytes_added
            );
        }
        names.push(file);
    }
    // The same tensors by name in all three.
    let load = |name: &str| {
        let mut t: Vec<(String, Vec<u8>)> = store
            .load(name)
            .unwrap()
            .into_iter()
            .map(|t| (t.name, t.data.to_vec()))
            .collect();
        t.sort();
        t
    };
    let want = load(names[0]);
    assert_eq!(load(names[1]), want);
    // torch.onnx.export may rename initializers or add constants: every weight of the model
    // is among the ONNX file's tensors, byte for byte.
    let onnx: Vec<(String, Vec<u8>)> = load(names[2]);
    for (name, bytes) in &want {
        assert!(
            onnx.iter().any(|(_, b)| b == bytes),
            "{name} is not in the ONNX file; it holds {:?}",
            onnx.iter().map(|(n, b)| (n, b.len())).collect::<Vec<_>>()
        );
    }
}

#[test]
fn torch_views_load_as_torch_makes_them_contiguous() {
    let Some(data) = data_dir() else { return };
    let views = data.join("torch-written/views.pt");
    let expected = data.join("torch-written/views_expected.safetensors");
    if !views.is_file() || !expected.is_file() {
        println!("SKIPPED: torch-written/views.pt not fetched (needs torch)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    for (name, path) in [("views", &views), ("expected", &expected)] {
        store
            .put(name, path, &PutOptions::default(), &NoProgress)
            .unwrap();
    }
    let load = |name: &str| {
        let mut t: Vec<_> = store
            .load(name)
            .unwrap()
            .into_iter()
            .map(|t| (t.name, t.dtype, t.shape, t.data.to_vec()))
            .collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    assert_eq!(load("views"), load("expected"));
}

#[test]
fn minilm_from_pytorch_shards_reads_as_from_safetensors() {
    let Some(data) = data_dir() else { return };
    let shards = data.join("torch-written/minilm");
    let st = data.join("../all-MiniLM-L6-v2/model.safetensors");
    if !shards.is_dir() || !st.is_file() {
        println!("SKIPPED: torch-written/minilm or all-MiniLM-L6-v2 not fetched");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    store
        .put("st", &st, &PutOptions::default(), &NoProgress)
        .unwrap();
    let report = store
        .put("bin", &shards, &PutOptions::default(), &NoProgress)
        .unwrap();
    // Every tensor is already stored: the shards add their skeletons and the index.
    assert!(report.tensor_reports.iter().all(|t| t.deduplicated));
    let load = |name: &str| {
        let mut t: Vec<_> = store
            .load(name)
            .unwrap()
            .into_iter()
            .map(|t| (t.name, t.dtype, t.shape, t.data.to_vec()))
            .collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    // What `neurstore embed` reads (tensors by name) is the same from both.
    assert_eq!(load("bin"), load("st"));
}
