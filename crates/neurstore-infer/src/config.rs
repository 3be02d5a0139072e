//! The subset of a Hugging Face BERT `config.json` the encoder needs.

use serde::Deserialize;

use crate::error::{InferError, Result};

/// BERT hyper-parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer (divides `hidden_size`).
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Largest sequence length (position embeddings).
    pub max_position_embeddings: usize,
    /// Epsilon of every layer norm.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Activation of the feed-forward layer; only "gelu" (the exact, erf form) is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_eps() -> f64 {
    1e-12
}

fn default_act() -> String {
    "gelu".into()
}

impl BertConfig {
    /// all-MiniLM-L6-v2's configuration (for models stored as a bare safetensors file).
    pub fn minilm_l6() -> Self {
        BertConfig {
            hidden_size: 384,
            num_hidden_layers: 6,
            num_attention_heads: 12,
            intermediate_size: 1536,
            max_position_embeddings: 512,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".into(),
        }
    }

    /// Parses and checks a `config.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let bad = |detail: String| InferError::Config {
            what: "config.json".into(),
            detail,
        };
        let c: BertConfig = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if c.hidden_size == 0
            || c.num_attention_heads == 0
            || !c.hidden_size.is_multiple_of(c.num_attention_heads)
            || c.num_hidden_layers == 0
            || c.intermediate_size == 0
        {
            return Err(bad(format!(
                "hidden_size {} must be a positive multiple of num_attention_heads {}, with layers and intermediate_size positive",
                c.hidden_size, c.num_attention_heads
            )));
        }
        if c.hidden_act != "gelu" {
            return Err(bad(format!(
                "hidden_act {:?} is not supported (only \"gelu\")",
                c.hidden_act
            )));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_minilm_and_rejects_bad_configs() {
        let json = br#"{"hidden_size":384,"num_hidden_layers":6,"num_attention_heads":12,
            "intermediate_size":1536,"max_position_embeddings":512,"layer_norm_eps":1e-12,
            "hidden_act":"gelu","vocab_size":30522}"#;
        assert_eq!(
            BertConfig::from_json(json).unwrap(),
            BertConfig::minilm_l6()
        );
        let odd = br#"{"hidden_size":384,"num_hidden_layers":6,"num_attention_heads":7,
            "intermediate_size":1536,"max_position_embeddings":512}"#;
        assert!(
            BertConfig::from_json(odd)
                .unwrap_err()
                .to_string()
                .contains("multiple")
        );
        let relu = br#"{"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,
            "intermediate_size":8,"max_position_embeddings":8,"hidden_act":"relu"}"#;
        assert!(BertConfig::from_json(relu).is_err());
        assert!(BertConfig::from_json(b"{").is_err());
    }
}
