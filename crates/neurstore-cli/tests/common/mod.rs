//! Helpers shared by the CLI tests: F32 safetensors files built in memory, pack bytes on disk.
#![allow(dead_code)] // each test file uses a part

pub mod bert;

use std::path::Path;

/// A safetensors file of 1-D F32 tensors laid out back to back, in the given order.
pub fn safetensors(tensors: &[(&str, &[f32])]) -> Vec<u8> {
    let shaped: Vec<(&str, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, v)| (*n, vec![v.len()], *v))
        .collect();
    safetensors_shaped(&shaped)
}

/// A safetensors file of F32 tensors of the given shapes, back to back, in the given order.
pub fn safetensors_shaped(tensors: &[(&str, Vec<usize>, &[f32])]) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
        entries.push(format!(
            r#""{name}":{{"dtype":"F32","shape":[{}],"data_offsets":[{start},{}]}}"#,
            dims.join(","),
            data.len()
        ));
    }
    let header = format!("{{{}}}", entries.join(","));
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    out
}

/// Sum of pack file (`packs/*.pack`) lengths on disk.
pub fn pack_bytes_on_disk(store: &Path) -> u64 {
    std::fs::read_dir(store.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}
