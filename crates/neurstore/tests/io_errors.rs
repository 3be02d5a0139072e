//! Invariant: an I/O error on any operation of a write is returned as an error (never a panic, never swallowed), the store then refuses every write until reopened, and once reopened it holds exactly the last acknowledged state and verifies clean.
//!
//! For every operation k of the workload (put base, put a lossless fine-tune, put a bounded
//! fine-tune, rm, gc) the run is repeated with operation k failing once, and failing for good
//! (sticky), with an EIO-like error. `NEURSTORE_FULL_RELIABILITY=1` adds, for every kind of
//! operation and every j, the j-th operation of that kind failing once with ENOSPC and failing
//! for good while the other kinds keep working.

mod fault_workload;

use fault_workload::{Model, Outcome, Tally, check_reopened, full_run, models, parallel, run};
use neurstore::ErrorKind;
use neurstore_storage::fault::{Fault, FaultBackend, OpKind};

#[derive(Default)]
struct Figures {
    tried: u64,
    panics: u64,
    surfaced: u64,
    classified_io: u64,
    writes_after_failure: u64,
    reopened_clean: u64,
    tally: Tally,
}

impl Figures {
    fn merge(&mut self, other: Figures) {
        self.tried += other.tried;
        self.panics += other.panics;
        self.surfaced += other.surfaced;
        self.classified_io += other.classified_io;
        self.writes_after_failure += other.writes_after_failure;
        self.reopened_clean += other.reopened_clean;
        self.tally.merge(other.tally);
    }
}

/// Runs the workload with `fault` injected, then reopens the disk as the failure left it.
fn try_fault(label: &str, fault: Fault, models: &[Model]) -> Figures {
    let mut f = Figures::default();
    let disk = FaultBackend::new();
    disk.inject(fault);
    let crashed = run(&disk, models, |_| {});
    if disk.injected() == 0 {
        f.tally.violation(format!(
            "{label}: the fault never fired (workload changed?)"
        ));
        return f;
    }
    f.tried = 1;
    f.panics = crashed.panics() as u64;
    if f.panics > 0 {
        f.tally
            .violation(format!("{label}: panic: {:?}", crashed.steps));
    }
    // The step during which the fault first fired must have failed.
    let fired = crashed.steps.iter().position(|s| s.faults_fired > 0);
    let first_failed = crashed.steps.iter().position(|s| !s.outcome.is_ok());
    match (fired, first_failed) {
        (Some(a), Some(b)) if a == b => f.surfaced = 1,
        _ => f.tally.violation(format!(
            "{label}: fault fired in step {fired:?}, first failure in step {first_failed:?}"
        )),
    }
    if let Some(b) = first_failed {
        let step = &crashed.steps[b];
        match &step.outcome {
            Outcome::Failed(e) if e.kind() == ErrorKind::Io => f.classified_io = 1,
            other => f
                .tally
                .violation(format!("{label}: failure not classed as I/O: {other:?}")),
        }
        // Latched: no later step succeeds, and nothing reaches the disk after the failed step.
        let later_ok = crashed.steps[b + 1..]
            .iter()
            .filter(|s| s.outcome.is_ok())
            .count() as u64;
        let later_ops = disk
            .log()
            .iter()
            .filter(|o| o.index >= step.ops_after && o.ok)
            .count() as u64;
        f.writes_after_failure = later_ok + later_ops;
        if f.writes_after_failure > 0 {
            f.tally.violation(format!(
                "{label}: {later_ok} steps and {later_ops} disk operations accepted after the failure in {:?}",
                step.step
            ));
        }
    }
    let check = check_reopened(&crashed.root, disk.current_image(), &crashed.acked, models);
    if check.violations.is_empty() {
        f.reopened_clean = 1;
    }
    f.tally.add(label, check);
    f
}

#[test]
fn every_io_error_surfaces_latches_and_recovers() {
    let models = models();
    let clean_disk = FaultBackend::new();
    let clean = run(&clean_disk, &models, |_| {});
    assert!(clean.steps.iter().all(|s| s.outcome.is_ok()));
    let n = clean_disk.ops();

    let mut faults: Vec<(String, Fault)> = Vec::new();
    for k in 0..n {
        faults.push((format!("op {k} fails once"), Fault::once(k)));
        faults.push((format!("op {k} fails for good"), Fault::sticky(k)));
    }
    if full_run() {
        for kind in OpKind::ALL {
            for j in 0..clean_disk.ops_of(kind) {
                let once = Fault {
                    only: Some(kind),
                    error: std::io::ErrorKind::StorageFull,
                    ..Fault::once(j)
                };
                let sticky = Fault {
                    only: Some(kind),
                    ..Fault::sticky(j)
                };
                let name = kind.name();
                faults.push((format!("{name} #{j} fails once (ENOSPC)"), once));
                faults.push((format!("every {name} from #{j} on fails"), sticky));
            }
        }
    }
    let results = parallel(faults.len() as u64, |i| {
        let (label, fault) = &faults[i as usize];
        try_fault(label, *fault, &models)
    });
    let mut figures = Figures::default();
    for r in results {
        figures.merge(r);
    }
    let pct = |x: u64| 100.0 * x as f64 / figures.tried.max(1) as f64;
    eprintln!(
        "io errors: {} faults tried ({} operations x once/sticky{}); panics = {}; errors surfaced = {:.0}% ({} of {}); \
         classed as I/O = {:.0}%; writes accepted after failure before reopen = {}; verify OK after reopen = {:.0}% \
         (violations = {})",
        figures.tried,
        n,
        if full_run() {
            ", plus per kind of operation"
        } else {
            ""
        },
        figures.panics,
        pct(figures.surfaced),
        figures.surfaced,
        figures.tried,
        pct(figures.classified_io),
        figures.writes_after_failure,
        pct(figures.reopened_clean),
        figures.tally.violations,
    );
    figures.tally.assert_clean();
}
