//! Invariant: a power loss at any point of a write leaves the store, once reopened and recovered, at exactly what was acknowledged: every acknowledged model reads back (exactly or within its bound), no unacknowledged model is listed, verify finds nothing, torn or lost unsynced bytes are never served, and gc afterwards leaks nothing.
//!
//! For every operation k of the workload (put base, put a lossless fine-tune, put a bounded
//! fine-tune, rm, gc) the run is repeated with power lost at k, and the disk is rebuilt as it
//! could be after the crash: every unsynced operation kept, none, and several seeded random
//! choices (kept, dropped or torn at 512 B, 4 KiB or a byte, and reordered). The default run
//! checks 4 random images per point; `NEURSTORE_FULL_RELIABILITY=1` checks 256. A second power
//! loss is injected at every operation of the recovery of the keep-all image and of one random
//! image (8 in the full run).

mod fault_workload;

use fault_workload::{
    Model, Run, Tally, check_rebuilt, check_reopened, copy_catalog, full_run, models, ms, parallel,
    run, try_open,
};
use neurstore_storage::fault::{CrashPolicy, FaultBackend, ImageStats, OpKind, OpRecord};

#[test]
fn crash_at_every_write_point() {
    let models = models();
    let clean_disk = FaultBackend::new();
    let clean = run(&clean_disk, &models, |store| {
        // The workload exercises what it claims to: deltas and a bounded model against the base.
        let ft2 = store.info("ft2").unwrap();
        // (A tiny tensor may stay standalone: a delta must save a real margin to be taken.)
        assert!(
            ft2.tensors.iter().all(|t| t.codec == "quantized")
                && ft2
                    .tensors
                    .iter()
                    .filter(|t| t.raw_bytes >= 4096)
                    .all(|t| t.base.is_some()),
            "{:?}",
            ft2.tensors
        );
    });
    assert!(clean.open.is_ok(), "{:?}", clean.open);
    for s in &clean.steps {
        assert!(s.outcome.is_ok(), "clean run: {:?}", s);
    }
    let ft = clean.steps[1].put_report.as_ref().unwrap();
    // The two weight matrices are deltas (the 256-byte bias may stay standalone).
    assert!(ft.name == "ft" && ft.delta_tensors >= 2, "{ft:?}");
    let n = clean_disk.ops();
    let log = clean_disk.log();
    let kinds: Vec<String> = OpKind::ALL
        .iter()
        .map(|k| format!("{} {}", clean_disk.ops_of(*k), k.name()))
        .collect();
    eprintln!(
        "crash points: workload = {n} operations ({})",
        kinds.join(", ")
    );
    assert!(log.iter().any(|o| o.kind == OpKind::Barrier));

    let seeds: u64 = if full_run() { 256 } else { 4 };
    // k = n loses power after the last operation (only unsynced state is at stake).
    let results = parallel(n + 1, |k| crash_at(k, n, seeds, &models, &log));
    let mut tally = Tally::default();
    let mut images = ImageStats::default();
    for (t, stats) in results {
        tally.merge(t);
        images.kept += stats.kept;
        images.dropped += stats.dropped;
        images.torn += stats.torn;
        images.dir_ops_dropped += stats.dir_ops_dropped;
    }
    let images_checked = (n + 1) * (seeds + 2);
    eprintln!(
        "crash points: {} points x {} images ({} random seeds + keep-all + drop-all) = {} images, \
         each reopened and also rebuilt from its packs alone (catalog lost), \
         plus {} power losses during recovery x 2 images; violations = {}; torn bytes served = {}; \
         bytes leaked after gc = {}; recovery time max = {:.1} ms",
        n + 1,
        seeds + 2,
        seeds,
        images_checked,
        tally.recovery_crash_points,
        tally.violations,
        tally.wrong_bytes_served,
        tally.leaked_bytes,
        ms(tally.recovery_max),
    );
    // Every image is checked twice: reopened, and rebuilt from its packs with the catalog lost.
    assert_eq!(
        tally.checks,
        2 * images_checked + 2 * tally.recovery_crash_points
    );
    eprintln!(
        "crash points: unsynced file operations kept {}, dropped {}, torn {}; directory operations dropped {}; \
         recovery truncated {} bytes and removed {} orphan packs in all",
        images.kept,
        images.dropped,
        images.torn,
        images.dir_ops_dropped,
        tally.truncated_bytes,
        tally.orphan_packs
    );
    tally.assert_clean();
}

/// Loses power at operation `k` of the workload (of `n`), then checks the keep-all, drop-all
/// and `seeds` random images of the disk.
fn crash_at(k: u64, n: u64, seeds: u64, models: &[Model], log: &[OpRecord]) -> (Tally, ImageStats) {
    let mut tally = Tally::default();
    let mut images = ImageStats::default();
    let disk = FaultBackend::new();
    disk.crash_at(k);
    let crashed = run(&disk, models, |_| {});
    if crashed.panics() > 0 {
        tally.violation(format!("k={k}: panic during the workload"));
    }
    if k < n && crashed.first_failure().is_none() {
        tally.violation(format!("k={k}: the power loss surfaced no error"));
    }
    let at = log
        .get(k as usize)
        .map_or("after the end".to_string(), |o| {
            format!("{} {}", o.kind.name(), o.target)
        });
    let mut policies = vec![
        ("keep-all".to_string(), CrashPolicy::KeepAll, 0),
        ("drop-all".to_string(), CrashPolicy::DropAll, 0),
    ];
    for seed in 0..seeds {
        policies.push((format!("random seed {seed}"), CrashPolicy::Random, seed));
    }
    for (label, policy, seed) in policies {
        let image = disk.crash_image(policy, seed.wrapping_mul(0x1_0000_0001) ^ k);
        let stats = image.image_stats();
        images.kept += stats.kept;
        images.dropped += stats.dropped;
        images.torn += stats.torn;
        images.dir_ops_dropped += stats.dir_ops_dropped;
        let label = format!("k={k} ({at}), {label}");
        let recovery_seeds = if full_run() { 8 } else { 1 };
        if policy == CrashPolicy::KeepAll || policy == CrashPolicy::Random && seed < recovery_seeds
        {
            crash_during_recovery(&label, &crashed, &image, models, &mut tally);
        }
        tally.add(
            &format!("{label}, catalog lost"),
            check_rebuilt(&image, &crashed, models),
        );
        let check = check_reopened(&crashed.root, image, &crashed.acked, models);
        tally.add(&label, check);
    }
    (tally, images)
}

/// Loses power again at every operation of the recovery of `image`, then checks the store
/// reopened from what that second crash left (nothing unsynced kept, and a random image).
fn crash_during_recovery(
    label: &str,
    crashed: &Run,
    image: &FaultBackend,
    models: &[Model],
    tally: &mut Tally,
) {
    let probe = image.current_image();
    let (_dir, root) = copy_catalog(&crashed.root);
    let opened = try_open(&root, &probe);
    if !opened.is_ok() {
        return; // check_reopened reports it
    }
    for j in 0..probe.ops() {
        // Recovery writes the catalog too (it forgets the packs it removed): start each try
        // from the catalog as the crash left it.
        let (_dir, root) = copy_catalog(&crashed.root);
        let disk = image.current_image();
        disk.crash_at(j);
        if try_open(&root, &disk).is_ok() {
            tally.violation(format!(
                "{label}, recovery op {j}: the power loss surfaced no error"
            ));
        }
        tally.recovery_crash_points += 1;
        for (policy, seed) in [(CrashPolicy::DropAll, 0), (CrashPolicy::Random, j)] {
            let again = disk.crash_image(policy, seed);
            let check = check_reopened(&root, again, &crashed.acked, models);
            tally.add(&format!("{label}, recovery op {j}, {policy:?}"), check);
        }
    }
}
