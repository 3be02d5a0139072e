//! A tiny random BERT through the store: the candle encoder against a naive f64 reference
//! written here from the BERT equations, the compressed path against the expanded one, bases
//! shared across fine-tunes, and clear errors for unusable models and inputs.

use std::sync::Arc;

use neurstore::{
    BaseChoice, DType, Mode, NoProgress, PutOptions, ResidentOptions, ResidentWeight, SharedBases,
    Store, TensorInput,
};
use neurstore_infer::{Batch, Bert, BertConfig, InferError, Pooling};

const H: usize = 8;
const HEADS: usize = 2;
const LAYERS: usize = 2;
const INTER: usize = 16;
const VOCAB: usize = 30;
const MAX_POS: usize = 12;

fn config() -> BertConfig {
    BertConfig {
        hidden_size: H,
        num_hidden_layers: LAYERS,
        num_attention_heads: HEADS,
        intermediate_size: INTER,
        max_position_embeddings: MAX_POS,
        layer_norm_eps: 1e-12,
        hidden_act: "gelu".into(),
    }
}

/// xorshift64*, uniform in [-1, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// (name, shape, values) of every tensor of a random BERT; `seed` 1 is the "base", other seeds
/// perturb it slightly (a fine-tune).
fn weights(seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut base = Rng(0x9E37_79B9_7F4A_7C15);
    let mut tweak = Rng(seed.wrapping_mul(0x1234_5678_9ABC_DEF1) | 1);
    let mut t = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                let b = offset + scale * base.next();
                if seed == 1 {
                    b
                } else {
                    b + 0.002 * tweak.next()
                }
            })
            .collect();
        (name, shape, v)
    };
    let mut out = vec![
        t(
            "embeddings.word_embeddings.weight".into(),
            vec![VOCAB, H],
            0.5,
            0.0,
        ),
        t(
            "embeddings.position_embeddings.weight".into(),
            vec![MAX_POS, H],
            0.3,
            0.0,
        ),
        t(
            "embeddings.token_type_embeddings.weight".into(),
            vec![2, H],
            0.3,
            0.0,
        ),
        t("embeddings.LayerNorm.weight".into(), vec![H], 0.1, 1.0),
        t("embeddings.LayerNorm.bias".into(), vec![H], 0.1, 0.0),
    ];
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}");
        for (name, rows, cols) in [
            ("attention.self.query", H, H),
            ("attention.self.key", H, H),
            ("attention.self.value", H, H),
            ("attention.output.dense", H, H),
            ("intermediate.dense", INTER, H),
            ("output.dense", H, INTER),
        ] {
            out.push(t(format!("{p}.{name}.weight"), vec![rows, cols], 0.4, 0.0));
            out.push(t(format!("{p}.{name}.bias"), vec![rows], 0.1, 0.0));
        }
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            out.push(t(format!("{p}.{norm}.weight"), vec![H], 0.1, 1.0));
            out.push(t(format!("{p}.{norm}.bias"), vec![H], 0.1, 0.0));
        }
    }
    out
}

fn put(store: &Store, name: &str, seed: u64, mode: Mode, base: BaseChoice) {
    let w = weights(seed);
    let shapes: Vec<Vec<u64>> = w
        .iter()
        .map(|(_, s, _)| s.iter().map(|&d| d as u64).collect())
        .collect();
    let bytes: Vec<Vec<u8>> = w
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let inputs: Vec<TensorInput> = w
        .iter()
        .zip(&shapes)
        .zip(&bytes)
        .map(|(((name, _, _), shape), data)| TensorInput {
            name,
            dtype: DType::F32,
            shape,
            data,
        })
        .collect();
    let options = PutOptions {
        mode,
        base,
        ..PutOptions::default()
    };
    store
        .put_tensors(name, &inputs, None, &options, &NoProgress)
        .unwrap();
}

// ---- naive reference, f64, straight from the equations ----

fn get<'a>(w: &'a [(String, Vec<usize>, Vec<f32>)], name: &str) -> &'a [f32] {
    &w.iter().find(|(n, _, _)| n == name).unwrap().2
}

fn linear(w: &[(String, Vec<usize>, Vec<f32>)], name: &str, x: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let (wt, b) = (
        get(w, &format!("{name}.weight")),
        get(w, &format!("{name}.bias")),
    );
    let cols = x[0].len();
    x.iter()
        .map(|row| {
            b.iter()
                .enumerate()
                .map(|(o, &bo)| {
                    bo as f64
                        + (0..cols)
                            .map(|i| row[i] * wt[o * cols + i] as f64)
                            .sum::<f64>()
                })
                .collect()
        })
        .collect()
}

fn layer_norm(w: &[(String, Vec<usize>, Vec<f32>)], name: &str, x: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let (g, b) = (
        get(w, &format!("{name}.weight")),
        get(w, &format!("{name}.bias")),
    );
    x.iter()
        .map(|row| {
            let n = row.len() as f64;
            let mean = row.iter().sum::<f64>() / n;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            row.iter()
                .enumerate()
                .map(|(i, v)| (v - mean) / (var + 1e-12).sqrt() * g[i] as f64 + b[i] as f64)
                .collect()
        })
        .collect()
}

fn erf(x: f64) -> f64 {
    // Abramowitz-Stegun 7.1.26 is too coarse; integrate instead (Simpson, 2000 steps).
    let n = 2000;
    let h = x / n as f64;
    let f = |t: f64| (-t * t).exp();
    let mut s = f(0.0) + f(x);
    for k in 1..n {
        s += f(k as f64 * h) * if k % 2 == 1 { 4.0 } else { 2.0 };
    }
    s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
}

/// Mean-pooled states of one unpadded sequence.
fn reference(w: &[(String, Vec<usize>, Vec<f32>)], ids: &[u32]) -> Vec<f64> {
    let word = get(w, "embeddings.word_embeddings.weight");
    let pos = get(w, "embeddings.position_embeddings.weight");
    let tt = get(w, "embeddings.token_type_embeddings.weight");
    let x: Vec<Vec<f64>> = ids
        .iter()
        .enumerate()
        .map(|(p, &id)| {
            (0..H)
                .map(|i| (word[id as usize * H + i] + pos[p * H + i] + tt[i]) as f64)
                .collect()
        })
        .collect();
    let mut x = layer_norm(w, "embeddings.LayerNorm", &x);
    let d = H / HEADS;
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}");
        let q = linear(w, &format!("{p}.attention.self.query"), &x);
        let k = linear(w, &format!("{p}.attention.self.key"), &x);
        let v = linear(w, &format!("{p}.attention.self.value"), &x);
        let t = x.len();
        let mut ctx = vec![vec![0.0; H]; t];
        for h in 0..HEADS {
            for i in 0..t {
                let scores: Vec<f64> = (0..t)
                    .map(|j| {
                        (0..d)
                            .map(|c| q[i][h * d + c] * k[j][h * d + c])
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for j in 0..t {
                    for c in 0..d {
                        ctx[i][h * d + c] += e[j] / z * v[j][h * d + c];
                    }
                }
            }
        }
        let o = linear(w, &format!("{p}.attention.output.dense"), &ctx);
        let sum: Vec<Vec<f64>> = o
            .iter()
            .zip(&x)
            .map(|(a, b)| a.iter().zip(b).map(|(p, q)| p + q).collect())
            .collect();
        let a = layer_norm(w, &format!("{p}.attention.output.LayerNorm"), &sum);
        let f: Vec<Vec<f64>> = linear(w, &format!("{p}.intermediate.dense"), &a)
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|v| 0.5 * v * (1.0 + erf(v / 2f64.sqrt())))
                    .collect()
            })
            .collect();
        let o = linear(w, &format!("{p}.output.dense"), &f);
        let sum: Vec<Vec<f64>> = o
            .iter()
            .zip(&a)
            .map(|(p, q)| p.iter().zip(q).map(|(u, v)| u + v).collect())
            .collect();
        x = layer_norm(w, &format!("{p}.output.LayerNorm"), &sum);
    }
    (0..H)
        .map(|i| x.iter().map(|r| r[i]).sum::<f64>() / x.len() as f64)
        .collect()
}

fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    Store::init(&root).unwrap();
    let store = Store::open_writer(&root).unwrap();
    (dir, store)
}

const SEQS: [&[u32]; 3] = [&[2, 7, 9, 3], &[2, 11, 3], &[2, 29, 0, 5, 17, 3]];

#[test]
fn encoder_matches_the_equations_and_padding_does_not_leak() {
    let (_dir, store) = store();
    put(&store, "exact", 1, Mode::Lossless, BaseChoice::None);
    let m = store
        .load_resident("exact", &SharedBases::new(), ResidentOptions::default())
        .unwrap();
    let bert = Bert::from_resident(&m, &config(), false).unwrap();
    let seqs: Vec<Vec<u32>> = SEQS.iter().map(|s| s.to_vec()).collect();
    // Padded together, each sequence must pool to what it gives alone.
    let together = bert
        .embed(&Batch::from_ids(&seqs).unwrap(), Pooling::Mean)
        .unwrap();
    let w = weights(1);
    for (s, got) in seqs.iter().zip(&together) {
        let want = reference(&w, s);
        assert!(max_diff(got, &want) < 1e-4, "{got:?} vs {want:?}");
    }
    let normalized = bert
        .embed(
            &Batch::from_ids(&seqs[..1]).unwrap(),
            Pooling::MeanNormalized,
        )
        .unwrap();
    let norm: f32 = normalized[0].iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
}

#[test]
fn compressed_fine_tunes_share_one_base_and_stay_close() {
    let (_dir, store) = store();
    let tol = 1e-3;
    put(&store, "base", 1, Mode::Absolute(tol), BaseChoice::None);
    for seed in [2, 3, 4] {
        put(
            &store,
            &format!("ft{seed}"),
            seed,
            Mode::Absolute(tol),
            BaseChoice::Model("base".into()),
        );
    }
    let bases = SharedBases::new();
    let mut models = Vec::new();
    for seed in [2u64, 3, 4] {
        let m = store
            .load_resident(&format!("ft{seed}"), &bases, ResidentOptions::default())
            .unwrap();
        let compressed = Bert::from_resident(&m, &config(), false).unwrap();
        let expanded = Bert::from_resident(&m, &config(), true).unwrap();
        assert!(
            compressed.held_bytes() < expanded.held_bytes(),
            "{} vs {}",
            compressed.held_bytes(),
            expanded.held_bytes()
        );
        let batch = Batch::from_ids(&SEQS.iter().map(|s| s.to_vec()).collect::<Vec<_>>()).unwrap();
        let c = compressed.embed(&batch, Pooling::Mean).unwrap();
        let e = expanded.embed(&batch, Pooling::Mean).unwrap();
        let w = weights(seed);
        for ((c, e), s) in c.iter().zip(&e).zip(SEQS) {
            let e64: Vec<f64> = e.iter().map(|&v| v as f64).collect();
            // Same stored values, computed two ways: float rounding only.
            assert!(max_diff(c, &e64) < 1e-4);
            // Against the original weights: within what tolerance 1e-3 allows.
            assert!(max_diff(c, &reference(&w, s)) < 0.05);
        }
        models.push(m);
    }
    // Every matrix held as codes points at one shared base per base tensor.
    let base_of = |m: &neurstore::ResidentModel, name: &str| match &m.tensors[name].weight {
        ResidentWeight::Quant(q) => q.base().cloned().expect("a delta over the base"),
        _ => panic!("{name} not held as codes"),
    };
    let name = "encoder.layer.0.intermediate.dense.weight";
    assert!(Arc::ptr_eq(
        &base_of(&models[0], name),
        &base_of(&models[2], name)
    ));
    // One base per base object, whatever the number of models using it.
    let distinct: std::collections::HashSet<*const neurstore::BaseMatrix> = models
        .iter()
        .flat_map(|m| m.tensors.values())
        .filter_map(|t| match &t.weight {
            ResidentWeight::Quant(q) => q.base().map(Arc::as_ptr),
            _ => None,
        })
        .collect();
    assert_eq!(bases.len(), distinct.len());
    assert!(bases.len() >= 2 * LAYERS, "{} shared bases", bases.len());
}

#[test]
fn unusable_models_and_inputs_are_clear_errors() {
    let (_dir, store) = store();
    put(&store, "m", 1, Mode::Lossless, BaseChoice::None);
    let m = store
        .load_resident("m", &SharedBases::new(), ResidentOptions::default())
        .unwrap();
    let mut bigger = config();
    bigger.num_hidden_layers = 3;
    let e = Bert::from_resident(&m, &bigger, false).err().unwrap();
    assert!(matches!(e, InferError::Weights { .. }), "{e}");
    assert!(e.to_string().contains("encoder.layer.2"), "{e}");
    let mut wider = config();
    wider.intermediate_size = 32;
    let e = Bert::from_resident(&m, &wider, false).err().unwrap();
    assert!(e.to_string().contains("shape"), "{e}");

    let bert = Bert::from_resident(&m, &config(), false).unwrap();
    let e = bert
        .embed(
            &Batch::from_ids(&[vec![2, VOCAB as u32]]).unwrap(),
            Pooling::Mean,
        )
        .unwrap_err();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    let e = bert
        .embed(
            &Batch::from_ids(&[vec![1; MAX_POS + 1]]).unwrap(),
            Pooling::Mean,
        )
        .unwrap_err();
    assert!(e.to_string().contains("longer than"), "{e}");
    let e = store
        .load_resident("missing", &SharedBases::new(), ResidentOptions::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("missing"), "{e}");
}
