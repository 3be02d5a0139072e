//! `neurstore embed` end to end on a tiny BERT directory: its own tokenizer.json and
//! config.json from the store, texts from flags, a file and stdin, compressed against dense,
//! and clear errors.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::safetensors_shaped;
use serde_json::Value;

const H: usize = 8;
const INTER: usize = 16;
const VOCAB: usize = 12;
const MAX_POS: usize = 16;

const CONFIG: &str = r#"{"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,
"intermediate_size":16,"max_position_embeddings":16,"layer_norm_eps":1e-12,"hidden_act":"gelu"}"#;

/// A BERT WordPiece tokenizer with a 12-token vocabulary.
const TOKENIZER: &str = r###"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
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
fn values(n: usize, seed: &mut u64, scale: f32, offset: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            offset + scale * (((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        })
        .collect()
}

fn write_model(dir: &Path, with_tokenizer: bool) {
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

fn ns(store: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_neurstore"))
        .env_remove("NEURSTORE_DIR")
        .arg("--store")
        .arg(store)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or("").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok_json(store: &Path, args: &[&str], stdin: Option<&str>) -> Value {
    let out = ns(store, args, stdin);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn vectors(v: &Value) -> Vec<Vec<f64>> {
    v["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn embeds_from_compressed_weights_like_the_dense_model() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    write_model(&dir.path().join("bert"), true);
    let bert = dir.path().join("bert");
    let bert = bert.to_str().unwrap();
    assert!(ns(&store, &["init"], None).status.success());
    assert!(ns(&store, &["put", "exact", bert], None).status.success());
    let put = ns(
        &store,
        &["put", "q", bert, "--tolerance", "1e-3", "--base", "none"],
        None,
    );
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );

    let texts = ["--text", "Hello world.", "--text", "the models store"];
    let q = ok_json(
        &store,
        &[&["embed", "q", "--json"][..], &texts[..]].concat(),
        None,
    );
    let d = ok_json(
        &store,
        &[&["embed", "exact", "--json", "--dense"][..], &texts[..]].concat(),
        None,
    );
    assert_eq!(q["weights"], "compressed");
    assert_eq!(q["dimensions"], H);
    assert_eq!(q["normalized"], true);
    let (qv, dv) = (vectors(&q), vectors(&d));
    assert_eq!(qv.len(), 2);
    for (a, b) in qv.iter().zip(&dv) {
        assert_eq!(a.len(), H);
        let norm: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        let cos: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        assert!(cos > 0.999, "cosine {cos}");
    }
    // Different texts give different embeddings.
    assert!(qv[0].iter().zip(&qv[1]).any(|(x, y)| (x - y).abs() > 1e-3));

    // A file of lines (blank ones skipped) and stdin give the same vectors as --text.
    let lines = dir.path().join("lines.txt");
    std::fs::write(&lines, "Hello world.\n\nthe models store\n").unwrap();
    let from_file = ok_json(
        &store,
        &["embed", "q", "--json", "--file", lines.to_str().unwrap()],
        None,
    );
    assert_eq!(vectors(&from_file), qv);
    let from_stdin = ok_json(
        &store,
        &["embed", "q", "--json", "--file", "-"],
        Some("Hello world.\n"),
    );
    assert_eq!(vectors(&from_stdin)[0], qv[0]);

    // Text output: one line of H numbers per text.
    let out = ns(&store, &["embed", "q", "--text", "hello"], None);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert_eq!(text.split_whitespace().count(), H);
}

#[test]
fn missing_pieces_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    write_model(&dir.path().join("bert"), false);
    let file = dir.path().join("bert/model.safetensors");
    assert!(ns(&store, &["init"], None).status.success());
    assert!(
        ns(&store, &["put", "bare", file.to_str().unwrap()], None)
            .status
            .success()
    );
    let err = |args: &[&str]| {
        let out = ns(&store, args, None);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(err(&["embed", "bare"]).contains("nothing to embed"));
    assert!(err(&["embed", "bare", "--text", "hi"]).contains("--tokenizer"));
    assert!(err(&["embed", "nope", "--text", "hi"]).contains("nope"));
    // With a tokenizer given, the bare file runs on the default (MiniLM) config: wrong shapes.
    let tok = dir.path().join("tokenizer.json");
    std::fs::write(&tok, TOKENIZER).unwrap();
    let e = err(&[
        "embed",
        "bare",
        "--text",
        "hi",
        "--tokenizer",
        tok.to_str().unwrap(),
    ]);
    assert!(e.contains("shape"), "{e}");
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, CONFIG).unwrap();
    let out = ns(
        &store,
        &[
            "embed",
            "bare",
            "--text",
            "hi",
            "--tokenizer",
            tok.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
