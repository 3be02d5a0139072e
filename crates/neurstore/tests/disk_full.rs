//! Invariant: a full disk fails a write cleanly (an I/O error whose cause is `StorageFull`, nothing half visible), and once the store is reopened with room, every acknowledged model reads back and gc returns every byte no live blob uses.
//!
//! The workload (put base, put a lossless fine-tune, put a bounded fine-tune, rm, gc) runs under
//! byte budgets on the pack files swept from 0 to the peak a clean run needs, in 64 steps (256
//! with `NEURSTORE_FULL_RELIABILITY=1`).

mod fault_workload;

use std::io::ErrorKind as IoKind;

use fault_workload::{
    Outcome, Step, Tally, check_reopened, compare, full_run, io_kind, models, parallel, run,
};
use neurstore_storage::fault::FaultBackend;

#[derive(Default)]
struct Figures {
    budgets: u64,
    failed: u64,
    clean_errors: u64,
    half_visible: u64,
    leaked: u64,
    /// The step that hit the limit, as "put base", "rm ft", "gc".
    failed_in: Option<String>,
    tally: Tally,
}

#[test]
fn disk_full_fails_cleanly_and_gc_leaks_nothing() {
    let models = models();
    let clean_disk = FaultBackend::new();
    let clean = run(&clean_disk, &models, |_| {});
    assert!(clean.steps.iter().all(|s| s.outcome.is_ok()));
    let peak = clean_disk.peak_bytes();
    let steps: u64 = if full_run() { 256 } else { 64 };

    let results = parallel(steps + 1, |i| {
        let budget = peak * i / steps;
        let label = format!("budget {budget} B");
        let mut f = Figures {
            budgets: 1,
            ..Figures::default()
        };
        let disk = FaultBackend::new();
        disk.set_budget(Some(budget));
        let mut half_visible = Vec::new();
        let crashed = run(&disk, &models, |store| {
            // Before reopening: whatever the store lists is whole.
            for listed in store.list().unwrap() {
                let model = models.iter().find(|m| m.name == listed.name);
                let whole = match (model, store.load(&listed.name)) {
                    (Some(m), Ok(loaded)) => compare(m, &loaded).is_ok(),
                    _ => false,
                };
                if !whole {
                    half_visible.push(listed.name);
                }
            }
        });
        f.half_visible = half_visible.len() as u64;
        if f.half_visible > 0 {
            f.tally
                .violation(format!("{label}: half-visible models {half_visible:?}"));
        }
        if crashed.panics() > 0 {
            f.tally.violation(format!("{label}: panic"));
        }
        if let Some(failed) = crashed.first_failure() {
            f.failed = 1;
            f.failed_in = Some(match failed.step {
                Step::Put(i) => format!("put {}", models[i].name),
                Step::Remove(name) => format!("rm {name}"),
                Step::Gc => "gc".into(),
            });
            match &failed.outcome {
                Outcome::Failed(e) if io_kind(e) == Some(IoKind::StorageFull) => f.clean_errors = 1,
                other => f.tally.violation(format!(
                    "{label}: {:?} failed with {other:?}, not a StorageFull error",
                    failed.step
                )),
            }
        } else if budget < peak {
            f.tally
                .violation(format!("{label}: the workload fit under its peak {peak} B"));
        }
        let check = check_reopened(&crashed.root, disk.current_image(), &crashed.acked, &models);
        f.leaked = check.leaked_bytes;
        f.tally.add(&label, check);
        f
    });
    let mut all = Figures::default();
    let mut by_step: Vec<(String, u64)> = Vec::new();
    for f in results {
        if let Some(step) = f.failed_in {
            match by_step.iter_mut().find(|(s, _)| *s == step) {
                Some((_, n)) => *n += 1,
                None => by_step.push((step, 1)),
            }
        }
        all.budgets += f.budgets;
        all.failed += f.failed;
        all.clean_errors += f.clean_errors;
        all.half_visible += f.half_visible;
        all.leaked += f.leaked;
        all.tally.merge(f.tally);
    }
    eprintln!(
        "disk full: {} budgets tried (0 to {peak} B); {} hit the limit; clean errors = {:.0}% ({} of {}); \
         half-visible models = {}; bytes leaked after gc = {}; violations = {}",
        all.budgets,
        all.failed,
        100.0 * all.clean_errors as f64 / all.failed.max(1) as f64,
        all.clean_errors,
        all.failed,
        all.half_visible,
        all.leaked,
        all.tally.violations,
    );
    let by_step: Vec<String> = by_step.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    eprintln!("disk full: the limit was hit in {}", by_step.join(", "));
    all.tally.assert_clean();
}
