//! The tensor similarity index: one HNSW graph per bucket (dtype, element count) over the
//! sketches the catalog records, persisted as `index.hnsw` in the pack namespace.
//!
//! The catalog is the source of truth: the file records the catalog's index generation and a
//! BLAKE3 checksum; a missing, damaged or stale file is rebuilt from the catalog's sketches,
//! inserted in object-id order, which yields the same graph as the incremental inserts did.
//!
//! File layout (little-endian): `"NSINDEX1"`, u64 generation, u64 last object id indexed,
//! u32 bucket count, then per bucket {u8 dtype name length, name, u64 element count, u64 graph
//! length, graph bytes}, then a 32-byte BLAKE3 of everything before it.

use std::collections::BTreeMap;

use neurstore_core::dtype::DType;
use neurstore_core::hnsw::{Hnsw, HnswParams};
use neurstore_core::sketch::SKETCH_DIM;

const MAGIC: &[u8; 8] = b"NSINDEX1";

/// Similarity index over the sketches of objects that may serve as bases.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorIndex {
    generation: u64,
    last_id: i64,
    buckets: BTreeMap<(DType, u64), Hnsw>,
}

impl TensorIndex {
    /// Builds an index from sketches sorted by object id.
    pub fn build(generation: u64, sketches: &[crate::catalog::SketchRow]) -> Self {
        let mut index = TensorIndex {
            generation,
            last_id: 0,
            buckets: BTreeMap::new(),
        };
        for (id, dtype, elements, sketch) in sketches {
            index.insert(*id, *dtype, *elements, sketch);
        }
        index
    }

    /// Adds an object (ids must increase).
    pub fn insert(&mut self, id: i64, dtype: DType, elements: u64, sketch: &[f32]) {
        self.buckets
            .entry((dtype, elements))
            .or_insert_with(|| Hnsw::new(SKETCH_DIM, HnswParams::default()))
            .insert(id as u64, sketch);
        self.last_id = self.last_id.max(id);
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

    /// The `k` objects of the bucket whose sketches are nearest `sketch`, nearest first.
    pub fn search(&self, dtype: DType, elements: u64, sketch: &[f32], k: usize) -> Vec<(i64, f32)> {
        self.buckets
            .get(&(dtype, elements))
            .map(|g| {
                g.search(sketch, k)
                    .into_iter()
                    .map(|(id, d)| (id as i64, d))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The same by scanning the whole bucket (recall measurements).
    pub fn brute_force(
        &self,
        dtype: DType,
        elements: u64,
        sketch: &[f32],
        k: usize,
    ) -> Vec<(i64, f32)> {
        self.buckets
            .get(&(dtype, elements))
            .map(|g| {
                g.brute_force(sketch, k)
                    .into_iter()
                    .map(|(id, d)| (id as i64, d))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Serializes the index with its checksum.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.last_id.to_le_bytes());
        out.extend_from_slice(&(self.buckets.len() as u32).to_le_bytes());
        for ((dtype, elements), graph) in &self.buckets {
            let name = dtype.as_str().as_bytes();
            out.push(name.len() as u8);
            out.extend_from_slice(name);
            out.extend_from_slice(&elements.to_le_bytes());
            let g = graph.to_bytes();
            out.extend_from_slice(&(g.len() as u64).to_le_bytes());
            out.extend_from_slice(&g);
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// Parses an index file; any damage is an error (the caller rebuilds).
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < MAGIC.len() + 20 + 32 {
            return Err("index file truncated".into());
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if blake3::hash(body).as_bytes() != sum {
            return Err("index checksum mismatch".into());
        }
        if &body[..8] != MAGIC {
            return Err("not an index file".into());
        }
        let mut pos = 8usize;
        let mut take = |n: usize| -> Result<&[u8], String> {
            let end = pos.checked_add(n).ok_or("index truncated")?;
            let s = body.get(pos..end).ok_or("index truncated")?;
            pos = end;
            Ok(s)
        };
        let generation = u64::from_le_bytes(take(8)?.try_into().unwrap());
        let last_id = i64::from_le_bytes(take(8)?.try_into().unwrap());
        let count = u32::from_le_bytes(take(4)?.try_into().unwrap());
        let mut buckets = BTreeMap::new();
        for _ in 0..count {
            let len = take(1)?[0] as usize;
            let name = std::str::from_utf8(take(len)?).map_err(|_| "bad dtype name")?;
            let dtype: DType = name.parse().map_err(|_| "unknown dtype")?;
            let elements = u64::from_le_bytes(take(8)?.try_into().unwrap());
            let glen = u64::from_le_bytes(take(8)?.try_into().unwrap());
            let glen = usize::try_from(glen).map_err(|_| "graph too long")?;
            let graph = Hnsw::from_bytes(take(glen)?).map_err(|e| e.to_string())?;
            if buckets.insert((dtype, elements), graph).is_some() {
                return Err("duplicate bucket".into());
            }
        }
        if pos != body.len() {
            return Err("trailing bytes in index".into());
        }
        Ok(TensorIndex {
            generation,
            last_id,
            buckets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_detects_damage() {
        let sk = |x: f32| vec![x; SKETCH_DIM];
        let idx = TensorIndex::build(
            7,
            &[
                (1, DType::F32, 10, sk(0.0)),
                (2, DType::F32, 10, sk(1.0)),
                (3, DType::BF16, 10, sk(0.5)),
            ],
        );
        assert_eq!(idx.search(DType::F32, 10, &sk(0.9), 1)[0].0, 2);
        assert!(idx.search(DType::F16, 10, &sk(0.9), 1).is_empty());
        let bytes = idx.encode();
        assert_eq!(TensorIndex::decode(&bytes).unwrap(), idx);
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        assert!(TensorIndex::decode(&bad).is_err());
        assert!(TensorIndex::decode(&bytes[..30]).is_err());
    }

    #[test]
    fn a_graph_length_of_2_64_minus_1_is_an_error() {
        let idx = TensorIndex::build(1, &[(1, DType::F32, 10, vec![0.0; SKETCH_DIM])]);
        let mut bytes = idx.encode();
        let body = bytes.len() - 32;
        // The graph length of the one bucket: after magic, generation, last id, count, name.
        let at = 8 + 8 + 8 + 4 + 1 + 3 + 8;
        bytes[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let sum = *blake3::hash(&bytes[..body]).as_bytes();
        bytes[body..].copy_from_slice(&sum);
        assert_eq!(
            TensorIndex::decode(&bytes),
            Err("index truncated".to_string())
        );
    }
}
