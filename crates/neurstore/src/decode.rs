//! Reconstructing objects: checksum-verified reads, codec decoding, delta chains resolved
//! through their bases, and a bounded cache of decoded bases shared by every read.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use neurstore_core::codec::{self, Codec};
use neurstore_core::dtype::DType;
use neurstore_core::key::{Digest, file_key, tensor_key};
use neurstore_storage::StorageError;
use neurstore_storage::catalog::{ObjectKind, ObjectRow, Queries};
use neurstore_storage::pack::BlobBytes;

use crate::Store;
use crate::error::Result;

/// Longest base chain followed before the data is declared corrupt (a cycle, say). Writers keep
/// chains within it (`PutOptions::max_chain_depth` is at most this).
pub(crate) const MAX_CHAIN: u32 = 64;

/// Decoded base objects, evicted oldest first past a byte budget.
pub(crate) struct BaseCache {
    budget: u64,
    used: u64,
    entries: HashMap<i64, Arc<Vec<u8>>>,
    order: VecDeque<i64>,
    stats: BaseCacheStats,
}

/// Counters of the cache of decoded base objects shared by every read of a [`Store`] handle
/// (see `Store::base_cache_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BaseCacheStats {
    /// Base lookups served from the cache.
    pub hits: u64,
    /// Base lookups that had to read and decode the base.
    pub misses: u64,
    /// Bytes of base objects decoded on misses.
    pub decoded_bytes: u64,
    /// Bases held now.
    pub entries: u64,
    /// Bytes held now.
    pub held_bytes: u64,
}

impl BaseCache {
    pub(crate) fn new(budget: u64) -> Self {
        BaseCache {
            budget,
            used: 0,
            entries: HashMap::new(),
            order: VecDeque::new(),
            stats: BaseCacheStats::default(),
        }
    }

    fn get(&self, id: i64) -> Option<Arc<Vec<u8>>> {
        self.entries.get(&id).cloned()
    }

    pub(crate) fn stats(&self) -> BaseCacheStats {
        BaseCacheStats {
            entries: self.entries.len() as u64,
            held_bytes: self.used,
            ..self.stats
        }
    }

    fn put(&mut self, id: i64, bytes: Arc<Vec<u8>>) {
        let len = bytes.len() as u64;
        if len > self.budget || self.entries.contains_key(&id) {
            return;
        }
        while self.used + len > self.budget {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(b) = self.entries.remove(&old) {
                self.used -= b.len() as u64;
            }
        }
        self.used += len;
        self.entries.insert(id, bytes);
        self.order.push_back(id);
    }
}

/// Whether a base decoded on a cache miss is kept in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fill {
    Yes,
    No,
}

/// A tensor object's element type (`None` for a file's bytes).
pub(crate) fn tensor_dtype(kind: ObjectKind) -> Option<DType> {
    match kind {
        ObjectKind::Tensor { dtype } => Some(dtype),
        ObjectKind::File => None,
    }
}

/// The element type an object is decoded as: a file's bytes as `U8`.
fn dtype_of(o: &ObjectRow) -> DType {
    tensor_dtype(o.kind).unwrap_or(DType::U8)
}

impl Store {
    /// Reads and decodes one object, resolving its base chain; `what` names it in errors.
    pub(crate) fn decode_object(&self, object: &ObjectRow, what: &str) -> Result<TensorData> {
        self.decode_at_depth(object, what, 0, Fill::Yes)
    }

    /// [`Store::decode_object`], filling the base cache or not (`get` reads through the cache
    /// without filling it: a one-pass export would hold a second copy of the base model).
    pub(crate) fn decode_object_with(
        &self,
        object: &ObjectRow,
        what: &str,
        fill: Fill,
    ) -> Result<TensorData> {
        self.decode_at_depth(object, what, 0, fill)
    }

    fn decode_at_depth(
        &self,
        object: &ObjectRow,
        what: &str,
        depth: u32,
        fill: Fill,
    ) -> Result<TensorData> {
        check_depth(what, depth)?;
        let stored = self.engine.read_blob(object, what)?;
        if object.codec == Codec::Raw {
            return Ok(TensorData::Stored(stored));
        }
        let mut out = zeroed(object.raw_len).ok_or_else(|| {
            StorageError::io(
                format!("{what}: decoding {} bytes", object.raw_len),
                std::io::ErrorKind::OutOfMemory.into(),
            )
        })?;
        self.decode_stored(object, &stored, what, depth, fill, &mut out)?;
        Ok(TensorData::Decoded(out))
    }

    /// Reads and decodes one object into `out` (exactly its raw length), resolving its base
    /// chain; a raw object's verified bytes are copied. For one-pass exports: the blob's mapped
    /// pages are released afterwards.
    pub(crate) fn decode_object_into(
        &self,
        object: &ObjectRow,
        what: &str,
        fill: Fill,
        out: &mut [u8],
    ) -> Result<()> {
        let stored = self.engine.read_blob(object, what)?;
        if object.raw_len != out.len() as u64 {
            return Err(StorageError::corrupt(what, "raw length disagrees with the buffer").into());
        }
        self.decode_stored(object, &stored, what, 0, fill, out)?;
        release(&stored);
        Ok(())
    }

    /// Decodes checksum-verified `stored` bytes of `object` into `out` and, for an object
    /// decoded against a base, checks the result against its key.
    fn decode_stored(
        &self,
        object: &ObjectRow,
        stored: &[u8],
        what: &str,
        depth: u32,
        fill: Fill,
        out: &mut [u8],
    ) -> Result<()> {
        let base = match object.base {
            Some(base_id) => Some(self.base_bytes_with(base_id, what, depth + 1, fill)?),
            None => None,
        };
        codec::decode_with_base(
            object.codec,
            dtype_of(object),
            stored,
            base.as_deref().map(|b| b.as_slice()),
            out,
        )
        .map_err(|e| StorageError::corrupt(what, format!("cannot decode: {e}")))?;
        // In format 1 the stored checksum does not cover which base a blob is decoded against:
        // check the result against its key, so a damaged base reference is never served. In
        // format 2 the verified record seals the base's key, which the base's own verified
        // record seals in turn.
        if object.base.is_some() && !self.engine.seals_bases() {
            let key = match object.kind {
                ObjectKind::Tensor { dtype } => tensor_key(dtype, &object.shape, out),
                ObjectKind::File => file_key(out),
            };
            check_key(object, &key, what)?;
        }
        Ok(())
    }

    /// The decoded bytes of a base object, from the cache when there.
    pub(crate) fn base_bytes(&self, base_id: i64, what: &str, depth: u32) -> Result<Arc<Vec<u8>>> {
        self.base_bytes_with(base_id, what, depth, Fill::Yes)
    }

    /// [`Store::base_bytes`]; with `Fill::No` a miss is decoded but not kept.
    pub(crate) fn base_bytes_with(
        &self,
        base_id: i64,
        what: &str,
        depth: u32,
        fill: Fill,
    ) -> Result<Arc<Vec<u8>>> {
        {
            let mut cache = self.base_cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(hit) = cache.get(base_id) {
                cache.stats.hits += 1;
                return Ok(hit);
            }
            cache.stats.misses += 1;
        }
        let base = self.engine.read(|q| q.object(base_id))?.ok_or_else(|| {
            StorageError::corrupt(what, format!("base object {base_id} is missing"))
        })?;
        let bytes = match self.decode_at_depth(
            &base,
            &format!("{what} (base object {base_id})"),
            depth,
            fill,
        )? {
            TensorData::Decoded(v) => v,
            TensorData::Stored(b) => b.to_vec(),
        };
        let bytes = Arc::new(bytes);
        let mut cache = self.base_cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.stats.decoded_bytes += bytes.len() as u64;
        if fill == Fill::Yes {
            cache.put(base_id, bytes.clone());
        }
        Ok(bytes)
    }
}

/// The base of a tensor streamed by `get`: decoded whole (from the cache, or an object whose own
/// base chain must be resolved), or a standalone object read (checksum-verified) but not yet
/// decoded, for decoding block by block alongside the tensor.
pub(crate) enum StreamBase {
    /// Decoded bytes.
    Whole(Arc<Vec<u8>>),
    /// A standalone raw, grouped or bounded (quantized) tensor object and its stored bytes.
    Stored(Box<ObjectRow>, BlobBytes),
}

impl Store {
    /// The base `base_id` of a tensor streamed by `get` (see [`StreamBase`]); like
    /// [`Store::base_bytes_with`] with `Fill::No`, a cache hit is used and a miss is counted.
    pub(crate) fn stream_base(&self, base_id: i64, what: &str) -> Result<StreamBase> {
        {
            let mut cache = self.base_cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(hit) = cache.get(base_id) {
                cache.stats.hits += 1;
                return Ok(StreamBase::Whole(hit));
            }
        }
        let base = self.engine.read(|q| q.object(base_id))?.ok_or_else(|| {
            StorageError::corrupt(what, format!("base object {base_id} is missing"))
        })?;
        // Only a base without a base of its own is decoded by ranges alongside the tensor.
        let streamable = base.base.is_none() && base.codec.ranged(tensor_dtype(base.kind), false);
        if !streamable {
            return Ok(StreamBase::Whole(self.base_bytes_with(
                base_id,
                what,
                1,
                Fill::No,
            )?));
        }
        let stored = self
            .engine
            .read_blob(&base, &format!("{what} (base object {base_id})"))?;
        let mut cache = self.base_cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.stats.misses += 1;
        cache.stats.decoded_bytes += base.raw_len;
        Ok(StreamBase::Stored(Box::new(base), stored))
    }
}

fn check_depth(what: &str, depth: u32) -> Result<()> {
    if depth > MAX_CHAIN {
        return Err(StorageError::corrupt(
            what,
            format!("base chain longer than {MAX_CHAIN} (a cycle?)"),
        )
        .into());
    }
    Ok(())
}

/// Errs unless `key`, computed over an object's decoded bytes, is its recorded `decoded_key`.
pub(crate) fn check_key(object: &ObjectRow, key: &Digest, what: &str) -> Result<()> {
    if *key != object.decoded_key {
        return Err(StorageError::corrupt(
            what,
            format!(
                "decoded content does not match its key (decoded against base object {})",
                object.base.unwrap_or_default()
            ),
        )
        .into());
    }
    Ok(())
}

/// A zeroed buffer of `len` bytes, or `None` when it cannot be allocated (a length from the
/// catalog too large for this machine, damaged or not): an error for the caller rather than the
/// abort of `vec![0; len]`. Like `vec![0; len]`, it takes zeroed pages from the allocator
/// instead of writing zeros, so a decoder writing every byte touches each page once.
fn zeroed(len: u64) -> Option<Vec<u8>> {
    let len = usize::try_from(len).ok()?;
    if len == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<u8>(len).ok()?;
    // SAFETY: the layout has a non-zero size. A non-null pointer comes from the global
    // allocator with exactly the layout a `Vec<u8>` of capacity `len` uses, and `alloc_zeroed`
    // initialized all `len` bytes, so the vector owns valid, initialized memory.
    let v = unsafe {
        let p = std::alloc::alloc_zeroed(layout);
        (!p.is_null()).then(|| Vec::from_raw_parts(p, len, len))
    }?;
    populate(&v);
    Some(v)
}

/// Buffers from this size on are faulted in with one call before decoding.
const POPULATE_BYTES: usize = 256 << 10;

/// Asks the kernel to back a large fresh buffer with pages now, in one call, instead of one
/// page fault per 4 KiB page as the decoder first writes it (the faults were a quarter of a
/// one-thread decode). Advisory: on kernels without `MADV_POPULATE_WRITE` nothing happens.
fn populate(buf: &[u8]) {
    #[cfg(target_os = "linux")]
    if buf.len() >= POPULATE_BYTES {
        unsafe extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        const MADV_POPULATE_WRITE: i32 = 23;
        const PAGE: usize = 4096;
        let start = buf.as_ptr() as usize;
        let aligned = start.next_multiple_of(PAGE);
        let end = (start + buf.len()) / PAGE * PAGE;
        if end > aligned {
            // SAFETY: the range lies inside `buf`, which this process owns; populating pages
            // does not change their contents (they are zero either way).
            let _ = unsafe {
                madvise(
                    aligned as *mut std::ffi::c_void,
                    end - aligned,
                    MADV_POPULATE_WRITE,
                )
            };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

/// A loaded tensor's bytes.
pub enum TensorData {
    /// Stored bytes (raw codec), possibly a view of a mapped pack file.
    Stored(BlobBytes),
    /// Decoded bytes.
    Decoded(Vec<u8>),
}

impl std::ops::Deref for TensorData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            TensorData::Stored(b) => b,
            TensorData::Decoded(v) => v,
        }
    }
}

/// Drops this process's mapping of a blob's pages once a one-pass export has used them (they
/// stay in the page cache): the export's resident memory then does not grow with the model.
pub(crate) fn release(blob: &BlobBytes) {
    release_range(blob, 0..blob.len());
}

/// [`release`] for bytes `sub` of a blob.
pub(crate) fn release_range(blob: &BlobBytes, sub: std::ops::Range<usize>) {
    #[cfg(unix)]
    if let BlobBytes::Mapped(map, range) = blob {
        let (s, e) = (
            range.start + sub.start,
            (range.start + sub.end).min(range.end),
        );
        if s >= e {
            return;
        }
        let start = s - s % 4096;
        // SAFETY: pack bytes below the committed length never change while the pack exists (a
        // store invariant), and pages of a read-only shared file mapping dropped here are
        // faulted back from the file, so every reader of this map, on any thread, keeps
        // seeing the same bytes.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, e - start)
        };
    }
    #[cfg(not(unix))]
    let _ = (blob, sub);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_evicts_oldest_within_budget() {
        let mut c = BaseCache::new(10);
        c.put(1, Arc::new(vec![0; 4]));
        c.put(2, Arc::new(vec![0; 4]));
        c.put(3, Arc::new(vec![0; 4]));
        assert!(c.get(1).is_none());
        assert!(c.get(2).is_some() && c.get(3).is_some());
        c.put(4, Arc::new(vec![0; 11]));
        assert!(c.get(4).is_none());
    }

    #[test]
    fn impossible_buffers_are_refused_not_aborted() {
        assert_eq!(zeroed(0), Some(Vec::new()));
        assert_eq!(zeroed(3), Some(vec![0; 3]));
        assert!(zeroed(1 << 62).is_none());
        assert!(zeroed(u64::MAX).is_none());
    }
}
