//! `neurstore-bench`: whole-workload benchmarks of NeurStore, each measured side by side with
//! its baselines in the same run, so that ratios (not absolute times) carry the result.

mod io_bench;
mod load_bench;
mod machine;
mod report;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "neurstore-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Import/export/load speed of a safetensors file against a plain copy and the safetensors
    /// crate, plus the lossless compression ratio. Everything runs from the page cache.
    Io {
        /// Safetensors file to measure (repeat the flag to measure several files in one run).
        #[arg(long = "model", required = true)]
        models: Vec<PathBuf>,
        /// Repeats of every measurement; the median is reported.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Directory for the temporary copies and stores (default: the system temp directory).
        /// Put it on the file system you want to measure.
        #[arg(long)]
        scratch: Option<PathBuf>,
    },
    /// Load speed: a lossless model and a bounded fine-tune (base cold, base cached, one thread
    /// and all) against the safetensors crate, base cache counters, and the peak memory of
    /// `neurstore get` (run as a child process; build `neurstore-cli` in the same profile).
    Load {
        /// The base model (safetensors file), stored losslessly and bounded.
        #[arg(long)]
        model: PathBuf,
        /// Fine-tunes of it (same tensor names and shapes), stored bounded against it; the first
        /// is timed, all are loaded once through one handle for the cache counters.
        #[arg(long = "finetune", required = true)]
        finetunes: Vec<PathBuf>,
        /// Absolute bound for the bounded stores.
        #[arg(long, default_value_t = 1e-4)]
        tolerance: f64,
        /// Repeats of every measurement; the median is reported.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Directory for the temporary stores (default: the system temp directory).
        #[arg(long)]
        scratch: Option<PathBuf>,
    },
    /// Runs a command and prints its peak RSS in KiB and its wall seconds (used by `load`: a
    /// fresh small process, so the child's peak is not inflated by the benchmark's own).
    #[command(hide = true)]
    PeakRss {
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Lossless compression ratio of the store on each file (one `put` into a fresh store).
    Ratio {
        /// Safetensors file or model directory (repeat the flag for several).
        #[arg(long = "model", required = true)]
        models: Vec<PathBuf>,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Directory for the temporary stores (default: the system temp directory).
        #[arg(long)]
        scratch: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Io {
            models,
            repeat,
            json,
            scratch,
        } => {
            let machine = machine::Machine::probe();
            println!("{}", machine.describe());
            let mut results = Vec::new();
            for model in &models {
                let result = io_bench::run(model, repeat, scratch.as_deref())?;
                println!("\n{}", report::io_table(&result));
                results.push(result);
            }
            let machine = machine.finish();
            println!("\n{}", machine.load_line());
            if let Some(path) = json {
                report::write_json(&path, &report::IoRun { machine, results })?;
                println!("JSON written to {}", path.display());
            }
        }
        Command::Load {
            model,
            finetunes,
            tolerance,
            repeat,
            json,
            scratch,
        } => {
            let machine = machine::Machine::probe();
            println!("{}", machine.describe());
            let scratch = scratch.unwrap_or_else(std::env::temp_dir);
            let result = load_bench::run(&model, &finetunes, tolerance, repeat, &scratch)?;
            println!("\n{}", load_bench::table(&result));
            let machine = machine.finish();
            println!("{}", machine.load_line());
            if let Some(path) = json {
                report::write_json(&path, &(machine, result))?;
                println!("JSON written to {}", path.display());
            }
        }
        Command::PeakRss { command } => {
            let (kib, seconds) = load_bench::child_peak(
                std::process::Command::new(&command[0]).args(&command[1..]),
            )?;
            println!("{kib} {seconds}");
        }
        Command::Ratio {
            models,
            json,
            scratch,
        } => {
            let mut results = Vec::new();
            for model in &models {
                let result = io_bench::ratio_only(model, scratch.as_deref())?;
                println!("{}\n", report::ratio_table(&result));
                results.push(result);
            }
            if let Some(path) = json {
                report::write_json(&path, &results)?;
                println!("JSON written to {}", path.display());
            }
        }
    }
    Ok(())
}
