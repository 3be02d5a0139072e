//! A hierarchical navigable small world graph (Malkov & Yashunin) over tensor sketches, and the
//! index file that holds one graph per bucket. Deterministic: a node's level comes from a hash of
//! its id, ties break by insertion order, so the same inserts give the same graph.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashSet};

use crate::codec::CodecError;
use crate::sketch::distance;

/// Graph parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per node above level 0 (level 0 keeps twice as many).
    pub m: usize,
    /// Candidate list size while inserting.
    pub ef_construction: usize,
    /// Candidate list size while searching (at least k).
    pub ef_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 100,
            ef_search: 64,
        }
    }
}

const MAX_LEVEL: usize = 16;

/// One graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Hnsw {
    params: HnswParams,
    dim: usize,
    ids: Vec<u64>,
    vectors: Vec<f32>,
    /// links[node][level] = neighbour node indices.
    links: Vec<Vec<Vec<u32>>>,
    entry: Option<u32>,
}

#[derive(Clone, Copy, PartialEq)]
struct Scored(f32, u32);
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scored {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
    }
}

fn level_of(id: u64, m: usize) -> usize {
    // splitmix64 of the id -> uniform in (0, 1].
    let mut z = id.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let u = ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    ((-u.ln() / (m.max(2) as f64).ln()) as usize).min(MAX_LEVEL)
}

impl Hnsw {
    /// An empty graph of `dim`-dimensional vectors.
    pub fn new(dim: usize, params: HnswParams) -> Self {
        Hnsw {
            params,
            dim,
            ids: Vec::new(),
            vectors: Vec::new(),
            links: Vec::new(),
            entry: None,
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn vector(&self, node: u32) -> &[f32] {
        &self.vectors[node as usize * self.dim..(node as usize + 1) * self.dim]
    }

    fn max_links(&self, level: usize) -> usize {
        if level == 0 {
            2 * self.params.m
        } else {
            self.params.m
        }
    }

    /// Adds vector `v` (of the graph's dimension) under `id`.
    pub fn insert(&mut self, id: u64, v: &[f32]) {
        assert_eq!(v.len(), self.dim, "sketch dimension");
        let node = self.ids.len() as u32;
        let level = level_of(id, self.params.m);
        self.ids.push(id);
        self.vectors.extend_from_slice(v);
        self.links.push(vec![Vec::new(); level + 1]);
        let Some(entry) = self.entry else {
            self.entry = Some(node);
            return;
        };
        let top = self.links[entry as usize].len() - 1;
        let mut eps = vec![Scored(distance(v, self.vector(entry)), entry)];
        for lc in (level + 1..=top).rev() {
            eps = self.search_layer(v, &eps, 1, lc);
        }
        for lc in (0..=level.min(top)).rev() {
            let found = self.search_layer(v, &eps, self.params.ef_construction, lc);
            let chosen = self.select_diverse(&found, self.max_links(lc));
            for &nb in &chosen {
                self.links[nb as usize][lc].push(node);
                if self.links[nb as usize][lc].len() > self.max_links(lc) {
                    self.shrink(nb, lc);
                }
            }
            self.links[node as usize][lc] = chosen;
            eps = found;
        }
        if level > top {
            self.entry = Some(node);
        }
    }

    fn shrink(&mut self, node: u32, level: usize) {
        let base = self.vector(node).to_vec();
        let mut scored: Vec<Scored> = self.links[node as usize][level]
            .iter()
            .map(|&n| Scored(distance(&base, self.vector(n)), n))
            .collect();
        scored.sort();
        self.links[node as usize][level] = self.select_diverse(&scored, self.max_links(level));
    }

    /// The neighbour selection heuristic of the HNSW paper (Algorithm 4): from candidates sorted
    /// by distance to a point, keep one only if it is closer to the point than to every
    /// neighbour already kept. Without it, tight clusters (a tensor and its fine-tunes) link only
    /// among themselves and become islands the search cannot reach.
    fn select_diverse(&self, sorted: &[Scored], max: usize) -> Vec<u32> {
        let mut kept: Vec<u32> = Vec::with_capacity(max);
        for cand in sorted {
            if kept.len() == max {
                break;
            }
            let v = self.vector(cand.1);
            if kept.iter().all(|&k| distance(v, self.vector(k)) > cand.0) {
                kept.push(cand.1);
            }
        }
        kept
    }

    /// The `ef` closest nodes found from `entry_points` at `level`, closest first.
    fn search_layer(
        &self,
        q: &[f32],
        entry_points: &[Scored],
        ef: usize,
        level: usize,
    ) -> Vec<Scored> {
        let mut visited: HashSet<u32> = entry_points.iter().map(|s| s.1).collect();
        let mut candidates: BinaryHeap<Reverse<Scored>> =
            entry_points.iter().map(|&s| Reverse(s)).collect();
        let mut best: BinaryHeap<Scored> = entry_points.iter().copied().collect();
        while best.len() > ef {
            best.pop();
        }
        while let Some(Reverse(current)) = candidates.pop() {
            if best.len() >= ef && current.0 > best.peek().expect("non-empty").0 {
                break;
            }
            for &nb in self.links[current.1 as usize]
                .get(level)
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                if !visited.insert(nb) {
                    continue;
                }
                let d = Scored(distance(q, self.vector(nb)), nb);
                if best.len() < ef || d < *best.peek().expect("non-empty") {
                    candidates.push(Reverse(d));
                    best.push(d);
                    if best.len() > ef {
                        best.pop();
                    }
                }
            }
        }
        let mut out = best.into_vec();
        out.sort();
        out
    }

    /// The `k` nearest ids to `q` with their squared distances, nearest first.
    pub fn search(&self, q: &[f32], k: usize) -> Vec<(u64, f32)> {
        let Some(entry) = self.entry else {
            return Vec::new();
        };
        let top = self.links[entry as usize].len() - 1;
        let mut eps = vec![Scored(distance(q, self.vector(entry)), entry)];
        for lc in (1..=top).rev() {
            eps = self.search_layer(q, &eps, 1, lc);
        }
        let found = self.search_layer(q, &eps, self.params.ef_search.max(k), 0);
        found
            .into_iter()
            .take(k)
            .map(|s| (self.ids[s.1 as usize], s.0))
            .collect()
    }

    /// Exact nearest neighbours by scanning every vector (for recall measurements).
    pub fn brute_force(&self, q: &[f32], k: usize) -> Vec<(u64, f32)> {
        let mut all: Vec<Scored> = (0..self.len() as u32)
            .map(|n| Scored(distance(q, self.vector(n)), n))
            .collect();
        all.sort();
        all.into_iter()
            .take(k)
            .map(|s| (self.ids[s.1 as usize], s.0))
            .collect()
    }

    /// Serializes the graph (little-endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [
            self.dim,
            self.params.m,
            self.params.ef_construction,
            self.params.ef_search,
        ] {
            out.extend_from_slice(&(v as u32).to_le_bytes());
        }
        out.extend_from_slice(&(self.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.entry.unwrap_or(u32::MAX).to_le_bytes());
        for node in 0..self.len() {
            out.extend_from_slice(&self.ids[node].to_le_bytes());
            out.push((self.links[node].len() - 1) as u8);
            for v in self.vector(node as u32) {
                out.extend_from_slice(&v.to_le_bytes());
            }
            for level in &self.links[node] {
                out.extend_from_slice(&(level.len() as u32).to_le_bytes());
                for n in level {
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
        out
    }

    /// Parses a serialized graph, checking every count and index against the input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader { bytes, pos: 0 };
        let dim = r.u32()? as usize;
        let params = HnswParams {
            m: r.u32()? as usize,
            ef_construction: r.u32()? as usize,
            ef_search: r.u32()? as usize,
        };
        if dim == 0 || dim > 4096 || params.m == 0 || params.m > 1024 {
            return Err(CodecError::corrupt("bad graph parameters"));
        }
        let n = r.u64()?;
        let entry = r.u32()?;
        // Each node needs at least 8 + 1 + 4·dim + 4 bytes: bound n before allocating.
        if n.checked_mul(13 + 4 * dim as u64)
            .is_none_or(|need| need > r.remaining() as u64)
        {
            return Err(CodecError::corrupt("node count exceeds the graph's bytes"));
        }
        let n = n as usize;
        let mut g = Hnsw::new(dim, params);
        for _ in 0..n {
            g.ids.push(r.u64()?);
            let level = r.u8()? as usize;
            if level > MAX_LEVEL {
                return Err(CodecError::corrupt("node level out of range"));
            }
            for _ in 0..dim {
                let v = f32::from_le_bytes(r.take(4)?.try_into().unwrap());
                if !v.is_finite() {
                    return Err(CodecError::corrupt("non-finite sketch value"));
                }
                g.vectors.push(v);
            }
            let mut levels = Vec::with_capacity(level + 1);
            for lc in 0..=level {
                let count = r.u32()? as usize;
                if count > g.max_links(lc) {
                    return Err(CodecError::corrupt("too many links"));
                }
                let mut links = Vec::with_capacity(count);
                for _ in 0..count {
                    let nb = r.u32()?;
                    if nb as usize >= n {
                        return Err(CodecError::corrupt("link to a missing node"));
                    }
                    links.push(nb);
                }
                levels.push(links);
            }
            g.links.push(levels);
        }
        if r.remaining() != 0 {
            return Err(CodecError::corrupt("trailing bytes after the graph"));
        }
        g.entry = match (entry, n) {
            (u32::MAX, 0) => None,
            (e, _) if (e as usize) < n => Some(e),
            _ => return Err(CodecError::corrupt("bad entry point")),
        };
        // Every link must point to a node that has that level.
        for node in &g.links {
            for (lc, links) in node.iter().enumerate() {
                if links.iter().any(|&nb| g.links[nb as usize].len() <= lc) {
                    return Err(CodecError::corrupt("link above a node's level"));
                }
            }
        }
        Ok(g)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| CodecError::corrupt("graph truncated"))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn random_vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut s = seed;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        (0..n).map(|_| (0..dim).map(|_| next()).collect()).collect()
    }

    #[test]
    fn recall_at_1_against_brute_force() {
        let data = random_vectors(2000, 32, 7);
        let mut g = Hnsw::new(32, HnswParams::default());
        for (i, v) in data.iter().enumerate() {
            g.insert(i as u64 * 3 + 1, v);
        }
        let queries = random_vectors(200, 32, 99);
        let hits = queries
            .iter()
            .filter(|q| g.search(q, 1)[0].0 == g.brute_force(q, 1)[0].0)
            .count();
        assert!(
            hits as f64 / 200.0 >= 0.95,
            "recall@1 = {}",
            hits as f64 / 200.0
        );
    }

    #[test]
    fn serializes_exactly_and_deterministically() {
        let data = random_vectors(300, 8, 3);
        let build = || {
            let mut g = Hnsw::new(
                8,
                HnswParams {
                    m: 4,
                    ef_construction: 20,
                    ef_search: 10,
                },
            );
            for (i, v) in data.iter().enumerate() {
                g.insert(i as u64, v);
            }
            g
        };
        let g = build();
        assert_eq!(g.to_bytes(), build().to_bytes());
        let back = Hnsw::from_bytes(&g.to_bytes()).unwrap();
        assert_eq!(back, g);
        assert!(Hnsw::from_bytes(&g.to_bytes()[..100]).is_err());
        let empty = Hnsw::new(8, HnswParams::default());
        assert_eq!(Hnsw::from_bytes(&empty.to_bytes()).unwrap(), empty);
    }

    proptest! {
        #[test]
        fn parser_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Hnsw::from_bytes(&bytes);
        }
    }
}
