//! Invariant: an I/O error at any operation of the upgrade, or a disk that fills at any point of it, fails the upgrade with a typed error (never a panic or a swallowed error), the writer then accepts nothing until reopened, and reopened on a healthy disk the store is the format-1 store it was or the upgraded one: every model reads back byte for byte, `verify` is clean, a second upgrade completes and reads the same, and no pack bytes are left behind. A flipped bit in an upgraded store's packs is detected or harmless, never served.
//!
//! The fixture format-1 store (`tests/data/format-1`) is copied onto a fault-injecting disk.
//! I/O errors: for every operation k the upgrade performs, the upgrade is run with k failing
//! once, and failing for good, with EIO; `NEURSTORE_FULL_RELIABILITY=1` adds, for every kind of
//! operation and every j, the j-th operation of that kind failing once with ENOSPC and failing
//! for good while the other kinds keep working. Disk full: byte budgets on the pack files swept
//! from the fixture's size to the peak a clean upgrade needs, in 64 steps (512 with
//! `NEURSTORE_FULL_RELIABILITY=1`). Bit flips: one bit flipped at each point of a grid (64 per
//! pack file, 512 with `NEURSTORE_FULL_RELIABILITY=1`) over the packs of an upgraded copy of
//! the fixture, every model read back and `verify` run.

mod format_1_fixture;

use std::io::ErrorKind as IoKind;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use format_1_fixture::{FIXTURE, check, copy_fixture, expected, fixture_disk, open, same_tree};
use neurstore::{Error, ErrorKind, NoProgress, PutOptions, Store};
use neurstore_storage::fault::{Fault, FaultBackend, OpKind};

/// True when `NEURSTORE_FULL_RELIABILITY=1` asks for the full run instead of the CI sample.
fn full_run() -> bool {
    std::env::var("NEURSTORE_FULL_RELIABILITY").is_ok_and(|v| v == "1")
}

/// The kind of the first I/O error in `e`'s chain of causes.
fn io_kind(e: &Error) -> Option<IoKind> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        next = err.source();
    }
    None
}

/// What a clean upgrade of the fixture does on the fault-injecting disk.
struct Clean {
    /// Operations counted once the store is open, before the upgrade starts.
    start: u64,
    /// Operations the upgrade performs.
    ops: u64,
    /// Of them, by kind: (kind, count before the upgrade, count during it).
    per_kind: Vec<(OpKind, u64, u64)>,
    /// Pack bytes before the upgrade, at its peak and after it.
    before: u64,
    peak: u64,
    after: u64,
}

fn clean_upgrade(scratch: &Path) -> Clean {
    let disk = fixture_disk();
    let root = copy_fixture(&scratch.join("clean"));
    let store = open(&root, &disk).unwrap();
    let start = disk.ops();
    let kinds_before: Vec<u64> = OpKind::ALL.iter().map(|k| disk.ops_of(*k)).collect();
    let before = disk.file_bytes();
    store.upgrade(&NoProgress).unwrap();
    check(&store, scratch).unwrap();
    let per_kind = OpKind::ALL
        .iter()
        .zip(kinds_before)
        .map(|(k, b)| (*k, b, disk.ops_of(*k) - b))
        .collect();
    Clean {
        start,
        ops: disk.ops() - start,
        per_kind,
        before,
        peak: disk.peak_bytes(),
        after: disk.file_bytes(),
    }
}

/// One faulty upgrade and what it led to.
#[derive(Default)]
struct Run {
    /// The upgrade failed (with any error).
    failed: bool,
    /// It failed with the error the fault calls for.
    clean_error: bool,
    /// The store reopened as the upgraded one (the failure came after the commit).
    reopened_upgraded: bool,
    violations: Vec<String>,
}

/// Runs the upgrade of a fresh copy of the fixture with `arm` setting the fault on its disk
/// (after the store is open), then: the upgrade fails (when `must_fail`) with an error
/// `expected_error` accepts and no panic; the same handle refuses another upgrade and a put, and
/// nothing reaches the disk after the failed operation; reopened on a healthy image of the
/// disk, the store holds the fixture's models (format 1 or 2), and upgrading it again completes
/// and leaves exactly the pack bytes a clean upgrade leaves.
fn faulty_upgrade(
    label: &str,
    at: &Path,
    clean: &Clean,
    arm: impl FnOnce(&FaultBackend),
    must_fail: bool,
    expected_error: impl Fn(&Error) -> bool,
) -> Run {
    let mut run = Run::default();
    let disk = fixture_disk();
    let root = copy_fixture(at);
    let store = open(&root, &disk).unwrap();
    arm(&disk);
    let result = match catch_unwind(AssertUnwindSafe(|| store.upgrade(&NoProgress))) {
        Ok(result) => result,
        Err(_) => {
            run.violations
                .push(format!("{label}: the upgrade panicked"));
            return run;
        }
    };
    match result {
        Ok(_) if must_fail => run
            .violations
            .push(format!("{label}: the upgrade succeeded past its fault")),
        Ok(_) => {}
        Err(e) => {
            run.failed = true;
            run.clean_error = expected_error(&e);
            if !run.clean_error {
                run.violations
                    .push(format!("{label}: failed with {:?} ({e})", e.kind()));
            }
            run.violations
                .extend(latched(label, &store, &disk, disk.ops()));
        }
    }
    drop(store);
    match reopen_and_finish(&root, &disk, clean) {
        Ok(upgraded) => run.reopened_upgraded = upgraded,
        Err(e) => run.violations.push(format!("{label}: {e}")),
    }
    run
}

/// After a failed upgrade (which returned once `returned` operations were counted: a failed
/// write cuts what it appended before it returns), the handle takes nothing: another upgrade
/// and a put fail, and no later disk operation succeeds.
fn latched(label: &str, store: &Store, disk: &FaultBackend, returned: u64) -> Vec<String> {
    let mut violations = Vec::new();
    if store.upgrade(&NoProgress).is_ok() {
        violations.push(format!(
            "{label}: a second upgrade on the failed handle succeeded"
        ));
    }
    let input = Path::new(FIXTURE).join("base.safetensors");
    if store
        .put("new", &input, &PutOptions::default(), &NoProgress)
        .is_ok()
    {
        violations.push(format!("{label}: a put on the failed handle succeeded"));
    }
    let later: Vec<_> = disk
        .log()
        .into_iter()
        .filter(|o| o.index >= returned && o.ok)
        .collect();
    if !later.is_empty() {
        violations.push(format!(
            "{label}: {} disk operations accepted after the failed upgrade: {later:?}",
            later.len()
        ));
    }
    violations
}

/// Reopens the store on a healthy image of `disk` as the failure left it; checks it, upgrades
/// it again and checks it and its pack bytes. Returns whether it reopened upgraded.
fn reopen_and_finish(root: &Path, disk: &FaultBackend, clean: &Clean) -> Result<bool, String> {
    let scratch = root.parent().unwrap();
    let image = disk.current_image();
    let store = open(root, &image).map_err(|e| format!("reopen failed: {e}"))?;
    let version = store.format_version();
    check(&store, scratch).map_err(|e| format!("reopened as format {version}: {e}"))?;
    store
        .upgrade(&NoProgress)
        .map_err(|e| format!("the second upgrade failed: {e}"))?;
    check(&store, scratch).map_err(|e| format!("after the second upgrade: {e}"))?;
    if image.file_bytes() != clean.after {
        return Err(format!(
            "{} pack bytes after the second upgrade, {} after a clean one ({:?})",
            image.file_bytes(),
            clean.after,
            image.names()
        ));
    }
    Ok(version == 2)
}

/// Sums runs and prints their figures; fails on any violation.
fn report(what: &str, tried: String, runs: Vec<Run>) {
    let failed = runs.iter().filter(|r| r.failed).count();
    let clean = runs.iter().filter(|r| r.clean_error).count();
    let upgraded = runs.iter().filter(|r| r.reopened_upgraded).count();
    let violations: Vec<String> = runs.into_iter().flat_map(|r| r.violations).collect();
    eprintln!(
        "{what}: {tried}; {failed} upgrades failed, clean errors = {clean} of {failed}; \
         {upgraded} reopened upgraded, the rest as format 1; violations = {}",
        violations.len()
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn an_io_error_anywhere_in_the_upgrade_fails_it_cleanly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clean = clean_upgrade(dir.path());
    assert!(clean.ops > 5, "{} operations", clean.ops);
    let mut faults: Vec<(String, Fault)> = Vec::new();
    for k in 0..clean.ops {
        let at = clean.start + k;
        faults.push((format!("op {k} fails once"), Fault::once(at)));
        faults.push((format!("op {k} fails for good"), Fault::sticky(at)));
    }
    if full_run() {
        for &(kind, before, during) in &clean.per_kind {
            for j in 0..during {
                let once = Fault {
                    only: Some(kind),
                    error: IoKind::StorageFull,
                    ..Fault::once(before + j)
                };
                let sticky = Fault {
                    only: Some(kind),
                    ..Fault::sticky(before + j)
                };
                let name = kind.name();
                faults.push((format!("{name} #{j} fails once (ENOSPC)"), once));
                faults.push((format!("every {name} from #{j} on fails"), sticky));
            }
        }
    }
    let runs: Vec<Run> = faults
        .iter()
        .enumerate()
        .map(|(i, (label, fault))| {
            faulty_upgrade(
                label,
                &dir.path().join(format!("f{i}")),
                &clean,
                |disk| disk.inject(*fault),
                true,
                |e| e.kind() == ErrorKind::Io,
            )
        })
        .collect();
    report(
        "upgrade io errors",
        format!(
            "{} faults tried ({} operations x once/sticky{})",
            faults.len(),
            clean.ops,
            if full_run() {
                ", plus per kind of operation"
            } else {
                ""
            }
        ),
        runs,
    );
}

#[test]
fn a_disk_that_fills_anywhere_in_the_upgrade_fails_it_cleanly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clean = clean_upgrade(dir.path());
    assert!(
        clean.peak > clean.before,
        "{} -> {}",
        clean.before,
        clean.peak
    );
    let steps: u64 = if full_run() { 512 } else { 64 };
    let room = clean.peak - clean.before;
    let runs: Vec<Run> = (0..=steps)
        .map(|i| {
            let budget = clean.before + room * i / steps;
            faulty_upgrade(
                &format!("budget {budget} B"),
                &dir.path().join(format!("b{i}")),
                &clean,
                |disk| disk.set_budget(Some(budget)),
                budget < clean.peak,
                |e| io_kind(e) == Some(IoKind::StorageFull),
            )
        })
        .collect();
    report(
        "upgrade disk full",
        format!(
            "{} budgets tried ({} to {} B)",
            steps + 1,
            clean.before,
            clean.peak
        ),
        runs,
    );
}

#[test]
fn a_flipped_bit_in_an_upgraded_store_is_detected_or_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let root = copy_fixture(&dir.path().join("upgraded"));
    let store = Store::open_writer(&root).unwrap();
    store.upgrade(&NoProgress).unwrap();
    drop(store);
    let packs: Vec<String> = std::fs::read_dir(root.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".pack"))
        .collect();
    assert!(!packs.is_empty());
    let points: u64 = if full_run() { 512 } else { 64 };
    let (mut flips, mut detected, mut harmless) = (0, 0, 0);
    let mut violations = Vec::new();
    for pack in &packs {
        let len = std::fs::metadata(root.join("packs").join(pack))
            .unwrap()
            .len();
        for i in 0..points {
            let offset = len * i / points + i % 7;
            let label = format!("{pack} byte {offset} bit {}", i % 8);
            let copy = dir.path().join(format!("flip-{flips}"));
            copy_tree(&root, &copy);
            let file = copy.join("packs").join(pack);
            let mut bytes = std::fs::read(&file).unwrap();
            bytes[offset as usize] ^= 1 << (i % 8);
            std::fs::write(&file, bytes).unwrap();
            flips += 1;
            match catch_unwind(AssertUnwindSafe(|| read_everything(&copy, dir.path()))) {
                Err(_) => violations.push(format!("{label}: panic")),
                Ok(Err(wrong)) => violations.push(format!("{label}: {wrong}")),
                Ok(Ok(true)) => detected += 1,
                Ok(Ok(false)) => harmless += 1,
            }
            std::fs::remove_dir_all(&copy).unwrap();
        }
    }
    eprintln!(
        "upgraded store bit flips: {flips} flips over {} pack files; {detected} detected, \
         {harmless} harmless; silent wrong bytes and panics = {}",
        packs.len(),
        violations.len()
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    assert!(detected > 0, "no flip was detected");
}

/// Opens the store at `root` read-only, reads every model and verifies it. `Ok(true)`: the
/// damage was reported; `Ok(false)`: everything read back right and verified clean; `Err`: a
/// model read back wrong bytes without an error.
fn read_everything(root: &Path, scratch: &Path) -> Result<bool, String> {
    let store = match Store::open(root) {
        Ok(store) => store,
        Err(_) => return Ok(true),
    };
    let mut detected = false;
    for (name, want) in expected() {
        let out = scratch.join(format!("flip-out-{name}"));
        let _ = std::fs::remove_dir_all(&out).or_else(|_| std::fs::remove_file(&out));
        match store.get(name, &out, &NoProgress) {
            Err(_) => detected = true,
            Ok(_) if same_tree(&out, &want) => {}
            Ok(_) => return Err(format!("{name} read back wrong bytes without an error")),
        }
    }
    match store.verify(&NoProgress) {
        Ok(v) if v.problems.is_empty() => Ok(detected),
        _ => Ok(true),
    }
}

/// Copies the directory tree `from` to `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
