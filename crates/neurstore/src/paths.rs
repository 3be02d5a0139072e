//! Stored file paths and where output is written: nothing read from a store names a place on
//! disk unless it passes one rule, and output is assembled where no one else can plant a link.
//!
//! **Invariant:** a stored path is relative, '/'-separated, with no empty, `.` or `..`
//! component, no NUL or other control character, no backslash and no drive prefix
//! ([`validate_stored_path`]); it is checked when a model is put and again whenever a model is
//! read, so a forged catalog row cannot make `get` write outside its output.
//!
//! **Invariant:** `get` writes only inside a private directory it has just created beside the
//! destination ([`Staging`]), creates every file there without following a symbolic link, and
//! moves the finished output into place with one rename; a destination that is a symbolic link
//! is refused.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use neurstore_storage::StorageError;

use crate::error::{Error, Result};

/// Longest stored path accepted, in bytes (longer than any file system takes as a whole path).
pub const MAX_STORED_PATH_BYTES: usize = 4096;

/// Attempts at a fresh staging directory name before giving up.
const STAGING_ATTEMPTS: u32 = 64;

/// Why a stored path breaks the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoredPathError {
    /// The path is empty.
    #[error("the path is empty")]
    Empty,
    /// Longer than [`MAX_STORED_PATH_BYTES`].
    #[error("the path is longer than {MAX_STORED_PATH_BYTES} bytes")]
    TooLong,
    /// Starts with '/': names a place from the file system root.
    #[error("the path is absolute")]
    Absolute,
    /// Starts with a drive such as `C:`.
    #[error("the path starts with a drive")]
    Drive,
    /// Holds a '\\' (a separator on Windows).
    #[error("the path holds a backslash")]
    Backslash,
    /// Holds NUL or another control character.
    #[error("the path holds a control character")]
    Control,
    /// Two separators in a row, or a separator at the end.
    #[error("the path has an empty component")]
    EmptyComponent,
    /// A `.` component.
    #[error("the path has a '.' component")]
    Dot,
    /// A `..` component: it could climb out of the output directory.
    #[error("the path has a '..' component")]
    DotDot,
}

/// Checks a file path read from, or about to be written to, a store's catalog: relative,
/// '/'-separated, no empty, `.` or `..` component, no control character (NUL included), no
/// backslash, no drive, at most [`MAX_STORED_PATH_BYTES`] bytes. Such a path joined onto a
/// directory stays inside it. Every store (the embedded one, PostgreSQL) and every front end
/// applies this one rule.
pub fn validate_stored_path(path: &str) -> std::result::Result<(), StoredPathError> {
    if path.is_empty() {
        return Err(StoredPathError::Empty);
    }
    if path.len() > MAX_STORED_PATH_BYTES {
        return Err(StoredPathError::TooLong);
    }
    if path.chars().any(char::is_control) {
        return Err(StoredPathError::Control);
    }
    if path.contains('\\') {
        return Err(StoredPathError::Backslash);
    }
    if path.starts_with('/') {
        return Err(StoredPathError::Absolute);
    }
    if has_drive(path) {
        return Err(StoredPathError::Drive);
    }
    for component in path.split('/') {
        match component {
            "" => return Err(StoredPathError::EmptyComponent),
            "." => return Err(StoredPathError::Dot),
            ".." => return Err(StoredPathError::DotDot),
            _ => {}
        }
    }
    Ok(())
}

/// A drive prefix: an ASCII letter and a colon (`C:`, `c:foo`).
fn has_drive(path: &str) -> bool {
    let b = path.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

/// [`validate_stored_path`] for a catalog row of model `model`: a breach is `Corrupt`, naming
/// the model and the path.
pub(crate) fn check_row_path(model: &str, path: &str) -> std::result::Result<(), StorageError> {
    validate_stored_path(path).map_err(|e| {
        StorageError::corrupt(
            format!("model {model:?} file {path:?}"),
            format!("stored path refused: {e}"),
        )
    })
}

/// A private directory created beside a destination, in which `get` assembles its output
/// before moving it into place; removed (with whatever is left in it) when dropped.
///
/// Its name is fresh (created with `mkdir`, which fails rather than reuse anything already
/// there, a planted symbolic link included), it is readable by its owner only, and files in it
/// are created with `create_new` (`O_CREAT | O_EXCL`, which never follows a symbolic link).
pub(crate) struct Staging {
    dir: PathBuf,
}

/// The entry of the staging directory that becomes the output.
const CONTENT: &str = "content";

impl Staging {
    /// Creates a fresh staging directory in the directory of `out`.
    pub(crate) fn beside(out: &Path) -> Result<Staging> {
        let file_name = out
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::invalid(out, "output path has no file name"))?;
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        for attempt in 0..STAGING_ATTEMPTS {
            let dir = out.with_file_name(format!(
                ".{file_name}.neurstore-partial-{}-{nonce:08x}{attempt:02}",
                std::process::id()
            ));
            match private_dir(&dir) {
                Ok(()) => return Ok(Staging { dir }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(&dir, e)),
            }
        }
        Err(Error::invalid(
            out,
            "could not create a fresh temporary directory beside the output",
        ))
    }

    /// Where the output is assembled: a file, or the root of a directory output.
    pub(crate) fn content(&self) -> PathBuf {
        self.dir.join(CONTENT)
    }

    /// Creates the directory output's root (with the umask's permissions, as every directory
    /// under it: the private staging directory around it keeps others out until the rename).
    pub(crate) fn create_root_dir(&self) -> Result<PathBuf> {
        let root = self.content();
        std::fs::create_dir(&root).map_err(|e| Error::io(&root, e))?;
        Ok(root)
    }

    /// Creates the single output file.
    pub(crate) fn create_file(&self) -> Result<(File, PathBuf)> {
        let path = self.content();
        let file = create_new(&path).map_err(|e| Error::io(&path, e))?;
        Ok((file, path))
    }

    /// Creates file `rel` (a stored path of model `model`) under the directory output's root,
    /// with its parent directories. The path is checked against the rule first; no component
    /// is followed through a symbolic link, and the file's directory must resolve inside the
    /// root.
    pub(crate) fn create_file_under(&self, model: &str, rel: &str) -> Result<(File, PathBuf)> {
        check_row_path(model, rel)?;
        let root = self.content();
        let mut dir = root.clone();
        let mut parts: Vec<&str> = rel.split('/').collect();
        let leaf = parts.pop().expect("a valid path has a component");
        for part in parts {
            dir.push(part);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(escape(model, rel, "a parent is not a directory"));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    std::fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
                }
                Err(e) => return Err(Error::io(&dir, e)),
            }
        }
        let inside = dir
            .canonicalize()
            .and_then(|d| Ok(d.starts_with(root.canonicalize()?)))
            .map_err(|e| Error::io(&dir, e))?;
        if !inside {
            return Err(escape(model, rel, "resolves outside the output directory"));
        }
        let path = dir.join(leaf);
        let file = create_new(&path).map_err(|e| Error::io(&path, e))?;
        Ok((file, path))
    }

    /// Moves the finished output to `out`: replaces a file, fills an empty directory, refuses
    /// a non-empty directory and a symbolic link. The staging directory is removed on drop.
    pub(crate) fn finish(self, out: &Path) -> Result<()> {
        let content = self.content();
        match std::fs::symlink_metadata(out) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(out, e)),
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::invalid(
                    out,
                    "is a symbolic link; choose another output path",
                ));
            }
            Ok(m) if m.is_dir() => {
                let empty = std::fs::read_dir(out)
                    .map_err(|e| Error::io(out, e))?
                    .next()
                    .is_none();
                if !empty || content.is_file() {
                    return Err(Error::invalid(
                        out,
                        "is a non-empty directory (or a directory where a file is due); choose another output path",
                    ));
                }
                std::fs::remove_dir(out).map_err(|e| Error::io(out, e))?;
            }
            Ok(_) => {}
        }
        // rename(2) replaces the last component of `out` itself, never what a link there names.
        std::fs::rename(&content, out).map_err(|e| Error::io(out, e))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Does not follow symbolic links: only the staging tree itself goes.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn escape(model: &str, rel: &str, detail: &str) -> Error {
    StorageError::corrupt(format!("model {model:?} file {rel:?}"), detail).into()
}

/// Creates a directory readable by its owner only; fails if anything exists at `path`.
fn private_dir(path: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

/// Creates a file that must not exist: `O_CREAT | O_EXCL`, which fails on a symbolic link
/// rather than follow it.
fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_accepts_plain_relative_paths() {
        for ok in [
            "model.safetensors",
            "1_Pooling/config.json",
            "a/b/c/d.txt",
            ".gitattributes",
            "..hidden",
            "a/...",
            "dir.with.dots/f",
            "ünïcode/名前.json",
            "c/d:e",
        ] {
            assert_eq!(validate_stored_path(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn the_rule_refuses_every_way_out() {
        use StoredPathError::*;
        let long = "a/".repeat(MAX_STORED_PATH_BYTES / 2) + "b";
        let cases: &[(&str, StoredPathError)] = &[
            ("", Empty),
            (&long, TooLong),
            ("/etc/passwd", Absolute),
            ("/", Absolute),
            ("C:/x", Drive),
            ("c:x", Drive),
            ("a\\..\\..\\x", Backslash),
            ("\\\\server\\share", Backslash),
            ("a\0b", Control),
            ("a\nb", Control),
            ("a\u{7f}", Control),
            ("a\u{9b}b", Control),
            ("a//b", EmptyComponent),
            ("a/", EmptyComponent),
            ("./a", Dot),
            ("a/./b", Dot),
            ("..", DotDot),
            ("../x", DotDot),
            ("a/../../x", DotDot),
            ("a/..", DotDot),
        ];
        for (path, why) in cases {
            assert_eq!(validate_stored_path(path), Err(*why), "{path:?}");
        }
    }

    #[test]
    fn a_row_breaking_the_rule_is_corrupt_naming_model_and_path() {
        let err = Error::from(check_row_path("m", "../x").unwrap_err());
        assert_eq!(err.kind(), crate::ErrorKind::Corrupt);
        let msg = err.to_string();
        assert!(msg.contains("\"m\"") && msg.contains("\"../x\""), "{msg}");
    }

    #[test]
    fn staging_creates_files_inside_and_moves_them_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let stage = Staging::beside(&out).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&stage.dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "staging is private");
        }
        stage.create_root_dir().unwrap();
        let (mut f, _) = stage.create_file_under("m", "a/b/c.txt").unwrap();
        std::io::Write::write_all(&mut f, b"hi").unwrap();
        assert!(stage.create_file_under("m", "a/b/c.txt").is_err(), "exists");
        assert!(stage.create_file_under("m", "a/../../x").is_err());
        assert!(stage.create_file_under("m", "a/b/c.txt/d").is_err());
        let staged = stage.dir.clone();
        stage.finish(&out).unwrap();
        assert_eq!(std::fs::read(out.join("a/b/c.txt")).unwrap(), b"hi");
        assert!(!staged.exists(), "staging directory removed");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn planted_links_are_neither_followed_nor_replaced_by_output() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let out = dir.path().join("out.safetensors");
        std::os::unix::fs::symlink(&victim, &out).unwrap();
        let stage = Staging::beside(&out).unwrap();
        let (mut f, _) = stage.create_file().unwrap();
        std::io::Write::write_all(&mut f, b"new").unwrap();
        let err = stage.finish(&out).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidInput, "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");

        // A link planted inside the output tree (a parent, or the file itself) is refused.
        let out = dir.path().join("tree");
        let stage = Staging::beside(&out).unwrap();
        let root = stage.create_root_dir().unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("up")).unwrap();
        std::os::unix::fs::symlink(&victim, root.join("leaf")).unwrap();
        assert!(stage.create_file_under("m", "up/victim").is_err());
        assert!(stage.create_file_under("m", "leaf").is_err());
        drop(stage);
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(dir.path().exists());
    }
}
