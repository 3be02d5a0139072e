//! `info`-style summaries of a parsed file, as lines of text for a command line to print.

use crate::detect::{Parsed, Summary};
use crate::gguf::MetaValue;

/// Longest metadata string shown whole.
const MAX_SHOWN: usize = 80;

impl Parsed {
    /// Human-readable lines describing the file: format, tensors, skeleton, the format's own
    /// description (ONNX graph, GGUF metadata, PyTorch archive), notes and what a conversion
    /// would drop.
    pub fn describe(&self) -> Vec<String> {
        let c = &self.container;
        let tensor_bytes: u64 = c.tensors.iter().map(|t| t.byte_len()).sum();
        let mut lines = vec![format!(
            "{}: {} tensors ({} bytes in {} ranges), skeleton {} bytes",
            c.format.name(),
            c.logical_tensors().len(),
            tensor_bytes,
            c.tensors.len(),
            c.skeleton_len()
        )];
        match &self.summary {
            Summary::Safetensors => {}
            Summary::Onnx(i) => {
                lines.push(format!(
                    "IR version {}, producer {}",
                    i.ir_version, i.producer
                ));
                let opsets: Vec<String> =
                    i.opsets.iter().map(|(d, v)| format!("{d} {v}")).collect();
                lines.push(format!("opsets: {}", opsets.join(", ")));
                for (label, values) in [("input", &i.inputs), ("output", &i.outputs)] {
                    for v in values {
                        lines.push(format!(
                            "{label} {}: {} [{}]",
                            v.name,
                            v.element,
                            v.dims.join(", ")
                        ));
                    }
                }
                let mut ops: Vec<(&String, &usize)> = i.op_counts.iter().collect();
                ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                let ops: Vec<String> = ops.iter().map(|(op, n)| format!("{op} {n}")).collect();
                lines.push(format!(
                    "operators ({} nodes): {}",
                    i.op_counts.values().sum::<usize>(),
                    ops.join(", ")
                ));
                if !self.external.is_empty() {
                    let mut files: Vec<&str> =
                        self.external.iter().map(|e| e.location.as_str()).collect();
                    files.dedup();
                    lines.push(format!(
                        "external data: {} tensors in {}",
                        self.external.len(),
                        files.join(", ")
                    ));
                }
            }
            Summary::PyTorch(i) => {
                lines.push(format!(
                    "archive {:?}: {} entries, pickle {} bytes",
                    i.archive, i.entries, i.pickle_len
                ));
                lines.push(format!(
                    "{} tensors in {} storages ({} aliases, {} non-contiguous views), {} non-tensor values",
                    i.tensors, i.storages, i.aliases, i.non_contiguous, i.non_tensor_values
                ));
            }
            Summary::Gguf(i) => {
                lines.push(format!(
                    "GGUF v{}, alignment {}, {} metadata keys",
                    i.version,
                    i.alignment,
                    i.metadata.len()
                ));
                lines.extend(
                    i.metadata
                        .iter()
                        .map(|(k, v)| format!("  {k} = {}", show(v))),
                );
            }
        }
        lines.extend(c.notes.iter().map(|n| format!("note: {n}")));
        lines.extend(
            c.skeleton_only
                .iter()
                .map(|s| format!("kept in the skeleton only (a conversion drops it): {s}")),
        );
        lines
    }
}

fn show(v: &MetaValue) -> String {
    match v {
        MetaValue::Int(i) => i.to_string(),
        MetaValue::Float(f) => f.to_string(),
        MetaValue::Bool(b) => b.to_string(),
        MetaValue::Str(s) if s.chars().count() > MAX_SHOWN => {
            format!(
                "{:?}... ({} bytes)",
                s.chars().take(MAX_SHOWN).collect::<String>(),
                s.len()
            )
        }
        MetaValue::Str(s) => format!("{s:?}"),
        MetaValue::Array { element, len } => format!("[{element}; {len}]"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn describes_each_format() {
        let onnx = crate::onnx::sample::small_model();
        let lines = crate::parse(&onnx, Some("onnx")).unwrap().describe();
        assert!(lines.iter().any(|l| l == "opsets: ai.onnx 17"), "{lines:?}");
        assert!(
            lines.iter().any(|l| l == "input x: float [2, 3]"),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("operators (3 nodes): ")),
            "{lines:?}"
        );
        let gguf = crate::gguf::build::gguf(&[("w", 0, vec![2], &[0u8; 8])]);
        let lines = crate::parse(&gguf, None).unwrap().describe();
        assert!(
            lines
                .iter()
                .any(|l| l == "  general.architecture = \"llama\""),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l == "  tokenizer.ggml.tokens = [string; 2]"),
            "{lines:?}"
        );
    }
}
