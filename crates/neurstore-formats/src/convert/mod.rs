//! Conversion on the way out: any stored model's tensors written as safetensors or as a PyTorch
//! zip that `torch.load(path, weights_only=True)` accepts.
//!
//! A conversion is planned first: the plan lists every piece of information the target cannot
//! hold (a graph, GGUF metadata, block-quantized types written as raw bytes, dtypes PyTorch has
//! no storage for, non-tensor pickle values). [`Plan::check`] refuses a lossy plan unless forced.
//! Writers stream: each tensor's bytes are asked for in order, one at a time.

use std::borrow::Cow;
use std::io::Write;

use neurstore_core::dtype::DType;

use crate::container::{Container, Format, View};
use crate::element::ElementType;
use crate::error::{Error, Result, corrupt};
use crate::pytorch::{pickle, pickle_writer, zip};

/// A format a model can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// safetensors.
    Safetensors,
    /// A `torch.save` zip archive.
    PyTorch,
}

impl Target {
    /// The target an output file's extension asks for.
    pub fn from_extension(ext: &str) -> Option<Target> {
        match ext.to_ascii_lowercase().as_str() {
            "safetensors" => Some(Target::Safetensors),
            "pt" | "pth" | "bin" => Some(Target::PyTorch),
            _ => None,
        }
    }

    /// The target named on a command line (`safetensors`, `pt`).
    pub fn from_name(name: &str) -> Option<Target> {
        match name.to_ascii_lowercase().as_str() {
            "safetensors" => Some(Target::Safetensors),
            "pt" | "pytorch" | "torch" => Some(Target::PyTorch),
            _ => None,
        }
    }

    /// Name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Target::Safetensors => "safetensors",
            Target::PyTorch => "PyTorch",
        }
    }

    fn format(self) -> Format {
        match self {
            Target::Safetensors => Format::Safetensors,
            Target::PyTorch => Format::PyTorchZip,
        }
    }
}

/// One tensor of the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutTensor {
    /// Name in the output.
    pub name: String,
    /// Element type written.
    pub dtype: DType,
    /// Shape written.
    pub shape: Vec<u64>,
    /// Where its bytes come from: pass its range's bytes to [`crate::container::materialize`].
    pub source: View,
}

/// What a conversion will write and what it will lose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Target format.
    pub target: Target,
    /// Tensors, in output order.
    pub tensors: Vec<OutTensor>,
    /// Information the output will not hold.
    pub losses: Vec<String>,
}

/// Plans writing the model described by `layout` (a parsed file or a decoded skeleton).
pub fn plan(layout: &Container, target: Target) -> Plan {
    let mut losses = Vec::new();
    if layout.format != target.format() {
        losses.extend(layout.skeleton_only.iter().cloned());
    }
    let tensors = layout
        .logical_tensors()
        .into_iter()
        .map(|view| {
            let (dtype, shape) = match view.element {
                ElementType::Dense(d) if target == Target::Safetensors || pickle::storage_class(d).is_some() => (d, view.shape.clone()),
                other => {
                    let bytes = other.byte_len(&view.shape).unwrap_or(0);
                    let why = match other {
                        ElementType::Ggml(g) => format!("GGML type {}", g.name()),
                        ElementType::Dense(d) => format!("dtype {d}, which has no PyTorch storage type,"),
                    };
                    losses.push(format!("tensor {:?} of {why} is written as raw bytes (U8 [{bytes}]), its shape {:?} only in this message", view.name, view.shape));
                    (DType::U8, vec![bytes])
                }
            };
            OutTensor { name: view.name.clone(), dtype, shape, source: view }
        })
        .collect();
    Plan {
        target,
        tensors,
        losses,
    }
}

impl Plan {
    /// Refuses a plan that loses information, unless `force`.
    pub fn check(&self, force: bool) -> Result<()> {
        if self.losses.is_empty() || force {
            return Ok(());
        }
        Err(Error::Lossy {
            target: self.target.name(),
            losses: self.losses.clone(),
        })
    }

    /// Writes the output: `fetch` returns each tensor's contiguous bytes, asked for in order.
    /// Returns the bytes written.
    pub fn write<'a>(
        &self,
        out: &mut dyn Write,
        fetch: &mut dyn FnMut(&OutTensor) -> Result<Cow<'a, [u8]>>,
    ) -> Result<u64> {
        match self.target {
            Target::Safetensors => write_safetensors(self, out, fetch),
            Target::PyTorch => write_pytorch(self, out, fetch),
        }
    }
}

fn fetch_checked<'a>(
    t: &OutTensor,
    fetch: &mut dyn FnMut(&OutTensor) -> Result<Cow<'a, [u8]>>,
) -> Result<Cow<'a, [u8]>> {
    let bytes = fetch(t)?;
    let expected = t
        .dtype
        .byte_len(neurstore_core::dtype::element_count(&t.shape).unwrap_or(u64::MAX));
    if expected != Some(bytes.len() as u64) {
        return Err(corrupt(
            "conversion",
            &t.name,
            format!("{} bytes given, {expected:?} needed", bytes.len()),
        ));
    }
    Ok(bytes)
}

fn write_safetensors<'a>(
    plan: &Plan,
    out: &mut dyn Write,
    fetch: &mut dyn FnMut(&OutTensor) -> Result<Cow<'a, [u8]>>,
) -> Result<u64> {
    let specs: Vec<(String, DType, Vec<u64>)> = plan
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.dtype, t.shape.clone()))
        .collect();
    let (json, infos) = neurstore_core::safetensors::build_header(&specs, None)?;
    out.write_all(&(json.len() as u64).to_le_bytes())?;
    out.write_all(&json)?;
    for t in &plan.tensors {
        out.write_all(&fetch_checked(t, fetch)?)?;
    }
    Ok(8 + json.len() as u64 + infos.last().map_or(0, |i| i.end))
}

fn write_pytorch<'a>(
    plan: &Plan,
    out: &mut dyn Write,
    fetch: &mut dyn FnMut(&OutTensor) -> Result<Cow<'a, [u8]>>,
) -> Result<u64> {
    let entries: Vec<pickle_writer::Entry> = plan
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| pickle_writer::Entry {
            name: t.name.clone(),
            dtype: t.dtype,
            storage: i.to_string(),
            storage_numel: neurstore_core::dtype::element_count(&t.shape).unwrap_or(0),
            offset: 0,
            size: t.shape.clone(),
            stride: pickle_writer::contiguous_strides(&t.shape),
        })
        .collect();
    let mut counting = Counter { inner: out, n: 0 };
    let mut w = zip::Writer::new();
    w.add(
        &mut counting,
        "archive/data.pkl",
        &pickle_writer::state_dict(&entries),
    )?;
    for (i, t) in plan.tensors.iter().enumerate() {
        w.add(
            &mut counting,
            &format!("archive/data/{i}"),
            &fetch_checked(t, fetch)?,
        )?;
    }
    w.add(&mut counting, "archive/version", b"3\n")?;
    w.finish(&mut counting)?;
    Ok(counting.n)
}

struct Counter<'w> {
    inner: &'w mut dyn Write,
    n: u64,
}

impl Write for Counter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests;
