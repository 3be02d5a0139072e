//! The tensor similarity index: one bucket (exact scan while small, an HNSW graph past
//! `scan_below`) per (dtype, element count) over the packed sketches the catalog records,
//! persisted as `index.hnsw` in the pack namespace.
//!
//! The catalog is the source of truth: the file records the catalog's index generation and
//! checksums; a missing, damaged or stale file is extended or rebuilt from the catalog's
//! sketches, inserted in object-id order, which yields the same buckets as the incremental
//! inserts did.
//!
//! File layout (little-endian; docs/format.md is the specification):
//! - `"NSINDEX2"`, u64 snapshot length `L`, the snapshot (`L` bytes: u64 generation, u64 last
//!   object id indexed, u32 bucket count, then per bucket {u8 dtype name length, name, u64
//!   element count, u64 bucket length, bucket bytes}), a 32-byte BLAKE3 of everything before it;
//! - then appended records, each {u32 body length, body (u64 generation it brings the index to,
//!   u32 insert count, per insert {u64 object id, u8 dtype name length, name, u64 element count,
//!   packed sketch}), the first 8 bytes of the BLAKE3 of length and body}.
//!
//! Loading stops at the first record that is torn, fails its checksum or does not follow
//! (generation not above the last, ids not increasing): that tail is dropped, the index is
//! brought up to date from the catalog, and the next write rewrites the whole file.

use std::collections::BTreeMap;

use neurstore_core::dtype::DType;
use neurstore_core::hnsw::{Hnsw, HnswParams};
use neurstore_core::sketch::{PACKED_LEN, Packed};

use crate::catalog::SketchRow;

const MAGIC: &[u8; 8] = b"NSINDEX2";
/// Bytes of a snapshot's checksum.
const SNAPSHOT_SUM: usize = 32;
/// Bytes of a record's checksum.
const RECORD_SUM: usize = 8;
/// Largest record body: a bound checked before allocating.
const MAX_RECORD: usize = 1 << 30;

/// What this index knows of its file: enough to append to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OnDisk {
    /// Bytes of the file's snapshot part (magic, length, snapshot, checksum).
    snapshot_len: u64,
    /// Bytes of the file in all (snapshot plus valid records).
    len: u64,
    /// The generation the file brings the index to.
    generation: u64,
}

/// How to bring the index file up to date (see [`TensorIndex::pending_write`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexWrite {
    /// The file is current.
    Nothing,
    /// Append one record at the end of the file.
    Append {
        /// Where the file ends.
        offset: u64,
        /// The record.
        bytes: Vec<u8>,
    },
    /// Replace the whole file with these bytes (a fresh snapshot).
    Rewrite(Vec<u8>),
}

/// Similarity index over the sketches of objects that may serve as bases.
#[derive(Debug, Clone)]
pub struct TensorIndex {
    generation: u64,
    last_id: i64,
    buckets: BTreeMap<(DType, u64), Hnsw>,
    /// Inserts not yet in the file, in order.
    pending: Vec<SketchRow>,
    /// The file this index was loaded from or last written to; `None` when unknown or when
    /// its tail had to be dropped (the next write rewrites it).
    on_disk: Option<OnDisk>,
}

/// Equal content: generation, last id and buckets (not what is known of the file).
impl PartialEq for TensorIndex {
    fn eq(&self, o: &Self) -> bool {
        self.generation == o.generation && self.last_id == o.last_id && self.buckets == o.buckets
    }
}

impl TensorIndex {
    /// Builds an index from sketches sorted by object id.
    pub fn build(generation: u64, sketches: &[SketchRow]) -> Self {
        let mut index = TensorIndex {
            generation,
            last_id: 0,
            buckets: BTreeMap::new(),
            pending: Vec::new(),
            on_disk: None,
        };
        for (id, dtype, elements, sketch) in sketches {
            index.add(*id, *dtype, *elements, sketch);
        }
        index
    }

    fn add(&mut self, id: i64, dtype: DType, elements: u64, sketch: &Packed) {
        self.buckets
            .entry((dtype, elements))
            .or_insert_with(|| Hnsw::new(HnswParams::default()))
            .insert(id as u64, sketch);
        self.last_id = self.last_id.max(id);
    }

    /// Adds an object (ids must increase); it is appended to the file on the next write.
    pub fn insert(&mut self, id: i64, dtype: DType, elements: u64, sketch: &Packed) {
        self.add(id, dtype, elements, sketch);
        self.pending.push((id, dtype, elements, *sketch));
    }

    /// Catalog generation this index reflects.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records the catalog generation after incremental inserts.
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// Highest object id indexed.
    pub fn last_id(&self) -> i64 {
        self.last_id
    }

    /// Number of objects indexed.
    pub fn len(&self) -> usize {
        self.buckets.values().map(Hnsw::len).sum()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Objects in the bucket of `dtype` and `elements`.
    pub fn bucket_len(&self, dtype: DType, elements: u64) -> usize {
        self.buckets.get(&(dtype, elements)).map_or(0, Hnsw::len)
    }

    /// The `k` objects of the bucket whose sketches are nearest `sketch`, nearest first: exact
    /// in a bucket below its `scan_below`, through its graph from then on.
    pub fn search(&self, dtype: DType, elements: u64, sketch: &[f32], k: usize) -> Vec<(i64, f32)> {
        self.bucket_query(dtype, elements, |g| g.search(sketch, k))
    }

    /// The same by scanning the whole bucket (recall measurements).
    pub fn brute_force(
        &self,
        dtype: DType,
        elements: u64,
        sketch: &[f32],
        k: usize,
    ) -> Vec<(i64, f32)> {
        self.bucket_query(dtype, elements, |g| g.brute_force(sketch, k))
    }

    fn bucket_query(
        &self,
        dtype: DType,
        elements: u64,
        query: impl FnOnce(&Hnsw) -> Vec<(u64, f32)>,
    ) -> Vec<(i64, f32)> {
        self.buckets
            .get(&(dtype, elements))
            .map(|g| query(g).into_iter().map(|(id, d)| (id as i64, d)).collect())
            .unwrap_or_default()
    }

    /// Serializes the whole index as a snapshot file (no records).
    pub fn encode(&self) -> Vec<u8> {
        let mut snapshot = Vec::new();
        snapshot.extend_from_slice(&self.generation.to_le_bytes());
        snapshot.extend_from_slice(&self.last_id.to_le_bytes());
        snapshot.extend_from_slice(&(self.buckets.len() as u32).to_le_bytes());
        for ((dtype, elements), graph) in &self.buckets {
            put_bucket_key(&mut snapshot, *dtype, *elements);
            let g = graph.to_bytes();
            snapshot.extend_from_slice(&(g.len() as u64).to_le_bytes());
            snapshot.extend_from_slice(&g);
        }
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(snapshot.len() as u64).to_le_bytes());
        out.extend_from_slice(&snapshot);
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// What to write to bring the file up to date: nothing; the pending inserts appended as one
    /// record; or, when the file is unknown, had a tail dropped, or its records would outgrow
    /// its snapshot, a fresh snapshot (compaction). Call [`TensorIndex::written`] once done.
    pub fn pending_write(&self) -> IndexWrite {
        let Some(disk) = self.on_disk else {
            return IndexWrite::Rewrite(self.encode());
        };
        // A generation change without inserts still needs its record.
        if self.pending.is_empty() && disk.generation == self.generation {
            return IndexWrite::Nothing;
        }
        let record = encode_record(self.generation, &self.pending);
        let appended = disk.len - disk.snapshot_len + record.len() as u64;
        if appended > disk.snapshot_len {
            return IndexWrite::Rewrite(self.encode());
        }
        IndexWrite::Append {
            offset: disk.len,
            bytes: record,
        }
    }

    /// Records that `write` (from [`TensorIndex::pending_write`]) reached the file.
    pub fn written(&mut self, write: &IndexWrite) {
        self.on_disk = match (write, self.on_disk) {
            (IndexWrite::Nothing, disk) => disk,
            (IndexWrite::Append { offset, bytes }, Some(disk)) => Some(OnDisk {
                len: offset + bytes.len() as u64,
                generation: self.generation,
                ..disk
            }),
            (IndexWrite::Append { .. }, None) => None,
            (IndexWrite::Rewrite(bytes), _) => Some(OnDisk {
                snapshot_len: bytes.len() as u64,
                len: bytes.len() as u64,
                generation: self.generation,
            }),
        };
        self.pending.clear();
    }

    /// Parses an index file: its snapshot strictly (any damage is an error; the caller
    /// rebuilds), then its records up to the first that is torn, damaged or out of sequence
    /// (that tail is dropped, and the next write rewrites the file).
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let (mut index, snapshot_len) = decode_snapshot(bytes)?;
        let mut pos = snapshot_len;
        while pos < bytes.len() {
            match decode_record(&bytes[pos..], index.generation, index.last_id) {
                Some((generation, inserts, used)) => {
                    for (id, dtype, elements, sketch) in &inserts {
                        index.add(*id, *dtype, *elements, sketch);
                    }
                    index.generation = generation;
                    pos += used;
                }
                None => break,
            }
        }
        index.on_disk = (pos == bytes.len()).then_some(OnDisk {
            snapshot_len: snapshot_len as u64,
            len: pos as u64,
            generation: index.generation,
        });
        Ok(index)
    }
}

fn put_bucket_key(out: &mut Vec<u8>, dtype: DType, elements: u64) {
    let name = dtype.as_str().as_bytes();
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&elements.to_le_bytes());
}

/// One record: the inserts since the last write and the generation they bring the index to.
fn encode_record(generation: u64, inserts: &[SketchRow]) -> Vec<u8> {
    let mut body = Vec::with_capacity(12 + inserts.len() * (20 + PACKED_LEN));
    body.extend_from_slice(&generation.to_le_bytes());
    body.extend_from_slice(&(inserts.len() as u32).to_le_bytes());
    for (id, dtype, elements, sketch) in inserts {
        body.extend_from_slice(&id.to_le_bytes());
        put_bucket_key(&mut body, *dtype, *elements);
        body.extend_from_slice(sketch.as_bytes());
    }
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&body);
    let sum = blake3::hash(&out);
    out.extend_from_slice(&sum.as_bytes()[..RECORD_SUM]);
    out
}

/// A bounds-checked cursor over a byte slice.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).ok_or("index truncated")?;
        let s = self.bytes.get(self.pos..end).ok_or("index truncated")?;
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn bucket_key(&mut self) -> Result<(DType, u64), String> {
        let len = self.take(1)?[0] as usize;
        let name = std::str::from_utf8(self.take(len)?).map_err(|_| "bad dtype name")?;
        let dtype: DType = name.parse().map_err(|_| "unknown dtype")?;
        Ok((dtype, self.u64()?))
    }
}

/// The snapshot part of a file and its length in bytes.
fn decode_snapshot(bytes: &[u8]) -> Result<(TensorIndex, usize), String> {
    let mut c = Cursor { bytes, pos: 0 };
    if c.take(MAGIC.len()).map_err(|_| "index file truncated")? != MAGIC {
        return Err("not an index file".into());
    }
    let len = c.u64().map_err(|_| "index file truncated")?;
    let body_end = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_add(c.pos))
        .filter(|&end| {
            end.checked_add(SNAPSHOT_SUM)
                .is_some_and(|e| e <= bytes.len())
        })
        .ok_or("index file truncated")?;
    let total = body_end + SNAPSHOT_SUM;
    if blake3::hash(&bytes[..body_end]).as_bytes() != &bytes[body_end..total] {
        return Err("index checksum mismatch".into());
    }
    let mut c = Cursor {
        bytes: &bytes[..body_end],
        pos: c.pos,
    };
    let generation = c.u64()?;
    let last_id = c.u64()? as i64;
    let count = c.u32()?;
    let mut buckets = BTreeMap::new();
    for _ in 0..count {
        let key = c.bucket_key()?;
        let glen = usize::try_from(c.u64()?).map_err(|_| "graph too long")?;
        let graph = Hnsw::from_bytes(c.take(glen)?).map_err(|e| e.to_string())?;
        if buckets.insert(key, graph).is_some() {
            return Err("duplicate bucket".into());
        }
    }
    if c.pos != body_end {
        return Err("trailing bytes in index".into());
    }
    let index = TensorIndex {
        generation,
        last_id,
        buckets,
        pending: Vec::new(),
        on_disk: None,
    };
    Ok((index, total))
}

/// The record at the start of `bytes` when it is whole, intact and follows an index at
/// `generation` whose highest id is `last_id`: (its generation, its inserts, its length).
fn decode_record(
    bytes: &[u8],
    generation: u64,
    last_id: i64,
) -> Option<(u64, Vec<SketchRow>, usize)> {
    let mut c = Cursor { bytes, pos: 0 };
    let len = c.u32().ok()? as usize;
    if len > MAX_RECORD {
        return None;
    }
    let body = c.take(len).ok()?;
    let sum = c.take(RECORD_SUM).ok()?;
    if &blake3::hash(&bytes[..4 + len]).as_bytes()[..RECORD_SUM] != sum {
        return None;
    }
    let mut b = Cursor {
        bytes: body,
        pos: 0,
    };
    let next_generation = b.u64().ok()?;
    let count = b.u32().ok()? as usize;
    // Each insert needs at least an id, a one-byte name, an element count and a sketch.
    if count.checked_mul(18 + PACKED_LEN)? > body.len() {
        return None;
    }
    let mut inserts = Vec::with_capacity(count);
    let mut last = last_id;
    for _ in 0..count {
        let id = b.u64().ok()? as i64;
        let (dtype, elements) = b.bucket_key().ok()?;
        let sketch = Packed::from_bytes(b.take(PACKED_LEN).ok()?)?;
        if id <= last {
            return None;
        }
        last = id;
        inserts.push((id, dtype, elements, sketch));
    }
    let follows = b.pos == body.len() && next_generation > generation;
    follows.then_some((next_generation, inserts, c.pos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use neurstore_core::sketch::SKETCH_DIM;

    fn sk(x: f32) -> Packed {
        let mut v = vec![x; SKETCH_DIM];
        v[0] = x - 1.0;
        Packed::quantize(&v)
    }

    fn rows(ids: std::ops::Range<i64>) -> Vec<SketchRow> {
        ids.map(|i| {
            let dtype = if i % 3 == 0 { DType::BF16 } else { DType::F32 };
            (i, dtype, 10, sk(i as f32 * 0.1))
        })
        .collect()
    }

    /// Applies `write` to `file` as the engine does.
    fn apply(file: &mut Vec<u8>, index: &mut TensorIndex) {
        let write = index.pending_write();
        match &write {
            IndexWrite::Nothing => {}
            IndexWrite::Append { offset, bytes } => {
                assert_eq!(*offset as usize, file.len());
                file.extend_from_slice(bytes);
            }
            IndexWrite::Rewrite(bytes) => *file = bytes.clone(),
        }
        index.written(&write);
    }

    #[test]
    fn encodes_and_detects_damage() {
        let idx = TensorIndex::build(7, &rows(1..4));
        assert_eq!(idx.search(DType::F32, 10, &sk(0.2).values(), 1)[0].0, 2);
        assert!(idx.search(DType::F16, 10, &sk(0.9).values(), 1).is_empty());
        let bytes = idx.encode();
        assert_eq!(TensorIndex::decode(&bytes).unwrap(), idx);
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        assert!(TensorIndex::decode(&bad).is_err());
        assert!(TensorIndex::decode(&bytes[..30]).is_err());
    }

    /// Appended records replay to the index a full build gives; reopening continues the file.
    #[test]
    fn appends_reopens_and_equals_a_build() {
        let all = rows(1..40);
        let mut index = TensorIndex::build(1, &all[..20]);
        let mut file = Vec::new();
        apply(&mut file, &mut index);
        for (step, chunk) in all[20..].chunks(4).enumerate() {
            let mut index_now = TensorIndex::decode(&file).unwrap();
            for (id, dtype, elements, s) in chunk {
                index_now.insert(*id, *dtype, *elements, s);
            }
            index_now.set_generation(2 + step as u64);
            let before = file.len();
            apply(&mut file, &mut index_now);
            let reopened = TensorIndex::decode(&file).unwrap();
            assert_eq!(reopened, index_now);
            let last = 20 + (step + 1) * 4;
            let built = TensorIndex::build(2 + step as u64, &all[..last.min(all.len())]);
            assert_eq!(reopened, built);
            assert!(file.len() > before);
            index = reopened;
        }
        // Nothing new: nothing written.
        assert_eq!(index.pending_write(), IndexWrite::Nothing);
    }

    #[test]
    fn records_are_compacted_once_they_outgrow_the_snapshot() {
        let all = rows(1..200);
        let mut index = TensorIndex::build(1, &all[..10]);
        let mut file = Vec::new();
        apply(&mut file, &mut index);
        let mut rewrites = 0;
        for (i, (id, dtype, elements, s)) in all[10..].iter().enumerate() {
            index.insert(*id, *dtype, *elements, s);
            index.set_generation(2 + i as u64);
            let write = index.pending_write();
            if let IndexWrite::Rewrite(_) = write {
                rewrites += 1;
            }
            apply(&mut file, &mut index);
            let disk = index.on_disk.unwrap();
            assert!(disk.len - disk.snapshot_len <= disk.snapshot_len);
            assert_eq!(disk.len as usize, file.len());
        }
        // Geometric growth: a few rewrites for 190 appends.
        assert!((1..=8).contains(&rewrites), "{rewrites} rewrites");
        assert_eq!(
            TensorIndex::decode(&file).unwrap(),
            TensorIndex::build(index.generation(), &all)
        );
    }

    #[test]
    fn a_torn_or_damaged_tail_is_dropped_and_rewritten() {
        let all = rows(1..30);
        let mut index = TensorIndex::build(1, &all[..20]);
        let mut file = Vec::new();
        apply(&mut file, &mut index);
        let snapshot_len = file.len();
        for (g, chunk) in all[20..].chunks(3).enumerate() {
            for (id, dtype, elements, s) in chunk {
                index.insert(*id, *dtype, *elements, s);
            }
            index.set_generation(2 + g as u64);
            apply(&mut file, &mut index);
        }
        let first_record_end = {
            let len = u32::from_le_bytes(file[snapshot_len..snapshot_len + 4].try_into().unwrap());
            snapshot_len + 4 + len as usize + RECORD_SUM
        };
        let at_first = TensorIndex::build(2, &all[..23]);
        // Torn inside the second record; a flipped byte in it; a zeroed one.
        let torn = file[..first_record_end + 10].to_vec();
        let mut flipped = file.clone();
        flipped[first_record_end + 20] ^= 0x10;
        let mut zeroed = file.clone();
        zeroed[first_record_end..first_record_end + 30].fill(0);
        for damaged in [torn, flipped, zeroed] {
            let loaded = TensorIndex::decode(&damaged).unwrap();
            assert_eq!(loaded, at_first);
            assert!(matches!(loaded.pending_write(), IndexWrite::Rewrite(_)));
        }
        // A record that does not follow (replayed twice) is a dropped tail too.
        let mut replayed = file[..first_record_end].to_vec();
        replayed.extend_from_slice(&file[snapshot_len..first_record_end]);
        assert_eq!(TensorIndex::decode(&replayed).unwrap(), at_first);
    }

    #[test]
    fn a_graph_length_of_2_64_minus_1_is_an_error() {
        let idx = TensorIndex::build(1, &rows(1..2));
        let mut bytes = idx.encode();
        let body = bytes.len() - 32;
        // The graph length of the one bucket: magic, length, generation, last id, count, name.
        let at = 8 + 8 + 8 + 8 + 4 + 1 + 3 + 8;
        bytes[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let sum = *blake3::hash(&bytes[..body]).as_bytes();
        bytes[body..].copy_from_slice(&sum);
        assert_eq!(
            TensorIndex::decode(&bytes),
            Err("index truncated".to_string())
        );
    }
}
