//! The writer lock: an exclusive advisory lock on `LOCK` in the store directory, holding the
//! owner's pid. The OS releases it when the process dies, so a killed writer never wedges the store.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Result, StorageError};

/// Held for as long as a store is open for writing.
pub struct WriterLock {
    _file: File,
}

/// How long to wait for a lock another process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockWait {
    /// Fail at once, naming the holder.
    #[default]
    No,
    /// Wait up to this long, then fail naming the holder.
    For(Duration),
    /// Wait until the holder finishes.
    Forever,
}

/// How often a timed wait retries the lock.
const RETRY: Duration = Duration::from_millis(50);

impl WriterLock {
    /// Takes the lock of the store at `dir`, or reports who holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        Self::acquire_waiting(dir, LockWait::No)
    }

    /// Takes the lock of the store at `dir`, waiting for its holder as `wait` allows.
    pub fn acquire_waiting(dir: &Path, wait: LockWait) -> Result<Self> {
        let path = dir.join("LOCK");
        // Never through a symbolic link (a link planted at LOCK must not make the writer
        // overwrite the file it points at).
        let io = |e| StorageError::io(path.display().to_string(), e);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io)?;
        crate::backend::share_like_dir(&file, dir).map_err(io)?;
        let started = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
            let waited = started.elapsed();
            match wait {
                LockWait::Forever => {
                    file.lock().map_err(io)?;
                    break;
                }
                LockWait::For(limit) if waited < limit => {
                    std::thread::sleep(RETRY.min(limit - waited));
                }
                _ => {
                    let mut holder = String::new();
                    let _ = file.seek(SeekFrom::Start(0));
                    let _ = file.read_to_string(&mut holder);
                    let mut holder = match holder.trim().parse::<u32>() {
                        Ok(pid) => format!("pid {pid}"),
                        Err(_) => "another process".to_string(),
                    };
                    if let LockWait::For(limit) = wait {
                        holder.push_str(&format!(" (waited {:.1} s)", limit.as_secs_f64()));
                    }
                    return Err(StorageError::Locked {
                        dir: dir.to_path_buf(),
                        holder,
                    });
                }
            }
        }
        let write_pid = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.seek(SeekFrom::Start(0))?;
            write!(f, "{}", std::process::id())
        };
        write_pid(&mut file).map_err(io)?;
        Ok(WriterLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_writer_is_told_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = WriterLock::acquire(dir.path()).unwrap();
        let err = WriterLock::acquire(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        WriterLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_timed_wait_gives_up_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _first = WriterLock::acquire(dir.path()).unwrap();
        let wait = LockWait::For(Duration::from_millis(120));
        let started = Instant::now();
        let err = WriterLock::acquire_waiting(dir.path(), wait).err().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(120));
        let text = err.to_string();
        assert!(
            text.contains("pid") && text.contains("waited 0.1 s"),
            "{text}"
        );
    }

    #[test]
    fn a_wait_takes_the_lock_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let first = WriterLock::acquire(dir.path()).unwrap();
        let path = dir.path().to_path_buf();
        let waiter =
            std::thread::spawn(move || WriterLock::acquire_waiting(&path, LockWait::Forever));
        std::thread::sleep(Duration::from_millis(100));
        drop(first);
        let second = waiter.join().unwrap().unwrap();
        drop(second);
        let timed = WriterLock::acquire_waiting(dir.path(), LockWait::For(Duration::from_secs(5)));
        assert!(timed.is_ok());
    }
}
