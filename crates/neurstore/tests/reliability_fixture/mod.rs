//! The models the bit-flip, hostile-input and concurrency loops store and read back: a base, a
//! fine-tune stored losslessly (as deltas against the base), a fine-tune stored within
//! `TOLERANCE` (quantized against the base) and a model directory; how to write them as input
//! files, and how to check what `get` wrote or `load` returned against them.

// Each loop uses a different subset of these helpers.
#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod common;

pub use common::{Rng, elem_size, element_value, encode_element, is_float, safetensors_from};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use neurstore::{
    BaseChoice, DType, LoadedTensor, Mode, NoProgress, PutOptions, PutReport, Store, StoreOptions,
};
use neurstore_core::safetensors;

/// Absolute bound of the bounded fine-tune.
pub const TOLERANCE: f64 = 1e-3;

/// True when `NEURSTORE_FULL_RELIABILITY=1` asks for the full run instead of the CI sample.
pub fn full_run() -> bool {
    std::env::var("NEURSTORE_FULL_RELIABILITY").is_ok_and(|v| v == "1")
}

/// One tensor of a safetensors file.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

/// A file of a model.
#[derive(Clone, Debug)]
pub enum Content {
    Safetensors(Vec<Tensor>),
    Plain(Vec<u8>),
}

/// A model as given to `put`.
#[derive(Clone, Debug)]
pub struct Model {
    pub name: String,
    /// A directory model (else one safetensors file).
    pub directory: bool,
    /// Relative path and content of each file (one `NAME.safetensors` for a file model).
    pub files: Vec<(String, Content)>,
    pub mode: Mode,
}

/// A safetensors file holding `tensors` back to back, in order.
pub fn safetensors_bytes(tensors: &[Tensor]) -> Vec<u8> {
    safetensors_from(
        tensors
            .iter()
            .map(|t| (&t.name[..], t.dtype, &t.shape[..], &t.data[..])),
        None,
    )
}

/// A tensor of pseudo-random values: floats of standard deviation 0.05, integers 0..n jittered.
pub fn random_tensor(name: &str, dtype: DType, shape: &[u64], rng: &mut Rng) -> Tensor {
    let n: u64 = shape.iter().product();
    let data = if is_float(dtype) {
        (0..n)
            .flat_map(|_| encode_element(dtype, 0.05 * rng.normal()))
            .collect()
    } else {
        let size = elem_size(dtype);
        (0..n)
            .flat_map(|i| (i + rng.below(4)).to_le_bytes()[..size].to_vec())
            .collect()
    };
    Tensor {
        name: name.to_string(),
        dtype,
        shape: shape.to_vec(),
        data,
    }
}

/// Every float element of `base` moved by normal noise of standard deviation `scale`; integer
/// tensors unchanged (so they deduplicate).
pub fn fine_tune(base: &[Tensor], seed: u64, scale: f64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed ^ 0xF1_7E);
    base.iter()
        .map(|t| {
            if !is_float(t.dtype) {
                return t.clone();
            }
            let data = t
                .data
                .chunks_exact(elem_size(t.dtype))
                .flat_map(|b| {
                    encode_element(t.dtype, element_value(t.dtype, b) + scale * rng.normal())
                })
                .collect();
            Tensor { data, ..t.clone() }
        })
        .collect()
}

/// The layout of the base and its fine-tunes.
const LAYOUT: &[(&str, DType, &[u64])] = &[
    ("layers.0.weight", DType::F32, &[48, 64]),
    ("layers.0.bias", DType::F32, &[64]),
    ("embed.weight", DType::BF16, &[32, 32]),
    ("norm.scale", DType::F64, &[100]),
    ("position_ids", DType::I64, &[16]),
];

/// The base's tensors.
pub fn base_tensors(seed: u64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    LAYOUT
        .iter()
        .map(|(name, dtype, shape)| random_tensor(name, *dtype, shape, &mut rng))
        .collect()
}

impl Model {
    /// A one-file model.
    pub fn file(name: &str, tensors: Vec<Tensor>, mode: Mode) -> Model {
        Model {
            name: name.to_string(),
            directory: false,
            files: vec![(format!("{name}.safetensors"), Content::Safetensors(tensors))],
            mode,
        }
    }

    /// A Hugging Face style directory: two shards, their index, a config and a nested file.
    pub fn directory(name: &str, seed: u64) -> Model {
        let mut rng = Rng::new(seed);
        let shard1 = vec![
            random_tensor("encoder.a", DType::F32, &[32, 48], &mut rng),
            random_tensor("encoder.ids", DType::I32, &[8], &mut rng),
        ];
        let shard2 = vec![random_tensor("decoder.c", DType::F32, &[16, 16], &mut rng)];
        let index = format!(
            r#"{{"metadata":{{"seed":{seed}}},"weight_map":{{"encoder.a":"model-00001-of-00002.safetensors","encoder.ids":"model-00001-of-00002.safetensors","decoder.c":"model-00002-of-00002.safetensors"}}}}"#
        );
        Model {
            name: name.to_string(),
            directory: true,
            files: vec![
                (
                    "config.json".into(),
                    Content::Plain(format!(r#"{{"hidden_size": 48, "seed": {seed}}}"#).into()),
                ),
                (
                    "model-00001-of-00002.safetensors".into(),
                    Content::Safetensors(shard1),
                ),
                (
                    "model-00002-of-00002.safetensors".into(),
                    Content::Safetensors(shard2),
                ),
                (
                    "model.safetensors.index.json".into(),
                    Content::Plain(index.into()),
                ),
                (
                    "tokenizer/vocab.txt".into(),
                    Content::Plain(
                        (0..200)
                            .map(|i| format!("tok{}\n", i * seed % 997))
                            .collect::<String>()
                            .into(),
                    ),
                ),
            ],
            mode: Mode::Lossless,
        }
    }

    /// Every tensor, with the file it belongs to.
    pub fn tensors(&self) -> Vec<(&str, &Tensor)> {
        let mut out = Vec::new();
        for (path, content) in &self.files {
            if let Content::Safetensors(ts) = content {
                out.extend(ts.iter().map(|t| (path.as_str(), t)));
            }
        }
        out
    }

    /// Bytes of each file as written to disk.
    pub fn file_bytes(&self) -> Vec<(String, Vec<u8>)> {
        self.files
            .iter()
            .map(|(path, content)| {
                let bytes = match content {
                    Content::Safetensors(ts) => safetensors_bytes(ts),
                    Content::Plain(b) => b.clone(),
                };
                (path.clone(), bytes)
            })
            .collect()
    }

    /// Writes the model's input under `dir`; returns the path to give `put`.
    pub fn write_input(&self, dir: &Path) -> PathBuf {
        let files = self.file_bytes();
        if self.directory {
            let root = dir.join(format!("{}.input", self.name));
            for (path, bytes) in files {
                let p = root.join(path);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, bytes).unwrap();
            }
            root
        } else {
            let p = dir.join(&files[0].0);
            std::fs::write(&p, &files[0].1).unwrap();
            p
        }
    }

    /// Puts the model (its input written under `dir`), its deltas' bases found by search.
    pub fn put(&self, store: &Store, dir: &Path) -> neurstore::Result<PutReport> {
        let input = self.write_input(dir);
        let options = PutOptions {
            mode: self.mode,
            base: BaseChoice::Auto,
            ..Default::default()
        };
        let report = store.put(&self.name, &input, &options, &NoProgress);
        if self.directory {
            let _ = std::fs::remove_dir_all(&input);
        } else {
            let _ = std::fs::remove_file(&input);
        }
        report
    }

    /// The absolute bound of a tensor (`None`: bit-exact).
    fn bound(&self, t: &Tensor) -> Option<f64> {
        match self.mode {
            Mode::Absolute(tol) if is_float(t.dtype) => Some(tol),
            _ => None,
        }
    }

    /// Checks tensor bytes against the original: bit-exact, or every element within the bound.
    fn check_data(&self, t: &Tensor, got: &[u8]) -> Result<(), String> {
        if got.len() != t.data.len() {
            return Err(format!(
                "tensor {:?}: {} bytes, expected {}",
                t.name,
                got.len(),
                t.data.len()
            ));
        }
        let ok = match self.bound(t) {
            None => got == t.data.as_slice(),
            Some(tol) => {
                let s = elem_size(t.dtype);
                t.data
                    .chunks_exact(s)
                    .zip(got.chunks_exact(s))
                    .all(|(a, b)| {
                        (element_value(t.dtype, a) - element_value(t.dtype, b)).abs() <= tol
                    })
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!("tensor {:?}: wrong values", t.name))
        }
    }

    /// Checks a safetensors file `get` wrote: the header byte for byte, the tensors within bound.
    fn check_safetensors(&self, path: &str, tensors: &[Tensor], got: &[u8]) -> Result<(), String> {
        let original = safetensors_bytes(tensors);
        if self.mode == Mode::Lossless
            || self.tensors().iter().all(|(_, t)| self.bound(t).is_none())
        {
            return if got == original.as_slice() {
                Ok(())
            } else {
                Err(format!("{path}: bytes differ"))
            };
        }
        let header = safetensors::parse(&original).expect("fixture file parses");
        let start = header.data_start as usize;
        if got.len() != original.len() || got[..start] != original[..start] {
            return Err(format!("{path}: length or header differs"));
        }
        for (info, t) in header.tensors.iter().zip(tensors) {
            let range = start + info.start as usize..start + info.end as usize;
            self.check_data(t, &got[range])?;
        }
        Ok(())
    }

    /// Checks what `get` wrote at `out` (a file, or a directory for a directory model).
    pub fn check_get(&self, out: &Path) -> Result<(), String> {
        if !self.directory {
            let got = std::fs::read(out).map_err(|e| format!("reading output: {e}"))?;
            let Content::Safetensors(ts) = &self.files[0].1 else {
                unreachable!()
            };
            return self.check_safetensors(&self.files[0].0, ts, &got);
        }
        let mut found = BTreeMap::new();
        walk(out, out, &mut found).map_err(|e| format!("reading output: {e}"))?;
        let expected: Vec<&String> = self.files.iter().map(|(p, _)| p).collect();
        if found.keys().collect::<Vec<_>>() != expected {
            return Err(format!("files {:?}", found.keys().collect::<Vec<_>>()));
        }
        for (path, content) in &self.files {
            let got = &found[path];
            match content {
                Content::Safetensors(ts) => self.check_safetensors(path, ts, got)?,
                Content::Plain(b) if b == got => {}
                Content::Plain(_) => return Err(format!("{path}: bytes differ")),
            }
        }
        Ok(())
    }

    /// Checks what `load` returned: every tensor, in file and offset order, named and typed as
    /// given, its bytes bit-exact or within the bound.
    pub fn check_load(&self, loaded: &[LoadedTensor]) -> Result<(), String> {
        let expected = self.tensors();
        if loaded.len() != expected.len() {
            return Err(format!(
                "{} tensors, expected {}",
                loaded.len(),
                expected.len()
            ));
        }
        for (l, (file, t)) in loaded.iter().zip(expected) {
            if l.file != file || l.name != t.name || l.dtype != t.dtype || l.shape != t.shape {
                return Err(format!(
                    "tensor {:?} of {:?} ({} {:?}) where {:?} of {file:?} ({} {:?}) was expected",
                    l.name, l.file, l.dtype, l.shape, t.name, t.dtype, t.shape
                ));
            }
            self.check_data(t, &l.data)?;
        }
        Ok(())
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.insert(rel, std::fs::read(&path)?);
        }
    }
    Ok(())
}

/// The four models of the fixture store: "base", "ft" (lossless, deltas against the base),
/// "ft2" (within `TOLERANCE`, quantized against the base) and "dir" (a model directory).
pub fn models() -> Vec<Model> {
    let base = base_tensors(0xBA5E);
    vec![
        Model::file("base", base.clone(), Mode::Lossless),
        Model::file("ft", fine_tune(&base, 1, 5e-4), Mode::Lossless),
        Model::file("ft2", fine_tune(&base, 2, 5e-4), Mode::Absolute(TOLERANCE)),
        Model::directory("dir", 7),
    ]
}

/// Small packs, so the fixture spans several pack files.
pub const MAX_PACK_LEN: u64 = 12 * 1024;

/// Creates a store at `root` holding `models` (put in order by one writer, then closed), and
/// checks that the fine-tunes were stored the way the loops rely on.
pub fn build_store(root: &Path, models: &[Model]) {
    Store::init(root).unwrap();
    let store = Store::open_with(
        root,
        StoreOptions {
            write: true,
            max_pack_len: Some(MAX_PACK_LEN),
            ..Default::default()
        },
    )
    .unwrap();
    let inputs = root.parent().unwrap();
    for m in models {
        m.put(&store, inputs).unwrap();
    }
    // The fine-tunes' large tensors are deltas against the base (the planner may keep small
    // ones standalone, where a delta saves too little).
    for (name, codec) in [("ft", "delta"), ("ft2", "quantized")] {
        if let Ok(info) = store.info(name) {
            let t = &info.tensors[0];
            assert!(
                t.name == "layers.0.weight" && t.codec == codec && t.base.is_some(),
                "{name}: {t:?}"
            );
        }
    }
}

/// Copies a store directory (flat files and one level of `packs/`).
pub fn copy_store(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("packs")).unwrap();
    for sub in ["", "packs"] {
        for entry in std::fs::read_dir(from.join(sub)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), to.join(sub).join(entry.file_name())).unwrap();
            }
        }
    }
}

/// The message of a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// The `p`-th percentile (0..=100) of sorted durations, in milliseconds.
pub fn percentile_ms(sorted: &[std::time::Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}
