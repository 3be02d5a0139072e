//! The I/O backend trait through which all pack-file access goes, and its file-system
//! implementation. Fault-injecting and object-store backends implement the same traits.
//!
//! **Invariant:** the engine touches pack files only through [`Backend`] and [`StorageFile`].
//! (The SQLite catalog and the lock file do their own I/O; the catalog's commit point is made
//! visible to a backend through [`Backend::barrier`].)

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A flat namespace of files (the pack directory).
pub trait Backend: Send + Sync {
    /// Opens `name`, creating it empty when `create` is set and it does not exist.
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>>;
    /// Removes `name`.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to` atomically.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Lists the names present.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Makes creations and removals durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// Called right before the catalog transaction that publishes a write commits, after every
    /// pack file it names was synced. An error aborts the write: the transaction is dropped
    /// (nothing is published) and the writer refuses further writes until reopened.
    ///
    /// The catalog is SQLite's own I/O, outside this trait; the barrier lets a backend order
    /// the commit among its own operations (the fault-injecting backend counts it as one, so a
    /// simulated crash falls either before the commit or after it).
    fn barrier(&self) -> io::Result<()> {
        Ok(())
    }

    /// Whether a write may append to a pack an earlier write left (true for files). A backend
    /// that must rewrite a partly filled block to append to it (rows of a database) answers
    /// false, and each write starts a pack of its own: its bytes are then written once.
    fn appends_in_place(&self) -> bool {
        true
    }
}

/// One open file.
#[allow(clippy::len_without_is_empty)] // mirrors std::fs::File, which has no is_empty either
pub trait StorageFile: Send + Sync {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`; a short file is an `UnexpectedEof` error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes written data durable.
    fn sync(&self) -> io::Result<()>;
    /// A read-only memory map of the whole file, where the backend supports it.
    fn map(&self) -> io::Result<Option<memmap2::Mmap>> {
        Ok(None)
    }
}

/// Files in one directory of the local file system.
pub struct FsBackend {
    dir: PathBuf,
}

impl FsBackend {
    /// A backend rooted at `dir` (which must exist).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FsBackend { dir: dir.into() }
    }

    /// The directory this backend serves.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

struct FsFile(File);

/// Permission bits a file created in a directory of mode `dir_mode` takes: the directory's read
/// and write bits for group and others (never execute), read and write for the owner. A store
/// directory of mode 2775 shared by a group gives 0664 files; a private 0700 one gives 0600.
pub fn file_mode_for(dir_mode: u32) -> u32 {
    0o600 | (dir_mode & 0o066)
}

/// Gives a file created in the store directory `dir` the directory's group and permission bits
/// ([`file_mode_for`]), so every member of a group sharing the store can use what another
/// wrote. Best effort where the file belongs to another user (it was shared already).
pub fn share_like_dir(file: &File, dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let d = fs::metadata(dir)?;
    let f = file.metadata()?;
    let mode = file_mode_for(d.mode());
    let result = (|| {
        if f.gid() != d.gid() {
            std::os::unix::fs::fchown(file, None, Some(d.gid()))?;
        }
        if f.mode() & 0o777 != mode {
            file.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    })();
    ignore_not_permitted(result)
}

/// [`share_like_dir`] for a path: a file (as [`file_mode_for`]) or a subdirectory (the
/// directory's own mode, setgid bit included).
pub fn share_path_like_dir(path: &Path, dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let d = fs::metadata(dir)?;
    let f = fs::metadata(path)?;
    let mode = if f.is_dir() {
        d.mode() & 0o7777
    } else {
        file_mode_for(d.mode())
    };
    let result = (|| {
        if f.gid() != d.gid() {
            std::os::unix::fs::chown(path, None, Some(d.gid()))?;
        }
        if f.mode() & 0o7777 != mode {
            fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    })();
    ignore_not_permitted(result)
}

/// A group or mode change another user's file refuses is left as it is.
fn ignore_not_permitted(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
        other => other,
    }
}

impl Backend for FsBackend {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        // Never through a symbolic link: a link planted in the store must not make a writer
        // truncate or overwrite the file it points at.
        let file = OpenOptions::new()
            .read(true)
            .write(create)
            .create(create)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.dir.join(name))
            .or_else(|e| {
                // Readers open pack files read-only; writers need write access.
                if create || e.raw_os_error() == Some(libc::ELOOP) {
                    Err(e)
                } else {
                    OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(self.dir.join(name))
                }
            })
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    io::Error::other(format!(
                        "{name} is a symbolic link, which a store never holds"
                    ))
                } else {
                    e
                }
            })?;
        if create {
            share_like_dir(&file, &self.dir)?;
        }
        Ok(Arc::new(FsFile(file)))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.dir.join(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

impl StorageFile for FsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn map(&self) -> io::Result<Option<memmap2::Mmap>> {
        if self.len()? == 0 {
            return Ok(None);
        }
        // SAFETY: pack files are append-only below their committed length: no process
        // truncates or rewrites bytes a reader can be told about (docs/format.md, commit protocol).
        let map = unsafe { memmap2::Mmap::map(&self.0)? };
        Ok(Some(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn created_files_take_the_directory_mode() {
        let dir = tempfile::tempdir().unwrap();
        for (dir_mode, file_mode) in [(0o2775, 0o664), (0o755, 0o644), (0o700, 0o600)] {
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(dir_mode)).unwrap();
            let backend = FsBackend::new(dir.path());
            let name = format!("f{dir_mode:o}");
            drop(backend.open(&name, true).unwrap());
            let meta = fs::metadata(dir.path().join(&name)).unwrap();
            assert_eq!(meta.mode() & 0o777, file_mode, "directory {dir_mode:o}");
            assert_eq!(meta.gid(), fs::metadata(dir.path()).unwrap().gid());
            let sub = dir.path().join(format!("d{dir_mode:o}"));
            fs::create_dir(&sub).unwrap();
            share_path_like_dir(&sub, dir.path()).unwrap();
            assert_eq!(fs::metadata(&sub).unwrap().mode() & 0o7777, dir_mode);
        }
    }
}
