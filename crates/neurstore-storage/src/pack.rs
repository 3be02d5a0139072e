//! Pack files: append-only files of blobs, each blob starting on a 4 KiB boundary.
//!
//! A pack's bytes below its committed length (recorded in the catalog) never change while the
//! pack exists; bytes past it belong to a write that has not committed and are cut off by the
//! next writer. Pack files are named `NNNNNNNN.pack` after their id.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use neurstore_core::key::{Digest, checksum};

use crate::backend::{Backend, StorageFile};
use crate::record::{RecordHeader, TRAILER_LEN, record_checksum};

/// Records up to this payload size are written with one call.
const SMALL_RECORD: usize = 256 << 10;
use crate::error::{Result, StorageError};

/// Alignment of every blob within a pack file.
pub const BLOB_ALIGN: u64 = 4096;

/// Where a blob lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// Pack file id.
    pub pack_id: u64,
    /// Byte offset in the pack (a multiple of [`BLOB_ALIGN`]).
    pub offset: u64,
    /// Stored length in bytes.
    pub len: u64,
}

/// File name of a pack.
pub fn pack_file_name(pack_id: u64) -> String {
    format!("{pack_id:08}.pack")
}

/// Pack id from a file name, if it is one.
pub fn pack_id_from_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".pack")?;
    (stem.len() == 8 && stem.bytes().all(|b| b.is_ascii_digit())).then(|| stem.parse().ok())?
}

/// Rounds `n` up to the blob alignment.
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(BLOB_ALIGN) * BLOB_ALIGN
}

/// A blob's stored bytes: borrowed from a memory map when possible, otherwise owned.
pub enum BlobBytes {
    /// A range of a mapped pack file (zero copy).
    Mapped(Arc<memmap2::Mmap>, std::ops::Range<usize>),
    /// Bytes read into memory.
    Owned(Vec<u8>),
}

impl std::fmt::Debug for BlobBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobBytes({} bytes)", self.len())
    }
}

impl BlobBytes {
    /// The bytes in `range` of these bytes (no copy for mapped bytes).
    pub fn slice(self, range: std::ops::Range<usize>) -> BlobBytes {
        match self {
            BlobBytes::Mapped(map, r) => {
                BlobBytes::Mapped(map, r.start + range.start..r.start + range.end)
            }
            BlobBytes::Owned(mut v) => {
                v.truncate(range.end);
                v.drain(..range.start);
                BlobBytes::Owned(v)
            }
        }
    }
}

impl Deref for BlobBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            BlobBytes::Mapped(map, range) => &map[range.clone()],
            BlobBytes::Owned(v) => v,
        }
    }
}

struct OpenPack {
    file: Arc<dyn StorageFile>,
    map: Option<Arc<memmap2::Mmap>>,
    /// The file's length when last asked; asked again only when a blob ends past it.
    known_len: u64,
}

/// Read access to the pack files of a store, with open files and maps cached.
pub struct PackReader {
    backend: Arc<dyn Backend>,
    open: Mutex<HashMap<u64, OpenPack>>,
}

impl PackReader {
    /// A reader over `backend`'s packs.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        PackReader {
            backend,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Reads a blob and verifies its checksum. `what` names the blob in errors.
    pub fn read_verified(
        &self,
        loc: BlobLocation,
        expected: &Digest,
        what: &str,
    ) -> Result<BlobBytes> {
        let bytes = self.read(loc, what)?;
        if checksum(&bytes) != *expected {
            return Err(StorageError::corrupt(
                what,
                format!(
                    "checksum mismatch in pack {} at offset {} ({} bytes)",
                    loc.pack_id, loc.offset, loc.len
                ),
            ));
        }
        Ok(bytes)
    }

    /// Reads a blob's stored bytes without checking them.
    pub fn read(&self, loc: BlobLocation, what: &str) -> Result<BlobBytes> {
        if loc.len == 0 {
            // An empty blob occupies no bytes; its offset may lie at or past the pack's end.
            return Ok(BlobBytes::Owned(Vec::new()));
        }
        let end = loc
            .offset
            .checked_add(loc.len)
            .ok_or_else(|| StorageError::corrupt(what, "blob location overflows"))?;
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::hash_map::Entry::Vacant(slot) = open.entry(loc.pack_id) {
            let file = self
                .backend
                .open(&pack_file_name(loc.pack_id), false)
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        StorageError::PackMissing(loc.pack_id)
                    } else {
                        StorageError::io(format!("opening pack {}", loc.pack_id), e)
                    }
                })?;
            slot.insert(OpenPack {
                file,
                map: None,
                known_len: 0,
            });
        }
        let pack = open.get_mut(&loc.pack_id).expect("inserted above");
        let mapped_len = |p: &OpenPack| p.map.as_ref().map_or(0, |m| m.len() as u64);
        if mapped_len(pack) < end {
            // The pack may have grown since it was mapped.
            let map = pack
                .file
                .map()
                .map_err(|e| StorageError::io(format!("mapping pack {}", loc.pack_id), e))?;
            pack.map = map.map(Arc::new);
        }
        if let Some(map) = pack.map.as_ref().filter(|m| m.len() as u64 >= end) {
            return Ok(BlobBytes::Mapped(
                map.clone(),
                loc.offset as usize..end as usize,
            ));
        }
        if pack.known_len < end {
            // Checked before the allocation below, so a damaged location cannot ask for more
            // memory than the pack holds.
            pack.known_len = pack
                .file
                .len()
                .map_err(|e| StorageError::io(format!("pack {}", loc.pack_id), e))?;
        }
        if pack.known_len < end {
            return Err(StorageError::corrupt(
                what,
                format!(
                    "pack {} is {} bytes but the blob ends at {end}",
                    loc.pack_id, pack.known_len
                ),
            ));
        }
        let file = pack.file.clone();
        drop(open);
        let mut buf = vec![0u8; loc.len as usize];
        file.read_at(&mut buf, loc.offset)
            .map_err(|e| StorageError::io(format!("reading pack {}", loc.pack_id), e))?;
        Ok(BlobBytes::Owned(buf))
    }

    /// Drops cached handles of a pack (after it was removed).
    pub fn forget(&self, pack_id: u64) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pack_id);
    }
}

/// Appends blobs to one pack file on behalf of the single writer.
pub struct PackAppender {
    pack_id: u64,
    file: Arc<dyn StorageFile>,
    /// Length covered by the last commit; bytes past it are uncommitted.
    committed: u64,
    end: u64,
    /// True when this appender created the pack file (its directory entry needs a sync).
    created: bool,
}

impl PackAppender {
    /// Appends to pack `pack_id`, whose committed length is `committed` (0 and `created` for a
    /// new pack). Anything past `committed` is overwritten.
    pub fn open(backend: &dyn Backend, pack_id: u64, committed: u64, create: bool) -> Result<Self> {
        let name = pack_file_name(pack_id);
        let file = backend
            .open(&name, true)
            .map_err(|e| StorageError::io(format!("opening {name}"), e))?;
        Ok(PackAppender {
            pack_id,
            file,
            committed,
            end: committed,
            created: create,
        })
    }

    /// The pack being appended to.
    pub fn pack_id(&self) -> u64 {
        self.pack_id
    }

    /// End of the data appended so far.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Bytes appended since the last commit.
    pub fn pending(&self) -> u64 {
        self.end - self.committed
    }

    /// Writes a format-2 pack header at the start of a new, empty pack.
    pub fn write_header(&mut self, header: &[u8]) -> Result<()> {
        debug_assert_eq!(self.end, 0);
        self.file
            .write_at(header, 0)
            .map_err(|e| StorageError::io(format!("writing pack {}", self.pack_id), e))?;
        self.end = header.len() as u64;
        Ok(())
    }

    /// Appends one record at the end (format 2): header, meta, padding to the payload's
    /// alignment, payload, checksum. Returns the record's offset and checksum.
    pub fn append_record(
        &mut self,
        header: &RecordHeader,
        meta: &[u8],
        payload: &[u8],
    ) -> Result<(u64, Digest)> {
        let offset = self.end;
        let head = header.encode();
        let sum = record_checksum(&head, meta, payload);
        let payload_at = header
            .payload_offset(offset)
            .ok_or_else(|| StorageError::corrupt(format!("pack {}", self.pack_id), "full"))?;
        let io = |e| StorageError::io(format!("writing pack {}", self.pack_id), e);
        let prefix_len = (payload_at - offset) as usize;
        if payload.len() <= SMALL_RECORD {
            // One write for small records.
            let mut buf = Vec::with_capacity(prefix_len + payload.len() + sum.len());
            buf.extend_from_slice(&head);
            buf.extend_from_slice(meta);
            buf.resize(prefix_len, 0);
            buf.extend_from_slice(payload);
            buf.extend_from_slice(&sum);
            self.file.write_at(&buf, offset).map_err(io)?;
        } else {
            let mut buf = Vec::with_capacity(prefix_len);
            buf.extend_from_slice(&head);
            buf.extend_from_slice(meta);
            buf.resize(prefix_len, 0);
            self.file.write_at(&buf, offset).map_err(io)?;
            self.file.write_at(payload, payload_at).map_err(io)?;
            self.file
                .write_at(&sum, payload_at + payload.len() as u64)
                .map_err(io)?;
        }
        self.end = payload_at + payload.len() as u64 + TRAILER_LEN;
        Ok((offset, sum))
    }

    /// Appends one blob at the next aligned offset (format 1, kept for its tests).
    #[cfg(test)]
    pub fn append(&mut self, bytes: &[u8]) -> Result<BlobLocation> {
        let offset = align_up(self.end);
        if bytes.is_empty() {
            // Nothing to write: advancing `end` to the aligned offset would record a committed
            // length past the end of the file.
            return Ok(BlobLocation {
                pack_id: self.pack_id,
                offset,
                len: 0,
            });
        }
        self.file
            .write_at(bytes, offset)
            .map_err(|e| StorageError::io(format!("writing pack {}", self.pack_id), e))?;
        self.end = offset + bytes.len() as u64;
        Ok(BlobLocation {
            pack_id: self.pack_id,
            offset,
            len: bytes.len() as u64,
        })
    }

    /// Makes everything appended durable, including the pack's directory entry when new.
    pub fn sync(&mut self, backend: &dyn Backend) -> Result<()> {
        self.file
            .sync()
            .map_err(|e| StorageError::io(format!("syncing pack {}", self.pack_id), e))?;
        if self.created {
            backend
                .sync_dir()
                .map_err(|e| StorageError::io("syncing the pack directory", e))?;
            self.created = false;
        }
        Ok(())
    }

    /// Records that the catalog now covers everything appended.
    pub fn mark_committed(&mut self) {
        self.committed = self.end;
    }

    /// Cuts off bytes appended since the last commit (after a failed write).
    pub fn rollback(&mut self) -> Result<()> {
        self.end = self.committed;
        self.file
            .set_len(self.committed)
            .map_err(|e| StorageError::io(format!("truncating pack {}", self.pack_id), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FsBackend;

    #[test]
    fn appends_aligned_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(FsBackend::new(dir.path()));
        let mut app = PackAppender::open(&*backend, 1, 0, true).unwrap();
        let a = app.append(b"hello").unwrap();
        let b = app.append(&[7u8; 5000]).unwrap();
        assert_eq!((a.offset, b.offset), (0, 4096));
        app.sync(&*backend).unwrap();
        let reader = PackReader::new(backend.clone());
        assert_eq!(
            &*reader.read_verified(a, &checksum(b"hello"), "a").unwrap(),
            b"hello"
        );
        let err = reader
            .read_verified(b, &checksum(b"nope"), "tensor x")
            .unwrap_err();
        assert!(err.to_string().contains("tensor x is corrupt"), "{err}");
        let beyond = BlobLocation {
            pack_id: 1,
            offset: 8192,
            len: 10_000,
        };
        assert!(matches!(
            reader.read(beyond, "z"),
            Err(StorageError::Corrupt { .. })
        ));
        assert!(matches!(
            reader.read(BlobLocation { pack_id: 9, ..a }, "z"),
            Err(StorageError::PackMissing(9))
        ));
    }

    #[test]
    fn pack_names_round_trip() {
        assert_eq!(pack_id_from_name(&pack_file_name(42)), Some(42));
        assert_eq!(pack_id_from_name("42.pack"), None);
        assert_eq!(pack_id_from_name("0000004x.pack"), None);
    }
}
