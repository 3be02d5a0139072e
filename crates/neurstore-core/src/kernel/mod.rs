//! Linear layers over quantized weights, computed without materializing the weight matrix.
//!
//! A [`QuantMatrix`] holds a `rows × cols` matrix W (row-major, PyTorch's `out × in`) as
//! integer codes: element `i` is `base_i + codes[i] · step`, or an exact exception value.
//! [`QuantMatrix::linear`] computes `y = x · Wᵀ + b` by dequantizing cache-sized tiles of rows
//! into a small reused buffer and multiplying them at once (batch ≥ 2), or by a fused
//! decode-and-dot over the packed codes (batch 1, where reading memory is the cost).
//!
//! **Invariants**
//! - Codes are packed at 4, 8 or 16 bits (the width that minimizes held bytes); a code outside
//!   the width's signed range is stored as an exception instead, and the code at every exception
//!   is 0. Exceptions are kept per row, sorted by column.
//! - A base is another matrix of the same shape, shared through an [`Arc`]: dense f32, or a
//!   quantized matrix that itself has no base.
//! - The kernel's element value is computed in f32: `fma(code, step as f32, base_i)` (or
//!   `code · step as f32` without a base), where `base_i` is the base's own kernel value. It
//!   differs from the store decoder's `(base_i as f64 + code as f64 · step) as f32` by at most
//!   2 ulp of `max(|value|, |code · step|)`. [`QuantMatrix::to_dense`] and
//!   [`QuantMatrix::row_into`] return exactly these values, bit-identical on every CPU.
//! - SIMD (AVX2 + FMA, detected at run time) and the portable scalar path compute the same
//!   products up to float summation order.

mod avx2;
mod pack;
mod scalar;
#[cfg(test)]
mod tests;

use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;

use pack::Packed;

/// Bytes one exception costs: its column (u32) and value (f32).
const EXCEPTION_BYTES: usize = 8;

/// Errors building a [`QuantMatrix`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// A length does not match the declared shape.
    #[error("{what} has {got} elements, expected {expected} ({rows} × {cols})")]
    Length {
        /// Which input.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The length the shape implies.
        expected: usize,
        /// Declared rows.
        rows: usize,
        /// Declared columns.
        cols: usize,
    },
    /// The shape is too large to address.
    #[error("shape {rows} × {cols} is too large")]
    Shape {
        /// Declared rows.
        rows: usize,
        /// Declared columns.
        cols: usize,
    },
    /// The quantization step is unusable.
    #[error("step must be finite and positive (also as f32), got {0}")]
    Step(f64),
    /// Exception indices are not strictly increasing or are out of range.
    #[error("exception {position}: index {index} {problem}")]
    Exception {
        /// Position in the exception list.
        position: usize,
        /// The offending element index.
        index: usize,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A quantized base has another shape.
    #[error("base is {base_rows} × {base_cols}, matrix is {rows} × {cols}")]
    BaseShape {
        /// Base rows.
        base_rows: usize,
        /// Base columns.
        base_cols: usize,
        /// Matrix rows.
        rows: usize,
        /// Matrix columns.
        cols: usize,
    },
    /// A quantized base must itself have no base.
    #[error("a quantized base must not itself have a base")]
    NestedBase,
}

/// The matrix a [`QuantMatrix`]'s codes are added to.
#[derive(Debug, Clone)]
pub enum BaseMatrix {
    /// Dense f32, row-major. It does not record its shape: [`QuantMatrix::new`] checks that it
    /// holds `rows · cols` elements, and it reads as one column (`rows()` = element count,
    /// `cols()` = 1).
    Dense(Vec<f32>),
    /// Quantized, with no base of its own.
    Quant(QuantMatrix),
}

impl BaseMatrix {
    /// Rows.
    pub fn rows(&self) -> usize {
        match self {
            BaseMatrix::Dense(data) => data.len(),
            BaseMatrix::Quant(q) => q.rows,
        }
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        match self {
            BaseMatrix::Dense(_) => 1,
            BaseMatrix::Quant(q) => q.cols,
        }
    }

    /// Bytes this base holds.
    pub fn held_bytes(&self) -> usize {
        match self {
            BaseMatrix::Dense(data) => std::mem::size_of_val(data.as_slice()),
            BaseMatrix::Quant(q) => q.held_bytes(),
        }
    }

    /// Writes row `r` into `out`: for a quantized base `out[..cols]`; for a dense one, whose
    /// shape is not recorded, `out.len()` is taken as the row length. Panics out of range.
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        match self {
            BaseMatrix::Dense(data) => {
                let n = out.len();
                out.copy_from_slice(&data[r * n..(r + 1) * n])
            }
            BaseMatrix::Quant(q) => q.row_into(r, out),
        }
    }
}

/// A matrix held as packed integer codes; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    rows: usize,
    cols: usize,
    step: f64,
    step32: f32,
    codes: Packed,
    /// Row `r`'s exceptions are `exc_col[exc_ptr[r]..exc_ptr[r + 1]]` (sorted) and `exc_val`.
    exc_ptr: Vec<usize>,
    exc_col: Vec<u32>,
    exc_val: Vec<f32>,
    base: Option<Arc<BaseMatrix>>,
}

/// Which implementation runs the hot loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Scalar,
    Avx2,
}

impl Isa {
    /// The best one this CPU supports.
    pub(crate) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2;
        }
        Isa::Scalar
    }
}

impl QuantMatrix {
    /// Element i = base_i + codes[i]·step, except where `exceptions` (index, exact value;
    /// indices strictly increasing, < rows·cols) gives the value. `codes.len() == rows·cols`;
    /// the code at an exception is ignored.
    pub fn new(
        rows: usize,
        cols: usize,
        step: f64,
        codes: &[i32],
        exceptions: &[(usize, f32)],
        base: Option<Arc<BaseMatrix>>,
    ) -> Result<QuantMatrix, KernelError> {
        let n = rows
            .checked_mul(cols)
            .filter(|_| u32::try_from(cols).is_ok())
            .ok_or(KernelError::Shape { rows, cols })?;
        let step32 = step as f32;
        if !(step.is_finite() && step > 0.0 && step32.is_finite() && step32 > 0.0) {
            return Err(KernelError::Step(step));
        }
        let length = |what, got| KernelError::Length {
            what,
            got,
            expected: n,
            rows,
            cols,
        };
        if codes.len() != n {
            return Err(length("codes", codes.len()));
        }
        match base.as_deref() {
            None => {}
            Some(BaseMatrix::Dense(data)) if data.len() != n => {
                return Err(length("dense base", data.len()));
            }
            Some(BaseMatrix::Dense(_)) => {}
            Some(BaseMatrix::Quant(q)) if (q.rows, q.cols) != (rows, cols) => {
                return Err(KernelError::BaseShape {
                    base_rows: q.rows,
                    base_cols: q.cols,
                    rows,
                    cols,
                });
            }
            Some(BaseMatrix::Quant(q)) if q.base.is_some() => return Err(KernelError::NestedBase),
            Some(BaseMatrix::Quant(_)) => {}
        }
        for (position, w) in exceptions.windows(2).enumerate() {
            if w[1].0 <= w[0].0 {
                let problem = "is not above the previous one";
                return Err(KernelError::Exception {
                    position: position + 1,
                    index: w[1].0,
                    problem,
                });
            }
        }
        if let Some(&(index, _)) = exceptions.last().filter(|e| e.0 >= n) {
            let (position, problem) = (exceptions.len() - 1, "is out of range");
            return Err(KernelError::Exception {
                position,
                index,
                problem,
            });
        }
        let bits = choose_width(rows, cols, codes, exceptions);
        let (lo, hi) = pack::range(bits);
        let in_range = |c: i32| (lo..=hi).contains(&c);

        // Merge the given exceptions with the codes this width cannot hold.
        let (mut exc_ptr, mut exc_col, mut exc_val) = (vec![0], Vec::new(), Vec::new());
        let mut given = exceptions.iter().peekable();
        let mut base_row = vec![0f32; if base.is_some() { cols } else { 0 }];
        for r in 0..rows {
            if let Some(b) = &base {
                b.row_into(r, &mut base_row);
            }
            for c in 0..cols {
                let i = r * cols + c;
                if let Some(&(_, v)) = given.next_if(|e| e.0 == i) {
                    exc_col.push(c as u32);
                    exc_val.push(v);
                } else if !in_range(codes[i]) {
                    let b = base_row.get(c).map_or(0.0, |&b| b as f64);
                    exc_col.push(c as u32);
                    exc_val.push((b + codes[i] as f64 * step) as f32);
                }
            }
            exc_ptr.push(exc_col.len());
        }
        let mut is_exc = vec![false; n];
        for r in 0..rows {
            for &c in &exc_col[exc_ptr[r]..exc_ptr[r + 1]] {
                is_exc[r * cols + c as usize] = true;
            }
        }
        let code = |r: usize, c: usize| {
            if is_exc[r * cols + c] {
                0
            } else {
                codes[r * cols + c]
            }
        };
        let codes = Packed::pack(bits, rows, cols, code);
        Ok(QuantMatrix {
            rows,
            cols,
            step,
            step32,
            codes,
            exc_ptr,
            exc_col,
            exc_val,
            base,
        })
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The quantization step.
    pub fn step(&self) -> f64 {
        self.step
    }

    /// 4, 8 or 16: the packed width chosen.
    pub fn code_bits(&self) -> u32 {
        self.codes.bits
    }

    /// Number of exceptions held (given ones plus codes the width cannot hold).
    pub fn exception_count(&self) -> usize {
        self.exc_col.len()
    }

    /// Bytes this matrix holds, NOT counting a shared base.
    pub fn held_bytes(&self) -> usize {
        held_bytes(self.rows, self.codes.data.len(), self.exc_col.len())
    }

    /// The shared base, if any.
    pub fn base(&self) -> Option<&Arc<BaseMatrix>> {
        self.base.as_ref()
    }

    /// Writes dequantized row `r` into `out[..cols]` (used for embedding lookups).
    /// Panics if `r ≥ rows` or `out` is shorter than `cols`.
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        assert!(
            r < self.rows && out.len() >= self.cols,
            "row {r} or output too short"
        );
        self.dequant_row(Isa::detect(), r, &mut out[..self.cols]);
    }

    /// The whole matrix, row-major.
    pub fn to_dense(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        let isa = Isa::detect();
        for (r, row) in out
            .chunks_exact_mut(self.cols.max(1))
            .enumerate()
            .take(self.rows)
        {
            self.dequant_row(isa, r, row);
        }
        out
    }

    /// y (batch × rows, row-major) = x (batch × cols, row-major) · Wᵀ + bias. Single-threaded.
    ///
    /// Panics unless `x.len() == batch · cols`, `y.len() == batch · rows` and `bias`, if given,
    /// has `rows` elements.
    pub fn linear(&self, x: &[f32], batch: usize, bias: Option<&[f32]>, y: &mut [f32]) {
        self.linear_with(Isa::detect(), x, batch, bias, y);
    }

    /// Same as [`linear`](Self::linear), splitting output rows across the current rayon pool.
    pub fn par_linear(&self, x: &[f32], batch: usize, bias: Option<&[f32]>, y: &mut [f32]) {
        self.check_linear(x, batch, bias, y);
        let isa = Isa::detect();
        // Chunks of about 64 rows, at least one per thread.
        let chunk = 64
            .min(self.rows.div_ceil(rayon::current_num_threads()))
            .max(1);
        let parts: Vec<(usize, Vec<f32>)> = (0..self.rows.div_ceil(chunk))
            .into_par_iter()
            .map(|k| {
                let rows = k * chunk..((k + 1) * chunk).min(self.rows);
                let mut part = vec![0f32; batch * rows.len()];
                self.linear_rows(isa, x, batch, bias, rows.clone(), &mut part);
                (rows.start, part)
            })
            .collect();
        for (r0, part) in parts {
            let w = part.len() / batch.max(1);
            for b in 0..batch {
                y[b * self.rows + r0..][..w].copy_from_slice(&part[b * w..(b + 1) * w]);
            }
        }
    }

    /// [`linear`](Self::linear) on a chosen implementation (tests call the scalar one).
    pub(crate) fn linear_with(
        &self,
        isa: Isa,
        x: &[f32],
        batch: usize,
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) {
        self.check_linear(x, batch, bias, y);
        self.linear_rows(isa, x, batch, bias, 0..self.rows, y);
    }

    fn check_linear(&self, x: &[f32], batch: usize, bias: Option<&[f32]>, y: &[f32]) {
        assert_eq!(x.len(), batch * self.cols, "x must be batch × cols");
        assert_eq!(y.len(), batch * self.rows, "y must be batch × rows");
        assert!(
            bias.is_none_or(|b| b.len() == self.rows),
            "bias must have rows elements"
        );
    }

    /// Output rows `rows` into `y` (batch × rows.len(), row-major).
    fn linear_rows(
        &self,
        isa: Isa,
        x: &[f32],
        batch: usize,
        bias: Option<&[f32]>,
        rows: Range<usize>,
        y: &mut [f32],
    ) {
        match isa {
            Isa::Avx2 => avx2::linear_rows(self, x, batch, bias, rows, y),
            Isa::Scalar => scalar::linear_rows(self, x, batch, bias, rows, y),
        }
    }

    /// Row `r`'s exact values into `out` (`out.len() == cols`).
    fn dequant_row(&self, isa: Isa, r: usize, out: &mut [f32]) {
        debug_assert_eq!(out.len(), self.cols);
        match self.base.as_deref() {
            None => {}
            Some(BaseMatrix::Dense(data)) => {
                out.copy_from_slice(&data[r * self.cols..(r + 1) * self.cols])
            }
            Some(BaseMatrix::Quant(q)) => q.dequant_row(isa, r, out),
        }
        let with_base = self.base.is_some();
        match isa {
            Isa::Avx2 => avx2::dequant_row(&self.codes, r, self.step32, with_base, out),
            Isa::Scalar => scalar::dequant_row(&self.codes, r, self.step32, with_base, out),
        }
        let (cols, vals) = self.row_exceptions(r);
        for (&c, &v) in cols.iter().zip(vals) {
            out[c as usize] = v;
        }
    }

    fn row_exceptions(&self, r: usize) -> (&[u32], &[f32]) {
        let span = self.exc_ptr[r]..self.exc_ptr[r + 1];
        (&self.exc_col[span.clone()], &self.exc_val[span])
    }

    /// The fused batch-1 kernel computes `step·Σ code·x + Σ base_i·x` with a quantized base's
    /// part as `base_step·Σ base_code·x`, all codes at exceptions being 0; it adds
    /// `Σ (true_i − computed_i)·x_i` over this matrix's exceptions itself, and this: the part
    /// from a quantized base's own exceptions on row `r` (0 without one).
    fn base_exception_correction(&self, r: usize, x: &[f32]) -> f32 {
        let mut sum = 0f32;
        let (cols, _) = self.row_exceptions(r);
        if let Some(BaseMatrix::Quant(q)) = self.base.as_deref() {
            // A base exception under an ordinary code: true = fma(code, step, e_b), computed
            // = code·step.
            let (bcols, bvals) = q.row_exceptions(r);
            for (&c, &e) in bcols.iter().zip(bvals) {
                if cols.binary_search(&c).is_err() {
                    let code = self.codes.code(r, c as usize) as f32;
                    let t = code.mul_add(self.step32, e) - code * self.step32;
                    sum += t * x[c as usize];
                }
            }
        }
        sum
    }
}

fn held_bytes(rows: usize, packed: usize, exceptions: usize) -> usize {
    packed + exceptions * EXCEPTION_BYTES + (rows + 1) * std::mem::size_of::<usize>()
}

/// The width (4, 8 or 16 bits) that minimizes held bytes, the narrowest on ties.
fn choose_width(rows: usize, cols: usize, codes: &[i32], exceptions: &[(usize, f32)]) -> u32 {
    let mut outside = [0usize; 3];
    let mut given = exceptions.iter().map(|e| e.0).peekable();
    for (i, &c) in codes.iter().enumerate() {
        if given.next_if_eq(&i).is_some() {
            continue;
        }
        for (k, &bits) in [4, 8, 16].iter().enumerate() {
            let (lo, hi) = pack::range(bits);
            outside[k] += usize::from(c < lo || c > hi);
        }
    }
    let cost = |k: usize, bits: u32| {
        held_bytes(
            rows,
            rows * pack::stride(bits, cols),
            exceptions.len() + outside[k],
        )
    };
    let mut best = (cost(0, 4), 4);
    for (k, bits) in [(1, 8), (2, 16)] {
        if cost(k, bits) < best.0 {
            best = (cost(k, bits), bits);
        }
    }
    best.1
}
