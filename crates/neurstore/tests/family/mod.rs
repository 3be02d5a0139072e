//! Synthetic model families for the delta tests: a base of a few tensors, fine-tunes that stay
//! close to it, unrelated models of the same shapes, and checks that a model came back exactly
//! or within its bound.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod common;

pub use common::{Rng, elem_size, element_value, encode_element, is_float, safetensors_from};

use std::path::{Path, PathBuf};

use neurstore::{BaseChoice, LoadedTensor, Mode, NoProgress, PutOptions, PutReport, Store};
use neurstore_core::dtype::DType;

/// One tensor of a synthetic model.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: &'static str,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

/// The layout of every family: float tensors of each width, large and small, and an integer one.
const LAYOUT: &[(&str, DType, &[u64])] = &[
    ("layers.0.weight", DType::F32, &[64, 64]),
    ("layers.0.bias", DType::F32, &[512]),
    ("embed.weight", DType::BF16, &[32, 32]),
    ("norm.scale", DType::F64, &[256]),
    ("position_ids", DType::I64, &[16]),
];

/// Element `i` as f64 (float dtypes of the layout only).
pub fn element(dtype: DType, bytes: &[u8], i: usize) -> f64 {
    let s = elem_size(dtype);
    element_value(dtype, &bytes[i * s..(i + 1) * s])
}

pub fn values(t: &Tensor) -> Vec<f64> {
    (0..t.data.len() / elem_size(t.dtype))
        .map(|i| element(t.dtype, &t.data, i))
        .collect()
}

fn from_values(dtype: DType, values: &[f64]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| encode_element(dtype, *v))
        .collect()
}

/// A base model: float values of standard deviation 0.05, integers 0..n shuffled by the seed.
pub fn family(seed: u64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    LAYOUT
        .iter()
        .map(|&(name, dtype, shape)| {
            let n: u64 = shape.iter().product();
            let data = if is_float(dtype) {
                let v: Vec<f64> = (0..n).map(|_| 0.05 * rng.normal()).collect();
                from_values(dtype, &v)
            } else {
                (0..n)
                    .flat_map(|i| ((i + rng.next_u64() % 4) as i64).to_le_bytes())
                    .collect()
            };
            Tensor {
                name,
                dtype,
                shape: shape.to_vec(),
                data,
            }
        })
        .collect()
}

/// A fine-tune: every float element moved by noise of `scale` times the tensor's RMS (so the
/// noise's norm is about `scale` of the tensor's); integer tensors unchanged.
pub fn fine_tune(base: &[Tensor], seed: u64, scale: f64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed ^ 0xF1_7E);
    base.iter()
        .map(|t| {
            if !is_float(t.dtype) {
                return t.clone();
            }
            let v = values(t);
            let sigma = scale * rms(t.dtype, &t.data);
            let tuned: Vec<f64> = v.iter().map(|x| x + sigma * rng.normal()).collect();
            Tensor {
                data: from_values(t.dtype, &tuned),
                ..t.clone()
            }
        })
        .collect()
}

/// Puts NaN, +Inf and -Inf at a few positions of every float tensor.
pub fn plant_specials(tensors: &mut [Tensor], seed: u64) {
    let mut rng = Rng::new(seed);
    for t in tensors.iter_mut().filter(|t| is_float(t.dtype)) {
        let n = t.data.len() / elem_size(t.dtype);
        for special in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let i = (rng.next_u64() % n as u64) as usize;
            let s = elem_size(t.dtype);
            t.data[i * s..(i + 1) * s].copy_from_slice(&encode_element(t.dtype, special));
        }
    }
}

/// Root mean square of the finite elements, summed in element order.
pub fn rms(dtype: DType, bytes: &[u8]) -> f64 {
    let (sum, n) = (0..bytes.len() / elem_size(dtype))
        .map(|i| element(dtype, bytes, i))
        .filter(|v| v.is_finite())
        .fold((0.0f64, 0u64), |(s, n), v| (s + v * v, n + 1));
    if n == 0 { 0.0 } else { (sum / n as f64).sqrt() }
}

/// The absolute bound a tensor is kept within under `mode` (`None`: exact).
pub fn tolerance(mode: Mode, t: &Tensor) -> Option<f64> {
    if !is_float(t.dtype) {
        return None;
    }
    match mode {
        Mode::Lossless => None,
        Mode::Absolute(a) => Some(a),
        Mode::Relative(r) => Some(r * rms(t.dtype, &t.data)),
    }
}

/// Checks `got` against `original`: bit-exact where `tol` is `None` and for non-finite elements,
/// every other element within `tol` (in f64).
pub fn assert_close(what: &str, t: &Tensor, got: &[u8], tol: Option<f64>) {
    assert_eq!(got.len(), t.data.len(), "{what}: length");
    let Some(tol) = tol else {
        assert!(got == t.data.as_slice(), "{what}: not bit-exact");
        return;
    };
    let s = elem_size(t.dtype);
    for i in 0..t.data.len() / s {
        let (x, y) = (element(t.dtype, &t.data, i), element(t.dtype, got, i));
        if x.is_finite() {
            assert!(
                (x - y).abs() <= tol,
                "{what}[{i}]: {y} is more than {tol} from {x}"
            );
        } else {
            assert_eq!(
                &got[i * s..(i + 1) * s],
                &t.data[i * s..(i + 1) * s],
                "{what}[{i}]: non-finite {x} not kept exactly"
            );
        }
    }
}

pub fn safetensors_file(tensors: &[Tensor]) -> Vec<u8> {
    safetensors_from(
        tensors
            .iter()
            .map(|t| (t.name, t.dtype, &t.shape[..], &t.data[..])),
        None,
    )
}

pub fn options(mode: Mode, base: BaseChoice) -> PutOptions {
    PutOptions {
        mode,
        base,
        ..Default::default()
    }
}

pub fn lossless() -> PutOptions {
    PutOptions::default()
}

pub fn bounded(mode: Mode) -> PutOptions {
    options(mode, BaseChoice::Auto)
}

/// A store in a temporary directory, opened for writing.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub store: Store,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        Store::init(&root).unwrap();
        let store = Store::open_writer(&root).unwrap();
        Fixture { dir, root, store }
    }

    /// Closes the store and opens it again for writing.
    pub fn reopen(self) -> Self {
        let Fixture { dir, root, store } = self;
        drop(store);
        let store = Store::open_writer(&root).unwrap();
        Fixture { dir, root, store }
    }

    /// Writes `tensors` as `NAME.safetensors` and returns its path.
    pub fn write(&self, name: &str, tensors: &[Tensor]) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.safetensors"));
        std::fs::write(&path, safetensors_file(tensors)).unwrap();
        path
    }

    pub fn put(&self, name: &str, tensors: &[Tensor], options: &PutOptions) -> PutReport {
        let path = self.write(name, tensors);
        self.store
            .put(name, &path, options, &NoProgress)
            .unwrap_or_else(|e| panic!("put {name}: {e}"))
    }

    /// The bytes `get` writes for model `name`, through `store`.
    pub fn get_with(&self, store: &Store, name: &str) -> Vec<u8> {
        let out = self.dir.path().join(format!("{name}.out"));
        store
            .get(name, &out, &NoProgress)
            .unwrap_or_else(|e| panic!("get {name}: {e}"));
        std::fs::read(&out).unwrap()
    }

    /// Checks model `name` through `store`: `get` and `load` give `tensors`, bit-exact where
    /// `mode` keeps them exact, within the bound elsewhere.
    pub fn assert_model_with(&self, store: &Store, name: &str, tensors: &[Tensor], mode: Mode) {
        let expected = safetensors_file(tensors);
        let got = self.get_with(store, name);
        if mode == Mode::Lossless {
            assert!(got == expected, "{name}: get is not byte-identical");
        }
        // The header comes back verbatim, so the tensors sit at the input's offsets.
        let data_start = expected.len() - tensors.iter().map(|t| t.data.len()).sum::<usize>();
        assert_eq!(got.len(), expected.len(), "{name}: file length");
        assert!(
            got[..data_start] == expected[..data_start],
            "{name}: header"
        );
        let mut at = data_start;
        for t in tensors {
            let what = format!("get {name}/{}", t.name);
            assert_close(&what, t, &got[at..at + t.data.len()], tolerance(mode, t));
            at += t.data.len();
        }
        let loaded = store
            .load(name)
            .unwrap_or_else(|e| panic!("load {name}: {e}"));
        assert_loaded(name, &loaded, tensors, mode);
    }

    pub fn assert_model(&self, name: &str, tensors: &[Tensor], mode: Mode) {
        self.assert_model_with(&self.store, name, tensors, mode);
    }

    /// The same check through a freshly opened reader (no decoded bases cached).
    pub fn assert_model_fresh(&self, name: &str, tensors: &[Tensor], mode: Mode) {
        let reader = Store::open(&self.root).unwrap();
        self.assert_model_with(&reader, name, tensors, mode);
    }

    pub fn assert_clean(&self) {
        let report = self.store.verify(&NoProgress).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    /// Pack files (`packs/*.pack`), sorted by name.
    pub fn pack_files(&self) -> Vec<PathBuf> {
        pack_files(&self.root)
    }

    /// Sum of pack file lengths on disk, measured without the store.
    pub fn pack_files_len(&self) -> u64 {
        self.pack_files()
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    }

    pub fn index_file(&self) -> PathBuf {
        self.root.join("packs").join("index.hnsw")
    }

    pub fn model_names(&self) -> Vec<String> {
        self.store
            .list()
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect()
    }
}

/// Checks what `load` gave for model `name` against `tensors`.
pub fn assert_loaded(name: &str, loaded: &[LoadedTensor], tensors: &[Tensor], mode: Mode) {
    assert_eq!(loaded.len(), tensors.len(), "{name}: tensors loaded");
    for (l, t) in loaded.iter().zip(tensors) {
        assert_eq!((l.name.as_str(), l.dtype), (t.name, t.dtype), "{name}");
        assert_eq!(l.shape, t.shape, "{name}/{}", t.name);
        let what = format!("load {name}/{}", t.name);
        assert_close(&what, t, &l.data, tolerance(mode, t));
    }
}

pub fn pack_files(root: &Path) -> Vec<PathBuf> {
    let mut packs: Vec<PathBuf> = std::fs::read_dir(root.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    packs.sort();
    packs
}

/// True when tensor `name` of model `model` is stored against a base (a lossless delta or a
/// quantized delta).
pub fn is_delta(store: &Store, model: &str, name: &str) -> bool {
    let info = store.info(model).unwrap();
    let t = info.tensors.iter().find(|t| t.name == name).unwrap();
    t.codec == "delta" || (t.codec == "quantized" && t.base.is_some())
}

pub fn flip(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}
