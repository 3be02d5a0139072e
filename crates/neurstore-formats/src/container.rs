//! The container model every format parser produces: a file is an ordered sequence of tensor
//! byte ranges and the skeleton bytes between them.
//!
//! **Invariant:** a valid `Container` has its tensors sorted by offset, pairwise disjoint, inside
//! the file, each exactly as long as its element type and shape require, and with unique names;
//! every byte not inside a tensor is skeleton. Writing the skeleton pieces and the tensors in
//! segment order gives back the file byte for byte.

use std::collections::HashSet;

use neurstore_core::dtype::element_count;

use crate::element::ElementType;
use crate::error::{Result, corrupt};

/// A model file format this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// safetensors.
    Safetensors,
    /// An ONNX model (`ModelProto`).
    Onnx,
    /// A data file an ONNX model points into with `external_data`.
    OnnxExternalData,
    /// A `torch.save` zip archive (`.pt`, `.pth`, `pytorch_model.bin`).
    PyTorchZip,
    /// GGUF v2 or v3.
    Gguf,
}

impl Format {
    /// Every format, in code order.
    pub const ALL: [Format; 5] = [
        Format::Safetensors,
        Format::Onnx,
        Format::OnnxExternalData,
        Format::PyTorchZip,
        Format::Gguf,
    ];

    /// Human name.
    pub fn name(self) -> &'static str {
        match self {
            Format::Safetensors => "safetensors",
            Format::Onnx => "ONNX",
            Format::OnnxExternalData => "ONNX external data",
            Format::PyTorchZip => "PyTorch zip",
            Format::Gguf => "GGUF",
        }
    }

    /// The byte that stands for the format in a skeleton.
    pub fn code(self) -> u8 {
        match self {
            Format::Safetensors => 1,
            Format::Onnx => 2,
            Format::OnnxExternalData => 3,
            Format::PyTorchZip => 4,
            Format::Gguf => 5,
        }
    }

    /// The format a skeleton byte stands for.
    pub fn from_code(code: u8) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.code() == code)
    }
}

/// Where a tensor's bytes come from, when it is not simply a tensor of the file's own model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A tensor of the model, stored as the file stores it.
    Plain,
    /// An ONNX tensor whose values sit in a packed fixed-width typed field (`float_data`,
    /// `double_data`) rather than `raw_data`: the field's payload is the little-endian tensor.
    TypedField(String),
    /// Bytes of a PyTorch storage that are not exactly one tensor (shared by overlapping views,
    /// or not referenced by any view): stored as a flat tensor of the storage's dtype.
    Storage(String),
}

/// One tensor byte range of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    /// Name, unique in the file.
    pub name: String,
    /// Element type.
    pub element: ElementType,
    /// Row-major shape (GGUF's innermost-first dimensions are reversed).
    pub shape: Vec<u64>,
    /// First byte in the file.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Where the bytes come from.
    pub origin: Origin,
}

impl Tensor {
    /// Byte length.
    pub fn byte_len(&self) -> u64 {
        self.end - self.start
    }
}

/// A tensor of the model as a program sees it, when it is not one whole tensor range: a
/// PyTorch view into a storage. Byte offsets are relative to the start of `tensor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The model's name for the tensor (state_dict key).
    pub name: String,
    /// Element type.
    pub element: ElementType,
    /// Row-major shape.
    pub shape: Vec<u64>,
    /// Index into [`Container::tensors`] of the range holding the bytes.
    pub tensor: usize,
    /// Offset of the first element from the start of that range, in bytes.
    pub byte_offset: u64,
    /// Element strides, present only when the view is not contiguous (its bytes must then be
    /// gathered into a contiguous copy to be used or converted).
    pub strides: Option<Vec<u64>>,
}

impl View {
    /// Byte length of the view once contiguous.
    pub fn byte_len(&self) -> Option<u64> {
        self.element.byte_len(&self.shape)
    }
}

/// A piece of a file in order: skeleton bytes or a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// Non-tensor bytes `start..end` of the file.
    Skeleton {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// The tensor at this index of [`Container::tensors`].
    Tensor(usize),
}

/// A model file split into skeleton and tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The file's format.
    pub format: Format,
    /// Length of the whole file.
    pub file_len: u64,
    /// Tensor ranges, sorted by offset and disjoint.
    pub tensors: Vec<Tensor>,
    /// The model's tensors when they differ from `tensors` (PyTorch views); empty otherwise.
    pub views: Vec<View>,
    /// Information only the skeleton holds (a graph, metadata, non-tensor values, tensors kept
    /// inside the skeleton): a conversion to another format drops it.
    pub skeleton_only: Vec<String>,
    /// Remarks on how the file was split (views made contiguous, typed fields, ...).
    pub notes: Vec<String>,
}

impl Container {
    /// Checks the container invariant (see the module documentation).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, detail: String| corrupt("container", what, detail);
        let mut names = HashSet::with_capacity(self.tensors.len());
        let mut covered = 0u64;
        for t in &self.tensors {
            if !names.insert(t.name.as_str()) {
                return Err(bad(&t.name, "duplicate tensor name".into()));
            }
            if t.start < covered || t.start > t.end || t.end > self.file_len {
                return Err(bad(
                    &t.name,
                    format!(
                        "range {}..{} overlaps the previous tensor or leaves the {}-byte file",
                        t.start, t.end, self.file_len
                    ),
                ));
            }
            if t.element.byte_len(&t.shape) != Some(t.byte_len()) {
                return Err(bad(
                    &t.name,
                    format!(
                        "shape {:?} of {} does not fill {} bytes",
                        t.shape,
                        t.element.name(),
                        t.byte_len()
                    ),
                ));
            }
            covered = t.end;
        }
        let mut view_names = HashSet::with_capacity(self.views.len());
        for v in &self.views {
            if !view_names.insert(v.name.as_str()) {
                return Err(bad(&v.name, "duplicate view name".into()));
            }
            let Some(t) = self.tensors.get(v.tensor) else {
                return Err(bad(&v.name, format!("view of missing tensor {}", v.tensor)));
            };
            let span =
                view_span(v).ok_or_else(|| bad(&v.name, "view's extent overflows".into()))?;
            // Zero or overlapping strides can make a view far larger than its bytes: refuse any
            // view that would not fit in the file itself, so making it contiguous stays bounded.
            if v.byte_len().is_none_or(|n| n > self.file_len) {
                return Err(bad(
                    &v.name,
                    format!(
                        "view of shape {:?} is larger than the {}-byte file",
                        v.shape, self.file_len
                    ),
                ));
            }
            if v.byte_offset
                .checked_add(span)
                .is_none_or(|e| e > t.byte_len())
            {
                return Err(bad(
                    &v.name,
                    format!(
                        "view runs past the {}-byte range of {:?}",
                        t.byte_len(),
                        t.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The file as skeleton pieces and tensors, in file order (empty pieces left out).
    pub fn segments(&self) -> Vec<Segment> {
        let mut out = Vec::with_capacity(2 * self.tensors.len() + 1);
        let mut pos = 0u64;
        for (i, t) in self.tensors.iter().enumerate() {
            if t.start > pos {
                out.push(Segment::Skeleton {
                    start: pos,
                    end: t.start,
                });
            }
            out.push(Segment::Tensor(i));
            pos = t.end;
        }
        if self.file_len > pos {
            out.push(Segment::Skeleton {
                start: pos,
                end: self.file_len,
            });
        }
        out
    }

    /// Number of skeleton bytes (the file minus its tensors).
    pub fn skeleton_len(&self) -> u64 {
        self.file_len - self.tensors.iter().map(Tensor::byte_len).sum::<u64>()
    }

    /// The model's tensors as a program sees them: the views, or one whole view per range.
    pub fn logical_tensors(&self) -> Vec<View> {
        if !self.views.is_empty() {
            return self.views.clone();
        }
        self.tensors
            .iter()
            .enumerate()
            .map(|(i, t)| View {
                name: t.name.clone(),
                element: t.element,
                shape: t.shape.clone(),
                tensor: i,
                byte_offset: 0,
                strides: None,
            })
            .collect()
    }

    /// The skeleton: every non-tensor byte of `file` plus the layout needed to rebuild it (see
    /// [`crate::skeleton`]). `file` must be the bytes this container was parsed from.
    pub fn skeleton_bytes(&self, file: &[u8]) -> Result<Vec<u8>> {
        crate::skeleton::encode(self, file)
    }
}

/// Bytes from a view's first element to one past its last, or `None` on overflow.
pub(crate) fn view_span(v: &View) -> Option<u64> {
    let ElementType::Dense(d) = v.element else {
        return v.byte_len();
    };
    let Some(strides) = &v.strides else {
        return v.byte_len();
    };
    if element_count(&v.shape)? == 0 {
        return Some(0);
    }
    let mut last = 0u64;
    for (&n, &s) in v.shape.iter().zip(strides) {
        last = last.checked_add((n - 1).checked_mul(s)?)?;
    }
    d.byte_len(last.checked_add(1)?)
}

/// A view's bytes as one contiguous row-major buffer: a slice of `range` (the bytes of the
/// tensor range it points into) when contiguous, else gathered element by element.
pub fn materialize<'a>(view: &View, range: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>> {
    let bad = |detail: &str| corrupt("container", &view.name, detail);
    let len = view.byte_len().ok_or_else(|| bad("size overflows"))?;
    let start = usize::try_from(view.byte_offset).map_err(|_| bad("offset overflows"))?;
    let Some(strides) = &view.strides else {
        let end = start
            .checked_add(len as usize)
            .filter(|&e| e <= range.len())
            .ok_or_else(|| bad("view runs past its range"))?;
        return Ok(std::borrow::Cow::Borrowed(&range[start..end]));
    };
    let ElementType::Dense(d) = view.element else {
        return Err(bad("a strided view must have a dense dtype"));
    };
    if d.bits() % 8 != 0 || strides.len() != view.shape.len() {
        return Err(bad(
            "a strided view needs whole-byte elements and one stride per dim",
        ));
    }
    let span = view_span(view).ok_or_else(|| bad("extent overflows"))?;
    if (start as u64)
        .checked_add(span)
        .is_none_or(|e| e > range.len() as u64)
    {
        return Err(bad("view runs past its range"));
    }
    let esize = (d.bits() / 8) as usize;
    let mut out = Vec::with_capacity(len as usize);
    let mut index = vec![0u64; view.shape.len()];
    let count = element_count(&view.shape).unwrap_or(0);
    for _ in 0..count {
        let off: u64 = index.iter().zip(strides).map(|(i, s)| i * s).sum();
        let at = start + off as usize * esize;
        out.extend_from_slice(&range[at..at + esize]);
        for k in (0..index.len()).rev() {
            index[k] += 1;
            if index[k] < view.shape[k] {
                break;
            }
            index[k] = 0;
        }
    }
    Ok(std::borrow::Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use neurstore_core::dtype::DType;

    fn tensor(name: &str, start: u64, n: u64) -> Tensor {
        Tensor {
            name: name.into(),
            element: ElementType::Dense(DType::U8),
            shape: vec![n],
            start,
            end: start + n,
            origin: Origin::Plain,
        }
    }

    fn container(tensors: Vec<Tensor>, file_len: u64) -> Container {
        Container {
            format: Format::Safetensors,
            file_len,
            tensors,
            views: vec![],
            skeleton_only: vec![],
            notes: vec![],
        }
    }

    #[test]
    fn segments_cover_the_file_in_order() {
        let c = container(vec![tensor("a", 2, 3), tensor("b", 5, 1)], 10);
        c.validate().unwrap();
        assert_eq!(
            c.segments(),
            vec![
                Segment::Skeleton { start: 0, end: 2 },
                Segment::Tensor(0),
                Segment::Tensor(1),
                Segment::Skeleton { start: 6, end: 10 },
            ]
        );
        assert_eq!(c.skeleton_len(), 6);
    }

    #[test]
    fn invalid_containers_are_refused() {
        let overlapping = container(vec![tensor("a", 0, 4), tensor("b", 3, 2)], 10);
        assert!(overlapping.validate().is_err());
        let duplicate = container(vec![tensor("a", 0, 4), tensor("a", 4, 2)], 10);
        assert!(
            duplicate
                .validate()
                .unwrap_err()
                .to_string()
                .contains("duplicate")
        );
        let past_end = container(vec![tensor("a", 8, 4)], 10);
        assert!(past_end.validate().is_err());
    }

    #[test]
    fn strided_views_are_gathered() {
        // A 2x3 U8 matrix stored row-major, viewed transposed (3x2, strides [1, 3]).
        let range = [0u8, 1, 2, 3, 4, 5];
        let v = View {
            name: "t".into(),
            element: ElementType::Dense(DType::U8),
            shape: vec![3, 2],
            tensor: 0,
            byte_offset: 0,
            strides: Some(vec![1, 3]),
        };
        assert_eq!(&*materialize(&v, &range).unwrap(), &[0, 3, 1, 4, 2, 5]);
        let contiguous = View {
            strides: None,
            shape: vec![2],
            byte_offset: 4,
            ..v.clone()
        };
        assert_eq!(&*materialize(&contiguous, &range).unwrap(), &[4, 5]);
        let past = View {
            byte_offset: 1,
            ..v
        };
        assert!(materialize(&past, &range).is_err());
    }
}
