//! The forgeries: what a hostile party with write access to a store's files could leave in it,
//! each drawn from a seeded generator (which model, row, path, offset, link).

use std::path::{Path, PathBuf};

use neurstore_storage::catalog::{Catalog, Queries, manifest};
use rusqlite::{Connection, params};

use crate::reliability_fixture::{Model, Rng};
use crate::sandbox::{Sandbox, VICTIM_LEVELS, dest_name};

/// A kind of forgery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A file row's path climbs out with `..` (the model's manifest recomputed, removed or
    /// left stale).
    PathEscape,
    /// A file row's path is absolute (a victim inside the sandbox).
    AbsolutePath,
    /// A file row's path breaks the rule another way: backslash, control character, empty or
    /// `.` component, drive, overlong.
    MalformedPath,
    /// Symbolic links planted in the output directory: at `get`'s destination and at the
    /// temporary names it used to use, pointing at victim files and directories.
    SymlinkAtDestination,
    /// Symbolic links planted among the store's own files, pointing at victims: `LOCK`, the
    /// similarity index's temporary file, or the last pack (at a victim copy of it, or at a
    /// victim file).
    SymlinkInStore,
    /// `catalog.db` cut to 0 bytes.
    EmptyCatalog,
    /// `catalog.db` overwritten with zeros: whole, its first page, or a run of pages.
    ZeroedCatalog,
    /// `catalog.db` cut at an offset (page-aligned half of the time).
    TruncatedCatalog,
    /// `catalog.db` replaced by another store's, or by this store's own older one.
    SwappedCatalog,
    /// A pack file cut at an offset.
    TruncatedPack,
    /// A tensor or file row pointed at another model's object; manifest left stale.
    ForeignRow,
    /// The same, the model's manifest removed (as for a model written before manifests).
    ForeignRowNoManifest,
    /// The same, the model's manifest recomputed (anyone can).
    RecomputedManifest,
    /// An object's blob reference (pack, offset, length, checksum, codec, base) copied from
    /// another model's object of the same length; its content key left as it was.
    ForeignBlob,
    /// Bytes of a blob changed in its pack and its checksum recomputed in the catalog.
    ResealedBlob,
}

/// Every kind, in report order.
pub const KINDS: &[Kind] = &[
    Kind::PathEscape,
    Kind::AbsolutePath,
    Kind::MalformedPath,
    Kind::SymlinkAtDestination,
    Kind::SymlinkInStore,
    Kind::EmptyCatalog,
    Kind::ZeroedCatalog,
    Kind::TruncatedCatalog,
    Kind::SwappedCatalog,
    Kind::TruncatedPack,
    Kind::ForeignRow,
    Kind::ForeignRowNoManifest,
    Kind::RecomputedManifest,
    Kind::ForeignBlob,
    Kind::ResealedBlob,
];

/// A store the forgeries start from.
pub struct Template {
    pub _dir: tempfile::TempDir,
    /// The undamaged store, closed.
    pub store: PathBuf,
    /// Its `catalog.db` before its last model was put.
    pub older_catalog: PathBuf,
    /// The models put, in order.
    pub models: Vec<Model>,
}

/// One forgery made.
pub struct Forgery {
    /// What was done, for reports.
    pub detail: String,
    /// A forged path `get` must refuse as `Corrupt`: (model, path).
    pub refused: Option<(String, String)>,
}

/// Makes a forgery of `kind` in the store of `sb`, a copy of `t`; `all` are every template
/// (for swapped catalogs).
pub fn forge(kind: Kind, sb: &Sandbox, t: &Template, all: &[Template], rng: &mut Rng) -> Forgery {
    let mut f = Forgery {
        detail: String::new(),
        refused: None,
    };
    match kind {
        Kind::PathEscape | Kind::AbsolutePath | Kind::MalformedPath => {
            let path = forged_path(kind, sb, rng);
            forge_path(sb, t, &path, rng, &mut f);
        }
        Kind::SymlinkAtDestination => plant_links(sb, t, rng, &mut f),
        Kind::SymlinkInStore => plant_store_links(sb, rng, &mut f),
        Kind::EmptyCatalog => {
            cut(&catalog(sb), 0);
            f.detail = "catalog.db cut to 0 bytes".into();
        }
        Kind::ZeroedCatalog => zero_catalog(sb, rng, &mut f),
        Kind::TruncatedCatalog => {
            let path = catalog(sb);
            let len = file_len(&path);
            let at = if rng.below(2) == 0 {
                4096 * (1 + rng.below((len / 4096).max(2) - 1))
            } else {
                1 + rng.below(len - 1)
            }
            .min(len - 1);
            cut(&path, at);
            f.detail = format!("catalog.db cut from {len} to {at} B");
        }
        Kind::SwappedCatalog => {
            let from = if rng.below(2) == 0 {
                f.detail = "catalog.db replaced by this store's older one".into();
                t.older_catalog.clone()
            } else {
                let other = &all[rng.below(all.len() as u64) as usize];
                f.detail = "catalog.db replaced by another store's".into();
                other.store.join("catalog.db")
            };
            std::fs::copy(from, catalog(sb)).unwrap();
        }
        Kind::TruncatedPack => truncate_pack(sb, rng, &mut f),
        Kind::ForeignRow | Kind::ForeignRowNoManifest | Kind::RecomputedManifest => {
            foreign_row(sb, kind, rng, &mut f)
        }
        Kind::ForeignBlob => foreign_blob(sb, rng, &mut f),
        Kind::ResealedBlob => reseal_blob(sb, rng, &mut f),
    }
    f
}

fn catalog(sb: &Sandbox) -> PathBuf {
    sb.store.join("catalog.db")
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

fn cut(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn pick<'a, T>(items: &'a [T], rng: &mut Rng) -> &'a T {
    &items[rng.below(items.len() as u64) as usize]
}

/// A path of `kind`: each aims at a victim (or a new file) inside the sandbox, so that even a
/// store that followed it would write nowhere else.
fn forged_path(kind: Kind, sb: &Sandbox, rng: &mut Rng) -> String {
    match kind {
        Kind::PathEscape => {
            // From get's old temporary directory inside the output, five levels up is the
            // sandbox root; deeper escapes would leave the sandbox.
            let up = 1 + rng.below(5) as usize;
            let leaf = match (up, rng.below(3)) {
                (_, 0) => "victim.txt",
                (5, 1) => "store/packs/00000001.pack",
                _ => "planted.txt",
            };
            match rng.below(3) {
                0 => format!("{}{leaf}", "../".repeat(up)),
                1 => format!("tokenizer/{}{leaf}", "../".repeat(up + 1)),
                _ => format!("a/b/{}{leaf}", "../".repeat(up + 2)),
            }
        }
        Kind::AbsolutePath => {
            let level = pick(&VICTIM_LEVELS, rng);
            let name = if rng.below(2) == 0 {
                "victim.txt"
            } else {
                "planted.txt"
            };
            sb.root.join(level).join(name).display().to_string()
        }
        _ => {
            let cases = [
                "tokenizer\\..\\..\\victim.txt".to_string(),
                "..\\..\\..\\victim.txt".into(),
                "tokenizer//vocab.txt".into(),
                "./config.json".into(),
                "tokenizer/./vocab.txt".into(),
                "config.json\0.txt".into(),
                "conf\nig.json".into(),
                "config\u{7f}.json".into(),
                "\u{9b}config.json".into(),
                "C:/victim.txt".into(),
                "c:victim.txt".into(),
                String::new(),
                "tokenizer/".into(),
                ".".into(),
                "..".into(),
                "x".repeat(5000),
            ];
            pick(&cases, rng).clone()
        }
    }
}

/// Renames a file row of a model (and its tensor rows, for a safetensors file) to `path`; the
/// model's manifest is recomputed, removed or left stale.
fn forge_path(sb: &Sandbox, t: &Template, path: &str, rng: &mut Rng, f: &mut Forgery) {
    // Directory models most of the time: their paths are where get writes.
    let dirs: Vec<&Model> = t.models.iter().filter(|m| m.directory).collect();
    let model = if rng.below(5) > 0 && !dirs.is_empty() {
        *pick(&dirs, rng)
    } else {
        pick(&t.models, rng)
    };
    let old = pick(&model.files, rng).0.clone();
    let conn = Connection::open(catalog(sb)).unwrap();
    let id: i64 = conn
        .query_row(
            "SELECT model_id FROM models WHERE name = ?1",
            [&model.name],
            |r| r.get(0),
        )
        .unwrap();
    conn.execute(
        "UPDATE model_files SET path = ?1 WHERE model_id = ?2 AND path = ?3",
        params![path, id, old],
    )
    .unwrap();
    conn.execute(
        "UPDATE model_tensors SET path = ?1 WHERE model_id = ?2 AND path = ?3",
        params![path, id, old],
    )
    .unwrap();
    drop(conn);
    let how = seal(sb, &model.name, rng.below(3));
    f.detail = format!("{}: {old:?} renamed {path:?}, manifest {how}", model.name);
    f.refused = Some((model.name.clone(), path.to_string()));
}

/// What becomes of a forged model's manifest: 0 recomputed, 1 removed, 2 left stale.
fn seal(sb: &Sandbox, model: &str, how: u64) -> &'static str {
    match how {
        0 => {
            recompute_manifest(sb, model);
            "recomputed"
        }
        1 => {
            let conn = Connection::open(catalog(sb)).unwrap();
            conn.execute("UPDATE models SET manifest = NULL WHERE name = ?1", [model])
                .unwrap();
            "removed"
        }
        _ => "stale",
    }
}

/// Recomputes a model's manifest from its rows, as any forger can.
fn recompute_manifest(sb: &Sandbox, model: &str) {
    let mut cat = Catalog::open(&catalog(sb), false).unwrap();
    let digest = {
        let q = cat.read().unwrap();
        let m = q.model(model).unwrap().unwrap();
        let files = q.model_files(m.id).unwrap();
        let tensors = q.model_tensors(m.id).unwrap();
        manifest(&m, &files, &tensors)
    };
    drop(cat);
    let conn = Connection::open(catalog(sb)).unwrap();
    conn.execute(
        "UPDATE models SET manifest = ?1 WHERE name = ?2",
        params![digest.to_vec(), model],
    )
    .unwrap();
}

/// Plants symbolic links in the output directory at a model's destination and at temporary
/// names beside it (the name `get` used to use, and guesses at the current one), pointing at
/// victims outside it.
fn plant_links(sb: &Sandbox, t: &Template, rng: &mut Rng, f: &mut Forgery) {
    let m = pick(&t.models, rng);
    let name = dest_name(m);
    let pid = std::process::id();
    let victim_file = sb.root.join(pick(&VICTIM_LEVELS, rng)).join("victim.txt");
    let targets = [
        victim_file,
        sb.root.join("victims"),
        sb.root.join("empty-victim"),
    ];
    let mut planted = Vec::new();
    let mut plant = |at: String, target: &PathBuf| {
        std::os::unix::fs::symlink(target, sb.out.join(&at)).unwrap();
        planted.push(at);
    };
    let which = rng.below(4);
    if which == 0 || which == 3 {
        plant(name.clone(), pick(&targets, rng));
    }
    if which == 1 || which == 3 {
        plant(
            format!(".{name}.neurstore-partial-{pid}"),
            pick(&targets, rng),
        );
    }
    if which == 2 || which == 3 {
        for n in 0..4 {
            plant(
                format!(".{name}.neurstore-partial-{pid}-00000000{n:02}"),
                &targets[0],
            );
        }
    }
    f.detail = format!("links planted for {}: {planted:?}", m.name);
}

/// Replaces one of the store's own files by a symbolic link to a victim outside it (what a
/// co-user with write access to a shared store could do to the next writer).
fn plant_store_links(sb: &Sandbox, rng: &mut Rng, f: &mut Forgery) {
    let victim = sb.root.join(pick(&VICTIM_LEVELS, rng)).join("victim.txt");
    let mut packs: Vec<String> = std::fs::read_dir(sb.store.join("packs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pack"))
        .collect();
    packs.sort();
    let last = sb.store.join("packs").join(packs.last().unwrap());
    let (at, target) = match rng.below(4) {
        0 => (sb.store.join("LOCK"), victim),
        1 => (sb.store.join("packs/index.hnsw.tmp"), victim),
        2 => {
            // The pack moved out of the store, a link left in its place: reads still work.
            let moved = sb.root.join("moved.pack");
            std::fs::copy(&last, &moved).unwrap();
            (last, moved)
        }
        _ => (last, victim),
    };
    let _ = std::fs::remove_file(&at);
    std::os::unix::fs::symlink(&target, &at).unwrap();
    let rel = |p: &Path| p.strip_prefix(&sb.root).unwrap().display().to_string();
    f.detail = format!("{} linked to {}", rel(&at), rel(&target));
}

fn zero_catalog(sb: &Sandbox, rng: &mut Rng, f: &mut Forgery) {
    let path = catalog(sb);
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    let range = match rng.below(3) {
        0 => 0..len,
        1 => 0..4096.min(len),
        _ => {
            let pages = (len / 4096).max(1) as u64;
            let start = rng.below(pages) as usize * 4096;
            let n = 1 + rng.below(4) as usize;
            start.min(len)..(start + n * 4096).min(len)
        }
    };
    bytes[range.clone()].fill(0);
    std::fs::write(&path, bytes).unwrap();
    f.detail = format!("catalog.db bytes {range:?} of {len} zeroed");
}

fn truncate_pack(sb: &Sandbox, rng: &mut Rng, f: &mut Forgery) {
    let mut names: Vec<String> = std::fs::read_dir(sb.store.join("packs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pack"))
        .collect();
    names.sort();
    let name = pick(&names, rng).clone();
    let path = sb.store.join("packs").join(&name);
    let len = file_len(&path);
    let at = match rng.below(4) {
        0 => 0,
        1 => rng.below(len.div_ceil(4096)) * 4096,
        _ => rng.below(len),
    }
    .min(len.saturating_sub(1));
    cut(&path, at);
    f.detail = format!("{name} cut from {len} to {at} B");
}

/// Every tensor and file row of every model: (model name, row key: `path#position` for a
/// tensor row, the path for a file row, object id, object kind (0 tensor, 1 file), dtype,
/// shape, raw length).
type RowRef = (
    String,
    String,
    i64,
    i64,
    Option<String>,
    Option<String>,
    i64,
);

fn rows(conn: &Connection) -> Vec<RowRef> {
    let sql = "SELECT m.name, t.path || '#' || t.position, o.object_id, o.kind, o.dtype, o.shape, o.raw_len \
               FROM model_tensors t JOIN models m USING (model_id) JOIN objects o USING (object_id) \
               UNION ALL \
               SELECT m.name, f.path, o.object_id, o.kind, o.dtype, o.shape, o.raw_len \
               FROM model_files f JOIN models m USING (model_id) JOIN objects o USING (object_id) \
               ORDER BY 1, 2";
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// A row of one model and an object of another model that fits it: same kind, dtype, shape
/// and length when there is one (so only the bytes differ), else any other object of the
/// same class.
fn foreign_pair(rows: &[RowRef], rng: &mut Rng) -> (RowRef, RowRef) {
    let fits = |a: &RowRef, b: &RowRef| a.0 != b.0 && a.2 != b.2 && a.3 == b.3;
    let exact = |a: &RowRef, b: &RowRef| fits(a, b) && a.4 == b.4 && a.5 == b.5 && a.6 == b.6;
    let pairs: Vec<(usize, usize)> = (0..rows.len())
        .flat_map(|i| (0..rows.len()).map(move |j| (i, j)))
        .filter(|&(i, j)| exact(&rows[i], &rows[j]))
        .collect();
    let pairs = if pairs.is_empty() || rng.below(4) == 0 {
        (0..rows.len())
            .flat_map(|i| (0..rows.len()).map(move |j| (i, j)))
            .filter(|&(i, j)| fits(&rows[i], &rows[j]))
            .collect()
    } else {
        pairs
    };
    let (i, j) = *pick(&pairs, rng);
    (rows[i].clone(), rows[j].clone())
}

fn foreign_row(sb: &Sandbox, kind: Kind, rng: &mut Rng, f: &mut Forgery) {
    let conn = Connection::open(catalog(sb)).unwrap();
    let (row, other) = foreign_pair(&rows(&conn), rng);
    let model_id: i64 = conn
        .query_row(
            "SELECT model_id FROM models WHERE name = ?1",
            [&row.0],
            |r| r.get(0),
        )
        .unwrap();
    let changed = match row.1.rsplit_once('#') {
        Some((path, pos)) => conn.execute(
            "UPDATE model_tensors SET object_id = ?1 WHERE model_id = ?2 AND path = ?3 AND position = ?4",
            params![other.2, model_id, path, pos.parse::<i64>().unwrap()],
        ),
        None => conn.execute(
            "UPDATE model_files SET object_id = ?1 WHERE model_id = ?2 AND path = ?3",
            params![other.2, model_id, row.1],
        ),
    }
    .unwrap();
    assert_eq!(changed, 1, "{row:?}");
    drop(conn);
    let how = match kind {
        Kind::RecomputedManifest => seal(sb, &row.0, 0),
        Kind::ForeignRowNoManifest => seal(sb, &row.0, 1),
        _ => seal(sb, &row.0, 2),
    };
    f.detail = format!(
        "{} {:?} pointed at object {} of {} {:?}, manifest {how}",
        row.0, row.1, other.2, other.0, other.1
    );
}

fn foreign_blob(sb: &Sandbox, rng: &mut Rng, f: &mut Forgery) {
    let conn = Connection::open(catalog(sb)).unwrap();
    let (row, other) = foreign_pair(&rows(&conn), rng);
    conn.execute(
        "UPDATE objects SET (codec, pack_id, offset, stored_len, checksum, base_id, chain_depth, tolerance, max_error) = \
         (SELECT codec, pack_id, offset, stored_len, checksum, base_id, chain_depth, tolerance, max_error \
          FROM objects WHERE object_id = ?2) WHERE object_id = ?1",
        params![row.2, other.2],
    )
    .unwrap();
    f.detail = format!(
        "object {} ({} {:?}) given the blob of object {} ({} {:?})",
        row.2, row.0, row.1, other.2, other.0, other.1
    );
}

fn reseal_blob(sb: &Sandbox, rng: &mut Rng, f: &mut Forgery) {
    let conn = Connection::open(catalog(sb)).unwrap();
    let objects: Vec<(i64, i64, i64, i64, i64)> = conn
        .prepare("SELECT object_id, pack_id, offset, stored_len, codec FROM objects WHERE stored_len > 0")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let (id, pack, offset, len, codec) = *pick(&objects, rng);
    let path = sb
        .store
        .join("packs")
        .join(neurstore_storage::pack::pack_file_name(pack as u64));
    let mut bytes = std::fs::read(&path).unwrap();
    let blob = &mut bytes[offset as usize..(offset + len) as usize];
    let at = rng.below(len as u64) as usize;
    blob[at] ^= 1 << rng.below(8);
    let checksum = neurstore_core::key::checksum(blob);
    std::fs::write(&path, &bytes).unwrap();
    conn.execute(
        "UPDATE objects SET checksum = ?1 WHERE object_id = ?2",
        params![checksum.to_vec(), id],
    )
    .unwrap();
    f.detail =
        format!("object {id} (codec {codec}): byte {at} of its blob changed, checksum resealed");
}
