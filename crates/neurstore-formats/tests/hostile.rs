//! Hostile inputs to every format parser (ONNX, PyTorch zip and pickle, GGUF, safetensors,
//! skeleton): mutated valid files and hand-made resource bombs give a split or a typed error,
//! never a panic, and an accepted file always reassembles byte for byte.

use std::time::{Duration, Instant};

use neurstore_formats::pytorch::{pickle, pickle_writer, zip};
use neurstore_formats::{Container, gguf, onnx, skeleton};

/// Valid inputs the mutations start from, per target.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let f: Vec<u8> = (0..16).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let entry = |name: &str, offset: u64, size: Vec<u64>, stride: Vec<u64>| pickle_writer::Entry {
        name: name.into(),
        dtype: neurstore_core::dtype::DType::F32,
        storage: "0".into(),
        storage_numel: 16,
        offset,
        size,
        stride,
    };
    let pkl = pickle_writer::state_dict(&[
        entry("a", 0, vec![2, 4], vec![4, 1]),
        entry("b", 8, vec![4, 2], vec![1, 4]),
    ]);
    let pt = zip::write_archive(&[
        ("archive/data.pkl", &pkl),
        ("archive/data/0", &f),
        ("archive/version", b"3\n"),
    ]);
    let gg = gguf::build::gguf(&[("w", 0, vec![4], &f[..16]), ("q", 2, vec![32], &[1u8; 18])]);
    let onnx = onnx::sample::small_model();
    let (c, _) = gguf::parse(&gg).unwrap();
    let sk = c.skeleton_bytes(&gg).unwrap();
    vec![
        ("onnx", onnx),
        ("pytorch", pt),
        ("pickle", pkl),
        ("gguf", gg),
        ("skeleton", sk),
    ]
}

/// What a target made of an input.
enum Outcome {
    /// Refused with a typed error.
    Refused,
    /// Accepted; a model file's split, to check its round trip.
    Accepted(Option<Container>),
}

/// Runs one target on one input.
fn run(target: &str, data: &[u8]) -> Outcome {
    let split = |c: Option<Container>| c.map_or(Outcome::Refused, |c| Outcome::Accepted(Some(c)));
    match target {
        "onnx" => {
            let _ = onnx::info::info(data, &|_| false);
            split(onnx::parse(data).ok().map(|m| m.container))
        }
        "pytorch" => split(pytorch_parse(data)),
        "pickle" => match pickle::interpret(data) {
            Ok(_) => Outcome::Accepted(None),
            Err(_) => Outcome::Refused,
        },
        "gguf" => split(gguf::parse(data).ok().map(|(c, _)| c)),
        "skeleton" => match skeleton::decode(data) {
            Ok(sk) => {
                let zeros: Vec<Vec<u8>> = sk
                    .layout
                    .tensors
                    .iter()
                    .map(|t| vec![0u8; t.byte_len() as usize])
                    .collect();
                let parts: Vec<&[u8]> = zeros.iter().map(Vec::as_slice).collect();
                let back = skeleton::reassemble_to_vec(data, &parts).unwrap();
                assert_eq!(back.len() as u64, sk.layout.file_len);
                Outcome::Accepted(None)
            }
            Err(_) => Outcome::Refused,
        },
        _ => unreachable!(),
    }
}

fn pytorch_parse(data: &[u8]) -> Option<Container> {
    let (c, _) = neurstore_formats::pytorch::parse(data).ok()?;
    for v in &c.views {
        let t = &c.tensors[v.tensor];
        neurstore_formats::container::materialize(v, &data[t.start as usize..t.end as usize])
            .unwrap();
    }
    Some(c)
}

fn assert_round_trip(target: &str, data: &[u8], c: &Container) {
    let sk = c.skeleton_bytes(data).unwrap();
    let parts: Vec<&[u8]> = c
        .tensors
        .iter()
        .map(|t| &data[t.start as usize..t.end as usize])
        .collect();
    assert!(
        skeleton::reassemble_to_vec(&sk, &parts).unwrap() == data,
        "{target}: accepted input does not reassemble"
    );
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] = [0, 0xff, 0x7f, 0x80, 1][rng.below(5)];
            }
            2 => d.truncate(rng.below(d.len() + 1)),
            3 if d.len() >= 8 => {
                let i = rng.below(d.len() - 7);
                d[i..i + 8].copy_from_slice(&u64::MAX.to_le_bytes()[..8]);
            }
            4 if !d.is_empty() => {
                let (i, j) = (rng.below(d.len()), rng.below(d.len()));
                let chunk: Vec<u8> = d[i.min(j)..i.max(j)].to_vec();
                let at = rng.below(d.len());
                d.splice(at..at, chunk);
            }
            _ => d.push(rng.next() as u8),
        }
    }
    d
}

#[test]
fn mutated_inputs_never_panic_and_accepted_ones_round_trip() {
    let per_target: usize = std::env::var("NEURSTORE_HOSTILE_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for (target, seed) in seeds() {
        match run(target, &seed) {
            Outcome::Accepted(Some(c)) => assert_round_trip(target, &seed, &c),
            Outcome::Accepted(None) => {}
            Outcome::Refused => panic!("{target}: the valid seed was refused"),
        }
        let (mut accepted, mut slowest) = (0usize, Duration::ZERO);
        for _ in 0..per_target {
            let input = mutate(&mut rng, &seed);
            let t = Instant::now();
            if let Outcome::Accepted(c) = run(target, &input) {
                accepted += 1;
                if let Some(c) = c {
                    assert_round_trip(target, &input, &c);
                }
            }
            slowest = slowest.max(t.elapsed());
        }
        println!(
            "{target}: {per_target} mutated inputs, {accepted} accepted (model files reassembled byte for byte), panics 0, slowest {slowest:?}"
        );
    }
}

#[test]
fn resource_bombs_are_refused_quickly() {
    let mut bombs: Vec<(&str, Vec<u8>)> = Vec::new();
    // GGUF: 2^63 metadata keys; a string of 2^64-1 bytes; an array of 2^60 u64.
    let mut g = b"GGUF\x03\0\0\0".to_vec();
    g.extend_from_slice(&0u64.to_le_bytes());
    g.extend_from_slice(&(1u64 << 63).to_le_bytes());
    bombs.push(("gguf", g.clone()));
    let mut s = b"GGUF\x03\0\0\0".to_vec();
    s.extend_from_slice(&0u64.to_le_bytes());
    s.extend_from_slice(&1u64.to_le_bytes());
    s.extend_from_slice(&u64::MAX.to_le_bytes());
    bombs.push(("gguf", s));
    let mut a = b"GGUF\x03\0\0\0".to_vec();
    a.extend_from_slice(&0u64.to_le_bytes());
    a.extend_from_slice(&1u64.to_le_bytes());
    a.extend_from_slice(&1u64.to_le_bytes());
    a.push(b'k');
    a.extend_from_slice(&9u32.to_le_bytes());
    a.extend_from_slice(&10u32.to_le_bytes());
    a.extend_from_slice(&(1u64 << 60).to_le_bytes());
    bombs.push(("gguf", a));
    // ONNX: a graph claiming 2^62 bytes; dims whose product overflows.
    bombs.push((
        "onnx",
        vec![0x3a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40],
    ));
    let dims = onnx::sample::tensor_raw("w", 1, &[1 << 40, 1 << 40], &[]);
    bombs.push(("onnx", onnx::sample::model(&[], &[dims], &[], &[])));
    // Pickle: a 4 GiB string, memo indices near 2^32 (put, then get of an empty one), 100k marks.
    bombs.push(("pickle", b"\x80\x02X\xff\xff\xff\xff.".to_vec()));
    bombs.push((
        "pickle",
        b"\x80\x02Nr\xff\xff\xff\xff0j\xfe\xff\xff\xff.".to_vec(),
    ));
    bombs.push((
        "pickle",
        [b"\x80\x02".to_vec(), vec![b'('; 100_000], b".".to_vec()].concat(),
    ));
    // Zip: 65535 entries claimed in a tiny directory.
    let mut z = zip::write_archive(&[("a/x", b"1")]);
    let n = z.len();
    z[n - 14..n - 10].copy_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    bombs.push(("pytorch", z));
    // Skeleton: counts of 2^32-1.
    let mut sk = b"NSKL\x01\x01\0\0".to_vec();
    sk.extend_from_slice(&0u64.to_le_bytes());
    sk.extend_from_slice(&[0xff; 16]);
    bombs.push(("skeleton", sk));
    for (target, input) in &bombs {
        let t = Instant::now();
        assert!(
            matches!(run(target, input), Outcome::Refused),
            "{target} bomb accepted"
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{target} bomb took {:?}",
            t.elapsed()
        );
    }
    println!("{} bombs refused", bombs.len());
}

/// Writes the seeds to fuzz/seeds/<target>/ (run with --ignored after changing the builders).
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
    for (target, seed) in seeds() {
        let name = match target {
            "onnx" => "onnx_parse",
            "pytorch" => "pytorch_parse",
            "pickle" => "pickle_interpret",
            "gguf" => "gguf_parse",
            _ => "skeleton_decode",
        };
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("small"), seed).unwrap();
    }
}
