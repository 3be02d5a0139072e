//! `neurstore-entropy`: the grouped codec's plane coders side by side on real byte planes:
//! zstd (the level tensors use) against the order-0 rANS coder (`codec::entropy`), on every
//! 1 MiB chunk's planes of each model's tensors, split exactly as the grouped codec splits
//! them (floats rotated so the top byte holds the exponent). With `--finetune-noise`, the
//! lossless delta words and the bounded codec's code stream of a synthetic fine-tune of each
//! F32 model (the base plus seeded Gaussian noise of that fraction of each tensor's standard
//! deviation) are measured too. One thread; medians of `--repeat` runs. Last, the whole
//! lossless tensor codec (`codec::encode_tensor` and its decoder) over each model's tensors.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use neurstore_core::codec::{self, TENSOR_LEVEL, entropy, grouped::CHUNK_LEN};
use neurstore_core::dtype::DType;
use neurstore_core::safetensors;
use serde::Serialize;

#[derive(Parser)]
#[command(name = "neurstore-entropy", version, about)]
struct Cli {
    /// Safetensors file (repeat the flag for several).
    #[arg(long = "model", required = true)]
    models: Vec<PathBuf>,
    /// Also measure delta and code planes of a synthetic fine-tune of every F32 model, with
    /// noise of this fraction of each tensor's standard deviation (0 = skip).
    #[arg(long, default_value_t = 0.01)]
    finetune_noise: f64,
    /// Absolute bound of the bounded codec's code stream (step = 2 × tolerance).
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f64,
    /// Repeats of every timing; the median is reported.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Measure only the whole tensor codec, not the planes one by one.
    #[arg(long)]
    codec_only: bool,
}

/// One group of planes (same source, same byte position), measured together.
#[derive(Serialize)]
struct Row {
    class: String,
    planes: usize,
    raw_bytes: u64,
    /// Order-0 entropy of each plane, summed (the bound an order-0 coder can approach).
    entropy_bytes: u64,
    zstd_bytes: u64,
    rans_bytes: u64,
    /// Per plane the smallest of raw, zstd and rANS (what a per-chunk choice can reach).
    best_bytes: u64,
    /// Planes on which rANS is the smallest.
    rans_wins: usize,
    zstd_encode: Speed,
    rans_encode: Speed,
    zstd_decode: Speed,
    rans_decode: Speed,
}

/// MB/s of plane bytes over the median thread CPU time and over the median wall time.
#[derive(Serialize, Clone, Copy)]
struct Speed {
    cpu_mb_s: f64,
    wall_mb_s: f64,
}

/// Medians over `repeat` runs of `f` of the MB/s over `raw_bytes`, by the CPU time `clock`
/// measures and by the wall clock.
fn timed(repeat: u32, raw_bytes: u64, clock: fn() -> f64, f: &mut dyn FnMut()) -> Speed {
    let (mut cpu, mut wall): (Vec<f64>, Vec<f64>) = (0..repeat)
        .map(|_| {
            let (c, w) = (clock(), Instant::now());
            f();
            (clock() - c, w.elapsed().as_secs_f64())
        })
        .unzip();
    cpu.sort_by(f64::total_cmp);
    wall.sort_by(f64::total_cmp);
    Speed {
        cpu_mb_s: raw_bytes as f64 / cpu[cpu.len() / 2] / 1e6,
        wall_mb_s: raw_bytes as f64 / wall[wall.len() / 2] / 1e6,
    }
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu_s() -> f64 {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of the whole process (every thread), in seconds.
fn process_cpu_s() -> f64 {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn cpu_clock(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; the clock id is a constant Linux defines.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut rows = Vec::new();
    let mut wholes = Vec::new();
    for path in &cli.models {
        let file = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let header = safetensors::parse(&file)?;
        let base = header.data_start as usize;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let mut groups: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        for t in header.tensors.iter().filter(|_| !cli.codec_only) {
            let raw = &file[base + t.start as usize..base + t.end as usize];
            let w = t.dtype.plane_width();
            let w = if raw.len().is_multiple_of(w) { w } else { 1 };
            add_planes(
                &mut groups,
                &format!("{name} weights"),
                raw,
                w,
                t.dtype.is_float(),
            );
            if cli.finetune_noise > 0.0 && t.dtype == DType::F32 {
                let tuned = finetune(raw, cli.finetune_noise, t.start);
                add_planes(
                    &mut groups,
                    &format!("{name} delta"),
                    &delta(raw, &tuned),
                    4,
                    false,
                );
                let (codes, cw) = codes(raw, &tuned, 2.0 * cli.tolerance);
                add_planes(&mut groups, &format!("{name} codes"), &codes, cw, false);
            }
        }
        for (class, planes) in groups {
            rows.push(measure(class, &planes, cli.repeat));
        }
        let tensors: Vec<(&[u8], DType)> = header
            .tensors
            .iter()
            .map(|t| {
                (
                    &file[base + t.start as usize..base + t.end as usize],
                    t.dtype,
                )
            })
            .collect();
        wholes.push(measure_whole(name.to_string(), &tensors, cli.repeat));
    }
    if !rows.is_empty() {
        print_table(&rows);
    }
    for w in &wholes {
        println!(
            "{}: tensor codec {:.4}x ({} -> {} bytes); encode {:.0} MB/s, decode {:.0} MB/s \
             per CPU-second (all threads' CPU time; wall {:.0} / {:.0} MB/s)",
            w.model,
            w.raw_bytes as f64 / w.stored_bytes as f64,
            w.raw_bytes,
            w.stored_bytes,
            w.encode.cpu_mb_s,
            w.decode.cpu_mb_s,
            w.encode.wall_mb_s,
            w.decode.wall_mb_s
        );
    }
    if let Some(path) = &cli.json {
        let doc = serde_json::json!({ "planes": rows, "tensor_codec": wholes });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The whole lossless tensor codec (`encode_tensor`, `decode_into`) over a model's tensors.
#[derive(Serialize)]
struct Whole {
    model: String,
    raw_bytes: u64,
    /// Encoded bytes (raw size for tensors the codec leaves raw).
    stored_bytes: u64,
    encode: Speed,
    decode: Speed,
}

fn measure_whole(model: String, tensors: &[(&[u8], DType)], repeat: u32) -> Whole {
    let encoded: Vec<codec::Encoded> = tensors
        .iter()
        .map(|(raw, d)| codec::encode_tensor(*d, raw))
        .collect();
    let raw_bytes: u64 = tensors.iter().map(|(r, _)| r.len() as u64).sum();
    let stored_bytes: u64 = tensors
        .iter()
        .zip(&encoded)
        .map(|((r, _), e)| e.bytes.as_ref().map_or(r.len(), Vec::len) as u64)
        .sum();
    let mut out: Vec<Vec<u8>> = tensors.iter().map(|(r, _)| vec![0u8; r.len()]).collect();
    let time = |f: &mut dyn FnMut()| timed(repeat, raw_bytes, process_cpu_s, f);
    let encode = time(&mut || {
        for (raw, d) in tensors {
            std::hint::black_box(codec::encode_tensor(*d, raw));
        }
    });
    let decode = time(&mut || {
        for ((e, o), (raw, _)) in encoded.iter().zip(&mut out).zip(tensors) {
            match &e.bytes {
                Some(b) => codec::decode_into(e.codec, b, o).expect("decodes"),
                None => o.copy_from_slice(raw),
            }
        }
    });
    for (o, (raw, _)) in out.iter().zip(tensors) {
        assert!(
            o[..] == raw[..],
            "tensor codec round trip differs in {model}"
        );
    }
    Whole {
        model,
        raw_bytes,
        stored_bytes,
        encode,
        decode,
    }
}

/// Splits `raw` like the grouped codec and files each plane under "`source` plane k/w".
fn add_planes(
    groups: &mut Vec<(String, Vec<Vec<u8>>)>,
    source: &str,
    raw: &[u8],
    w: usize,
    rotate: bool,
) {
    for chunk in raw.chunks(CHUNK_LEN - CHUNK_LEN % w) {
        for k in 0..w {
            let plane: Vec<u8> = chunk
                .chunks_exact(w)
                .map(|e| {
                    let mut b = [0u8; 8];
                    b[..w].copy_from_slice(e);
                    let mut x = u64::from_le_bytes(b);
                    if rotate && w > 1 {
                        let bits = 8 * w as u32;
                        let mask = if w == 8 { u64::MAX } else { (1 << bits) - 1 };
                        x = ((x << 1) | (x >> (bits - 1))) & mask;
                    }
                    (x >> (8 * k)) as u8
                })
                .collect();
            let class = format!("{source} plane {k}/{w}");
            match groups.iter_mut().find(|(c, _)| *c == class) {
                Some((_, planes)) => planes.push(plane),
                None => groups.push((class, vec![plane])),
            }
        }
    }
}

/// The base plus seeded Gaussian noise of `scale` × the tensor's standard deviation.
fn finetune(raw: &[u8], scale: f64, seed: u64) -> Vec<u8> {
    let vals: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let n = vals.len().max(1) as f64;
    let mean = vals.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = vals.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let sigma = scale * var.sqrt();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    vals.iter()
        .flat_map(|&v| {
            let g = (-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos();
            ((v as f64 + sigma * g) as f32).to_le_bytes()
        })
        .collect()
}

/// The lossless delta codec's words: zig-zag of the wrapping difference of bit patterns.
fn delta(base: &[u8], tuned: &[u8]) -> Vec<u8> {
    base.chunks_exact(4)
        .zip(tuned.chunks_exact(4))
        .flat_map(|(b, t)| {
            let d = u32::from_le_bytes(t.try_into().unwrap())
                .wrapping_sub(u32::from_le_bytes(b.try_into().unwrap())) as i32;
            (((d << 1) ^ (d >> 31)) as u32).to_le_bytes()
        })
        .collect()
}

/// The bounded codec's code stream: zig-zagged `round((t - b) / step)` in the fewest of 1, 2
/// or 4 bytes that hold every code.
fn codes(base: &[u8], tuned: &[u8], step: f64) -> (Vec<u8>, usize) {
    let zz: Vec<u32> = base
        .chunks_exact(4)
        .zip(tuned.chunks_exact(4))
        .map(|(b, t)| {
            let b = f32::from_le_bytes(b.try_into().unwrap()) as f64;
            let t = f32::from_le_bytes(t.try_into().unwrap()) as f64;
            let q = ((t - b) / step).round() as i32;
            ((q << 1) ^ (q >> 31)) as u32
        })
        .collect();
    let max = zz.iter().copied().max().unwrap_or(0);
    let w = if max < 1 << 8 {
        1
    } else if max < 1 << 16 {
        2
    } else {
        4
    };
    let bytes = zz
        .iter()
        .flat_map(|&z| z.to_le_bytes()[..w].to_vec())
        .collect();
    (bytes, w)
}

fn measure(class: String, planes: &[Vec<u8>], repeat: u32) -> Row {
    let raw_bytes: u64 = planes.iter().map(|p| p.len() as u64).sum();
    let mut entropy_bits = 0.0;
    let (mut zstd_bytes, mut rans_bytes, mut best_bytes, mut rans_wins) = (0, 0, 0, 0);
    let mut zstd_out = Vec::new();
    let mut rans_out = Vec::new();
    for p in planes {
        entropy_bits += p.len() as f64 * entropy::entropy_bits(&entropy::histogram(p));
        let z = zstd::bulk::compress(p, TENSOR_LEVEL).expect("zstd");
        let mut r = Vec::new();
        entropy::encode(p, &mut r);
        zstd_bytes += z.len() as u64;
        rans_bytes += r.len() as u64;
        let best = p.len().min(z.len()).min(r.len());
        best_bytes += best as u64;
        rans_wins += usize::from(best == r.len() && r.len() < z.len());
        zstd_out.push(z);
        rans_out.push(r);
    }
    // Median of the measuring thread's CPU time: other processes on a shared machine lengthen
    // the wall time of a run, not its CPU time. The wall-time median is kept beside it.
    let time = |f: &mut dyn FnMut()| timed(repeat, raw_bytes, thread_cpu_s, f);
    let mut sink = Vec::new();
    let zstd_encode = time(&mut || {
        for p in planes {
            std::hint::black_box(zstd::bulk::compress(p, TENSOR_LEVEL).expect("zstd"));
        }
    });
    let rans_encode = time(&mut || {
        for p in planes {
            sink.clear();
            entropy::encode(p, &mut sink);
            std::hint::black_box(&sink);
        }
    });
    let mut out = vec![0u8; planes.iter().map(Vec::len).max().unwrap_or(0)];
    let mut dctx = zstd::bulk::Decompressor::new().expect("zstd context");
    let zstd_decode = time(&mut || {
        for (p, z) in planes.iter().zip(&zstd_out) {
            let n = dctx
                .decompress_to_buffer(z, &mut out[..p.len()])
                .expect("zstd");
            assert_eq!(n, p.len());
        }
    });
    let rans_decode = time(&mut || {
        for (p, r) in planes.iter().zip(&rans_out) {
            entropy::decode(r, &mut out[..p.len()]).expect("rans");
            std::hint::black_box(&out);
        }
    });
    for (p, r) in planes.iter().zip(&rans_out) {
        entropy::decode(r, &mut out[..p.len()]).expect("rans");
        assert!(
            out[..p.len()] == p[..],
            "rANS round trip differs in {class}"
        );
    }
    Row {
        class,
        planes: planes.len(),
        raw_bytes,
        entropy_bytes: (entropy_bits / 8.0).ceil() as u64,
        zstd_bytes,
        rans_bytes,
        best_bytes,
        rans_wins,
        zstd_encode,
        rans_encode,
        zstd_decode,
        rans_decode,
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<44} {:>6} {:>10} {:>7} {:>7} {:>7} {:>7} {:>5} {:>8} {:>8} {:>8} {:>8}",
        "planes (bits per byte)",
        "count",
        "raw MB",
        "H0",
        "zstd",
        "rANS",
        "best",
        "rANS#",
        "zst enc",
        "rANS enc",
        "zst dec",
        "rANS dec"
    );
    for r in rows {
        let bpb = |b: u64| 8.0 * b as f64 / r.raw_bytes.max(1) as f64;
        println!(
            "{:<44} {:>6} {:>10.2} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>5} {:>8.0} {:>8.0} {:>8.0} {:>8.0}",
            r.class,
            r.planes,
            r.raw_bytes as f64 / 1e6,
            bpb(r.entropy_bytes),
            bpb(r.zstd_bytes),
            bpb(r.rans_bytes),
            bpb(r.best_bytes),
            r.rans_wins,
            r.zstd_encode.cpu_mb_s,
            r.rans_encode.cpu_mb_s,
            r.zstd_decode.cpu_mb_s,
            r.rans_decode.cpu_mb_s
        );
    }
    println!(
        "H0 = order-0 entropy; best = per plane the smallest of raw, zstd, rANS; rANS# = planes \
         where rANS is smallest; speeds in MB/s of plane bytes over the median thread CPU time \
         (one thread; the JSON has wall-time medians too)"
    );
}
