//! Judging reconstructions with the workloads' evaluation scripts (one Python process per model,
//! run after the timed puts so it never overlaps a measurement).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::workloads::Judge;

/// Where the interpreter and the scripts are.
#[derive(Debug, Clone)]
pub struct Evaluator {
    /// Python interpreter with torch.
    pub python: PathBuf,
    /// Directory holding `eval_w1.py` and `eval_w2.py`.
    pub scripts: PathBuf,
    /// Data directory (for the manifests).
    pub data: PathBuf,
}

/// One judged reconstruction.
#[derive(Debug, Clone, Serialize)]
pub struct Judgement {
    /// Model name.
    pub model: String,
    /// Held-out accuracy of the reconstruction.
    pub accuracy: f64,
    /// Fraction of held-out predictions equal to the original's.
    pub agreement: f64,
    /// Accuracy minus the original's.
    pub accuracy_change: f64,
}

impl Evaluator {
    /// Runs the script for `judge` on the reconstruction at `file`.
    pub fn judge(&self, model: &str, file: &Path, judge: &Judge) -> Result<Judgement> {
        let mut cmd = Command::new(&self.python);
        match judge {
            Judge::W1 { head, task } => {
                cmd.arg(self.scripts.join("eval_w1.py"))
                    .arg(file)
                    .arg(head)
                    .arg(task)
                    .arg("--manifest")
                    .arg(self.data.join("w1").join("manifest.json"));
            }
            Judge::W2 { reference } => {
                cmd.arg(self.scripts.join("eval_w2.py"))
                    .arg(file)
                    .arg("--ref")
                    .arg(reference)
                    .arg("--manifest")
                    .arg(self.data.join("w2").join("manifest.json"));
            }
        }
        let out = cmd
            .output()
            .with_context(|| format!("running {}", self.python.display()))?;
        if !out.status.success() {
            bail!(
                "evaluating {model} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let line = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(line.trim())
            .with_context(|| format!("evaluation of {model} printed {line:?}"))?;
        let num = |k: &str| -> Result<f64> {
            v.get(k)
                .and_then(serde_json::Value::as_f64)
                .with_context(|| format!("evaluation of {model} gave no {k} (no reference?)"))
        };
        Ok(Judgement {
            model: model.to_string(),
            accuracy: num("accuracy")?,
            agreement: num("agreement")?,
            accuracy_change: num("accuracy_change")?,
        })
    }
}
