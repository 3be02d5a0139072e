//! Bounded (quantized) delta: every element reconstructed within an absolute tolerance.
//!
//! With `B̂` the base exactly as it will be reconstructed (or zero for a standalone tensor) and
//! `step = 2·tol`, element `i` is coded as `q_i = round((T_i − B̂_i) / step)` and reconstructed as
//! `T̂_i = dtype(B̂_i + q_i·step)` in f64 arithmetic. The encoder runs the decoder's formula on
//! every element and keeps as an *exception* (its exact bits) any element whose reconstruction is
//! off by more than `tol`, and any NaN or infinity, so the bound holds for every element by
//! construction. Codes are zig-zagged, narrowed to 1, 2 or 4 bytes, and entropy coded through the
//! byte-grouped zstd codec: fine-tune deltas are concentrated near zero.
//!
//! Layout (little-endian):
//! ```text
//! u8 version = 1 | u8 code width w (1, 2, 4) | u8 flags (bit 0: has base) | u8 0
//! f64 step (finite, > 0) | u64 element count n | u64 exception count e (≤ n)
//! u64 length + grouped blob of n·w code bytes
//! u64 length + grouped blob of e u64 index gaps (first index, then differences)
//! u64 length + grouped blob of e exact element values
//! ```

use rayon::prelude::*;

use super::{CodecError, grouped};
use crate::dtype::DType;

const VERSION: u8 = 1;
const HEADER: usize = 4 + 8 + 8 + 8;
const BLOCK: usize = 1 << 16;
/// Codes beyond this magnitude are stored as exceptions.
const MAX_CODE: i64 = (1 << 30) - 1;

/// The result of a bounded encoding.
#[derive(Debug, Clone)]
pub struct Quantized {
    /// The encoded blob.
    pub bytes: Vec<u8>,
    /// Largest |original − reconstruction| over all elements (exceptions count as 0).
    pub max_error: f64,
    /// Elements kept exactly (NaN, infinities, or rounding past the bound).
    pub exceptions: u64,
}

/// True for the dtypes bounded mode quantizes (others are always stored exactly).
pub fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
}

/// A float element type: how to read one as f64 and how to round an f64 to it.
trait Elem {
    const SIZE: usize;
    fn get(b: &[u8]) -> f64;
    fn write(v: f64, out: &mut [u8]);
    /// `v` rounded to this type, as f64 (what `write` then `get` would give).
    fn round(v: f64) -> f64;
}

struct F32;
struct F64;
struct F16;
struct BF16;

impl Elem for F32 {
    const SIZE: usize = 4;
    #[inline(always)]
    fn get(b: &[u8]) -> f64 {
        f32::from_le_bytes(b.try_into().unwrap()) as f64
    }
    #[inline(always)]
    fn write(v: f64, out: &mut [u8]) {
        out.copy_from_slice(&(v as f32).to_le_bytes())
    }
    #[inline(always)]
    fn round(v: f64) -> f64 {
        v as f32 as f64
    }
}

impl Elem for F64 {
    const SIZE: usize = 8;
    #[inline(always)]
    fn get(b: &[u8]) -> f64 {
        f64::from_le_bytes(b.try_into().unwrap())
    }
    #[inline(always)]
    fn write(v: f64, out: &mut [u8]) {
        out.copy_from_slice(&v.to_le_bytes())
    }
    #[inline(always)]
    fn round(v: f64) -> f64 {
        v
    }
}

impl Elem for F16 {
    const SIZE: usize = 2;
    #[inline(always)]
    fn get(b: &[u8]) -> f64 {
        half::f16::from_le_bytes([b[0], b[1]]).to_f64()
    }
    #[inline(always)]
    fn write(v: f64, out: &mut [u8]) {
        out.copy_from_slice(&half::f16::from_f64(v).to_le_bytes())
    }
    #[inline(always)]
    fn round(v: f64) -> f64 {
        half::f16::from_f64(v).to_f64()
    }
}

impl Elem for BF16 {
    const SIZE: usize = 2;
    #[inline(always)]
    fn get(b: &[u8]) -> f64 {
        half::bf16::from_le_bytes([b[0], b[1]]).to_f64()
    }
    #[inline(always)]
    fn write(v: f64, out: &mut [u8]) {
        out.copy_from_slice(&half::bf16::from_f64(v).to_le_bytes())
    }
    #[inline(always)]
    fn round(v: f64) -> f64 {
        half::bf16::from_f64(v).to_f64()
    }
}

/// Runs `$body` with `$E` bound to the element type of `$dtype` (a bounded-mode dtype).
macro_rules! with_elem {
    ($dtype:expr, $E:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $E = F32;
                $body
            }
            DType::F64 => {
                type $E = F64;
                $body
            }
            DType::F16 => {
                type $E = F16;
                $body
            }
            _ => {
                type $E = BF16;
                $body
            }
        }
    };
}

/// Reads element `i` of a float tensor as f64 (for the slow paths and tests).
fn load(dtype: DType, bytes: &[u8], i: usize) -> f64 {
    with_elem!(dtype, E => E::get(&bytes[i * E::SIZE..(i + 1) * E::SIZE]))
}

/// The reconstruction formula shared by encoder check and decoder.
#[inline(always)]
fn reconstruct(base: f64, code: i64, step: f64) -> f64 {
    base + code as f64 * step
}

#[inline(always)]
fn zigzag(q: i64) -> u32 {
    ((q << 1) ^ (q >> 63)) as u32
}

#[inline(always)]
fn unzigzag(z: u32) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

struct BlockResult {
    codes: Vec<u32>,
    exceptions: Vec<u64>,
    max_error: f64,
}

/// Encodes `target` (dtype `dtype`) against `base` (same dtype and length, the base exactly as
/// reconstructed) or against zero, within absolute tolerance `tol`.
pub fn encode(
    dtype: DType,
    target: &[u8],
    base: Option<&[u8]>,
    tol: f64,
    level: i32,
) -> Result<Quantized, CodecError> {
    if !supports(dtype) {
        return Err(CodecError::corrupt(format!(
            "bounded mode does not apply to {dtype}"
        )));
    }
    if !(tol.is_finite() && tol > 0.0) {
        return Err(CodecError::corrupt(format!(
            "tolerance must be finite and positive, got {tol}"
        )));
    }
    let size = (dtype.bits() / 8) as usize;
    if !target.len().is_multiple_of(size) || base.is_some_and(|b| b.len() != target.len()) {
        return Err(CodecError::corrupt("target and base lengths disagree"));
    }
    let n = target.len() / size;
    let step = 2.0 * tol;
    let blocks: Vec<BlockResult> = (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .map(|blk| {
            let range = blk * BLOCK..((blk + 1) * BLOCK).min(n);
            let mut r = BlockResult {
                codes: Vec::with_capacity(range.len()),
                exceptions: Vec::new(),
                max_error: 0.0,
            };
            let first = range.start;
            let target = &target[range.start * size..range.end * size];
            let base = base.map(|b| &b[range.start * size..range.end * size]);
            with_elem!(dtype, E => encode_block::<E>(target, base, first, step, tol, &mut r));
            r
        })
        .collect();

    let max_error = blocks.iter().map(|b| b.max_error).fold(0.0, f64::max);
    let max_code = blocks
        .iter()
        .flat_map(|b| b.codes.iter())
        .copied()
        .max()
        .unwrap_or(0);
    let w: usize = if max_code < 1 << 8 {
        1
    } else if max_code < 1 << 16 {
        2
    } else {
        4
    };
    let mut code_bytes = vec![0u8; n * w];
    let all_codes = blocks.iter().flat_map(|b| b.codes.iter());
    match w {
        1 => narrow::<1>(all_codes, &mut code_bytes),
        2 => narrow::<2>(all_codes, &mut code_bytes),
        _ => narrow::<4>(all_codes, &mut code_bytes),
    }
    let exceptions: Vec<u64> = blocks
        .iter()
        .flat_map(|b| b.exceptions.iter().copied())
        .collect();
    let mut gaps = Vec::with_capacity(exceptions.len() * 8);
    let mut values = Vec::with_capacity(exceptions.len() * size);
    let mut prev = 0u64;
    for &i in &exceptions {
        gaps.extend_from_slice(&(i - prev).to_le_bytes());
        prev = i;
        values.extend_from_slice(&target[i as usize * size..(i as usize + 1) * size]);
    }

    let mut out = Vec::new();
    out.extend_from_slice(&[VERSION, w as u8, base.is_some() as u8, 0]);
    out.extend_from_slice(&step.to_le_bytes());
    out.extend_from_slice(&(n as u64).to_le_bytes());
    out.extend_from_slice(&(exceptions.len() as u64).to_le_bytes());
    for (section, width) in [(code_bytes, w), (gaps, 8), (values, size)] {
        let blob = grouped::encode(&section, width, level);
        out.extend_from_slice(&(blob.len() as u64).to_le_bytes());
        out.extend_from_slice(&blob);
    }
    Ok(Quantized {
        bytes: out,
        max_error,
        exceptions: exceptions.len() as u64,
    })
}

/// Quantizes one block; `first` is the index of its first element in the tensor.
#[inline(always)]
fn encode_block<E: Elem>(
    target: &[u8],
    base: Option<&[u8]>,
    first: usize,
    step: f64,
    tol: f64,
    r: &mut BlockResult,
) {
    let inv_step = 1.0 / step;
    let mut one = |j: usize, t: f64, b: f64| {
        let x = (t - b) * inv_step;
        // NaN fails the range test, as does anything too far to code.
        let mut code = if x.abs() <= MAX_CODE as f64 {
            (x + 0.5f64.copysign(x)) as i64
        } else {
            i64::MAX
        };
        if code != i64::MAX {
            let err = (t - E::round(reconstruct(b, code, step))).abs();
            if err <= tol {
                r.max_error = r.max_error.max(err);
            } else {
                code = i64::MAX;
            }
        }
        if code == i64::MAX {
            r.exceptions.push((first + j) as u64);
            code = 0;
        }
        r.codes.push(zigzag(code));
    };
    match base {
        Some(base) => {
            for (j, (t, b)) in target
                .chunks_exact(E::SIZE)
                .zip(base.chunks_exact(E::SIZE))
                .enumerate()
            {
                one(j, E::get(t), E::get(b));
            }
        }
        None => {
            for (j, t) in target.chunks_exact(E::SIZE).enumerate() {
                one(j, E::get(t), 0.0);
            }
        }
    }
}

/// Writes each code's low `W` bytes.
fn narrow<'a, const W: usize>(codes: impl Iterator<Item = &'a u32>, out: &mut [u8]) {
    for (c, dst) in codes.zip(out.chunks_exact_mut(W)) {
        dst.copy_from_slice(&c.to_le_bytes()[..W]);
    }
}

/// Reconstructs one block from its codes (of `w` bytes each). On x86-64 CPUs with AVX2 the
/// f32 and f64 loops run in a copy compiled for it: the same IEEE operations (no fused
/// multiply-add), so the same bits, four lanes at a time. Half types stay on the baseline copy,
/// whose conversions go through the `half` crate.
fn decode_block<E: Elem>(codes: &[u8], w: usize, base: Option<&[u8]>, step: f64, dst: &mut [u8]) {
    #[inline(always)]
    fn by_width<E: Elem>(codes: &[u8], w: usize, base: Option<&[u8]>, step: f64, dst: &mut [u8]) {
        match w {
            1 => decode_block_w::<E, 1>(codes, base, step, dst),
            2 => decode_block_w::<E, 2>(codes, base, step, dst),
            _ => decode_block_w::<E, 4>(codes, base, step, dst),
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn wide<E: Elem>(codes: &[u8], w: usize, base: Option<&[u8]>, step: f64, dst: &mut [u8]) {
            by_width::<E>(codes, w, base, step, dst)
        }
        if E::SIZE >= 4 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { wide::<E>(codes, w, base, step, dst) };
            return;
        }
    }
    by_width::<E>(codes, w, base, step, dst)
}

/// The loop of [`decode_block`]: `LANES` elements at a time over fixed-length chunks (no bounds
/// checks, vectorizable), then the tail. A code is un-zig-zagged in `i32` (every `u32` code's
/// value fits), whose conversion to `f64` is exact, as the `i64` of [`reconstruct`] is.
#[inline(always)]
fn decode_block_w<E: Elem, const W: usize>(
    codes: &[u8],
    base: Option<&[u8]>,
    step: f64,
    dst: &mut [u8],
) {
    const LANES: usize = 16;
    #[inline(always)]
    fn code<const W: usize>(c: &[u8]) -> f64 {
        let mut z = [0u8; 4];
        z[..W].copy_from_slice(&c[..W]);
        let z = u32::from_le_bytes(z);
        (((z >> 1) as i32) ^ -((z & 1) as i32)) as f64
    }
    // f32 and f64 (the only 4- and 8-byte element types) over typed slices where aligned (they
    // are: decoded buffers come from the allocator, blobs sit 4 KiB-aligned in packs): one
    // element per iteration, which the loop vectorizer turns into full-width loads and stores.
    macro_rules! typed {
        ($t:ty) => {
            if cfg!(target_endian = "little") {
                // SAFETY: every bit pattern is a valid f32 / f64, and `align_to` keeps the bytes
                // in bounds; the middle part is used only when the whole slice is aligned.
                let (pre, out, post) = unsafe { dst.align_to_mut::<$t>() };
                let typed_base = base.map(|b| unsafe { b.align_to::<$t>() });
                let codes = codes.chunks_exact(W);
                if pre.is_empty() && post.is_empty() && out.len() == codes.len() {
                    match typed_base {
                        Some(([], b, [])) if b.len() == out.len() => {
                            for ((o, c), b) in out.iter_mut().zip(codes).zip(b) {
                                *o = (*b as f64 + code::<W>(c) * step) as $t;
                            }
                            return;
                        }
                        None => {
                            for (o, c) in out.iter_mut().zip(codes) {
                                *o = (0.0 + code::<W>(c) * step) as $t;
                            }
                            return;
                        }
                        _ => {}
                    }
                }
            }
        };
    }
    if E::SIZE == 4 {
        typed!(f32);
    } else if E::SIZE == 8 {
        #[allow(clippy::unnecessary_cast)]
        {
            typed!(f64);
        }
    }
    let n = dst.len() / E::SIZE;
    let body = n - n % LANES;
    let (dst_body, dst_tail) = dst.split_at_mut(body * E::SIZE);
    let (codes_body, codes_tail) = codes.split_at(body * W);
    match base {
        Some(base) => {
            let (base_body, base_tail) = base.split_at(body * E::SIZE);
            for ((out, c), b) in dst_body
                .chunks_exact_mut(LANES * E::SIZE)
                .zip(codes_body.chunks_exact(LANES * W))
                .zip(base_body.chunks_exact(LANES * E::SIZE))
            {
                for k in 0..LANES {
                    let v = E::get(&b[k * E::SIZE..(k + 1) * E::SIZE])
                        + code::<W>(&c[k * W..(k + 1) * W]) * step;
                    E::write(v, &mut out[k * E::SIZE..(k + 1) * E::SIZE]);
                }
            }
            for ((out, c), b) in dst_tail
                .chunks_exact_mut(E::SIZE)
                .zip(codes_tail.chunks_exact(W))
                .zip(base_tail.chunks_exact(E::SIZE))
            {
                E::write(E::get(b) + code::<W>(c) * step, out);
            }
        }
        None => {
            for (out, c) in dst_body
                .chunks_exact_mut(LANES * E::SIZE)
                .zip(codes_body.chunks_exact(LANES * W))
            {
                for k in 0..LANES {
                    let v = 0.0 + code::<W>(&c[k * W..(k + 1) * W]) * step;
                    E::write(v, &mut out[k * E::SIZE..(k + 1) * E::SIZE]);
                }
            }
            for (out, c) in dst_tail
                .chunks_exact_mut(E::SIZE)
                .zip(codes_tail.chunks_exact(W))
            {
                E::write(0.0 + code::<W>(c) * step, out);
            }
        }
    }
}

/// Reads the step recorded in a blob (for display and error-bound checks).
pub fn step_of(stored: &[u8]) -> Option<f64> {
    stored
        .get(4..12)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
}

/// A bounded blob's sections, parsed and entropy-decoded but not yet reconstructed.
struct Sections {
    /// Code width in bytes (1, 2 or 4); `codes` holds `n · w` zig-zagged bytes.
    w: usize,
    has_base: bool,
    step: f64,
    codes: Vec<u8>,
    /// Exception indices, strictly increasing and below `n`.
    exception_index: Vec<usize>,
    /// Exact element bytes of each exception, `size` bytes each.
    exception_bytes: Vec<u8>,
}

/// A bounded blob's header, checked, and its three sections, not yet entropy-decoded.
struct Parsed<'a> {
    w: usize,
    has_base: bool,
    step: f64,
    /// Element count.
    n: usize,
    /// Exception count.
    e: usize,
    /// Element size in bytes.
    size: usize,
    codes: &'a [u8],
    gaps: &'a [u8],
    values: &'a [u8],
}

/// Parses and checks a bounded blob that must describe `raw_len` raw bytes of `dtype`.
fn parse(dtype: DType, stored: &[u8], raw_len: usize) -> Result<Parsed<'_>, CodecError> {
    if !supports(dtype) {
        return Err(CodecError::corrupt(format!(
            "bounded blob for non-float dtype {dtype}"
        )));
    }
    let size = (dtype.bits() / 8) as usize;
    let header = stored
        .get(..HEADER)
        .ok_or_else(|| CodecError::corrupt("bounded header truncated"))?;
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap());
    let (version, w, has_base) = (header[0], header[1] as usize, header[2]);
    let step = f64::from_le_bytes(header[4..12].try_into().unwrap());
    let (n, e) = (u64_at(12), u64_at(20));
    if version != VERSION || !matches!(w, 1 | 2 | 4) || has_base > 1 || header[3] != 0 {
        return Err(CodecError::corrupt("bad bounded header"));
    }
    if !(step.is_finite() && step > 0.0) {
        return Err(CodecError::corrupt(format!("bad quantization step {step}")));
    }
    if n.checked_mul(size as u64) != Some(raw_len as u64) || e > n {
        return Err(CodecError::corrupt(
            "element or exception count disagrees with the tensor",
        ));
    }
    let (n, e) = (n as usize, e as usize);
    let mut rest = &stored[HEADER..];
    let mut section = || -> Result<&[u8], CodecError> {
        let len = rest
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()));
        let len = len
            .filter(|&l| l <= (rest.len() - 8) as u64)
            .ok_or_else(|| CodecError::corrupt("section runs past the blob"))?;
        let (blob, tail) = rest[8..].split_at(len as usize);
        rest = tail;
        Ok(blob)
    };
    let (codes, gaps, values) = (section()?, section()?, section()?);
    if !rest.is_empty() {
        return Err(CodecError::corrupt(
            "trailing bytes after the bounded sections",
        ));
    }
    Ok(Parsed {
        w,
        has_base: has_base == 1,
        step,
        n,
        e,
        size,
        codes,
        gaps,
        values,
    })
}

impl Parsed<'_> {
    /// Decodes the exception sections: indices (checked strictly increasing and below `n`) and
    /// exact element bytes.
    fn exceptions(&self) -> Result<(Vec<usize>, Vec<u8>), CodecError> {
        let mut gaps = vec![0u8; self.e * 8];
        grouped::decode_into(self.gaps, &mut gaps)?;
        let mut exception_bytes = vec![0u8; self.e * self.size];
        grouped::decode_into(self.values, &mut exception_bytes)?;
        let mut exception_index = Vec::with_capacity(self.e);
        let mut index = 0u64;
        for (k, gap) in gaps.chunks_exact(8).enumerate() {
            index = index
                .checked_add(u64::from_le_bytes(gap.try_into().unwrap()))
                .filter(|&i| i < self.n as u64 && (k == 0 || gap != [0; 8]))
                .ok_or_else(|| CodecError::corrupt("exception index out of range or repeated"))?;
            exception_index.push(index as usize);
        }
        Ok((exception_index, exception_bytes))
    }
}

/// Parses and checks a bounded blob that must describe `raw_len` raw bytes of `dtype`, and
/// entropy-decodes all of its sections.
fn sections(dtype: DType, stored: &[u8], raw_len: usize) -> Result<Sections, CodecError> {
    let p = parse(dtype, stored, raw_len)?;
    let mut codes = vec![0u8; p.n * p.w];
    grouped::decode_into(p.codes, &mut codes)?;
    let (exception_index, exception_bytes) = p.exceptions()?;
    Ok(Sections {
        w: p.w,
        has_base: p.has_base,
        step: p.step,
        codes,
        exception_index,
        exception_bytes,
    })
}

/// Reconstructs element range `first..first + dst.len() / size` from its `codes` (`w` bytes
/// each) and `base` (the same range of the base), in parallel blocks of [`BLOCK`] elements:
/// exceptions not applied.
fn reconstruct_range(
    dtype: DType,
    w: usize,
    step: f64,
    codes: &[u8],
    base: Option<&[u8]>,
    dst: &mut [u8],
) {
    let size = (dtype.bits() / 8) as usize;
    dst.par_chunks_mut(BLOCK * size)
        .enumerate()
        .for_each(|(blk, dst)| {
            let first = blk * BLOCK;
            let codes = &codes[first * w..(first + dst.len() / size) * w];
            let base = base.map(|b| &b[first * size..first * size + dst.len()]);
            with_elem!(dtype, E => decode_block::<E>(codes, w, base, step, dst));
        });
}

/// A bounded blob parsed once, for reconstructing element ranges of it block by block
/// (streamed export of large tensors) without decoding the whole code stream: the code section
/// is decoded by chunk ranges (see [`grouped::Ranged`]); the exception sections, small, are
/// decoded whole up front. Output is bit for bit that of [`decode_into`].
pub struct Ranged<'a> {
    dtype: DType,
    size: usize,
    w: usize,
    has_base: bool,
    step: f64,
    n: usize,
    codes: grouped::Ranged<'a>,
    exception_index: Vec<usize>,
    exception_bytes: Vec<u8>,
}

impl<'a> Ranged<'a> {
    /// Parses and checks `stored`, which must describe `raw_len` raw bytes of `dtype`.
    pub fn new(dtype: DType, stored: &'a [u8], raw_len: u64) -> Result<Self, CodecError> {
        let raw_len = usize::try_from(raw_len)
            .map_err(|_| CodecError::corrupt("raw length too large for this machine"))?;
        let p = parse(dtype, stored, raw_len)?;
        let codes = grouped::Ranged::new(p.codes, (p.n * p.w) as u64)?;
        let (exception_index, exception_bytes) = p.exceptions()?;
        Ok(Ranged {
            dtype,
            size: p.size,
            w: p.w,
            has_base: p.has_base,
            step: p.step,
            n: p.n,
            codes,
            exception_index,
            exception_bytes,
        })
    }

    /// Whether the blob was encoded against a base (whose ranges [`Ranged::decode_range`] then
    /// needs).
    pub fn has_base(&self) -> bool {
        self.has_base
    }

    /// A range start (in raw bytes) that decodes no code chunk twice when ranges are multiples
    /// of it; any whole-element range is accepted.
    pub fn align(&self) -> usize {
        (self.codes.align() / self.w).max(1) * self.size
    }

    /// Reconstructs raw bytes `start..start + out.len()` (whole elements) against `base`, the
    /// same byte range of the base, when the blob was encoded against one.
    pub fn decode_range(
        &self,
        start: u64,
        base: Option<&[u8]>,
        out: &mut [u8],
    ) -> Result<(), CodecError> {
        let (size, w) = (self.size as u64, self.w as u64);
        let end = start
            .checked_add(out.len() as u64)
            .filter(|&e| e <= self.n as u64 * size)
            .ok_or_else(|| CodecError::corrupt("range past the end of the data"))?;
        if !start.is_multiple_of(size) || !end.is_multiple_of(size) {
            return Err(CodecError::corrupt("range splits elements"));
        }
        if self.has_base != base.is_some() || base.is_some_and(|b| b.len() != out.len()) {
            return Err(CodecError::corrupt(
                "base presence or length disagrees with the blob",
            ));
        }
        let (a, b) = (start / size, end / size);
        // The code bytes of the range, decoded from the chunks that cover them.
        let chunk = self.codes.align() as u64;
        let (ca, cb) = (a * w, b * w);
        let lo = ca / chunk * chunk;
        let hi = (cb.div_ceil(chunk) * chunk).min(self.n as u64 * w);
        // The code bytes go to this thread's reused buffer, taken out of its cell while in use
        // (a rayon task stolen meanwhile on this thread finds the cell empty, not borrowed).
        let mut scratch = CODE_SCRATCH.with(|c| c.take());
        let len = (hi - lo) as usize;
        if scratch.len() < len {
            scratch.resize(len, 0);
        }
        let decoded = self.codes.decode_range(lo, &mut scratch[..len]);
        if decoded.is_ok() {
            let codes = &scratch[(ca - lo) as usize..(cb - lo) as usize];
            reconstruct_range(self.dtype, self.w, self.step, codes, base, out);
        }
        CODE_SCRATCH.with(|c| c.replace(scratch));
        decoded?;
        let (a, b) = (a as usize, b as usize);
        let first = self.exception_index.partition_point(|&i| i < a);
        for (k, &i) in self.exception_index.iter().enumerate().skip(first) {
            if i >= b {
                break;
            }
            let i = i - a;
            out[i * self.size..(i + 1) * self.size]
                .copy_from_slice(&self.exception_bytes[k * self.size..(k + 1) * self.size]);
        }
        Ok(())
    }
}

thread_local! {
    /// Code bytes of the range being reconstructed on this thread (reused, never zeroed: every
    /// byte used is written first).
    static CODE_SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Decodes `stored` into `out` (the tensor's raw length), against `base` when it was encoded
/// with one: in parallel, one code chunk's elements at a time, through [`Ranged`], so the code
/// stream is never held whole.
pub fn decode_into(
    dtype: DType,
    stored: &[u8],
    base: Option<&[u8]>,
    out: &mut [u8],
) -> Result<(), CodecError> {
    let ranged = Ranged::new(dtype, stored, out.len() as u64)?;
    if ranged.has_base() != base.is_some() || base.is_some_and(|b| b.len() != out.len()) {
        return Err(CodecError::corrupt(
            "base presence or length disagrees with the blob",
        ));
    }
    let block = ranged.align();
    out.par_chunks_mut(block)
        .enumerate()
        .try_for_each(|(k, dst)| {
            let start = k * block;
            let base = base.map(|b| &b[start..start + dst.len()]);
            ranged.decode_range(start as u64, base, dst)
        })
}

/// A bounded blob as codes, for computing on it without reconstructing every element: element
/// `i` is `base_i + codes[i] · step` (in f64, then rounded to the dtype), except where
/// `exceptions` gives its exact value.
#[derive(Debug, Clone, PartialEq)]
pub struct Codes {
    /// Quantization step (twice the tolerance).
    pub step: f64,
    /// Whether the blob was encoded against a base object.
    pub has_base: bool,
    /// One code per element (an exception's code is 0).
    pub codes: Vec<i32>,
    /// `(element index, exact value)`, indices strictly increasing.
    pub exceptions: Vec<(usize, f64)>,
}

/// Parses a bounded blob of `raw_len` raw bytes of `dtype` into its codes (see [`Codes`]).
pub fn decode_codes(dtype: DType, stored: &[u8], raw_len: usize) -> Result<Codes, CodecError> {
    let s = sections(dtype, stored, raw_len)?;
    let size = (dtype.bits() / 8) as usize;
    let mut codes = vec![0i32; raw_len / size];
    let widen = |c: &[u8]| {
        let mut z = [0u8; 4];
        z[..c.len()].copy_from_slice(c);
        // Codes never exceed MAX_CODE in magnitude when written; a damaged one is clamped
        // into i32 rather than wrapped (the blob's checksum is what detects damage).
        unzigzag(u32::from_le_bytes(z)).clamp(i32::MIN as i64, i32::MAX as i64) as i32
    };
    codes
        .par_chunks_mut(BLOCK)
        .zip(s.codes.par_chunks(BLOCK * s.w))
        .for_each(|(dst, src)| {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(s.w)) {
                *d = widen(c);
            }
        });
    let exceptions = s
        .exception_index
        .iter()
        .enumerate()
        .map(|(k, &i)| (i, load(dtype, &s.exception_bytes, k)))
        .collect();
    Ok(Codes {
        step: s.step,
        has_base: s.has_base,
        codes,
        exceptions,
    })
}

/// Largest |original − reconstructed| over all elements of two tensors of a bounded-mode dtype.
/// Non-finite elements must match exactly (NaN with NaN, same infinity); otherwise, or when the
/// lengths differ, the result is infinite.
pub fn max_abs_error(dtype: DType, original: &[u8], reconstructed: &[u8]) -> f64 {
    let size = (dtype.bits() / 8) as usize;
    if !supports(dtype)
        || original.len() != reconstructed.len()
        || !original.len().is_multiple_of(size)
    {
        return f64::INFINITY;
    }
    with_elem!(dtype, E => original
        .chunks_exact(E::SIZE)
        .zip(reconstructed.chunks_exact(E::SIZE))
        .map(|(a, b)| {
            let (x, y) = (E::get(a), E::get(b));
            if x.is_finite() && y.is_finite() {
                (x - y).abs()
            } else if (x.is_nan() && y.is_nan()) || x == y {
                0.0
            } else {
                f64::INFINITY
            }
        })
        .fold(0.0, f64::max))
}

/// Estimated encoded size in bytes of [`encode`] with this base and tolerance, from the
/// order-0 entropy of the codes of about 8,192 evenly strided elements. Used to skip encodings
/// that cannot win; never to decide between close ones.
pub fn estimate(dtype: DType, target: &[u8], base: Option<&[u8]>, tol: f64) -> f64 {
    let size = (dtype.bits() / 8) as usize;
    if !supports(dtype) || target.is_empty() || tol.is_nan() || tol <= 0.0 {
        return target.len() as f64;
    }
    let n = target.len() / size;
    let stride = (n / 8192).max(1);
    let step = 2.0 * tol;
    let mut counts: std::collections::HashMap<i64, u32> = std::collections::HashMap::new();
    let mut sampled = 0u32;
    for i in (0..n).step_by(stride) {
        let t = load(dtype, target, i);
        let b = base.map_or(0.0, |b| load(dtype, b, i));
        let x = (t - b) / step;
        let code = if x.abs() <= MAX_CODE as f64 {
            (x + 0.5f64.copysign(x)) as i64
        } else {
            i64::MAX
        };
        *counts.entry(code).or_default() += 1;
        sampled += 1;
    }
    let entropy: f64 = counts
        .values()
        .map(|&c| {
            let p = c as f64 / sampled as f64;
            -p * p.log2()
        })
        .sum();
    n as f64 * entropy / 8.0
}

/// Root mean square of the finite elements (0 for an empty tensor).
pub fn rms(dtype: DType, bytes: &[u8]) -> f64 {
    let size = (dtype.bits() / 8) as usize;
    if !supports(dtype) || bytes.is_empty() {
        return 0.0;
    }
    let (sum, n) = (0..bytes.len() / size)
        .map(|i| load(dtype, bytes, i))
        .filter(|v| v.is_finite())
        .fold((0.0f64, 0u64), |(s, n), v| (s + v * v, n + 1));
    if n == 0 { 0.0 } else { (sum / n as f64).sqrt() }
}

/// Squared Euclidean distance between two tensors of a bounded-mode dtype (non-finite elements
/// count as 0), in f64.
pub fn squared_distance(dtype: DType, a: &[u8], b: &[u8]) -> f64 {
    with_elem!(dtype, E => a
        .chunks_exact(E::SIZE)
        .zip(b.chunks_exact(E::SIZE))
        .map(|(x, y)| {
            let d = E::get(x) - E::get(y);
            if d.is_finite() { d * d } else { 0.0 }
        })
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn max_abs_error(dtype: DType, a: &[u8], b: &[u8]) -> f64 {
        let size = (dtype.bits() / 8) as usize;
        (0..a.len() / size)
            .map(|i| {
                let (x, y) = (load(dtype, a, i), load(dtype, b, i));
                if x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()) {
                    0.0
                } else {
                    (x - y).abs()
                }
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn codes_reconstruct_what_the_decoder_does() {
        let base: Vec<f32> = (0..5000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
            .collect();
        let mut target: Vec<f32> = base.iter().map(|b| b + 0.0007 * (b * 13.0).sin()).collect();
        target[17] = f32::NAN;
        target[4000] = 1e30;
        let (b, t) = (f32s(&base), f32s(&target));
        let q = encode(DType::F32, &t, Some(&b), 1e-4, 1).unwrap();
        let mut decoded = vec![0u8; t.len()];
        decode_into(DType::F32, &q.bytes, Some(&b), &mut decoded).unwrap();
        let c = decode_codes(DType::F32, &q.bytes, t.len()).unwrap();
        assert!(c.has_base && c.step == 2e-4 && c.codes.len() == 5000);
        assert_eq!(
            c.exceptions.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![17, 4000]
        );
        let mut rebuilt: Vec<f32> = (0..5000)
            .map(|i| reconstruct(base[i] as f64, c.codes[i] as i64, c.step) as f32)
            .collect();
        for &(i, v) in &c.exceptions {
            rebuilt[i] = v as f32;
        }
        assert_eq!(f32s(&rebuilt), decoded);
        assert!(decode_codes(DType::F32, &q.bytes, t.len() - 4).is_err());
    }

    #[test]
    fn fine_tune_delta_within_bound_and_small() {
        let base: Vec<f32> = (0..100_000)
            .map(|i| ((i as f32) * 0.37).sin() * 0.06)
            .collect();
        let target: Vec<f32> = base
            .iter()
            .enumerate()
            .map(|(i, x)| x + ((i as f32) * 0.71).cos() * 7e-4)
            .collect();
        let (b, t) = (f32s(&base), f32s(&target));
        let tol = 1e-4;
        let q = encode(DType::F32, &t, Some(&b), tol, 3).unwrap();
        let mut out = vec![0u8; t.len()];
        decode_into(DType::F32, &q.bytes, Some(&b), &mut out).unwrap();
        assert!(max_abs_error(DType::F32, &t, &out) <= tol);
        assert!(q.max_error <= tol);
        // ~3-4 bits per element instead of 32.
        assert!(
            q.bytes.len() * 6 < t.len(),
            "{} bytes for {}",
            q.bytes.len(),
            t.len()
        );
    }

    #[test]
    fn specials_are_exact_and_standalone_works() {
        let t = f32s(&[
            f32::NAN,
            f32::INFINITY,
            -0.0,
            1e-40,
            3.5,
            f32::NEG_INFINITY,
            1e30,
        ]);
        for dtype_base in [
            None,
            Some(f32s(&[0.0, 1.0, f32::NAN, 0.0, 3.0, 2.0, -1e30])),
        ] {
            let q = encode(DType::F32, &t, dtype_base.as_deref(), 1e-3, 3).unwrap();
            let mut out = vec![0u8; t.len()];
            decode_into(DType::F32, &q.bytes, dtype_base.as_deref(), &mut out).unwrap();
            assert!(max_abs_error(DType::F32, &t, &out) <= 1e-3);
            assert!(f32::from_le_bytes(out[..4].try_into().unwrap()).is_nan());
            assert_eq!(&out[4..8], &t[4..8]);
        }
    }

    #[test]
    fn half_types_within_bound() {
        for dtype in [DType::F16, DType::BF16] {
            let vals: Vec<u8> = (0..5000)
                .flat_map(|i| {
                    let v = ((i as f64) * 0.013).sin() * 0.5;
                    if dtype == DType::F16 {
                        half::f16::from_f64(v).to_le_bytes()
                    } else {
                        half::bf16::from_f64(v).to_le_bytes()
                    }
                })
                .collect();
            let q = encode(dtype, &vals, None, 1e-3, 3).unwrap();
            let mut out = vec![0u8; vals.len()];
            decode_into(dtype, &q.bytes, None, &mut out).unwrap();
            assert!(max_abs_error(dtype, &vals, &out) <= 1e-3, "{dtype}");
        }
    }

    #[test]
    fn rejects_bad_blobs() {
        let t = f32s(&[1.0, 2.0, 3.0]);
        let q = encode(DType::F32, &t, None, 0.01, 3).unwrap();
        let mut out = vec![0u8; t.len()];
        assert!(decode_into(DType::F32, &q.bytes, Some(&t), &mut out).is_err());
        let mut bad = q.bytes.clone();
        bad[4..12].copy_from_slice(&f64::NAN.to_le_bytes());
        assert!(decode_into(DType::F32, &bad, None, &mut out).is_err());
        let mut bad = q.bytes.clone();
        bad[12..20].copy_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(decode_into(DType::F32, &bad, None, &mut out).is_err());
        assert!(decode_into(DType::F32, &q.bytes[..q.bytes.len() - 1], None, &mut out).is_err());
        assert!(encode(DType::I32, &t, None, 0.01, 3).is_err());
        assert!(encode(DType::F32, &t, None, 0.0, 3).is_err());
    }

    /// Ranges across the code section's chunks (1 MiB of codes) and at unaligned offsets
    /// decode as `decode_into` does; bad ranges are refused.
    #[test]
    fn ranged_crosses_code_chunks() {
        let n = (1 << 20) + 12_345;
        let base: Vec<f32> = (0..n).map(|i| ((i % 977) as f32) * 1e-3).collect();
        let mut target: Vec<f32> = base
            .iter()
            .enumerate()
            .map(|(i, b)| b + ((i as f32) * 0.37).sin() * 2e-3)
            .collect();
        for i in [0, 5, (1 << 20) - 1, 1 << 20, n - 1] {
            target[i] = f32::NAN;
        }
        let (t, b) = (f32s(&target), f32s(&base));
        for base in [None, Some(&b[..])] {
            let q = encode(DType::F32, &t, base, 1e-4, 1).unwrap();
            assert!(q.exceptions >= 5, "{}", q.exceptions);
            let mut whole = vec![0u8; t.len()];
            decode_into(DType::F32, &q.bytes, base, &mut whole).unwrap();
            let r = Ranged::new(DType::F32, &q.bytes, t.len() as u64).unwrap();
            assert!(r.align().is_multiple_of(1 << 20), "{}", r.align());
            for block in [r.align(), 3 << 20, 4 * 333_333, t.len()] {
                let mut out = vec![0u8; t.len()];
                for (k, o) in out.chunks_mut(block).enumerate() {
                    let s = k * block;
                    r.decode_range(s as u64, base.map(|b| &b[s..s + o.len()]), o)
                        .unwrap();
                }
                assert!(out == whole, "block {block}");
            }
            let mut o = vec![0u8; 8];
            assert!(r.decode_range(2, base.map(|b| &b[2..10]), &mut o).is_err());
            assert!(
                r.decode_range(t.len() as u64 - 4, base.map(|b| &b[..8]), &mut o)
                    .is_err()
            );
            if base.is_some() {
                assert!(r.decode_range(0, Some(&b[..4]), &mut o).is_err());
            }
            let other = if base.is_some() { None } else { Some(&b[..8]) };
            assert!(r.decode_range(0, other, &mut o).is_err());
        }
        assert!(Ranged::new(DType::F32, &[0u8; 10], 40).is_err());
    }

    proptest! {
        #[test]
        fn any_f32_bits_within_bound(bits in proptest::collection::vec(any::<u32>(), 1..400),
                                     base_bits in proptest::collection::vec(any::<u32>(), 400),
                                     tol_exp in -8i32..2) {
            let t: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
            let b: Vec<u8> = base_bits[..bits.len()].iter().flat_map(|b| b.to_le_bytes()).collect();
            let tol = 10f64.powi(tol_exp);
            let q = encode(DType::F32, &t, Some(&b), tol, 1).unwrap();
            let mut out = vec![0u8; t.len()];
            decode_into(DType::F32, &q.bytes, Some(&b), &mut out).unwrap();
            prop_assert!(max_abs_error(DType::F32, &t, &out) <= tol);
        }

        /// Block-wise reconstruction equals `decode_into` bit for bit, for any block size, with
        /// or without a base, with exceptions (NaN, infinities, values past the code range).
        #[test]
        fn ranged_equals_decode_into(bits in proptest::collection::vec(any::<u32>(), 1..600),
                                     noise in proptest::collection::vec(-1.0f32..1.0, 600),
                                     specials in proptest::collection::vec((0usize..600, 0u8..4), 0..20),
                                     with_base in any::<bool>(),
                                     half in any::<bool>(),
                                     block in 1usize..700,
                                     tol_exp in -6i32..0) {
            let n = bits.len();
            let base: Vec<f32> = bits.iter().map(|&b| (b % 20_000) as f32 * 1e-4 - 1.0).collect();
            let mut target: Vec<f32> = base.iter().zip(&noise).map(|(b, e)| b + e * 1e-3).collect();
            for &(i, kind) in &specials {
                target[i % n] = [f32::NAN, f32::INFINITY, 1e30, -0.0][kind as usize];
            }
            let (dtype, t, b) = if half {
                let h = |v: &[f32]| -> Vec<u8> {
                    v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect()
                };
                (DType::F16, h(&target), h(&base))
            } else {
                (DType::F32, f32s(&target), f32s(&base))
            };
            let b = with_base.then_some(b);
            let q = encode(dtype, &t, b.as_deref(), 10f64.powi(tol_exp), 1).unwrap();
            let mut whole = vec![0u8; t.len()];
            decode_into(dtype, &q.bytes, b.as_deref(), &mut whole).unwrap();
            let r = Ranged::new(dtype, &q.bytes, t.len() as u64).unwrap();
            prop_assert_eq!(r.has_base(), with_base);
            let size = (dtype.bits() / 8) as usize;
            let mut blocks = vec![0u8; t.len()];
            for (k, out) in blocks.chunks_mut(block * size).enumerate() {
                let start = k * block * size;
                let base = b.as_ref().map(|b| &b[start..start + out.len()]);
                r.decode_range(start as u64, base, out).unwrap();
            }
            prop_assert_eq!(blocks, whole);
        }

        #[test]
        fn decoder_is_total(stored in proptest::collection::vec(any::<u8>(), 0..120), n in 0usize..64) {
            let mut out = vec![0u8; n * 4];
            let _ = decode_into(DType::F32, &stored, None, &mut out);
        }
    }
}
