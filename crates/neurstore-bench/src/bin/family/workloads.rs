//! The three model families, in the order their models are put, and how each model is judged.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// How a reconstruction of a model is judged by the workload's evaluation script.
#[derive(Debug, Clone)]
pub enum Judge {
    /// `eval_w1.py MODEL HEAD TASK`: the fine-tuned encoder with its classification head.
    W1 { head: PathBuf, task: String },
    /// `eval_w2.py MODEL --ref REFERENCE`: a digits MLP checkpoint.
    W2 { reference: PathBuf },
}

/// One model of a family.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Name it is stored under.
    pub name: String,
    /// Its safetensors file.
    pub path: PathBuf,
    /// How a reconstruction is judged (`None`: not judged, e.g. the headless W1 base).
    pub judge: Option<Judge>,
}

/// A family of models, put in order.
#[derive(Debug, Clone)]
pub struct Workload {
    /// "w1", "w2" or "w3".
    pub name: String,
    /// Models in insertion order; the first is the family's base.
    pub models: Vec<ModelSpec>,
}

fn read_manifest(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (generate the workload first)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// A manifest entry's file, found by its base name in `dir` (manifests record repository-relative
/// paths; resolving by name lets `--data` point elsewhere).
fn in_dir(dir: &Path, recorded: &str) -> Result<PathBuf> {
    let name = Path::new(recorded)
        .file_name()
        .with_context(|| format!("manifest entry {recorded:?} has no file name"))?;
    Ok(dir.join(name))
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .with_context(|| format!("manifest entry lacks string field {key:?}"))
}

fn models_of(manifest: &Value) -> Result<&Vec<Value>> {
    manifest
        .get("models")
        .and_then(Value::as_array)
        .context("manifest has no models list")
}

/// W1: the MiniLM base first, then the fine-tunes in manifest order. `fast` keeps the base and
/// the first three fine-tunes.
pub fn w1(data: &Path, fast: bool) -> Result<Workload> {
    let dir = data.join("w1");
    let manifest = read_manifest(&dir.join("manifest.json"))?;
    let base = data.join("all-MiniLM-L6-v2").join("model.safetensors");
    let mut models = vec![ModelSpec {
        name: "base".into(),
        path: base,
        judge: None,
    }];
    for m in models_of(&manifest)? {
        let path = in_dir(&dir, str_field(m, "file")?)?;
        models.push(ModelSpec {
            name: stem(&path),
            path,
            judge: Some(Judge::W1 {
                head: in_dir(&dir, str_field(m, "head")?)?,
                task: str_field(m, "task")?.to_string(),
            }),
        });
    }
    if fast {
        models.truncate(4);
    }
    check(Workload {
        name: "w1".into(),
        models,
    })
}

/// W2: the checkpoints in epoch order. `fast` keeps the first six.
pub fn w2(data: &Path, fast: bool) -> Result<Workload> {
    let dir = data.join("w2");
    let manifest = read_manifest(&dir.join("manifest.json"))?;
    let mut entries: Vec<(i64, PathBuf)> = Vec::new();
    for m in models_of(&manifest)? {
        let epoch = m
            .get("epoch")
            .and_then(Value::as_i64)
            .context("W2 manifest entry lacks its epoch")?;
        entries.push((epoch, in_dir(&dir, str_field(m, "file")?)?));
    }
    entries.sort();
    let mut models: Vec<ModelSpec> = entries
        .into_iter()
        .map(|(_, path)| ModelSpec {
            name: stem(&path),
            judge: Some(Judge::W2 {
                reference: path.clone(),
            }),
            path,
        })
        .collect();
    if fast {
        models.truncate(6);
    }
    check(Workload {
        name: "w2".into(),
        models,
    })
}

/// W3: unrelated models of equal shapes, in manifest order (the MLPs, then the random MiniLMs).
pub fn w3(data: &Path) -> Result<Workload> {
    let dir = data.join("w3");
    let manifest = read_manifest(&dir.join("manifest.json"))?;
    let mut models = Vec::new();
    for m in models_of(&manifest)? {
        let path = in_dir(&dir, str_field(m, "file")?)?;
        models.push(ModelSpec {
            name: stem(&path),
            path,
            judge: None,
        });
    }
    check(Workload {
        name: "w3".into(),
        models,
    })
}

fn check(w: Workload) -> Result<Workload> {
    if w.models.is_empty() {
        bail!("workload {} has no models", w.name);
    }
    for m in &w.models {
        if !m.path.is_file() {
            bail!(
                "workload {}: {} is missing (generate the workload first)",
                w.name,
                m.path.display()
            );
        }
    }
    Ok(w)
}

/// Reads every file of the workload once so that timed runs read from the page cache.
pub fn warm_cache(w: &Workload) -> Result<u64> {
    let mut total = 0;
    for m in &w.models {
        total += std::fs::read(&m.path)
            .with_context(|| format!("reading {}", m.path.display()))?
            .len() as u64;
    }
    Ok(total)
}
