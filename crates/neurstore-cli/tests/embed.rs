//! `neurstore embed` end to end on a tiny BERT directory: its own tokenizer.json and
//! config.json from the store, texts from flags, a file and stdin, compressed against dense,
//! and clear errors.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use common::bert::{CONFIG, H, TOKENIZER, write_model};

fn ns(store: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_neurstore"))
        .env_remove("NEURSTORE_DIR")
        .arg("--store")
        .arg(store)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or("").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok_json(store: &Path, args: &[&str], stdin: Option<&str>) -> Value {
    let out = ns(store, args, stdin);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn vectors(v: &Value) -> Vec<Vec<f64>> {
    v["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn embeds_from_compressed_weights_like_the_dense_model() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    write_model(&dir.path().join("bert"), true);
    let bert = dir.path().join("bert");
    let bert = bert.to_str().unwrap();
    assert!(ns(&store, &["init"], None).status.success());
    assert!(ns(&store, &["put", "exact", bert], None).status.success());
    let put = ns(
        &store,
        &["put", "q", bert, "--tolerance", "1e-3", "--base", "none"],
        None,
    );
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );

    let texts = ["--text", "Hello world.", "--text", "the models store"];
    let q = ok_json(
        &store,
        &[&["embed", "q", "--json"][..], &texts[..]].concat(),
        None,
    );
    let d = ok_json(
        &store,
        &[&["embed", "exact", "--json", "--dense"][..], &texts[..]].concat(),
        None,
    );
    assert_eq!(q["weights"], "compressed");
    assert_eq!(q["dimensions"], H);
    assert_eq!(q["normalized"], true);
    let (qv, dv) = (vectors(&q), vectors(&d));
    assert_eq!(qv.len(), 2);
    for (a, b) in qv.iter().zip(&dv) {
        assert_eq!(a.len(), H);
        let norm: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        let cos: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        assert!(cos > 0.999, "cosine {cos}");
    }
    // Different texts give different embeddings.
    assert!(qv[0].iter().zip(&qv[1]).any(|(x, y)| (x - y).abs() > 1e-3));

    // A file of lines and stdin give the same vectors as --text; a blank line is embedded
    // too, so output line N belongs to input line N.
    let lines = dir.path().join("lines.txt");
    std::fs::write(&lines, "Hello world.\n\nthe models store\n").unwrap();
    let from_file = ok_json(
        &store,
        &["embed", "q", "--json", "--file", lines.to_str().unwrap()],
        None,
    );
    let fv = vectors(&from_file);
    assert_eq!(fv.len(), 3);
    // (Within float noise: the blank line changes the batch's padding.)
    for (got, want) in [(&fv[0], &qv[0]), (&fv[2], &qv[1])] {
        assert!(
            got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5),
            "{got:?} {want:?}"
        );
    }
    assert_eq!(from_file["embeddings"][1]["text"], "");
    let out = ns(
        &store,
        &["embed", "q", "--file", lines.to_str().unwrap()],
        None,
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 3);
    let from_stdin = ok_json(
        &store,
        &["embed", "q", "--json", "--file", "-"],
        Some("Hello world.\n"),
    );
    assert_eq!(vectors(&from_stdin)[0], qv[0]);

    // Text output: one line of H numbers per text.
    let out = ns(&store, &["embed", "q", "--text", "hello"], None);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert_eq!(text.split_whitespace().count(), H);
}

#[test]
fn missing_pieces_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    write_model(&dir.path().join("bert"), false);
    let file = dir.path().join("bert/model.safetensors");
    assert!(ns(&store, &["init"], None).status.success());
    assert!(
        ns(&store, &["put", "bare", file.to_str().unwrap()], None)
            .status
            .success()
    );
    let err = |args: &[&str]| {
        let out = ns(&store, args, None);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(err(&["embed", "bare"]).contains("nothing to embed"));
    assert!(err(&["embed", "bare", "--text", "hi"]).contains("--tokenizer"));
    assert!(err(&["embed", "nope", "--text", "hi"]).contains("nope"));
    // With a tokenizer given, the bare file runs on the default (MiniLM) config: wrong shapes.
    let tok = dir.path().join("tokenizer.json");
    std::fs::write(&tok, TOKENIZER).unwrap();
    let e = err(&[
        "embed",
        "bare",
        "--text",
        "hi",
        "--tokenizer",
        tok.to_str().unwrap(),
    ]);
    assert!(e.contains("shape"), "{e}");
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, CONFIG).unwrap();
    let out = ns(
        &store,
        &[
            "embed",
            "bare",
            "--text",
            "hi",
            "--tokenizer",
            tok.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_closed_pipe_ends_embed_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    write_model(&dir.path().join("bert"), true);
    assert!(ns(&store, &["init"], None).status.success());
    let bert = dir.path().join("bert");
    assert!(
        ns(&store, &["put", "m", bert.to_str().unwrap()], None)
            .status
            .success()
    );
    // Far more output than a pipe holds, to a reader that has gone (`| head -1` after line 1).
    let texts = "hello world\n".repeat(8000);
    let mut child = Command::new(env!("CARGO_BIN_EXE_neurstore"))
        .env_remove("NEURSTORE_DIR")
        .arg("--store")
        .arg(&store)
        .args(["embed", "m", "--file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child
        .stdin
        .take()
        .unwrap()
        .write_all(texts.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn embed_runs_as_a_user_who_cannot_write_the_store() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the read-only check runs as root, to act as a second user");
        return;
    }
    let has_reader = Command::new("id")
        .arg("nsreader")
        .output()
        .is_ok_and(|o| o.status.success())
        || Command::new("useradd")
            .args(["-M", "-r", "-s", "/usr/sbin/nologin", "nsreader"])
            .status()
            .is_ok_and(|s| s.success());
    if !has_reader {
        eprintln!("skipped: could not create the user nsreader");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("neurstore");
    std::fs::copy(env!("CARGO_BIN_EXE_neurstore"), &bin).unwrap();
    let store = dir.path().join("store");
    write_model(&dir.path().join("bert"), true);
    assert!(ns(&store, &["init"], None).status.success());
    let bert = dir.path().join("bert");
    assert!(
        ns(&store, &["put", "m", bert.to_str().unwrap()], None)
            .status
            .success()
    );
    let out = Command::new("runuser")
        .args(["-u", "nsreader", "--"])
        .arg(&bin)
        .arg("--store")
        .arg(&store)
        .args(["embed", "m", "--text", "hello world", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(vectors(&v).len(), 1);
}
