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

/// Plain files at least this large are sampled before they are encoded whole.
const SAMPLE_FROM: usize = 64 << 20;
/// Bytes per sample, and samples per file.
const SAMPLE_LEN: usize = 1 << 20;
const SAMPLES: usize = 8;

/// Encodes a plain file's bytes losslessly (no byte grouping). A large file is first sampled:
/// where evenly spaced samples do not compress by 1%, it is stored raw without encoding it
/// whole, so an incompressible file (a `.bin` of weights beside the tensors) costs no copy of
/// itself in memory.
pub fn encode_file(raw: &[u8]) -> Encoded {
    if raw.len() >= SAMPLE_FROM && !samples_compress(raw) {
        return Encoded {
            codec: Codec::Raw,
            bytes: None,
        };
    }
    encode_with_width(raw, 1, false, FILE_LEVEL)
}

/// Whether evenly spaced samples of `raw` (at least `SAMPLE_LEN * SAMPLES` bytes) compress by
/// at least 1%, the margin [`encode_file`] keeps an encoding for.
fn samples_compress(raw: &[u8]) -> bool {
    let stride = (raw.len() - SAMPLE_LEN) / (SAMPLES - 1);
    let packed: usize = (0..SAMPLES)
        .map(|i| grouped::encode_with(&raw[i * stride..][..SAMPLE_LEN], 1, false, FILE_LEVEL).len())
        .sum();
    let total = SAMPLE_LEN * SAMPLES;
    packed + total / 100 < total
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_incompressible_files_are_stored_raw_and_compressible_ones_encoded() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..SAMPLE_FROM / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        assert!(!samples_compress(&noise));
        assert!(encode_file(&noise).bytes.is_none());
        let text: Vec<u8> = b"{\"vocab\": [\"token\", 1]}\n"
            .iter()
            .copied()
            .cycle()
            .take(SAMPLE_FROM)
            .collect();
        let encoded = encode_file(&text);
        assert_eq!(encoded.codec, Codec::Grouped);
        let mut back = vec![0u8; text.len()];
        decode_into(encoded.codec, encoded.bytes.as_deref().unwrap(), &mut back).unwrap();
        assert!(back == text);
    }
}
