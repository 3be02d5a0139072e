//! `put`: import a model, storing each distinct tensor and file once.
//!
//! Steps: read and validate every input file; key every tensor and file by content; encode
//! only the contents the store lacks (in parallel, in bounded batches); append them; publish the
//! model in one catalog transaction.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use neurstore_core::codec;
use neurstore_core::key::{Digest, checksum, file_key, tensor_key};
use neurstore_storage::catalog::{FileKind, ModelRow, NewObject, ObjectKind, Queries};
use rayon::prelude::*;
use serde::Serialize;

use crate::error::Result;
use crate::import::{SourceModel, read_source};
use crate::progress::Progress;
use crate::{Store, validate_name};

/// Raw bytes encoded at once before their blobs are appended (bounds memory during `put`).
const BATCH_BYTES: u64 = 64 << 20;

/// Options of `put`.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// User metadata recorded with the model.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// What `put` did.
#[derive(Debug, Clone, Serialize)]
pub struct PutReport {
    /// Model name.
    pub name: String,
    /// Files imported.
    pub files: u64,
    /// Tensors imported.
    pub tensors: u64,
    /// Tensor bytes as imported.
    pub raw_bytes: u64,
    /// Objects (tensors and files) newly stored.
    pub new_objects: u64,
    /// Objects already in the store (exact duplicates), referenced instead.
    pub deduplicated_objects: u64,
    /// Bytes appended to pack files.
    pub stored_bytes_added: u64,
}

/// One tensor or file of the input, keyed by content.
struct Item<'a> {
    key: Digest,
    kind: ObjectKind,
    shape: Vec<u64>,
    raw: &'a [u8],
}

fn items_of(source: &SourceModel) -> Vec<Item<'_>> {
    let mut items = Vec::new();
    for file in &source.files {
        match &file.header {
            Some(header) => {
                items.push(Item {
                    key: [0; 32],
                    kind: ObjectKind::File,
                    shape: vec![],
                    raw: file.header_json(),
                });
                for (i, t) in header.tensors.iter().enumerate() {
                    items.push(Item {
                        key: [0; 32],
                        kind: ObjectKind::Tensor { dtype: t.dtype },
                        shape: t.shape.clone(),
                        raw: file.tensor_bytes(i),
                    });
                }
            }
            None => items.push(Item {
                key: [0; 32],
                kind: ObjectKind::File,
                shape: vec![],
                raw: &file.bytes,
            }),
        }
    }
    items.par_iter_mut().for_each(|item| {
        item.key = match item.kind {
            ObjectKind::Tensor { dtype } => tensor_key(dtype, &item.shape, item.raw),
            ObjectKind::File => file_key(item.raw),
        }
    });
    items
}

impl Store {
    /// Imports the safetensors file or model directory at `path` as model `name`.
    pub fn put(
        &self,
        name: &str,
        path: &Path,
        options: &PutOptions,
        progress: &dyn Progress,
    ) -> Result<PutReport> {
        validate_name(name)?;
        if self.engine.read(|q| q.model(name))?.is_some() {
            return Err(neurstore_storage::StorageError::ModelExists(name.to_string()).into());
        }
        let source = read_source(path)?;
        let items = items_of(&source);

        // First item of each distinct content, and which of those the store lacks.
        let mut first_of: HashMap<Digest, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            first_of.entry(item.key).or_insert(i);
        }
        let mut distinct: Vec<usize> = first_of.values().copied().collect();
        distinct.sort_unstable();
        let present: HashSet<Digest> = self.engine.read(|q| {
            let mut present = HashSet::new();
            for &i in &distinct {
                if q.object_by_key(&items[i].key)?.is_some() {
                    present.insert(items[i].key);
                }
            }
            Ok(present)
        })?;
        let missing: Vec<&Item> = distinct
            .iter()
            .map(|&i| &items[i])
            .filter(|it| !present.contains(&it.key))
            .collect();

        let mut session = self.engine.begin_write()?;
        let total: u64 = missing.iter().map(|it| it.raw.len() as u64).sum();
        progress.start("storing", total);
        let mut new_objects = Vec::with_capacity(missing.len());
        let mut stored_bytes_added = 0;
        for batch in batches(&missing) {
            let encoded: Vec<(codec::Encoded, Digest)> = batch
                .par_iter()
                .map(|it| {
                    let enc = match it.kind {
                        ObjectKind::Tensor { dtype } => codec::encode_tensor(dtype, it.raw),
                        ObjectKind::File => codec::encode_file(it.raw),
                    };
                    let sum = checksum(enc.bytes.as_deref().unwrap_or(it.raw));
                    (enc, sum)
                })
                .collect();
            for (it, (enc, sum)) in batch.iter().zip(encoded) {
                let stored = enc.bytes.as_deref().unwrap_or(it.raw);
                let location = session.append(stored)?;
                stored_bytes_added += stored.len() as u64;
                new_objects.push(NewObject {
                    key: it.key,
                    kind: it.kind,
                    shape: it.shape.clone(),
                    raw_len: it.raw.len() as u64,
                    codec: enc.codec,
                    location,
                    checksum: sum,
                });
                progress.advance(it.raw.len() as u64);
            }
        }
        progress.finish();

        let raw_bytes: u64 = items
            .iter()
            .filter(|it| matches!(it.kind, ObjectKind::Tensor { .. }))
            .map(|it| it.raw.len() as u64)
            .sum();
        let model = ModelRow {
            id: 0,
            name: name.to_string(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            source_format: source.format.to_string(),
            metadata: serde_json::Value::Object(options.metadata.clone()).to_string(),
            raw_bytes,
        };
        session.commit(|tx| {
            let mut ids: HashMap<Digest, i64> = HashMap::with_capacity(distinct.len());
            for object in &new_objects {
                ids.insert(object.key, tx.insert_object(object)?);
            }
            for key in &present {
                let row = tx.object_by_key(key)?.ok_or_else(|| {
                    neurstore_storage::StorageError::corrupt(
                        "catalog",
                        "an object vanished during put",
                    )
                })?;
                ids.insert(*key, row.id);
            }
            let model_id = tx.insert_model(&model)?;
            let mut next = items.iter();
            for file in &source.files {
                let kind = if file.header.is_some() {
                    FileKind::Safetensors
                } else {
                    FileKind::Plain
                };
                let head = next.next().expect("one item per file");
                tx.insert_model_file(model_id, &file.rel_path, kind, ids[&head.key])?;
                for (position, t) in file
                    .header
                    .iter()
                    .flat_map(|h| h.tensors.iter())
                    .enumerate()
                {
                    let item = next.next().expect("one item per tensor");
                    tx.insert_model_tensor(
                        model_id,
                        &file.rel_path,
                        position as i64,
                        &t.name,
                        ids[&item.key],
                    )?;
                }
            }
            Ok(())
        })?;

        let tensors = items
            .iter()
            .filter(|it| matches!(it.kind, ObjectKind::Tensor { .. }))
            .count() as u64;
        Ok(PutReport {
            name: name.to_string(),
            files: source.files.len() as u64,
            tensors,
            raw_bytes,
            new_objects: new_objects.len() as u64,
            deduplicated_objects: present.len() as u64,
            stored_bytes_added,
        })
    }
}

fn batches<'a, 'b>(items: &'b [&'a Item<'a>]) -> Vec<&'b [&'a Item<'a>]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 0u64;
    for (i, it) in items.iter().enumerate() {
        if i > start && size + it.raw.len() as u64 > BATCH_BYTES {
            out.push(&items[start..i]);
            start = i;
            size = 0;
        }
        size += it.raw.len() as u64;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}
