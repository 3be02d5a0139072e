use super::*;
use crate::container::materialize;

fn bytes_of<'a>(
    file: &'a [u8],
    layout: &Container,
) -> impl FnMut(&OutTensor) -> Result<Cow<'a, [u8]>> + use<'a> {
    let ranges: Vec<(u64, u64)> = layout.tensors.iter().map(|t| (t.start, t.end)).collect();
    move |t: &OutTensor| {
        let (s, e) = ranges[t.source.tensor];
        let range = &file[s as usize..e as usize];
        Ok(Cow::Owned(materialize(&t.source, range)?.into_owned()))
    }
}

#[test]
fn gguf_to_safetensors_reports_losses_and_writes_when_forced() {
    let f32s: Vec<u8> = (0..8u8).collect();
    let q4 = [3u8; 20];
    let file = crate::gguf::build::gguf(&[("w", 0, vec![2], &f32s), ("q", 3, vec![32], &q4)]);
    let (c, _) = crate::gguf::parse(&file).unwrap();
    let p = plan(&c, Target::Safetensors);
    assert!(
        p.losses.iter().any(|l| l.contains("Q4_1")),
        "{:?}",
        p.losses
    );
    assert!(p.losses.iter().any(|l| l.contains("GGUF metadata")));
    assert!(matches!(p.check(false), Err(Error::Lossy { .. })));
    p.check(true).unwrap();
    let mut out = Vec::new();
    let n = p.write(&mut out, &mut bytes_of(&file, &c)).unwrap();
    assert_eq!(n, out.len() as u64);
    let back = crate::safetensors::parse(&out).unwrap();
    assert_eq!(back.tensors[0].name, "w");
    assert_eq!(
        &out[back.tensors[0].start as usize..back.tensors[0].end as usize],
        &f32s[..]
    );
    assert_eq!(back.tensors[1].shape, vec![20]);
}

#[test]
fn pytorch_output_reads_back_with_views_made_contiguous() {
    use crate::pytorch::pickle_writer::{Entry, state_dict};
    let s: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let e = |name: &str, size: Vec<u64>, stride: Vec<u64>| Entry {
        name: name.into(),
        dtype: DType::F32,
        storage: "0".into(),
        storage_numel: 6,
        offset: 0,
        size,
        stride,
    };
    let pkl = state_dict(&[
        e("t", vec![3, 2], vec![1, 3]),
        e("m", vec![2, 3], vec![3, 1]),
    ]);
    let file =
        crate::pytorch::zip::write_archive(&[("archive/data.pkl", &pkl), ("archive/data/0", &s)]);
    let (c, _) = crate::pytorch::parse(&file).unwrap();
    let p = plan(&c, Target::PyTorch);
    assert!(p.losses.is_empty(), "{:?}", p.losses);
    let mut out = Vec::new();
    p.write(&mut out, &mut bytes_of(&file, &c)).unwrap();
    let (back, info) = crate::pytorch::parse(&out).unwrap();
    assert_eq!((info.tensors, info.non_contiguous), (2, 0));
    let t = back.tensors.iter().find(|t| t.name == "t").unwrap();
    let want: Vec<u8> = [0, 3, 1, 4, 2, 5]
        .iter()
        .flat_map(|&i| (i as f32).to_le_bytes())
        .collect();
    assert_eq!(&out[t.start as usize..t.end as usize], &want[..]);
}

#[test]
fn onnx_to_pytorch_loses_the_graph_and_unsupported_dtypes() {
    let file = crate::onnx::sample::model(
        &[],
        &[crate::onnx::sample::tensor_raw("u", 4, &[2], &[1, 0, 2, 0])],
        &[],
        &[],
    );
    let m = crate::onnx::parse(&file).unwrap();
    let p = plan(&m.container, Target::PyTorch);
    assert!(p.losses.iter().any(|l| l.contains("ONNX graph")));
    assert!(p.losses.iter().any(|l| l.contains("U16")), "{:?}", p.losses);
    assert_eq!(Target::from_extension("PTH"), Some(Target::PyTorch));
    assert_eq!(Target::from_extension("onnx"), None);
}

#[test]
fn wrong_tensor_lengths_from_the_store_are_errors() {
    let file = crate::gguf::build::gguf(&[("w", 0, vec![2], &[0u8; 8])]);
    let (c, _) = crate::gguf::parse(&file).unwrap();
    let p = plan(&c, Target::Safetensors);
    let err = p
        .write(&mut Vec::new(), &mut |_| Ok(Cow::Owned(vec![0u8; 7])))
        .unwrap_err();
    assert!(err.to_string().contains("7 bytes given"));
}
