//! Human and JSON output of each command, and the progress bar.

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use neurstore::{
    GcReport, GcSummary, GetReport, ModelInfo, ModelSummary, Progress, PutReport, RemoveReport,
    Stats, VerifyReport,
};
use serde::Serialize;

use crate::text::{esc, esc_path, when};

/// `println!` that ends the process quietly when stdout is closed (e.g. piped into `head`).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// Prints command results as text or JSON.
pub struct Printer {
    pub json: bool,
}

impl Printer {
    fn emit<T: Serialize>(&self, value: &T, text: impl FnOnce()) {
        if self.json {
            say!(
                "{}",
                serde_json::to_string_pretty(value).expect("serializable")
            );
        } else {
            text();
        }
    }

    pub fn init(&self, root: &Path) {
        self.emit(&serde_json::json!({ "store": root }), || {
            say!("created an empty store at {}", esc_path(root))
        });
    }

    pub fn put(&self, r: &PutReport) {
        self.emit(r, || {
            if r.dry_run {
                let width = r.tensor_reports.iter().map(|t| esc(&t.name).chars().count()).max().unwrap_or(4).max(4);
                say!("  {:<width$}  {:<6} {:<10} {:>10} {:>10} {:>6} {:>10}  BASE", "NAME", "DTYPE", "CODEC", "RAW", "STORED", "BITS", "MAX ERR");
                for t in &r.tensor_reports {
                    let codec = if t.deduplicated { "duplicate" } else { t.codec };
                    say!(
                        "  {:<width$}  {:<6} {:<10} {:>10} {:>10} {:>6.2} {:>10.3e}  {}",
                        esc(&t.name),
                        t.dtype,
                        codec,
                        bytes(t.raw_bytes),
                        bytes(t.stored_bytes),
                        t.bits_per_element,
                        t.max_error,
                        esc(t.base.as_deref().unwrap_or(""))
                    );
                }
            }
            let verb = if r.dry_run { "would store" } else { "stored" };
            let gain = if r.fully_deduplicated {
                "fully deduplicated".to_string()
            } else {
                format!("{} new ({:.2}x)", bytes(r.stored_bytes_added), r.ratio)
            };
            say!(
                "{verb} {} ({}): {} tensors in {} files, {} raw ({} tensors, {} other) -> {gain}; {} new objects, {} deltas, {} already stored; max error {:.3e}{}",
                esc(&format!("{:?}", r.name)),
                r.mode,
                r.tensors,
                r.files,
                bytes(r.raw_bytes),
                bytes(r.tensor_bytes),
                bytes(r.other_bytes),
                r.new_objects,
                r.delta_tensors,
                r.deduplicated_objects,
                r.max_error,
                r.base_model.as_ref().map(|b| format!("; base model {}", esc(&format!("{b:?}")))).unwrap_or_default()
            )
        });
    }

    pub fn get(&self, r: &GetReport) {
        self.emit(r, || {
            match r.converted_to {
                Some(format) => say!(
                    "wrote {} to {} as {format} ({})",
                    esc(&format!("{:?}", r.name)),
                    esc_path(&r.path),
                    bytes(r.bytes_written)
                ),
                None => say!(
                    "wrote {} to {} ({} files, {})",
                    esc(&format!("{:?}", r.name)),
                    esc_path(&r.path),
                    r.files,
                    bytes(r.bytes_written)
                ),
            }
            for loss in &r.losses {
                say!("  left out (forced): {}", esc(loss));
            }
        });
    }

    pub fn ls(&self, models: &[ModelSummary]) {
        self.emit(&models, || {
            if models.is_empty() {
                say!("the store holds no models; add one with `neurstore put NAME PATH`");
                return;
            }
            let width = models
                .iter()
                .map(|m| esc(&m.name).chars().count())
                .max()
                .unwrap_or(4)
                .max(4);
            say!(
                "{:<width$}  {:<11}  {:>10}  {:>10}  {:>10}  CREATED",
                "NAME",
                "FORMAT",
                "RAW",
                "TENSORS",
                "OTHER"
            );
            for m in models {
                say!(
                    "{:<width$}  {:<11}  {:>10}  {:>10}  {:>10}  {}",
                    esc(&m.name),
                    esc(&m.source_format),
                    bytes(m.raw_bytes),
                    bytes(m.tensor_bytes),
                    bytes(m.other_bytes),
                    when(m.created_unix)
                );
            }
        });
    }

    pub fn info(&self, m: &ModelInfo) {
        self.emit(m, || {
            say!("model        {}", esc(&m.name));
            say!("format       {}", esc(&m.source_format));
            say!("mode         {}", esc(&m.mode));
            if let Some(b) = &m.base_model {
                say!("base model   {}", esc(b));
            }
            say!("created      {}", when(m.created_unix));
            say!("metadata     {}", esc(&m.metadata.to_string()));
            say!(
                "raw          {} ({} tensors, {} other)",
                bytes(m.raw_bytes),
                bytes(m.tensor_bytes),
                bytes(m.other_bytes)
            );
            say!(
                "stored       {} ({} used by this model alone)",
                bytes(m.stored_bytes),
                bytes(m.exclusive_bytes)
            );
            say!("files        {}", m.files.len());
            for f in &m.files {
                say!(
                    "  {:<40} {:<11} {:>10} -> {:>10}",
                    esc(&f.path),
                    f.kind,
                    bytes(f.raw_bytes),
                    bytes(f.stored_bytes)
                );
                for line in f.format.iter().flat_map(|d| &d.details) {
                    say!("    {}", esc(line));
                }
            }
            say!("tensors      {}", m.tensors.len());
            let width = m
                .tensors
                .iter()
                .map(|t| esc(&t.name).chars().count())
                .max()
                .unwrap_or(4)
                .max(4);
            say!(
                "  {:<width$}  {:<6} {:<16} {:<12} {:>10} {:>10} {:>6} {:>10}  {:<6}  BASE",
                "NAME",
                "DTYPE",
                "SHAPE",
                "CODEC",
                "RAW",
                "STORED",
                "BITS",
                "MAX ERR",
                "SHARED"
            );
            for t in &m.tensors {
                let shape = format!("{:?}", t.shape);
                say!(
                    "  {:<width$}  {:<6} {:<16} {:<12} {:>10} {:>10} {:>6.2} {:>10.3e}  {:<6}  {}",
                    esc(&t.name),
                    t.dtype,
                    shape,
                    t.codec,
                    bytes(t.raw_bytes),
                    bytes(t.stored_bytes),
                    t.bits_per_element,
                    t.max_error,
                    if t.shared { "yes" } else { "" },
                    esc(t.base.as_deref().unwrap_or(""))
                );
            }
        });
    }

    pub fn rm(&self, r: &RemoveReport) {
        self.emit(r, || {
            say!(
                "removed {}; {} objects no longer used (run `neurstore gc` to reclaim their space)",
                esc(&format!("{:?}", r.name)),
                r.objects_freed
            )
        });
    }

    pub fn gc(&self, r: &GcReport) {
        let r = GcSummary::from(r);
        self.emit(&r, || {
            say!(
                "reclaimed {} (pack files {} -> {}; {} packs rewritten, {} removed, {} moved; {} of interrupted writes)",
                bytes(r.reclaimed_bytes),
                bytes(r.pack_bytes_before),
                bytes(r.pack_bytes_after),
                r.packs_rewritten,
                r.packs_removed,
                bytes(r.bytes_moved),
                bytes(r.recovered_partial_bytes),
            )
        });
    }

    pub fn recover(&self, r: &neurstore::RebuildReport) {
        let value = serde_json::json!({
            "packs": r.packs,
            "records": r.records,
            "skipped_bytes": r.skipped_bytes,
            "models": r.models,
            "objects": r.objects,
            "lost_models": r.lost_models.iter().map(|(n, why)| serde_json::json!({"name": n, "why": why})).collect::<Vec<_>>(),
            "old_catalog": r.old_catalog,
        });
        self.emit(&value, || {
            for (name, why) in &r.lost_models {
                say!("could not rebuild model {name:?}: {why}");
            }
            say!(
                "rebuilt the catalog from {} packs: {} models, {} objects ({} intact records, {} damaged bytes skipped){}; run `neurstore verify` next",
                r.packs,
                r.models,
                r.objects,
                r.records,
                bytes(r.skipped_bytes),
                r.old_catalog.as_ref().map(|p| format!("; the old catalog is kept as {p}")).unwrap_or_default(),
            )
        });
    }

    pub fn verify(&self, r: &VerifyReport) {
        self.emit(r, || {
            for p in &r.problems {
                say!("problem: {}", esc(p));
            }
            let verdict = if r.problems.is_empty() {
                "OK".to_string()
            } else {
                format!("{} problems", r.problems.len())
            };
            say!(
                "verified {} models, {} objects, {}: {verdict}",
                r.models,
                r.objects,
                bytes(r.stored_bytes)
            );
        });
    }

    pub fn stats(&self, s: &Stats) {
        self.emit(s, || {
            say!("models          {}", s.models);
            say!(
                "tensors         {} ({} unique)",
                s.tensors,
                s.unique_tensors
            );
            say!(
                "raw bytes       {} ({} tensors, {} other)",
                bytes(s.raw_bytes),
                bytes(s.tensor_bytes),
                bytes(s.other_bytes)
            );
            say!(
                "stored bytes    {} (packs {}, catalog {})",
                bytes(s.stored_bytes),
                bytes(s.pack_bytes),
                bytes(s.catalog_bytes)
            );
            say!("ratio           {:.3}x", s.ratio);
            say!(
                "reclaimable     {} (run `neurstore gc`)",
                bytes(s.reclaimable_bytes)
            );
            say!("by kind/codec:");
            for (k, v) in &s.by_kind {
                let ratio = if v.stored_bytes == 0 {
                    0.0
                } else {
                    v.raw_bytes as f64 / v.stored_bytes as f64
                };
                say!(
                    "  {:<22} {:>7} objects {:>10} -> {:>10} ({ratio:.3}x)",
                    k,
                    v.objects,
                    bytes(v.raw_bytes),
                    bytes(v.stored_bytes)
                );
            }
        });
    }
}

/// Bytes in binary units.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// One sentence from an error chain: the outermost message, then causes not already in it.
pub fn sentence(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg = format!("{msg}: {c}");
        }
    }
    msg
}

impl Printer {
    /// Embeddings: in text mode one line per input, its values separated by spaces.
    pub fn embed(&self, r: &crate::embed::EmbedReport) {
        self.emit(r, || {
            for e in &r.embeddings {
                let values: Vec<String> = e.embedding.iter().map(|v| format!("{v:.7}")).collect();
                say!("{}", values.join(" "));
            }
        })
    }
}

/// A progress bar on stderr; invisible when stderr is not a terminal or output is JSON.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    pub fn new(visible: bool) -> Self {
        let bar = if visible {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        Bar { bar }
    }
}

impl Progress for Bar {
    fn start(&self, label: &str, total: u64) {
        self.bar.set_message(label.to_string());
        self.bar.set_length(total);
        self.bar.set_position(0);
    }
    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
