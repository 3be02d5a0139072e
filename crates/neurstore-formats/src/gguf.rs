//! Strict GGUF (v2 and v3) parser: header, metadata and tensor infos are the skeleton; every
//! tensor's data is a tensor range, quantized block types as opaque bytes with their true shape.
//!
//! Layout: magic `GGUF`, version u32, tensor_count u64, kv_count u64, the key/value pairs, the
//! tensor infos (name, n_dims u32, dims u64 innermost first, ggml type u32, offset u64), padding
//! to `general.alignment` (default 32), then the data section. All little-endian.
//! **Invariant:** every count and length is checked against the bytes left before anything is
//! allocated from it; tensors are disjoint, aligned and separated only by alignment padding.

use std::collections::HashSet;

use crate::container::{Container, Format, Origin, Tensor};
use crate::element::{ElementType, GgmlType};
use crate::error::{Error, Result, corrupt};

const FORMAT: &str = "GGUF";
/// Dimensions GGML tensors can have.
pub const MAX_DIMS: u32 = 4;
/// Nesting allowed for arrays of arrays in metadata.
const MAX_ARRAY_DEPTH: u32 = 4;
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value, summarized: scalars whole, arrays by element type and length.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Any integer type.
    Int(i128),
    /// f32 or f64.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    Str(String),
    /// An array: element type name and length.
    Array {
        /// GGUF name of the element type.
        element: &'static str,
        /// Number of elements.
        len: u64,
    },
}

/// What `info` shows of a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufInfo {
    /// 2 or 3.
    pub version: u32,
    /// Alignment of the data section and of every tensor.
    pub alignment: u64,
    /// Every metadata key in file order with its summarized value.
    pub metadata: Vec<(String, MetaValue)>,
}

/// Parses and validates a GGUF file held in memory.
pub fn parse(file: &[u8]) -> Result<(Container, GgufInfo)> {
    let mut r = Reader {
        bytes: file,
        pos: 0,
    };
    if r.take(4)? != b"GGUF" {
        return Err(r.bad("magic", "not a GGUF file"));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(Error::Unsupported {
            format: FORMAT,
            detail: format!("version {version} (only 2 and 3 are read)"),
        });
    }
    let tensor_count = r.u64()?;
    let kv_count = r.u64()?;
    // A key/value takes at least 13 bytes, a tensor info at least 24.
    if kv_count
        .saturating_mul(13)
        .saturating_add(tensor_count.saturating_mul(24))
        > r.left()
    {
        return Err(r.bad(
            "counts",
            format!("{kv_count} keys and {tensor_count} tensors cannot fit in the file"),
        ));
    }
    let (metadata, alignment) = read_metadata(&mut r, kv_count)?;
    let infos = read_tensor_infos(&mut r, tensor_count)?;
    let data_start = r
        .pos_u64()
        .checked_next_multiple_of(alignment)
        .filter(|&s| s <= file.len() as u64)
        .ok_or_else(|| r.bad("data section", "starts past the end of the file"))?;
    let tensors = place_tensors(infos, data_start, alignment, file.len() as u64)?;
    let mut skeleton_only = vec![format!("GGUF metadata ({} keys)", metadata.len())];
    skeleton_only.extend(
        tensors
            .iter()
            .filter(|t| matches!(t.element, ElementType::Ggml(_)))
            .take(1)
            .map(|_| "GGML block-quantized tensor types".to_string()),
    );
    let container = Container {
        format: Format::Gguf,
        file_len: file.len() as u64,
        tensors,
        views: vec![],
        skeleton_only,
        notes: vec![],
    };
    container.validate()?;
    Ok((
        container,
        GgufInfo {
            version,
            alignment,
            metadata,
        },
    ))
}

type Metadata = Vec<(String, MetaValue)>;

fn read_metadata(r: &mut Reader, kv_count: u64) -> Result<(Metadata, u64)> {
    let mut metadata = Vec::new();
    let mut keys = HashSet::new();
    let mut alignment = DEFAULT_ALIGNMENT;
    for _ in 0..kv_count {
        let key = r.string()?;
        if !keys.insert(key.clone()) {
            return Err(r.bad(&key, "duplicate metadata key"));
        }
        let ty = r.u32()?;
        let value = read_value(r, ty, 0)?;
        if key == "general.alignment" {
            alignment = match (ty, &value) {
                (4, MetaValue::Int(a)) if *a > 0 && (*a as u64).is_power_of_two() => *a as u64,
                _ => return Err(r.bad(&key, "must be a u32 power of two")),
            };
        }
        metadata.push((key, value));
    }
    Ok((metadata, alignment))
}

fn read_value(r: &mut Reader, ty: u32, depth: u32) -> Result<MetaValue> {
    Ok(match ty {
        0 => MetaValue::Int(r.take(1)?[0] as i128),
        1 => MetaValue::Int(r.take(1)?[0] as i8 as i128),
        2 => MetaValue::Int(u16::from_le_bytes(r.array()?) as i128),
        3 => MetaValue::Int(i16::from_le_bytes(r.array()?) as i128),
        4 => MetaValue::Int(r.u32()? as i128),
        5 => MetaValue::Int(i32::from_le_bytes(r.array()?) as i128),
        6 => MetaValue::Float(f32::from_le_bytes(r.array()?) as f64),
        7 => match r.take(1)?[0] {
            b @ (0 | 1) => MetaValue::Bool(b == 1),
            b => return Err(r.bad("bool", format!("value {b} is neither 0 nor 1"))),
        },
        8 => MetaValue::Str(r.string()?),
        9 => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(r.bad("array", format!("nested deeper than {MAX_ARRAY_DEPTH}")));
            }
            let element_ty = r.u32()?;
            let len = r.u64()?;
            let min = fixed_size(element_ty).unwrap_or(8);
            if len.saturating_mul(min) > r.left() {
                return Err(r.bad("array", format!("{len} elements cannot fit in the file")));
            }
            match fixed_size(element_ty) {
                Some(size) => r.skip(len * size)?,
                // Strings of an array (a tokenizer's vocabulary) are checked, not copied.
                None if element_ty == 8 => {
                    for _ in 0..len {
                        r.str_ref()?;
                    }
                }
                None => {
                    for _ in 0..len {
                        read_value(r, element_ty, depth + 1)?;
                    }
                }
            }
            MetaValue::Array {
                element: type_name(element_ty),
                len,
            }
        }
        10 => MetaValue::Int(r.u64()? as i128),
        11 => MetaValue::Int(i64::from_le_bytes(r.array()?) as i128),
        12 => MetaValue::Float(f64::from_le_bytes(r.array()?)),
        _ => return Err(r.bad("value type", format!("unknown metadata type {ty}"))),
    })
}

/// Size of a fixed-width metadata type; `None` for strings and arrays. Booleans are checked
/// one by one (they must be 0 or 1), so they are not skipped as fixed-width.
fn fixed_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

fn type_name(ty: u32) -> &'static str {
    const NAMES: [&str; 13] = [
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64",
        "f64",
    ];
    NAMES.get(ty as usize).copied().unwrap_or("?")
}

struct Info {
    name: String,
    shape: Vec<u64>,
    element: ElementType,
    offset: u64,
}

fn read_tensor_infos(r: &mut Reader, count: u64) -> Result<Vec<Info>> {
    let mut infos = Vec::new();
    let mut names = HashSet::new();
    for _ in 0..count {
        let name = r.string()?;
        if !names.insert(name.clone()) {
            return Err(r.bad(&name, "duplicate tensor name"));
        }
        let n_dims = r.u32()?;
        if n_dims > MAX_DIMS {
            return Err(r.bad(
                &name,
                format!("{n_dims} dimensions (GGML has at most {MAX_DIMS})"),
            ));
        }
        let mut shape = (0..n_dims).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
        shape.reverse(); // GGUF lists the innermost dimension first
        let ty = r.u32()?;
        let ggml =
            GgmlType::from_id(ty).ok_or_else(|| r.bad(&name, format!("unknown ggml type {ty}")))?;
        let element = ggml
            .dense()
            .map_or(ElementType::Ggml(ggml), ElementType::Dense);
        let offset = r.u64()?;
        infos.push(Info {
            name,
            shape,
            element,
            offset,
        });
    }
    Ok(infos)
}

fn place_tensors(
    mut infos: Vec<Info>,
    data_start: u64,
    alignment: u64,
    file_len: u64,
) -> Result<Vec<Tensor>> {
    // Empty tensors first at a shared offset, so they never look like an overlap.
    infos.sort_by_key(|i| (i.offset, i.element.byte_len(&i.shape).unwrap_or(u64::MAX)));
    let mut tensors = Vec::with_capacity(infos.len());
    let mut pos = data_start;
    for info in infos {
        let bad = |detail: String| corrupt(FORMAT, format!("tensor {:?}", info.name), detail);
        if !info.offset.is_multiple_of(alignment) {
            return Err(bad(format!(
                "offset {} is not a multiple of {alignment}",
                info.offset
            )));
        }
        let len = info.element.byte_len(&info.shape).ok_or_else(|| {
            bad(format!(
                "shape {:?} of {} overflows or splits a block",
                info.shape,
                info.element.name()
            ))
        })?;
        let start = data_start
            .checked_add(info.offset)
            .ok_or_else(|| bad("offset overflows".into()))?;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= file_len)
            .ok_or_else(|| {
                bad(format!(
                    "data runs past the end of the {file_len}-byte file"
                ))
            })?;
        if start < pos {
            return Err(bad("overlaps the previous tensor".into()));
        }
        if start - pos >= alignment {
            return Err(corrupt(
                FORMAT,
                "data section",
                format!("bytes {pos}..{start} belong to no tensor"),
            ));
        }
        pos = end;
        tensors.push(Tensor {
            name: info.name,
            element: info.element,
            shape: info.shape,
            start,
            end,
            origin: Origin::Plain,
        });
    }
    if file_len - pos >= alignment {
        return Err(corrupt(
            FORMAT,
            "data section",
            format!("{} trailing bytes after the last tensor", file_len - pos),
        ));
    }
    Ok(tensors)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bad(&self, what: &str, detail: impl Into<String>) -> Error {
        corrupt(FORMAT, format!("{what} at byte {}", self.pos), detail)
    }
    fn left(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }
    fn pos_u64(&self) -> u64 {
        self.pos as u64
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n as u64 > self.left() {
            return Err(self.bad("field", format!("{n} bytes needed, {} left", self.left())));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn skip(&mut self, n: u64) -> Result<()> {
        if n > self.left() {
            return Err(self.bad("field", format!("{n} bytes needed, {} left", self.left())));
        }
        self.pos += n as usize;
        Ok(())
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn string(&mut self) -> Result<String> {
        self.str_ref().map(str::to_string)
    }
    fn str_ref(&mut self) -> Result<&'a str> {
        let n = self.u64()?;
        if n > self.left() {
            return Err(self.bad(
                "string",
                format!("length {n} runs past the end of the file"),
            ));
        }
        let b = self.take(n as usize)?;
        std::str::from_utf8(b).map_err(|_| self.bad("string", "not UTF-8"))
    }
}

/// Builds small GGUF files for tests and fuzz seeds.
#[doc(hidden)]
pub mod build {
    /// A tensor to write: name, ggml type id, GGUF dims (innermost first), data.
    pub type TensorSpec<'a> = (&'a str, u32, Vec<u64>, &'a [u8]);

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// A v3 file with a string key, a u32 key, a string array and the given tensors, each
    /// padded to 32 bytes.
    pub fn gguf(tensors: &[TensorSpec]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&3u64.to_le_bytes());
        string(&mut out, "general.architecture");
        out.extend_from_slice(&8u32.to_le_bytes());
        string(&mut out, "llama");
        string(&mut out, "llama.block_count");
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&2u32.to_le_bytes());
        string(&mut out, "tokenizer.ggml.tokens");
        out.extend_from_slice(&9u32.to_le_bytes());
        out.extend_from_slice(&8u32.to_le_bytes());
        out.extend_from_slice(&2u64.to_le_bytes());
        string(&mut out, "a");
        string(&mut out, "bc");
        let mut offset = 0u64;
        for (name, ty, dims, data) in tensors {
            string(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            dims.iter()
                .for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + data.len() as u64).next_multiple_of(32);
        }
        for (_, _, _, data) in tensors {
            out.resize(out.len().next_multiple_of(32), 0);
            out.extend_from_slice(data);
        }
        out.resize(out.len().next_multiple_of(32), 0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::build::gguf;
    use super::*;
    use neurstore_core::dtype::DType;

    #[test]
    fn parses_dense_and_quantized_tensors() {
        let f32s = [1u8; 24];
        let q4 = [7u8; 40]; // two Q4_1 blocks of 32
        let file = gguf(&[("w", 0, vec![3, 2], &f32s), ("q", 3, vec![64], &q4)]);
        let (c, info) = parse(&file).unwrap();
        assert_eq!(info.version, 3);
        assert_eq!(
            info.metadata[0],
            (
                "general.architecture".into(),
                MetaValue::Str("llama".into())
            )
        );
        assert_eq!(
            info.metadata[2].1,
            MetaValue::Array {
                element: "string",
                len: 2
            }
        );
        assert_eq!(c.tensors[0].shape, vec![2, 3]);
        assert_eq!(c.tensors[0].element, ElementType::Dense(DType::F32));
        assert_eq!(
            &file[c.tensors[1].start as usize..c.tensors[1].end as usize],
            &q4
        );
        assert_eq!(c.tensors[1].element.name(), "Q4_1");
        let sk = c.skeleton_bytes(&file).unwrap();
        let back = crate::skeleton::reassemble_to_vec(&sk, &[&f32s, &q4]).unwrap();
        assert_eq!(back, file);
    }

    #[test]
    fn hostile_headers_are_refused() {
        let good = gguf(&[("w", 0, vec![2], &[0u8; 8])]);
        let mut huge_count = good.clone();
        huge_count[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(
            parse(&huge_count)
                .unwrap_err()
                .to_string()
                .contains("cannot fit")
        );
        let mut v1 = good.clone();
        v1[4] = 1;
        assert!(parse(&v1).unwrap_err().to_string().contains("version 1"));
        let dup = gguf(&[("w", 0, vec![2], &[0u8; 8]), ("w", 0, vec![2], &[0u8; 8])]);
        assert!(parse(&dup).unwrap_err().to_string().contains("duplicate"));
        let split_block = gguf(&[("q", 2, vec![33], &[0u8; 18])]);
        assert!(
            parse(&split_block)
                .unwrap_err()
                .to_string()
                .contains("splits a block")
        );
        let past_end = gguf(&[("w", 0, vec![2], &[0u8; 8])]);
        assert!(parse(&past_end[..past_end.len() - 30]).is_err());
        for cut in 0..good.len() - 32 {
            assert!(parse(&good[..cut]).is_err(), "truncated at {cut}");
        }
    }

    #[test]
    fn overlapping_tensors_are_refused() {
        let mut file = gguf(&[("a", 0, vec![8], &[0u8; 32]), ("b", 0, vec![8], &[0u8; 32])]);
        // Point b's offset (the last 8 bytes of its info) at a's data.
        let info_end = file.len() - 64;
        let b_offset = (0..info_end)
            .rev()
            .find(|&i| file[i..i + 8] == 32u64.to_le_bytes())
            .unwrap();
        file[b_offset..b_offset + 8].copy_from_slice(&0u64.to_le_bytes());
        assert!(parse(&file).is_err());
    }

    #[test]
    fn empty_tensors_may_share_an_offset() {
        let file = gguf(&[("w", 0, vec![2], &[1u8; 8]), ("e", 0, vec![0], &[])]);
        // The builder gives "e" offset 32; point it at "w"'s offset instead.
        let (c, _) = parse(&file).unwrap();
        assert_eq!(c.tensors.len(), 2);
        let mut shared = file.clone();
        let at = (0..shared.len() - 8)
            .rev()
            .find(|&i| shared[i..i + 8] == 32u64.to_le_bytes())
            .unwrap();
        shared[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
        let (c, _) = parse(&shared).unwrap();
        assert_eq!(c.tensors[0].name, "e");
    }
}
