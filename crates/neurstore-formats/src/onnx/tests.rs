use super::sample::*;
use super::*;
use crate::skeleton;

fn ranges<'a>(file: &'a [u8], c: &Container) -> Vec<&'a [u8]> {
    c.tensors
        .iter()
        .map(|t| &file[t.start as usize..t.end as usize])
        .collect()
}

#[test]
fn splits_initializers_typed_fields_and_constants() {
    let file = small_model();
    let m = parse(&file).unwrap();
    let names: Vec<&str> = m
        .container
        .tensors
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["c", "w", "b"],
        "file order; int64_data kept in the skeleton"
    );
    let b = &m.container.tensors[2];
    assert_eq!(b.origin, Origin::TypedField("float_data".into()));
    let b_bytes = &file[b.start as usize..b.end as usize];
    assert_eq!(
        b_bytes,
        [0.5f32, 0.25, -1.0, 8.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>()
    );
    assert!(
        m.container
            .skeleton_only
            .iter()
            .any(|s| s.contains("\"shape\""))
    );
    let sk = m.container.skeleton_bytes(&file).unwrap();
    assert_eq!(
        skeleton::reassemble_to_vec(&sk, &ranges(&file, &m.container)).unwrap(),
        file
    );
}

#[test]
fn graph_info_names_inputs_outputs_and_ops() {
    let file = small_model();
    let inf = info::info(&file, &|n| n == "w").unwrap();
    assert_eq!(inf.opsets, vec![("ai.onnx".to_string(), 17)]);
    assert_eq!(inf.inputs.len(), 1);
    assert_eq!(inf.inputs[0].name, "x");
    assert_eq!(inf.inputs[0].dims, ["2", "3"]);
    assert_eq!(inf.outputs[0].element, "float");
    assert_eq!(inf.op_counts.get("MatMul"), Some(&1));
    assert_eq!(inf.op_counts.len(), 3);
}

#[test]
fn external_data_is_listed_and_split() {
    let file = model(
        &[],
        &[
            tensor_external("e", 1, &[2], "weights/data.bin", 8, 8),
            tensor_external("f", 1, &[1], "weights/data.bin", 0, 4),
        ],
        &[],
        &[],
    );
    let m = parse(&file).unwrap();
    assert!(m.container.tensors.is_empty());
    assert_eq!(m.external[0].location, "weights/data.bin");
    let refs: Vec<&ExternalRef> = m.external.iter().collect();
    let data: Vec<u8> = (0..20).collect();
    let c = external_container(data.len() as u64, &refs).unwrap();
    assert_eq!(c.tensors[0].name, "f");
    assert_eq!(c.segments().len(), 4, "f, gap, e, tail");
    let sk = c.skeleton_bytes(&data).unwrap();
    assert_eq!(
        skeleton::reassemble_to_vec(&sk, &ranges(&data, &c)).unwrap(),
        data
    );
    assert!(
        external_container(10, &refs).is_err(),
        "range past the end of the data file"
    );
}

#[test]
fn external_locations_must_stay_inside_the_directory() {
    for bad in [
        "../x",
        "/etc/passwd",
        "a/../../b",
        "C:\\x",
        "a\\b",
        "",
        ".",
        "c:/x",
    ] {
        assert!(check_location(bad).is_err(), "{bad:?}");
    }
    assert_eq!(check_location("./a//b.bin").unwrap(), "a/b.bin");
    let escaping = model(
        &[],
        &[tensor_external("e", 1, &[2], "../../secret", 0, 8)],
        &[],
        &[],
    );
    assert!(matches!(parse(&escaping), Err(Error::Refused { .. })));
    let wrong_len = model(
        &[],
        &[tensor_external("e", 1, &[2], "d.bin", 0, 9)],
        &[],
        &[],
    );
    assert!(parse(&wrong_len).is_err());
}

#[test]
fn malformed_tensors_are_refused() {
    let short_raw = model(&[], &[tensor_raw("w", 1, &[3], &[0u8; 8])], &[], &[]);
    assert!(
        parse(&short_raw)
            .unwrap_err()
            .to_string()
            .contains("needs 12 bytes")
    );
    let huge_dims = model(
        &[],
        &[tensor_raw(
            "w",
            1,
            &[u32::MAX as u64, u32::MAX as u64, 16],
            &[],
        )],
        &[],
        &[],
    );
    assert!(
        parse(&huge_dims)
            .unwrap_err()
            .to_string()
            .contains("overflows")
    );
    let mut twice = tensor_raw("w", 1, &[1], &[0u8; 4]);
    wire::put_bytes(&mut twice, 9, &[0u8; 4]);
    assert!(parse(&model(&[], &[twice], &[], &[])).is_err());
    let file = small_model();
    for cut in 1..file.len() {
        // A cut can land on a field boundary of the model: then it must still parse or refuse
        // cleanly, never panic; most cuts break a length.
        let _ = parse(&file[..cut]);
    }
    assert!(parse(b"not onnx").is_err());
}

#[test]
fn duplicate_names_keep_the_second_in_the_skeleton() {
    let raw = [0u8; 4];
    let file = model(
        &[],
        &[
            tensor_raw("w", 1, &[1], &raw),
            tensor_raw("w", 1, &[1], &raw),
        ],
        &[],
        &[],
    );
    let m = parse(&file).unwrap();
    assert_eq!(m.container.tensors.len(), 1);
    assert!(
        m.container
            .skeleton_only
            .iter()
            .any(|s| s.contains("1 tensors kept"))
    );
}

#[test]
fn deep_subgraphs_are_refused() {
    // A node whose graph attribute holds a node whose graph attribute ... 40 deep.
    let mut graph = Vec::new();
    for _ in 0..40 {
        let mut attr = Vec::new();
        wire::put_bytes(&mut attr, 1, b"body");
        wire::put_bytes(&mut attr, 6, &graph);
        let mut node = Vec::new();
        wire::put_bytes(&mut node, 5, &attr);
        graph = Vec::new();
        wire::put_bytes(&mut graph, 1, &node);
    }
    let mut m = Vec::new();
    wire::put_bytes(&mut m, 7, &graph);
    assert!(
        parse(&m)
            .unwrap_err()
            .to_string()
            .contains("nested too deep")
    );
}
