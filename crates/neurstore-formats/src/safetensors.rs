//! safetensors as a container, through the strict parser of `neurstore_core`: the 8-byte length
//! and the JSON header are the skeleton, the data buffer is all tensors.

use crate::container::{Container, Format, Origin, Tensor};
use crate::element::ElementType;
use crate::error::Result;

/// Parses and validates a safetensors file held in memory.
pub fn parse(file: &[u8]) -> Result<Container> {
    from_header(neurstore_core::safetensors::parse(file)?, file.len() as u64)
}

/// The container of a safetensors file of `file_len` bytes from its validated header (a store
/// that keeps the header alone describes the file without its data).
pub fn from_header(
    header: neurstore_core::safetensors::Header,
    file_len: u64,
) -> Result<Container> {
    let tensors = header
        .tensors
        .into_iter()
        .map(|t| Tensor {
            element: ElementType::Dense(t.dtype),
            start: header.data_start + t.start,
            end: header.data_start + t.end,
            name: t.name,
            shape: t.shape,
            origin: Origin::Plain,
        })
        .collect();
    let skeleton_only = header
        .metadata
        .filter(|m| !m.is_empty())
        .map(|m| vec![format!("safetensors __metadata__ ({} keys)", m.len())])
        .unwrap_or_default();
    let container = Container {
        format: Format::Safetensors,
        file_len,
        tensors,
        views: vec![],
        skeleton_only,
        notes: vec![],
    };
    container.validate()?;
    Ok(container)
}

#[cfg(test)]
mod tests {
    use super::*;
    use neurstore_core::dtype::DType;

    #[test]
    fn header_is_skeleton_and_data_is_tensors() {
        let (json, infos) = neurstore_core::safetensors::build_header(
            &[
                ("a".into(), DType::F32, vec![2]),
                ("b".into(), DType::U8, vec![3]),
            ],
            None,
        )
        .unwrap();
        let mut file = (json.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(&json);
        file.extend((0..infos.last().unwrap().end).map(|i| i as u8));
        let c = parse(&file).unwrap();
        assert_eq!(c.skeleton_len(), 8 + json.len() as u64);
        assert_eq!(c.tensors[1].end, file.len() as u64);
        let sk = c.skeleton_bytes(&file).unwrap();
        let parts: Vec<&[u8]> = c
            .tensors
            .iter()
            .map(|t| &file[t.start as usize..t.end as usize])
            .collect();
        assert_eq!(
            crate::skeleton::reassemble_to_vec(&sk, &parts).unwrap(),
            file
        );
    }
}
