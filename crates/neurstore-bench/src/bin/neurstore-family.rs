//! `neurstore-family`: model families (a base and its fine-tunes, a checkpoint series, unrelated
//! models of equal shapes) put into fresh stores in every mode, measured in one run side by side
//! with the NeurStore paper's storage rule on the same models: family compression ratio (every
//! stored byte counted), ingest speed on one core, index search cost, delta counts, the accuracy
//! of bounded reconstructions, and the similarity index's recall and scaling.

mod family;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use neurstore::{BaseChoice, Mode};
use serde::Serialize;

use family::eval::{Evaluator, Judgement};
use family::ours::{self, FamilyRun, load_average, mode_label};
use family::paper::{PaperStats, PaperStore};
use family::recall::{self, ScalingPoint, StoreRecall};
use family::table::{Table, mb, opt};
use family::workloads::{self, Workload};

#[derive(Parser)]
#[command(name = "neurstore-family", version, about)]
struct Cli {
    /// Workloads to run, in this order.
    #[arg(long, value_delimiter = ',', default_value = "w1,w2,w3")]
    workloads: Vec<String>,
    /// Directory holding all-MiniLM-L6-v2/, w1/, w2/ and w3/.
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Smoke run: W1 base + 3 fine-tunes, W2 6 checkpoints, small scaling sizes.
    #[arg(long)]
    fast: bool,
    /// Absolute tolerances of the bounded modes (lossless always runs first).
    #[arg(long, value_delimiter = ',', default_value = "1e-3,3e-4,1e-4,1e-5")]
    tolerances: Vec<f64>,
    /// Worker threads for the store (rayon); 1 measures one core.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Directory for the temporary stores (default: the system temp directory).
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Skip the accuracy evaluations (no Python).
    #[arg(long)]
    no_eval: bool,
    /// Python interpreter with torch, for the evaluation scripts.
    #[arg(long, default_value = "/usr/bin/python3")]
    python: PathBuf,
    /// Directory of eval_w1.py and eval_w2.py.
    #[arg(long, default_value = "scripts/workloads")]
    scripts: PathBuf,
    /// Tolerance at which the paper baseline's reconstructions are also judged.
    #[arg(long, default_value_t = 1e-4)]
    paper_eval: f64,
    /// Seed of the paper baseline's random base promotions.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Auto/None pairs timed for the W3 check (median reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    w3_repeats: u32,
    /// Graph sizes of the synthetic index scaling check.
    #[arg(long, value_delimiter = ',', default_value = "1000,4000,16000,64000")]
    scaling: Vec<usize>,
    /// Skip the synthetic index scaling check.
    #[arg(long)]
    no_scaling: bool,
    /// Queries per size in the scaling check.
    #[arg(long, default_value_t = 200)]
    queries: usize,
}

#[derive(Serialize)]
struct Machine {
    cpu: String,
    logical_cpus: usize,
    store_threads: usize,
    load_before: Option<f64>,
    load_after: Option<f64>,
}

#[derive(Serialize)]
struct PaperRun {
    workload: String,
    tolerance: f64,
    seed: u64,
    stats: PaperStats,
    family_ratio: f64,
    /// At the formula's widths (the bound broken where codes overflow them).
    family_ratio_formula: f64,
    ours_ratio: f64,
    ours_over_paper: f64,
    ours_over_paper_formula: f64,
    judgements: Vec<Judgement>,
}

#[derive(Serialize)]
struct W3Check {
    mode: String,
    auto_stored_bytes: u64,
    none_stored_bytes: u64,
    bytes_auto_over_none: f64,
    auto_seconds_median: f64,
    none_seconds_median: f64,
    time_auto_over_none: f64,
    auto_seconds: Vec<f64>,
    none_seconds: Vec<f64>,
}

#[derive(Serialize)]
struct Report {
    command: Vec<String>,
    machine: Machine,
    runs: Vec<FamilyRun>,
    paper: Vec<PaperRun>,
    w3_check: Vec<W3Check>,
    store_recall: Option<StoreRecall>,
    scaling: Vec<ScalingPoint>,
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn modes(tolerances: &[f64]) -> Vec<Mode> {
    std::iter::once(Mode::Lossless)
        .chain(tolerances.iter().map(|&t| Mode::Absolute(t)))
        .collect()
}

struct Bench {
    cli: Cli,
    scratch: PathBuf,
    evaluator: Evaluator,
    report: Report,
}

impl Bench {
    fn run_workload(&mut self, w: &Workload) -> Result<()> {
        let bytes = workloads::warm_cache(w)?;
        eprintln!(
            "{}: {} models, {:.0} MB of files",
            w.name,
            w.models.len(),
            bytes as f64 / 1e6
        );
        let last = w.models.len() - 1;
        for mode in modes(&self.cli.tolerances) {
            let want_recall = w.name == "w1" && mode == Mode::Lossless && last > 0;
            let mut recall = None;
            let (mut run, store, dir) =
                ours::run_family(w, mode, BaseChoice::Auto, &self.scratch, |i, root| {
                    if want_recall && i == last {
                        let m = &w.models[last];
                        recall = Some(recall::store_recall(root, &m.name, &m.path)?);
                    }
                    Ok(())
                })?;
            eprintln!(
                "  {} {}: ratio {:.2}x, {:.0} MB/s, {} deltas",
                w.name, run.mode, run.family_ratio, run.ingest_mb_s, run.delta_tensors
            );
            if recall.is_some() {
                self.report.store_recall = recall;
            }
            if mode != Mode::Lossless && !self.cli.no_eval {
                run.judgements = ours::judge_family(w, &store, dir.path(), &self.evaluator)?;
            }
            drop(store);
            drop(dir);
            if w.name == "w3" {
                self.w3_check(w, mode, &run)?;
            }
            self.report.runs.push(run);
        }
        for &tol in &self.cli.tolerances.clone() {
            self.paper(w, tol)?;
        }
        Ok(())
    }

    /// Stores W3 without delta search too, alternating with further Auto runs for the timing.
    fn w3_check(&mut self, w: &Workload, mode: Mode, auto: &FamilyRun) -> Result<()> {
        let mut auto_seconds = vec![auto.ingest_seconds];
        let mut none_seconds = Vec::new();
        let mut none_bytes = 0;
        for rep in 0..self.cli.w3_repeats {
            let (none, _, _) =
                ours::run_family(w, mode, BaseChoice::None, &self.scratch, |_, _| Ok(()))?;
            none_bytes = none.stored_bytes;
            none_seconds.push(none.ingest_seconds);
            if rep + 1 < self.cli.w3_repeats {
                let (again, _, _) =
                    ours::run_family(w, mode, BaseChoice::Auto, &self.scratch, |_, _| Ok(()))?;
                auto_seconds.push(again.ingest_seconds);
            }
        }
        let (a, n) = (median(&auto_seconds), median(&none_seconds));
        self.report.w3_check.push(W3Check {
            mode: mode_label(mode),
            auto_stored_bytes: auto.stored_bytes,
            none_stored_bytes: none_bytes,
            bytes_auto_over_none: auto.stored_bytes as f64 / none_bytes as f64,
            auto_seconds_median: a,
            none_seconds_median: n,
            time_auto_over_none: a / n,
            auto_seconds,
            none_seconds,
        });
        Ok(())
    }

    fn paper(&mut self, w: &Workload, tol: f64) -> Result<()> {
        let judge = !self.cli.no_eval && tol == self.cli.paper_eval;
        let mut store = PaperStore::new(tol, self.cli.seed);
        let mut judgements = Vec::new();
        let dir = tempfile::tempdir_in(&self.scratch)?;
        for (i, m) in w.models.iter().enumerate() {
            let file = std::fs::read(&m.path)?;
            let recon = store.add(&file, i == 0, judge && m.judge.is_some())?;
            if let (Some(bytes), Some(j)) = (recon, &m.judge) {
                let path = dir.path().join(format!("{}.safetensors", m.name));
                std::fs::write(&path, bytes)?;
                judgements.push(self.evaluator.judge(&m.name, &path, j)?);
                std::fs::remove_file(&path).ok();
            }
        }
        let stats = store.stats();
        let family_ratio = stats.raw_bytes as f64 / stats.stored_bytes as f64;
        let family_ratio_formula = stats.raw_bytes as f64 / stats.stored_bytes_formula as f64;
        let ours_ratio = self
            .report
            .runs
            .iter()
            .find(|r| r.workload == w.name && r.tolerance == Some(tol) && r.base == "auto")
            .map_or(f64::NAN, |r| r.family_ratio);
        eprintln!("  {} paper abs {tol:.0e}: ratio {family_ratio:.2}x", w.name);
        self.report.paper.push(PaperRun {
            workload: w.name.clone(),
            tolerance: tol,
            seed: self.cli.seed,
            stats,
            family_ratio,
            family_ratio_formula,
            ours_ratio,
            ours_over_paper: ours_ratio / family_ratio,
            ours_over_paper_formula: ours_ratio / family_ratio_formula,
            judgements,
        });
        Ok(())
    }
}

fn print_tables(r: &Report) {
    let mut t = Table::new(
        "Families (fresh store per row, BaseChoice::Auto; ratio = raw / (packs + catalog))",
        &[
            "workload",
            "mode",
            "models",
            "raw MB",
            "stored MB",
            "family ratio",
            "ingest MB/s",
            "search µs/tensor",
            "delta tensors",
            "max error",
        ],
    );
    for run in &r.runs {
        t.row(vec![
            run.workload.clone(),
            run.mode.clone(),
            run.models.to_string(),
            mb(run.raw_bytes),
            mb(run.stored_bytes),
            format!("{:.2}x", run.family_ratio),
            format!("{:.0}", run.ingest_mb_s),
            opt(run.search_us_per_tensor, 0),
            run.delta_tensors.to_string(),
            format!("{:.2e}", run.max_error),
        ]);
    }
    t.print();

    let mut t = Table::new(
        "Paper's rule on the same models (every byte counted, bases included)",
        &[
            "workload",
            "tolerance",
            "paper MB",
            "paper ratio",
            "at formula widths",
            "ours ratio",
            "ours/paper",
            "ours/formula",
            "bases (promoted)",
            "deltas (b > standard)",
            "mean delta bits",
            "max error",
        ],
    );
    for p in &r.paper {
        t.row(vec![
            p.workload.clone(),
            format!("{:.0e}", p.tolerance),
            mb(p.stats.stored_bytes),
            format!("{:.2}x", p.family_ratio),
            format!("{:.2}x", p.family_ratio_formula),
            format!("{:.2}x", p.ours_ratio),
            format!("{:.2}", p.ours_over_paper),
            format!("{:.2}", p.ours_over_paper_formula),
            format!("{} ({})", p.stats.base_tensors, p.stats.promoted),
            format!(
                "{} ({})",
                p.stats.delta_tensors, p.stats.deltas_over_standard
            ),
            format!("{:.2}", p.stats.mean_delta_bits),
            format!("{:.2e}", p.stats.max_error),
        ]);
    }
    t.print();

    let mut t = Table::new(
        "Accuracy of bounded reconstructions (held-out sets)",
        &[
            "workload",
            "stored by",
            "model",
            "accuracy",
            "agreement",
            "accuracy change (pt)",
        ],
    );
    let ours = r.runs.iter().map(|run| {
        (
            run.workload.as_str(),
            format!("ours {}", run.mode),
            &run.judgements,
        )
    });
    let paper = r.paper.iter().map(|p| {
        (
            p.workload.as_str(),
            format!("paper abs {:.0e}", p.tolerance),
            &p.judgements,
        )
    });
    let mut summary = Table::new(
        "Accuracy summary (over the judged models)",
        &[
            "workload",
            "stored by",
            "models",
            "min agreement",
            "mean agreement",
            "worst accuracy change (pt)",
        ],
    );
    for (w, by, js) in ours.chain(paper) {
        for j in js.iter() {
            t.row(vec![
                w.to_string(),
                by.clone(),
                j.model.clone(),
                format!("{:.3}", j.accuracy),
                format!("{:.4}", j.agreement),
                format!("{:+.1}", j.accuracy_change * 100.0),
            ]);
        }
        if !js.is_empty() {
            let min = js.iter().map(|j| j.agreement).fold(1.0, f64::min);
            let mean = js.iter().map(|j| j.agreement).sum::<f64>() / js.len() as f64;
            let worst = js.iter().map(|j| j.accuracy_change).fold(0.0, f64::min);
            summary.row(vec![
                w.to_string(),
                by,
                js.len().to_string(),
                format!("{min:.4}"),
                format!("{mean:.4}"),
                format!("{:+.1}", worst * 100.0),
            ]);
        }
    }
    t.print();
    summary.print();

    let mut t = Table::new(
        "W3: delta search (Auto) against none (None), same models and mode",
        &[
            "mode",
            "Auto MB",
            "None MB",
            "bytes Auto/None",
            "Auto s (median)",
            "None s (median)",
            "time Auto/None",
        ],
    );
    for c in &r.w3_check {
        t.row(vec![
            c.mode.clone(),
            mb(c.auto_stored_bytes),
            mb(c.none_stored_bytes),
            format!("{:.4}", c.bytes_auto_over_none),
            format!("{:.2}", c.auto_seconds_median),
            format!("{:.2}", c.none_seconds_median),
            format!("{:.3}", c.time_auto_over_none),
        ]);
    }
    t.print();

    if let Some(s) = &r.store_recall {
        let mut t = Table::new(
            "Store index recall (W1 lossless, all but the last model stored; queries: the last)",
            &[
                "query model",
                "queries",
                "recall@1",
                "recall 1@4",
                "HNSW µs",
                "brute force µs",
                "mean bucket",
                "max bucket",
            ],
        );
        t.row(vec![
            s.model.clone(),
            s.queries.to_string(),
            format!("{:.3}", s.recall_at_1),
            format!("{:.3}", s.recall_1_at_4),
            format!("{:.1}", s.hnsw_us),
            format!("{:.1}", s.brute_us),
            format!("{:.1}", s.mean_bucket),
            s.max_bucket.to_string(),
        ]);
        t.print();
    }

    let mut t = Table::new(
        "HNSW scaling (128-d clustered vectors, default parameters, one thread)",
        &[
            "N",
            "build s",
            "HNSW µs/query",
            "scan µs/query",
            "brute_force µs/query",
            "scan/HNSW",
            "recall@1",
        ],
    );
    for p in &r.scaling {
        t.row(vec![
            p.n.to_string(),
            format!("{:.2}", p.build_seconds),
            format!("{:.1}", p.hnsw_us),
            format!("{:.1}", p.scan_us),
            format!("{:.1}", p.brute_force_us),
            format!("{:.1}", p.scan_us / p.hnsw_us),
            format!("{:.3}", p.recall_at_1),
        ]);
    }
    t.print();
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.threads == 0 {
        bail!("--threads must be at least 1");
    }
    if cli.tolerances.iter().any(|t| !(t.is_finite() && *t > 0.0)) {
        bail!("--tolerances must be positive numbers such as 1e-4");
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(cli.threads)
        .build_global()
        .context("configuring the thread pool")?;
    let mut families = Vec::new();
    for name in &cli.workloads {
        families.push(match name.as_str() {
            "w1" => workloads::w1(&cli.data, cli.fast)?,
            "w2" => workloads::w2(&cli.data, cli.fast)?,
            "w3" => workloads::w3(&cli.data)?,
            other => bail!("unknown workload {other:?}; use w1, w2 or w3"),
        });
    }
    let scratch = cli.scratch.clone().unwrap_or_else(std::env::temp_dir);
    let evaluator = Evaluator {
        python: cli.python.clone(),
        scripts: cli.scripts.clone(),
        data: cli.data.clone(),
    };
    let machine = Machine {
        cpu: cpu_name(),
        logical_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        store_threads: cli.threads,
        load_before: load_average(),
        load_after: None,
    };
    eprintln!(
        "{} ({} logical CPUs), store on {} thread(s), load average {}",
        machine.cpu,
        machine.logical_cpus,
        cli.threads,
        opt(machine.load_before, 2)
    );
    let mut bench = Bench {
        report: Report {
            command: std::env::args().collect(),
            machine,
            runs: Vec::new(),
            paper: Vec::new(),
            w3_check: Vec::new(),
            store_recall: None,
            scaling: Vec::new(),
        },
        cli,
        scratch,
        evaluator,
    };
    for w in &families {
        bench.run_workload(w)?;
    }
    let sizes: Vec<usize> = if bench.cli.no_scaling {
        Vec::new()
    } else if bench.cli.fast {
        bench
            .cli
            .scaling
            .iter()
            .copied()
            .filter(|&n| n <= 4000)
            .collect()
    } else {
        bench.cli.scaling.clone()
    };
    if !sizes.is_empty() {
        eprintln!("index scaling: {sizes:?}");
        bench.report.scaling = recall::scaling(&sizes, bench.cli.queries, bench.cli.seed);
    }
    bench.report.machine.load_after = load_average();
    print_tables(&bench.report);
    println!(
        "\nload average: {} at start, {} at end (2 shared cores: above ~0.5, expect noise in times)",
        opt(bench.report.machine.load_before, 2),
        opt(bench.report.machine.load_after, 2)
    );
    if let Some(path) = &bench.cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&bench.report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
