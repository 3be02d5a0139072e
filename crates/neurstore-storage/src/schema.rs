//! The catalog's schema and its migrations. `PRAGMA user_version` holds the schema version.

use rusqlite::Connection;

use crate::error::{Result, StorageError};

/// Migrations in order; migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // v1: models, their files and tensors, content-addressed objects, packs.
    r#"
    CREATE TABLE store_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;
    CREATE TABLE packs (
        pack_id       INTEGER PRIMARY KEY,
        committed_len INTEGER NOT NULL CHECK (committed_len >= 0)
    ) STRICT;
    CREATE TABLE objects (
        object_id   INTEGER PRIMARY KEY,
        content_key BLOB NOT NULL UNIQUE CHECK (length(content_key) = 32),
        kind        INTEGER NOT NULL CHECK (kind IN (0, 1)),
        dtype       TEXT,
        shape       TEXT,
        raw_len     INTEGER NOT NULL CHECK (raw_len >= 0),
        codec       INTEGER NOT NULL,
        pack_id     INTEGER NOT NULL REFERENCES packs (pack_id),
        offset      INTEGER NOT NULL CHECK (offset >= 0),
        stored_len  INTEGER NOT NULL CHECK (stored_len >= 0),
        checksum    BLOB NOT NULL CHECK (length(checksum) = 32),
        refcount    INTEGER NOT NULL CHECK (refcount >= 0),
        base_id     INTEGER REFERENCES objects (object_id),
        chain_depth INTEGER NOT NULL CHECK (chain_depth >= 0),
        tolerance   REAL CHECK (tolerance IS NULL OR tolerance > 0),
        max_error   REAL NOT NULL CHECK (max_error >= 0),
        decoded_key BLOB NOT NULL CHECK (length(decoded_key) = 32)
    ) STRICT;
    CREATE INDEX objects_by_pack ON objects (pack_id);
    CREATE INDEX objects_by_base ON objects (base_id);
    CREATE TABLE sketches (
        object_id INTEGER PRIMARY KEY REFERENCES objects (object_id),
        dtype     TEXT NOT NULL,
        elements  INTEGER NOT NULL,
        sketch    BLOB NOT NULL
    ) STRICT;
    CREATE TABLE models (
        model_id      INTEGER PRIMARY KEY,
        name          TEXT NOT NULL UNIQUE,
        created_unix  INTEGER NOT NULL,
        source_format TEXT NOT NULL,
        metadata      TEXT NOT NULL,
        raw_bytes     INTEGER NOT NULL,
        base_model    TEXT,
        mode          TEXT NOT NULL
    ) STRICT;
    CREATE TABLE model_files (
        model_id  INTEGER NOT NULL REFERENCES models (model_id),
        path      TEXT NOT NULL,
        kind      INTEGER NOT NULL CHECK (kind IN (0, 1)),
        object_id INTEGER NOT NULL REFERENCES objects (object_id),
        PRIMARY KEY (model_id, path)
    ) STRICT;
    CREATE TABLE model_tensors (
        model_id  INTEGER NOT NULL REFERENCES models (model_id),
        path      TEXT NOT NULL,
        position  INTEGER NOT NULL,
        name      TEXT NOT NULL,
        object_id INTEGER NOT NULL REFERENCES objects (object_id),
        PRIMARY KEY (model_id, path, position)
    ) STRICT;
    CREATE INDEX model_tensors_by_object ON model_tensors (object_id);
    "#,
    // v2: each model's manifest, a digest of its name, format, files and tensors (NULL for
    // models written before), checked on every read.
    r#"
    ALTER TABLE models ADD COLUMN manifest BLOB CHECK (manifest IS NULL OR length(manifest) = 32);
    "#,
    // v3 (store format 2): where each model's manifest record and each removal's tombstone
    // record lie in the packs (the catalog can be rebuilt from them), the commit sequence, and
    // packs a committed gc doomed but whose files may still exist.
    r#"
    ALTER TABLE models ADD COLUMN seq INTEGER;
    ALTER TABLE models ADD COLUMN record_pack INTEGER;
    ALTER TABLE models ADD COLUMN record_offset INTEGER;
    ALTER TABLE models ADD COLUMN record_len INTEGER;
    ALTER TABLE packs ADD COLUMN doomed INTEGER NOT NULL DEFAULT 0 CHECK (doomed IN (0, 1));
    CREATE TABLE tombstones (
        seq        INTEGER PRIMARY KEY,
        name       TEXT NOT NULL,
        pack_id    INTEGER NOT NULL,
        offset     INTEGER NOT NULL CHECK (offset >= 0),
        record_len INTEGER NOT NULL CHECK (record_len > 0)
    ) STRICT;
    "#,
    // v4: compact sketches: each sketch packed to one byte per value with an f32 offset and step
    // (136 bytes, was 128 f32 = 512), and none for tensors below `sketch::MIN_ELEMENTS`
    // elements. This SQL makes the new table; `compact_sketches` (see CONVERSIONS) fills it
    // from the old one and puts it in its place. Independent of other migrations: it may take
    // any position in this list.
    COMPACT_SKETCHES,
];

const COMPACT_SKETCHES: &str = r#"
    CREATE TABLE sketches_packed (
        object_id INTEGER PRIMARY KEY REFERENCES objects (object_id),
        dtype     TEXT NOT NULL,
        elements  INTEGER NOT NULL CHECK (elements >= 0),
        sketch    BLOB NOT NULL CHECK (length(sketch) = 136)
    ) STRICT;
    "#;

/// A row conversion in code, run inside the migration transaction.
type Conversion = fn(&rusqlite::Transaction) -> Result<()>;

/// Row conversions SQL cannot express, each run right after the migration whose SQL it names,
/// in the same transaction.
const CONVERSIONS: &[(&str, Conversion)] = &[(COMPACT_SKETCHES, compact_sketches)];

/// Moves every sketch worth keeping from `sketches` (128 f32) into `sketches_packed`, packed,
/// then replaces the old table and bumps the index generation (the index file is rebuilt).
/// A sketch that does not parse is dropped: the index is derived data, and the object stays
/// readable; it is only no longer proposed as a base.
fn compact_sketches(tx: &rusqlite::Transaction) -> Result<()> {
    use neurstore_core::sketch::{MIN_ELEMENTS, Packed, from_f32_bytes};
    {
        let mut read = tx.prepare("SELECT object_id, dtype, elements, sketch FROM sketches")?;
        let mut write = tx.prepare(
            "INSERT INTO sketches_packed (object_id, dtype, elements, sketch) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut rows = read.query([])?;
        while let Some(r) = rows.next()? {
            let (id, dtype, elements): (i64, String, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            let Some(values) = from_f32_bytes(&r.get::<_, Vec<u8>>(3)?) else {
                continue;
            };
            if elements < 0 || (elements as u64) < MIN_ELEMENTS {
                continue;
            }
            let packed = Packed::quantize(&values);
            write.execute(rusqlite::params![
                id,
                dtype,
                elements,
                &packed.as_bytes()[..]
            ])?;
        }
    }
    tx.execute_batch(
        "DROP TABLE sketches;
         ALTER TABLE sketches_packed RENAME TO sketches;
         INSERT INTO store_meta (key, value) VALUES ('index_generation', '1')
           ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT);",
    )?;
    Ok(())
}

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The oldest schema version a read-only open can read as it is (readers never migrate).
/// Lower it only when reads of an older catalog need nothing the migrations since add.
pub const OLDEST_READABLE: i64 = SCHEMA_VERSION;

/// Checks, for a read-only open, that a catalog of schema version `found` can be read without
/// migrating it: newer catalogs need a newer build, older ones `neurstore upgrade`.
pub fn check_readable(found: i64, path: &std::path::Path) -> Result<()> {
    if found == 0 {
        return Err(StorageError::corrupt(
            path.display().to_string(),
            "the file holds no NeurStore catalog (schema version 0)",
        ));
    }
    if found > SCHEMA_VERSION {
        return Err(StorageError::TooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < OLDEST_READABLE {
        return Err(StorageError::NeedsUpgrade {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Brings the catalog to [`SCHEMA_VERSION`], refusing catalogs from newer builds. Only a new
/// catalog (`create`) may start from nothing: an existing file without the schema is not a
/// store's catalog (an emptied or foreign file), and it is reported, never initialized.
pub fn migrate(conn: &mut Connection, create: bool) -> Result<()> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found == 0 && !create {
        return Err(StorageError::corrupt(
            "the catalog",
            "it holds no NeurStore schema (empty or not a catalog)",
        ));
    }
    if found > SCHEMA_VERSION {
        return Err(StorageError::TooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    // Under the write lock, and from the version read there: two processes opening an old
    // catalog at once must not both run its migrations.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql)?;
        for (_, convert) in CONVERSIONS.iter().filter(|(s, _)| s == sql) {
            convert(&tx)?;
        }
        tx.pragma_update(None, "user_version", version as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_a_version_1_catalog_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let mut old = Connection::open(&path).unwrap();
        old.execute_batch(MIGRATIONS[0]).unwrap();
        old.pragma_update(None, "user_version", 1).unwrap();
        old.execute(
            "INSERT INTO models (name, created_unix, source_format, metadata, raw_bytes, mode) \
             VALUES ('m', 0, 'safetensors', '{}', 0, 'lossless')",
            [],
        )
        .unwrap();
        // Another connection opening it afterwards finds nothing left to do.
        let mut late = Connection::open(&path).unwrap();
        migrate(&mut old, false).unwrap();
        migrate(&mut late, false).unwrap();
        let (version, manifest): (i64, Option<Vec<u8>>) = late
            .query_row(
                "SELECT (SELECT user_version FROM pragma_user_version), manifest FROM models",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((version, manifest), (SCHEMA_VERSION, None));
    }

    /// A catalog of the version before compact sketches: every f32 sketch worth keeping is
    /// packed (the nearest stored sketch to each original stays the same), tiny tensors lose
    /// theirs, and the index generation moves so the index file is rebuilt.
    #[test]
    fn f32_sketches_migrate_to_packed_ones() {
        use neurstore_core::sketch::{MIN_ELEMENTS, Packed, SKETCH_DIM, distance};
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("catalog.db")).unwrap();
        let before = MIGRATIONS
            .iter()
            .position(|m| *m == COMPACT_SKETCHES)
            .unwrap();
        for sql in &MIGRATIONS[..before] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", before as i64)
            .unwrap();
        conn.execute_batch(
            "INSERT INTO store_meta VALUES ('index_generation', '4');
             INSERT INTO packs (pack_id, committed_len) VALUES (1, 0);",
        )
        .unwrap();
        let sketch = |i: usize| -> Vec<f32> {
            (0..SKETCH_DIM)
                .map(|j| ((i * 7 + j) as f32 * 0.37).sin() * 0.05 + (i / 3) as f32 * 0.01)
                .collect()
        };
        let elements = |i: usize| {
            if i == 4 {
                MIN_ELEMENTS - 1
            } else {
                MIN_ELEMENTS
            }
        };
        for i in 0..6usize {
            conn.execute(
                "INSERT INTO objects (object_id, content_key, kind, dtype, shape, raw_len, codec, \
                 pack_id, offset, stored_len, checksum, refcount, chain_depth, max_error, \
                 decoded_key) VALUES (?1, ?2, 0, 'F32', '[1]', 4, 0, 1, 0, 4, ?3, 1, 0, 0, ?3)",
                rusqlite::params![i as i64 + 1, vec![i as u8; 32], vec![0u8; 32]],
            )
            .unwrap();
            let bytes: Vec<u8> = sketch(i).iter().flat_map(|v| v.to_le_bytes()).collect();
            let bytes = if i == 5 { bytes[..12].to_vec() } else { bytes };
            conn.execute(
                "INSERT INTO sketches VALUES (?1, 'F32', ?2, ?3)",
                rusqlite::params![i as i64 + 1, elements(i) as i64, bytes],
            )
            .unwrap();
        }
        migrate(&mut conn, false).unwrap();
        let rows: Vec<(i64, Vec<u8>)> = conn
            .prepare("SELECT object_id, sketch FROM sketches ORDER BY object_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        // Object 5 (too few elements) and object 6 (a malformed sketch) lost theirs.
        assert_eq!(
            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        let packed: Vec<Vec<f32>> = rows
            .iter()
            .map(|(_, b)| Packed::from_bytes(b).unwrap().values())
            .collect();
        for i in 0..4 {
            let nearest = (0..4)
                .min_by(|&a, &b| {
                    distance(&sketch(i), &packed[a]).total_cmp(&distance(&sketch(i), &packed[b]))
                })
                .unwrap();
            assert_eq!(nearest, i);
        }
        let generation: String = conn
            .query_row(
                "SELECT value FROM store_meta WHERE key = 'index_generation'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(generation, "5");
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }
}
