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
];

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

/// Brings the catalog to [`SCHEMA_VERSION`], refusing catalogs from newer builds.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
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
        migrate(&mut old).unwrap();
        migrate(&mut late).unwrap();
        let (version, manifest): (i64, Option<Vec<u8>>) = late
            .query_row(
                "SELECT (SELECT user_version FROM pragma_user_version), manifest FROM models",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((version, manifest), (SCHEMA_VERSION, None));
    }
}
