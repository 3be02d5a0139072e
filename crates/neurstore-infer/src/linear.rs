//! Weight matrices, expanded (a candle tensor) or compressed (codes through the store's
//! kernel), behind one `Linear` layer.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use neurstore_core::kernel::QuantMatrix;

use crate::error::{InferError, Result};

/// Multiply-adds past which a compressed layer splits its output rows across threads.
const PARALLEL_WORK: usize = 1 << 20;

/// A weight matrix: `rows` outputs by `cols` inputs (PyTorch's layout).
#[derive(Clone)]
pub enum Matrix {
    /// Expanded f32, shape (rows, cols).
    Dense(Tensor),
    /// Bounded integer codes over an optional shared base, never expanded whole.
    Quant(Arc<QuantMatrix>),
}

impl Matrix {
    /// A dense matrix from row-major elements.
    pub fn dense(data: Vec<f32>, rows: usize, cols: usize) -> Result<Self> {
        Ok(Matrix::Dense(Tensor::from_vec(
            data,
            (rows, cols),
            &Device::Cpu,
        )?))
    }

    /// (rows, cols).
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Matrix::Dense(t) => {
                let d = t.dims();
                (d[0], d[1])
            }
            Matrix::Quant(q) => (q.rows(), q.cols()),
        }
    }

    /// Bytes held by this matrix alone (a shared base is not counted).
    pub fn held_bytes(&self) -> usize {
        match self {
            Matrix::Dense(t) => t.elem_count() * 4,
            Matrix::Quant(q) => q.held_bytes(),
        }
    }

    /// Rows `ids` stacked into a (ids.len(), cols) tensor: an embedding lookup.
    pub fn gather(&self, ids: &[u32]) -> Result<Tensor> {
        let (rows, cols) = self.dims();
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= rows) {
            return Err(InferError::Input(format!(
                "token id {bad} is outside the vocabulary of {rows}"
            )));
        }
        match self {
            Matrix::Dense(t) => {
                let ids = Tensor::from_slice(ids, ids.len(), &Device::Cpu)?;
                Ok(t.index_select(&ids, 0)?)
            }
            Matrix::Quant(q) => {
                let mut out = vec![0f32; ids.len() * cols];
                for (row, &id) in out.chunks_exact_mut(cols).zip(ids) {
                    q.row_into(id as usize, row);
                }
                Ok(Tensor::from_vec(out, (ids.len(), cols), &Device::Cpu)?)
            }
        }
    }
}

/// `y = x·Wᵀ + b`.
#[derive(Clone)]
pub struct Linear {
    weight: Matrix,
    bias: Option<Vec<f32>>,
    bias_tensor: Option<Tensor>,
}

impl Linear {
    /// A layer from its weight and optional bias (one value per output row).
    pub fn new(weight: Matrix, bias: Option<Vec<f32>>) -> Result<Self> {
        let (rows, _) = weight.dims();
        if let Some(b) = &bias
            && b.len() != rows
        {
            return Err(InferError::Input(format!(
                "bias of {} values for a layer of {rows} outputs",
                b.len()
            )));
        }
        let bias_tensor = match &bias {
            Some(b) => Some(Tensor::from_slice(b, rows, &Device::Cpu)?),
            None => None,
        };
        Ok(Linear {
            weight,
            bias,
            bias_tensor,
        })
    }

    /// The weight.
    pub fn weight(&self) -> &Matrix {
        &self.weight
    }

    /// Bytes held (weight without a shared base, plus bias).
    pub fn held_bytes(&self) -> usize {
        self.weight.held_bytes() + self.bias.as_ref().map_or(0, |b| b.len() * 4)
    }

    /// Applies the layer to `x` of shape (..., cols); the result has shape (..., rows).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, cols) = self.weight.dims();
        let mut dims = x.dims().to_vec();
        if dims.last() != Some(&cols) {
            return Err(InferError::Input(format!(
                "layer of {cols} inputs given a tensor of shape {dims:?}"
            )));
        }
        let n = x.elem_count() / cols;
        *dims.last_mut().unwrap() = rows;
        let y = match &self.weight {
            Matrix::Dense(w) => {
                let y = x.reshape((n, cols))?.matmul(&w.t()?)?;
                match &self.bias_tensor {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
            Matrix::Quant(q) => {
                let xs = x.flatten_all()?.to_vec1::<f32>()?;
                let mut y = vec![0f32; n * rows];
                if n * rows * cols >= PARALLEL_WORK {
                    q.par_linear(&xs, n, self.bias.as_deref(), &mut y);
                } else {
                    q.linear(&xs, n, self.bias.as_deref(), &mut y);
                }
                Tensor::from_vec(y, (n, rows), &Device::Cpu)?
            }
        };
        Ok(y.reshape(dims)?)
    }
}
