use super::pickle_writer::{Entry, Writer, state_dict};
use super::*;
use crate::container::materialize;
use crate::skeleton;

fn entry(
    name: &str,
    storage: &str,
    numel: u64,
    offset: u64,
    size: &[u64],
    stride: &[u64],
) -> Entry {
    Entry {
        name: name.into(),
        dtype: DType::F32,
        storage: storage.into(),
        storage_numel: numel,
        offset,
        size: size.to_vec(),
        stride: stride.to_vec(),
    }
}

fn floats(n: usize, base: f32) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (base + i as f32).to_le_bytes())
        .collect()
}

fn checkpoint(pickle: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut entries: Vec<(String, &[u8])> = vec![("archive/data.pkl".into(), pickle)];
    for (k, b) in storages {
        entries.push((format!("archive/data/{k}"), b));
    }
    entries.push(("archive/version".into(), b"3\n"));
    let refs: Vec<(&str, &[u8])> = entries.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    zip::write_archive(&refs)
}

fn round_trip(file: &[u8], c: &Container) {
    let sk = c.skeleton_bytes(file).unwrap();
    let parts: Vec<&[u8]> = c
        .tensors
        .iter()
        .map(|t| &file[t.start as usize..t.end as usize])
        .collect();
    assert_eq!(skeleton::reassemble_to_vec(&sk, &parts).unwrap(), file);
}

fn view_bytes(file: &[u8], c: &Container, name: &str) -> Vec<u8> {
    let v = c.views.iter().find(|v| v.name == name).unwrap();
    let t = &c.tensors[v.tensor];
    materialize(v, &file[t.start as usize..t.end as usize])
        .unwrap()
        .into_owned()
}

#[test]
fn one_storage_per_tensor_gives_named_ranges() {
    let pkl = state_dict(&[
        entry("a.weight", "0", 6, 0, &[2, 3], &[3, 1]),
        entry("a.bias", "1", 2, 0, &[2], &[1]),
    ]);
    let (s0, s1) = (floats(6, 0.0), floats(2, 10.0));
    let file = checkpoint(&pkl, &[("0", s0.clone()), ("1", s1.clone())]);
    let (c, info) = parse(&file).unwrap();
    assert_eq!(
        (info.archive.as_str(), info.tensors, info.storages),
        ("archive", 2, 2)
    );
    let names: Vec<&str> = c.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a.weight", "a.bias"]);
    assert_eq!(c.tensors[0].shape, vec![2, 3]);
    assert_eq!(view_bytes(&file, &c, "a.bias"), s1);
    assert!(
        c.skeleton_only.is_empty(),
        "a plain state_dict loses nothing: {:?}",
        c.skeleton_only
    );
    round_trip(&file, &c);
}

#[test]
fn shared_storages_alias_split_or_stay_flat() {
    let s = floats(8, 0.0);
    // Tied weights: two names, the same bytes.
    let tied = checkpoint(
        &state_dict(&[
            entry("emb", "0", 8, 0, &[2, 4], &[4, 1]),
            entry("head", "0", 8, 0, &[2, 4], &[4, 1]),
        ]),
        &[("0", s.clone())],
    );
    let (c, info) = parse(&tied).unwrap();
    assert_eq!((c.tensors.len(), c.views.len(), info.aliases), (1, 2, 1));
    assert_eq!(view_bytes(&tied, &c, "head"), s);
    round_trip(&tied, &c);
    // A fused storage split by disjoint views, plus bytes no view uses.
    let fused = checkpoint(
        &state_dict(&[
            entry("q", "0", 8, 0, &[2], &[1]),
            entry("k", "0", 8, 4, &[2], &[1]),
        ]),
        &[("0", s.clone())],
    );
    let (c, _) = parse(&fused).unwrap();
    let names: Vec<&str> = c.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["q", "archive/data/0@8", "k", "archive/data/0@24"]);
    assert_eq!(view_bytes(&fused, &c, "k"), s[16..24].to_vec());
    round_trip(&fused, &c);
    // Partly overlapping views: one flat range.
    let overlap = checkpoint(
        &state_dict(&[
            entry("a", "0", 8, 0, &[6], &[1]),
            entry("b", "0", 8, 2, &[6], &[1]),
        ]),
        &[("0", s.clone())],
    );
    let (c, _) = parse(&overlap).unwrap();
    assert_eq!(c.tensors.len(), 1);
    assert_eq!(c.tensors[0].origin, Origin::Storage("0".into()));
    assert_eq!(view_bytes(&overlap, &c, "b"), s[8..32].to_vec());
    round_trip(&overlap, &c);
}

#[test]
fn non_contiguous_views_are_gathered() {
    let s = floats(6, 0.0);
    let file = checkpoint(
        &state_dict(&[entry("t", "0", 6, 0, &[3, 2], &[1, 3])]),
        &[("0", s.clone())],
    );
    let (c, info) = parse(&file).unwrap();
    assert_eq!(info.non_contiguous, 1);
    assert!(c.notes.iter().any(|n| n.contains("non-contiguous")));
    let want: Vec<u8> = [0, 3, 1, 4, 2, 5]
        .iter()
        .flat_map(|&i| (i as f32).to_le_bytes())
        .collect();
    assert_eq!(view_bytes(&file, &c, "t"), want);
    round_trip(&file, &c);
}

#[test]
fn a_pickle_that_would_run_a_command_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let command = format!("touch {}", marker.display());
    for module in ["posix", "os", "subprocess"] {
        let mut w = Writer::default();
        w.proto(2)
            .global(module, "system")
            .str(&command)
            .op(0x85)
            .op(b'R')
            .op(b'.');
        let file = checkpoint(&w.out, &[]);
        let err = parse(&file).unwrap_err();
        assert!(
            err.to_string().contains(&format!("{module}.system")),
            "{err}"
        );
        assert!(!marker.exists(), "the command ran");
    }
}

#[test]
fn hostile_checkpoints_are_refused() {
    let s = floats(4, 0.0);
    type Case<'a> = (Vec<u8>, Vec<(&'a str, Vec<u8>)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            state_dict(&[entry("a", "0", 4, 0, &[4], &[1])]),
            vec![],
            "missing",
        ),
        (
            state_dict(&[entry("a", "0", 5, 0, &[4], &[1])]),
            vec![("0", s.clone())],
            "do not fill",
        ),
        (
            state_dict(&[entry("a", "0", 4, 2, &[4], &[1])]),
            vec![("0", s.clone())],
            "ends at element",
        ),
        (
            state_dict(&[entry("a", "0", 4, 0, &[u64::MAX / 2, 4], &[4, 1])]),
            vec![("0", s.clone())],
            "overflows",
        ),
        (
            state_dict(&[entry("a", "../x", 4, 0, &[4], &[1])]),
            vec![],
            "plain name",
        ),
        (b"\x80\x02]q\x00h\x00a.".to_vec(), vec![], "cycle"),
    ];
    for (pkl, storages, needle) in cases {
        let err = parse(&checkpoint(&pkl, &storages)).unwrap_err().to_string();
        assert!(err.contains(needle), "wanted {needle:?}, got {err}");
    }
    // 100 nested lists.
    let mut deep = b"\x80\x02".to_vec();
    deep.extend(std::iter::repeat_n(b']', 100));
    deep.extend(std::iter::repeat_n(b'a', 99));
    deep.push(b'.');
    assert!(
        parse(&checkpoint(&deep, &[]))
            .unwrap_err()
            .to_string()
            .contains("nested deeper")
    );
    // Each level a list holding a tuple of the previous level twice: 2^30 paths, 61 containers,
    // walked once each.
    let mut laughs = b"\x80\x02]".to_vec();
    for _ in 0..30 {
        laughs.extend_from_slice(b"q\x000]h\x00h\x00\x86a"); // memo prev, pop it, [ (prev, prev) ]
    }
    laughs.push(b'.');
    let (c, info) = parse(&checkpoint(&laughs, &[])).unwrap();
    assert!(c.tensors.is_empty() && info.tensors == 0);
    let mut two_names = state_dict(&[entry("a", "0", 4, 0, &[4], &[1])]);
    two_names.truncate(two_names.len() - 2);
    let dup = [
        two_names.clone(),
        state_dict(&[entry("a", "0", 4, 0, &[4], &[1])])[27..].to_vec(),
    ]
    .concat();
    let _ = parse(&checkpoint(&dup, &[("0", s.clone())])); // malformed splice: must not panic
    assert!(
        parse(&zip::write_archive(&[
            ("x/data.pkl", b"\x80\x02}."),
            ("y/z", b"")
        ]))
        .unwrap_err()
        .to_string()
        .contains("outside the archive")
    );
}

#[test]
fn legacy_checkpoints_are_refused_with_a_conversion_hint() {
    let legacy = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";
    let err = crate::detect::parse(legacy, Some("pth"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("legacy") && err.contains("torch.save(torch.load("),
        "{err}"
    );
}

#[test]
fn broadcast_views_larger_than_the_file_are_refused() {
    let s = floats(1, 0.0);
    let bomb = checkpoint(
        &state_dict(&[entry("x", "0", 1, 0, &[1 << 20, 1 << 20], &[0, 0])]),
        &[("0", s.clone())],
    );
    assert!(
        parse(&bomb)
            .unwrap_err()
            .to_string()
            .contains("larger than")
    );
    // A small expanded view is fine and materializes by repetition.
    let ok = checkpoint(
        &state_dict(&[entry("x", "0", 1, 0, &[2, 3], &[0, 0])]),
        &[("0", s.clone())],
    );
    let (c, _) = parse(&ok).unwrap();
    assert_eq!(view_bytes(&ok, &c, "x"), s.repeat(6));
}
