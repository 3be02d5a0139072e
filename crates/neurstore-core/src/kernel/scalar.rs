//! Portable fallback: dequantize one row at a time, then plain dot products.

use std::ops::Range;

use super::QuantMatrix;
use super::pack::Packed;

/// `out[c] = fma(code, step, out[c])` with a base already in `out`, else `code · step`.
/// Bit-identical to the SIMD version.
pub(super) fn dequant_row(codes: &Packed, r: usize, step: f32, with_base: bool, out: &mut [f32]) {
    for (c, o) in out.iter_mut().enumerate() {
        let code = codes.code(r, c) as f32;
        *o = if with_base {
            code.mul_add(step, *o)
        } else {
            code * step
        };
    }
}

pub(super) fn linear_rows(
    m: &QuantMatrix,
    x: &[f32],
    batch: usize,
    bias: Option<&[f32]>,
    rows: Range<usize>,
    y: &mut [f32],
) {
    let (cols, ldy) = (m.cols, rows.len());
    let mut w = vec![0f32; cols];
    for (j, r) in rows.enumerate() {
        m.dequant_row(super::Isa::Scalar, r, &mut w);
        let b0 = bias.map_or(0.0, |b| b[r]);
        for b in 0..batch {
            let xs = &x[b * cols..(b + 1) * cols];
            // Four partial sums: shorter dependency chains, less rounding drift.
            let mut acc = [0f32; 4];
            let (xc, wc) = (xs.chunks_exact(4), w.chunks_exact(4));
            let (xt, wt) = (xc.remainder(), wc.remainder());
            for (xv, wv) in xc.zip(wc) {
                for k in 0..4 {
                    acc[k] += xv[k] * wv[k];
                }
            }
            let tail: f32 = xt.iter().zip(wt).map(|(a, b)| a * b).sum();
            y[b * ldy + j] = (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail + b0;
        }
    }
}
