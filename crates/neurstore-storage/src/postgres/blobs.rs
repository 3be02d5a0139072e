//! Pack files in PostgreSQL: each file is a row of `pack_files` (name, length) and its bytes
//! are rows of `pack_chunks`, chunk `i` holding bytes `[i * CHUNK, (i + 1) * CHUNK)`.
//!
//! Writes are kept in memory per open file, a chunk at a time, and reach the database when a
//! chunk fills or the file is synced, each statement committing on its own (autocommit): like
//! a file system, bytes written but not synced may or may not be there after a crash, and the
//! engine's commit protocol (append, sync, then publish in the catalog) makes that safe. Blob
//! I/O runs on connections of its own, never on the catalog's, so it is never caught inside a
//! catalog transaction and parallel reads do not queue behind one connection.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use crate::backend::{Backend, StorageFile};
use crate::error::StorageError;
use crate::sql::{Sql, Value, params};

/// Bytes per chunk row.
pub const CHUNK: u64 = 1 << 20;

/// Runs SQL against the database holding the chunks: each call to [`SqlRunner::run`] is one
/// transaction of its own (a client connection), or part of the caller's (inside the server).
pub trait SqlRunner: Send + Sync {
    /// Runs `f`; its statements take effect together or not at all.
    fn run(&self, f: &mut dyn FnMut(&dyn Sql) -> crate::Result<()>) -> crate::Result<()>;

    /// Runs `f`, whose statements only read and need no common snapshot: a runner may run
    /// each as a transaction of its own, saving the round trips of `BEGIN` and `COMMIT`.
    fn read(&self, f: &mut dyn FnMut(&dyn Sql) -> crate::Result<()>) -> crate::Result<()> {
        self.run(f)
    }
}

fn to_io(e: StorageError) -> io::Error {
    match e {
        StorageError::Io { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

/// Runs `f` through `runner` in one transaction, returning what it produced.
fn with<T>(runner: &dyn SqlRunner, f: impl FnMut(&dyn Sql) -> crate::Result<T>) -> io::Result<T> {
    collect(f, |g| runner.run(g))
}

/// Runs the read-only `f` through `runner` ([`SqlRunner::read`]), returning what it produced.
fn reading<T>(
    runner: &dyn SqlRunner,
    f: impl FnMut(&dyn Sql) -> crate::Result<T>,
) -> io::Result<T> {
    collect(f, |g| runner.read(g))
}

/// Calls `f` through `run` and hands back its value.
fn collect<T>(
    mut f: impl FnMut(&dyn Sql) -> crate::Result<T>,
    run: impl FnOnce(&mut dyn FnMut(&dyn Sql) -> crate::Result<()>) -> crate::Result<()>,
) -> io::Result<T> {
    let mut out = None;
    run(&mut |sql| {
        out = Some(f(sql)?);
        Ok(())
    })
    .map_err(to_io)?;
    Ok(out.expect("runs call f once when they succeed"))
}

/// Blob connections of a client kept open for reuse.
const MAX_IDLE: usize = 8;

/// Client connections to one database, opened on demand and reused; each run is one
/// transaction.
pub struct Pool {
    url: String,
    idle: Mutex<Vec<super::PgConn>>,
}

impl Pool {
    /// A pool for the database at `url`.
    pub fn new(url: &str) -> Self {
        Pool {
            url: url.to_string(),
            idle: Mutex::new(Vec::new()),
        }
    }
}

impl Pool {
    /// Runs `f` on an idle connection (or a new one), then keeps the connection for reuse
    /// unless it broke.
    fn on_conn(
        &self,
        f: impl FnOnce(&Mutex<super::PgConn>) -> crate::Result<()>,
    ) -> crate::Result<()> {
        let taken = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match taken {
            Some(c) => c,
            None => super::PgConn::new(super::connect(&self.url)?),
        };
        let conn = Mutex::new(conn);
        let result = f(&conn);
        let mut conn = conn.into_inner().unwrap_or_else(|e| e.into_inner());
        if !conn.client().is_closed() {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
        result
    }
}

impl SqlRunner for Pool {
    fn run(&self, f: &mut dyn FnMut(&dyn Sql) -> crate::Result<()>) -> crate::Result<()> {
        self.on_conn(|conn| {
            // Dropped uncommitted on an error: rolled back.
            let txn = super::PgTxn::begin(conn, "BEGIN")?;
            f(&txn)?;
            txn.commit_txn()
        })
    }

    /// Each statement commits on its own (no transaction around them).
    fn read(&self, f: &mut dyn FnMut(&dyn Sql) -> crate::Result<()>) -> crate::Result<()> {
        self.on_conn(|conn| f(conn))
    }
}

/// Pack files as rows of `pack_files` and `pack_chunks`, through a [`SqlRunner`].
pub struct ChunkBackend {
    runner: Arc<dyn SqlRunner>,
}

/// The pack files of a store in PostgreSQL, reached as a client.
pub type PgBackend = ChunkBackend;

impl ChunkBackend {
    /// The backend of the store at `url`, over client connections of its own.
    pub fn new(url: &str) -> Self {
        Self::over(Arc::new(Pool::new(url)))
    }

    /// The backend over any runner (the server side runs inside the caller's transaction).
    pub fn over(runner: Arc<dyn SqlRunner>) -> Self {
        ChunkBackend { runner }
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no pack file {name}"))
}

/// A file's length as the database records it.
fn file_len(sql: &dyn Sql, name: &str) -> crate::Result<Option<u64>> {
    sql.query_opt("SELECT len FROM pack_files WHERE name = ?1", params![name])?
        .map(|r| Ok(r.get::<i64>(0)? as u64))
        .transpose()
}

/// Records a file's length.
fn set_file_len(sql: &dyn Sql, name: &str, len: u64) -> crate::Result<()> {
    sql.execute(
        "UPDATE pack_files SET len = ?2 WHERE name = ?1",
        params![name, len],
    )?;
    Ok(())
}

impl Backend for ChunkBackend {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let len = with(&*self.runner, |sql| {
            if create {
                sql.execute(
                    "INSERT INTO pack_files (name, len) VALUES (?1, 0) ON CONFLICT (name) DO NOTHING",
                    params![name],
                )?;
            }
            file_len(sql, name)
        })?;
        let len = len.ok_or_else(|| not_found(name))?;
        Ok(Arc::new(ChunkFile {
            runner: self.runner.clone(),
            name: name.to_string(),
            state: Mutex::new(FileState {
                len,
                synced_len: len,
                dirty: BTreeMap::new(),
            }),
        }))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let n = with(&*self.runner, |sql| {
            sql.execute("DELETE FROM pack_files WHERE name = ?1", params![name])
        })?;
        if n == 0 {
            return Err(not_found(name));
        }
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        with(&*self.runner, |sql| {
            sql.execute("DELETE FROM pack_files WHERE name = ?1", params![to])?;
            sql.execute(
                "UPDATE pack_files SET name = ?2 WHERE name = ?1",
                params![from, to],
            )?;
            Ok(())
        })
    }

    fn list(&self) -> io::Result<Vec<String>> {
        with(&*self.runner, |sql| {
            sql.query("SELECT name FROM pack_files ORDER BY name", &[])?
                .iter()
                .map(|r| r.get(0))
                .collect()
        })
    }

    /// Every statement is WAL-logged and committed with its transaction: nothing more to do.
    fn sync_dir(&self) -> io::Result<()> {
        Ok(())
    }

    /// Appending to a pack whose last chunk is partly filled would rewrite that chunk's row
    /// (leaving a dead copy of up to 1 MiB behind until vacuumed): each write takes a new pack.
    fn appends_in_place(&self) -> bool {
        false
    }
}

struct FileState {
    /// Length including unsynced writes.
    len: u64,
    /// Length the database records.
    synced_len: u64,
    /// Chunks written since the last sync: index to the chunk's whole content.
    dirty: BTreeMap<u64, Vec<u8>>,
}

/// One open pack file.
struct ChunkFile {
    runner: Arc<dyn SqlRunner>,
    name: String,
    state: Mutex<FileState>,
}

impl ChunkFile {
    fn state(&self) -> std::sync::MutexGuard<'_, FileState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the file's length from the database again when this handle wrote nothing since
    /// its last sync (another handle or writer may have grown it since).
    fn refresh(&self, state: &mut FileState) -> io::Result<()> {
        if !state.dirty.is_empty() || state.len != state.synced_len {
            return Ok(());
        }
        let len = with(&*self.runner, |sql| file_len(sql, &self.name))?
            .ok_or_else(|| not_found(&self.name))?;
        state.len = len;
        state.synced_len = len;
        Ok(())
    }

    /// Bytes from `start` in chunk `first` up to `end` (exclusive) in chunk `last` as the
    /// database holds them, into `out` (of exactly that length), in one query.
    fn read_chunks(
        &self,
        (first, start): (u64, u64),
        (last, end): (u64, u64),
        out: &mut [u8],
    ) -> io::Result<()> {
        let pieces: Vec<(i64, Vec<u8>)> = reading(&*self.runner, |sql| {
            sql.query(
                "SELECT chunk, substring(bytes \
                     FROM CAST(CASE WHEN chunk = ?2 THEN CAST(?4 AS bigint) ELSE 0 END + 1 \
                               AS integer) \
                     FOR CAST(CASE WHEN chunk = ?3 THEN CAST(?5 AS bigint) \
                                   ELSE CAST(?6 AS bigint) END \
                              - CASE WHEN chunk = ?2 THEN CAST(?4 AS bigint) ELSE 0 END \
                              AS integer)) \
                 FROM pack_chunks WHERE name = ?1 AND chunk BETWEEN ?2 AND ?3 ORDER BY chunk",
                params![&self.name, first, last, start, end, CHUNK],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .collect()
        })?;
        let mut filled = 0;
        for (i, (chunk, bytes)) in pieces.into_iter().enumerate() {
            let expected = first + i as u64;
            let from = if expected == first { start } else { 0 };
            let to = if expected == last { end } else { CHUNK };
            if chunk != expected as i64 || bytes.len() as u64 != to - from {
                break;
            }
            out[filled..filled + bytes.len()].copy_from_slice(&bytes);
            filled += bytes.len();
        }
        if filled != out.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "pack file {} is short in chunks {first} to {last}",
                    self.name
                ),
            ));
        }
        Ok(())
    }

    /// Writes chunks to the database: the full ones only, or all with `all`; then, with
    /// `all`, the file's length.
    fn flush(&self, state: &mut FileState, all: bool) -> io::Result<()> {
        let full: Vec<u64> = state
            .dirty
            .iter()
            .filter(|(_, b)| all || b.len() as u64 == CHUNK)
            .map(|(i, _)| *i)
            .collect();
        if full.is_empty() && (!all || state.synced_len == state.len) {
            return Ok(());
        }
        let chunks: Vec<(u64, Vec<u8>)> = full
            .iter()
            .map(|i| (*i, state.dirty.remove(i).expect("listed above")))
            .collect();
        let len = state.len;
        with(&*self.runner, |sql| {
            for (i, bytes) in &chunks {
                sql.execute(
                    "INSERT INTO pack_chunks (name, chunk, bytes) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (name, chunk) DO UPDATE SET bytes = EXCLUDED.bytes",
                    &[
                        Value::from(&self.name),
                        Value::from(*i),
                        Value::Blob(bytes.clone()),
                    ],
                )?;
            }
            if all {
                set_file_len(sql, &self.name, len)?;
            }
            Ok(())
        })?;
        if all {
            state.synced_len = len;
        }
        Ok(())
    }
}

impl Drop for ChunkFile {
    /// Writes back what was never synced, as a file system writes back its cache: the bytes
    /// may or may not be there after a crash, and nothing relies on them until synced.
    fn drop(&mut self) {
        let mut state = self.state();
        let _ = self.flush(&mut state, true);
    }
}

impl StorageFile for ChunkFile {
    fn len(&self) -> io::Result<u64> {
        let mut state = self.state();
        self.refresh(&mut state)?;
        Ok(state.len)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        let mut state = self.state();
        if end > state.len {
            self.refresh(&mut state)?;
        }
        if end > state.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read past the end of pack file {}", self.name),
            ));
        }
        // Chunks buffered here are copied; each run of chunks between them is one query, made
        // without holding the state, so that reads of one pack proceed in parallel.
        let mut runs = Vec::new();
        let mut at = offset;
        while at < end {
            let chunk = at / CHUNK;
            let start = at - chunk * CHUNK;
            if let Some(bytes) = state.dirty.get(&chunk) {
                let n = (CHUNK - start).min(end - at);
                let out = &mut buf[(at - offset) as usize..(at - offset + n) as usize];
                out.copy_from_slice(&bytes[start as usize..(start + n) as usize]);
                at += n;
                continue;
            }
            let mut last = chunk;
            while (last + 1) * CHUNK < end && !state.dirty.contains_key(&(last + 1)) {
                last += 1;
            }
            let run_end = ((last + 1) * CHUNK).min(end);
            runs.push(((chunk, start), (last, run_end - last * CHUNK), at..run_end));
            at = run_end;
        }
        drop(state);
        for (from, to, range) in runs {
            let out = &mut buf[(range.start - offset) as usize..(range.end - offset) as usize];
            self.read_chunks(from, to, out)?;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut state = self.state();
        let end = offset + buf.len() as u64;
        let mut at = offset;
        while at < end {
            let chunk = at / CHUNK;
            let start = at - chunk * CHUNK;
            let n = (CHUNK - start).min(end - at);
            if !state.dirty.contains_key(&chunk) {
                // The chunk's current bytes, if the database holds any.
                let held = state.synced_len.saturating_sub(chunk * CHUNK).min(CHUNK);
                let mut bytes = vec![0; held as usize];
                if held > 0 {
                    self.read_chunks((chunk, 0), (chunk, held), &mut bytes)?;
                }
                state.dirty.insert(chunk, bytes);
            }
            let bytes = state.dirty.get_mut(&chunk).expect("inserted above");
            let stop = (start + n) as usize;
            if bytes.len() < stop {
                bytes.resize(stop, 0);
            }
            bytes[start as usize..stop]
                .copy_from_slice(&buf[(at - offset) as usize..][..n as usize]);
            at += n;
        }
        state.len = state.len.max(end);
        self.flush(&mut state, false)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.state();
        // Drop what lies past the new end in memory, then in the database.
        state.dirty.retain(|i, _| i * CHUNK < len);
        if let Some((i, bytes)) = state.dirty.iter_mut().next_back() {
            bytes.resize(((len - i * CHUNK).min(CHUNK)) as usize, 0);
        }
        let last = len.div_ceil(CHUNK);
        let keep = len - last.saturating_sub(1) * CHUNK;
        with(&*self.runner, |sql| {
            sql.execute(
                "DELETE FROM pack_chunks WHERE name = ?1 AND chunk >= ?2",
                params![&self.name, last],
            )?;
            if last > 0 {
                sql.execute(
                    "UPDATE pack_chunks SET bytes = substring(bytes FROM 1 FOR CAST(?3 AS integer)) \
                     WHERE name = ?1 AND chunk = ?2 AND length(bytes) > ?3",
                    params![&self.name, last - 1, keep],
                )?;
            }
            set_file_len(sql, &self.name, len)
        })?;
        state.len = len;
        state.synced_len = len;
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut state = self.state();
        self.flush(&mut state, true)
    }
}
