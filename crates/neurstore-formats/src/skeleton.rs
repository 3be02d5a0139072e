//! The skeleton: every non-tensor byte of a file plus a compact, self-describing layout, so that
//! the file can be rebuilt from it and its tensors alone, and its model described without it.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! magic "NSKL" | version u8 = 1 | format u8 | 2 zero bytes | file_len u64
//! tensor_count u32 | view_count u32 | skeleton_only_count u32 | note_count u32
//! tensor*  : start u64 | end u64 | name str | element | shape | origin u8 [str]
//! view*    : name str | element | shape | tensor u32 | byte_offset u64 | has_strides u8 [u64 * rank]
//! str*     : skeleton_only entries, then notes
//! payload_len u64 | payload (the non-tensor bytes, in file order)
//! str      = len u32 | UTF-8 bytes;  element = tag u8 (0 dtype, 1 ggml) | code u32
//! shape    = rank u32 | dim u64 * rank
//! ```
//!
//! **Invariant:** `decode` accepts only a layout that passes [`Container::validate`] and whose
//! payload is exactly the file's non-tensor bytes; nothing is allocated from a count before the
//! count is checked against the bytes left.

use std::io::Write;

use neurstore_core::dtype::{ALL_DTYPES, DType};

use crate::container::{Container, Format, Origin, Segment, Tensor, View};
use crate::element::{ElementType, GgmlType};
use crate::error::{Error, Result, corrupt};

const MAGIC: &[u8; 4] = b"NSKL";
const VERSION: u8 = 1;
const MAX_RANK: u32 = 64;

/// A decoded skeleton: the file's layout and its non-tensor bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skeleton<'a> {
    /// The layout (format, tensors, views, notes).
    pub layout: Container,
    /// The non-tensor bytes of the file, in file order.
    pub payload: &'a [u8],
}

/// Encodes the skeleton of `file` as split by `container`.
pub fn encode(container: &Container, file: &[u8]) -> Result<Vec<u8>> {
    if file.len() as u64 != container.file_len {
        return Err(corrupt(
            "skeleton",
            "file",
            format!(
                "{} bytes given for a {}-byte container",
                file.len(),
                container.file_len
            ),
        ));
    }
    container.validate()?;
    let mut out = Vec::with_capacity(64 + container.skeleton_len() as usize);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[VERSION, container.format.code(), 0, 0]);
    out.extend_from_slice(&container.file_len.to_le_bytes());
    for n in [
        container.tensors.len(),
        container.views.len(),
        container.skeleton_only.len(),
        container.notes.len(),
    ] {
        put_u32(&mut out, n)?;
    }
    for t in &container.tensors {
        out.extend_from_slice(&t.start.to_le_bytes());
        out.extend_from_slice(&t.end.to_le_bytes());
        put_str(&mut out, &t.name)?;
        put_element(&mut out, t.element);
        put_shape(&mut out, &t.shape)?;
        match &t.origin {
            Origin::Plain => out.push(0),
            Origin::TypedField(f) => {
                out.push(1);
                put_str(&mut out, f)?;
            }
            Origin::Storage(s) => {
                out.push(2);
                put_str(&mut out, s)?;
            }
        }
    }
    for v in &container.views {
        put_str(&mut out, &v.name)?;
        put_element(&mut out, v.element);
        put_shape(&mut out, &v.shape)?;
        put_u32(&mut out, v.tensor)?;
        out.extend_from_slice(&v.byte_offset.to_le_bytes());
        match &v.strides {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                s.iter()
                    .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            }
        }
    }
    for s in container.skeleton_only.iter().chain(&container.notes) {
        put_str(&mut out, s)?;
    }
    out.extend_from_slice(&container.skeleton_len().to_le_bytes());
    for seg in container.segments() {
        if let Segment::Skeleton { start, end } = seg {
            out.extend_from_slice(&file[start as usize..end as usize]);
        }
    }
    Ok(out)
}

/// Decodes and validates a skeleton.
pub fn decode(bytes: &[u8]) -> Result<Skeleton<'_>> {
    let mut r = Reader { bytes, pos: 0 };
    if r.take(4)? != MAGIC {
        return Err(r.bad("magic", "not a NeurStore skeleton"));
    }
    let head = r.take(4)?;
    if head[0] != VERSION || head[2] != 0 || head[3] != 0 {
        return Err(r.bad("version", format!("unknown skeleton version {}", head[0])));
    }
    let format =
        Format::from_code(head[1]).ok_or_else(|| r.bad("format", "unknown format code"))?;
    let file_len = r.u64()?;
    let counts = [r.u32()?, r.u32()?, r.u32()?, r.u32()?];
    // Every record takes at least 4 bytes: a count above that is a lie, refused before allocating.
    let total: u64 = counts.iter().map(|&c| c as u64).sum();
    if total * 4 > r.left() {
        return Err(r.bad(
            "counts",
            format!("{total} records cannot fit in {} bytes", r.left()),
        ));
    }
    let mut tensors = Vec::with_capacity(counts[0] as usize);
    for _ in 0..counts[0] {
        tensors.push(read_tensor(&mut r)?);
    }
    let mut views = Vec::with_capacity(counts[1] as usize);
    for _ in 0..counts[1] {
        views.push(read_view(&mut r)?);
    }
    let skeleton_only = (0..counts[2]).map(|_| r.string()).collect::<Result<_>>()?;
    let notes = (0..counts[3]).map(|_| r.string()).collect::<Result<_>>()?;
    let layout = Container {
        format,
        file_len,
        tensors,
        views,
        skeleton_only,
        notes,
    };
    layout.validate()?;
    let payload_len = r.u64()?;
    if payload_len != layout.skeleton_len() || payload_len != r.left() {
        return Err(r.bad(
            "payload",
            format!(
                "{payload_len} bytes declared, {} needed, {} present",
                layout.skeleton_len(),
                r.left()
            ),
        ));
    }
    let payload = r.take(payload_len as usize)?;
    Ok(Skeleton { layout, payload })
}

/// Rebuilds the original file: writes the skeleton pieces and, for each tensor in file order,
/// whatever `write_tensor(index, tensor, out)` writes, which must be exactly the tensor's bytes
/// (its length is checked). Returns the number of bytes written.
pub fn reassemble<W, F>(skeleton: &[u8], out: &mut W, mut write_tensor: F) -> Result<u64>
where
    W: Write,
    F: FnMut(usize, &Tensor, &mut dyn Write) -> Result<()>,
{
    let sk = decode(skeleton)?;
    let mut payload_pos = 0usize;
    let mut written = 0u64;
    for seg in sk.layout.segments() {
        match seg {
            Segment::Skeleton { start, end } => {
                let n = (end - start) as usize;
                out.write_all(&sk.payload[payload_pos..payload_pos + n])?;
                payload_pos += n;
                written += n as u64;
            }
            Segment::Tensor(i) => {
                let t = &sk.layout.tensors[i];
                let mut counted = Counting {
                    inner: &mut *out,
                    n: 0,
                };
                write_tensor(i, t, &mut counted)?;
                if counted.n != t.byte_len() {
                    return Err(corrupt(
                        "skeleton",
                        &t.name,
                        format!(
                            "{} bytes written for a {}-byte tensor",
                            counted.n,
                            t.byte_len()
                        ),
                    ));
                }
                written += counted.n;
            }
        }
    }
    Ok(written)
}

/// [`reassemble`] into memory from the tensors' bytes given in file order.
pub fn reassemble_to_vec(skeleton: &[u8], tensors: &[&[u8]]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    reassemble(skeleton, &mut out, |i, t, w| {
        let bytes = tensors
            .get(i)
            .ok_or_else(|| corrupt("skeleton", &t.name, "no bytes given for this tensor"))?;
        w.write_all(bytes).map_err(Error::from)
    })?;
    Ok(out)
}

/// A writer that takes the tensors' bytes of a file, concatenated in file order, and writes the
/// whole file: the skeleton pieces go in between as the tensor bytes pass their boundaries. Lets
/// a caller that already streams a file's tensors back to back (decoding them in parallel
/// batches) reassemble it without a callback per tensor. [`Splice::finish`] writes the trailing
/// piece and checks that exactly the tensors' bytes came.
pub struct Splice<'s, W: Write> {
    inner: W,
    payload: &'s [u8],
    /// (tensor bytes before the piece, piece's range in the payload), in file order.
    pieces: Vec<(u64, std::ops::Range<usize>)>,
    next: usize,
    tensor_bytes: u64,
    total_tensor_bytes: u64,
}

impl<'s, W: Write> Splice<'s, W> {
    /// A splice of the decoded skeleton `sk` into `inner`.
    pub fn new(sk: &Skeleton<'s>, inner: W) -> Self {
        let mut pieces = Vec::new();
        let (mut before, mut at) = (0u64, 0usize);
        for seg in sk.layout.segments() {
            match seg {
                Segment::Skeleton { start, end } => {
                    let n = (end - start) as usize;
                    pieces.push((before, at..at + n));
                    at += n;
                }
                Segment::Tensor(i) => before += sk.layout.tensors[i].byte_len(),
            }
        }
        Splice {
            inner,
            payload: sk.payload,
            pieces,
            next: 0,
            tensor_bytes: 0,
            total_tensor_bytes: before,
        }
    }

    /// Writes the skeleton pieces due at the current position.
    fn pieces_due(&mut self) -> std::io::Result<()> {
        while let Some((before, range)) = self.pieces.get(self.next) {
            if *before != self.tensor_bytes {
                break;
            }
            self.inner.write_all(&self.payload[range.clone()])?;
            self.next += 1;
        }
        Ok(())
    }

    /// Writes what is left of the skeleton and returns the inner writer; errs unless exactly
    /// the tensors' bytes were written.
    pub fn finish(mut self) -> Result<W> {
        if self.tensor_bytes != self.total_tensor_bytes {
            return Err(corrupt(
                "skeleton",
                "tensors",
                format!(
                    "{} tensor bytes given, the layout holds {}",
                    self.tensor_bytes, self.total_tensor_bytes
                ),
            ));
        }
        self.pieces_due()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Splice<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pieces_due()?;
        let limit = self
            .pieces
            .get(self.next)
            .map_or(self.total_tensor_bytes, |(before, _)| *before);
        let room = limit - self.tensor_bytes;
        if room == 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "more tensor bytes than the skeleton's layout holds",
            ));
        }
        let n = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.write(&buf[..n])?;
        self.tensor_bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct Counting<'w, W: Write> {
    inner: &'w mut W,
    n: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn put_u32(out: &mut Vec<u8>, n: usize) -> Result<()> {
    let n = u32::try_from(n).map_err(|_| corrupt("skeleton", "count", "over 2^32"))?;
    out.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<()> {
    put_u32(out, s.len())?;
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_element(out: &mut Vec<u8>, e: ElementType) {
    let (tag, code) = match e {
        ElementType::Dense(d) => (
            0u8,
            ALL_DTYPES.iter().position(|x| *x == d).unwrap_or(0) as u32,
        ),
        ElementType::Ggml(g) => (1, g.id()),
    };
    out.push(tag);
    out.extend_from_slice(&code.to_le_bytes());
}

fn put_shape(out: &mut Vec<u8>, shape: &[u64]) -> Result<()> {
    put_u32(out, shape.len())?;
    shape
        .iter()
        .for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
    Ok(())
}

fn read_tensor(r: &mut Reader) -> Result<Tensor> {
    let start = r.u64()?;
    let end = r.u64()?;
    let name = r.string()?;
    let element = r.element()?;
    let shape = r.shape()?;
    let origin = match r.u8()? {
        0 => Origin::Plain,
        1 => Origin::TypedField(r.string()?),
        2 => Origin::Storage(r.string()?),
        _ => return Err(r.bad(&name, "unknown origin tag")),
    };
    Ok(Tensor {
        name,
        element,
        shape,
        start,
        end,
        origin,
    })
}

fn read_view(r: &mut Reader) -> Result<View> {
    let name = r.string()?;
    let element = r.element()?;
    let shape = r.shape()?;
    let tensor = r.u32()? as usize;
    let byte_offset = r.u64()?;
    let strides = match r.u8()? {
        0 => None,
        1 => Some(
            (0..shape.len())
                .map(|_| r.u64())
                .collect::<Result<Vec<_>>>()?,
        ),
        _ => return Err(r.bad(&name, "unknown stride tag")),
    };
    Ok(View {
        name,
        element,
        shape,
        tensor,
        byte_offset,
        strides,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bad(&self, what: &str, detail: impl Into<String>) -> Error {
        corrupt("skeleton", format!("{what} at byte {}", self.pos), detail)
    }
    fn left(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n as u64 > self.left() {
            return Err(self.bad("record", format!("{n} bytes needed, {} left", self.left())));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.bad("string", "not UTF-8"))
    }
    fn element(&mut self) -> Result<ElementType> {
        let tag = self.u8()?;
        let code = self.u32()?;
        match tag {
            0 => ALL_DTYPES
                .get(code as usize)
                .map(|d: &DType| ElementType::Dense(*d))
                .ok_or_else(|| self.bad("dtype", format!("unknown dtype code {code}"))),
            1 => GgmlType::from_id(code)
                .map(ElementType::Ggml)
                .ok_or_else(|| self.bad("ggml type", format!("unknown ggml type {code}"))),
            _ => Err(self.bad("element", format!("unknown element tag {tag}"))),
        }
    }
    fn shape(&mut self) -> Result<Vec<u64>> {
        let rank = self.u32()?;
        if rank > MAX_RANK {
            return Err(self.bad("shape", format!("rank {rank} over {MAX_RANK}")));
        }
        (0..rank).map(|_| self.u64()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Container, Vec<u8>) {
        let file: Vec<u8> = (0..40u8).collect();
        let c = Container {
            format: Format::Gguf,
            file_len: 40,
            tensors: vec![
                Tensor {
                    name: "w".into(),
                    element: ElementType::Dense(DType::F32),
                    shape: vec![2, 2],
                    start: 4,
                    end: 20,
                    origin: Origin::TypedField("float_data".into()),
                },
                Tensor {
                    name: "q".into(),
                    element: ElementType::Ggml(GgmlType::from_id(2).unwrap()),
                    shape: vec![32],
                    start: 20,
                    end: 38,
                    origin: Origin::Plain,
                },
            ],
            views: vec![View {
                name: "v".into(),
                element: ElementType::Dense(DType::F32),
                shape: vec![2, 2],
                tensor: 0,
                byte_offset: 0,
                strides: Some(vec![1, 2]),
            }],
            skeleton_only: vec!["metadata".into()],
            notes: vec!["note".into()],
        };
        (c, file)
    }

    #[test]
    fn round_trips_byte_for_byte() {
        let (c, file) = sample();
        let sk = encode(&c, &file).unwrap();
        let decoded = decode(&sk).unwrap();
        assert_eq!(decoded.layout, c);
        assert_eq!(decoded.payload, [&file[..4], &file[38..]].concat());
        let back = reassemble_to_vec(&sk, &[&file[4..20], &file[20..38]]).unwrap();
        assert_eq!(back, file);
    }

    #[test]
    fn splice_rebuilds_the_file_from_concatenated_tensors_in_any_chunking() {
        let (c, file) = sample();
        let sk_bytes = encode(&c, &file).unwrap();
        let sk = decode(&sk_bytes).unwrap();
        let tensors = [&file[4..20], &file[20..38]].concat();
        for chunk in [1, 3, 16, 34] {
            let mut splice = Splice::new(&sk, Vec::new());
            for part in tensors.chunks(chunk) {
                splice.write_all(part).unwrap();
            }
            assert_eq!(splice.finish().unwrap(), file, "chunks of {chunk}");
        }
        let mut short = Splice::new(&sk, Vec::new());
        short.write_all(&tensors[..33]).unwrap();
        assert!(short.finish().is_err());
        let mut long = Splice::new(&sk, Vec::new());
        assert!(
            long.write_all(&[tensors.clone(), vec![0]].concat())
                .is_err()
        );
    }

    #[test]
    fn wrong_tensor_lengths_and_truncations_are_errors() {
        let (c, file) = sample();
        let sk = encode(&c, &file).unwrap();
        assert!(reassemble_to_vec(&sk, &[&file[4..19], &file[20..38]]).is_err());
        for cut in 0..sk.len() {
            assert!(decode(&sk[..cut]).is_err(), "truncated at {cut}");
        }
        let mut extra = sk.clone();
        extra.push(0);
        assert!(decode(&extra).is_err());
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        let mut sk = MAGIC.to_vec();
        sk.extend_from_slice(&[VERSION, 1, 0, 0]);
        sk.extend_from_slice(&0u64.to_le_bytes());
        for _ in 0..4 {
            sk.extend_from_slice(&u32::MAX.to_le_bytes());
        }
        assert!(decode(&sk).unwrap_err().to_string().contains("cannot fit"));
    }

    proptest::proptest! {
        /// Any file cut into any disjoint tensor ranges rebuilds byte for byte from its skeleton.
        #[test]
        fn any_layout_round_trips(
            file in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            cuts in proptest::collection::vec(0usize..512, 0..12),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(file.len())).collect();
            cuts.sort();
            cuts.dedup();
            // Every other interval between cuts is a tensor.
            let tensors: Vec<Tensor> = cuts
                .chunks_exact(2)
                .enumerate()
                .map(|(i, w)| Tensor {
                    name: format!("t{i}"),
                    element: ElementType::Dense(DType::U8),
                    shape: vec![(w[1] - w[0]) as u64],
                    start: w[0] as u64,
                    end: w[1] as u64,
                    origin: Origin::Plain,
                })
                .collect();
            let c = Container {
                format: Format::Onnx,
                file_len: file.len() as u64,
                tensors,
                views: vec![],
                skeleton_only: vec![],
                notes: vec![],
            };
            let sk = encode(&c, &file).unwrap();
            proptest::prop_assert_eq!(&decode(&sk).unwrap().layout, &c);
            let parts: Vec<&[u8]> = c.tensors.iter().map(|t| &file[t.start as usize..t.end as usize]).collect();
            proptest::prop_assert_eq!(reassemble_to_vec(&sk, &parts).unwrap(), file);
        }
    }
}
