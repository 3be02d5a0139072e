use std::sync::Arc;

use proptest::prelude::*;

use super::{BaseMatrix, Isa, KernelError, QuantMatrix};

/// Deterministic generator for the bulk of a case (proptest picks the shape and the seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn int(&mut self, lo: i32, hi: i32) -> i32 {
        lo + (self.next() % (hi - lo + 1) as u64) as i32
    }
    fn float(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Codes spanning the range of `width` (4, 8, 16) with some outliers, and exceptions.
fn random_quant(
    rng: &mut Rng,
    rows: usize,
    cols: usize,
    width: u32,
    base: Option<Arc<BaseMatrix>>,
) -> QuantMatrix {
    let span = match width {
        4 => 7,
        8 => 120,
        _ => 20_000,
    };
    let codes: Vec<i32> = (0..rows * cols)
        .map(|_| match rng.int(0, 40) {
            0 => rng.int(-3 * span, 3 * span), // often an outlier
            _ => rng.int(-span, span),
        })
        .collect();
    let mut exceptions: Vec<(usize, f32)> = Vec::new();
    for i in 0..rows * cols {
        if rng.int(0, 30) == 0 {
            exceptions.push((i, rng.float() * if i % 2 == 0 { 1.0 } else { 50.0 }));
        }
    }
    let step = 1e-3 * (1.0 + rng.float() as f64);
    QuantMatrix::new(rows, cols, step, &codes, &exceptions, base).unwrap()
}

fn random_base(rng: &mut Rng, kind: u8, rows: usize, cols: usize) -> Option<Arc<BaseMatrix>> {
    match kind {
        0 => None,
        1 => {
            let data = (0..rows * cols).map(|_| rng.float()).collect();
            Some(Arc::new(BaseMatrix::Dense(data)))
        }
        _ => {
            let width = [4, 8, 16][kind as usize - 2];
            Some(Arc::new(BaseMatrix::Quant(random_quant(
                rng, rows, cols, width, None,
            ))))
        }
    }
}

/// `y` within float tolerance of the f64 product on `to_dense()`, scaled by the size of the
/// terms (base, delta and weight) the kernel may sum separately.
fn check_linear(m: &QuantMatrix, x: &[f32], batch: usize, bias: Option<&[f32]>, y: &[f32]) {
    let (rows, cols) = (m.rows(), m.cols());
    let w = m.to_dense();
    let base = m.base().map(|b| match &**b {
        BaseMatrix::Dense(data) => data.clone(),
        BaseMatrix::Quant(q) => q.to_dense(),
    });
    for b in 0..batch {
        for r in 0..rows {
            let (mut exact, mut scale) = (0f64, 0f64);
            for c in 0..cols {
                let (wi, xi) = (w[r * cols + c] as f64, x[b * cols + c] as f64);
                let bi = base.as_ref().map_or(0.0, |v| v[r * cols + c] as f64);
                exact += wi * xi;
                scale += (wi.abs() + bi.abs() + (wi - bi).abs()) * xi.abs();
            }
            let bb = bias.map_or(0.0, |v| v[r] as f64);
            exact += bb;
            let got = y[b * rows + r] as f64;
            let tol = 1e-5 * (scale + bb.abs()) + 1e-6;
            assert!(
                (got - exact).abs() <= tol,
                "y[{b},{r}] = {got}, expected {exact} ± {tol}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn linear_matches_reference(
        rows in 1usize..40,
        cols in 1usize..70,
        width_kind in 0usize..3,
        base_kind in 0u8..5,
        batch in prop::sample::select(vec![1usize, 2, 3, 4, 5, 6, 7, 8, 9, 33]),
        with_bias in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed);
        let base = random_base(&mut rng, base_kind, rows, cols);
        let m = random_quant(&mut rng, rows, cols, [4, 8, 16][width_kind], base);
        let x: Vec<f32> = (0..batch * cols).map(|_| rng.float()).collect();
        let bias: Option<Vec<f32>> = with_bias.then(|| (0..rows).map(|_| rng.float()).collect());
        for isa in [Isa::Scalar, Isa::detect()] {
            let mut y = vec![f32::NAN; batch * rows];
            m.linear_with(isa, &x, batch, bias.as_deref(), &mut y);
            check_linear(&m, &x, batch, bias.as_deref(), &y);
        }
        let mut y = vec![f32::NAN; batch * rows];
        m.par_linear(&x, batch, bias.as_deref(), &mut y);
        check_linear(&m, &x, batch, bias.as_deref(), &y);
    }

    #[test]
    fn dequantized_values_are_exact_within_two_ulp(
        rows in 1usize..20,
        cols in 1usize..50,
        width_kind in 0usize..3,
        base_kind in 0u8..5,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed);
        let base = random_base(&mut rng, base_kind, rows, cols);
        let base_dense = base.as_ref().map(|b| match &**b {
            BaseMatrix::Dense(data) => data.clone(),
            BaseMatrix::Quant(q) => q.to_dense(),
        });
        let span = [7, 120, 20_000][width_kind];
        let codes: Vec<i32> = (0..rows * cols).map(|_| rng.int(-span, span)).collect();
        let step = 10f64.powi(rng.int(-6, 0)) * (1.5 + rng.float() as f64);
        let m = QuantMatrix::new(rows, cols, step, &codes, &[], base).unwrap();
        let w = m.to_dense();
        for (i, (&v, &code)) in w.iter().zip(&codes).enumerate() {
            let b = base_dense.as_ref().map_or(0.0, |d| d[i]);
            let f = (b as f64 + code as f64 * step) as f32;
            let big = f.abs().max((code as f64 * step).abs() as f32);
            let ulp = f32::from_bits(big.to_bits() + 1) - big;
            prop_assert!((v - f).abs() <= 2.0 * ulp, "element {}: {} vs {}", i, v, f);
        }
        // Every implementation and every accessor returns the same bits.
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            m.row_into(r, &mut row);
            prop_assert_eq!(&row[..], &w[r * cols..(r + 1) * cols]);
            m.dequant_row(Isa::Scalar, r, &mut row);
            prop_assert_eq!(&row[..], &w[r * cols..(r + 1) * cols]);
        }
    }
}

#[test]
fn width_choice() {
    let small: Vec<i32> = (0..64 * 64).map(|i| i % 16 - 8).collect();
    let m = QuantMatrix::new(64, 64, 1e-3, &small, &[], None).unwrap();
    assert_eq!((m.code_bits(), m.exception_count()), (4, 0));

    let mut outliers = small.clone();
    for i in [3, 500, 4000] {
        outliers[i] = 15 * (i as i32 % 2 * 2 - 1);
    }
    let m = QuantMatrix::new(64, 64, 1e-3, &outliers, &[(10, 0.5)], None).unwrap();
    assert_eq!((m.code_bits(), m.exception_count()), (4, 4));
    // An out-of-range code becomes an exception with the decoder's value.
    assert_eq!(m.to_dense()[500], (-15.0 * 1e-3f64) as f32);
    assert_eq!(m.to_dense()[10], 0.5);

    let bytes: Vec<i32> = (0..64 * 64).map(|i| i % 200 - 100).collect();
    assert_eq!(
        QuantMatrix::new(64, 64, 1e-3, &bytes, &[], None)
            .unwrap()
            .code_bits(),
        8
    );

    let wide: Vec<i32> = (0..64 * 64).map(|i| i * 7 - 10_000).collect();
    let m = QuantMatrix::new(64, 64, 1e-3, &wide, &[], None).unwrap();
    assert_eq!((m.code_bits(), m.exception_count()), (16, 0));
}

#[test]
fn new_rejects_bad_input() {
    let codes = vec![0i32; 12];
    let new =
        |codes: &[i32], exc: &[(usize, f32)], base| QuantMatrix::new(3, 4, 0.01, codes, exc, base);
    assert!(matches!(
        new(&codes[..11], &[], None),
        Err(KernelError::Length { .. })
    ));
    for exc in [
        &[(5, 1.0), (2, 1.0)][..],
        &[(5, 1.0), (5, 2.0)],
        &[(12, 1.0)],
    ] {
        assert!(
            matches!(new(&codes, exc, None), Err(KernelError::Exception { .. })),
            "{exc:?}"
        );
    }
    for step in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-60, 1e300] {
        assert!(matches!(
            QuantMatrix::new(3, 4, step, &codes, &[], None),
            Err(KernelError::Step(_))
        ));
    }
    let dense = |n| Arc::new(BaseMatrix::Dense(vec![0.0; n]));
    assert!(matches!(
        new(&codes, &[], Some(dense(11))),
        Err(KernelError::Length { .. })
    ));
    let other = QuantMatrix::new(4, 3, 0.01, &codes, &[], None).unwrap();
    let other = Some(Arc::new(BaseMatrix::Quant(other)));
    assert!(matches!(
        new(&codes, &[], other),
        Err(KernelError::BaseShape { .. })
    ));
    let inner = QuantMatrix::new(3, 4, 0.01, &codes, &[], Some(dense(12))).unwrap();
    let nested = Some(Arc::new(BaseMatrix::Quant(inner)));
    assert!(matches!(
        new(&codes, &[], nested),
        Err(KernelError::NestedBase)
    ));
    assert!(matches!(
        QuantMatrix::new(usize::MAX, 2, 0.01, &codes, &[], None),
        Err(KernelError::Shape { .. })
    ));
    // The messages say what is wrong.
    let err = new(&codes, &[(5, 1.0), (5, 2.0)], None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("index 5"), "{err}");
}

#[test]
fn held_bytes_exclude_the_shared_base() {
    let codes = vec![1i32; 32 * 32];
    let data = vec![0.5f32; 32 * 32];
    let base = Arc::new(BaseMatrix::Dense(data));
    let m = QuantMatrix::new(32, 32, 1e-3, &codes, &[], Some(base.clone())).unwrap();
    assert_eq!(m.held_bytes(), 32 * 16 + 33 * 8);
    assert_eq!(base.held_bytes(), 32 * 32 * 4);
    assert_eq!(m.to_dense()[7], 1f32.mul_add(1e-3f64 as f32, 0.5));
}
