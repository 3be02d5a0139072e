//! A BERT encoder (Hugging Face `BertModel` weight names, absolute positions, post-norm
//! layers, exact GELU), mean pooling, and optional L2 normalization (sentence-transformers).

use std::collections::BTreeMap;

use candle_core::{D, Device, Tensor};
use neurstore::{ResidentModel, ResidentTensor, ResidentWeight};

use crate::config::BertConfig;
use crate::error::{InferError, Result};
use crate::linear::{Linear, Matrix};
use crate::text::Batch;

/// How token states become one vector per sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the sequence's tokens (padding excluded).
    Mean,
    /// Mean, then scaled to unit L2 norm (sentence-transformers' `Normalize`).
    MeanNormalized,
}

struct LayerNorm {
    gamma: Tensor,
    beta: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(
            &x.contiguous()?,
            &self.gamma,
            &self.beta,
            self.eps,
        )?)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// A BERT encoder whose matrices are expanded or compressed, tensor by tensor, as loaded.
pub struct Bert {
    config: BertConfig,
    word: Matrix,
    position: Tensor,
    token_type: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
}

/// Looks tensors up by name under a prefix ("" or "bert.").
struct Weights<'a> {
    model: &'a ResidentModel,
    prefix: &'static str,
    expand: bool,
}

impl Weights<'_> {
    fn err(&self, detail: String) -> InferError {
        InferError::Weights {
            model: self.model.name.clone(),
            detail,
        }
    }

    fn tensor(&self, name: &str, shape: &[usize]) -> Result<&ResidentTensor> {
        let full = format!("{}{name}", self.prefix);
        let t = self
            .model
            .tensors
            .get(&full)
            .ok_or_else(|| self.err(format!("no tensor {full:?}")))?;
        let want: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        if t.shape != want {
            return Err(self.err(format!(
                "{full:?} has shape {:?}, expected {want:?}",
                t.shape
            )));
        }
        Ok(t)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.tensor(name, &[len])?;
        t.to_f32()
            .ok_or_else(|| self.err(format!("{name:?} is not a float tensor")))
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
        let t = self.tensor(name, &[rows, cols])?;
        match &t.weight {
            ResidentWeight::Quant(q) if !self.expand => Ok(Matrix::Quant(q.clone())),
            ResidentWeight::Bytes(dtype, _) => {
                Err(self.err(format!("{name:?} is {dtype}, not a float tensor")))
            }
            _ => Matrix::dense(t.to_f32().unwrap_or_default(), rows, cols),
        }
    }

    fn dense(&self, name: &str, rows: usize, cols: usize) -> Result<Tensor> {
        let t = self.tensor(name, &[rows, cols])?;
        let v = t
            .to_f32()
            .ok_or_else(|| self.err(format!("{name:?} is not a float tensor")))?;
        Ok(Tensor::from_vec(v, (rows, cols), &Device::Cpu)?)
    }

    fn linear(&self, name: &str, rows: usize, cols: usize) -> Result<Linear> {
        Linear::new(
            self.matrix(&format!("{name}.weight"), rows, cols)?,
            Some(self.vector(&format!("{name}.bias"), rows)?),
        )
    }

    fn norm(&self, name: &str, len: usize, eps: f64) -> Result<LayerNorm> {
        let v = |n: &str| -> Result<Tensor> {
            Ok(Tensor::from_vec(
                self.vector(&format!("{name}.{n}"), len)?,
                len,
                &Device::Cpu,
            )?)
        };
        Ok(LayerNorm {
            gamma: v("weight")?,
            beta: v("bias")?,
            eps: eps as f32,
        })
    }
}

impl Bert {
    /// Builds the encoder from a resident model. With `expand`, compressed matrices are
    /// expanded to dense f32 (the reference the compressed path is compared with).
    pub fn from_resident(model: &ResidentModel, config: &BertConfig, expand: bool) -> Result<Self> {
        let word_name = "embeddings.word_embeddings.weight";
        let prefix = if model.tensors.contains_key(word_name) {
            ""
        } else {
            "bert."
        };
        let w = Weights {
            model,
            prefix,
            expand,
        };
        let vocab = match model
            .tensors
            .get(&format!("{prefix}{word_name}"))
            .map(|t| t.shape.as_slice())
        {
            Some([v, _]) => *v as usize,
            Some(s) => return Err(w.err(format!("{word_name:?} has shape {s:?}"))),
            None => return Err(w.err(format!("no tensor {word_name:?}"))),
        };
        let (h, i, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.layer_norm_eps,
        );
        let layers = (0..config.num_hidden_layers)
            .map(|l| {
                let p = format!("encoder.layer.{l}");
                Ok(Layer {
                    query: w.linear(&format!("{p}.attention.self.query"), h, h)?,
                    key: w.linear(&format!("{p}.attention.self.key"), h, h)?,
                    value: w.linear(&format!("{p}.attention.self.value"), h, h)?,
                    attention_out: w.linear(&format!("{p}.attention.output.dense"), h, h)?,
                    attention_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                    intermediate: w.linear(&format!("{p}.intermediate.dense"), i, h)?,
                    output: w.linear(&format!("{p}.output.dense"), h, i)?,
                    output_norm: w.norm(&format!("{p}.output.LayerNorm"), h, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let type_rows = model
            .tensors
            .get(&format!("{prefix}embeddings.token_type_embeddings.weight"))
            .and_then(|t| t.shape.first().copied())
            .unwrap_or(0) as usize;
        Ok(Bert {
            word: w.matrix(word_name, vocab, h)?,
            position: w.dense(
                "embeddings.position_embeddings.weight",
                config.max_position_embeddings,
                h,
            )?,
            token_type: w
                .dense(
                    "embeddings.token_type_embeddings.weight",
                    type_rows.max(1),
                    h,
                )?
                .narrow(0, 0, 1)?,
            embedding_norm: w.norm("embeddings.LayerNorm", h, eps)?,
            layers,
            config: config.clone(),
        })
    }

    /// Bytes this encoder holds, shared bases excluded.
    pub fn held_bytes(&self) -> usize {
        let t = |x: &Tensor| x.elem_count() * 4;
        let n = |x: &LayerNorm| t(&x.gamma) + t(&x.beta);
        self.word.held_bytes()
            + t(&self.position)
            + t(&self.token_type)
            + n(&self.embedding_norm)
            + self
                .layers
                .iter()
                .map(|l| {
                    [
                        &l.query,
                        &l.key,
                        &l.value,
                        &l.attention_out,
                        &l.intermediate,
                        &l.output,
                    ]
                    .iter()
                    .map(|x| x.held_bytes())
                    .sum::<usize>()
                        + n(&l.attention_norm)
                        + n(&l.output_norm)
                })
                .sum::<usize>()
    }

    /// Token states of a batch: shape (size, len, hidden).
    pub fn forward(&self, batch: &Batch) -> Result<Tensor> {
        let (b, t, h) = (batch.size, batch.len, self.config.hidden_size);
        if t > self.config.max_position_embeddings {
            return Err(InferError::Input(format!(
                "sequence of {t} tokens is longer than the model's {}",
                self.config.max_position_embeddings
            )));
        }
        let dev = Device::Cpu;
        let words = self.word.gather(&batch.ids)?.reshape((b, t, h))?;
        let x = words
            .broadcast_add(&self.position.narrow(0, 0, t)?)?
            .broadcast_add(&self.token_type)?;
        let mut x = self.embedding_norm.forward(&x)?;
        let mask = Tensor::from_slice(&batch.mask, (b, 1, 1, t), &dev)?;
        // 0 for tokens, -1e9 for padding: added to attention scores.
        let mask_bias = ((mask - 1.0)? * 1e9)?;
        let heads = self.config.num_attention_heads;
        let d = h / heads;
        let scale = 1.0 / (d as f64).sqrt();
        for l in &self.layers {
            let split = |y: Tensor| -> Result<Tensor> {
                Ok(y.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous()?)
            };
            let q = split(l.query.forward(&x)?)?;
            let k = split(l.key.forward(&x)?)?;
            let v = split(l.value.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(&mask_bias)?;
            let p = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = p.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
            let a = l
                .attention_norm
                .forward(&(l.attention_out.forward(&ctx)? + &x)?)?;
            let f = l.intermediate.forward(&a)?.gelu_erf()?;
            x = l.output_norm.forward(&(l.output.forward(&f)? + &a)?)?;
        }
        Ok(x)
    }

    /// One vector per sequence of the batch.
    pub fn embed(&self, batch: &Batch, pooling: Pooling) -> Result<Vec<Vec<f32>>> {
        let x = self.forward(batch)?;
        let m = Tensor::from_slice(&batch.mask, (batch.size, batch.len, 1), &Device::Cpu)?;
        let sum = x.broadcast_mul(&m)?.sum(1)?;
        let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mut pooled = sum.broadcast_div(&count)?;
        if pooling == Pooling::MeanNormalized {
            let norm = pooled
                .sqr()?
                .sum_keepdim(D::Minus1)?
                .sqrt()?
                .clamp(1e-12, f64::MAX)?;
            pooled = pooled.broadcast_div(&norm)?;
        }
        Ok(pooled.to_vec2::<f32>()?)
    }
}

/// A resident model built from a safetensors file's bytes, every float tensor expanded to f32
/// (to run a model that is not in the store, such as the original a stored one is compared with).
pub fn resident_from_safetensors(name: &str, file: &[u8]) -> Result<ResidentModel> {
    let bad = |detail: String| InferError::Config {
        what: name.to_string(),
        detail,
    };
    let header = neurstore_core::safetensors::parse(file).map_err(|e| bad(e.to_string()))?;
    let mut tensors = BTreeMap::new();
    for t in &header.tensors {
        let start = (header.data_start + t.start) as usize;
        let bytes = &file[start..start + t.byte_len() as usize];
        let weight = ResidentWeight::from_bytes(t.dtype, bytes);
        tensors.insert(
            t.name.clone(),
            ResidentTensor {
                shape: t.shape.clone(),
                weight,
            },
        );
    }
    Ok(ResidentModel {
        name: name.to_string(),
        tensors,
    })
}
