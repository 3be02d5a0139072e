//! `neurstore-kernel`: linear layers computed on quantized weights (`neurstore_core::kernel`)
//! against a dense f32 GEMM (the `gemm` crate, one thread) on MiniLM's real weights, with the
//! compressed forms built through the store's own bounded codec. One thread on both sides;
//! dense and compressed repetitions are interleaved and medians reported.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use neurstore_core::codec::quantized;
use neurstore_core::dtype::DType;
use neurstore_core::kernel::{BaseMatrix, QuantMatrix};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "neurstore-kernel", version, about)]
struct Cli {
    /// Base model (safetensors, f32).
    #[arg(long, default_value = "data/all-MiniLM-L6-v2/model.safetensors")]
    model: PathBuf,
    /// A full fine-tune of the base model.
    #[arg(long, default_value = "data/w1/role-step150.safetensors")]
    variant: PathBuf,
    /// Write every number here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Smoke run: fewer repetitions, batches 1 and 32.
    #[arg(long)]
    quick: bool,
}

/// One weight, all its forms.
struct Layer {
    name: String,
    rows: usize,
    cols: usize,
    dense: Vec<f32>,
    bias: Vec<f32>,
    forms: Vec<Form>,
}

struct Form {
    label: &'static str,
    q: QuantMatrix,
    /// W as the store decodes it (f64 formula), for the honesty check.
    decoded: Vec<f32>,
}

#[derive(Serialize)]
struct Row {
    shape: String,
    tensor: String,
    batch: usize,
    form: String,
    code_bits: u32,
    exceptions: usize,
    held_pct: f64,
    held_pct_with_base: f64,
    time_us: f64,
    dense_time_us: f64,
    speed_ratio: f64,
    max_rel_err: f64,
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn bytes_of(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A tensor's name, shape and elements.
type Tensor = (String, Vec<u64>, Vec<f32>);

/// Every f32 tensor of a safetensors file by name, with its shape.
fn load(path: &Path) -> Result<Vec<Tensor>> {
    let file = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let header = neurstore_core::safetensors::parse(&file)
        .with_context(|| format!("parsing {}", path.display()))?;
    let data = &file[header.data_start as usize..];
    Ok(header
        .tensors
        .iter()
        .filter(|t| t.dtype == DType::F32)
        .map(|t| {
            (
                t.name.clone(),
                t.shape.clone(),
                f32s(&data[t.start as usize..t.end as usize]),
            )
        })
        .collect())
}

/// A bounded blob's codes as a matrix (with `base` when the blob has one), and the store's
/// own reconstruction of it.
fn quant(
    target: &[f32],
    base: Option<(&[f32], Arc<BaseMatrix>)>,
    tol: f64,
    rows: usize,
    cols: usize,
) -> Result<(QuantMatrix, Vec<f32>)> {
    let raw = bytes_of(target);
    let base_raw = base.as_ref().map(|(b, _)| bytes_of(b));
    let blob = quantized::encode(DType::F32, &raw, base_raw.as_deref(), tol, 1)?;
    let codes = quantized::decode_codes(DType::F32, &blob.bytes, raw.len())?;
    let mut back = vec![0u8; raw.len()];
    quantized::decode_into(DType::F32, &blob.bytes, base_raw.as_deref(), &mut back)?;
    let exceptions: Vec<(usize, f32)> = codes
        .exceptions
        .iter()
        .map(|&(i, v)| (i, v as f32))
        .collect();
    let q = QuantMatrix::new(
        rows,
        cols,
        codes.step,
        &codes.codes,
        &exceptions,
        base.map(|(_, b)| b),
    )?;
    Ok((q, f32s(&back)))
}

fn build(
    name: &str,
    rows: usize,
    cols: usize,
    w: Vec<f32>,
    base: &[f32],
    bias: Vec<f32>,
) -> Result<Layer> {
    let mut forms = Vec::new();
    for (label, tol) in [("quant 1e-3", 1e-3), ("quant 1e-4", 1e-4)] {
        let (q, decoded) = quant(&w, None, tol, rows, cols)?;
        forms.push(Form { label, q, decoded });
    }
    let dense_base = Arc::new(BaseMatrix::Dense(base.to_vec()));
    let (q, decoded) = quant(&w, Some((base, dense_base)), 1e-4, rows, cols)?;
    forms.push(Form {
        label: "delta/f32 base",
        q,
        decoded,
    });
    // The base quantized at 1e-4, the delta against the base as the store reconstructs it.
    let (qbase, base_back) = quant(base, None, 1e-4, rows, cols)?;
    let qbase = Arc::new(BaseMatrix::Quant(qbase));
    let (q, decoded) = quant(&w, Some((&base_back, qbase)), 1e-4, rows, cols)?;
    forms.push(Form {
        label: "delta/q16 base",
        q,
        decoded,
    });
    Ok(Layer {
        name: name.to_string(),
        rows,
        cols,
        dense: w,
        bias,
        forms,
    })
}

/// y = x·Wᵀ + bias with the `gemm` crate, one thread.
fn dense_linear(
    w: &[f32],
    rows: usize,
    cols: usize,
    x: &[f32],
    batch: usize,
    bias: &[f32],
    y: &mut [f32],
) {
    for yb in y.chunks_exact_mut(rows) {
        yb.copy_from_slice(bias);
    }
    // SAFETY: y is batch × rows, x batch × cols, w rows × cols, all row-major; rhs = Wᵀ.
    unsafe {
        gemm::gemm(
            batch,
            rows,
            cols,
            y.as_mut_ptr(),
            1,
            rows as isize,
            true,
            x.as_ptr(),
            1,
            cols as isize,
            w.as_ptr(),
            cols as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of each closure, repetitions interleaved; each timing covers `inner` calls.
fn time_interleaved(reps: usize, inner: usize, fs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let mut times = vec![Vec::new(); fs.len()];
    for f in fs.iter_mut() {
        f(); // warm up
    }
    for _ in 0..reps {
        for (f, t) in fs.iter_mut().zip(&mut times) {
            let start = Instant::now();
            for _ in 0..inner {
                f();
            }
            t.push(start.elapsed().as_secs_f64() / inner as f64);
        }
    }
    times.into_iter().map(median).collect()
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let scale = b
        .iter()
        .fold(0f64, |m, &v| m.max(v.abs() as f64))
        .max(1e-30);
    a.iter()
        .zip(b)
        .fold(0f64, |m, (&p, &q)| m.max((p as f64 - q as f64).abs()))
        / scale
}

fn input(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn pct(part: usize, whole: usize) -> f64 {
    100.0 * part as f64 / whole as f64
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    pool.install(|| run(&cli))
}

fn run(cli: &Cli) -> Result<()> {
    let base = load(&cli.model)?;
    let variant = load(&cli.variant)?;
    let find = |set: &[Tensor], name: &str| {
        set.iter()
            .find(|t| t.0 == name)
            .map(|t| (t.1.clone(), t.2.clone()))
    };
    let mut layers = Vec::new();
    for (name, shape, _) in base
        .iter()
        .filter(|t| t.0.starts_with("encoder.layer.") && t.1.len() == 2)
    {
        let (vshape, w) = find(&variant, name).with_context(|| format!("{name} not in variant"))?;
        if vshape != *shape {
            bail!("{name}: shapes differ");
        }
        let bias_name = name.replace(".weight", ".bias");
        let bias = find(&variant, &bias_name).map(|b| b.1).context("no bias")?;
        let (rows, cols) = (shape[0] as usize, shape[1] as usize);
        let b = find(&base, name).unwrap().1;
        layers.push(build(name, rows, cols, w, &b, bias)?);
    }
    eprintln!("{} linear weights built", layers.len());
    let (reps, batches) = if cli.quick {
        (5, vec![1, 32])
    } else {
        (15, vec![1, 8, 32, 64, 128])
    };
    let mut rows_out = Vec::new();
    println!(
        "{:<10} {:>5}  {:<15} {:>4} {:>7} {:>9} {:>10} {:>10} {:>7} {:>9}",
        "shape",
        "batch",
        "form",
        "bits",
        "held%",
        "+base%",
        "time µs",
        "dense µs",
        "speed",
        "rel err"
    );
    let picks = ["attention.self.query", "intermediate.dense", "output.dense"];
    for pick in picks {
        let name = format!("encoder.layer.0.{pick}.weight");
        let l = layers
            .iter()
            .find(|l| l.name == name)
            .context("layer 0 weight missing")?;
        let (rows, cols) = (l.rows, l.cols);
        for &batch in &batches {
            let x = input(batch * cols, batch as u64);
            let mut yd = vec![0f32; batch * rows];
            let mut ys: Vec<Vec<f32>> = l.forms.iter().map(|_| vec![0f32; batch * rows]).collect();
            let inner = (2_000_000 / (batch * rows * cols)).max(1);
            let mut fs: Vec<Box<dyn FnMut()>> = Vec::new();
            fs.push(Box::new(|| {
                dense_linear(&l.dense, rows, cols, &x, batch, &l.bias, &mut yd)
            }));
            for (f, y) in l.forms.iter().zip(ys.iter_mut()) {
                let x = &x;
                fs.push(Box::new(move || f.q.linear(x, batch, Some(&l.bias), y)));
            }
            let mut refs: Vec<&mut dyn FnMut()> = fs
                .iter_mut()
                .map(|f| &mut **f as &mut dyn FnMut())
                .collect();
            let t = time_interleaved(reps, inner, &mut refs);
            drop(fs);
            for ((f, y), &tf) in l.forms.iter().zip(&ys).zip(&t[1..]) {
                let mut yref = vec![0f32; batch * rows];
                dense_linear(&f.decoded, rows, cols, &x, batch, &l.bias, &mut yref);
                let dense_bytes = rows * cols * 4;
                let with_base = f.q.held_bytes() + f.q.base().map_or(0, |b| b.held_bytes());
                let row = Row {
                    shape: format!("{rows}x{cols}"),
                    tensor: name.clone(),
                    batch,
                    form: f.label.to_string(),
                    code_bits: f.q.code_bits(),
                    exceptions: f.q.exception_count(),
                    held_pct: pct(f.q.held_bytes(), dense_bytes),
                    held_pct_with_base: pct(with_base, dense_bytes),
                    time_us: tf * 1e6,
                    dense_time_us: t[0] * 1e6,
                    speed_ratio: t[0] / tf,
                    max_rel_err: rel_err(y, &yref),
                };
                print_row(&row);
                rows_out.push(row);
            }
        }
    }
    let sweep = sweep(&layers, reps)?;
    if let Some(path) = &cli.json {
        let doc = serde_json::json!({ "shapes": rows_out, "sweep_batch1": sweep });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}

fn print_row(r: &Row) {
    println!(
        "{:<10} {:>5}  {:<15} {:>4} {:>6.1}% {:>8.1}% {:>10.1} {:>10.1} {:>6.2}x {:>9.1e}",
        r.shape,
        r.batch,
        r.form,
        r.code_bits,
        r.held_pct,
        r.held_pct_with_base,
        r.time_us,
        r.dense_time_us,
        r.speed_ratio,
        r.max_rel_err
    );
}

/// Batch 1 through all encoder linear weights in sequence (a forward pass's worth of weights).
fn sweep(layers: &[Layer], reps: usize) -> Result<Vec<Row>> {
    let xs: Vec<Vec<f32>> = layers.iter().map(|l| input(l.cols, 7)).collect();
    let mut ys: Vec<Vec<f32>> = layers.iter().map(|l| vec![0f32; l.rows]).collect();
    let nforms = layers[0].forms.len();
    let mut times = vec![Vec::new(); nforms + 1];
    for _ in 0..reps.max(7) {
        for (k, t) in times.iter_mut().enumerate() {
            let start = Instant::now();
            for ((l, x), y) in layers.iter().zip(&xs).zip(ys.iter_mut()) {
                match k {
                    0 => dense_linear(&l.dense, l.rows, l.cols, x, 1, &l.bias, y),
                    _ => l.forms[k - 1].q.linear(x, 1, Some(&l.bias), y),
                }
            }
            t.push(start.elapsed().as_secs_f64());
        }
    }
    let t: Vec<f64> = times.into_iter().map(median).collect();
    let dense_bytes: usize = layers.iter().map(|l| l.rows * l.cols * 4).sum();
    println!(
        "\nbatch-1 sweep over {} weights ({:.1} MB f32):",
        layers.len(),
        dense_bytes as f64 / 1e6
    );
    let mut out = Vec::new();
    for k in 0..nforms {
        let held: usize = layers.iter().map(|l| l.forms[k].q.held_bytes()).sum();
        let base: usize = layers
            .iter()
            .map(|l| l.forms[k].q.base().map_or(0, |b| b.held_bytes()))
            .sum();
        let bits: Vec<u32> = layers.iter().map(|l| l.forms[k].q.code_bits()).collect();
        let row = Row {
            shape: "all".into(),
            tensor: format!("{} weights", layers.len()),
            batch: 1,
            form: layers[0].forms[k].label.to_string(),
            code_bits: *bits.iter().max().unwrap(),
            exceptions: layers.iter().map(|l| l.forms[k].q.exception_count()).sum(),
            held_pct: pct(held, dense_bytes),
            held_pct_with_base: pct(held + base, dense_bytes),
            time_us: t[k + 1] * 1e6,
            dense_time_us: t[0] * 1e6,
            speed_ratio: t[0] / t[k + 1],
            max_rel_err: f64::NAN,
        };
        print_row(&row);
        out.push(row);
    }
    Ok(out)
}
