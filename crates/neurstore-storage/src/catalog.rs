//! The catalog: models, their files and tensors, objects and where their blobs live. Its
//! queries are written once, in the SQL both of its databases speak (`sql`): SQLite for the
//! embedded store, PostgreSQL for a store in a database.
//!
//! Every row read back is validated into trusted types; a row that breaks a rule is reported as
//! `Corrupt` naming the object or model.

use std::path::Path;
use std::time::Duration;

use neurstore_core::codec::Codec;
use neurstore_core::dtype::{DType, element_count};
use neurstore_core::key::Digest;
use rusqlite::{Connection, OpenFlags};

use crate::error::{Result, StorageError};
use crate::pack::BlobLocation;
use crate::schema;
use crate::sql::{CatalogDb, Row, Sql, SqlTxn, params};
use crate::sqlite::SqliteDb;

/// What an object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A tensor's data; dtype and shape are known.
    Tensor {
        /// Element type.
        dtype: DType,
    },
    /// A plain file's bytes, or a safetensors header.
    File,
}

/// A stored, content-addressed object and where its blob lives.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectRow {
    /// Row id.
    pub id: i64,
    /// Content key (exact dedup).
    pub key: Digest,
    /// Tensor or file.
    pub kind: ObjectKind,
    /// Shape (empty for files).
    pub shape: Vec<u64>,
    /// Raw (decoded) length in bytes.
    pub raw_len: u64,
    /// How the blob is encoded.
    pub codec: Codec,
    /// Where the blob is.
    pub location: BlobLocation,
    /// BLAKE3 of the stored bytes.
    pub checksum: Digest,
    /// References: model files and tensors naming it, plus objects using it as their base.
    pub refcount: i64,
    /// The object this one is a delta against.
    pub base: Option<i64>,
    /// Number of bases below this object (0 for a standalone object).
    pub chain_depth: u32,
    /// The absolute error bound it was stored under (`None`: lossless).
    pub tolerance: Option<f64>,
    /// Largest absolute error of any element measured at encode time (0 when lossless).
    pub max_error: f64,
    /// Tensor or file key of the decoded bytes (equal to `key` when lossless).
    pub decoded_key: Digest,
    /// The base's `decoded_key`, as the catalog records it (format 2 seals it in the blob's
    /// record, and a read compares the two).
    pub base_key: Option<Digest>,
}

impl ObjectRow {
    /// What the object's pack record must say about it (format 2).
    pub fn meta(&self) -> crate::record::ObjectMeta {
        object_meta(
            (self.key, self.decoded_key, self.base_key),
            self.kind,
            &self.shape,
            self.raw_len,
            self.codec,
            self.chain_depth,
            (self.tolerance, self.max_error),
        )
    }
}

/// An object's record meta from its fields: (key, decoded key, base key), kind, shape, raw
/// length, codec, chain depth, (tolerance, max error).
fn object_meta(
    keys: (Digest, Digest, Option<Digest>),
    kind: ObjectKind,
    shape: &[u64],
    raw_len: u64,
    codec: Codec,
    chain_depth: u32,
    bound: (Option<f64>, f64),
) -> crate::record::ObjectMeta {
    crate::record::ObjectMeta {
        key: keys.0,
        decoded_key: keys.1,
        base_key: keys.2,
        dtype: match kind {
            ObjectKind::Tensor { dtype } => Some(dtype),
            ObjectKind::File => None,
        },
        shape: shape.to_vec(),
        raw_len,
        codec,
        chain_depth,
        tolerance: bound.0,
        max_error: bound.1,
    }
}

/// An object to insert: everything but the id and refcount.
#[derive(Debug, Clone)]
pub struct NewObject {
    /// Content key.
    pub key: Digest,
    /// Tensor or file.
    pub kind: ObjectKind,
    /// Shape (empty for files).
    pub shape: Vec<u64>,
    /// Raw length.
    pub raw_len: u64,
    /// Codec.
    pub codec: Codec,
    /// Blob location.
    pub location: BlobLocation,
    /// Checksum of the stored bytes.
    pub checksum: Digest,
    /// Base object (for delta codecs).
    pub base: Option<i64>,
    /// Depth of the chain below it.
    pub chain_depth: u32,
    /// Error bound it was stored under (`None`: lossless).
    pub tolerance: Option<f64>,
    /// Largest error measured.
    pub max_error: f64,
    /// Key of the decoded bytes.
    pub decoded_key: Digest,
    /// The base's decoded key (sealed in the record).
    pub base_key: Option<Digest>,
    /// Similarity sketch (f32; the catalog stores it packed), for objects that may serve as
    /// bases.
    pub sketch: Option<Vec<f32>>,
}

impl NewObject {
    /// What the object's pack record says about it (format 2).
    pub fn meta(&self) -> crate::record::ObjectMeta {
        object_meta(
            (self.key, self.decoded_key, self.base_key),
            self.kind,
            &self.shape,
            self.raw_len,
            self.codec,
            self.chain_depth,
            (self.tolerance, self.max_error),
        )
    }
}

/// A model row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRow {
    /// Row id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: i64,
    /// "safetensors" or "directory".
    pub source_format: String,
    /// JSON object of user metadata.
    pub metadata: String,
    /// Tensor bytes as imported.
    pub raw_bytes: u64,
    /// Lineage: the model most of its deltas were taken against.
    pub base_model: Option<String>,
    /// "lossless" or a bound such as "abs:0.0001" / "rel:0.001".
    pub mode: String,
}

/// How a model file is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A safetensors file: its object is the header JSON, its tensors are listed separately.
    Safetensors,
    /// Any other file: its object is the file's bytes.
    Plain,
}

impl FileKind {
    /// The catalog's and the manifest record's tag.
    pub fn tag(self) -> u8 {
        match self {
            FileKind::Safetensors => 0,
            FileKind::Plain => 1,
        }
    }

    /// The kind with this tag.
    pub fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            0 => Some(FileKind::Safetensors),
            1 => Some(FileKind::Plain),
            _ => None,
        }
    }
}

/// One file of a model.
#[derive(Debug, Clone)]
pub struct FileRow {
    /// Path relative to the model root ("model.safetensors", "1_Pooling/config.json").
    pub path: String,
    /// Safetensors or plain.
    pub kind: FileKind,
    /// Header (safetensors) or content (plain).
    pub object: ObjectRow,
}

/// One tensor of a safetensors file of a model.
#[derive(Debug, Clone)]
pub struct TensorRow {
    /// File the tensor belongs to.
    pub path: String,
    /// Position in the file's data buffer (0-based, offset order).
    pub position: i64,
    /// Tensor name.
    pub name: String,
    /// Its object.
    pub object: ObjectRow,
}

/// A recorded sketch: (object id, dtype, element count, packed sketch).
pub type SketchRow = (i64, DType, u64, neurstore_core::sketch::Packed);

/// The catalog database.
pub struct Catalog {
    db: Box<dyn CatalogDb>,
}

const OBJECT_COLUMNS: &str = "o.object_id, o.content_key, o.kind, o.dtype, o.shape, o.raw_len, o.codec, \
     o.pack_id, o.\"offset\", o.stored_len, o.checksum, o.refcount, o.base_id, o.chain_depth, o.tolerance, \
     o.max_error, o.decoded_key, \
     (SELECT b.decoded_key FROM objects b WHERE b.object_id = o.base_id)";
/// The page size of a new catalog. SQLite's default, 4 KiB, would make the catalog of a store
/// of a few small models mostly empty pages (each table and index takes at least one); rows
/// here are 30 to 300 bytes, so 1 KiB pages stay well filled (docs/benchmarks.md, "Store
/// format 2, measured after the merge").
const PAGE_SIZE: i64 = 1024;
const MODEL_COLUMNS: &str =
    "model_id, name, created_unix, source_format, metadata, raw_bytes, base_model, mode";

impl Catalog {
    /// Opens (or, with `create`, creates) the catalog at `path` and migrates it.
    pub fn open(path: &Path, create: bool) -> Result<Self> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let mut conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        // Takes effect only on a new, empty database (an existing one keeps its page size):
        // every table and index costs at least a page, and catalog rows are small.
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        schema::migrate(&mut conn, create)?;
        Ok(Catalog {
            db: Box::new(SqliteDb(conn)),
        })
    }

    /// A catalog over another database (PostgreSQL).
    pub fn from_db(db: Box<dyn CatalogDb>) -> Self {
        Catalog { db }
    }

    /// Bytes the catalog takes where its database can say ([`CatalogDb::bytes`]).
    pub fn bytes(&mut self) -> Result<Option<u64>> {
        self.db.bytes()
    }

    /// Writes the write-ahead log back into the database file and empties it.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.db.checkpoint()
    }

    /// Opens the catalog at `path` for reading only, for a user who may not be able to write
    /// the store: nothing is migrated, no write lock is taken, no write is accepted
    /// (`PRAGMA query_only`), and nothing is left behind.
    ///
    /// A catalog in WAL mode is read through its `-shm` index and `-wal` log, which SQLite
    /// creates when they are missing. A user who may write the directory opens it as usual
    /// (SQLite removes both files when the last connection closes); one who may not opens it
    /// with read-only flags, which works while the files exist (a writer has the store open).
    /// Where they are missing and cannot be created, the database is opened `immutable`:
    /// SQLite then reads the database file alone, without locks, trusting it not to change.
    /// Caveat: such a reader does not see commits still in the write-ahead log, and a commit
    /// that lands while it reads can show it a torn snapshot; row validation and model
    /// manifests report that as corrupt, and running the command again reads the new state.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        match Self::open_read_only_any(path) {
            // An older schema: a user who may write the catalog migrates it (the migrations
            // only add; a format-1 store stays format 1 and reads as before); for anyone else
            // it stays as it is and the error says what to run.
            Err(StorageError::NeedsUpgrade { .. }) if Self::open(path, false).is_ok() => {
                Self::open_read_only_any(path)
            }
            other => other,
        }
    }

    fn open_read_only_any(path: &Path) -> Result<Self> {
        let mut first = None;
        for how in [
            ReadOnlyOpen::QueryOnly,
            ReadOnlyOpen::Flags,
            ReadOnlyOpen::Immutable,
        ] {
            match Self::open_read_only_as(path, how) {
                Ok(catalog) => return Ok(catalog),
                Err(StorageError::Catalog(e)) => {
                    first.get_or_insert(e);
                }
                Err(other) => return Err(other),
            }
        }
        Err(StorageError::Catalog(first.expect("an attempt failed")))
    }

    fn open_read_only_as(path: &Path, how: ReadOnlyOpen) -> Result<Self> {
        let mut flags = OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let mut uri = format!("file:{}", uri_path(path));
        match how {
            ReadOnlyOpen::QueryOnly => flags |= OpenFlags::SQLITE_OPEN_READ_WRITE,
            ReadOnlyOpen::Flags => {
                flags |= OpenFlags::SQLITE_OPEN_READ_ONLY;
                uri.push_str("?mode=ro");
            }
            ReadOnlyOpen::Immutable => {
                flags |= OpenFlags::SQLITE_OPEN_READ_ONLY;
                uri.push_str("?mode=ro&immutable=1");
            }
        }
        let conn = Connection::open_with_flags(uri, flags)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "query_only", true)?;
        // The first read opens the write-ahead log: errors of a read-only open surface here.
        let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        schema::check_readable(found, path)?;
        Ok(Catalog {
            db: Box::new(SqliteDb(conn)),
        })
    }

    /// Starts a write transaction (taking the database's write lock at once).
    pub fn write(&mut self) -> Result<WriteTxn<'_>> {
        Ok(WriteTxn {
            tx: self.db.write()?,
        })
    }

    /// Starts a read transaction: every query through it sees one consistent snapshot.
    pub fn read(&mut self) -> Result<ReadTxn<'_>> {
        Ok(ReadTxn {
            tx: self.db.read()?,
        })
    }

    /// Size of the catalog files (database and write-ahead log) in bytes.
    pub fn file_bytes(path: &Path) -> u64 {
        ["", "-wal"]
            .iter()
            .filter_map(|s| std::fs::metadata(format!("{}{s}", path.display())).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// How [`Catalog::open_read_only`] tries to open the database, in order.
#[derive(Clone, Copy)]
enum ReadOnlyOpen {
    /// Read-write flags (the side files can be made and removed), writes refused by SQLite.
    QueryOnly,
    /// Read-only flags: works where the side files exist.
    Flags,
    /// Read-only and immutable: no side files, no locks.
    Immutable,
}

/// A path as the path part of an SQLite `file:` URI: every byte but unreserved ones and '/'
/// percent-encoded, so '?', '#' and '%' in directory names keep their meaning.
fn uri_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Queries shared by read and write transactions.
pub trait Queries {
    /// The transaction's connection.
    fn sql(&self) -> &dyn Sql;

    /// A model by name.
    fn model(&self, name: &str) -> Result<Option<ModelRow>> {
        self.sql()
            .query_opt(
                &format!("SELECT {MODEL_COLUMNS} FROM models WHERE name = ?1"),
                params![name],
            )?
            .map(|r| model_row(&r))
            .transpose()
    }

    /// All models, by name.
    fn models(&self) -> Result<Vec<ModelRow>> {
        self.sql()
            .query(
                &format!("SELECT {MODEL_COLUMNS} FROM models ORDER BY name"),
                &[],
            )?
            .iter()
            .map(model_row)
            .collect()
    }

    /// A model's files, by path.
    fn model_files(&self, model_id: i64) -> Result<Vec<FileRow>> {
        let sql = format!(
            "SELECT f.path, f.kind, {OBJECT_COLUMNS} FROM model_files f JOIN objects o USING (object_id) \
             WHERE f.model_id = ?1 ORDER BY f.path"
        );
        let mut out = Vec::new();
        for r in self.sql().query(&sql, params![model_id])? {
            let path: String = r.get(0)?;
            let kind = match r.get::<i64>(1)? {
                0 => FileKind::Safetensors,
                1 => FileKind::Plain,
                k => {
                    return Err(StorageError::corrupt(
                        format!("model file {path:?}"),
                        format!("kind {k}"),
                    ));
                }
            };
            let object = object_row(&r, 2)?;
            out.push(FileRow { path, kind, object });
        }
        Ok(out)
    }

    /// A model's tensors, by file and position.
    fn model_tensors(&self, model_id: i64) -> Result<Vec<TensorRow>> {
        let sql = format!(
            "SELECT t.path, t.position, t.name, {OBJECT_COLUMNS} FROM model_tensors t JOIN objects o USING (object_id) \
             WHERE t.model_id = ?1 ORDER BY t.path, t.position"
        );
        let mut out = Vec::new();
        for r in self.sql().query(&sql, params![model_id])? {
            let object = object_row(&r, 3)?;
            out.push(TensorRow {
                path: r.get(0)?,
                position: r.get(1)?,
                name: r.get(2)?,
                object,
            });
        }
        Ok(out)
    }

    /// Checks a model's files and tensors, as read, against the manifest sealed when it was
    /// written (a model written before schema 2 has none and is not checked).
    fn check_manifest(
        &self,
        model: &ModelRow,
        files: &[FileRow],
        tensors: &[TensorRow],
    ) -> Result<()> {
        let recorded: Option<Vec<u8>> = self
            .sql()
            .query_one(
                "SELECT manifest FROM models WHERE model_id = ?1",
                params![model.id],
            )?
            .get(0)?;
        match recorded {
            None => Ok(()),
            Some(d) if d[..] == manifest(model, files, tensors)[..] => Ok(()),
            Some(_) => Err(StorageError::corrupt(
                format!("model {:?}", model.name),
                "its files and tensors in the catalog disagree with the manifest recorded when it was stored",
            )),
        }
    }

    /// The object with this content key, if stored.
    fn object_by_key(&self, key: &Digest) -> Result<Option<ObjectRow>> {
        let sql = format!("SELECT {OBJECT_COLUMNS} FROM objects o WHERE o.content_key = ?1");
        self.sql()
            .query_opt(&sql, params![&key[..]])?
            .map(|r| object_row(&r, 0))
            .transpose()
    }

    /// Every object, by id.
    fn objects(&self) -> Result<Vec<ObjectRow>> {
        let sql = format!("SELECT {OBJECT_COLUMNS} FROM objects o ORDER BY o.object_id");
        self.sql()
            .query(&sql, &[])?
            .iter()
            .map(|r| object_row(r, 0))
            .collect()
    }

    /// An object by id.
    fn object(&self, id: i64) -> Result<Option<ObjectRow>> {
        let sql = format!("SELECT {OBJECT_COLUMNS} FROM objects o WHERE o.object_id = ?1");
        self.sql()
            .query_opt(&sql, params![id])?
            .map(|r| object_row(&r, 0))
            .transpose()
    }

    /// Number of sketches.
    fn sketch_count(&self) -> Result<u64> {
        count(self.sql(), "SELECT count(*) FROM sketches")
    }

    /// Sketches of objects with ids above `after`, by object id: (id, dtype, elements, sketch).
    fn sketches_after(&self, after: i64) -> Result<Vec<SketchRow>> {
        let rows = self.sql().query(
            "SELECT object_id, dtype, elements, sketch FROM sketches WHERE object_id > ?1 ORDER BY object_id",
            params![after],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: i64 = r.get(0)?;
            let bad =
                |d: &str| StorageError::corrupt(format!("sketch of object {id}"), d.to_string());
            let dtype: DType = r
                .get::<String>(1)?
                .parse()
                .map_err(|_| bad("unknown dtype"))?;
            let elements =
                u64::try_from(r.get::<i64>(2)?).map_err(|_| bad("negative element count"))?;
            let sketch = neurstore_core::sketch::Packed::from_bytes(&r.get::<Vec<u8>>(3)?)
                .ok_or_else(|| bad("malformed"))?;
            out.push((id, dtype, elements, sketch));
        }
        Ok(out)
    }

    /// Counter bumped by every change to the set of sketches (the index file records it).
    fn index_generation(&self) -> Result<u64> {
        self.meta_value("index_generation")?.map_or(Ok(0), |v| {
            v.parse()
                .map_err(|_| StorageError::corrupt("store_meta", "index_generation"))
        })
    }

    /// One (model, tensor name) that uses an object, for display.
    fn first_user(&self, object_id: i64) -> Result<Option<(String, String)>> {
        self.sql()
            .query_opt(
                "SELECT m.name, t.name FROM model_tensors t JOIN models m USING (model_id) \
                 WHERE t.object_id = ?1 ORDER BY m.model_id, t.path, t.position LIMIT 1",
                params![object_id],
            )?
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .transpose()
    }

    /// Every pack: (id, committed length).
    fn packs(&self) -> Result<Vec<(u64, u64)>> {
        let rows = self.sql().query(
            "SELECT pack_id, committed_len FROM packs WHERE doomed = 0 ORDER BY pack_id",
            &[],
        )?;
        rows.iter()
            .map(|r| {
                let (id, len): (i64, i64) = (r.get(0)?, r.get(1)?);
                match (u64::try_from(id), u64::try_from(len)) {
                    (Ok(id), Ok(len)) => Ok((id, len)),
                    _ => Err(StorageError::corrupt(
                        "packs table",
                        format!("pack {id} length {len}"),
                    )),
                }
            })
            .collect()
    }

    /// Counts: (models, tensor references, distinct tensor objects).
    fn counts(&self) -> Result<(u64, u64, u64)> {
        let c = self.sql();
        Ok((
            count(c, "SELECT count(*) FROM models")?,
            count(c, "SELECT count(*) FROM model_tensors")?,
            count(c, "SELECT count(*) FROM objects WHERE kind = 0")?,
        ))
    }

    /// A `store_meta` value.
    fn meta_value(&self, key: &str) -> Result<Option<String>> {
        self.sql()
            .query_opt("SELECT value FROM store_meta WHERE key = ?1", params![key])?
            .map(|r| r.get(0))
            .transpose()
    }

    /// The store's format version: 1 (blobs only in packs) or 2 (self-describing records).
    fn format_version(&self) -> Result<u32> {
        match self.meta_value("format_version")? {
            None => Ok(1),
            Some(v) => v
                .parse()
                .map_err(|_| StorageError::corrupt("store_meta", format!("format_version {v:?}"))),
        }
    }

    /// The next commit sequence number (format 2).
    fn next_seq(&self) -> Result<u64> {
        match self.meta_value("next_seq")? {
            None => Ok(1),
            Some(v) => v
                .parse()
                .map_err(|_| StorageError::corrupt("store_meta", format!("next_seq {v:?}"))),
        }
    }

    /// Every model's manifest record: (model id, name, record location), format 2.
    fn model_records(&self) -> Result<Vec<(i64, String, Option<BlobLocation>)>> {
        let rows = self.sql().query(
            "SELECT model_id, name, record_pack, record_offset, record_len FROM models ORDER BY model_id",
            &[],
        )?;
        rows.iter()
            .map(|r| {
                let name: String = r.get(1)?;
                let loc = optional_location(r, 2, &name)?;
                Ok((r.get(0)?, name, loc))
            })
            .collect()
    }

    /// Where a model's manifest record lies (format 2), as the catalog says.
    fn model_record_location(&self, model_id: i64) -> Result<Option<BlobLocation>> {
        let r = self.sql().query_one(
            "SELECT record_pack, record_offset, record_len FROM models WHERE model_id = ?1",
            params![model_id],
        )?;
        optional_location(&r, 0, &format!("model {model_id}"))
    }

    /// Every tombstone record: (seq, model name, location).
    fn tombstones(&self) -> Result<Vec<(u64, String, BlobLocation)>> {
        let rows = self.sql().query(
            "SELECT seq, name, pack_id, \"offset\", record_len FROM tombstones ORDER BY seq",
            &[],
        )?;
        rows.iter()
            .map(|r| {
                let (seq, name): (i64, String) = (r.get(0)?, r.get(1)?);
                let at = location(r.get(2)?, r.get(3)?, r.get(4)?, &name)?;
                Ok((seq as u64, name, at))
            })
            .collect()
    }

    /// Packs a committed gc stopped naming, whose files may still exist.
    fn doomed_packs(&self) -> Result<Vec<u64>> {
        self.sql()
            .query(
                "SELECT pack_id FROM packs WHERE doomed = 1 ORDER BY pack_id",
                &[],
            )?
            .iter()
            .map(|r| Ok(r.get::<i64>(0)? as u64))
            .collect()
    }

    /// Number of models other than `model_id` that reference `object_id`.
    fn other_models_using(&self, object_id: i64, model_id: i64) -> Result<u64> {
        let n: i64 = self
            .sql()
            .query_one(
                "SELECT count(DISTINCT model_id) FROM ( \
                   SELECT model_id FROM model_tensors WHERE object_id = ?1 \
                   UNION ALL SELECT model_id FROM model_files WHERE object_id = ?1) AS users \
                 WHERE model_id != ?2",
                params![object_id, model_id],
            )?
            .get(0)?;
        Ok(n as u64)
    }
}

/// The one count a `SELECT count(*)` returns.
fn count(sql: &dyn Sql, query: &str) -> Result<u64> {
    Ok(sql.query_one(query, &[])?.get::<i64>(0)? as u64)
}

/// A read transaction.
pub struct ReadTxn<'c> {
    tx: Box<dyn SqlTxn + 'c>,
}

impl Queries for ReadTxn<'_> {
    fn sql(&self) -> &dyn Sql {
        &*self.tx
    }
}

/// A write transaction; nothing is visible to readers until [`WriteTxn::commit`].
pub struct WriteTxn<'c> {
    tx: Box<dyn SqlTxn + 'c>,
}

impl Queries for WriteTxn<'_> {
    fn sql(&self) -> &dyn Sql {
        &*self.tx
    }
}

impl WriteTxn<'_> {
    /// Publishes everything done in this transaction atomically.
    pub fn commit(self) -> Result<()> {
        self.tx.commit()
    }

    /// Sets a pack's committed length, creating its row if needed.
    pub fn set_pack_len(&self, pack_id: u64, len: u64) -> Result<()> {
        self.tx.execute(
            "INSERT INTO packs (pack_id, committed_len) VALUES (?1, ?2) \
             ON CONFLICT (pack_id) DO UPDATE SET committed_len = excluded.committed_len",
            params![pack_id, len],
        )?;
        Ok(())
    }

    /// Removes a pack's row (its file is removed after the commit).
    pub fn delete_pack(&self, pack_id: u64) -> Result<()> {
        self.tx
            .execute("DELETE FROM packs WHERE pack_id = ?1", params![pack_id])?;
        Ok(())
    }

    /// Marks a pack dead: no row names it any more, and its file is removed after the commit
    /// (or by the next writer's recovery, should the process die first).
    pub fn doom_pack(&self, pack_id: u64) -> Result<()> {
        self.tx.execute(
            "UPDATE packs SET doomed = 1 WHERE pack_id = ?1",
            params![pack_id],
        )?;
        Ok(())
    }

    /// Sets a `store_meta` value.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.tx.execute(
            "INSERT INTO store_meta (key, value) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Writes a new store's `store_meta`: a format-2 store with id `store_id` (hex).
    pub fn init_store_meta(&self, store_id: &str) -> Result<()> {
        for (key, value) in [
            ("format", "neurstore"),
            ("next_pack_id", "1"),
            ("format_version", "2"),
            ("next_seq", "1"),
            ("store_id", store_id),
        ] {
            self.set_meta(key, value)?;
        }
        Ok(())
    }

    /// Takes the next value of the `store_meta` counter `key` (`first` when it has none yet)
    /// and advances it past the value taken, never below `at_least`.
    fn take_counter(&self, key: &str, first: Option<u64>, at_least: u64) -> Result<u64> {
        let value = match (self.meta_value(key)?, first) {
            (None, Some(first)) => first,
            (None, None) => return Err(StorageError::corrupt("store_meta", format!("no {key}"))),
            (Some(v), _) => v
                .parse()
                .map_err(|_| StorageError::corrupt("store_meta", format!("{key} {v:?}")))?,
        };
        let value = value.max(at_least);
        self.set_meta(key, &(value + 1).to_string())?;
        Ok(value)
    }

    /// Takes a new pack id, never one used before, and at least `at_least`.
    pub fn take_pack_id(&self, at_least: u64) -> Result<u64> {
        self.take_counter("next_pack_id", None, at_least)
    }

    /// Records where a model's manifest record is, and its commit sequence number.
    pub fn set_model_record(&self, model_id: i64, seq: u64, at: BlobLocation) -> Result<()> {
        self.tx.execute(
            "UPDATE models SET seq = ?2, record_pack = ?3, record_offset = ?4, record_len = ?5 \
             WHERE model_id = ?1",
            params![model_id, seq, at.pack_id, at.offset, at.len],
        )?;
        Ok(())
    }

    /// Records a tombstone record.
    pub fn insert_tombstone(&self, seq: u64, name: &str, at: BlobLocation) -> Result<()> {
        self.tx.execute(
            "INSERT INTO tombstones (seq, name, pack_id, \"offset\", record_len) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![seq, name, at.pack_id, at.offset, at.len],
        )?;
        Ok(())
    }

    /// Drops a tombstone a newer model of the same name supersedes (garbage collection).
    pub fn delete_tombstone(&self, seq: u64) -> Result<()> {
        self.tx
            .execute("DELETE FROM tombstones WHERE seq = ?1", params![seq])?;
        Ok(())
    }

    /// Moves a tombstone record (garbage collection).
    pub fn relocate_tombstone(&self, seq: u64, at: BlobLocation) -> Result<()> {
        self.tx.execute(
            "UPDATE tombstones SET pack_id = ?2, \"offset\" = ?3 WHERE seq = ?1",
            params![seq, at.pack_id, at.offset],
        )?;
        Ok(())
    }

    /// Deletes the rows of packs whose files are gone.
    pub fn forget_doomed_packs(&self) -> Result<()> {
        self.tx.execute("DELETE FROM packs WHERE doomed = 1", &[])?;
        Ok(())
    }

    /// Inserts an object with refcount 0 and returns its id. Ids are never reused (SQLite alone
    /// would hand out a deleted largest id again): decoded bases are cached, and the similarity
    /// index is keyed, by object id, so a freed id must never come to name another object.
    pub fn insert_object(&self, o: &NewObject) -> Result<i64> {
        let (kind, dtype) = match o.kind {
            ObjectKind::Tensor { dtype } => (0i64, Some(dtype.as_str())),
            ObjectKind::File => (1, None),
        };
        let shape = matches!(o.kind, ObjectKind::Tensor { .. })
            .then(|| serde_json::to_string(&o.shape).expect("shape serializes"));
        let largest: Option<i64> = self
            .tx
            .query_one("SELECT CAST(max(object_id) AS BIGINT) FROM objects", &[])?
            .get(0)?;
        let id =
            self.take_counter("next_object_id", Some(1), largest.unwrap_or(0) as u64 + 1)? as i64;
        self.tx.execute(
            "INSERT INTO objects (object_id, content_key, kind, dtype, shape, raw_len, codec, pack_id, \"offset\", \
             stored_len, checksum, refcount, base_id, chain_depth, tolerance, max_error, decoded_key) \
             VALUES (?16, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11, ?12, ?13, ?14, ?15)",
            params![
                &o.key[..],
                kind,
                dtype,
                shape,
                o.raw_len,
                o.codec.tag() as i64,
                o.location.pack_id,
                o.location.offset,
                o.location.len,
                &o.checksum[..],
                o.base,
                o.chain_depth as i64,
                o.tolerance,
                o.max_error,
                &o.decoded_key[..],
                id,
            ],
        )?;
        if let Some(base) = o.base {
            self.add_ref(base, 1)?;
        }
        if let (Some(sketch), ObjectKind::Tensor { dtype }) = (&o.sketch, o.kind) {
            let elements = element_count(&o.shape).unwrap_or(0);
            self.tx.execute(
                "INSERT INTO sketches (object_id, dtype, elements, sketch) VALUES (?1, ?2, ?3, ?4)",
                params![
                    id,
                    dtype.as_str(),
                    elements,
                    &neurstore_core::sketch::Packed::quantize(sketch).as_bytes()[..]
                ],
            )?;
            self.bump_index_generation()?;
        }
        Ok(id)
    }

    /// One statement: it runs for every new sketched object.
    fn bump_index_generation(&self) -> Result<()> {
        self.tx.execute(
            "INSERT INTO store_meta (key, value) VALUES ('index_generation', '1') \
             ON CONFLICT (key) DO UPDATE \
             SET value = CAST(CAST(store_meta.value AS BIGINT) + 1 AS TEXT)",
            &[],
        )?;
        Ok(())
    }

    /// Moves an object's blob (garbage collection).
    pub fn relocate_object(&self, object_id: i64, to: BlobLocation) -> Result<()> {
        self.tx.execute(
            "UPDATE objects SET pack_id = ?2, \"offset\" = ?3 WHERE object_id = ?1",
            params![object_id, to.pack_id, to.offset],
        )?;
        Ok(())
    }

    /// Sets an object's record checksum (the upgrade to format 2).
    pub fn set_object_checksum(&self, object_id: i64, sum: &Digest) -> Result<()> {
        self.tx.execute(
            "UPDATE objects SET checksum = ?2 WHERE object_id = ?1",
            params![object_id, &sum[..]],
        )?;
        Ok(())
    }

    /// Inserts a model and returns its id.
    pub fn insert_model(&self, m: &ModelRow) -> Result<i64> {
        if self.model(&m.name)?.is_some() {
            return Err(StorageError::ModelExists(m.name.clone()));
        }
        self.tx
            .query_one(
                "INSERT INTO models (name, created_unix, source_format, metadata, raw_bytes, base_model, mode) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING model_id",
                params![
                    &m.name,
                    m.created_unix,
                    &m.source_format,
                    &m.metadata,
                    m.raw_bytes,
                    m.base_model.as_deref(),
                    &m.mode
                ],
            )?
            .get(0)
    }

    /// Records a model's manifest, once its files and tensors are inserted.
    pub fn seal_model(&self, model_id: i64) -> Result<()> {
        let model = model_row(&self.tx.query_one(
            &format!("SELECT {MODEL_COLUMNS} FROM models WHERE model_id = ?1"),
            params![model_id],
        )?)?;
        let digest = manifest(
            &model,
            &self.model_files(model_id)?,
            &self.model_tensors(model_id)?,
        );
        self.tx.execute(
            "UPDATE models SET manifest = ?2 WHERE model_id = ?1",
            params![model_id, &digest[..]],
        )?;
        Ok(())
    }

    /// Adds a file to a model and references its object.
    pub fn insert_model_file(
        &self,
        model_id: i64,
        path: &str,
        kind: FileKind,
        object_id: i64,
    ) -> Result<()> {
        let kind: i64 = match kind {
            FileKind::Safetensors => 0,
            FileKind::Plain => 1,
        };
        self.tx.execute(
            "INSERT INTO model_files (model_id, path, kind, object_id) VALUES (?1, ?2, ?3, ?4)",
            params![model_id, path, kind, object_id],
        )?;
        self.add_ref(object_id, 1)
    }

    /// Adds a tensor to a model file and references its object.
    pub fn insert_model_tensor(
        &self,
        model_id: i64,
        path: &str,
        position: i64,
        name: &str,
        object_id: i64,
    ) -> Result<()> {
        self.tx.execute(
            "INSERT INTO model_tensors (model_id, path, position, name, object_id) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![model_id, path, position, name, object_id],
        )?;
        self.add_ref(object_id, 1)
    }

    fn add_ref(&self, object_id: i64, delta: i64) -> Result<()> {
        self.tx.execute(
            "UPDATE objects SET refcount = refcount + ?2 WHERE object_id = ?1",
            params![object_id, delta],
        )?;
        Ok(())
    }

    /// Deletes a model, drops its references, and deletes the objects no longer referenced.
    /// Returns the number of objects deleted.
    pub fn delete_model(&self, name: &str) -> Result<u64> {
        let model = self
            .model(name)?
            .ok_or_else(|| StorageError::ModelNotFound(name.to_string()))?;
        for table in ["model_tensors", "model_files"] {
            self.tx.execute(
                &format!(
                    "UPDATE objects SET refcount = refcount - (SELECT count(*) FROM {table} t \
                     WHERE t.model_id = ?1 AND t.object_id = objects.object_id) \
                     WHERE object_id IN (SELECT object_id FROM {table} WHERE model_id = ?1)"
                ),
                params![model.id],
            )?;
            self.tx.execute(
                &format!("DELETE FROM {table} WHERE model_id = ?1"),
                params![model.id],
            )?;
        }
        self.tx
            .execute("DELETE FROM models WHERE model_id = ?1", params![model.id])?;
        // Deleting an object drops a reference to its base, which may free the base in turn.
        let mut deleted = 0;
        loop {
            let dead = self.tx.query(
                "SELECT object_id, base_id FROM objects WHERE refcount = 0",
                &[],
            )?;
            if dead.is_empty() {
                break;
            }
            for r in &dead {
                let (id, base): (i64, Option<i64>) = (r.get(0)?, r.get(1)?);
                if self
                    .tx
                    .execute("DELETE FROM sketches WHERE object_id = ?1", params![id])?
                    > 0
                {
                    self.bump_index_generation()?;
                }
                self.tx
                    .execute("DELETE FROM objects WHERE object_id = ?1", params![id])?;
                if let Some(base) = base {
                    self.add_ref(base, -1)?;
                }
            }
            deleted += dead.len() as u64;
        }
        Ok(deleted)
    }
}

/// A model's manifest: BLAKE3 of `"neurstore/manifest/v1\0"`, its name and source format, then
/// each file (path, kind, content key) in path order and each tensor (path, position, name,
/// content key) in file and position order; strings are prefixed by their u64 length. It binds
/// what a read rebuilds to what was stored, which SQLite (no page checksums) cannot.
pub fn manifest(model: &ModelRow, files: &[FileRow], tensors: &[TensorRow]) -> Digest {
    fn text(h: &mut blake3::Hasher, s: &str) {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    }
    let mut h = blake3::Hasher::new();
    h.update(b"neurstore/manifest/v1\0");
    text(&mut h, &model.name);
    text(&mut h, &model.source_format);
    h.update(&(files.len() as u64).to_le_bytes());
    for f in files {
        text(&mut h, &f.path);
        h.update(&[match f.kind {
            FileKind::Safetensors => 0,
            FileKind::Plain => 1,
        }]);
        h.update(&f.object.key);
    }
    h.update(&(tensors.len() as u64).to_le_bytes());
    for t in tensors {
        text(&mut h, &t.path);
        h.update(&t.position.to_le_bytes());
        text(&mut h, &t.name);
        h.update(&t.object.key);
    }
    *h.finalize().as_bytes()
}

fn location(pack: i64, offset: i64, len: i64, what: &str) -> Result<BlobLocation> {
    match (
        u64::try_from(pack),
        u64::try_from(offset),
        u64::try_from(len),
    ) {
        (Ok(pack_id), Ok(offset), Ok(len)) => Ok(BlobLocation {
            pack_id,
            offset,
            len,
        }),
        _ => Err(StorageError::corrupt(
            format!("record of {what:?}"),
            "negative location",
        )),
    }
}

/// A location in columns `at..at + 3` that may all be NULL (a model written before format 2).
fn optional_location(r: &Row, at: usize, what: &str) -> Result<Option<BlobLocation>> {
    let (p, o, l): (Option<i64>, Option<i64>, Option<i64>) =
        (r.get(at)?, r.get(at + 1)?, r.get(at + 2)?);
    match (p, o, l) {
        (Some(p), Some(o), Some(l)) => Ok(Some(location(p, o, l, what)?)),
        (None, None, None) => Ok(None),
        _ => Err(StorageError::corrupt(
            format!("model {what:?}"),
            "partial record location",
        )),
    }
}

fn model_row(r: &Row) -> Result<ModelRow> {
    Ok(ModelRow {
        id: r.get(0)?,
        name: r.get(1)?,
        created_unix: r.get(2)?,
        source_format: r.get(3)?,
        metadata: r.get(4)?,
        raw_bytes: r.get::<i64>(5)? as u64,
        base_model: r.get(6)?,
        mode: r.get(7)?,
    })
}

/// Reads and validates an object row starting at column `at`.
fn object_row(r: &Row, at: usize) -> Result<ObjectRow> {
    let id: i64 = r.get(at)?;
    let what = format!("object {id}");
    let bad = |detail: String| StorageError::corrupt(&what, detail);
    let digest = |v: Vec<u8>, field: &str| -> Result<Digest> {
        v.try_into()
            .map_err(|_| bad(format!("{field} is not 32 bytes")))
    };
    let key = digest(r.get(at + 1)?, "content key")?;
    let kind_tag: i64 = r.get(at + 2)?;
    let dtype: Option<String> = r.get(at + 3)?;
    let shape_json: Option<String> = r.get(at + 4)?;
    let nonneg = |col: usize, field: &str| -> Result<u64> {
        u64::try_from(r.get::<i64>(at + col)?).map_err(|_| bad(format!("negative {field}")))
    };
    let raw_len = nonneg(5, "raw length")?;
    let codec = Codec::from_tag(r.get(at + 6)?).map_err(|e| bad(e.to_string()))?;
    let location = BlobLocation {
        pack_id: nonneg(7, "pack id")?,
        offset: nonneg(8, "offset")?,
        len: nonneg(9, "stored length")?,
    };
    let checksum = digest(r.get(at + 10)?, "checksum")?;
    let refcount: i64 = r.get(at + 11)?;
    let base: Option<i64> = r.get(at + 12)?;
    let chain_depth =
        u32::try_from(r.get::<i64>(at + 13)?).map_err(|_| bad("bad chain depth".into()))?;
    let tolerance: Option<f64> = r.get(at + 14)?;
    let max_error: f64 = r.get(at + 15)?;
    let decoded_key = digest(r.get(at + 16)?, "decoded key")?;
    let base_key = match (base, r.get::<Option<Vec<u8>>>(at + 17)?) {
        (None, None) => None,
        (Some(_), Some(k)) => Some(digest(k, "base's decoded key")?),
        (Some(b), None) => return Err(bad(format!("base object {b} is missing"))),
        (None, Some(_)) => return Err(bad("a base key without a base".into())),
    };
    let needs_base = codec == Codec::Delta;
    let may_have_base = matches!(codec, Codec::Delta | Codec::Quantized);
    if (needs_base && base.is_none())
        || (!may_have_base && base.is_some())
        || (base.is_some() != (chain_depth > 0))
    {
        return Err(bad(format!(
            "{} codec with base {base:?} at chain depth {chain_depth}",
            codec.name()
        )));
    }
    if base == Some(id) {
        return Err(bad("object is its own base".into()));
    }
    let lossy = codec == Codec::Quantized;
    let bound_ok = match tolerance {
        Some(t) => lossy && t.is_finite() && t > 0.0 && max_error.is_finite() && max_error <= t,
        None => !lossy && max_error == 0.0,
    };
    if !bound_ok {
        return Err(bad(format!(
            "tolerance {tolerance:?} and max error {max_error} disagree with the codec"
        )));
    }
    if codec == Codec::Raw && location.len != raw_len {
        return Err(bad(format!(
            "raw blob of {} bytes for {raw_len} raw bytes",
            location.len
        )));
    }
    let (kind, shape) = match (kind_tag, dtype, shape_json) {
        (0, Some(dtype), Some(shape_json)) => {
            let dtype: DType = dtype.parse().map_err(|e| bad(format!("{e}")))?;
            let shape: Vec<u64> =
                serde_json::from_str(&shape_json).map_err(|e| bad(format!("shape: {e}")))?;
            let expected = element_count(&shape).and_then(|n| dtype.byte_len(n));
            if expected != Some(raw_len) {
                return Err(bad(format!(
                    "shape {shape:?} of {dtype} does not match {raw_len} raw bytes"
                )));
            }
            (ObjectKind::Tensor { dtype }, shape)
        }
        (1, None, None) => (ObjectKind::File, Vec::new()),
        _ => return Err(bad("kind, dtype and shape disagree".into())),
    };
    Ok(ObjectRow {
        id,
        key,
        kind,
        shape,
        raw_len,
        codec,
        location,
        checksum,
        refcount,
        base,
        chain_depth,
        tolerance,
        max_error,
        decoded_key,
        base_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_open_reads_and_never_migrates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        drop(Catalog::open(&path, true).unwrap());
        let mut reader = Catalog::open_read_only(&path).unwrap();
        assert!(reader.read().unwrap().models().unwrap().is_empty());
        let wrote = reader.write().and_then(|tx| {
            tx.sql()
                .execute("INSERT INTO store_meta VALUES ('k', 'v')", &[])
        });
        let err = wrote.expect_err("a read-only catalog took a write");
        assert!(err.to_string().contains("read-only"), "{err}");

        // An older schema is reported, not migrated.
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        drop(conn);
        let err = Catalog::open_read_only(&path).err().unwrap().to_string();
        assert!(err.contains("neurstore upgrade"), "{err}");
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 1);
    }

    #[test]
    fn uri_paths_keep_special_characters_literal() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("a?b#c%d e");
        std::fs::create_dir(&odd).unwrap();
        let path = odd.join("catalog.db");
        drop(Catalog::open(&path, true).unwrap());
        Catalog::open_read_only(&path).unwrap();
    }
}
