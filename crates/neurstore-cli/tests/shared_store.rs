//! Invariant: every command that only reads works on a store the user can read but not write,
//! and leaves it exactly as it was (no file created, none modified); files a writer creates
//! take the store directory's group and permission bits, so a group can share a store.
//!
//! The read-only check needs a second, unprivileged user: run as root (CI does), it creates
//! `nsreader` when missing and runs the read commands as that user; run as anyone else, it says
//! it skipped.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::safetensors;

const READER: &str = "nsreader";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Every path under `dir` with its length and modification time.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, i64, i64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.push((p, m.len(), m.mtime(), m.mtime_nsec()));
        }
    }
    out.sort();
    out
}

/// The unprivileged user, created when missing. `None` when that is not possible here.
fn reader_user() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").arg(flag).arg(READER).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    if id("-u").is_none() {
        let made = Command::new("useradd")
            .args(["-M", "-r", "-s", "/usr/sbin/nologin", READER])
            .status()
            .ok()?;
        if !made.success() {
            return None;
        }
    }
    Some((id("-u")?, id("-g")?))
}

/// Runs the binary as the unprivileged user.
fn as_reader(bin: &Path, store: &Path, args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", READER, "--"])
        .arg(bin)
        .env_remove("NEURSTORE_DIR")
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn read_commands_work_on_a_store_the_user_cannot_write() {
    if !is_root() {
        eprintln!("skipped: the read-only check runs as root, to act as a second user");
        return;
    }
    let Some((uid, gid)) = reader_user() else {
        eprintln!("skipped: could not create the user {READER} (useradd failed)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The binary where the reader can run it.
    let bin = dir.path().join("neurstore");
    std::fs::copy(env!("CARGO_BIN_EXE_neurstore"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();

    let store = dir.path().join("store");
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let weights: Vec<f32> = (0..4096).map(|i| (i as f32 * 0.37).sin()).collect();
    std::fs::write(
        model.join("model.safetensors"),
        safetensors(&[("w", &weights), ("b", &[1.0, 2.0])]),
    )
    .unwrap();
    std::fs::write(model.join("config.json"), b"{\"hidden_size\": 8}").unwrap();
    let root = |args: &[&str]| {
        let out = Command::new(&bin)
            .env_remove("NEURSTORE_DIR")
            .arg("--store")
            .arg(&store)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    root(&["init"]);
    root(&["put", "m", model.to_str().unwrap()]);
    root(&[
        "put",
        "q",
        model.to_str().unwrap(),
        "--tolerance",
        "1e-3",
        "--base",
        "none",
    ]);
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = snapshot(&store);
    assert!(
        before.iter().all(|(p, ..)| {
            let m = std::fs::metadata(p).unwrap();
            m.uid() == 0 && m.mode() & 0o022 == 0
        }),
        "the store must be root's and not writable by others: {before:?}"
    );

    let out_dir = dir.path().join("reader-out");
    std::fs::create_dir(&out_dir).unwrap();
    std::os::unix::fs::chown(&out_dir, Some(uid), Some(gid)).unwrap();
    let got = out_dir.join("m");
    let commands: Vec<Vec<&str>> = vec![
        vec!["ls"],
        vec!["ls", "--json"],
        vec!["info", "m"],
        vec!["info", "q", "--json"],
        vec!["stats"],
        vec!["verify"],
        vec!["get", "m", "-o", got.to_str().unwrap()],
        vec!["put", "dry", model.to_str().unwrap(), "--dry-run"],
    ];
    for args in &commands {
        let out = as_reader(&bin, &store, args);
        assert!(
            out.status.success(),
            "as {READER}: {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        std::fs::read(got.join("model.safetensors")).unwrap(),
        std::fs::read(model.join("model.safetensors")).unwrap()
    );
    eprintln!("note: embed is covered as a reader in tests/embed.rs; Python load in tests/python");
    // A write is refused in one sentence that says why.
    let out = as_reader(&bin, &store, &["rm", "m"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("ermission denied"), "{stderr}");
    assert_eq!(
        snapshot(&store),
        before,
        "reading as {READER} changed the store"
    );
}

#[test]
fn new_store_files_take_the_directory_group_and_mode() {
    if !is_root() {
        eprintln!("skipped: changing a file's group to one of the test's choice needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    // A group other than root's own: `users` (gid 100) exists on Debian-like systems.
    let group = 100;
    std::os::unix::fs::chown(&store, None, Some(group)).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o775)).unwrap();
    let model = dir.path().join("m.safetensors");
    std::fs::write(&model, safetensors(&[("w", &[1.0, 2.0, 3.0])])).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_neurstore"))
            .env_remove("NEURSTORE_DIR")
            .arg("--store")
            .arg(&store)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["init"]);
    run(&["put", "m", model.to_str().unwrap()]);
    run(&["gc"]);
    let files = snapshot(&store);
    assert!(files.iter().any(|(p, ..)| p.ends_with("LOCK")));
    assert!(
        files
            .iter()
            .any(|(p, ..)| p.extension().is_some_and(|e| e == "pack"))
    );
    for (path, ..) in files {
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(m.gid(), group, "{}", path.display());
        let want = if m.is_dir() { 0o775 } else { 0o664 };
        assert_eq!(m.mode() & 0o777, want, "{}", path.display());
    }
}
