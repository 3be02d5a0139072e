//! Importing a model directory through the public API: the input is split into a safetensors
//! shard and its `model.safetensors.index.json` (the first 2 bytes give the shard's length),
//! written to a directory and imported with a dry-run put into an empty store.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use neurstore::{NoProgress, PutOptions, Store};

struct Fixture {
    _dir: tempfile::TempDir,
    input: PathBuf,
    store: Store,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        Store::init(&root).unwrap();
        let store = Store::open(&root).unwrap();
        let input = dir.path().join("model");
        std::fs::create_dir(&input).unwrap();
        std::fs::write(input.join("config.json"), b"{}").unwrap();
        Fixture {
            _dir: dir,
            input,
            store,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let (shard, index) = rest.split_at((u16::from_le_bytes(*len) as usize).min(rest.len()));
    let f = fixture();
    std::fs::write(f.input.join("model.safetensors"), shard).unwrap();
    std::fs::write(f.input.join("model.safetensors.index.json"), index).unwrap();
    let options = PutOptions {
        dry_run: true,
        ..Default::default()
    };
    let _ = f.store.put("fuzzed", &f.input, &options, &NoProgress);
});
