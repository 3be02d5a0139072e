//! Reconstructing objects: checksum-verified reads, codec decoding, delta chains resolved
//! through their bases, and a bounded cache of decoded bases shared by every read.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use neurstore_core::codec::{self, Codec};
use neurstore_core::dtype::DType;
use neurstore_storage::StorageError;
use neurstore_storage::catalog::{ObjectKind, ObjectRow, Queries};

use crate::Store;
use crate::error::Result;
use crate::export::TensorData;

/// Longest base chain followed before the data is declared corrupt (a cycle, say). Writers keep
/// chains far shorter (`PutOptions::max_chain_depth`).
pub(crate) const MAX_CHAIN: u32 = 64;

/// Decoded base objects, evicted oldest first past a byte budget.
pub(crate) struct BaseCache {
    budget: u64,
    used: u64,
    entries: HashMap<i64, Arc<Vec<u8>>>,
    order: VecDeque<i64>,
}

impl BaseCache {
    pub(crate) fn new(budget: u64) -> Self {
        BaseCache {
            budget,
            used: 0,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, id: i64) -> Option<Arc<Vec<u8>>> {
        self.entries.get(&id).cloned()
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

fn dtype_of(o: &ObjectRow) -> DType {
    match o.kind {
        ObjectKind::Tensor { dtype } => dtype,
        ObjectKind::File => DType::U8,
    }
}

impl Store {
    /// Reads and decodes one object, resolving its base chain; `what` names it in errors.
    pub(crate) fn decode_object(&self, object: &ObjectRow, what: &str) -> Result<TensorData> {
        self.decode_at_depth(object, what, 0)
    }

    fn decode_at_depth(&self, object: &ObjectRow, what: &str, depth: u32) -> Result<TensorData> {
        if depth > MAX_CHAIN {
            return Err(StorageError::corrupt(
                what,
                format!("base chain longer than {MAX_CHAIN} (a cycle?)"),
            )
            .into());
        }
        let stored = self.engine.read_blob(object, what)?;
        if object.codec == Codec::Raw {
            return Ok(TensorData::Stored(stored));
        }
        let base = match object.base {
            Some(base_id) => Some(self.base_bytes(base_id, what, depth + 1)?),
            None => None,
        };
        let mut out = vec![0u8; object.raw_len as usize];
        codec::decode_with_base(
            object.codec,
            dtype_of(object),
            &stored,
            base.as_deref().map(|b| b.as_slice()),
            &mut out,
        )
        .map_err(|e| StorageError::corrupt(what, format!("cannot decode: {e}")))?;
        Ok(TensorData::Decoded(out))
    }

    /// The decoded bytes of a base object, from the cache when there.
    pub(crate) fn base_bytes(&self, base_id: i64, what: &str, depth: u32) -> Result<Arc<Vec<u8>>> {
        if let Some(hit) = self
            .base_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(base_id)
        {
            return Ok(hit);
        }
        let base = self.engine.read(|q| q.object(base_id))?.ok_or_else(|| {
            StorageError::corrupt(what, format!("base object {base_id} is missing"))
        })?;
        let bytes =
            match self.decode_at_depth(&base, &format!("{what} (base object {base_id})"), depth)? {
                TensorData::Decoded(v) => v,
                TensorData::Stored(b) => b.to_vec(),
            };
        let bytes = Arc::new(bytes);
        self.base_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(base_id, bytes.clone());
        Ok(bytes)
    }
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
}
