//! AVX2 + FMA kernels; callers check the CPU first ([`super::Isa::detect`]).
//!
//! - batch 1: fused decode-and-dot over the packed codes (`step · Σ code·x`), the base's part
//!   (its codes or f32 elements) in the same pass with each x vector loaded once, then the
//!   exceptions' correction; one pass over each row's bytes;
//! - batch ≥ 2: rows are dequantized a tile at a time into a reused buffer (about
//!   [`TILE_FLOATS`] floats, so it stays in L2), then a register-blocked micro-kernel
//!   computes [`MR`] batch rows × [`NR`] output rows as dot products along k.

#[cfg(target_arch = "x86_64")]
pub(super) use imp::{dequant_row, linear_rows};

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn dequant_row(_: &super::pack::Packed, _: usize, _: f32, _: bool, _: &mut [f32]) {
    unreachable!("AVX2 is only detected on x86_64")
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn linear_rows(
    _: &super::QuantMatrix,
    _: &[f32],
    _: usize,
    _: Option<&[f32]>,
    _: std::ops::Range<usize>,
    _: &mut [f32],
) {
    unreachable!("AVX2 is only detected on x86_64")
}

/// Batch rows per micro-kernel call.
const MR: usize = 4;
/// Output rows per micro-kernel call.
const NR: usize = 3;
/// Floats in the dequantized tile (128 KiB).
const TILE_FLOATS: usize = 32 * 1024;

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::pack::{GROUP, Packed};
    use super::super::{BaseMatrix, Isa, QuantMatrix};
    use super::{MR, NR, TILE_FLOATS};

    /// `out = fma(code, step, out)` (base already in `out`) or `code · step`; see the scalar
    /// twin, which this matches bit for bit.
    pub(in super::super) fn dequant_row(
        codes: &Packed,
        r: usize,
        step: f32,
        with_base: bool,
        out: &mut [f32],
    ) {
        let row = codes.row(r);
        // SAFETY: the caller checked for AVX2 and FMA; `row` holds whole groups covering `out`.
        unsafe {
            match codes.bits {
                4 => dequant::<4>(row, step, with_base, out),
                8 => dequant::<8>(row, step, with_base, out),
                _ => dequant::<16>(row, step, with_base, out),
            }
        }
    }

    pub(in super::super) fn linear_rows(
        m: &QuantMatrix,
        x: &[f32],
        batch: usize,
        bias: Option<&[f32]>,
        rows: Range<usize>,
        y: &mut [f32],
    ) {
        if batch == 1 {
            gemv(m, x, bias, rows, y)
        } else {
            gemm(m, x, batch, bias, rows, y)
        }
    }

    /// Code `c` of a packed row of `B`-bit codes (as [`Packed::code`], width fixed).
    #[inline(always)]
    fn code_at<const B: u32>(row: &[u8], c: usize) -> i32 {
        match B {
            4 => ((((row[c / 2] >> (4 * (c % 2))) & 0x0F) ^ 8) as i32) - 8,
            8 => row[c] as i8 as i32,
            _ => i16::from_le_bytes([row[2 * c], row[2 * c + 1]]) as i32,
        }
    }

    /// Batch 1: one fused pass per row over the codes and the base (its codes or its f32
    /// elements), x loaded once for both; the width and base kind are dispatched once.
    fn gemv(m: &QuantMatrix, x: &[f32], bias: Option<&[f32]>, rows: Range<usize>, y: &mut [f32]) {
        macro_rules! go {
            ($bb:literal) => {
                match m.codes.bits {
                    4 => gemv_w::<4, $bb>(m, x, bias, rows, y),
                    8 => gemv_w::<8, $bb>(m, x, bias, rows, y),
                    _ => gemv_w::<16, $bb>(m, x, bias, rows, y),
                }
            };
        }
        match m.base.as_deref() {
            None => go!(0),
            Some(BaseMatrix::Dense(_)) => go!(32),
            Some(BaseMatrix::Quant(q)) => match q.codes.bits {
                4 => go!(4),
                8 => go!(8),
                _ => go!(16),
            },
        }
    }

    /// [`gemv`] for codes of `B` bits over a base of `BB`: 0 none, 4/8/16 a quantized base's
    /// code width, 32 dense f32.
    fn gemv_w<const B: u32, const BB: u32>(
        m: &QuantMatrix,
        x: &[f32],
        bias: Option<&[f32]>,
        rows: Range<usize>,
        y: &mut [f32],
    ) {
        let cols = m.cols;
        debug_assert_eq!(x.len(), cols);
        for (j, r) in rows.enumerate() {
            let row = m.codes.row(r).as_ptr();
            // SAFETY: AVX2/FMA checked by the caller. Each code row holds whole groups
            // covering `cols`; a dense base row holds `cols` floats and is read masked.
            let mut acc = unsafe {
                match m.base.as_deref() {
                    Some(BaseMatrix::Dense(data)) if BB == 32 => {
                        let base = data[r * cols..(r + 1) * cols].as_ptr().cast();
                        let (sc, sb) = dot2_w::<B, 32>(row, base, x.as_ptr(), cols);
                        m.step32 * sc + sb
                    }
                    Some(BaseMatrix::Quant(q)) if BB != 0 && BB != 32 => {
                        debug_assert_eq!(q.codes.bits, BB);
                        let base = q.codes.row(r).as_ptr();
                        let (sc, sb) = dot2_w::<B, BB>(row, base, x.as_ptr(), cols);
                        m.step32 * sc + q.step32 * sb
                    }
                    _ => m.step32 * dot_codes_w::<B>(row, x.as_ptr(), cols),
                }
            };
            // The exceptions' correction (`gemv_correction`, specialized): Σ (v − base_c)·x_c,
            // then a quantized base's own exceptions, which are rare.
            let (ecols, evals) = m.row_exceptions(r);
            let mut corr = 0f32;
            match m.base.as_deref() {
                Some(BaseMatrix::Dense(data)) if BB == 32 => {
                    let brow = &data[r * cols..(r + 1) * cols];
                    for (&c, &v) in ecols.iter().zip(evals) {
                        corr += (v - brow[c as usize]) * x[c as usize];
                    }
                }
                Some(BaseMatrix::Quant(q)) if BB != 0 && BB != 32 => {
                    let brow = q.codes.row(r);
                    for (&c, &v) in ecols.iter().zip(evals) {
                        let b = code_at::<BB>(brow, c as usize) as f32 * q.step32;
                        corr += (v - b) * x[c as usize];
                    }
                    if q.exc_ptr[r] != q.exc_ptr[r + 1] {
                        corr += m.base_exception_correction(r, x);
                    }
                }
                _ => {
                    for (&c, &v) in ecols.iter().zip(evals) {
                        corr += v * x[c as usize];
                    }
                }
            }
            acc += corr;
            y[j] = acc + bias.map_or(0.0, |b| b[r]);
        }
    }

    fn gemm(
        m: &QuantMatrix,
        x: &[f32],
        batch: usize,
        bias: Option<&[f32]>,
        rows: Range<usize>,
        y: &mut [f32],
    ) {
        let cols = m.cols;
        let ld = cols.div_ceil(8) * 8;
        let tile = (TILE_FLOATS / ld.max(1) / NR * NR).max(NR);
        let mut buf = vec![0f32; tile * ld];
        let ldy = rows.len();
        let mut t0 = rows.start;
        while t0 < rows.end {
            let n = tile.min(rows.end - t0);
            for j in 0..n {
                m.dequant_row(Isa::Avx2, t0 + j, &mut buf[j * ld..j * ld + cols]);
            }
            for b0 in (0..batch).step_by(MR) {
                let mr = MR.min(batch - b0);
                for j0 in (0..n).step_by(NR) {
                    let nr = NR.min(n - j0);
                    let first = t0 - rows.start + j0;
                    let bias = bias.map_or(std::ptr::null(), |b| b[t0 + j0..].as_ptr());
                    // SAFETY: AVX2/FMA checked by the caller. The kernel reads `mr` rows of x
                    // (of `cols`) from b0 and `nr` tile rows (of `cols`, stride `ld`) from j0,
                    // and writes y[(b0 + i) · ldy + first + jj] for i < mr, jj < nr, all inside
                    // the slices given the loop bounds.
                    unsafe {
                        let xp = x.as_ptr().add(b0 * cols);
                        let wp = buf.as_ptr().add(j0 * ld);
                        let yp = y.as_mut_ptr().add(b0 * ldy + first);
                        micro(mr, nr, xp, cols, wp, ld, cols, yp, ldy, bias);
                    }
                }
            }
            t0 += n;
        }
    }

    /// Dispatches to the micro-kernel instance for an `mr × nr` block.
    #[allow(clippy::too_many_arguments)]
    unsafe fn micro(
        mr: usize,
        nr: usize,
        x: *const f32,
        ldx: usize,
        w: *const f32,
        ldw: usize,
        k: usize,
        y: *mut f32,
        ldy: usize,
        bias: *const f32,
    ) {
        macro_rules! go {
            ($($m:literal, $n:literal);*) => {
                match (mr, nr) {
                    // SAFETY: forwarded from the caller.
                    $(($m, $n) => unsafe { block::<$m, $n>(x, ldx, w, ldw, k, y, ldy, bias) },)*
                    _ => unreachable!("block {mr} × {nr}"),
                }
            };
        }
        go!(4, 3; 4, 2; 4, 1; 3, 3; 3, 2; 3, 1; 2, 3; 2, 2; 2, 1; 1, 3; 1, 2; 1, 1);
    }

    /// y[i·ldy + j] = Σ_p x[i·ldx + p] · w[j·ldw + p] (+ bias[j]) for i < M, j < N, p < k.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block<const M: usize, const N: usize>(
        x: *const f32,
        ldx: usize,
        w: *const f32,
        ldw: usize,
        k: usize,
        y: *mut f32,
        ldy: usize,
        bias: *const f32,
    ) {
        let mut acc = [[_mm256_setzero_ps(); N]; M];
        let mut p = 0;
        // SAFETY (whole body): the caller guarantees the ranges described above.
        unsafe {
            while p + 8 <= k {
                let mut wv = [_mm256_setzero_ps(); N];
                for (j, v) in wv.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(w.add(j * ldw + p));
                }
                for (i, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_loadu_ps(x.add(i * ldx + p));
                    for j in 0..N {
                        a[j] = _mm256_fmadd_ps(xv, wv[j], a[j]);
                    }
                }
                p += 8;
            }
            if p < k {
                let mask = lanes_below(k - p, 0);
                let mut wv = [_mm256_setzero_ps(); N];
                for (j, v) in wv.iter_mut().enumerate() {
                    *v = _mm256_maskload_ps(w.add(j * ldw + p), mask);
                }
                for (i, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_maskload_ps(x.add(i * ldx + p), mask);
                    for j in 0..N {
                        a[j] = _mm256_fmadd_ps(xv, wv[j], a[j]);
                    }
                }
            }
            for (i, a) in acc.iter().enumerate() {
                for (j, &v) in a.iter().enumerate() {
                    let b = if bias.is_null() { 0.0 } else { *bias.add(j) };
                    *y.add(i * ldy + j) = hsum(v) + b;
                }
            }
        }
    }

    /// Mask of the lanes `l` with `first + l < n`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn lanes_below(n: usize, first: i32) -> __m256i {
        let idx = _mm256_add_epi32(
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            _mm256_set1_epi32(first),
        );
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(16) as i32), idx)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// The 16 codes of the group at `p` as two vectors of f32 (elements 0..8, 8..16).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn decode<const B: u32>(p: *const u8) -> (__m256, __m256) {
        // SAFETY: the caller guarantees a whole group (2·B bytes) at `p`.
        unsafe {
            let (lo, hi) = match B {
                4 => {
                    // Each lane moves its nibble to the top, then shifts it back with sign.
                    let up = _mm256_setr_epi32(28, 24, 20, 16, 12, 8, 4, 0);
                    let word = |at: *const u8| _mm256_set1_epi32(at.cast::<i32>().read_unaligned());
                    (
                        _mm256_srai_epi32(_mm256_sllv_epi32(word(p), up), 28),
                        _mm256_srai_epi32(_mm256_sllv_epi32(word(p.add(4)), up), 28),
                    )
                }
                8 => (
                    _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast())),
                    _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(8).cast())),
                ),
                _ => (
                    _mm256_cvtepi16_epi32(_mm_loadu_si128(p.cast())),
                    _mm256_cvtepi16_epi32(_mm_loadu_si128(p.add(16).cast())),
                ),
            };
            (_mm256_cvtepi32_ps(lo), _mm256_cvtepi32_ps(hi))
        }
    }

    /// For dot products: the group at `p` scaled by `1 / dot_scale::<B>()`: 4-bit codes come as
    /// `code · 2^28` (the nibble left at the top of its lane and masked, one shift fewer than
    /// the sign-extending [`decode`]; exact in f32, and sums scale back exactly unless
    /// |x| > 2^96), other widths as [`decode`] gives them.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn decode_dot<const B: u32>(p: *const u8) -> (__m256, __m256) {
        // SAFETY: the caller guarantees a whole group (2·B bytes) at `p`.
        unsafe {
            if B == 4 {
                let up = _mm256_setr_epi32(28, 24, 20, 16, 12, 8, 4, 0);
                let top = _mm256_set1_epi32(0xF000_0000u32 as i32);
                let word = |at: *const u8| _mm256_set1_epi32(at.cast::<i32>().read_unaligned());
                let lo = _mm256_and_si256(_mm256_sllv_epi32(word(p), up), top);
                let hi = _mm256_and_si256(_mm256_sllv_epi32(word(p.add(4)), up), top);
                (_mm256_cvtepi32_ps(lo), _mm256_cvtepi32_ps(hi))
            } else {
                decode::<B>(p)
            }
        }
    }

    /// What a sum over [`decode_dot`] values is multiplied by (exactly, a power of two).
    const fn dot_scale<const B: u32>() -> f32 {
        if B == 4 {
            1.0 / (1u32 << 28) as f32
        } else {
            1.0
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dequant<const B: u32>(row: &[u8], step: f32, with_base: bool, out: &mut [f32]) {
        let (n, gb) = (out.len(), 2 * B as usize);
        debug_assert!(row.len() >= n.div_ceil(GROUP) * gb);
        let (p, o, s) = (row.as_ptr(), out.as_mut_ptr(), _mm256_set1_ps(step));
        // SAFETY: groups lie inside `row`; full groups inside `out`, the last one masked.
        unsafe {
            for g in 0..n / GROUP {
                let (lo, hi) = decode::<B>(p.add(g * gb));
                let at = o.add(g * GROUP);
                let (lo, hi) = if with_base {
                    let lo = _mm256_fmadd_ps(lo, s, _mm256_loadu_ps(at));
                    (lo, _mm256_fmadd_ps(hi, s, _mm256_loadu_ps(at.add(8))))
                } else {
                    (_mm256_mul_ps(lo, s), _mm256_mul_ps(hi, s))
                };
                _mm256_storeu_ps(at, lo);
                _mm256_storeu_ps(at.add(8), hi);
            }
            let g = n / GROUP;
            if !n.is_multiple_of(GROUP) {
                let (lo, hi) = decode::<B>(p.add(g * gb));
                let (m0, m1) = (lanes_below(n % GROUP, 0), lanes_below(n % GROUP, 8));
                let at = o.add(g * GROUP);
                let (lo, hi) = if with_base {
                    let lo = _mm256_fmadd_ps(lo, s, _mm256_maskload_ps(at, m0));
                    (
                        lo,
                        _mm256_fmadd_ps(hi, s, _mm256_maskload_ps(at.add(8), m1)),
                    )
                } else {
                    (_mm256_mul_ps(lo, s), _mm256_mul_ps(hi, s))
                };
                _mm256_maskstore_ps(at, m0, lo);
                _mm256_maskstore_ps(at.add(8), m1, hi);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_codes_w<const B: u32>(row: *const u8, x: *const f32, n: usize) -> f32 {
        let gb = 2 * B as usize;
        let mut a = [_mm256_setzero_ps(); 4];
        let full = n / GROUP;
        // SAFETY: groups lie inside the row; x is read for indices < n only (tail masked).
        unsafe {
            let mut g = 0;
            while g + 2 <= full {
                let (l0, h0) = decode_dot::<B>(row.add(g * gb));
                let (l1, h1) = decode_dot::<B>(row.add((g + 1) * gb));
                let xp = x.add(g * GROUP);
                a[0] = _mm256_fmadd_ps(l0, _mm256_loadu_ps(xp), a[0]);
                a[1] = _mm256_fmadd_ps(h0, _mm256_loadu_ps(xp.add(8)), a[1]);
                a[2] = _mm256_fmadd_ps(l1, _mm256_loadu_ps(xp.add(16)), a[2]);
                a[3] = _mm256_fmadd_ps(h1, _mm256_loadu_ps(xp.add(24)), a[3]);
                g += 2;
            }
            if g < full {
                let (l0, h0) = decode_dot::<B>(row.add(g * gb));
                let xp = x.add(g * GROUP);
                a[0] = _mm256_fmadd_ps(l0, _mm256_loadu_ps(xp), a[0]);
                a[1] = _mm256_fmadd_ps(h0, _mm256_loadu_ps(xp.add(8)), a[1]);
            }
            if !n.is_multiple_of(GROUP) {
                let (l0, h0) = decode_dot::<B>(row.add(full * gb));
                let (m0, m1) = (lanes_below(n % GROUP, 0), lanes_below(n % GROUP, 8));
                let xp = x.add(full * GROUP);
                a[2] = _mm256_fmadd_ps(l0, _mm256_maskload_ps(xp, m0), a[2]);
                a[3] = _mm256_fmadd_ps(h0, _mm256_maskload_ps(xp.add(8), m1), a[3]);
            }
            dot_scale::<B>()
                * hsum(_mm256_add_ps(
                    _mm256_add_ps(a[0], a[1]),
                    _mm256_add_ps(a[2], a[3]),
                ))
        }
    }

    /// The 16 base elements of the group at `p`: [`decode`] for packed codes (`BB` 4, 8, 16),
    /// two f32 vectors for a dense base (`BB` 32, a group is 64 bytes).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load_base<const BB: u32>(p: *const u8) -> (__m256, __m256) {
        // SAFETY: the caller guarantees a whole group (2·BB bytes) at `p`.
        unsafe {
            if BB == 32 {
                let f = p.cast::<f32>();
                (_mm256_loadu_ps(f), _mm256_loadu_ps(f.add(8)))
            } else {
                decode_dot::<BB>(p)
            }
        }
    }

    /// [`load_base`] for the last, partial group: a dense base is read only in the lanes of
    /// `m0`, `m1` (its rows are not padded); packed codes are padded and read whole.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load_base_masked<const BB: u32>(
        p: *const u8,
        m0: __m256i,
        m1: __m256i,
    ) -> (__m256, __m256) {
        // SAFETY: the caller guarantees the lanes of m0, m1 (dense) or a whole group (packed).
        unsafe {
            if BB == 32 {
                let f = p.cast::<f32>();
                (_mm256_maskload_ps(f, m0), _mm256_maskload_ps(f.add(8), m1))
            } else {
                decode_dot::<BB>(p)
            }
        }
    }

    /// `(Σ code_c · x_c, Σ base_c · x_c)`, c < n, in one pass: `row` holds `B`-bit codes,
    /// `base` a row of `BB`-bit codes or (`BB` 32) of f32; each x vector is loaded once.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot2_w<const B: u32, const BB: u32>(
        row: *const u8,
        base: *const u8,
        x: *const f32,
        n: usize,
    ) -> (f32, f32) {
        let (gb, gbb) = (2 * B as usize, 2 * BB as usize);
        let mut a = [_mm256_setzero_ps(); 4];
        let mut b = [_mm256_setzero_ps(); 4];
        let full = n / GROUP;
        // SAFETY: code groups lie inside the rows; x and a dense base are read for indices
        // < n only (tail masked).
        unsafe {
            let mut g = 0;
            while g + 2 <= full {
                let (l0, h0) = decode_dot::<B>(row.add(g * gb));
                let (l1, h1) = decode_dot::<B>(row.add((g + 1) * gb));
                let (bl0, bh0) = load_base::<BB>(base.add(g * gbb));
                let (bl1, bh1) = load_base::<BB>(base.add((g + 1) * gbb));
                let xp = x.add(g * GROUP);
                let (x0, x1) = (_mm256_loadu_ps(xp), _mm256_loadu_ps(xp.add(8)));
                let (x2, x3) = (_mm256_loadu_ps(xp.add(16)), _mm256_loadu_ps(xp.add(24)));
                a[0] = _mm256_fmadd_ps(l0, x0, a[0]);
                a[1] = _mm256_fmadd_ps(h0, x1, a[1]);
                a[2] = _mm256_fmadd_ps(l1, x2, a[2]);
                a[3] = _mm256_fmadd_ps(h1, x3, a[3]);
                b[0] = _mm256_fmadd_ps(bl0, x0, b[0]);
                b[1] = _mm256_fmadd_ps(bh0, x1, b[1]);
                b[2] = _mm256_fmadd_ps(bl1, x2, b[2]);
                b[3] = _mm256_fmadd_ps(bh1, x3, b[3]);
                g += 2;
            }
            if g < full {
                let (l0, h0) = decode_dot::<B>(row.add(g * gb));
                let (bl0, bh0) = load_base::<BB>(base.add(g * gbb));
                let xp = x.add(g * GROUP);
                let (x0, x1) = (_mm256_loadu_ps(xp), _mm256_loadu_ps(xp.add(8)));
                a[0] = _mm256_fmadd_ps(l0, x0, a[0]);
                a[1] = _mm256_fmadd_ps(h0, x1, a[1]);
                b[0] = _mm256_fmadd_ps(bl0, x0, b[0]);
                b[1] = _mm256_fmadd_ps(bh0, x1, b[1]);
            }
            if !n.is_multiple_of(GROUP) {
                let (m0, m1) = (lanes_below(n % GROUP, 0), lanes_below(n % GROUP, 8));
                let (l0, h0) = decode_dot::<B>(row.add(full * gb));
                let (bl0, bh0) = load_base_masked::<BB>(base.add(full * gbb), m0, m1);
                let xp = x.add(full * GROUP);
                let (x0, x1) = (
                    _mm256_maskload_ps(xp, m0),
                    _mm256_maskload_ps(xp.add(8), m1),
                );
                a[2] = _mm256_fmadd_ps(l0, x0, a[2]);
                a[3] = _mm256_fmadd_ps(h0, x1, a[3]);
                b[2] = _mm256_fmadd_ps(bl0, x0, b[2]);
                b[3] = _mm256_fmadd_ps(bh0, x1, b[3]);
            }
            let sum = |v: [__m256; 4]| {
                hsum(_mm256_add_ps(
                    _mm256_add_ps(v[0], v[1]),
                    _mm256_add_ps(v[2], v[3]),
                ))
            };
            let sb = if BB == 32 { 1.0 } else { dot_scale::<BB>() };
            (dot_scale::<B>() * sum(a), sb * sum(b))
        }
    }
}
