//! Pack records (store format 2): the byte layout of everything a pack holds. Pure code: bytes
//! in, bytes out.
//!
//! A format-2 pack is a 32-byte header followed by records. Each record is self-describing and
//! self-checking, so the catalog can be rebuilt from the packs alone (`recover`):
//!
//! ```text
//! header   16 B   "NSR\x02", u8 type, u8 alignment log2, u16 meta length, u64 payload length
//! meta     ..     object records: the object's keys, base key, codec, dtype and shape
//! padding  ..     zeros up to the payload's alignment (raw tensors served zero-copy only)
//! payload  ..     the blob (object), the manifest (model) or the name (tombstone)
//! checksum 32 B   BLAKE3 of "neurstore/record/v2\0" ‖ header ‖ meta ‖ payload
//! ```
//!
//! **Invariant:** an object's meta seals its own content key, its decoded key and the decoded
//! key of its base, so one checksum binds a delta to the base it must be applied to.

use neurstore_core::codec::Codec;
use neurstore_core::dtype::{DType, element_count};
use neurstore_core::key::Digest;

/// Magic at the start of a format-2 pack file.
pub const PACK_MAGIC: &[u8; 8] = b"NSPACK\0\x02";
/// Length of a format-2 pack header: magic, store id (16 bytes), pack id (u64).
pub const PACK_HEADER_LEN: u64 = 32;
/// Magic at the start of every record.
pub const RECORD_MAGIC: &[u8; 4] = b"NSR\x02";
/// Length of a record header.
pub const RECORD_HEADER_LEN: u64 = 16;
/// Length of a record's trailing checksum.
pub const TRAILER_LEN: u64 = 32;
/// Largest meta a record may carry (a rank-64 shape fits many times over).
pub const MAX_META_LEN: usize = 4096;
/// Raw tensors of at least this many bytes start on a page boundary (served zero-copy from a
/// memory map, so the page cache holds them once).
pub const PAGE_ALIGN_FROM: u64 = 64 << 10;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    /// An object's blob and the facts needed to rebuild its catalog row.
    Object = 1,
    /// A model's manifest: everything its catalog rows hold.
    Model = 2,
    /// A model's removal.
    Tombstone = 3,
}

impl RecordType {
    fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(RecordType::Object),
            2 => Some(RecordType::Model),
            3 => Some(RecordType::Tombstone),
            _ => None,
        }
    }
}

/// A parsed record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// What the record holds.
    pub kind: RecordType,
    /// log2 of the payload's alignment within the pack (0: none).
    pub align_log2: u8,
    /// Meta length.
    pub meta_len: u16,
    /// Payload length.
    pub payload_len: u64,
}

impl RecordHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN as usize] {
        let mut out = [0u8; RECORD_HEADER_LEN as usize];
        out[..4].copy_from_slice(RECORD_MAGIC);
        out[4] = self.kind as u8;
        out[5] = self.align_log2;
        out[6..8].copy_from_slice(&self.meta_len.to_le_bytes());
        out[8..16].copy_from_slice(&self.payload_len.to_le_bytes());
        out
    }

    /// Parses a header; `None` when the bytes are not one.
    pub fn decode(bytes: &[u8]) -> Option<RecordHeader> {
        let b = bytes.get(..RECORD_HEADER_LEN as usize)?;
        if &b[..4] != RECORD_MAGIC || b[5] > 16 {
            return None;
        }
        let meta_len = u16::from_le_bytes([b[6], b[7]]);
        if meta_len as usize > MAX_META_LEN {
            return None;
        }
        Some(RecordHeader {
            kind: RecordType::from_tag(b[4])?,
            align_log2: b[5],
            meta_len,
            payload_len: u64::from_le_bytes(b[8..16].try_into().ok()?),
        })
    }

    /// Where the payload starts for a record starting at `offset`.
    pub fn payload_offset(&self, offset: u64) -> Option<u64> {
        let unaligned = offset
            .checked_add(RECORD_HEADER_LEN)?
            .checked_add(self.meta_len as u64)?;
        let align = 1u64 << self.align_log2;
        unaligned.checked_next_multiple_of(align)
    }

    /// Where the record ends (past its checksum) for a record starting at `offset`.
    pub fn end(&self, offset: u64) -> Option<u64> {
        self.payload_offset(offset)?
            .checked_add(self.payload_len)?
            .checked_add(TRAILER_LEN)
    }
}

/// The checksum of a record: over its header, meta and payload, padding excluded.
pub fn record_checksum(header: &[u8], meta: &[u8], payload: &[u8]) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"neurstore/record/v2\0");
    h.update(header);
    h.update(meta);
    if payload.len() >= 1 << 20 {
        h.update_rayon(payload);
    } else {
        h.update(payload);
    }
    *h.finalize().as_bytes()
}

/// The alignment (log2) an object's payload gets: raw tensors large enough to be served from
/// the map start on a page; small raw tensors on 64 bytes (any element type's alignment);
/// compressed blobs are decoded, never viewed, so they are packed back to back.
pub fn object_alignment(codec: Codec, is_tensor: bool, payload_len: u64) -> u8 {
    match (codec, is_tensor) {
        (Codec::Raw, true) if payload_len >= PAGE_ALIGN_FROM => 12,
        (Codec::Raw, true) => 6,
        _ => 0,
    }
}

/// What an object record's meta says about the object.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectMeta {
    /// Content key.
    pub key: Digest,
    /// Key of the decoded bytes (equal to `key` for lossless objects).
    pub decoded_key: Digest,
    /// Decoded key of the base it is decoded against.
    pub base_key: Option<Digest>,
    /// Tensor dtype, or `None` for a file object.
    pub dtype: Option<DType>,
    /// Shape (empty for files).
    pub shape: Vec<u64>,
    /// Decoded length.
    pub raw_len: u64,
    /// Codec of the payload.
    pub codec: Codec,
    /// Bases below it.
    pub chain_depth: u32,
    /// Bound it was stored under.
    pub tolerance: Option<f64>,
    /// Largest error measured at encode time.
    pub max_error: f64,
}

const HAS_BASE: u8 = 1;
const HAS_DECODED_KEY: u8 = 2;
const HAS_TOLERANCE: u8 = 4;
const IS_TENSOR: u8 = 8;

impl ObjectMeta {
    /// The meta's bytes. The encoding is canonical: equal metas give equal bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut flags = 0;
        if self.base_key.is_some() {
            flags |= HAS_BASE;
        }
        if self.decoded_key != self.key {
            flags |= HAS_DECODED_KEY;
        }
        if self.tolerance.is_some() {
            flags |= HAS_TOLERANCE;
        }
        if self.dtype.is_some() {
            flags |= IS_TENSOR;
        }
        let mut out = Vec::with_capacity(96 + 8 * self.shape.len());
        out.push(flags);
        out.push(self.codec.tag());
        out.extend_from_slice(&self.key);
        if flags & HAS_DECODED_KEY != 0 {
            out.extend_from_slice(&self.decoded_key);
        }
        if let Some(base) = &self.base_key {
            out.extend_from_slice(base);
        }
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(&self.chain_depth.to_le_bytes());
        if let Some(t) = self.tolerance {
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&self.max_error.to_le_bytes());
        }
        if let Some(dtype) = self.dtype {
            let name = dtype.as_str().as_bytes();
            out.push(name.len() as u8);
            out.extend_from_slice(name);
            out.push(self.shape.len() as u8);
            for d in &self.shape {
                out.extend_from_slice(&d.to_le_bytes());
            }
        }
        out
    }

    /// The fields in which `self` (as found) and `expected` differ, named.
    pub fn differences(&self, expected: &ObjectMeta) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut check = |same: bool, name| {
            if !same {
                out.push(name);
            }
        };
        check(self.key == expected.key, "content key");
        check(self.decoded_key == expected.decoded_key, "decoded key");
        check(self.base_key == expected.base_key, "base key");
        check(
            self.dtype == expected.dtype && self.shape == expected.shape,
            "dtype or shape",
        );
        check(self.raw_len == expected.raw_len, "raw length");
        check(self.codec == expected.codec, "codec");
        check(self.chain_depth == expected.chain_depth, "chain depth");
        check(
            self.tolerance.map(f64::to_bits) == expected.tolerance.map(f64::to_bits)
                && self.max_error.to_bits() == expected.max_error.to_bits(),
            "error bound",
        );
        out
    }

    /// Parses and validates a meta. Every field is checked; trailing bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<ObjectMeta, String> {
        let mut r = Reader(bytes);
        let flags = r.u8()?;
        if flags & !(HAS_BASE | HAS_DECODED_KEY | HAS_TOLERANCE | IS_TENSOR) != 0 {
            return Err(format!("unknown flags {flags:#x}"));
        }
        let codec = Codec::from_tag(r.u8()? as i64).map_err(|e| e.to_string())?;
        let key = r.digest()?;
        let decoded_key = if flags & HAS_DECODED_KEY != 0 {
            r.digest()?
        } else {
            key
        };
        let base_key = (flags & HAS_BASE != 0).then(|| r.digest()).transpose()?;
        let raw_len = r.u64()?;
        let chain_depth = u32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
        let (tolerance, max_error) = if flags & HAS_TOLERANCE != 0 {
            (Some(r.f64()?), r.f64()?)
        } else {
            (None, 0.0)
        };
        let (dtype, shape) = if flags & IS_TENSOR != 0 {
            let n = r.u8()? as usize;
            let name = std::str::from_utf8(r.take(n)?).map_err(|_| "dtype is not UTF-8")?;
            let dtype: DType = name
                .parse()
                .map_err(|_| format!("unknown dtype {name:?}"))?;
            let rank = r.u8()? as usize;
            let shape = (0..rank).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
            let bytes = element_count(&shape).and_then(|n| dtype.byte_len(n));
            if bytes != Some(raw_len) {
                return Err(format!("shape {shape:?} of {dtype} is not {raw_len} bytes"));
            }
            (Some(dtype), shape)
        } else {
            (None, Vec::new())
        };
        if !r.0.is_empty() {
            return Err(format!("{} trailing bytes", r.0.len()));
        }
        let bound_ok = match tolerance {
            Some(t) => t.is_finite() && t > 0.0 && max_error.is_finite() && max_error <= t,
            None => true,
        };
        if !bound_ok || base_key.is_some() != (chain_depth > 0) {
            return Err("bound or chain depth out of range".into());
        }
        Ok(ObjectMeta {
            key,
            decoded_key,
            base_key,
            dtype,
            shape,
            raw_len,
            codec,
            chain_depth,
            tolerance,
            max_error,
        })
    }
}

/// A model's manifest as a record: everything the catalog holds of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRecord {
    /// Commit sequence number: a later record of the same name supersedes an earlier one.
    pub seq: u64,
    /// Model name.
    pub name: String,
    /// Creation time (seconds since the epoch).
    pub created_unix: i64,
    /// Source format.
    pub source_format: String,
    /// User metadata (JSON).
    pub metadata: String,
    /// Bytes as imported.
    pub raw_bytes: u64,
    /// Lineage.
    pub base_model: Option<String>,
    /// Mode label.
    pub mode: String,
    /// Files: (path, kind tag, content key of the object).
    pub files: Vec<(String, u8, Digest)>,
    /// Tensors: (file path, position, name, content key of the object).
    pub tensors: Vec<(String, u64, String, Digest)>,
}

/// Upper bound on files or tensors in one manifest, checked before allocating.
const MAX_ENTRIES: u64 = 1 << 24;

impl ModelRecord {
    /// The record's payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::new();
        w.extend_from_slice(&self.seq.to_le_bytes());
        w.extend_from_slice(&self.created_unix.to_le_bytes());
        for s in [
            &self.name,
            &self.source_format,
            &self.metadata,
            &self.mode,
            self.base_model.as_deref().unwrap_or(""),
        ] {
            put_str(&mut w, s);
        }
        w.push(self.base_model.is_some() as u8);
        w.extend_from_slice(&self.raw_bytes.to_le_bytes());
        w.extend_from_slice(&(self.files.len() as u64).to_le_bytes());
        for (path, kind, key) in &self.files {
            put_str(&mut w, path);
            w.push(*kind);
            w.extend_from_slice(key);
        }
        w.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        for (path, position, name, key) in &self.tensors {
            put_str(&mut w, path);
            w.extend_from_slice(&position.to_le_bytes());
            put_str(&mut w, name);
            w.extend_from_slice(key);
        }
        w
    }

    /// Parses a manifest payload strictly.
    pub fn decode(bytes: &[u8]) -> Result<ModelRecord, String> {
        let mut r = Reader(bytes);
        let seq = r.u64()?;
        let created_unix = r.u64()? as i64;
        let name = r.str()?;
        let source_format = r.str()?;
        let metadata = r.str()?;
        let mode = r.str()?;
        let base = r.str()?;
        let base_model = match r.u8()? {
            0 if base.is_empty() => None,
            1 => Some(base),
            _ => return Err("bad base model flag".into()),
        };
        let raw_bytes = r.u64()?;
        let n = r.count(4 + 1 + 32)?;
        let mut files = Vec::with_capacity(n);
        for _ in 0..n {
            files.push((r.str()?, r.u8()?, r.digest()?));
        }
        let n = r.count(4 + 8 + 4 + 32)?;
        let mut tensors = Vec::with_capacity(n);
        for _ in 0..n {
            tensors.push((r.str()?, r.u64()?, r.str()?, r.digest()?));
        }
        if !r.0.is_empty() {
            return Err(format!("{} trailing bytes", r.0.len()));
        }
        Ok(ModelRecord {
            seq,
            name,
            created_unix,
            source_format,
            metadata,
            raw_bytes,
            base_model,
            mode,
            files,
            tensors,
        })
    }
}

/// A tombstone's payload: the sequence number and the name of the removed model.
pub fn encode_tombstone(seq: u64, name: &str) -> Vec<u8> {
    let mut w = seq.to_le_bytes().to_vec();
    put_str(&mut w, name);
    w
}

/// Parses a tombstone payload.
pub fn decode_tombstone(bytes: &[u8]) -> Result<(u64, String), String> {
    let mut r = Reader(bytes);
    let seq = r.u64()?;
    let name = r.str()?;
    if !r.0.is_empty() {
        return Err("trailing bytes".into());
    }
    Ok((seq, name))
}

/// A format-2 pack header.
pub fn encode_pack_header(store_id: &[u8; 16], pack_id: u64) -> [u8; PACK_HEADER_LEN as usize] {
    let mut out = [0u8; PACK_HEADER_LEN as usize];
    out[..8].copy_from_slice(PACK_MAGIC);
    out[8..24].copy_from_slice(store_id);
    out[24..].copy_from_slice(&pack_id.to_le_bytes());
    out
}

/// Parses a pack header: (store id, pack id).
pub fn decode_pack_header(bytes: &[u8]) -> Option<([u8; 16], u64)> {
    let b = bytes.get(..PACK_HEADER_LEN as usize)?;
    if &b[..8] != PACK_MAGIC {
        return None;
    }
    Some((
        b[8..24].try_into().ok()?,
        u64::from_le_bytes(b[24..].try_into().ok()?),
    ))
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    w.extend_from_slice(&(s.len() as u32).to_le_bytes());
    w.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "truncated: {n} bytes wanted, {} left",
                self.0.len()
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn f64(&mut self) -> Result<f64, String> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn digest(&mut self) -> Result<Digest, String> {
        Ok(self.take(32)?.try_into().expect("32"))
    }
    fn str(&mut self) -> Result<String, String> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().expect("4")) as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "string is not UTF-8".into())
    }
    /// A count of entries of at least `min_each` bytes, checked against what is left.
    fn count(&mut self, min_each: u64) -> Result<usize, String> {
        let n = self.u64()?;
        if n > MAX_ENTRIES || n.saturating_mul(min_each) > self.0.len() as u64 {
            return Err(format!("{n} entries cannot fit in {} bytes", self.0.len()));
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ObjectMeta {
        ObjectMeta {
            key: [1; 32],
            decoded_key: [2; 32],
            base_key: Some([3; 32]),
            dtype: Some(DType::F32),
            shape: vec![2, 3],
            raw_len: 24,
            codec: Codec::Quantized,
            chain_depth: 1,
            tolerance: Some(1e-3),
            max_error: 5e-4,
        }
    }

    #[test]
    fn object_meta_round_trips_and_rejects_damage() {
        let m = meta();
        let bytes = m.encode();
        assert_eq!(ObjectMeta::decode(&bytes).unwrap(), m);
        let file = ObjectMeta {
            decoded_key: [1; 32],
            base_key: None,
            dtype: None,
            shape: vec![],
            codec: Codec::Grouped,
            chain_depth: 0,
            tolerance: None,
            max_error: 0.0,
            ..m.clone()
        };
        assert_eq!(ObjectMeta::decode(&file.encode()).unwrap(), file);
        for cut in 0..bytes.len() {
            assert!(ObjectMeta::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(ObjectMeta::decode(&longer).is_err());
        let mut wrong_shape = bytes.clone();
        let n = wrong_shape.len();
        wrong_shape[n - 8] = 9;
        assert!(ObjectMeta::decode(&wrong_shape).is_err());
    }

    #[test]
    fn model_records_round_trip_and_bound_counts() {
        let r = ModelRecord {
            seq: 7,
            name: "m".into(),
            created_unix: 1_700_000_000,
            source_format: "directory".into(),
            metadata: "{}".into(),
            raw_bytes: 100,
            base_model: Some("b".into()),
            mode: "lossless".into(),
            files: vec![("a.safetensors".into(), 0, [9; 32])],
            tensors: vec![("a.safetensors".into(), 0, "w".into(), [8; 32])],
        };
        let bytes = r.encode();
        assert_eq!(ModelRecord::decode(&bytes).unwrap(), r);
        for cut in 0..bytes.len() {
            assert!(ModelRecord::decode(&bytes[..cut]).is_err());
        }
        // A file count of 2^40 in a short payload is refused before allocating.
        let mut bomb = bytes.clone();
        let at = bytes.len() - (8 + 4 + 13 + 1 + 32) - (8 + 4 + 13 + 8 + 4 + 1 + 32);
        bomb[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(ModelRecord::decode(&bomb).is_err());
        assert_eq!(
            decode_tombstone(&encode_tombstone(3, "x")).unwrap(),
            (3, "x".into())
        );
    }

    #[test]
    fn headers_align_payloads() {
        let h = RecordHeader {
            kind: RecordType::Object,
            align_log2: 12,
            meta_len: 100,
            payload_len: 10,
        };
        assert_eq!(RecordHeader::decode(&h.encode()), Some(h));
        assert_eq!(h.payload_offset(40), Some(4096));
        assert_eq!(h.end(40), Some(4096 + 10 + 32));
        let packed = RecordHeader { align_log2: 0, ..h };
        assert_eq!(packed.payload_offset(40), Some(40 + 16 + 100));
        let mut bad = h.encode();
        bad[4] = 9;
        assert_eq!(RecordHeader::decode(&bad), None);
        let huge = RecordHeader {
            payload_len: u64::MAX,
            ..h
        };
        assert_eq!(huge.end(0), None);
        let id = [5u8; 16];
        assert_eq!(
            decode_pack_header(&encode_pack_header(&id, 4)),
            Some((id, 4))
        );
    }
}
