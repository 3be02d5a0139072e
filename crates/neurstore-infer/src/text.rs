//! Text to token ids with the model's own `tokenizer.json`, and padded batches.

use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use crate::error::{InferError, Result};

/// A padded batch of token id sequences.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Sequences in the batch.
    pub size: usize,
    /// Length of every (padded) sequence.
    pub len: usize,
    /// `size × len` token ids, row-major; padding is id 0.
    pub ids: Vec<u32>,
    /// `size × len` mask: 1 for a token, 0 for padding.
    pub mask: Vec<f32>,
}

impl Batch {
    /// A batch from id sequences, padded with id 0 to the longest.
    pub fn from_ids(seqs: &[Vec<u32>]) -> Result<Self> {
        let len = seqs.iter().map(Vec::len).max().unwrap_or(0);
        if seqs.is_empty() || len == 0 {
            return Err(InferError::Input(
                "an empty batch or an empty sequence".into(),
            ));
        }
        let mut ids = vec![0u32; seqs.len() * len];
        let mut mask = vec![0f32; seqs.len() * len];
        for (k, s) in seqs.iter().enumerate() {
            ids[k * len..k * len + s.len()].copy_from_slice(s);
            mask[k * len..k * len + s.len()].fill(1.0);
        }
        Ok(Batch {
            size: seqs.len(),
            len,
            ids,
            mask,
        })
    }
}

/// A tokenizer that truncates to a maximum length.
pub struct TextEncoder {
    tokenizer: Tokenizer,
}

impl TextEncoder {
    /// From the bytes of a `tokenizer.json`; sequences are cut to `max_len` tokens.
    pub fn from_json(bytes: &[u8], max_len: usize) -> Result<Self> {
        let bad = |detail: String| InferError::Config {
            what: "tokenizer.json".into(),
            detail,
        };
        let mut tokenizer = Tokenizer::from_bytes(bytes).map_err(|e| bad(e.to_string()))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| bad(e.to_string()))?;
        tokenizer.with_padding(None::<PaddingParams>);
        Ok(TextEncoder { tokenizer })
    }

    /// Token ids of one text, special tokens included.
    pub fn ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| InferError::Input(format!("cannot tokenize {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// A padded batch of texts.
    pub fn batch(&self, texts: &[&str]) -> Result<Batch> {
        let seqs = texts
            .iter()
            .map(|t| self.ids(t))
            .collect::<Result<Vec<_>>>()?;
        Batch::from_ids(&seqs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_pad_and_mask() {
        let b = Batch::from_ids(&[vec![101, 7, 102], vec![101, 102]]).unwrap();
        assert_eq!((b.size, b.len), (2, 3));
        assert_eq!(b.ids, vec![101, 7, 102, 101, 102, 0]);
        assert_eq!(b.mask, vec![1.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
        assert!(Batch::from_ids(&[]).is_err());
        assert!(Batch::from_ids(&[vec![]]).is_err());
    }
}
