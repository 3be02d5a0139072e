//! Giving space back: `gc` (removed models and interrupted writes), `upgrade` (a format-1
//! store rewritten in format 2), and [`GcSummary`], the one account of what they did that every
//! front end prints (`neurstore gc --json`, Python's `Store.gc()`, SQL's `neurstore.gc()`).

use serde::Serialize;

use neurstore_storage::{GcReport, RecoveryReport};

use crate::Store;
use crate::error::Result;
use crate::progress::Progress;

impl Store {
    /// Rewrites a format-1 store in format 2 (crash safe: until its one commit the store is
    /// the format-1 store it was). A format-2 store is left as it is.
    pub fn upgrade(&self, progress: &dyn Progress) -> Result<GcReport> {
        let report = self.engine.upgrade(counting(progress, "upgrading"))?;
        progress.finish();
        Ok(report)
    }

    /// Returns the space of removed models and interrupted writes to the file system. The
    /// report's recovery counts what this handle's opening recovered too (once per handle).
    pub fn gc(&self, progress: &dyn Progress) -> Result<GcReport> {
        let mut report = self.engine.gc(counting(progress, "collecting"))?;
        progress.finish();
        self.add_open_recovery(&mut report.recovery);
        Ok(report)
    }

    /// Adds what recovery did when this handle opened the store to `recovery`, the first time
    /// only: a handle's opening is reported by its first gc.
    fn add_open_recovery(&self, recovery: &mut RecoveryReport) {
        if self
            .open_recovery_reported
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let opened = &self.recovery;
        recovery.truncated_bytes += opened.truncated_bytes;
        recovery.orphan_packs_removed += opened.orphan_packs_removed;
        recovery.orphan_bytes += opened.orphan_bytes;
        recovery.doomed_packs_removed += opened.doomed_packs_removed;
    }
}

/// The engine's `(done, total)` callback as `progress`: started with `label` and the total at
/// the first call, then advanced by the difference.
fn counting<'p>(progress: &'p dyn Progress, label: &'static str) -> impl FnMut(u64, u64) + 'p {
    let mut reported: Option<u64> = None;
    move |done, total| {
        let last = *reported.get_or_insert_with(|| {
            progress.start(label, total);
            0
        });
        progress.advance(done - last);
        reported = Some(done);
    }
}

/// What a `gc` or `upgrade` gave back, as every front end reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GcSummary {
    /// Packs rewritten to drop dead blobs.
    pub packs_rewritten: u64,
    /// Packs removed (all their blobs were dead, or they were rewritten).
    pub packs_removed: u64,
    /// Live bytes copied.
    pub bytes_moved: u64,
    /// Pack bytes before.
    pub pack_bytes_before: u64,
    /// Pack bytes after.
    pub pack_bytes_after: u64,
    /// Bytes returned to the file system: pack bytes dropped plus `recovered_partial_bytes`.
    pub reclaimed_bytes: u64,
    /// Bytes of interrupted writes recovered: cut off the ends of packs, or in orphan packs.
    pub recovered_partial_bytes: u64,
    /// What recovery did (at the gc's start, and at this handle's opening the first time).
    pub recovery: RecoverySummary,
}

/// The recovery part of a [`GcSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecoverySummary {
    /// Uncommitted bytes cut off the ends of pack files.
    pub truncated_bytes: u64,
    /// Pack files the catalog does not know, removed.
    pub orphan_packs_removed: u64,
    /// Bytes in those orphan packs.
    pub orphan_bytes: u64,
}

impl From<&GcReport> for GcSummary {
    fn from(r: &GcReport) -> Self {
        let recovered = r
            .recovery
            .truncated_bytes
            .saturating_add(r.recovery.orphan_bytes);
        GcSummary {
            packs_rewritten: r.packs_rewritten,
            packs_removed: r.packs_removed,
            bytes_moved: r.bytes_moved,
            pack_bytes_before: r.pack_bytes_before,
            pack_bytes_after: r.pack_bytes_after,
            reclaimed_bytes: r
                .pack_bytes_before
                .saturating_sub(r.pack_bytes_after)
                .saturating_add(recovered),
            recovered_partial_bytes: recovered,
            recovery: RecoverySummary {
                truncated_bytes: r.recovery.truncated_bytes,
                orphan_packs_removed: r.recovery.orphan_packs_removed,
                orphan_bytes: r.recovery.orphan_bytes,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The summary's reclaimed bytes count packs dropped and interrupted writes recovered, once.
    #[test]
    fn reclaimed_bytes_add_packs_dropped_and_writes_recovered() {
        let report = GcReport {
            recovery: RecoveryReport {
                truncated_bytes: 5,
                orphan_packs_removed: 1,
                orphan_bytes: 7,
                ..Default::default()
            },
            pack_bytes_before: 100,
            pack_bytes_after: 60,
            ..Default::default()
        };
        let summary = GcSummary::from(&report);
        assert_eq!(summary.recovered_partial_bytes, 12);
        assert_eq!(summary.reclaimed_bytes, 52);
        assert_eq!(summary.recovery.orphan_packs_removed, 1);
    }
}
