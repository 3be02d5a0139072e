//! Codecs: how a blob's stored bytes map to its raw bytes. Pure functions, no I/O.

pub mod delta;
pub mod entropy;
pub mod grouped;
pub mod quantized;

use crate::dtype::DType;

/// How a blob is stored. The numeric tag is what the catalog records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// Stored as is; can be memory-mapped and used without a copy.
    Raw,
    /// Byte-grouped chunked planes, each raw, zstd or entropy coded ([`grouped`]).
    Grouped,
    /// Lossless delta against a base object ([`delta`]).
    Delta,
    /// Bounded quantized values, against a base object or zero ([`quantized`]).
    Quantized,
}

impl Codec {
    /// Tag recorded in the catalog.
    pub fn tag(self) -> u8 {
        match self {
            Codec::Raw => 0,
            Codec::Grouped => 1,
            Codec::Delta => 2,
            Codec::Quantized => 3,
        }
    }

    /// Parses a catalog tag.
    pub fn from_tag(tag: i64) -> Result<Self, CodecError> {
        match tag {
            0 => Ok(Codec::Raw),
            1 => Ok(Codec::Grouped),
            2 => Ok(Codec::Delta),
            3 => Ok(Codec::Quantized),
            t => Err(CodecError::corrupt(format!("unknown codec tag {t}"))),
        }
    }

    /// Short name for display.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::Grouped => "grouped-zstd",
            Codec::Delta => "delta",
            Codec::Quantized => "quantized",
        }
    }
}

/// A decode failure: the stored bytes do not describe the expected raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

impl CodecError {
    pub(crate) fn corrupt(msg: impl Into<String>) -> Self {
        CodecError(msg.into())
    }
}

/// zstd level for tensor planes: on exponent planes level 1 both compresses better and runs
/// faster than 3 (its matches cost more than they save there; measured on MiniLM).
pub const TENSOR_LEVEL: i32 = 1;
/// zstd level for plain files (text: configs, vocabularies), where matches pay.
pub const FILE_LEVEL: i32 = 3;

/// The result of encoding: the codec chosen and the bytes to store (`None` = store raw as is).
pub struct Encoded {
    /// Codec chosen.
    pub codec: Codec,
    /// Encoded bytes, or `None` when the raw bytes are stored unchanged.
    pub bytes: Option<Vec<u8>>,
}

/// Encodes a tensor's raw bytes losslessly, keeping the encoding only where it saves at least
/// 1% (raw blobs stay zero-copy readable).
pub fn encode_tensor(dtype: DType, raw: &[u8]) -> Encoded {
    encode_with_width(raw, dtype.plane_width(), dtype.is_float(), TENSOR_LEVEL)
}

/// Encodes a plain file's bytes losslessly (no byte grouping).
pub fn encode_file(raw: &[u8]) -> Encoded {
    encode_with_width(raw, 1, false, FILE_LEVEL)
}

fn encode_with_width(raw: &[u8], width: usize, rotate_sign: bool, level: i32) -> Encoded {
    if raw.len() < 64 {
        return Encoded {
            codec: Codec::Raw,
            bytes: None,
        };
    }
    let packed = grouped::encode_with(raw, width, rotate_sign, level);
    if packed.len() + raw.len() / 100 < raw.len() {
        Encoded {
            codec: Codec::Grouped,
            bytes: Some(packed),
        }
    } else {
        Encoded {
            codec: Codec::Raw,
            bytes: None,
        }
    }
}

/// Decodes `stored` into `out` (whose length is the raw length).
pub fn decode_into(codec: Codec, stored: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    match codec {
        Codec::Raw if stored.len() == out.len() => {
            out.copy_from_slice(stored);
            Ok(())
        }
        Codec::Raw => Err(CodecError::corrupt(format!(
            "raw blob holds {} bytes, expected {}",
            stored.len(),
            out.len()
        ))),
        Codec::Grouped => grouped::decode_into(stored, out),
        Codec::Delta | Codec::Quantized => Err(CodecError::corrupt(format!(
            "{} blob needs decode_with_base",
            codec.name()
        ))),
    }
}

/// Decodes any codec: `base` is the decoded base object for [`Codec::Delta`] and for
/// [`Codec::Quantized`] blobs encoded against one; `dtype` is the tensor's element type.
pub fn decode_with_base(
    codec: Codec,
    dtype: DType,
    stored: &[u8],
    base: Option<&[u8]>,
    out: &mut [u8],
) -> Result<(), CodecError> {
    match codec {
        Codec::Raw | Codec::Grouped if base.is_none() => decode_into(codec, stored, out),
        Codec::Delta => delta::decode_into(
            stored,
            base.ok_or_else(|| CodecError::corrupt("delta blob without a base"))?,
            out,
        ),
        Codec::Quantized => quantized::decode_into(dtype, stored, base, out),
        _ => Err(CodecError::corrupt(format!(
            "{} blob with a base",
            codec.name()
        ))),
    }
}
