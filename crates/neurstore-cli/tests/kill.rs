//! Invariant: a writer killed with SIGKILL in the middle of a put leaves the store at its last committed state, and the next writer reclaims every byte the killed one wrote.

mod common;

use common::pack_bytes_on_disk;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Tensors in the big file, and f32 elements in each (32 MiB each).
const BIG_TENSORS: usize = 8;
const BIG_ELEMENTS: usize = 8 << 20;

fn neurstore(store: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_neurstore"));
    cmd.env_remove("NEURSTORE_DIR").arg("--store").arg(store);
    cmd
}

fn run(store: &Path, args: &[&str]) -> Output {
    let out = neurstore(store).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "neurstore {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_json(store: &Path, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_slice(&run(store, &args).stdout).unwrap()
}

/// Writes a safetensors file of `tensors` F32 tensors of `elements` pseudo-random finite values.
fn write_model(path: &Path, tensors: usize, elements: usize, seed: u64) {
    let bytes_each = elements * 4;
    let entries: Vec<String> = (0..tensors)
        .map(|i| {
            format!(
                r#""layer.{i}.weight":{{"dtype":"F32","shape":[{elements}],"data_offsets":[{},{}]}}"#,
                i * bytes_each,
                (i + 1) * bytes_each
            )
        })
        .collect();
    let header = format!("{{{}}}", entries.join(","));
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    w.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    w.write_all(header.as_bytes()).unwrap();
    let mut x = seed | 1;
    let mut chunk = Vec::with_capacity(1 << 20);
    for _ in 0..tensors * elements / 2 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Two f32 per step; clearing bit 30 of each keeps the exponent small, so every value
        // is finite and the exponent bytes compress a little, as real weights do.
        chunk.extend_from_slice(&(x & 0xbfff_ffff_bfff_ffff).to_le_bytes());
        if chunk.len() >= 1 << 20 {
            w.write_all(&chunk).unwrap();
            chunk.clear();
        }
    }
    w.write_all(&chunk).unwrap();
    w.flush().unwrap();
}

#[test]
fn killed_put_leaves_last_committed_state() {
    let dir = tempfile::tempdir().unwrap();
    let store: PathBuf = dir.path().join("store");
    run(&store, &["init"]);
    let small = dir.path().join("small.safetensors");
    write_model(&small, 3, 4096, 1);
    run(&store, &["put", "small", small.to_str().unwrap()]);
    let baseline = pack_bytes_on_disk(&store);
    assert!(baseline > 0);

    let big = dir.path().join("big.safetensors");
    write_model(&big, BIG_TENSORS, BIG_ELEMENTS, 2);
    let mut child = neurstore(&store)
        .args(["put", "big", big.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill as soon as the put has written past the committed state, long before it can
    // commit (it still has most of the file to encode and write).
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the put ended ({status}) before it wrote anything seen here; the test must kill it mid-write"
            );
        }
        if pack_bytes_on_disk(&store) > baseline {
            break;
        }
        assert!(Instant::now() < deadline, "the put wrote nothing in time");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "the put finished ({status}) before the kill; make the big file larger"
    );
    let partial = pack_bytes_on_disk(&store);
    assert!(partial > baseline);

    // Readers see the last committed state: no trace of "big".
    let models = run_json(&store, &["ls"]);
    let names: Vec<&str> = models
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["small"]);
    let verify = run_json(&store, &["verify"]);
    assert_eq!(verify["problems"].as_array().unwrap().len(), 0, "{verify}");
    let out = dir.path().join("small.out");
    run(&store, &["get", "small", "-o", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&small).unwrap());

    // The next writer cuts off exactly what the killed one wrote.
    let gc = run_json(&store, &["gc"]);
    assert_eq!(
        gc["recovered_partial_bytes"].as_u64(),
        Some(partial - baseline),
        "{gc}"
    );
    assert_eq!(pack_bytes_on_disk(&store), baseline);
    let stats = run_json(&store, &["stats"]);
    assert_eq!(stats["pack_bytes"].as_u64(), Some(baseline), "{stats}");
    assert_eq!(stats["reclaimable_bytes"].as_u64(), Some(0), "{stats}");

    // The store takes writes again, and a second gc finds nothing left over.
    let again = dir.path().join("again.safetensors");
    write_model(&again, 2, 1000, 3);
    run(&store, &["put", "again", again.to_str().unwrap()]);
    let gc = run_json(&store, &["gc"]);
    assert_eq!(gc["recovered_partial_bytes"].as_u64(), Some(0), "{gc}");
    let verify = run_json(&store, &["verify"]);
    assert_eq!(verify["problems"].as_array().unwrap().len(), 0, "{verify}");
    assert_eq!(u64_of(&verify, "models"), 2);
}

fn u64_of(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}
