//! `neurstore embed`: sentence embeddings from a BERT model computed on its stored,
//! compressed weights.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use neurstore::{Progress, ResidentOptions, SharedBases, Store};
use neurstore_infer::{Bert, BertConfig, Pooling, TextEncoder};
use serde::Serialize;

/// What to embed and how (the arguments of `neurstore embed`).
#[derive(clap::Args)]
pub struct EmbedRequest {
    /// Model name (a BERT encoder, e.g. all-MiniLM-L6-v2 imported as a directory).
    pub name: String,
    /// Text to embed (repeatable).
    #[arg(long = "text", value_name = "TEXT")]
    pub texts: Vec<String>,
    /// File of texts to embed, one per line ("-" for standard input); a blank line is embedded
    /// too, so output lines match input lines.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Expand every weight to f32 first (the reference the compressed path is checked against).
    #[arg(long)]
    pub dense: bool,
    /// tokenizer.json to use [default: the model's own].
    #[arg(long, value_name = "PATH")]
    pub tokenizer: Option<PathBuf>,
    /// config.json to use [default: the model's own, else all-MiniLM-L6-v2's].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Longest sequence in tokens; longer texts are cut.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_length: usize,
    /// Texts per forward pass.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub batch: usize,
    /// Plain mean pooling, without scaling to unit length.
    #[arg(long)]
    pub no_normalize: bool,
}

/// One embedded text.
#[derive(Serialize)]
pub struct Embedding {
    pub text: String,
    pub embedding: Vec<f32>,
}

/// The result of `embed`.
#[derive(Serialize)]
pub struct EmbedReport {
    pub model: String,
    /// "compressed" or "dense".
    pub weights: &'static str,
    pub normalized: bool,
    pub dimensions: usize,
    /// Bytes the encoder holds, shared bases included.
    pub held_bytes: usize,
    pub embeddings: Vec<Embedding>,
}

/// The texts to embed: `--text` values, then every line of `--file` ("-" = standard input),
/// blank ones included, so output line N belongs to input line N.
fn gather_texts(req: &EmbedRequest) -> anyhow::Result<Vec<String>> {
    let mut texts = req.texts.clone();
    if let Some(path) = &req.file {
        let lines: Box<dyn BufRead> = if path == Path::new("-") {
            Box::new(std::io::stdin().lock())
        } else {
            let f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
            Box::new(std::io::BufReader::new(f))
        };
        for line in lines.lines() {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            texts.push(line);
        }
    }
    if texts.is_empty() {
        bail!("nothing to embed: give --text TEXT or --file FILE");
    }
    Ok(texts)
}

/// A file of the model from the store, else from `--flag PATH`.
fn model_or_flag(
    store: &Store,
    name: &str,
    file: &str,
    flag: &Option<PathBuf>,
) -> anyhow::Result<Option<Vec<u8>>> {
    if let Some(path) = flag {
        return Ok(Some(
            std::fs::read(path).with_context(|| format!("{}", path.display()))?,
        ));
    }
    Ok(store.model_file(name, file)?)
}

pub fn embed(
    target: &crate::Target,
    req: &EmbedRequest,
    bar: &dyn Progress,
) -> anyhow::Result<EmbedReport> {
    if req.batch == 0 || req.max_length < 2 {
        bail!("--batch must be at least 1 and --max-length at least 2");
    }
    let texts = gather_texts(req)?;
    let store: Store = target.reader()?;
    let tokenizer = model_or_flag(&store, &req.name, "tokenizer.json", &req.tokenizer)?
        .with_context(|| {
            format!(
                "model {:?} has no tokenizer.json (stored as a bare safetensors file?): pass --tokenizer PATH",
                req.name
            )
        })?;
    let config = match model_or_flag(&store, &req.name, "config.json", &req.config)? {
        Some(bytes) => BertConfig::from_json(&bytes)?,
        None => BertConfig::minilm_l6(),
    };
    let normalize = !req.no_normalize
        && store
            .model_file(&req.name, "modules.json")?
            .is_none_or(|m| String::from_utf8_lossy(&m).contains("Normalize"));
    let encoder = TextEncoder::from_json(
        &tokenizer,
        req.max_length.min(config.max_position_embeddings),
    )?;
    let bases = SharedBases::new();
    let resident = store.load_resident(&req.name, &bases, ResidentOptions::default())?;
    let model = Bert::from_resident(&resident, &config, req.dense)?;
    drop(resident);
    let pooling = if normalize {
        Pooling::MeanNormalized
    } else {
        Pooling::Mean
    };
    let total: u64 = texts.iter().map(|t| t.len() as u64).sum();
    bar.start("embedding", total);
    let mut embeddings = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(req.batch) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let vectors = model.embed(&encoder.batch(&refs)?, pooling)?;
        for (text, embedding) in chunk.iter().zip(vectors) {
            bar.advance(text.len() as u64);
            embeddings.push(Embedding {
                text: text.clone(),
                embedding,
            });
        }
    }
    bar.finish();
    Ok(EmbedReport {
        model: req.name.clone(),
        weights: if req.dense { "dense" } else { "compressed" },
        normalized: normalize,
        dimensions: config.hidden_size,
        held_bytes: model.held_bytes() + if req.dense { 0 } else { bases.held_bytes() },
        embeddings,
    })
}
