//! Invariant: the `neurstore` binary round-trips models through every command, its JSON output carries the documented fields, and a user error exits non-zero with one "error:" line and no panic.

mod common;

use common::{pack_bytes_on_disk, safetensors};
use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

/// The binary, with no store selected from the environment.
fn neurstore() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_neurstore"));
    cmd.env_remove("NEURSTORE_DIR").env("RUST_BACKTRACE", "1");
    cmd
}

struct Cli {
    dir: tempfile::TempDir,
    store: PathBuf,
}

impl Cli {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        Cli { dir, store }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn output(&self, args: &[&str]) -> Output {
        neurstore()
            .arg("--store")
            .arg(&self.store)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "neurstore {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command with `--json` that must succeed; returns the parsed output.
    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let stdout = self.ok(&args);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
    }

    /// Runs a command that must fail as a user error; returns its one error line.
    fn user_error(&self, args: &[&str]) -> String {
        expect_user_error(self.output(args), args)
    }
}

fn expect_user_error(out: Output, what: &[&str]) -> String {
    assert!(!out.status.success(), "{what:?} succeeded");
    assert_eq!(out.status.code(), Some(1), "{what:?}: exit status");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what:?}: stderr {stderr:?}");
    assert!(lines[0].starts_with("error: "), "{what:?}: {stderr:?}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{what:?}: {stderr:?}"
    );
    lines[0].to_string()
}

fn u64_field(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer field {field:?} in {v}"))
}

#[test]
fn commands_round_trip_and_report_json() {
    let cli = Cli::new();
    let weights: Vec<f32> = (0..4096).map(|i| (i % 17) as f32 * 0.25).collect();
    let bias = [1.0f32, -0.0, f32::NAN, f32::INFINITY];
    let model_a = safetensors(&[("w", &weights), ("b", &bias)]);
    let model_b = safetensors(&[("w", &weights), ("b2", &[2.0f32; 4])]);
    let raw_a = ((weights.len() + bias.len()) * 4) as u64;
    std::fs::write(cli.path("a.safetensors"), &model_a).unwrap();
    std::fs::write(cli.path("b.safetensors"), &model_b).unwrap();
    let a = cli.path("a.safetensors");
    let b = cli.path("b.safetensors");

    assert!(cli.ok(&["init"]).contains("created"));
    let put = cli.json(&["put", "a", a.to_str().unwrap(), "--meta", "source=test"]);
    assert_eq!(put["name"], "a");
    assert_eq!(u64_field(&put, "tensors"), 2);
    // raw_bytes counts every byte of the file; tensor_bytes the tensor data alone.
    assert_eq!(u64_field(&put, "raw_bytes"), model_a.len() as u64);
    assert_eq!(u64_field(&put, "tensor_bytes"), raw_a);
    let put = cli.json(&["put", "b", b.to_str().unwrap()]);
    assert_eq!(u64_field(&put, "deduplicated_objects"), 1); // the shared "w"
    assert!(
        cli.ok(&["put", "c", a.to_str().unwrap()])
            .contains("stored \"c\"")
    );

    let ls = cli.ok(&["ls"]);
    for name in ["a", "b", "c"] {
        assert!(
            ls.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{ls}"
        );
    }
    let ls = cli.json(&["ls"]);
    let names: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);

    let info = cli.json(&["info", "a"]);
    assert_eq!(u64_field(&info, "raw_bytes"), model_a.len() as u64);
    assert_eq!(u64_field(&info, "tensor_bytes"), raw_a);
    assert!(u64_field(&info, "stored_bytes") > 0);
    assert_eq!(info["metadata"]["source"], "test");
    assert_eq!(info["tensors"].as_array().unwrap().len(), 2);
    assert!(cli.ok(&["info", "a"]).contains("grouped-zstd"));

    let stats = cli.json(&["stats"]);
    assert_eq!(u64_field(&stats, "models"), 3);
    assert_eq!(u64_field(&stats, "tensors"), 6);
    assert_eq!(u64_field(&stats, "unique_tensors"), 3); // w, b, b2
    assert_eq!(
        u64_field(&stats, "tensor_bytes"),
        2 * raw_a + (weights.len() as u64 + 4) * 4
    );
    assert_eq!(
        u64_field(&stats, "raw_bytes"),
        2 * model_a.len() as u64 + model_b.len() as u64
    );
    assert!(u64_field(&stats, "stored_bytes") >= u64_field(&stats, "pack_bytes"));
    assert!(cli.ok(&["stats"]).contains("unique"));

    for (name, bytes) in [("a", &model_a), ("b", &model_b), ("c", &model_a)] {
        let out = cli.path(&format!("{name}.out"));
        let got = cli.json(&["get", name, "-o", out.to_str().unwrap()]);
        assert_eq!(u64_field(&got, "bytes_written"), bytes.len() as u64);
        assert!(std::fs::read(&out).unwrap() == *bytes, "{name} differs");
    }
    assert!(cli.ok(&["verify"]).contains("OK"));
    let verify = cli.json(&["verify"]);
    assert_eq!(verify["problems"].as_array().unwrap().len(), 0);
    assert_eq!(u64_field(&verify, "models"), 3);

    let rm = cli.json(&["rm", "a"]);
    assert_eq!(u64_field(&rm, "objects_freed"), 0); // "c" holds the same objects
    cli.ok(&["rm", "b"]);
    let names = cli.json(&["ls"]);
    assert_eq!(names.as_array().unwrap().len(), 1);
    let gc = cli.json(&["gc"]);
    assert!(u64_field(&gc, "reclaimed_bytes") > 0, "{gc}");
    let out = cli.path("c-after-gc.out");
    cli.ok(&["get", "c", "-o", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == model_a);

    cli.ok(&["rm", "c"]);
    cli.ok(&["gc"]);
    let stats = cli.json(&["stats"]);
    assert_eq!(u64_field(&stats, "models"), 0);
    // What stays is the removals' tombstones, until their names are reused.
    assert!(u64_field(&stats, "pack_bytes") < 1024, "{stats}");
    assert_eq!(u64_field(&stats, "reclaimable_bytes"), 0);
    assert_eq!(
        pack_bytes_on_disk(&cli.store),
        u64_field(&stats, "pack_bytes")
    );
    assert!(cli.ok(&["ls"]).contains("no models"));
}

#[test]
fn user_errors_are_one_line() {
    let cli = Cli::new();
    // No store yet.
    let line = cli.user_error(&["ls"]);
    assert!(line.contains("no NeurStore store"), "{line}");
    cli.ok(&["init"]);
    let line = cli.user_error(&["init"]);
    assert!(line.contains("already exists"), "{line}");

    let bad = cli.path("bad.safetensors");
    std::fs::write(&bad, b"{}").unwrap();
    let line = cli.user_error(&["put", "m", bad.to_str().unwrap()]);
    assert!(
        line.contains("bad.safetensors") && line.contains("too short"),
        "{line}"
    );
    let line = cli.user_error(&["put", "m", cli.path("missing").to_str().unwrap()]);
    assert!(line.contains("missing"), "{line}");

    let good = cli.path("good.safetensors");
    std::fs::write(&good, safetensors(&[("x", &[1.0, 2.0])])).unwrap();
    let good = good.to_str().unwrap();
    let line = cli.user_error(&["put", "m", good, "--meta", "novalue"]);
    assert!(line.contains("KEY=VALUE"), "{line}");
    let line = cli.user_error(&["put", "a/b", good]);
    assert!(line.contains("invalid model name"), "{line}");
    cli.ok(&["put", "m", good]);
    let line = cli.user_error(&["put", "m", good]);
    assert!(line.contains("already exists"), "{line}");

    let out = cli.path("out.safetensors");
    for args in [
        vec!["get", "nope", "-o", out.to_str().unwrap()],
        vec!["info", "nope"],
        vec!["rm", "nope"],
    ] {
        let line = cli.user_error(&args);
        assert!(line.contains("\"nope\""), "{line}");
    }
    assert!(!out.exists());
    // After all those errors the store is intact.
    assert!(cli.ok(&["verify"]).contains("OK"));
    assert_eq!(cli.json(&["ls"]).as_array().unwrap().len(), 1);
}

#[test]
fn verify_exits_non_zero_on_damage() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    let noise: Vec<f32> = (0..2048u32)
        .map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761) & 0x3fff_ffff))
        .collect();
    let model = cli.path("m.safetensors");
    std::fs::write(&model, safetensors(&[("n", &noise)])).unwrap();
    cli.ok(&["put", "m", model.to_str().unwrap()]);
    let pack = std::fs::read_dir(cli.store.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pack"))
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let last = bytes.len() - 1; // the last byte of the last blob
    bytes[last] ^= 1;
    std::fs::write(&pack, bytes).unwrap();

    let out = cli.output(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("problem:"), "{stdout}");
    let line = cli.user_error(&["get", "m", "-o", cli.path("out").to_str().unwrap()]);
    assert!(line.contains("corrupt") && line.contains("\"m\""), "{line}");
}

#[test]
fn neurstore_dir_selects_the_store() {
    let cli = Cli::new();
    let env_store = cli.path("env-store");
    let run = |args: &[&str]| {
        neurstore()
            .env("NEURSTORE_DIR", &env_store)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(run(&["init"]).status.success());
    assert!(env_store.join("catalog.db").is_file());
    let model = cli.path("m.safetensors");
    std::fs::write(&model, safetensors(&[("x", &[1.0, 2.0])])).unwrap();
    assert!(run(&["put", "m", model.to_str().unwrap()]).status.success());
    let ls = run(&["ls", "--json"]);
    let models: Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(models[0]["name"], "m");

    // --store wins over the environment.
    cli.ok(&["init"]);
    let out = neurstore()
        .env("NEURSTORE_DIR", &env_store)
        .arg("--store")
        .arg(&cli.store)
        .args(["stats", "--json"])
        .output()
        .unwrap();
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(u64_field(&stats, "models"), 0);
    let stats: Value = serde_json::from_slice(&run(&["stats", "--json"]).stdout).unwrap();
    assert_eq!(u64_field(&stats, "models"), 1);
}
