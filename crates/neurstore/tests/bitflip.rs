//! Invariant: a flipped byte anywhere in a pack file, the similarity index file or the catalog is detected (a read or verify reports it) or harmless (every model still reads back right); a read never returns wrong bytes without an error, and nothing panics or aborts.
//!
//! The fixture store holds a base, a lossless fine-tune (deltas against the base), a fine-tune
//! within 1e-3 (quantized against the base) and a model directory, over several pack files. For
//! each point of a grid over every pack file, `packs/index.hnsw` and `catalog.db` (the store
//! closed, so the write-ahead log is checkpointed into it), one bit is flipped in a fresh copy of
//! the store, which is then opened read-only; every model is read with `get` and `load` and
//! compared with its original (bit-exact, or within its bound), and `verify` runs. A flip in the
//! index file must leave a similarity search (a dry-run put of another fine-tune) planning
//! exactly as on the undamaged store: the index is derived data and is rebuilt. The default grid
//! has a few hundred points; `NEURSTORE_FULL_RELIABILITY=1` makes it about ten times denser.

mod reliability_fixture;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use neurstore::{NoProgress, PutOptions, PutReport, Store};
use neurstore_storage::index::TensorIndex;
use neurstore_storage::pack::pack_file_name;
use neurstore_storage::record::PACK_HEADER_LEN;
use neurstore_storage::{Engine, EngineOptions};
use reliability_fixture::{
    Model, base_tensors, build_store, copy_store, fine_tune, full_run, models, panic_message,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Pack,
    Index,
    Catalog,
}

/// What one flip led to.
#[derive(Default)]
struct Outcome {
    /// A read or verify reported the damage.
    detected: bool,
    /// Errors seen, by kind.
    errors: BTreeMap<String, u64>,
    /// A read that returned Ok with wrong data.
    wrong: Vec<String>,
    /// Any other broken promise (a panic, an index flip that changed a plan).
    violations: Vec<String>,
}

#[derive(Default)]
struct Tally {
    flips: BTreeMap<Target, u64>,
    detected: u64,
    harmless: u64,
    wrong: Vec<String>,
    panics: u64,
    violations: Vec<String>,
    errors: BTreeMap<String, u64>,
    /// Pack flips inside a live blob, and those of them detected.
    in_blob: (u64, u64),
    /// Pack flips in alignment padding, and those of them harmless.
    in_padding: (u64, u64),
}

/// A plan of a dry-run put, reduced to what the similarity index decides.
fn plan_signature(report: &PutReport) -> String {
    let bases: Vec<String> = report
        .tensor_reports
        .iter()
        .map(|t| format!("{}:{}:{:?}", t.name, t.codec, t.base))
        .collect();
    format!(
        "{} deltas, base model {:?}: {}",
        report.delta_tensors,
        report.base_model,
        bases.join(", ")
    )
}

/// A fine-tune of the base the store does not hold, planned (not written) with a search.
fn probe(store: &Store, input: &Path) -> neurstore::Result<PutReport> {
    let options = PutOptions {
        dry_run: true,
        ..Default::default()
    };
    store.put("probe", input, &options, &NoProgress)
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// Byte ranges of live blobs, by pack file name.
    blobs: BTreeMap<String, Vec<(usize, usize)>>,
    work: PathBuf,
    models: Vec<Model>,
    probe_input: PathBuf,
    probe_plan: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let models = models();
    build_store(&root, &models);
    assert!(
        !root.join("catalog.db-wal").exists(),
        "closing the store checkpoints the log into catalog.db"
    );
    let probe_model = Model::file(
        "probe",
        fine_tune(&base_tensors(0xBA5E), 3, 5e-4),
        neurstore::Mode::Lossless,
    );
    let probe_input = probe_model.write_input(dir.path());
    let store = Store::open(&root).unwrap();
    let report = probe(&store, &probe_input).unwrap();
    assert!(report.delta_tensors > 0, "{report:?}");
    let probe_plan = plan_signature(&report);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let (engine, _) = Engine::open(&root, EngineOptions::default()).unwrap();
    // Every live record (objects, and the models' manifest records, which verify reads);
    // the pack header is read by nothing but a rebuild.
    let mut blobs: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    for (pack_id, spans) in engine.live_spans().unwrap() {
        blobs.insert(
            format!("packs/{}", pack_file_name(pack_id)),
            spans
                .into_iter()
                .filter(|&(a, _)| a >= PACK_HEADER_LEN)
                .map(|(a, b)| (a as usize, b as usize))
                .collect(),
        );
    }
    drop(engine);
    Fixture {
        _dir: dir,
        root,
        blobs,
        work,
        models,
        probe_input,
        probe_plan,
    }
}

/// Reads everything from the damaged copy at `root`.
fn check_copy(f: &Fixture, root: &Path, target: Target, out: &mut Outcome) {
    let error = |out: &mut Outcome, e: &neurstore::Error| {
        out.detected = true;
        *out.errors.entry(format!("{:?}", e.kind())).or_default() += 1;
    };
    if target == Target::Index {
        // What the store does with the file when it needs the index: any damage is an error,
        // and the store rebuilds the index from the catalog.
        let bytes = std::fs::read(root.join("packs/index.hnsw")).unwrap();
        if TensorIndex::decode(&bytes).is_err() {
            out.detected = true;
            *out.errors.entry("index rebuilt".into()).or_default() += 1;
        }
    }
    let store = match Store::open(root) {
        Ok(s) => s,
        Err(e) => return error(out, &e),
    };
    let get_out = root.join("get.out");
    for m in &f.models {
        let _ = std::fs::remove_dir_all(&get_out).or_else(|_| std::fs::remove_file(&get_out));
        match store.get(&m.name, &get_out, &NoProgress) {
            Ok(_) => {
                if let Err(e) = m.check_get(&get_out) {
                    out.wrong.push(format!("get {}: {e}", m.name));
                }
            }
            Err(e) => error(out, &e),
        }
        match store.load(&m.name) {
            Ok(loaded) => {
                if let Err(e) = m.check_load(&loaded) {
                    out.wrong.push(format!("load {}: {e}", m.name));
                }
            }
            Err(e) => error(out, &e),
        }
    }
    match store.verify(&NoProgress) {
        Ok(report) if report.problems.is_empty() => {}
        Ok(_) => {
            out.detected = true;
            *out.errors.entry("verify problem".into()).or_default() += 1;
        }
        Err(e) => error(out, &e),
    }
    if target == Target::Index {
        match probe(&store, &f.probe_input) {
            Ok(report) if plan_signature(&report) == f.probe_plan => {}
            Ok(report) => out.violations.push(format!(
                "similarity search changed: {} instead of {}",
                plan_signature(&report),
                f.probe_plan
            )),
            Err(e) => out
                .violations
                .push(format!("a put failed on a damaged index file: {e}")),
        }
    }
}

fn flip_at(f: &Fixture, n: u64, rel: &str, target: Target, offset: usize, bit: u8) -> Outcome {
    let copy = f.work.join(format!("flip-{n}"));
    copy_store(&f.root, &copy);
    let path = copy.join(rel);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset] ^= 1 << bit;
    std::fs::write(&path, &bytes).unwrap();
    let mut out = Outcome::default();
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| check_copy(f, &copy, target, &mut out))) {
        out.violations
            .push(format!("panic: {}", panic_message(p.as_ref())));
    }
    std::fs::remove_dir_all(&copy).unwrap();
    out
}

/// The files flipped, with their target class.
fn targets(root: &Path) -> Vec<(String, Target)> {
    let mut packs: Vec<String> = std::fs::read_dir(root.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".pack"))
        .collect();
    packs.sort();
    assert!(
        packs.len() >= 3,
        "the fixture spans several packs: {packs:?}"
    );
    let mut out: Vec<(String, Target)> = packs
        .into_iter()
        .map(|p| (format!("packs/{p}"), Target::Pack))
        .collect();
    out.push(("packs/index.hnsw".into(), Target::Index));
    out.push(("catalog.db".into(), Target::Catalog));
    out
}

#[test]
fn bit_flips_are_detected_or_harmless() {
    let started = Instant::now();
    let f = fixture();
    // Odd strides coprime with the 4 KiB page and the 4 KiB SQLite page visit every position
    // within a page over the sweep; the flipped bit cycles through all eight.
    let (pack_stride, index_stride, catalog_stride) = if full_run() {
        (37, 11, 23)
    } else {
        (397, 97, 211)
    };
    let mut tally = Tally::default();
    let mut n = 0u64;
    for (rel, target) in targets(&f.root) {
        let len = std::fs::metadata(f.root.join(&rel)).unwrap().len() as usize;
        let stride = match target {
            Target::Pack => pack_stride,
            Target::Index => index_stride,
            Target::Catalog => catalog_stride,
        };
        // Start each file at a different phase so the grid does not hit the same page offsets.
        let phase = (n as usize * 131) % stride;
        for offset in (phase..len).step_by(stride) {
            let out = flip_at(&f, n, &rel, target, offset, (n % 8) as u8);
            n += 1;
            *tally.flips.entry(target).or_default() += 1;
            for (kind, count) in out.errors {
                *tally.errors.entry(kind).or_default() += count;
            }
            if target == Target::Pack {
                let in_blob = f.blobs[&rel].iter().any(|&(a, b)| (a..b).contains(&offset));
                let slot = if in_blob {
                    &mut tally.in_blob
                } else {
                    &mut tally.in_padding
                };
                slot.0 += 1;
                slot.1 += u64::from(out.detected == in_blob);
            }
            if out.detected {
                tally.detected += 1;
            } else if out.wrong.is_empty() {
                tally.harmless += 1;
            }
            let at = format!("{rel} byte {offset} bit {}", n.wrapping_sub(1) % 8);
            tally.panics += out
                .violations
                .iter()
                .filter(|v| v.starts_with("panic"))
                .count() as u64;
            tally
                .wrong
                .extend(out.wrong.into_iter().map(|w| format!("{at}: {w}")));
            tally
                .violations
                .extend(out.violations.into_iter().map(|v| format!("{at}: {v}")));
        }
    }
    let flips: u64 = tally.flips.values().sum();
    let count = |t| tally.flips.get(&t).copied().unwrap_or(0);
    eprintln!(
        "bit flips: {flips} flips (pack {}, index {}, catalog {}); detected {}; harmless {}; silent wrong bytes = {}; panics = {}",
        count(Target::Pack),
        count(Target::Index),
        count(Target::Catalog),
        tally.detected,
        tally.harmless,
        tally.wrong.len(),
        tally.panics,
    );
    eprintln!(
        "bit flips: pack flips inside a blob {} ({} detected), in alignment padding {} ({} harmless); errors by kind {:?}; {:.1} s",
        tally.in_blob.0,
        tally.in_blob.1,
        tally.in_padding.0,
        tally.in_padding.1,
        tally.errors,
        started.elapsed().as_secs_f64()
    );
    for v in tally.wrong.iter().chain(&tally.violations).take(20) {
        eprintln!("  {v}");
    }
    assert!(
        tally.wrong.is_empty(),
        "{} silent wrong reads",
        tally.wrong.len()
    );
    assert!(
        tally.violations.is_empty(),
        "{} violations",
        tally.violations.len()
    );
    // A flip inside a blob fails its checksum; one in the padding between blobs is never read.
    assert_eq!(
        tally.in_blob.0, tally.in_blob.1,
        "undetected flips in blobs"
    );
    assert_eq!(
        tally.in_padding.0, tally.in_padding.1,
        "flips in padding detected"
    );
    assert!(tally.detected > 0 && tally.harmless > 0);
    assert_eq!(tally.detected + tally.harmless, flips);
}

/// One edit of the catalog: a description and the SQL that makes it.
type Edit = (String, String);

/// Every reference of the catalog pointed at every other plausible target: delta bases, the
/// objects of tensors and files, the model a file belongs to; rows deleted; names and formats
/// swapped. These are the catalog damages no checksum of a blob can see.
fn reference_edits(root: &Path) -> Vec<Edit> {
    let conn = rusqlite::Connection::open(root.join("catalog.db")).unwrap();
    let ids = |sql: &str| -> Vec<(i64, String)> {
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    // (id, "dtype shape raw_len") of every object, and (id, kind) of file objects.
    let objects =
        ids("SELECT object_id, coalesce(dtype, '') || coalesce(shape, '') || raw_len FROM objects");
    let mut edits = Vec::new();
    // The current value of a reference, to skip edits that change nothing.
    let current = |sql: &str, id: i64| -> i64 { conn.query_row(sql, [id], |r| r.get(0)).unwrap() };
    for (id, class) in &ids(
        "SELECT object_id, coalesce(dtype, '') || coalesce(shape, '') || raw_len FROM objects WHERE base_id IS NOT NULL",
    ) {
        let base = current("SELECT base_id FROM objects WHERE object_id = ?1", *id);
        for (other, other_class) in &objects {
            if other != id && *other != base && other_class == class {
                edits.push((
                    format!("object {id} based on object {other}"),
                    format!("UPDATE objects SET base_id = {other} WHERE object_id = {id}"),
                ));
            }
        }
    }
    for (rowid, class) in &ids(
        "SELECT t.rowid, coalesce(o.dtype, '') || coalesce(o.shape, '') || o.raw_len FROM model_tensors t JOIN objects o USING (object_id)",
    ) {
        let object = current(
            "SELECT object_id FROM model_tensors WHERE rowid = ?1",
            *rowid,
        );
        for (other, other_class) in &objects {
            if *other != object && other_class == class {
                edits.push((
                    format!("tensor row {rowid} naming object {other}"),
                    format!("UPDATE model_tensors SET object_id = {other} WHERE rowid = {rowid}"),
                ));
            }
        }
        edits.push((
            format!("tensor row {rowid} deleted"),
            format!("DELETE FROM model_tensors WHERE rowid = {rowid}"),
        ));
    }
    let files = ids("SELECT rowid, path FROM model_files");
    let file_objects = ids("SELECT object_id, '' FROM objects WHERE kind = 1");
    let models = ids("SELECT model_id, name FROM models");
    for (rowid, _) in &files {
        let object = current("SELECT object_id FROM model_files WHERE rowid = ?1", *rowid);
        let owner = current("SELECT model_id FROM model_files WHERE rowid = ?1", *rowid);
        for (other, _) in file_objects.iter().filter(|(o, _)| *o != object) {
            edits.push((
                format!("file row {rowid} naming object {other}"),
                format!("UPDATE model_files SET object_id = {other} WHERE rowid = {rowid}"),
            ));
        }
        for (model, _) in models.iter().filter(|(m, _)| *m != owner) {
            edits.push((
                format!("file row {rowid} moved to model {model}"),
                format!("UPDATE model_files SET model_id = {model} WHERE rowid = {rowid}"),
            ));
        }
        edits.push((
            format!("file row {rowid} deleted"),
            format!("DELETE FROM model_files WHERE rowid = {rowid}"),
        ));
        edits.push((
            format!("file row {rowid} renamed"),
            format!("UPDATE model_files SET path = path || 'x' WHERE rowid = {rowid}"),
        ));
    }
    for (a, name_a) in &models {
        for (b, name_b) in &models {
            if a < b {
                edits.push((
                    format!("models {name_a} and {name_b} swap names"),
                    format!(
                        "UPDATE models SET name = '#' WHERE model_id = {a}; \
                         UPDATE models SET name = '{name_a}' WHERE model_id = {b}; \
                         UPDATE models SET name = '{name_b}' WHERE model_id = {a}"
                    ),
                ));
            }
        }
        edits.push((
            format!("model {name_a} changes format"),
            format!(
                "UPDATE models SET source_format = CASE source_format WHEN 'directory' THEN 'safetensors' \
                 ELSE 'directory' END WHERE model_id = {a}"
            ),
        ));
    }
    edits
}

#[test]
fn catalog_reference_edits_are_detected_or_harmless() {
    let f = fixture();
    let edits = reference_edits(&f.root);
    let mut tally = Tally::default();
    let mut skipped = 0;
    for (n, (what, sql)) in edits.iter().enumerate() {
        let copy = f.work.join(format!("edit-{n}"));
        copy_store(&f.root, &copy);
        let conn = rusqlite::Connection::open(copy.join("catalog.db")).unwrap();
        // An edit the schema refuses (a file moved onto a path its new model has) is skipped.
        let applied = conn
            .execute_batch(&format!("BEGIN; {sql}; COMMIT;"))
            .is_ok();
        drop(conn);
        if !applied {
            std::fs::remove_dir_all(&copy).unwrap();
            skipped += 1;
            continue;
        }
        let mut out = Outcome::default();
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| {
            check_copy(&f, &copy, Target::Catalog, &mut out)
        })) {
            out.violations
                .push(format!("panic: {}", panic_message(p.as_ref())));
        }
        std::fs::remove_dir_all(&copy).unwrap();
        if out.detected {
            tally.detected += 1;
        } else if out.wrong.is_empty() {
            tally.harmless += 1;
        }
        tally.panics += out
            .violations
            .iter()
            .filter(|v| v.starts_with("panic"))
            .count() as u64;
        tally
            .wrong
            .extend(out.wrong.into_iter().map(|w| format!("{what}: {w}")));
        tally
            .violations
            .extend(out.violations.into_iter().map(|v| format!("{what}: {v}")));
    }
    eprintln!(
        "catalog reference edits: {} edits; detected {}; harmless {}; silent wrong bytes = {}; panics = {}",
        edits.len() - skipped,
        tally.detected,
        tally.harmless,
        tally.wrong.len(),
        tally.panics
    );
    for v in tally.wrong.iter().chain(&tally.violations).take(20) {
        eprintln!("  {v}");
    }
    assert!(
        tally.wrong.is_empty(),
        "{} silent wrong reads",
        tally.wrong.len()
    );
    assert!(
        tally.violations.is_empty(),
        "{} violations",
        tally.violations.len()
    );
    assert_eq!(
        tally.detected,
        (edits.len() - skipped) as u64,
        "every edit is detected"
    );
}
