//! A tiny BERT model directory (8 hidden units, one layer, a 12-token WordPiece vocabulary)
//! for the tests of `neurstore embed`.

use std::path::Path;

use super::safetensors_shaped;

pub const H: usize = 8;
pub const INTER: usize = 16;
pub const VOCAB: usize = 12;
pub const MAX_POS: usize = 16;

pub const CONFIG: &str = r#"{"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,
"intermediate_size":16,"max_position_embeddings":16,"layer_norm_eps":1e-12,"hidden_act":"gelu"}"#;

/// A BERT WordPiece tokenizer with a 12-token vocabulary.
pub const TOKENIZER: &str = r###"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
"normalizer":{"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":true,
 "strip_accents":null,"lowercase":true},
"pre_tokenizer":{"type":"BertPreTokenizer"},
"post_processor":{"type":"TemplateProcessing",
 "single":[{"SpecialToken":{"id":"[CLS]","type_id":0}},{"Sequence":{"id":"A","type_id":0}},
           {"SpecialToken":{"id":"[SEP]","type_id":0}}],
 "pair":[{"SpecialToken":{"id":"[CLS]","type_id":0}},{"Sequence":{"id":"A","type_id":0}},
         {"SpecialToken":{"id":"[SEP]","type_id":0}},{"Sequence":{"id":"B","type_id":1}},
         {"SpecialToken":{"id":"[SEP]","type_id":1}}],
 "special_tokens":{"[CLS]":{"id":"[CLS]","ids":[2],"tokens":["[CLS]"]},
                   "[SEP]":{"id":"[SEP]","ids":[3],"tokens":["[SEP]"]}}},
"decoder":null,
"model":{"type":"WordPiece","unk_token":"[UNK]","continuing_subword_prefix":"##",
 "max_input_chars_per_word":100,
 "vocab":{"[PAD]":0,"[UNK]":1,"[CLS]":2,"[SEP]":3,"hello":4,"world":5,"store":6,"model":7,
          "the":8,"a":9,"##s":10,".":11}}}"###;

/// Deterministic pseudo-random weights in [-scale, scale) around `offset`.
pub fn values(n: usize, seed: &mut u64, scale: f32, offset: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            offset + scale * (((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        })
        .collect()
}

pub fn write_model(dir: &Path, with_tokenizer: bool) {
    let mut seed = 7u64;
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut t = |name: &str, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        tensors.push((name.to_string(), shape, values(n, &mut seed, scale, offset)));
    };
    t(
        "embeddings.word_embeddings.weight",
        vec![VOCAB, H],
        0.5,
        0.0,
    );
    t(
        "embeddings.position_embeddings.weight",
        vec![MAX_POS, H],
        0.3,
        0.0,
    );
    t(
        "embeddings.token_type_embeddings.weight",
        vec![2, H],
        0.3,
        0.0,
    );
    for norm in [
        "embeddings.LayerNorm",
        "encoder.layer.0.attention.output.LayerNorm",
        "encoder.layer.0.output.LayerNorm",
    ] {
        t(&format!("{norm}.weight"), vec![H], 0.1, 1.0);
        t(&format!("{norm}.bias"), vec![H], 0.1, 0.0);
    }
    for (name, rows, cols) in [
        ("attention.self.query", H, H),
        ("attention.self.key", H, H),
        ("attention.self.value", H, H),
        ("attention.output.dense", H, H),
        ("intermediate.dense", INTER, H),
        ("output.dense", H, INTER),
    ] {
        t(
            &format!("encoder.layer.0.{name}.weight"),
            vec![rows, cols],
            0.4,
            0.0,
        );
        t(
            &format!("encoder.layer.0.{name}.bias"),
            vec![rows],
            0.1,
            0.0,
        );
    }
    let refs: Vec<(&str, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.as_slice()))
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("model.safetensors"), safetensors_shaped(&refs)).unwrap();
    std::fs::write(dir.join("config.json"), CONFIG).unwrap();
    if with_tokenizer {
        std::fs::write(dir.join("tokenizer.json"), TOKENIZER).unwrap();
    }
}
