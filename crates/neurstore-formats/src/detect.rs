//! Format detection from a file's first bytes (an extension only breaks ties) and one entry
//! point that parses any supported file.

use crate::container::{Container, Format};
use crate::error::{Error, Result};
use crate::gguf::GgufInfo;
use crate::onnx::{ExternalRef, info::OnnxInfo};
use crate::pytorch::PyTorchInfo;

/// A parsed file: its split, what `info` shows, and external data it points to (ONNX).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// Skeleton and tensors.
    pub container: Container,
    /// Format-specific description.
    pub summary: Summary,
    /// Tensors stored in other files, to be split with [`crate::onnx::external_container`].
    pub external: Vec<ExternalRef>,
}

/// What `info` shows, per format.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Summary {
    /// safetensors: nothing beyond the tensors.
    Safetensors,
    /// ONNX: the graph.
    Onnx(OnnxInfo),
    /// PyTorch: the archive and its pickle.
    PyTorch(PyTorchInfo),
    /// GGUF: version, alignment, metadata.
    Gguf(GgufInfo),
}

/// Detects the format of `file`. `extension` (without the dot, any case) decides only when the
/// bytes do not: ONNX has no magic number.
pub fn detect(file: &[u8], extension: Option<&str>) -> Result<Format> {
    let ext = extension.map(str::to_ascii_lowercase);
    if file.starts_with(b"GGUF") {
        return Ok(Format::Gguf);
    }
    if file.starts_with(b"PK\x03\x04") || file.starts_with(b"PK\x05\x06") {
        return Ok(Format::PyTorchZip);
    }
    if file.first() == Some(&0x80) && file.get(1).is_some_and(|p| (2..=5).contains(p)) {
        return Err(crate::pytorch::legacy_refusal());
    }
    if looks_like_safetensors(file) {
        return Ok(Format::Safetensors);
    }
    if ext.as_deref() == Some("onnx") || file.first() == Some(&0x08) {
        return Ok(Format::Onnx);
    }
    Err(Error::Unsupported {
        format: "model file",
        detail: "not safetensors, ONNX, a PyTorch zip or GGUF".into(),
    })
}

fn looks_like_safetensors(file: &[u8]) -> bool {
    let Some(prefix) = file.get(..8) else {
        return false;
    };
    let n = u64::from_le_bytes(prefix.try_into().expect("8 bytes"));
    n <= (file.len() as u64).saturating_sub(8) && file.get(8) == Some(&b'{')
}

/// Detects and parses `file`.
pub fn parse(file: &[u8], extension: Option<&str>) -> Result<Parsed> {
    Ok(match detect(file, extension)? {
        Format::Safetensors => Parsed {
            container: crate::safetensors::parse(file)?,
            summary: Summary::Safetensors,
            external: vec![],
        },
        Format::Onnx | Format::OnnxExternalData => {
            let m = crate::onnx::parse(file)?;
            let names: std::collections::HashSet<&str> = m
                .container
                .tensors
                .iter()
                .map(|t| t.name.as_str())
                .chain(m.external.iter().map(|e| e.name.as_str()))
                .collect();
            let info = crate::onnx::info::info(file, &|n| names.contains(n))?;
            Parsed {
                container: m.container,
                summary: Summary::Onnx(info),
                external: m.external,
            }
        }
        Format::PyTorchZip => {
            let (container, info) = crate::pytorch::parse(file)?;
            Parsed {
                container,
                summary: Summary::PyTorch(info),
                external: vec![],
            }
        }
        Format::Gguf => {
            let (container, info) = crate::gguf::parse(file)?;
            Parsed {
                container,
                summary: Summary::Gguf(info),
                external: vec![],
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_decide_and_extension_breaks_ties() {
        assert_eq!(
            detect(b"GGUF\x03\0\0\0", Some("onnx")).unwrap(),
            Format::Gguf
        );
        assert_eq!(detect(b"PK\x03\x04rest", None).unwrap(), Format::PyTorchZip);
        assert_eq!(
            detect(b"\x02\0\0\0\0\0\0\0{}", None).unwrap(),
            Format::Safetensors
        );
        assert_eq!(detect(b"\x12\x03abc", Some("ONNX")).unwrap(), Format::Onnx);
        assert!(detect(b"\x12\x03abc", None).is_err());
        let legacy = detect(b"\x80\x02\x8a\x0a", Some("pth"))
            .unwrap_err()
            .to_string();
        assert!(legacy.contains("torch.save"), "{legacy}");
    }
}
