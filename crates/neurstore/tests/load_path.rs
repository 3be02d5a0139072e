//! Invariant: reading many models derived from one base decodes that base once per store handle
//! (the shared base cache), every read path returns the same bytes (load, get, streamed get of
//! large tensors), and the bounded decoder reconstructs exactly `dtype(base + code * step)`.

mod common;

use common::{Rng, safetensors_file};
use neurstore::{BaseChoice, DType, Mode, NoProgress, PutOptions, Store, StoreOptions};
use neurstore_core::codec::quantized;

fn f32_bytes(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
    v.into_iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A base model of a few float tensors and fine-tunes of it (small perturbations).
fn models(fine_tunes: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let shapes: [(&str, Vec<u64>); 3] = [
        ("emb", vec![300, 64]),
        ("layer.0.w", vec![64, 64]),
        ("layer.1.w", vec![64, 128]),
    ];
    let mut rng = Rng::new(7);
    let base: Vec<(String, Vec<f32>)> = shapes
        .iter()
        .map(|(n, s)| {
            let len = s.iter().product::<u64>() as usize;
            let v = (0..len).map(|_| (rng.normal() * 0.05) as f32).collect();
            (n.to_string(), v)
        })
        .collect();
    let file = |vals: &[(String, Vec<f32>)]| {
        let tensors: Vec<_> = vals
            .iter()
            .zip(&shapes)
            .map(|((n, v), (_, s))| (n.clone(), DType::F32, s.clone(), f32_bytes(v.clone())))
            .collect();
        safetensors_file(&tensors, None)
    };
    let fts = (0..fine_tunes)
        .map(|k| {
            let mut rng = Rng::new(100 + k as u64);
            let vals: Vec<(String, Vec<f32>)> = base
                .iter()
                .map(|(n, v)| {
                    let v = v.iter().map(|x| x + (rng.normal() * 4e-4) as f32).collect();
                    (n.clone(), v)
                })
                .collect();
            file(&vals)
        })
        .collect();
    (file(&base), fts)
}

/// A safetensors file of a small F32 tensor "a" (1,000 values) and a large one "big" (`big`).
fn small_and_big_file(big: &[f32]) -> Vec<u8> {
    let small = f32_bytes((0..1000).map(|i| i as f32));
    safetensors_file(
        &[
            ("a", DType::F32, vec![1000], small),
            (
                "big",
                DType::F32,
                vec![big.len() as u64],
                f32_bytes(big.iter().copied()),
            ),
        ],
        None,
    )
}

fn tensor_bytes(file: &[u8]) -> u64 {
    let n = u64::from_le_bytes(file[..8].try_into().unwrap());
    file.len() as u64 - 8 - n
}

#[test]
fn ten_fine_tunes_decode_their_base_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Store::init(&root).unwrap();
    let (base, fts) = models(10);
    let base_path = dir.path().join("base.safetensors");
    std::fs::write(&base_path, &base).unwrap();
    let writer = Store::open_writer(&root).unwrap();
    writer
        .put("base", &base_path, &PutOptions::default(), &NoProgress)
        .unwrap();
    let opts = PutOptions {
        mode: Mode::Absolute(1e-4),
        base: BaseChoice::Model("base".into()),
        ..Default::default()
    };
    for (k, ft) in fts.iter().enumerate() {
        let p = dir.path().join(format!("ft{k}.safetensors"));
        std::fs::write(&p, ft).unwrap();
        let r = writer
            .put(&format!("ft{k}"), &p, &opts, &NoProgress)
            .unwrap();
        assert_eq!(r.delta_tensors, 3, "{r:?}");
    }
    drop(writer);

    let store = Store::open(&root).unwrap();
    assert_eq!(store.base_cache_stats(), Default::default());
    for (k, ft) in fts.iter().enumerate() {
        let loaded = store.load(&format!("ft{k}")).unwrap();
        let decoded: u64 = loaded.iter().map(|t| t.data.len() as u64).sum();
        assert_eq!(decoded, tensor_bytes(ft));
    }
    let stats = store.base_cache_stats();
    assert_eq!(stats.misses, 3, "{stats:?}");
    assert_eq!(stats.hits, 27, "{stats:?}");
    assert_eq!(stats.decoded_bytes, tensor_bytes(&base), "{stats:?}");
    assert_eq!((stats.entries, stats.held_bytes), (3, tensor_bytes(&base)));

    // `get` shares the same cache; its output matches `load` byte for byte.
    let out = dir.path().join("out.safetensors");
    store.get("ft3", &out, &NoProgress).unwrap();
    let written = std::fs::read(&out).unwrap();
    let header_len = 8 + u64::from_le_bytes(written[..8].try_into().unwrap()) as usize;
    let loaded: Vec<u8> = store
        .load("ft3")
        .unwrap()
        .iter()
        .flat_map(|t| t.data.to_vec())
        .collect();
    assert_eq!(&written[header_len..], &loaded[..]);
    assert_eq!(store.base_cache_stats().misses, 3);

    // `get` reads through the cache but does not fill it (one pass: no second copy of the base).
    let fresh = Store::open(&root).unwrap();
    fresh.get("ft3", &out, &NoProgress).unwrap();
    assert!(std::fs::read(&out).unwrap() == written);
    let stats = fresh.base_cache_stats();
    assert_eq!(
        (stats.misses, stats.entries, stats.held_bytes),
        (3, 0, 0),
        "{stats:?}"
    );

    // A cache too small for any base: every read decodes its bases again, still correctly.
    let tiny = Store::open_with(
        &root,
        StoreOptions {
            base_cache_bytes: Some(16),
            ..Default::default()
        },
    )
    .unwrap();
    tiny.load("ft0").unwrap();
    tiny.load("ft1").unwrap();
    let stats = tiny.base_cache_stats();
    assert_eq!((stats.misses, stats.hits, stats.entries), (6, 0, 0));
}

/// Tensors past the streaming block size are written block by block by `get`; the output is
/// still byte for byte what was imported (lossless) and what `load` returns.
#[test]
fn large_tensors_stream_through_get() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Store::init(&root).unwrap();
    let mut rng = Rng::new(3);
    // 40 MiB of f32 (past any streaming block), smooth enough for the grouped codec to pay.
    let n = 10 << 20;
    let big: Vec<f32> = (0..n).map(|_| (rng.normal() * 0.02) as f32).collect();
    let ft: Vec<f32> = big
        .iter()
        .map(|x| x + (rng.normal() * 1e-4) as f32)
        .collect();
    let file = small_and_big_file;
    let (base_file, ft_file) = (file(&big), file(&ft));
    let (bp, fp) = (dir.path().join("b.st"), dir.path().join("f.st"));
    std::fs::write(&bp, &base_file).unwrap();
    std::fs::write(&fp, &ft_file).unwrap();
    let w = Store::open_writer(&root).unwrap();
    w.put("base", &bp, &PutOptions::default(), &NoProgress)
        .unwrap();
    let lossless_delta = PutOptions {
        base: BaseChoice::Model("base".into()),
        ..Default::default()
    };
    let r = w.put("ft", &fp, &lossless_delta, &NoProgress).unwrap();
    assert!(r.delta_tensors >= 1, "{r:?}");
    drop(w);
    let store = Store::open(&root).unwrap();
    for (name, want) in [("base", &base_file), ("ft", &ft_file)] {
        let out = dir.path().join(format!("{name}.out"));
        store.get(name, &out, &NoProgress).unwrap();
        assert!(std::fs::read(&out).unwrap() == *want, "{name}");
    }
    drop(store);

    // A damaged base reference of the streamed delta (pointing at another tensor of the same
    // shape) is caught by the key check over the streamed blocks; no output appears.
    let other: Vec<f32> = big.iter().map(|x| -x).collect();
    let op = dir.path().join("o.st");
    std::fs::write(&op, file(&other)).unwrap();
    let w = Store::open_writer(&root).unwrap();
    let no_base = PutOptions {
        base: BaseChoice::None,
        ..Default::default()
    };
    w.put("other", &op, &no_base, &NoProgress).unwrap();
    drop(w);
    let conn = rusqlite::Connection::open(root.join("catalog.db")).unwrap();
    let (delta, other_id): (i64, i64) = conn
        .query_row(
            "SELECT d.object_id, o.object_id FROM objects d JOIN objects o \
             ON o.raw_len = d.raw_len AND o.object_id != d.object_id AND o.object_id != d.base_id \
             WHERE d.base_id IS NOT NULL ORDER BY o.object_id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    conn.execute(
        &format!("UPDATE objects SET base_id = {other_id} WHERE object_id = {delta}"),
        [],
    )
    .unwrap();
    drop(conn);
    let store = Store::open(&root).unwrap();
    let out = dir.path().join("damaged.out");
    let err = store.get("ft", &out, &NoProgress).unwrap_err();
    assert_eq!(err.kind(), neurstore::ErrorKind::Corrupt, "{err}");
    // Format 2 seals the base's key in the delta's record: the row naming another base is
    // caught before anything is decoded.
    assert!(err.to_string().contains("(base key)"), "{err}");
    assert!(!out.exists());
    assert!(store.load("ft").is_err());
}

/// Bounded tensors past the streaming block size are written block by block by `get` too (their
/// base decoded block by block when it is a standalone lossless or bounded object, or taken
/// whole from the cache): the output is what `load` returns, within the bound of what was
/// imported, and a damaged base reference still fails with no output.
#[test]
fn large_bounded_tensors_stream_through_get() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Store::init(&root).unwrap();
    let mut rng = Rng::new(5);
    // 12 MiB of f32 (past the streaming block and the code section's chunks).
    let n = 3 << 20;
    let big: Vec<f32> = (0..n).map(|_| (rng.normal() * 0.02) as f32).collect();
    let mut ft: Vec<f32> = big
        .iter()
        .map(|x| x + (rng.normal() * 3e-4) as f32)
        .collect();
    ft[12_345] = f32::NAN;
    ft[n - 1] = 1e30;
    let ft2: Vec<f32> = ft
        .iter()
        .map(|x| x + (rng.normal() * 2e-4) as f32)
        .collect();
    let file = small_and_big_file;
    let files = [
        ("base", file(&big)),
        ("ft", file(&ft)),
        ("alone", file(&ft)),
        ("ft2", file(&ft2)),
    ];
    let w = Store::open_writer(&root).unwrap();
    for (name, bytes) in &files {
        let p = dir.path().join(format!("{name}.st"));
        std::fs::write(&p, bytes).unwrap();
        let opts = match *name {
            "base" => PutOptions::default(),
            "alone" => PutOptions {
                mode: Mode::Absolute(1e-4),
                base: BaseChoice::None,
                ..Default::default()
            },
            _ => PutOptions {
                mode: Mode::Absolute(1e-4),
                base: BaseChoice::Model(if *name == "ft" { "base" } else { "alone" }.into()),
                ..Default::default()
            },
        };
        let r = w.put(name, &p, &opts, &NoProgress).unwrap();
        if matches!(*name, "ft" | "ft2") {
            assert!(r.delta_tensors >= 1, "{name}: {r:?}");
        }
    }
    drop(w);
    let check = |store: &Store, name: &str, original: &[u8]| {
        let out = dir.path().join(format!("{name}.out"));
        store.get(name, &out, &NoProgress).unwrap();
        let written = std::fs::read(&out).unwrap();
        let header_len = 8 + u64::from_le_bytes(written[..8].try_into().unwrap()) as usize;
        assert_eq!(&written[..header_len], &original[..header_len], "{name}");
        let loaded: Vec<u8> = store
            .load(name)
            .unwrap()
            .iter()
            .flat_map(|t| t.data.to_vec())
            .collect();
        assert!(written[header_len..] == loaded[..], "{name}");
        let err = quantized::max_abs_error(DType::F32, &original[header_len..], &loaded);
        assert!(err <= 1e-4, "{name}: {err}");
    };
    // Fresh handles: bases streamed; then the same handle again, bases from the cache.
    for (name, original) in &files {
        check(&Store::open(&root).unwrap(), name, original);
    }
    let store = Store::open(&root).unwrap();
    for (name, original) in &files {
        check(&store, name, original);
    }
    drop(store);

    // Every delta's base reference pointed at another object of the same length: the key check
    // over the streamed blocks catches it; no output appears.
    let op = dir.path().join("other.st");
    std::fs::write(&op, file(&big.iter().map(|x| -x).collect::<Vec<_>>())).unwrap();
    let w = Store::open_writer(&root).unwrap();
    let no_base = PutOptions {
        base: BaseChoice::None,
        ..Default::default()
    };
    w.put("other", &op, &no_base, &NoProgress).unwrap();
    drop(w);
    let conn = rusqlite::Connection::open(root.join("catalog.db")).unwrap();
    let other_id: i64 = conn
        .query_row(
            &format!(
                "SELECT MAX(object_id) FROM objects WHERE raw_len = {}",
                n * 4
            ),
            [],
            |r| r.get(0),
        )
        .unwrap();
    let damaged = conn
        .execute(
            &format!(
                "UPDATE objects SET base_id = {other_id} WHERE base_id IS NOT NULL AND raw_len = {}",
                n * 4
            ),
            [],
        )
        .unwrap();
    assert_eq!(damaged, 2);
    drop(conn);
    let store = Store::open(&root).unwrap();
    for name in ["ft", "ft2"] {
        let out = dir.path().join(format!("damaged-{name}.out"));
        let err = store.get(name, &out, &NoProgress).unwrap_err();
        assert_eq!(err.kind(), neurstore::ErrorKind::Corrupt, "{err}");
        assert!(err.to_string().contains("(base key)"), "{err}");
        assert!(!out.exists());
        assert!(store.load(name).is_err());
    }
}

/// The bounded decoder's output is bit for bit `dtype(base + code * step)` in f64 (exceptions
/// exact), as the format defines it, for every float dtype, with and without a base, across
/// lengths that leave vector-loop tails.
#[test]
fn bounded_decode_is_the_formula_bit_for_bit() {
    let mut rng = Rng::new(11);
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        let size = match dtype {
            DType::F64 => 8,
            DType::F32 => 4,
            _ => 2,
        };
        for n in [1usize, 15, 17, 1000, 70_001] {
            let enc = |v: f64| encode(dtype, v);
            let base: Vec<u8> = (0..n)
                .flat_map(|i| match i % 97 {
                    3 => enc(f64::NAN),
                    5 => enc(f64::INFINITY),
                    7 => enc(-0.0),
                    _ => enc(rng.normal() * 0.5),
                })
                .collect();
            let target: Vec<u8> = base
                .chunks_exact(size)
                .enumerate()
                .flat_map(|(i, b)| {
                    let x = value(dtype, b);
                    let x = if x.is_finite() { x } else { 0.0 };
                    match i % 89 {
                        4 => enc(f64::NAN),
                        6 => enc(1e30_f64.min(if size == 2 { 6e4 } else { 1e30 })),
                        _ => enc(x + rng.normal() * 3e-3),
                    }
                })
                .collect();
            for with_base in [true, false] {
                let b = with_base.then_some(&base[..]);
                let q = quantized::encode(dtype, &target, b, 1e-3, 1).unwrap();
                let mut out = vec![0u8; target.len()];
                quantized::decode_into(dtype, &q.bytes, b, &mut out).unwrap();
                let c = quantized::decode_codes(dtype, &q.bytes, target.len()).unwrap();
                let mut want: Vec<u8> = (0..n)
                    .flat_map(|i| {
                        let b = match b {
                            Some(b) => value(dtype, &b[i * size..(i + 1) * size]),
                            None => 0.0,
                        };
                        enc(b + c.codes[i] as f64 * c.step)
                    })
                    .collect();
                for &(i, v) in &c.exceptions {
                    want[i * size..(i + 1) * size].copy_from_slice(&enc(v));
                }
                assert!(out == want, "{dtype} n={n} base={with_base}");
            }
        }
    }
}

/// `v` rounded once to `dtype` (what the format prescribes), little-endian.
fn encode(dtype: DType, v: f64) -> Vec<u8> {
    match dtype {
        DType::F32 => (v as f32).to_le_bytes().to_vec(),
        DType::F64 => v.to_le_bytes().to_vec(),
        DType::F16 => half::f16::from_f64(v).to_le_bytes().to_vec(),
        _ => half::bf16::from_f64(v).to_le_bytes().to_vec(),
    }
}

fn value(dtype: DType, b: &[u8]) -> f64 {
    match dtype {
        DType::F32 => f32::from_le_bytes(b.try_into().unwrap()) as f64,
        DType::F64 => f64::from_le_bytes(b.try_into().unwrap()),
        DType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f64(),
        _ => half::bf16::from_le_bytes([b[0], b[1]]).to_f64(),
    }
}
