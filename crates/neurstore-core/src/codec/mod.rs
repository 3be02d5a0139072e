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

impl Codec {
    /// Whether an object stored with this codec can be decoded by byte ranges ([`Ranged`])
    /// without decoding the rest of it: raw and grouped blobs standing alone, a tensor's
    /// lossless delta (against the same range of its base), and a bounded tensor, against a base
    /// or not. `dtype` is a tensor object's element type, `None` for a file's bytes (which
    /// writers never store as deltas); `has_base` says whether the object is decoded against a
    /// base object.
    pub fn ranged(self, dtype: Option<DType>, has_base: bool) -> bool {
        match self {
            Codec::Raw | Codec::Grouped => !has_base,
            Codec::Delta => has_base && dtype.is_some(),
            Codec::Quantized => dtype.is_some(),
        }
    }
}

/// A blob parsed once for decoding byte ranges of it, whatever its codec: the one dispatch of
/// ranged decoding. Which blobs can be decoded so is [`Codec::ranged`]'s rule.
pub enum Ranged<'a> {
    /// Raw bytes, copied range by range.
    Raw(&'a [u8]),
    /// A grouped blob, decoded by chunk ranges.
    Grouped(grouped::Ranged<'a>),
    /// A lossless delta, decoded by ranges against the same ranges of its base.
    Delta(delta::Ranged<'a>),
    /// A bounded blob, reconstructed by element ranges (against its base's, if it has one).
    Quantized(quantized::Ranged<'a>),
}

impl<'a> Ranged<'a> {
    /// Parses and checks `stored`, a blob of `codec` describing `raw_len` raw bytes (of
    /// `dtype`, for a tensor; decoded against a base when `has_base`). Errs where
    /// [`Codec::ranged`] says the blob cannot be decoded by ranges.
    pub fn new(
        codec: Codec,
        dtype: Option<DType>,
        has_base: bool,
        stored: &'a [u8],
        raw_len: u64,
    ) -> Result<Self, CodecError> {
        if !codec.ranged(dtype, has_base) {
            return Err(CodecError::corrupt(format!(
                "{} blob cannot be decoded by ranges",
                codec.name()
            )));
        }
        match (codec, dtype) {
            (Codec::Raw, _) if stored.len() as u64 == raw_len => Ok(Ranged::Raw(stored)),
            (Codec::Raw, _) => Err(CodecError::corrupt(format!(
                "raw blob holds {} bytes, expected {raw_len}",
                stored.len()
            ))),
            (Codec::Grouped, _) => Ok(Ranged::Grouped(grouped::Ranged::new(stored, raw_len)?)),
            (Codec::Delta, _) => Ok(Ranged::Delta(delta::Ranged::new(stored, raw_len)?)),
            (Codec::Quantized, Some(dtype)) => Ok(Ranged::Quantized(quantized::Ranged::new(
                dtype, stored, raw_len,
            )?)),
            (Codec::Quantized, None) => Err(CodecError::corrupt("quantized blob of a file")),
        }
    }

    /// The alignment of a range start (and end, but for the end of the data) that
    /// [`Ranged::decode_range`] accepts.
    pub fn align(&self) -> usize {
        match self {
            Ranged::Raw(_) => 1,
            Ranged::Grouped(r) => r.align(),
            Ranged::Delta(r) => r.align(),
            Ranged::Quantized(r) => r.align(),
        }
    }

    /// Decodes raw bytes `start..start + out.len()` (aligned as [`Ranged::align`] says),
    /// against `base`, the same range of the base object, for a blob decoded against one.
    pub fn decode_range(
        &self,
        start: u64,
        base: Option<&[u8]>,
        out: &mut [u8],
    ) -> Result<(), CodecError> {
        match (self, base) {
            (Ranged::Raw(stored), None) => {
                let range = usize::try_from(start)
                    .ok()
                    .and_then(|s| Some(s..s.checked_add(out.len())?))
                    .filter(|r| r.end <= stored.len())
                    .ok_or_else(|| CodecError::corrupt("range past the end of the data"))?;
                out.copy_from_slice(&stored[range]);
                Ok(())
            }
            (Ranged::Grouped(r), None) => r.decode_range(start, out),
            (Ranged::Delta(r), Some(base)) => r.decode_range(start, base, out),
            (Ranged::Delta(_), None) => Err(CodecError::corrupt("delta blob without a base")),
            (Ranged::Quantized(r), base) => r.decode_range(start, base, out),
            (Ranged::Raw(_) | Ranged::Grouped(_), Some(_)) => {
                Err(CodecError::corrupt("standalone blob given a base"))
            }
        }
    }

    /// Decodes raw bytes `start..start + out.len()` of a blob decoded without a base, aligned
    /// or not: the chunks around a range not aligned to a grouped blob's chunks are decoded into
    /// `scratch` (resized, reused) and the range copied out; a bounded blob takes any range of
    /// whole elements.
    pub fn decode_unaligned(
        &self,
        start: u64,
        out: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let Ranged::Grouped(r) = self else {
            return self.decode_range(start, None, out);
        };
        let end = start
            .checked_add(out.len() as u64)
            .filter(|&e| e <= r.raw_len())
            .ok_or_else(|| CodecError::corrupt("range past the end of the data"))?;
        let chunk = r.align() as u64;
        if start.is_multiple_of(chunk) && (end.is_multiple_of(chunk) || end == r.raw_len()) {
            return r.decode_range(start, out);
        }
        let lo = start / chunk * chunk;
        let hi = end.div_ceil(chunk).saturating_mul(chunk).min(r.raw_len());
        scratch.resize((hi - lo) as usize, 0);
        r.decode_range(lo, scratch)?;
        let at = (start - lo) as usize;
        out.copy_from_slice(&scratch[at..at + out.len()]);
        Ok(())
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

    /// Ranged decoding, by aligned blocks or by unaligned ranges, gives exactly the bytes whole
    /// decoding gives, for every codec the rule admits, and the rule refuses what it excludes.
    #[test]
    fn ranged_decoding_agrees_with_whole_decoding() {
        let n = 3 * grouped::CHUNK_LEN / 4 + 123;
        let base: Vec<u8> = (0..n)
            .flat_map(|i| ((i as f32 * 0.001).sin()).to_le_bytes())
            .collect();
        let raw: Vec<u8> = base
            .chunks_exact(4)
            .enumerate()
            .flat_map(|(i, b)| {
                let v = f32::from_le_bytes(b.try_into().unwrap());
                (v + if i % 7 == 0 { 1e-3 } else { 0.0 }).to_le_bytes()
            })
            .collect();
        let f32 = Some(DType::F32);
        let grouped = encode_tensor(DType::F32, &raw);
        assert_eq!(grouped.codec, Codec::Grouped);
        let delta = delta::encode(&raw, &base, 4, delta::Transform::IntDiff, 1);
        let bounded = quantized::encode(DType::F32, &raw, None, 1e-4, 1)
            .unwrap()
            .bytes;
        let against = quantized::encode(DType::F32, &raw, Some(&base), 1e-4, 1)
            .unwrap()
            .bytes;
        let cases = [
            (Codec::Raw, &raw[..], None),
            (Codec::Grouped, grouped.bytes.as_deref().unwrap(), None),
            (Codec::Delta, &delta[..], Some(&base[..])),
            (Codec::Quantized, &bounded[..], None),
            (Codec::Quantized, &against[..], Some(&base[..])),
        ];
        for (codec, stored, base) in cases {
            let mut whole = vec![0u8; raw.len()];
            decode_with_base(codec, DType::F32, stored, base, &mut whole).unwrap();
            let r = Ranged::new(codec, f32, base.is_some(), stored, raw.len() as u64).unwrap();
            let block = r.align() * 3;
            let mut by_blocks = vec![0u8; raw.len()];
            for (k, out) in by_blocks.chunks_mut(block).enumerate() {
                let at = k * block;
                r.decode_range(at as u64, base.map(|b| &b[at..at + out.len()]), out)
                    .unwrap();
            }
            assert!(by_blocks == whole, "{codec:?}");
            if base.is_none() {
                let (start, len) = (4 * 1001, 4 * 5003);
                let mut part = vec![0u8; len];
                r.decode_unaligned(start as u64, &mut part, &mut Vec::new())
                    .unwrap();
                assert!(part == whole[start..start + len], "{codec:?}");
            }
        }
        assert!(!Codec::Delta.ranged(f32, false) && !Codec::Grouped.ranged(f32, true));
        assert!(!Codec::Quantized.ranged(None, false) && !Codec::Delta.ranged(None, true));
        assert!(Ranged::new(Codec::Delta, f32, false, &delta, raw.len() as u64).is_err());
    }
}
