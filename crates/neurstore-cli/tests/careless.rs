//! Invariant: a careless or hostile input, option or output path is refused with one sentence,
//! a non-zero status and nothing written; a closed pipe ends a command quietly with status 0;
//! what a model holds is printed escaped, never as terminal control sequences.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::safetensors;
use serde_json::Value;

struct Cli {
    dir: tempfile::TempDir,
    store: PathBuf,
}

impl Cli {
    /// A fresh store, initialized.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let cli = Cli { dir, store };
        cli.ok(&["init"]);
        cli
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_neurstore"));
        cmd.env_remove("NEURSTORE_DIR")
            .env("RUST_BACKTRACE", "1")
            .arg("--store")
            .arg(&self.store)
            .args(args);
        cmd
    }

    fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&self.ok(&args)).unwrap()
    }

    /// A command that must fail with one "error:" line and write nothing to the store.
    fn refused(&self, args: &[&str]) -> String {
        let before = snapshot(&self.store);
        let out = self.output(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: exit status");
        let stderr = String::from_utf8(out.stderr).unwrap();
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr:?}");
        assert!(lines[0].starts_with("error: "), "{args:?}: {stderr:?}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr:?}");
        assert_eq!(snapshot(&self.store), before, "{args:?} changed the store");
        lines[0].to_string()
    }
}

/// Every file of a directory tree with its length and modification time; the writer lock's
/// pid file is left out (a writer rewrites it on opening, before it checks its input).
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().is_some_and(|n| n == "LOCK") {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.push((p, m.len(), m.modified().unwrap()));
        }
    }
    out.sort();
    out
}

fn model_file(cli: &Cli, name: &str, values: &[f32]) -> PathBuf {
    let path = cli.path(name);
    std::fs::write(&path, safetensors(&[("w", values)])).unwrap();
    path
}

#[test]
fn tolerances_without_meaning_are_refused() {
    let cli = Cli::new();
    let m = model_file(&cli, "m.safetensors", &[0.5, -0.25, 0.125, 1.0]);
    let m = m.to_str().unwrap();
    for (flag, value, needle) in [
        ("--tolerance", "1e300", "largest magnitude"),
        ("--tolerance", "1.0", "largest magnitude"),
        ("--tolerance", "inf", "positive finite"),
        ("--tolerance", "NaN", "positive finite"),
        ("--tolerance", "0", "positive finite"),
        ("--rel-tolerance", "2", "between 0 and 1"),
        ("--rel-tolerance", "1", "between 0 and 1"),
        ("--rel-tolerance", "-0.1", "between 0 and 1"),
    ] {
        let option = format!("{flag}={value}");
        let line = cli.refused(&["put", "m", m, &option]);
        assert!(line.contains(needle), "{flag} {value}: {line}");
        // A dry run refuses it the same way.
        let line = cli.refused(&["put", "m", m, &option, "--dry-run"]);
        assert!(line.contains(needle), "{flag} {value}: {line}");
    }
    assert!(cli.json(&["ls"]).as_array().unwrap().is_empty());
    // --force accepts a tolerance past every magnitude: the tensor becomes a constant.
    let put = cli.json(&["put", "m", m, "--tolerance", "1e300", "--force"]);
    assert!(put["max_error"].as_f64().unwrap() <= 1.0, "{put}");
}

#[test]
fn too_many_threads_are_clamped_with_a_note() {
    let cli = Cli::new();
    let out = cli.output(&["--threads", "100000", "ls"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("note: --threads 100000 is more than"),
        "{stderr}"
    );
    cli.refused(&["--threads", "0", "ls"]);
}

/// A model whose `info` prints far more than a pipe buffer holds.
fn big_model(cli: &Cli) -> PathBuf {
    let names: Vec<String> = (0..3000)
        .map(|i| format!("layer.{i}.a.long.tensor.name"))
        .collect();
    let values = [1.0f32; 2];
    let tensors: Vec<(&str, &[f32])> = names.iter().map(|n| (n.as_str(), &values[..])).collect();
    let path = cli.path("big.safetensors");
    std::fs::write(&path, safetensors(&tensors)).unwrap();
    path
}

#[test]
fn a_closed_pipe_ends_every_command_quietly() {
    let cli = Cli::new();
    let big = big_model(&cli);
    cli.ok(&["put", "big", big.to_str().unwrap()]);
    for args in [
        &["info", "big"][..],
        &["info", "big", "--json"],
        &["put", "again", big.to_str().unwrap(), "--dry-run"],
    ] {
        let mut child = cli
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before reading anything (like `| head -0`).
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn names_paths_and_metadata_print_escaped_and_stay_verbatim_in_json() {
    let cli = Cli::new();
    let dir = cli.path("model");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors(&[("w", &[1.0, 2.0])]),
    )
    .unwrap();
    // A file whose name holds escapes cannot be stored (the stored-path rule); the error
    // names it escaped, and the store is unchanged.
    let evil = "notes\u{1b}]0;pwned\u{7}\u{1b}[2J.txt";
    std::fs::write(dir.join(evil), b"hello").unwrap();
    let line = cli.refused(&["put", "m", dir.to_str().unwrap()]);
    assert!(
        !line.contains('\u{1b}') && !line.contains('\u{7}'),
        "{line:?}"
    );
    assert!(
        line.contains("notes\\x1b]0;pwned\\x07\\x1b[2J.txt"),
        "{line}"
    );
    std::fs::remove_file(dir.join(evil)).unwrap();
    // Metadata holding escapes is printed escaped, and kept verbatim in JSON.
    cli.ok(&[
        "put",
        "m",
        dir.to_str().unwrap(),
        "--meta",
        "k=\u{1b}[31mred",
    ]);
    let text = cli.ok(&["info", "m"]);
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
    assert!(text.contains(r#"\u001b[31mred"#), "{text}");
    let json = cli.json(&["info", "m"]);
    assert_eq!(json["metadata"]["k"], "\u{1b}[31mred");
    // A tensor name holding escapes is refused on import.
    let header = r#"{"a\u001b[2J":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&[0; 4]);
    std::fs::write(cli.path("esc.safetensors"), file).unwrap();
    let line = cli.refused(&["put", "e", cli.path("esc.safetensors").to_str().unwrap()]);
    assert!(
        line.contains("control character") && !line.contains('\u{1b}'),
        "{line}"
    );
}

#[test]
fn duplicate_fields_and_unaddressable_shapes_are_refused() {
    let cli = Cli::new();
    for (header, len, needle) in [
        (
            r#"{"w":{"dtype":"F32","shape":[1],"shape":[1],"data_offsets":[0,4]}}"#,
            4,
            "duplicate key",
        ),
        (
            r#"{"__metadata__":{"a":"1","a":"2"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            4,
            "duplicate key",
        ),
        (
            r#"{"w":{"dtype":"U8","shape":[0,9223372036854775808],"data_offsets":[0,0]}}"#,
            0,
            "addressable",
        ),
    ] {
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header.as_bytes());
        file.extend(std::iter::repeat_n(0u8, len));
        let path = cli.path("bad.safetensors");
        std::fs::write(&path, file).unwrap();
        let line = cli.refused(&["put", "bad", path.to_str().unwrap()]);
        assert!(line.contains(needle), "{header}: {line}");
    }
}

#[test]
fn get_never_replaces_an_output_silently() {
    let cli = Cli::new();
    let m = model_file(&cli, "m.safetensors", &[1.0, 2.0]);
    cli.ok(&["put", "m", m.to_str().unwrap()]);
    let out = cli.path("out.safetensors");
    std::fs::write(&out, b"precious").unwrap();
    let line = cli.refused(&["get", "m", "-o", out.to_str().unwrap()]);
    assert!(
        line.contains("already exists") && line.contains("--force"),
        "{line}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    cli.ok(&["get", "m", "-o", out.to_str().unwrap(), "--force"]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&m).unwrap());
    let full = cli.path("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep"), b"x").unwrap();
    let line = cli.refused(&["get", "m", "-o", full.to_str().unwrap(), "--force"]);
    assert!(line.contains("non-empty directory"), "{line}");
}

#[test]
fn reports_count_every_file_and_say_fully_deduplicated() {
    let cli = Cli::new();
    let dir = cli.path("model");
    std::fs::create_dir(&dir).unwrap();
    let st = safetensors(&[("w", &[1.0, 2.0, 3.0, 4.0])]);
    std::fs::write(dir.join("model.safetensors"), &st).unwrap();
    std::fs::write(dir.join("tokenizer.json"), vec![b'x'; 1000]).unwrap();
    let put = cli.json(&["put", "a", dir.to_str().unwrap()]);
    let field = |v: &Value, f: &str| v[f].as_u64().unwrap_or_else(|| panic!("{f}: {v}"));
    assert_eq!(field(&put, "raw_bytes"), st.len() as u64 + 1000);
    assert_eq!(field(&put, "tensor_bytes"), 16);
    assert_eq!(field(&put, "other_bytes"), st.len() as u64 + 1000 - 16);
    for listing in [
        &cli.json(&["ls"])[0],
        &cli.json(&["info", "a"]),
        &cli.json(&["stats"]),
    ] {
        assert_eq!(
            field(listing, "raw_bytes"),
            st.len() as u64 + 1000,
            "{listing}"
        );
        assert_eq!(field(listing, "tensor_bytes"), 16, "{listing}");
    }
    let again = cli.ok(&["put", "b", dir.to_str().unwrap()]);
    assert!(
        again.contains("fully deduplicated") && !again.contains("0.00x"),
        "{again}"
    );
    assert_eq!(
        cli.json(&["put", "c", dir.to_str().unwrap()])["fully_deduplicated"],
        true
    );
}

#[test]
fn times_read_as_local_dates_and_rfc3339_in_json() {
    let cli = Cli::new();
    let m = model_file(&cli, "m.safetensors", &[1.0]);
    cli.ok(&["put", "m", m.to_str().unwrap()]);
    let ls = cli.ok(&["ls"]);
    assert!(ls.contains("(just now)"), "{ls}");
    let line = ls.lines().nth(1).unwrap();
    assert!(
        line.split_whitespace()
            .any(|w| w.len() == 10 && w.as_bytes()[4] == b'-'),
        "{ls}"
    );
    let created = cli.json(&["ls"])[0]["created"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        created.len() == 20 && created.ends_with('Z') && created.as_bytes()[10] == b'T',
        "{created}"
    );
    assert!(cli.ok(&["info", "m"]).contains("(just now)"));
}

#[test]
fn catalog_errors_name_the_store_and_the_action_in_words() {
    let cli = Cli::new();
    std::fs::write(cli.store.join("catalog.db"), vec![7u8; 8192]).unwrap();
    let out = cli.output(&["ls"]);
    assert_eq!(out.status.code(), Some(1));
    let line = String::from_utf8(out.stderr).unwrap();
    assert!(
        line.contains(&format!("the store at {}", cli.store.display())),
        "{line}"
    );
    assert!(
        line.contains("damaged or is not a NeurStore catalog"),
        "{line}"
    );
    assert!(
        !line.contains("code") && !line.contains("file is not a database"),
        "{line}"
    );
}

#[test]
fn a_locked_store_names_its_holder_and_wait_waits() {
    let cli = Cli::new();
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(cli.store.join("LOCK"))
        .or_else(|_| std::fs::File::create(cli.store.join("LOCK")))
        .unwrap();
    lock.lock().unwrap();
    std::fs::write(cli.store.join("LOCK"), std::process::id().to_string()).unwrap();
    let line = cli.refused(&["rm", "m"]);
    assert!(
        line.contains(&format!("pid {}", std::process::id())),
        "{line}"
    );
    assert!(line.contains("--wait"), "{line}");
    let started = std::time::Instant::now();
    let line = cli.refused(&["--wait=0.3", "rm", "m"]);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    assert!(line.contains("waited"), "{line}");
    // Released while a waiting command waits: it goes on (and finds no such model).
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(lock);
    });
    let out = cli.output(&["--wait", "rm", "m"]);
    releaser.join().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("no model named"), "{stderr}");
}

#[test]
fn symlinks_leaving_the_model_directory_are_refused() {
    let cli = Cli::new();
    let outside = cli.path("secret.txt");
    std::fs::write(&outside, b"not yours").unwrap();
    let dir = cli.path("model");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("model.safetensors"), safetensors(&[("w", &[1.0])])).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("leak.txt")).unwrap();
    let line = cli.refused(&["put", "m", dir.to_str().unwrap()]);
    assert!(
        line.contains("leak.txt") && line.contains("--follow-symlinks"),
        "{line}"
    );
    cli.ok(&["put", "m", dir.to_str().unwrap(), "--follow-symlinks"]);

    // Links that stay inside are followed.
    std::fs::remove_file(dir.join("leak.txt")).unwrap();
    std::fs::write(dir.join("real.json"), b"{}").unwrap();
    std::os::unix::fs::symlink("real.json", dir.join("alias.json")).unwrap();
    let info = cli.json(&["put", "inside", dir.to_str().unwrap()]);
    assert_eq!(info["files"], 3);

    // A Hugging Face cache snapshot links into its repository's blobs.
    let repo = cli.path("hub/models--org--tiny");
    let snap = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::write(repo.join("blobs/aaaa"), safetensors(&[("w", &[3.0])])).unwrap();
    std::fs::write(repo.join("blobs/bbbb"), b"{}").unwrap();
    std::os::unix::fs::symlink("../../blobs/aaaa", snap.join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink("../../blobs/bbbb", snap.join("config.json")).unwrap();
    cli.ok(&["put", "hf", snap.to_str().unwrap()]);
}

#[test]
fn special_files_are_refused_without_blocking() {
    let cli = Cli::new();
    let dir = cli.path("model");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("model.safetensors"), safetensors(&[("w", &[1.0])])).unwrap();
    let fifo = dir.join("pipe");
    let made = Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped: mkfifo is not available");
        return;
    }
    let line = cli.refused(&["put", "m", dir.to_str().unwrap()]);
    assert!(line.contains("is a fifo"), "{line}");
    let line = cli.refused(&["put", "m", fifo.to_str().unwrap()]);
    assert!(line.contains("is a fifo"), "{line}");
}
