//! `neurstore`: the command-line front end of the store.

mod embed;
mod output;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use neurstore::{BaseChoice, Mode, PutOptions, Store};

use crate::output::{Bar, Printer};

/// A storage engine for deep learning models: stores each distinct tensor once, compressed,
/// and gives every model back byte for byte.
#[derive(Parser)]
#[command(name = "neurstore", version, about)]
struct Cli {
    /// Store directory [default: $NEURSTORE_DIR, else ~/.local/share/neurstore]
    #[arg(long, global = true, env = "NEURSTORE_DIR")]
    store: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Worker threads for compression and decompression [default: all cores].
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an empty store.
    Init,
    /// Import a safetensors file or a model directory as NAME.
    Put {
        /// Name of the new model.
        name: String,
        /// A .safetensors file or a Hugging Face style model directory.
        path: PathBuf,
        /// Metadata to record, as KEY=VALUE (repeatable).
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
        /// Keep every tensor bit-exact (the default).
        #[arg(long, conflicts_with_all = ["tolerance", "rel_tolerance"])]
        lossless: bool,
        /// Keep every float element within this absolute error (e.g. 1e-4).
        #[arg(long, value_name = "X", conflicts_with = "rel_tolerance")]
        tolerance: Option<f64>,
        /// Keep every float element within this fraction of its tensor's RMS (e.g. 1e-3).
        #[arg(long, value_name = "X")]
        rel_tolerance: Option<f64>,
        /// Where delta bases come from: `auto` (similarity search), `none`, or a model NAME whose
        /// tensors are paired by name first.
        #[arg(long, value_name = "NAME|auto|none", default_value = "auto")]
        base: String,
        /// Longest chain of deltas a tensor may end (1 to 64).
        #[arg(long, value_name = "N", default_value_t = 2)]
        max_chain_depth: u32,
        /// Report ratio, bits per weight and max error per tensor without writing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write model NAME back out: a safetensors file, or a directory for directory models.
    Get {
        /// Model name.
        name: String,
        /// Output file or directory.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// List models.
    Ls,
    /// Show a model's files and tensors.
    Info {
        /// Model name.
        name: String,
    },
    /// Remove a model (its unshared space returns with `gc`).
    Rm {
        /// Model name.
        name: String,
    },
    /// Return the space of removed models and interrupted writes (a format-1 store is
    /// upgraded to format 2 on the way).
    Gc,
    /// Rewrite a format-1 store in format 2.
    Upgrade,
    /// Rebuild a lost or damaged catalog from the packs alone (the old one is kept, renamed).
    Recover,
    /// Read, checksum and decode everything; exit non-zero if anything is wrong.
    Verify,
    /// Show store-wide sizes and counts.
    Stats,
    /// Print sentence embeddings of texts, computed by BERT model NAME on its compressed weights.
    Embed(embed::EmbedRequest),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", output::sentence(&e));
            ExitCode::FAILURE
        }
    }
}

fn default_store() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME")
        .context("HOME is not set; pass --store DIR or set NEURSTORE_DIR")?;
    Ok(Path::new(&home).join(".local/share/neurstore"))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(n) = cli.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting up threads")?;
    }
    let root = match cli.store {
        Some(dir) => dir,
        None => default_store()?,
    };
    let out = Printer { json: cli.json };
    let bar = Bar::new(!cli.json);
    match cli.command {
        Command::Init => {
            Store::init(&root)?;
            out.init(&root);
        }
        Command::Put {
            name,
            path,
            meta,
            lossless: _,
            tolerance,
            rel_tolerance,
            base,
            max_chain_depth,
            dry_run,
        } => {
            let mut options = PutOptions {
                mode: match (tolerance, rel_tolerance) {
                    (Some(t), _) => Mode::Absolute(t),
                    (None, Some(r)) => Mode::Relative(r),
                    (None, None) => Mode::Lossless,
                },
                base: match base.as_str() {
                    "auto" => BaseChoice::Auto,
                    "none" => BaseChoice::None,
                    model => BaseChoice::Model(model.to_string()),
                },
                max_chain_depth,
                dry_run,
                ..PutOptions::default()
            };
            for kv in meta {
                let Some((k, v)) = kv.split_once('=') else {
                    bail!("--meta takes KEY=VALUE, got {kv:?}");
                };
                options
                    .metadata
                    .insert(k.to_string(), serde_json::Value::String(v.to_string()));
            }
            let store = if dry_run {
                Store::open(&root)?
            } else {
                Store::open_writer(&root)?
            };
            let report = store.put(&name, &path, &options, &bar)?;
            out.put(&report);
        }
        Command::Get { name, output } => {
            let store = Store::open(&root)?;
            let report = store.get(&name, &output, &bar)?;
            out.get(&report);
        }
        Command::Ls => out.ls(&Store::open(&root)?.list()?),
        Command::Info { name } => out.info(&Store::open(&root)?.info(&name)?),
        Command::Rm { name } => out.rm(&Store::open_writer(&root)?.remove(&name)?),
        Command::Gc => {
            out.gc(&Store::open_writer(&root)?.gc(&bar)?);
        }
        Command::Upgrade => {
            let store = Store::open_writer(&root)?;
            let was = store.format_version();
            let report = store.upgrade(&bar)?;
            if was == 2 {
                eprintln!("the store is already in format 2; nothing to do");
            }
            out.gc(&report);
        }
        Command::Recover => {
            let r = Store::recover(&root)?;
            out.recover(&r);
            if !r.lost_models.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Verify => {
            let report = Store::open(&root)?.verify(&bar)?;
            out.verify(&report);
            if !report.problems.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Stats => out.stats(&Store::open(&root)?.stats()?),
        Command::Embed(request) => out.embed(&embed::embed(&root, &request, &bar)?),
    }
    Ok(ExitCode::SUCCESS)
}
