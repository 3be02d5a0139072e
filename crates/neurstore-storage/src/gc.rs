//! Garbage collection and the upgrade from format 1. Both rewrite records into fresh packs,
//! publish the new locations in one catalog transaction that also dooms the old packs, then
//! remove the old files (recovery finishes that after a crash).

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::{ModelRow, ObjectRow, Queries};
use crate::engine::{Engine, GcReport, hex, new_store_id};
use crate::error::{Result, StorageError};
use crate::pack::BlobLocation;
use crate::record::{ModelRecord, PACK_HEADER_LEN, RecordHeader, TRAILER_LEN, record_checksum};

/// A record the catalog still names.
enum Live<'a> {
    Object(&'a ObjectRow),
    Model(i64, BlobLocation),
    Tombstone(u64),
}

/// Where an object's record starts and how long it is (padding included).
pub(crate) fn object_extent(o: &ObjectRow) -> Option<(u64, u64)> {
    let (header, _) = crate::engine::expected_record(o);
    let end = header.end(o.location.offset)?;
    Some((o.location.offset, end - o.location.offset))
}

/// The one rule of which packs gc collects (docs/format.md, "Garbage collection"), from a pack's
/// committed length, the bytes its live records cover (its header included) and whether it
/// holds any live record. A pack with no live record left is removed, nothing copied. A pack
/// holding live records is rewritten once its dead bytes are at least
/// 1/[`GC_MIN_DEAD_SHARE`] of its committed length, so every 7 bytes copied return at least
/// one; below that its garbage waits for more. A removed model whose objects other models still
/// use leaves only its manifest record dead: too little to copy a pack for.
pub fn pack_worth_collecting(committed: u64, live: u64, has_live_records: bool) -> bool {
    if !has_live_records {
        return true;
    }
    let dead = committed.saturating_sub(live);
    dead > 0 && dead.saturating_mul(GC_MIN_DEAD_SHARE) >= committed
}

/// gc rewrites a pack holding live records once 1/`GC_MIN_DEAD_SHARE` of it is dead.
pub const GC_MIN_DEAD_SHARE: u64 = 8;

impl Engine {
    /// Rewrites pack files holding enough dead records (of deleted models; see
    /// [`pack_worth_collecting`]) so their space returns to the file system. Readers that still
    /// hold a removed pack open keep reading it safely. On a format-1 store, gc is the upgrade.
    pub fn gc(&self, mut progress: impl FnMut(u64, u64)) -> Result<GcReport> {
        if self.format_version() == 1 {
            return self.upgrade(progress);
        }
        let recovery = self.recover()?;
        let before = self.disk_usage()?.pack_bytes;
        let (packs, objects, models, tombstones) = self.read(|q| {
            Ok((
                q.packs()?,
                q.objects()?,
                q.model_records()?,
                q.tombstones()?,
            ))
        })?;
        // Every row must name its own record before anything is dropped: a row naming another
        // object's record would leave the object's own record looking dead.
        for o in &objects {
            self.check_present(o, &format!("object {}", o.id))?;
        }
        let mut live: BTreeMap<u64, Vec<(u64, u64, Live)>> = BTreeMap::new();
        for o in &objects {
            let (at, len) = object_extent(o)
                .ok_or_else(|| StorageError::corrupt(format!("object {}", o.id), "overflow"))?;
            live.entry(o.location.pack_id)
                .or_default()
                .push((at, len, Live::Object(o)));
        }
        for (id, name, loc) in &models {
            let loc = loc.ok_or_else(|| {
                StorageError::corrupt(format!("model {name:?}"), "no manifest record")
            })?;
            live.entry(loc.pack_id)
                .or_default()
                .push((loc.offset, loc.len, Live::Model(*id, loc)));
        }
        // A tombstone is needed while an older record of its name may still lie in a pack;
        // once a newer model of the same name lives, that model's record supersedes them all.
        let live_seq: BTreeMap<&str, u64> = self
            .read(|q| {
                q.sql()
                    .query("SELECT name, seq FROM models WHERE seq IS NOT NULL", &[])?
                    .iter()
                    .map(|r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?)))
                    .collect::<Result<Vec<_>>>()
            })?
            .into_iter()
            .filter_map(|(n, s)| {
                models
                    .iter()
                    .find(|m| m.1 == n)
                    .map(|m| (m.1.as_str(), s as u64))
            })
            .collect();
        let mut superseded = Vec::new();
        for (seq, name, loc) in &tombstones {
            if live_seq.get(name.as_str()).is_some_and(|s| s > seq) {
                superseded.push(*seq);
                continue;
            }
            live.entry(loc.pack_id)
                .or_default()
                .push((loc.offset, loc.len, Live::Tombstone(*seq)));
        }
        let mut doomed = BTreeSet::new();
        let mut total = 0;
        for (id, committed) in &packs {
            let records = live.get(id).map(Vec::as_slice).unwrap_or(&[]);
            let extent: u64 = records.iter().map(|r| r.1).sum();
            if pack_worth_collecting(*committed, PACK_HEADER_LEN + extent, !records.is_empty()) {
                doomed.insert(*id);
                total += extent;
            }
        }
        let mut report = GcReport {
            recovery,
            pack_bytes_before: before,
            ..GcReport::default()
        };
        if doomed.is_empty() {
            report.pack_bytes_after = before;
            return Ok(report);
        }
        let mut session = self.begin_write_fresh()?;
        let mut moved = Vec::new();
        for id in &doomed {
            for (at, len, what) in live.get(id).into_iter().flatten() {
                let expect = match what {
                    Live::Object(o) => Some(o.meta().encode()),
                    _ => None,
                };
                let to = self.copy_record(&mut session, *id, *at, *len, expect.as_deref())?;
                moved.push((what, to));
                report.bytes_moved += len;
                progress(report.bytes_moved, total);
            }
        }
        session.commit(|tx| {
            for (what, to) in &moved {
                match what {
                    Live::Object(o) => tx.relocate_object(o.id, *to)?,
                    Live::Model(id, old) => {
                        let seq = self.read_model_seq(*old)?;
                        tx.set_model_record(*id, seq, *to)?
                    }
                    Live::Tombstone(seq) => tx.relocate_tombstone(*seq, *to)?,
                }
            }
            for seq in &superseded {
                tx.delete_tombstone(*seq)?;
            }
            for id in &doomed {
                tx.doom_pack(*id)?;
            }
            Ok(())
        })?;
        report.packs_rewritten = doomed.iter().filter(|id| live.contains_key(id)).count() as u64;
        report.packs_removed = doomed.len() as u64;
        // The catalog no longer names these packs; a crash here leaves doomed rows recovery
        // finishes.
        self.remove_doomed_after_commit(&doomed.into_iter().collect::<Vec<_>>())?;
        report.pack_bytes_after = self.disk_usage()?.pack_bytes;
        Ok(report)
    }

    /// The byte spans of every pack that live data covers: pack headers, and the records (or,
    /// in format 1, the aligned blobs) the catalog names, padding included. Everything else in
    /// a pack is dead: what gc returns, pack by pack, per [`pack_worth_collecting`].
    pub fn live_spans(&self) -> Result<BTreeMap<u64, Vec<(u64, u64)>>> {
        let (packs, objects, models, tombstones) = self.read(|q| {
            Ok((
                q.packs()?,
                q.objects()?,
                q.model_records()?,
                q.tombstones()?,
            ))
        })?;
        let v1 = self.format_version() == 1;
        let mut spans: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
        if !v1 {
            for (id, _) in &packs {
                spans.entry(*id).or_default().push((0, PACK_HEADER_LEN));
            }
        }
        for o in &objects {
            let (at, len) = if v1 {
                (o.location.offset, crate::pack::align_up(o.location.len))
            } else {
                object_extent(o)
                    .ok_or_else(|| StorageError::corrupt(format!("object {}", o.id), "overflow"))?
            };
            spans
                .entry(o.location.pack_id)
                .or_default()
                .push((at, at + len));
        }
        for loc in models
            .iter()
            .filter_map(|m| m.2)
            .chain(tombstones.iter().map(|t| t.2))
        {
            spans
                .entry(loc.pack_id)
                .or_default()
                .push((loc.offset, loc.offset + loc.len));
        }
        for list in spans.values_mut() {
            list.sort();
        }
        Ok(spans)
    }

    /// Bytes of committed pack space that gc would return: the bytes no live record uses, in
    /// the packs [`pack_worth_collecting`] picks (in format 1, every pack: gc is the upgrade).
    pub fn reclaimable_bytes(&self) -> Result<u64> {
        let packs = self.read(|q| q.packs())?;
        let spans = self.live_spans()?;
        let v1 = self.format_version() == 1;
        Ok(packs
            .iter()
            .map(|(id, len)| {
                let len = if v1 {
                    crate::pack::align_up(*len)
                } else {
                    *len
                };
                let list = spans.get(id).map_or(&[][..], Vec::as_slice);
                let used: u64 = list
                    .iter()
                    .map(|(a, b)| b.min(&len).saturating_sub(*a))
                    .sum();
                // In format 2 the first span is the pack header.
                let has_records = list.len() > usize::from(!v1);
                if v1 || pack_worth_collecting(len, used, has_records) {
                    len.saturating_sub(used)
                } else {
                    0
                }
            })
            .sum())
    }

    /// Reads a record at `at` (`len` bytes with padding), verifies it, and appends a copy.
    fn copy_record(
        &self,
        session: &mut crate::engine::WriteSession<'_>,
        pack_id: u64,
        at: u64,
        len: u64,
        object_meta: Option<&[u8]>,
    ) -> Result<BlobLocation> {
        let what = format!("the record at pack {pack_id} offset {at}");
        let bytes = self.reader.read(
            BlobLocation {
                pack_id,
                offset: at,
                len,
            },
            &what,
        )?;
        let header = RecordHeader::decode(&bytes)
            .filter(|h| h.end(at) == Some(at + len))
            .ok_or_else(|| StorageError::corrupt(&what, "not a record of that length"))?;
        let h = crate::record::RECORD_HEADER_LEN as usize;
        let meta = &bytes[h..h + header.meta_len as usize];
        let start = (header.payload_offset(at).expect("end exists") - at) as usize;
        let stop = start + header.payload_len as usize;
        let payload = &bytes[start..stop];
        if record_checksum(&bytes[..h], meta, payload)[..] != bytes[stop..] {
            return Err(StorageError::corrupt(&what, "checksum mismatch"));
        }
        // A row naming another object's record would make gc keep the wrong bytes and drop
        // the object's own: refuse to collect a store whose rows and records disagree.
        if object_meta.is_some_and(|m| m != meta) {
            return Err(StorageError::corrupt(
                &what,
                "the catalog row naming it describes another object; nothing was collected (run `neurstore verify`)",
            ));
        }
        let mut to = session.copy_record(&header, meta, payload)?;
        if header.kind == crate::record::RecordType::Object {
            to.len = header.payload_len;
        }
        debug_assert!(len >= TRAILER_LEN);
        Ok(to)
    }

    /// Checks model `m`'s manifest record (format 2) against its rows as read (`files`,
    /// `tensors`, `at` = the record's location from the same snapshot): intact, and saying what
    /// the rows say. The record is in the packs, out of the catalog's reach: rows that were
    /// moved or forged in the catalog, its manifest digest recomputed or removed included,
    /// disagree with it. It also makes sure a catalog rebuilt from the packs brings the model
    /// back as it reads now.
    pub fn check_model_record(
        &self,
        m: &ModelRow,
        files: &[crate::catalog::FileRow],
        tensors: &[crate::catalog::TensorRow],
        at: Option<BlobLocation>,
    ) -> Result<()> {
        if self.format_version() == 1 {
            return Ok(());
        }
        let what = format!("model {:?}", m.name);
        let at = at.ok_or_else(|| {
            StorageError::corrupt(&what, "the catalog names no manifest record for it")
        })?;
        let bytes = self.reader.read(at, &what)?;
        let header = RecordHeader::decode(&bytes)
            .filter(|h| {
                h.kind == crate::record::RecordType::Model
                    && h.meta_len == 0
                    && h.end(at.offset) == Some(at.offset + at.len)
            })
            .ok_or_else(|| {
                StorageError::corrupt(
                    &what,
                    format!(
                        "no manifest record at pack {} offset {}",
                        at.pack_id, at.offset
                    ),
                )
            })?;
        let h = crate::record::RECORD_HEADER_LEN as usize;
        let stop = h + header.payload_len as usize;
        if record_checksum(&bytes[..h], &[], &bytes[h..stop])[..] != bytes[stop..] {
            return Err(StorageError::corrupt(
                &what,
                "its manifest record fails its checksum",
            ));
        }
        let found =
            ModelRecord::decode(&bytes[h..stop]).map_err(|e| StorageError::corrupt(&what, e))?;
        if found != model_record_of(m, files, tensors, found.seq) {
            return Err(StorageError::corrupt(
                &what,
                "its rows in the catalog disagree with the manifest record in the packs",
            ));
        }
        Ok(())
    }

    /// The sequence number in the model record at `at`.
    fn read_model_seq(&self, at: BlobLocation) -> Result<u64> {
        let bytes = self.reader.read(at, "a model record")?;
        let h = crate::record::RECORD_HEADER_LEN as usize;
        bytes
            .get(h..h + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| StorageError::corrupt("a model record", "too short"))
    }

    /// Rewrites a format-1 store in format 2: every object into a record of a fresh pack, a
    /// manifest record for every model, then one transaction that relocates them all, dooms the
    /// old packs and switches the format. Crash safe like any write: before the commit the
    /// store is the format-1 store it was.
    pub fn upgrade(&self, mut progress: impl FnMut(u64, u64)) -> Result<GcReport> {
        if self.format_version() != 1 {
            drop(self.writer()?);
            let before = self.disk_usage()?.pack_bytes;
            return Ok(GcReport {
                pack_bytes_before: before,
                pack_bytes_after: before,
                ..GcReport::default()
            });
        }
        let recovery = self.recover()?;
        let before = self.disk_usage()?.pack_bytes;
        let store_id = new_store_id(&self.root);
        *self.store_id.lock().unwrap_or_else(|e| e.into_inner()) = store_id;
        let (packs, mut objects, models) =
            self.read(|q| Ok((q.packs()?, q.objects()?, q.models()?)))?;
        // Bases before the objects decoded against them (any order would do; this one reads
        // like the chains).
        objects.sort_by_key(|o| (o.chain_depth, o.id));
        let total: u64 = objects.iter().map(|o| o.location.len).sum();
        let mut report = GcReport {
            recovery,
            pack_bytes_before: before,
            ..GcReport::default()
        };
        let mut session = self.begin_write_fresh()?;
        let mut moved = Vec::with_capacity(objects.len());
        for o in &objects {
            let what = format!("object {}", o.id);
            let bytes = self.reader.read_verified(o.location, &o.checksum, &what)?;
            let (to, sum) = session.append_object(&o.meta(), &bytes)?;
            moved.push((o.id, to, sum));
            report.bytes_moved += o.location.len;
            progress(report.bytes_moved, total);
        }
        let mut records = Vec::with_capacity(models.len());
        for (i, m) in models.iter().enumerate() {
            let record = self.model_record(m, i as u64 + 1)?;
            records.push((m.id, record.seq, session.append_model(&record)?));
        }
        let next_seq = models.len() as u64 + 1;
        session.commit(|tx| {
            for (id, to, sum) in &moved {
                tx.relocate_object(*id, *to)?;
                tx.set_object_checksum(*id, sum)?;
            }
            for (id, seq, at) in &records {
                tx.set_model_record(*id, *seq, *at)?;
                tx.seal_model(*id)?;
            }
            for (id, _) in &packs {
                tx.doom_pack(*id)?;
            }
            tx.set_meta("store_id", &hex(&store_id))?;
            tx.set_meta("next_seq", &next_seq.to_string())?;
            tx.set_meta("format_version", "2")
        })?;
        self.format.store(2, std::sync::atomic::Ordering::Release);
        report.packs_rewritten = packs.len() as u64;
        report.packs_removed = packs.len() as u64;
        self.remove_doomed_after_commit(&packs.iter().map(|p| p.0).collect::<Vec<_>>())?;
        report.pack_bytes_after = self.disk_usage()?.pack_bytes;
        Ok(report)
    }

    /// A model's manifest record, from its catalog rows.
    pub(crate) fn model_record(&self, m: &ModelRow, seq: u64) -> Result<ModelRecord> {
        let (files, tensors) = self.read(|q| Ok((q.model_files(m.id)?, q.model_tensors(m.id)?)))?;
        Ok(model_record_of(m, &files, &tensors, seq))
    }
}

/// A model's manifest record, from its rows.
fn model_record_of(
    m: &ModelRow,
    files: &[crate::catalog::FileRow],
    tensors: &[crate::catalog::TensorRow],
    seq: u64,
) -> ModelRecord {
    ModelRecord {
        seq,
        name: m.name.clone(),
        created_unix: m.created_unix,
        source_format: m.source_format.clone(),
        metadata: m.metadata.clone(),
        raw_bytes: m.raw_bytes,
        base_model: m.base_model.clone(),
        mode: m.mode.clone(),
        files: files
            .iter()
            .map(|f| (f.path.clone(), f.kind.tag(), f.object.key))
            .collect(),
        tensors: tensors
            .iter()
            .map(|t| {
                (
                    t.path.clone(),
                    t.position as u64,
                    t.name.clone(),
                    t.object.key,
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::pack_worth_collecting;

    #[test]
    fn gc_rewrites_a_pack_once_an_eighth_is_dead_and_removes_one_nothing_lives_in() {
        const GIB: u64 = 1 << 30;
        // A removed model's manifest record alone: not worth copying the pack.
        assert!(!pack_worth_collecting(GIB, GIB - 600, true));
        assert!(!pack_worth_collecting(40_000, 39_400, true));
        // Nothing dead, nothing to do.
        assert!(!pack_worth_collecting(4000, 4000, true));
        // An eighth or more dead: rewritten.
        assert!(pack_worth_collecting(4000, 3500, true));
        assert!(!pack_worth_collecting(4000, 3501, true));
        assert!(pack_worth_collecting(GIB, GIB / 2, true));
        // No live record left: removed, however little is dead.
        assert!(pack_worth_collecting(GIB, GIB - 600, false));
        assert!(pack_worth_collecting(64, 64, false));
    }
}
