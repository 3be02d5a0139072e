//! `neurstore`: the command-line front end of the store.

mod embed;
mod output;
mod text;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use neurstore::{BaseChoice, LockWait, Mode, PutOptions, Store, StoreOptions};

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
    /// Worker threads for compression and decompression [default: all cores; at most that].
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// For commands that write (put, rm, gc, upgrade): wait for another writer to finish,
    /// up to SECONDS, or as long as it takes when no value is given [default: fail at once,
    /// naming the process that holds the store].
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "inf"
    )]
    wait: Option<f64>,
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
        /// Accept a tolerance at or above a tensor's largest magnitude (that tensor is then
        /// stored as a constant).
        #[arg(long)]
        force: bool,
        /// Follow symbolic links in the model directory that point outside it (by default
        /// only links that stay inside it, or a Hugging Face cache snapshot's links into its
        /// blobs/, are followed).
        #[arg(long)]
        follow_symlinks: bool,
    },
    /// Write model NAME back out as stored (a file for a single-file model, a directory for a
    /// directory model), or converted to safetensors or a PyTorch checkpoint.
    Get {
        /// Model name.
        name: String,
        /// Output file or directory (a new path, or an empty directory). An output ending in
        /// .safetensors, .pt, .pth or .bin asks for that format unless the model already is one.
        #[arg(short, long)]
        output: PathBuf,
        /// Convert the model's tensors to this format: safetensors or pt.
        #[arg(long, value_parser = parse_output_format)]
        format: Option<neurstore::OutputFormat>,
        /// Replace an existing output file, and accept a conversion that loses information.
        #[arg(long)]
        force: bool,
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
    /// Bring the store to this version's format: the catalog's schema, and a format-1 store
    /// rewritten in format 2 (commands that only read never change either).
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
            // A closed pipe is the reader's choice (`| head`), not an error.
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            let line = format!("error: {}", text::esc(&output::sentence(&e)));
            let _ = writeln!(std::io::stderr(), "{line}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn default_store() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME")
        .context("HOME is not set; pass --store DIR or set NEURSTORE_DIR")?;
    Ok(Path::new(&home).join(".local/share/neurstore"))
}

/// `--threads N`, clamped to the cores (with a note), applied to the global pool.
fn set_threads(requested: Option<usize>) -> anyhow::Result<()> {
    let Some(n) = requested else { return Ok(()) };
    let threads = neurstore::threads(n)?;
    if let Some(note) = &threads.note {
        let _ = writeln!(std::io::stderr(), "note: {note}");
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.count)
        .build_global()
        .context("setting up threads")
}

/// The store and what a command was doing with it, for errors.
struct Target<'a> {
    root: &'a Path,
    wait: LockWait,
}

impl Target<'_> {
    fn reader(&self) -> anyhow::Result<Store> {
        Ok(Store::open(self.root).map_err(|e| neurstore::in_store(e, self.root, "open"))?)
    }

    fn writer(&self) -> anyhow::Result<Store> {
        let options = StoreOptions {
            write: true,
            wait: self.wait,
            ..Default::default()
        };
        Ok(Store::open_with(self.root, options)
            .map_err(|e| neurstore::in_store(e, self.root, "open for writing"))?)
    }

    /// Names the store and the action in a catalog error.
    fn doing<T>(&self, action: &str, r: neurstore::Result<T>) -> anyhow::Result<T> {
        Ok(r.map_err(|e| neurstore::in_store(e, self.root, action))?)
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    set_threads(cli.threads)?;
    let root = match cli.store {
        Some(dir) => dir,
        None => default_store()?,
    };
    let target = Target {
        root: &root,
        wait: neurstore::lock_wait(cli.wait)?,
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
            force,
            follow_symlinks,
        } => {
            let options = PutOptions {
                mode: Mode::from_tolerances(tolerance, rel_tolerance)?,
                base: BaseChoice::from_arg(&base)?,
                metadata: neurstore::metadata_from_pairs(&meta)?,
                max_chain_depth,
                dry_run,
                force,
                follow_symlinks,
            };
            options.check()?;
            let store = if dry_run {
                target.reader()?
            } else {
                target.writer()?
            };
            let report =
                target.doing("put a model into", store.put(&name, &path, &options, &bar))?;
            out.put(&report);
        }
        Command::Get {
            name,
            output,
            format,
            force,
        } => {
            neurstore::check_output(&output, force)?;
            let store = target.reader()?;
            let options = neurstore::GetOptions { format, force };
            let report = target.doing("read", store.get_with(&name, &output, &options, &bar))?;
            out.get(&report);
        }
        Command::Ls => out.ls(&target.doing("list", target.reader()?.list())?),
        Command::Info { name } => out.info(&target.doing("read", target.reader()?.info(&name))?),
        Command::Rm { name } => {
            out.rm(&target.doing("remove a model from", target.writer()?.remove(&name))?)
        }
        Command::Gc => {
            let store = target.writer()?;
            out.gc(&target.doing("collect garbage in", store.gc(&bar))?);
        }
        Command::Upgrade => {
            let store = target.writer()?;
            let was = store.format_version();
            let report = target.doing("upgrade", store.upgrade(&bar))?;
            if was == 2 {
                eprintln!(
                    "the store is already in format 2 (its catalog's schema is current); nothing else to do"
                );
            }
            out.gc(&report);
        }
        Command::Recover => {
            let r = target.doing("recover", Store::recover(&root))?;
            out.recover(&r);
            if !r.lost_models.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Verify => {
            let report = target.doing("verify", target.reader()?.verify(&bar))?;
            out.verify(&report);
            if !report.problems.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Stats => out.stats(&target.doing("read", target.reader()?.stats())?),
        Command::Embed(request) => out.embed(&embed::embed(&target, &request, &bar)?),
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_output_format(name: &str) -> Result<neurstore::OutputFormat, String> {
    neurstore::OutputFormat::from_name(name)
        .ok_or_else(|| format!("unknown format {name:?}: use safetensors or pt"))
}
