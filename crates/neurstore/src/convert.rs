//! `get` with a format: any stored model's tensors written as one safetensors file or one
//! PyTorch zip checkpoint, whatever format it came in.
//!
//! The rule, in one place ([`conversion`]): the format is the one asked for, else the one the
//! output's extension names (`.safetensors`, `.pt`, `.pth`, `.bin`); a model stored as a single
//! file of that very format is written back byte for byte instead. A conversion that would lose
//! information (an ONNX graph, GGUF metadata, safetensors `__metadata__`, block-quantized types
//! written as bytes, a tensor name held by two files) is refused unless forced. Plain files of a
//! directory (config, tokenizer) are not weights and are left out.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use neurstore_formats::container::materialize;
use neurstore_formats::convert::{self, OutTensor, Plan, Target};
use neurstore_formats::{Container, Format};
use neurstore_storage::StorageError;
use neurstore_storage::catalog::{FileKind, Queries, TensorRow};

use crate::Store;
use crate::error::{Error, Result};
use crate::export::GetReport;
use crate::paths::Staging;
use crate::progress::Progress;
use crate::snapshot::Snapshot;

/// A format `get` can convert a model to.
pub use neurstore_formats::convert::Target as OutputFormat;

/// How `get` writes a model.
#[derive(Debug, Clone, Copy, Default)]
pub struct GetOptions {
    /// Output format; `None`: the one the output's extension names, if any.
    pub format: Option<OutputFormat>,
    /// Accept a conversion that loses information.
    pub force: bool,
}

/// The format to convert to, or `None` to write the model as it was stored. One rule for every
/// front end: the asked-for format, else the output's extension; a single-file model already
/// in that format is written as stored (byte for byte).
pub fn conversion(source_format: &str, out: &Path, options: &GetOptions) -> Option<OutputFormat> {
    let target = options.format.or_else(|| {
        out.extension()
            .and_then(|e| e.to_str())
            .and_then(Target::from_extension)
    })?;
    let same = match target {
        Target::Safetensors => source_format == "safetensors",
        Target::PyTorch => source_format == "pytorch",
    };
    (!same).then_some(target)
}

impl Store {
    /// Writes model `name` to `out` as [`GetOptions`] say: converted (see [`conversion`]), or
    /// as stored, like [`Store::get`].
    pub fn get_with(
        &self,
        name: &str,
        out: &Path,
        options: &GetOptions,
        progress: &dyn Progress,
    ) -> Result<GetReport> {
        // The catalog row alone: reading the model's records here, outside the retry, would
        // fail when a concurrent gc moves them.
        let source_format = self
            .engine
            .read(|q| q.model(name))?
            .ok_or_else(|| StorageError::ModelNotFound(name.to_string()))?
            .source_format;
        match conversion(&source_format, out, options) {
            None => self.get(name, out, progress),
            Some(target) => {
                self.with_retry(|| self.convert_once(name, out, target, options.force, progress))
            }
        }
    }

    fn convert_once(
        &self,
        name: &str,
        out: &Path,
        target: Target,
        force: bool,
        progress: &dyn Progress,
    ) -> Result<GetReport> {
        let snap = self.snapshot(name)?;
        self.check_headers(&snap)?;
        let (plan, sources) = self.conversion_plan(&snap, target)?;
        let refused = |source| Error::Convert {
            model: name.to_string(),
            target: target.name(),
            source,
        };
        plan.check(force).map_err(refused)?;
        let total = sources
            .iter()
            .fold(0u64, |n, t| n.saturating_add(t.object.raw_len));
        progress.start("converting", total);
        let staging = Staging::beside(out)?;
        let (handle, dest) = staging.create_file()?;
        let mut w = BufWriter::with_capacity(1 << 20, handle);
        let mut failure: Option<Error> = None;
        let mut fetch = |t: &OutTensor| -> neurstore_formats::Result<Cow<'static, [u8]>> {
            let fetched = self.fetch_view(&snap, &sources, t);
            match fetched {
                Ok(bytes) => {
                    progress.advance(bytes.len() as u64);
                    Ok(Cow::Owned(bytes))
                }
                Err(e) => {
                    failure = Some(e);
                    Err(neurstore_formats::Error::Io(std::io::Error::other(
                        "reading a stored tensor failed",
                    )))
                }
            }
        };
        let written = plan.write(&mut w, &mut fetch);
        if let Some(e) = failure {
            return Err(e);
        }
        let written = written.map_err(|e| match e {
            neurstore_formats::Error::Io(e) => Error::io(&dest, e),
            e => refused(e),
        })?;
        w.flush().map_err(|e| Error::io(&dest, e))?;
        drop(w);
        staging.finish(out)?;
        progress.finish();
        Ok(GetReport {
            name: name.to_string(),
            path: out.to_path_buf(),
            files: 1,
            bytes_written: written,
            converted_to: Some(target.name()),
            losses: plan.losses,
        })
    }

    /// The contiguous bytes of one output tensor.
    fn fetch_view(
        &self,
        snap: &Snapshot,
        sources: &[&TensorRow],
        t: &OutTensor,
    ) -> Result<Vec<u8>> {
        let what = format!("model {:?} tensor {:?}", snap.model.name, t.name);
        let row = sources
            .get(t.source.tensor)
            .ok_or_else(|| StorageError::corrupt(&what, "view of a missing range"))?;
        let data = self.decode_object(&row.object, &what)?;
        let bytes = materialize(&t.source, &data)
            .map_err(|e| StorageError::corrupt(&what, e.to_string()))?;
        Ok(bytes.into_owned())
    }

    /// One plan over every model file of the snapshot, in file order; each output tensor's
    /// `source.tensor` indexes the returned rows.
    fn conversion_plan<'s>(
        &self,
        snap: &'s Snapshot,
        target: Target,
    ) -> Result<(Plan, Vec<&'s TensorRow>)> {
        let layouts: HashMap<String, Container> =
            self.container_layouts(snap)?.into_iter().collect();
        let mut plan = Plan {
            target,
            tensors: Vec::new(),
            losses: Vec::new(),
        };
        let mut sources: Vec<&TensorRow> = Vec::new();
        // Name -> (file, range object, view) of the tensor written under it.
        let mut taken: HashMap<String, (String, i64, neurstore_formats::View)> = HashMap::new();
        for file in &snap.files {
            let rows = snap.tensors_of(&file.path);
            let layout = match (file.kind, layouts.get(&file.path)) {
                (FileKind::Safetensors, _) => self.safetensors_layout(snap, file, &rows)?,
                (FileKind::Plain, Some(layout)) => layout.clone(),
                (FileKind::Plain, None) => continue,
            };
            let part = convert::plan(&layout, target);
            plan.losses.extend(
                part.losses
                    .into_iter()
                    .map(|l| format!("{}: {l}", file.path)),
            );
            for mut t in part.tensors {
                let row = *rows.get(t.source.tensor).ok_or_else(|| {
                    StorageError::corrupt(
                        format!("model {:?} file {:?}", snap.model.name, file.path),
                        "a view of a missing range",
                    )
                })?;
                match taken.get(&t.name) {
                    // The same bytes under the same name (a model kept in two formats, stored
                    // once): written once, nothing lost.
                    Some((_, object, view))
                        if *object == row.object.id && same_view(view, &t.source) => {}
                    Some((first, ..)) => plan.losses.push(format!(
                        "{}: tensor {:?} is left out: {first} holds another tensor of that name",
                        file.path, t.name
                    )),
                    None => {
                        taken.insert(
                            t.name.clone(),
                            (file.path.clone(), row.object.id, t.source.clone()),
                        );
                        t.source.tensor = sources.len();
                        sources.push(row);
                        plan.tensors.push(t);
                    }
                }
            }
        }
        Ok((plan, sources))
    }

    /// A stored safetensors file's layout, from its header.
    fn safetensors_layout(
        &self,
        snap: &Snapshot,
        file: &neurstore_storage::catalog::FileRow,
        rows: &[&TensorRow],
    ) -> Result<Container> {
        let what = format!("model {:?} file {:?}", snap.model.name, file.path);
        let head = self.decode_object(&file.object, &what)?;
        let data_len = rows
            .iter()
            .fold(0u64, |n, t| n.saturating_add(t.object.raw_len));
        let file_len = (8 + head.len() as u64).saturating_add(data_len);
        let header = neurstore_core::safetensors::parse_header(&head, file_len)
            .map_err(|e| StorageError::corrupt(&what, e.to_string()))?;
        let layout = neurstore_formats::safetensors::from_header(header, file_len)
            .map_err(|e| StorageError::corrupt(&what, e.to_string()))?;
        debug_assert_eq!(layout.format, Format::Safetensors);
        Ok(layout)
    }
}

/// Views of one stored range that give the same bytes (their range index is per file).
fn same_view(a: &neurstore_formats::View, b: &neurstore_formats::View) -> bool {
    a.element == b.element
        && a.shape == b.shape
        && a.byte_offset == b.byte_offset
        && a.strides == b.strides
}
