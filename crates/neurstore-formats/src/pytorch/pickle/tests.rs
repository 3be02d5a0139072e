use super::*;
use crate::pytorch::pickle_writer::Writer;

#[test]
fn forbidden_globals_are_named() {
    let mut w = Writer::default();
    w.proto(2)
        .global("posix", "system")
        .str("touch /tmp/x")
        .op(0x85)
        .op(b'R')
        .op(b'.');
    let err = interpret(&w.out).unwrap_err();
    assert!(
        matches!(&err, Error::ForbiddenGlobal { module, name } if module == "posix" && name == "system"),
        "{err}"
    );
    assert!(err.to_string().contains("posix.system"));
    let mut s = Writer::default();
    s.proto(4).str("builtins").str("eval").op(0x93).op(b'.');
    assert!(
        interpret(&s.out)
            .unwrap_err()
            .to_string()
            .contains("builtins.eval")
    );
    let mut storage = Writer::default();
    storage.proto(2).global("torch", "load").op(b'.');
    assert!(matches!(
        interpret(&storage.out),
        Err(Error::ForbiddenGlobal { .. })
    ));
}

#[test]
fn disallowed_opcodes_and_calls_are_refused() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"\x80\x02(cos\nsystem\nX\x01\x00\x00\x00xi.".to_vec(),
            "os.system",
        ),
        (b"\x80\x02K\x01i.".to_vec(), "not allowed"), // INST
        (b"\x80\x02P1\n.".to_vec(), "not allowed"),   // text PERSID
        (b"\x80\x02\x82\x01.".to_vec(), "not allowed"), // EXT1
        (b"\x80\x02ctorch\nFloatStorage\n)R.".to_vec(), "not allowed"), // calling a storage class
        (b"\x80\x02K\x01K\x02.".to_vec(), "after STOP"), // STOP leaves more than... (trailing check below)
    ];
    for (p, needle) in &cases[..5] {
        let e = interpret(p).unwrap_err().to_string();
        assert!(e.contains(needle), "{p:?}: {e}");
    }
    assert!(
        interpret(b"\x80\x02K\x01.junk")
            .unwrap_err()
            .to_string()
            .contains("after STOP")
    );
    assert!(
        interpret(b"\x80\x02X\xff\xff\xff\xffab.")
            .unwrap_err()
            .to_string()
            .contains("bytes needed")
    );
    assert!(
        interpret(b"\x80\x02h\x05.")
            .unwrap_err()
            .to_string()
            .contains("memo 5")
    );
    assert!(interpret(b"\x80\x02.").is_err(), "STOP on an empty stack");
    assert!(
        interpret(b"\x80\x02NN.")
            .unwrap_err()
            .to_string()
            .contains("left on the stack")
    );
    assert!(
        interpret(b"\x80\x02(K\x01a.").is_err(),
        "APPEND across a mark"
    );
    assert!(
        interpret(b"\x80\x09.")
            .unwrap_err()
            .to_string()
            .contains("protocol 9")
    );
}

#[test]
fn plain_values_and_tensors_are_built() {
    let entries = vec![crate::pytorch::pickle_writer::Entry {
        name: "w".into(),
        dtype: DType::F16,
        storage: "0".into(),
        storage_numel: 6,
        offset: 0,
        size: vec![2, 3],
        stride: vec![3, 1],
    }];
    let p = interpret(&crate::pytorch::pickle_writer::state_dict(&entries)).unwrap();
    let Value::Dict(items) = &p.values[p.root] else {
        panic!("root is a dict")
    };
    assert_eq!(p.values[items[0].0], Value::Str("w".into()));
    let Value::Tensor(t) = &p.values[items[0].1] else {
        panic!("a tensor")
    };
    assert_eq!(
        (t.dtype, t.size.clone(), t.stride.clone()),
        (DType::F16, vec![2, 3], vec![3, 1])
    );
}

#[test]
fn integers_decode_with_sign() {
    let mut w = Writer::default();
    w.proto(2)
        .op(b'(')
        .int(3)
        .int(300)
        .int(70000)
        .int(1 << 40)
        .op(b't');
    w.out.extend_from_slice(&[0x8a, 1, 0xff]); // LONG1 -1
    w.out.extend_from_slice(b"J\xfe\xff\xff\xff"); // BININT -2
    w.op(0x86).op(0x86).op(b'.');
    let p = interpret(&w.out).unwrap();
    let Value::Tuple(outer) = &p.values[p.root] else {
        panic!()
    };
    let Value::Tuple(inner) = &p.values[outer[1]] else {
        panic!()
    };
    assert_eq!(p.values[inner[0]], Value::Int(-1));
    assert_eq!(p.values[inner[1]], Value::Int(-2));
    let Value::Tuple(first) = &p.values[outer[0]] else {
        panic!()
    };
    let ints: Vec<&Value> = first.iter().map(|&i| &p.values[i]).collect();
    assert_eq!(
        ints,
        [
            &Value::Int(3),
            &Value::Int(300),
            &Value::Int(70000),
            &Value::Int(1 << 40)
        ]
    );
}
