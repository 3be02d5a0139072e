//! One bucket of the similarity index: packed tensor sketches searched by exact scan while few,
//! and through a hierarchical navigable small world graph (Malkov & Yashunin) once the bucket
//! reaches `scan_below`. Deterministic: a node's level comes from a hash of its id, ties break
//! by insertion order, so the same inserts give the same bucket.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashSet};

use crate::codec::CodecError;
use crate::sketch::{PACKED_LEN, Packed, SKETCH_DIM, distance};

/// Graph parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per node above level 0 (level 0 keeps twice as many).
    pub m: usize,
    /// Candidate list size while inserting.
    pub ef_construction: usize,
    /// Candidate list size while searching (at least k).
    pub ef_search: usize,
    /// Below this many vectors there is no graph: a search scans every vector (exact, and at
    /// 128 dimensions faster than the graph up to a few thousand vectors). The graph is built
    /// when the count reaches it, by linking every vector in insertion order, which is the graph
    /// incremental inserts would have built.
    pub scan_below: usize,
}

/// Bucket size from which a graph is built: the measured crossover of exact scan and HNSW
/// query time at 128 dimensions (docs/benchmarks.md, "Sketch and index footprint").
pub const DEFAULT_SCAN_BELOW: usize = 2048;

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 100,
            ef_search: 64,
            scan_below: DEFAULT_SCAN_BELOW,
        }
    }
}

const MAX_LEVEL: usize = 16;
/// Largest `scan_below` a serialized graph may carry.
const MAX_SCAN_BELOW: usize = 1 << 24;

/// One bucket's vectors: scanned while few, an HNSW graph once `scan_below` is reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Hnsw {
    params: HnswParams,
    ids: Vec<u64>,
    /// The sketches as stored; `vectors` holds their dequantized values.
    packed: Vec<Packed>,
    vectors: Vec<f32>,
    /// links[node][level] = neighbour node indices; empty for every node while scanning.
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
    /// An empty bucket of `SKETCH_DIM`-dimensional packed sketches.
    pub fn new(params: HnswParams) -> Self {
        Hnsw {
            params,
            ids: Vec::new(),
            packed: Vec::new(),
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

    /// The parameters.
    pub fn params(&self) -> HnswParams {
        self.params
    }

    /// True once the bucket is a graph (it has reached `scan_below` vectors).
    pub fn is_graph(&self) -> bool {
        self.len() >= self.params.scan_below.max(1)
    }

    fn vector(&self, node: u32) -> &[f32] {
        &self.vectors[node as usize * SKETCH_DIM..(node as usize + 1) * SKETCH_DIM]
    }

    fn max_links(&self, level: usize) -> usize {
        if level == 0 {
            2 * self.params.m
        } else {
            self.params.m
        }
    }

    /// Adds a sketch under `id`. While the bucket is below `scan_below` it is only stored;
    /// reaching it links every node in insertion order; past it each new node is linked.
    pub fn insert(&mut self, id: u64, sketch: &Packed) {
        self.ids.push(id);
        self.packed.push(*sketch);
        self.vectors.extend_from_slice(&sketch.values());
        self.links.push(Vec::new());
        let n = self.len();
        let threshold = self.params.scan_below.max(1);
        if n < threshold {
            return;
        }
        let first = if n == threshold { 0 } else { n - 1 };
        for node in first..n {
            self.link(node as u32);
        }
    }

    /// Links `node` into the graph of the nodes before it (the HNSW insert).
    fn link(&mut self, node: u32) {
        let level = level_of(self.ids[node as usize], self.params.m);
        self.links[node as usize] = vec![Vec::new(); level + 1];
        let Some(entry) = self.entry else {
            self.entry = Some(node);
            return;
        };
        let v = self.vector(node).to_vec();
        let top = self.links[entry as usize].len() - 1;
        let mut eps = vec![Scored(distance(&v, self.vector(entry)), entry)];
        for lc in (level + 1..=top).rev() {
            eps = self.search_layer(&v, &eps, 1, lc);
        }
        for lc in (0..=level.min(top)).rev() {
            let found = self.search_layer(&v, &eps, self.params.ef_construction, lc);
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

    /// The `k` nearest ids to `q` with their squared distances, nearest first. Exact (a scan)
    /// while the bucket is below `scan_below`; through the graph from then on.
    pub fn search(&self, q: &[f32], k: usize) -> Vec<(u64, f32)> {
        let Some(entry) = self.entry.filter(|_| self.is_graph()) else {
            return self.brute_force(q, k);
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

    /// Exact nearest neighbours by scanning every vector, ties to the earlier insert.
    pub fn brute_force(&self, q: &[f32], k: usize) -> Vec<(u64, f32)> {
        let mut best: BinaryHeap<Scored> = BinaryHeap::with_capacity(k.min(self.len()) + 1);
        if k > 0 {
            for (node, v) in self.vectors.chunks_exact(SKETCH_DIM).enumerate() {
                let d = Scored(distance(q, v), node as u32);
                if best.len() < k {
                    best.push(d);
                } else if d < *best.peek().expect("k > 0") {
                    best.pop();
                    best.push(d);
                }
            }
        }
        best.into_sorted_vec()
            .into_iter()
            .map(|s| (self.ids[s.1 as usize], s.0))
            .collect()
    }

    /// Serializes the bucket (little-endian): u32 dimension, M, efConstruction, efSearch,
    /// scan_below, u64 node count, u32 entry node (`u32::MAX` without a graph), then per node
    /// {u64 id, packed sketch} and, once a graph, {u8 top level, per level {u32 link count,
    /// u32 node indices}}.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [
            SKETCH_DIM,
            self.params.m,
            self.params.ef_construction,
            self.params.ef_search,
            self.params.scan_below,
        ] {
            out.extend_from_slice(&(v as u32).to_le_bytes());
        }
        out.extend_from_slice(&(self.len() as u64).to_le_bytes());
        let graph = self.is_graph();
        let entry = self.entry.filter(|_| graph).unwrap_or(u32::MAX);
        out.extend_from_slice(&entry.to_le_bytes());
        for node in 0..self.len() {
            out.extend_from_slice(&self.ids[node].to_le_bytes());
            out.extend_from_slice(self.packed[node].as_bytes());
            if graph {
                out.push((self.links[node].len() - 1) as u8);
                for level in &self.links[node] {
                    out.extend_from_slice(&(level.len() as u32).to_le_bytes());
                    for n in level {
                        out.extend_from_slice(&n.to_le_bytes());
                    }
                }
            }
        }
        out
    }

    /// Parses a serialized bucket, checking every count and index against the input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader { bytes, pos: 0 };
        let dim = r.u32()? as usize;
        let params = HnswParams {
            m: r.u32()? as usize,
            ef_construction: r.u32()? as usize,
            ef_search: r.u32()? as usize,
            scan_below: r.u32()? as usize,
        };
        if dim != SKETCH_DIM
            || params.m == 0
            || params.m > 1024
            || params.scan_below > MAX_SCAN_BELOW
        {
            return Err(CodecError::corrupt("bad graph parameters"));
        }
        let n = r.u64()?;
        let entry = r.u32()?;
        // Each node needs at least its id and sketch: bound n before allocating.
        let per_node = (8 + PACKED_LEN) as u64;
        if n.checked_mul(per_node)
            .is_none_or(|need| need > r.remaining() as u64)
        {
            return Err(CodecError::corrupt("node count exceeds the graph's bytes"));
        }
        let n = n as usize;
        let mut g = Hnsw::new(params);
        let graph = n >= params.scan_below.max(1);
        for _ in 0..n {
            g.ids.push(r.u64()?);
            let sketch = Packed::from_bytes(r.take(PACKED_LEN)?)
                .ok_or_else(|| CodecError::corrupt("malformed sketch"))?;
            g.packed.push(sketch);
            g.vectors.extend_from_slice(&sketch.values());
            g.links
                .push(if graph { r.levels(&g, n)? } else { Vec::new() });
        }
        if r.remaining() != 0 {
            return Err(CodecError::corrupt("trailing bytes after the graph"));
        }
        g.entry = match (entry, graph) {
            (u32::MAX, false) => None,
            (e, true) if (e as usize) < n => Some(e),
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
    /// One node's links: u8 top level, then per level a u32 count and that many node indices
    /// below `n`, at most `g.max_links(level)` of them.
    fn levels(&mut self, g: &Hnsw, n: usize) -> Result<Vec<Vec<u32>>, CodecError> {
        let level = self.u8()? as usize;
        if level > MAX_LEVEL {
            return Err(CodecError::corrupt("node level out of range"));
        }
        let mut levels = Vec::with_capacity(level + 1);
        for lc in 0..=level {
            let count = self.u32()? as usize;
            if count > g.max_links(lc) {
                return Err(CodecError::corrupt("too many links"));
            }
            let mut links = Vec::with_capacity(count);
            for _ in 0..count {
                let nb = self.u32()?;
                if nb as usize >= n {
                    return Err(CodecError::corrupt("link to a missing node"));
                }
                links.push(nb);
            }
            levels.push(links);
        }
        Ok(levels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn random_vectors(n: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut s = seed;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        (0..n)
            .map(|_| (0..SKETCH_DIM).map(|_| next()).collect())
            .collect()
    }

    fn params(scan_below: usize) -> HnswParams {
        HnswParams {
            m: 4,
            ef_construction: 20,
            ef_search: 10,
            scan_below,
        }
    }

    fn bucket(data: &[Vec<f32>], params: HnswParams) -> Hnsw {
        let mut g = Hnsw::new(params);
        for (i, v) in data.iter().enumerate() {
            g.insert(i as u64 * 3 + 1, &Packed::quantize(v));
        }
        g
    }

    #[test]
    fn recall_at_1_against_brute_force() {
        let data = random_vectors(2000, 7);
        let g = bucket(
            &data,
            HnswParams {
                scan_below: 0,
                ..HnswParams::default()
            },
        );
        assert!(g.is_graph());
        let queries = random_vectors(200, 99);
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

    /// Below `scan_below` a search is the brute force, results and order included; at it the
    /// bucket becomes the graph that inserting with no scan phase builds.
    #[test]
    fn scans_below_the_threshold_and_builds_the_same_graph_at_it() {
        let data = random_vectors(120, 5);
        let queries = random_vectors(30, 6);
        let mut g = Hnsw::new(params(100));
        let always = bucket(&data[..100], params(0));
        for (i, v) in data.iter().enumerate() {
            g.insert(i as u64 * 3 + 1, &Packed::quantize(v));
            if i + 1 < 100 {
                assert!(!g.is_graph());
                for q in &queries {
                    assert_eq!(g.search(q, 4), g.brute_force(q, 4));
                }
            }
            if i + 1 == 100 {
                assert!(g.is_graph());
                assert_eq!(g.links, always.links);
                assert_eq!(g.entry, always.entry);
            }
        }
        // Brute force agrees with a plain sort, ties to the earlier insert.
        let mut dup = Hnsw::new(params(1000));
        let p = Packed::quantize(&data[0]);
        dup.insert(9, &p);
        dup.insert(4, &p);
        dup.insert(7, &Packed::quantize(&data[1]));
        let found = dup.search(&data[0], 2);
        assert_eq!((found[0].0, found[1].0), (9, 4));
        assert!(dup.search(&data[0], 0).is_empty());
    }

    #[test]
    fn serializes_exactly_and_deterministically() {
        let data = random_vectors(300, 3);
        for scan_below in [0, 50, 1000] {
            let g = bucket(&data, params(scan_below));
            assert_eq!(g.to_bytes(), bucket(&data, params(scan_below)).to_bytes());
            let back = Hnsw::from_bytes(&g.to_bytes()).unwrap();
            assert_eq!(back, g);
            assert!(Hnsw::from_bytes(&g.to_bytes()[..100]).is_err());
        }
        let empty = Hnsw::new(HnswParams::default());
        assert_eq!(Hnsw::from_bytes(&empty.to_bytes()).unwrap(), empty);
    }

    #[test]
    fn a_scanned_bucket_with_an_entry_point_is_refused() {
        let g = bucket(&random_vectors(3, 1), params(10));
        let mut b = g.to_bytes();
        b[28..32].copy_from_slice(&0u32.to_le_bytes());
        assert!(Hnsw::from_bytes(&b).is_err());
    }

    proptest! {
        #[test]
        fn parser_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Hnsw::from_bytes(&bytes);
        }
    }
}
