//! Rebuilding a lost or damaged catalog from the packs alone (format 2).
//!
//! Every record is self-describing and self-checking: object records carry their keys, codec,
//! dtype, shape and base key; model records every row of a model; tombstones its removal. The
//! rebuild scans every pack, keeps each model's latest record unless a later tombstone removed
//! it, and writes a new catalog beside the old one, then swaps it in (the damaged catalog is
//! kept beside it, renamed). Packs are only read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use neurstore_core::key::Digest;

use crate::backend::{Backend, FsBackend};
use crate::catalog::{Catalog, FileKind, ModelRow, NewObject, ObjectKind};
use crate::engine::{CATALOG_FILE, PACK_DIR, hex};
use crate::error::{Result, StorageError};
use crate::lock::WriterLock;
use crate::pack::{BlobLocation, pack_id_from_name};
use crate::record::{
    ModelRecord, ObjectMeta, PACK_HEADER_LEN, RECORD_HEADER_LEN, RECORD_MAGIC, RecordHeader,
    RecordType, decode_pack_header, decode_tombstone, record_checksum,
};

/// What a rebuild found and did.
#[derive(Debug, Clone, Default)]
pub struct RebuildReport {
    /// Pack files read.
    pub packs: u64,
    /// Intact records found.
    pub records: u64,
    /// Damaged or torn spans skipped, in bytes.
    pub skipped_bytes: u64,
    /// Models the new catalog holds.
    pub models: u64,
    /// Objects the new catalog holds.
    pub objects: u64,
    /// Models whose records were found but that could not be rebuilt: (name, why).
    pub lost_models: Vec<(String, String)>,
    /// Where the old catalog was moved, if there was one.
    pub old_catalog: Option<String>,
}

struct FoundObject {
    meta: ObjectMeta,
    location: BlobLocation,
    checksum: Digest,
}

#[derive(Default)]
struct Scan {
    store_id: Option<[u8; 16]>,
    objects: HashMap<Digest, FoundObject>,
    models: HashMap<String, (ModelRecord, BlobLocation)>,
    tombstones: BTreeMap<u64, (String, BlobLocation)>,
    pack_ends: BTreeMap<u64, u64>,
    report: RebuildReport,
}

/// Rebuilds the catalog of the store at `root` from its packs (through `backend`, the store's
/// `packs/` directory when `None`). Takes the writer lock.
pub fn rebuild(root: &Path, backend: Option<Arc<dyn Backend>>) -> Result<RebuildReport> {
    if crate::engine::postgres_url(root).is_some() {
        return Err(StorageError::Unsupported(
            "`recover` rebuilds a store directory's catalog from its packs; a store in \
             PostgreSQL keeps its catalog in the same database, backed up and restored with it"
                .into(),
        ));
    }
    let backend = backend.unwrap_or_else(|| Arc::new(FsBackend::new(root.join(PACK_DIR))));
    let _lock = WriterLock::acquire(root)?;
    let mut scan = Scan::default();
    let mut names: Vec<(u64, String)> = backend
        .list()
        .map_err(|e| StorageError::io("listing packs", e))?
        .into_iter()
        .filter_map(|n| pack_id_from_name(&n).map(|id| (id, n)))
        .collect();
    names.sort();
    for (id, name) in &names {
        scan_pack(&*backend, *id, name, &mut scan)?;
    }
    write_catalog(root, scan)
}

fn scan_pack(backend: &dyn Backend, pack_id: u64, name: &str, scan: &mut Scan) -> Result<()> {
    let io = |e| StorageError::io(name.to_string(), e);
    let file = backend.open(name, false).map_err(io)?;
    let map = file.map().map_err(io)?;
    let owned;
    let bytes: &[u8] = match &map {
        Some(m) => m,
        None => {
            let len = usize::try_from(file.len().map_err(io)?)
                .map_err(|_| StorageError::corrupt(name, "too large"))?;
            owned = {
                let mut v = vec![0u8; len];
                file.read_at(&mut v, 0).map_err(io)?;
                v
            };
            &owned
        }
    };
    scan.report.packs += 1;
    match decode_pack_header(bytes) {
        Some((store_id, id)) if id == pack_id => {
            scan.store_id.get_or_insert(store_id);
        }
        _ => {
            // The header is synced with a pack's first commit: a pack without a valid one
            // never committed anything (or is damaged). Its records are not taken; a writer
            // then checks its bytes as an uncommitted tail, which refuses to cut a commit.
            scan.report.skipped_bytes += bytes.len() as u64;
            scan.pack_ends.insert(pack_id, 0);
            return Ok(());
        }
    }
    let mut at = PACK_HEADER_LEN;
    let mut end_of_valid = PACK_HEADER_LEN.min(bytes.len() as u64);
    while at + RECORD_HEADER_LEN <= bytes.len() as u64 {
        match record_at(bytes, at) {
            Some((header, end)) => {
                take_record(bytes, pack_id, at, &header, scan);
                scan.report.records += 1;
                at = end;
                end_of_valid = end;
            }
            None => {
                // Resynchronize on the next record magic.
                let from = at as usize + 1;
                let next = bytes[from..]
                    .windows(RECORD_MAGIC.len())
                    .position(|w| w == RECORD_MAGIC)
                    .map(|p| (from + p) as u64);
                let stop = next.unwrap_or(bytes.len() as u64);
                scan.report.skipped_bytes += stop - at;
                at = stop;
            }
        }
    }
    scan.pack_ends.insert(pack_id, end_of_valid);
    Ok(())
}

/// The intact record at `at`: header and end.
fn record_at(bytes: &[u8], at: u64) -> Option<(RecordHeader, u64)> {
    let header = RecordHeader::decode(&bytes[at as usize..])?;
    let end = header.end(at).filter(|&e| e <= bytes.len() as u64)?;
    let h = at as usize + RECORD_HEADER_LEN as usize;
    let meta = &bytes[h..h + header.meta_len as usize];
    let start = header.payload_offset(at)? as usize;
    let stop = start + header.payload_len as usize;
    let sum = record_checksum(&bytes[at as usize..h], meta, &bytes[start..stop]);
    (sum[..] == bytes[stop..end as usize]).then_some((header, end))
}

fn take_record(bytes: &[u8], pack_id: u64, at: u64, header: &RecordHeader, scan: &mut Scan) {
    let h = at as usize + RECORD_HEADER_LEN as usize;
    let meta = &bytes[h..h + header.meta_len as usize];
    let start = header.payload_offset(at).expect("checked") as usize;
    let payload = &bytes[start..start + header.payload_len as usize];
    let end = header.end(at).expect("checked");
    let whole = BlobLocation {
        pack_id,
        offset: at,
        len: end - at,
    };
    match header.kind {
        RecordType::Object => {
            let Ok(meta) = ObjectMeta::decode(meta) else {
                return;
            };
            let checksum = bytes[end as usize - 32..end as usize]
                .try_into()
                .expect("32 bytes");
            scan.objects.entry(meta.key).or_insert(FoundObject {
                location: BlobLocation {
                    pack_id,
                    offset: at,
                    len: header.payload_len,
                },
                checksum,
                meta,
            });
        }
        RecordType::Model => {
            if let Ok(record) = ModelRecord::decode(payload) {
                let newer = scan
                    .models
                    .get(&record.name)
                    .is_none_or(|(old, _)| old.seq < record.seq);
                if newer {
                    scan.models.insert(record.name.clone(), (record, whole));
                }
            }
        }
        RecordType::Tombstone => {
            if let Ok((seq, name)) = decode_tombstone(payload) {
                scan.tombstones.insert(seq, (name, whole));
            }
        }
    }
}

/// The objects a model needs, its own and every base below them, or why it cannot be rebuilt.
fn needed(
    record: &ModelRecord,
    objects: &HashMap<Digest, FoundObject>,
    by_decoded: &HashMap<Digest, Digest>,
) -> std::result::Result<Vec<Digest>, String> {
    let mut out = Vec::new();
    let mut todo: Vec<Digest> = record
        .files
        .iter()
        .map(|f| f.2)
        .chain(record.tensors.iter().map(|t| t.3))
        .collect();
    while let Some(key) = todo.pop() {
        if out.contains(&key) {
            continue;
        }
        let o = objects
            .get(&key)
            .ok_or_else(|| format!("object {} is in no pack", hex(&key[..8])))?;
        if let Some(base) = o.meta.base_key {
            let base = by_decoded
                .get(&base)
                .ok_or_else(|| format!("the base of object {} is in no pack", hex(&key[..8])))?;
            todo.push(*base);
        }
        out.push(key);
    }
    Ok(out)
}

/// A model to rebuild: its record and where it lies.
type LiveModel<'s> = (&'s ModelRecord, BlobLocation);

/// The models to rebuild (each name's latest record, unless a later tombstone removed it),
/// with the objects they need in insertion order (bases first); models whose objects are not
/// all there are reported.
fn choose_live<'s>(
    scan: &'s Scan,
    report: &mut RebuildReport,
) -> (Vec<LiveModel<'s>>, BTreeSet<(u32, Digest)>) {
    let mut removed: HashMap<&str, u64> = HashMap::new();
    for (seq, (name, _)) in &scan.tombstones {
        let e = removed.entry(name.as_str()).or_insert(*seq);
        *e = (*e).max(*seq);
    }
    let by_decoded = decoded_index(&scan.objects);
    let mut live = Vec::new();
    let mut keep = BTreeSet::new();
    let mut sorted: Vec<_> = scan.models.values().collect();
    sorted.sort_by_key(|(r, _)| r.seq);
    for (record, at) in sorted {
        if removed
            .get(record.name.as_str())
            .is_some_and(|&s| s > record.seq)
        {
            continue;
        }
        match needed(record, &scan.objects, &by_decoded) {
            Ok(keys) => {
                keep.extend(
                    keys.into_iter()
                        .map(|k| (scan.objects[&k].meta.chain_depth, k)),
                );
                live.push((record, *at));
            }
            Err(why) => report.lost_models.push((record.name.clone(), why)),
        }
    }
    (live, keep)
}

/// Objects by decoded key (what a delta's record names as its base).
fn decoded_index(objects: &HashMap<Digest, FoundObject>) -> HashMap<Digest, Digest> {
    objects
        .values()
        .map(|o| (o.meta.decoded_key, o.meta.key))
        .collect()
}

fn write_catalog(root: &Path, scan: Scan) -> Result<RebuildReport> {
    let mut report = scan.report.clone();
    let (live, keep) = choose_live(&scan, &mut report);
    let by_decoded = decoded_index(&scan.objects);
    let Scan {
        store_id,
        objects,
        models,
        tombstones,
        pack_ends,
        ..
    } = &scan;
    // Past every sequence found, live or not, so no later record can tie with an old one.
    let max_seq = models
        .values()
        .map(|(r, _)| r.seq)
        .chain(tombstones.keys().copied())
        .max()
        .unwrap_or(0);
    let tmp = root.join(format!("{CATALOG_FILE}.rebuild"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", tmp.display()));
    }
    {
        let mut catalog = Catalog::open(&tmp, true)?;
        let tx = catalog.write()?;
        let store_id =
            store_id.map_or_else(|| hex(&crate::engine::new_store_id(root)), |id| hex(&id));
        let next_pack = pack_ends.keys().max().map_or(1, |m| m + 1);
        for (k, v) in [
            ("format", "neurstore".to_string()),
            ("format_version", "2".to_string()),
            ("store_id", store_id),
            ("next_pack_id", next_pack.to_string()),
            ("next_seq", (max_seq + 1).to_string()),
        ] {
            tx.set_meta(k, &v)?;
        }
        for (id, end) in pack_ends {
            tx.set_pack_len(*id, *end)?;
        }
        let mut ids: HashMap<Digest, i64> = HashMap::new();
        for (_, key) in &keep {
            let o = &objects[key];
            let m = &o.meta;
            let new = NewObject {
                key: m.key,
                kind: match m.dtype {
                    Some(dtype) => ObjectKind::Tensor { dtype },
                    None => ObjectKind::File,
                },
                shape: m.shape.clone(),
                raw_len: m.raw_len,
                codec: m.codec,
                location: o.location,
                checksum: o.checksum,
                base: m.base_key.map(|b| ids[&by_decoded[&b]]),
                chain_depth: m.chain_depth,
                tolerance: m.tolerance,
                max_error: m.max_error,
                decoded_key: m.decoded_key,
                base_key: m.base_key,
                sketch: None,
            };
            ids.insert(m.key, tx.insert_object(&new)?);
        }
        for (record, at) in &live {
            let model_id = tx.insert_model(&ModelRow {
                id: 0,
                name: record.name.clone(),
                created_unix: record.created_unix,
                source_format: record.source_format.clone(),
                metadata: record.metadata.clone(),
                raw_bytes: record.raw_bytes,
                base_model: record.base_model.clone(),
                mode: record.mode.clone(),
            })?;
            for (path, kind, key) in &record.files {
                let kind = FileKind::from_tag(*kind)
                    .ok_or_else(|| StorageError::corrupt(&record.name, "file kind"))?;
                tx.insert_model_file(model_id, path, kind, ids[key])?;
            }
            for (path, position, name, key) in &record.tensors {
                tx.insert_model_tensor(model_id, path, *position as i64, name, ids[key])?;
            }
            tx.seal_model(model_id)?;
            tx.set_model_record(model_id, record.seq, *at)?;
        }
        for (seq, (name, at)) in tombstones {
            tx.insert_tombstone(*seq, name, *at)?;
        }
        report.models = live.len() as u64;
        report.objects = ids.len() as u64;
        tx.commit()?;
        catalog.checkpoint()?;
    }
    swap_in(root, &tmp, &mut report)?;
    Ok(report)
}

/// Moves the old catalog aside (kept, renamed) and the new one into place, durably.
fn swap_in(root: &Path, tmp: &Path, report: &mut RebuildReport) -> Result<()> {
    let io = |e| StorageError::io(root.display().to_string(), e);
    let catalog = root.join(CATALOG_FILE);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = root.join(format!("{CATALOG_FILE}.damaged-{stamp}"));
    if catalog.exists() {
        std::fs::rename(&catalog, &aside).map_err(io)?;
        report.old_catalog = Some(aside.file_name().unwrap().to_string_lossy().into_owned());
    }
    for suffix in ["-wal", "-shm"] {
        let old = format!("{}{suffix}", catalog.display());
        if Path::new(&old).exists() {
            std::fs::rename(&old, format!("{}{suffix}", aside.display())).map_err(io)?;
        }
    }
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(tmp, &catalog).map_err(io)?;
    std::fs::File::open(root)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}
