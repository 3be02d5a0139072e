//! Strict parser and writer for the safetensors format.
//!
//! Layout: an 8-byte little-endian header length `n`, `n` bytes of JSON header, then the data
//! buffer. The parser accepts a file only if every tensor is well formed and the data buffer is
//! covered exactly: no duplicate names, no overlaps, no holes, no trailing bytes.
//! **Invariant:** nothing is allocated in proportion to a length read from the file before that
//! length has been checked against the real file size.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde_json::Value;

use crate::dtype::DType;

/// Largest header accepted, in bytes (the same cap as the reference implementation).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Why a safetensors file was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The file is shorter than the 8-byte length prefix.
    #[error("file is {0} bytes, too short to hold the 8-byte header length")]
    TooShort(u64),
    /// The declared header length is over the cap.
    #[error("header length {0} exceeds the limit of {MAX_HEADER_LEN} bytes")]
    HeaderTooLarge(u64),
    /// The declared header runs past the end of the file.
    #[error("header length {declared} runs past the end of the {file_len}-byte file")]
    HeaderPastEnd {
        /// Declared header length.
        declared: u64,
        /// Length of the whole file.
        file_len: u64,
    },
    /// The header is not a JSON object of the expected shape.
    #[error("header is not valid: {0}")]
    InvalidHeader(String),
    /// A tensor name or metadata key appears twice.
    #[error("duplicate key {0:?} in header")]
    DuplicateKey(String),
    /// A tensor entry is malformed.
    #[error("tensor {name:?}: {detail}")]
    BadTensor {
        /// Tensor name.
        name: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Two tensors share bytes.
    #[error("tensors {first:?} and {second:?} overlap")]
    Overlap {
        /// The tensor starting first.
        first: String,
        /// The tensor overlapping it.
        second: String,
    },
    /// Some bytes of the data buffer belong to no tensor.
    #[error("bytes {start}..{end} of the data buffer belong to no tensor")]
    Hole {
        /// First uncovered byte (relative to the data buffer).
        start: u64,
        /// End of the uncovered range.
        end: u64,
    },
    /// The data buffer is longer than the tensors it holds.
    #[error("{0} trailing bytes after the last tensor")]
    TrailingBytes(u64),
}

/// One tensor as described by the header, offsets relative to the data buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape (empty for a scalar).
    pub shape: Vec<u64>,
    /// First byte, relative to the data buffer.
    pub start: u64,
    /// One past the last byte, relative to the data buffer.
    pub end: u64,
}

impl TensorInfo {
    /// Byte length of the tensor's data.
    pub fn byte_len(&self) -> u64 {
        self.end - self.start
    }
}

/// A validated safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Tensors sorted by position in the data buffer (the order `get` writes them back in).
    pub tensors: Vec<TensorInfo>,
    /// The `__metadata__` map, if present.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Offset of the data buffer from the start of the file (8 + header length).
    pub data_start: u64,
    /// Length of the data buffer.
    pub data_len: u64,
}

/// Reads the header length from the first 8 bytes and checks it against the file length.
/// Returns the header length.
pub fn header_len(prefix: &[u8], file_len: u64) -> Result<u64, FormatError> {
    let Some(bytes) = prefix.get(..8) else {
        return Err(FormatError::TooShort(file_len));
    };
    let n = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
    if n > MAX_HEADER_LEN {
        return Err(FormatError::HeaderTooLarge(n));
    }
    if n.checked_add(8).is_none_or(|end| end > file_len) {
        return Err(FormatError::HeaderPastEnd {
            declared: n,
            file_len,
        });
    }
    Ok(n)
}

/// Parses and validates a complete file held in memory (typically memory-mapped).
pub fn parse(file: &[u8]) -> Result<Header, FormatError> {
    let file_len = file.len() as u64;
    let n = header_len(file, file_len)?;
    let header_json = &file[8..8 + n as usize];
    parse_header(header_json, file_len)
}

/// Validates the JSON header of a file of `file_len` bytes.
pub fn parse_header(header_json: &[u8], file_len: u64) -> Result<Header, FormatError> {
    let data_start = 8 + header_json.len() as u64;
    let data_len = file_len
        .checked_sub(data_start)
        .ok_or(FormatError::HeaderPastEnd {
            declared: header_json.len() as u64,
            file_len,
        })?;
    if header_json.first() != Some(&b'{') {
        return Err(FormatError::InvalidHeader("it must start with '{'".into()));
    }
    let mut de = serde_json::Deserializer::from_slice(header_json);
    let entries = UniqueMap
        .deserialize(&mut de)
        .map_err(|e| match duplicate_key_from(&e) {
            Some(key) => FormatError::DuplicateKey(key),
            None => FormatError::InvalidHeader(e.to_string()),
        })?;
    de.end()
        .map_err(|e| FormatError::InvalidHeader(e.to_string()))?;

    let mut metadata = None;
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if name == "__metadata__" {
            metadata = Some(parse_metadata(value)?);
        } else {
            check_name(&name)?;
            tensors.push(parse_tensor(name, value, data_len)?);
        }
    }
    check_coverage(&mut tensors, data_len)?;
    Ok(Header {
        tensors,
        metadata,
        data_start,
        data_len,
    })
}

fn parse_metadata(value: Value) -> Result<BTreeMap<String, String>, FormatError> {
    let Value::Object(map) = value else {
        return Err(FormatError::InvalidHeader(
            "__metadata__ must be an object".into(),
        ));
    };
    map.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            _ => Err(FormatError::InvalidHeader(format!(
                "__metadata__ value of {k:?} must be a string"
            ))),
        })
        .collect()
}

fn parse_tensor(name: String, value: Value, data_len: u64) -> Result<TensorInfo, FormatError> {
    let bad = |detail: String| FormatError::BadTensor {
        name: name.clone(),
        detail,
    };
    let Value::Object(fields) = value else {
        return Err(bad("entry must be an object".into()));
    };
    if let Some(extra) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "dtype" | "shape" | "data_offsets"))
    {
        return Err(bad(format!("unexpected field {extra:?}")));
    }
    let dtype: DType = match fields.get("dtype") {
        Some(Value::String(s)) => s.parse().map_err(|e| bad(format!("{e}")))?,
        _ => return Err(bad("missing or non-string dtype".into())),
    };
    let shape = match fields.get("shape") {
        Some(Value::Array(dims)) => dims
            .iter()
            .map(|d| {
                d.as_u64()
                    .ok_or_else(|| bad("shape must hold non-negative integers".into()))
            })
            .collect::<Result<Vec<u64>, _>>()?,
        _ => return Err(bad("missing shape".into())),
    };
    let (start, end) = match fields.get("data_offsets") {
        Some(Value::Array(o)) if o.len() == 2 => match (o[0].as_u64(), o[1].as_u64()) {
            (Some(s), Some(e)) => (s, e),
            _ => return Err(bad("data_offsets must be two non-negative integers".into())),
        },
        _ => return Err(bad("data_offsets must be [begin, end]".into())),
    };
    if start > end {
        return Err(bad(format!("data_offsets [{start}, {end}] run backwards")));
    }
    if end > data_len {
        return Err(bad(format!(
            "data_offsets [{start}, {end}] run past the {data_len}-byte data buffer"
        )));
    }
    let (_, expected) = checked_size(dtype, &shape).map_err(bad)?;
    if expected != end - start {
        return Err(bad(format!(
            "shape {shape:?} of {dtype} needs {expected} bytes but data_offsets span {}",
            end - start
        )));
    }
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        start,
        end,
    })
}

/// Sorts tensors by offset and checks they tile `0..data_len` exactly.
fn check_coverage(tensors: &mut [TensorInfo], data_len: u64) -> Result<(), FormatError> {
    tensors.sort_by(|a, b| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
    let mut covered = 0u64;
    let mut last: Option<&TensorInfo> = None;
    for t in tensors.iter() {
        if t.start < covered {
            return Err(FormatError::Overlap {
                first: last.map(|l| l.name.clone()).unwrap_or_default(),
                second: t.name.clone(),
            });
        }
        if t.start > covered {
            return Err(FormatError::Hole {
                start: covered,
                end: t.start,
            });
        }
        covered = t.end;
        if t.end > t.start {
            last = Some(t);
        }
    }
    if covered < data_len {
        return Err(FormatError::TrailingBytes(data_len - covered));
    }
    Ok(())
}

/// Builds a canonical header for tensors laid out back to back in the given order.
/// Returns the JSON bytes (space-padded so the data buffer starts on an 8-byte boundary) and
/// the tensors with their offsets.
pub fn build_header(
    tensors: &[(String, DType, Vec<u64>)],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<(Vec<u8>, Vec<TensorInfo>), FormatError> {
    let mut map = serde_json::Map::new();
    if let Some(m) = metadata {
        map.insert(
            "__metadata__".into(),
            serde_json::to_value(m).expect("string map"),
        );
    }
    let mut infos = Vec::with_capacity(tensors.len());
    let mut seen = HashSet::new();
    let mut offset = 0u64;
    for (name, dtype, shape) in tensors {
        if name == "__metadata__" || !seen.insert(name.as_str()) {
            return Err(FormatError::DuplicateKey(name.clone()));
        }
        let bad = |detail: &str| FormatError::BadTensor {
            name: name.clone(),
            detail: detail.into(),
        };
        check_name(name)?;
        let (_, len) = checked_size(*dtype, shape).map_err(|d| bad(&d))?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| bad("data buffer overflows"))?;
        map.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype.as_str(), "shape": shape, "data_offsets": [offset, end]}),
        );
        infos.push(TensorInfo {
            name: name.clone(),
            dtype: *dtype,
            shape: shape.clone(),
            start: offset,
            end,
        });
        offset = end;
    }
    let mut json = serde_json::to_vec(&map).expect("serializable");
    while !(8 + json.len()).is_multiple_of(8) {
        json.push(b' ');
    }
    Ok((json, infos))
}

// serde_json keeps the last of duplicate keys silently; these deserializers refuse them, at
// every depth: the top-level map, each tensor entry, `__metadata__`, and anything nested.
struct UniqueMap;

/// A JSON value whose objects, at every depth, hold each key once.
struct StrictValue;

const DUPLICATE_MARKER: &str = "neurstore-duplicate-key:";

fn duplicate_key_from(e: &serde_json::Error) -> Option<String> {
    let msg = e.to_string();
    let rest = msg.strip_prefix(DUPLICATE_MARKER)?;
    // serde_json appends " at line L column C".
    let end = rest.rfind(" at line ").unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

impl<'de> DeserializeSeed<'de> for UniqueMap {
    type Value = Vec<(String, Value)>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for UniqueMap {
    type Value = Vec<(String, Value)>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        while let Some(key) = access.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("{DUPLICATE_MARKER}{key}")));
            }
            let value = access.next_value_seed(StrictValue)?;
            out.push((key, value));
        }
        Ok(out)
    }
}

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, access: A) -> Result<Value, A::Error> {
        Ok(Value::Object(
            UniqueMap.visit_map(access)?.into_iter().collect(),
        ))
    }
}

/// Element count and byte length of `shape`, refusing shapes whose dimensions or byte size
/// pass what a program can address even where a zero dimension makes the tensor empty
/// (`[0, 2^63]` describes no bytes, but no reader could index it).
pub fn checked_size(dtype: DType, shape: &[u64]) -> Result<(u64, u64), String> {
    let limit = isize::MAX as u64;
    let mut nonzero = 1u64;
    for &d in shape {
        if d > limit {
            return Err(format!("dimension {d} is past the addressable limit"));
        }
        if d != 0 {
            nonzero = nonzero
                .checked_mul(d)
                .filter(|&n| n <= limit)
                .ok_or_else(|| "shape's element count overflows".to_string())?;
        }
    }
    let bits = nonzero
        .checked_mul(dtype.bits())
        .filter(|&b| b / 8 <= limit)
        .ok_or_else(|| "shape's byte size overflows".to_string())?;
    if shape.contains(&0) {
        return Ok((0, 0));
    }
    if bits % 8 != 0 {
        return Err(format!(
            "{nonzero} {dtype} elements do not fill whole bytes"
        ));
    }
    Ok((nonzero, bits / 8))
}

/// Tensor names are printed and written back: no control characters.
fn check_name(name: &str) -> Result<(), FormatError> {
    match name.chars().find(|c| c.is_control()) {
        Some(c) => Err(FormatError::BadTensor {
            name: name.to_string(),
            detail: format!("name holds the control character {:?}", c),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data_len));
        v
    }

    #[test]
    fn parses_valid_file_sorted_by_offset() {
        let h = r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"__metadata__":{"k":"v"}}"#;
        let parsed = parse(&file(h, 16)).unwrap();
        assert_eq!(parsed.tensors[0].name, "a");
        assert_eq!(parsed.tensors[1].name, "b");
        assert_eq!(parsed.metadata.unwrap()["k"], "v");
    }

    #[test]
    fn rejects_bad_files() {
        let cases: &[(&str, usize, &str)] = &[
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
                16,
                "duplicate",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12,
                "overlap",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                12,
                "trailing",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12,
                "belong to no tensor",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                8,
                "needs 12 bytes",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}"#,
                8,
                "overflows",
            ),
            (
                r#"{"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}"#,
                8,
                "unknown dtype",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,80]}}"#,
                8,
                "run past",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}"#,
                8,
                "unexpected field",
            ),
            (r#"{"__metadata__":{"k":1}}"#, 0, "must be a string"),
            (r#"{"__metadata__":{"k":"1","k":"2"}}"#, 0, "duplicate"),
            (
                r#"{"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                8,
                "duplicate key \"dtype\"",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"shape":[2]}}"#,
                8,
                "duplicate key \"shape\"",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[0,9223372036854775808],"data_offsets":[0,0]}}"#,
                0,
                "addressable limit",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}}"#,
                0,
                "overflows",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[0,4611686018427387904],"data_offsets":[0,0]}}"#,
                0,
                "byte size overflows",
            ),
            (
                r#"{"a\u001b[2J":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                8,
                "control character",
            ),
            (
                r#"{"a\ud800":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                8,
                "not valid",
            ),
            (r#"[1,2]"#, 0, "start with"),
            (r#"{"a": nope}"#, 0, "not valid"),
        ];
        for (h, n, needle) in cases {
            let err = parse(&file(h, *n)).unwrap_err().to_string();
            assert!(err.contains(needle), "{h}: got {err:?}, wanted {needle:?}");
        }
    }

    #[test]
    fn rejects_invalid_utf8_names() {
        let mut header = br#"{"a"#.to_vec();
        header.push(0xff);
        header.extend_from_slice(br#"":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#);
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(&header);
        f.extend_from_slice(&[0; 8]);
        assert!(matches!(parse(&f), Err(FormatError::InvalidHeader(_))));
    }

    #[test]
    fn empty_shapes_of_addressable_size_parse() {
        let h = r#"{"a":{"dtype":"F32","shape":[0,1024,1024],"data_offsets":[0,0]},"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
        let parsed = parse(&file(h, 1)).unwrap();
        assert_eq!(parsed.tensors[0].byte_len(), 0);
    }

    #[test]
    fn empty_sub_byte_tensors_take_no_bytes() {
        assert_eq!(checked_size(DType::F4, &[0, 1]), Ok((0, 0)));
        assert_eq!(checked_size(DType::F6E3M2, &[2, 0]), Ok((0, 0)));
        assert!(checked_size(DType::F4, &[1]).is_err());
    }

    #[test]
    fn built_header_refuses_what_the_parser_refuses() {
        let huge = vec![("a".to_string(), DType::U8, vec![0, 1 << 63])];
        assert!(build_header(&huge, None).is_err());
        let escape = vec![("\u{1b}]0;x\u{7}".to_string(), DType::U8, vec![1])];
        assert!(build_header(&escape, None).is_err());
    }

    #[test]
    fn rejects_bad_prefix() {
        assert!(matches!(parse(&[1, 2, 3]), Err(FormatError::TooShort(3))));
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(matches!(parse(&huge), Err(FormatError::HeaderTooLarge(_))));
        let mut past = 1000u64.to_le_bytes().to_vec();
        past.extend_from_slice(b"{}");
        assert!(matches!(
            parse(&past),
            Err(FormatError::HeaderPastEnd { .. })
        ));
    }

    #[test]
    fn built_header_parses_back() {
        let tensors = vec![
            ("w".to_string(), DType::BF16, vec![3, 2]),
            ("s".to_string(), DType::I64, vec![]),
            ("e".to_string(), DType::F32, vec![0]),
        ];
        let (json, infos) = build_header(&tensors, None).unwrap();
        assert_eq!((8 + json.len()) % 8, 0);
        let total = infos.last().unwrap().end as usize;
        let mut f = (json.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(&json);
        f.extend(std::iter::repeat_n(7u8, total));
        let parsed = parse(&f).unwrap();
        assert_eq!(parsed.tensors.len(), 3);
        assert!(build_header(&[tensors[0].clone(), tensors[0].clone()], None).is_err());
    }
}
