//! Recovery when a writer opens the store: uncommitted tails are cut off, packs a committed gc
//! doomed are removed. Nothing the catalog does not account for is ever deleted: a pack file
//! the catalog does not name, or a tail holding a committed write the catalog does not know,
//! means the catalog is damaged or older than the packs, and the writer refuses to start.

use std::collections::{HashMap, HashSet};

use crate::catalog::Queries;
use crate::engine::{Engine, RecoveryReport};
use crate::error::{Result, StorageError};
use crate::pack::{pack_file_name, pack_id_from_name};
use crate::record::{RecordHeader, RecordType, record_checksum};

impl Engine {
    /// Runs recovery. Only a writer may run it: it holds the lock, so no write is in progress.
    pub fn recover(&self) -> Result<RecoveryReport> {
        let _state = self.writer()?;
        if self.format_version() == 1 {
            return self.recover_format_1();
        }
        let (packs, doomed, next_seq, known) = self.read(|q| {
            let known: HashSet<u64> = q
                .sql()
                .query(
                    "SELECT seq FROM models WHERE seq IS NOT NULL UNION SELECT seq FROM tombstones",
                    &[],
                )?
                .iter()
                .map(|r| Ok(r.get::<i64>(0)? as u64))
                .collect::<Result<_>>()?;
            Ok((q.packs()?, q.doomed_packs()?, q.next_seq()?, known))
        })?;
        let packs: HashMap<u64, u64> = packs.into_iter().collect();
        let mut report = RecoveryReport::default();
        let io = |what: String| move |e| StorageError::io(what, e);
        let names = self.backend.list().map_err(io("listing packs".into()))?;
        let unknown: Vec<&String> = names
            .iter()
            .filter(|n| {
                pack_id_from_name(n)
                    .is_some_and(|id| !packs.contains_key(&id) && !doomed.contains(&id))
            })
            .collect();
        if !unknown.is_empty() {
            return Err(StorageError::CatalogBehind {
                detail: format!(
                    "pack file{} {} {} not named by the catalog",
                    if unknown.len() > 1 { "s" } else { "" },
                    unknown
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if unknown.len() > 1 { "are" } else { "is" },
                ),
            });
        }
        // Check every tail before cutting any.
        let mut cuts = Vec::new();
        for name in &names {
            let Some(id) = pack_id_from_name(name) else {
                continue;
            };
            let Some(&committed) = packs.get(&id) else {
                continue;
            };
            let file = self.backend.open(name, true).map_err(io(name.clone()))?;
            let len = file.len().map_err(io(name.clone()))?;
            // A pack with nothing committed may have a torn header (it is synced with the
            // pack's first commit); its tail is checked and cut below like any other.
            if committed >= crate::record::PACK_HEADER_LEN {
                self.check_pack_header(&*file, id, len)?;
            }
            if len > committed {
                self.check_tail(id, committed, len, next_seq, &known)?;
                cuts.push((file, committed, len));
            } else if len < committed {
                report.short_packs += 1;
            }
        }
        for (file, committed, len) in cuts {
            file.set_len(committed)
                .map_err(io("cutting a pack tail".into()))?;
            file.sync().map_err(io("syncing a pack".into()))?;
            report.truncated_bytes += len - committed;
        }
        report.doomed_packs_removed = self.drop_empty_and_doomed(&packs, doomed)?;
        Ok(report)
    }

    /// Removes packs named when a write started that never committed anything (what they hold
    /// was just checked, or cut, to be at most that write), and packs a committed gc doomed.
    fn drop_empty_and_doomed(&self, packs: &HashMap<u64, u64>, doomed: Vec<u64>) -> Result<u64> {
        let empty: Vec<u64> = packs.iter().filter(|p| *p.1 == 0).map(|p| *p.0).collect();
        if !empty.is_empty() {
            let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
            let tx = catalog.write()?;
            for id in &empty {
                tx.doom_pack(*id)?;
            }
            tx.commit()?;
        }
        let doomed: Vec<u64> = doomed.into_iter().chain(empty).collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        self.remove_doomed(&doomed)
    }

    /// Errs when a pack tail holds a complete model or tombstone record of a write other than
    /// the one that may have been in flight (sequence `next_seq`) and other than those the
    /// catalog knows (`known`: a gc in flight copies records it already names): that write
    /// committed, and the catalog does not know it.
    fn check_tail(
        &self,
        pack_id: u64,
        committed: u64,
        len: u64,
        next_seq: u64,
        known: &HashSet<u64>,
    ) -> Result<()> {
        let file = self
            .backend
            .open(&pack_file_name(pack_id), false)
            .map_err(|e| StorageError::io(format!("pack {pack_id}"), e))?;
        let mut at = committed.max(crate::record::PACK_HEADER_LEN);
        let mut head = [0u8; crate::record::RECORD_HEADER_LEN as usize];
        while at + head.len() as u64 <= len {
            if file.read_at(&mut head, at).is_err() {
                break;
            }
            let Some(header) = RecordHeader::decode(&head) else {
                break;
            };
            let Some(end) = header.end(at).filter(|&e| e <= len) else {
                break;
            };
            if header.kind != RecordType::Object && header.payload_len <= 1 << 30 {
                let mut rec = vec![0u8; (end - at) as usize];
                if file.read_at(&mut rec, at).is_err() {
                    break;
                }
                let split = rec.len() - 32;
                let payload = &rec[head.len()..split];
                let intact = record_checksum(&head, &[], payload)[..] == rec[split..];
                let seq = payload
                    .get(..8)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
                if intact && seq != Some(next_seq) && !seq.is_some_and(|s| known.contains(&s)) {
                    return Err(StorageError::CatalogBehind {
                        detail: format!(
                            "pack {pack_id} holds a committed write (sequence {}) past the {committed} \
                             bytes the catalog covers",
                            seq.unwrap_or(0)
                        ),
                    });
                }
            }
            at = end;
        }
        Ok(())
    }

    /// Errs unless a pack's header names this store and this pack: a catalog of another store
    /// (or packs copied in from one) must not make the writer cut or overwrite them.
    fn check_pack_header(
        &self,
        file: &dyn crate::backend::StorageFile,
        id: u64,
        len: u64,
    ) -> Result<()> {
        if len < crate::record::PACK_HEADER_LEN {
            return Ok(());
        }
        let mut head = [0u8; crate::record::PACK_HEADER_LEN as usize];
        file.read_at(&mut head, 0)
            .map_err(|e| StorageError::io(format!("pack {id}"), e))?;
        let ours = *self.store_id.lock().unwrap_or_else(|e| e.into_inner());
        match crate::record::decode_pack_header(&head) {
            Some((store, pack)) if store == ours && pack == id => Ok(()),
            Some(_) => Err(StorageError::CatalogBehind {
                detail: format!("pack {id} belongs to another store than the catalog"),
            }),
            None => Err(StorageError::CatalogBehind {
                detail: format!("pack {id} does not start with a pack header"),
            }),
        }
    }

    /// Removes the packs a gc or upgrade just doomed in its commit (its step 4). A failure
    /// latches the writer like any failed write: the write committed, but the handle takes
    /// nothing more until reopened, and the next recovery removes what is left.
    pub(crate) fn remove_doomed_after_commit(&self, doomed: &[u64]) -> Result<u64> {
        let mut state = self.writer()?;
        let result = self.remove_doomed(doomed);
        if result.is_err() {
            state.poisoned = true;
        }
        result
    }

    /// Removes the files of doomed packs, then their rows.
    pub(crate) fn remove_doomed(&self, doomed: &[u64]) -> Result<u64> {
        for id in doomed {
            self.reader.forget(*id);
            self.backend
                .remove(&pack_file_name(*id))
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| StorageError::io(format!("removing pack {id}"), e))?;
        }
        self.backend
            .sync_dir()
            .map_err(|e| StorageError::io("syncing the pack directory", e))?;
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        let tx = catalog.write()?;
        tx.forget_doomed_packs()?;
        tx.commit()?;
        Ok(doomed.len() as u64)
    }

    /// Format 1 recovery: cut tails; remove pack files whose id the catalog does not know (in
    /// format 1 a new pack is named only by the commit that first fills it).
    fn recover_format_1(&self) -> Result<RecoveryReport> {
        let packs: HashMap<u64, u64> = self.read(|q| q.packs())?.into_iter().collect();
        let mut report = RecoveryReport::default();
        let io = |what: String| move |e| StorageError::io(what, e);
        for name in self.backend.list().map_err(io("listing packs".into()))? {
            let Some(id) = pack_id_from_name(&name) else {
                continue;
            };
            let file = self.backend.open(&name, true).map_err(io(name.clone()))?;
            let len = file.len().map_err(io(name.clone()))?;
            match packs.get(&id) {
                None => {
                    drop(file);
                    self.backend.remove(&name).map_err(io(name.clone()))?;
                    self.reader.forget(id);
                    report.orphan_packs_removed += 1;
                    report.orphan_bytes += len;
                }
                Some(&committed) if len > committed => {
                    file.set_len(committed).map_err(io(name.clone()))?;
                    file.sync().map_err(io(name.clone()))?;
                    report.truncated_bytes += len - committed;
                }
                Some(_) => {}
            }
        }
        if report.orphan_packs_removed > 0 {
            self.backend
                .sync_dir()
                .map_err(io("syncing the pack directory".into()))?;
        }
        // An interrupted upgrade leaves format-2 packs it named but never committed.
        let doomed = self.read(|q| q.doomed_packs())?;
        report.doomed_packs_removed = self.drop_empty_and_doomed(&packs, doomed)?;
        Ok(report)
    }
}
