//! Invariant: a new tensor is stored as a delta against the closest stored tensor only where that is smaller, and every model comes back bit-exact (lossless) or with every float element within its bound (bounded), deterministically.

mod family;

use std::collections::BTreeMap;

use family::{
    Fixture, Tensor, bounded, family, fine_tune, is_delta, is_float, lossless, options,
    plant_specials, tolerance,
};
use neurstore::{BaseChoice, ErrorKind, Mode, NoProgress, PutOptions};
use neurstore_storage::record::{PACK_HEADER_LEN, RecordHeader, RecordType};

const ABS: Mode = Mode::Absolute(1e-3);
const REL: Mode = Mode::Relative(1e-2);

/// Float tensors big enough that a delta against a 1% fine-tune's base always pays.
fn large(t: &Tensor) -> bool {
    is_float(t.dtype) && t.shape.iter().product::<u64>() >= 1024
}

#[test]
fn lossless_fine_tune_is_stored_as_deltas_against_its_base() {
    let f = Fixture::new();
    let base = family(1);
    let ft = fine_tune(&base, 2, 0.01);
    f.put("base", &base, &lossless());
    let report = f.put("ft", &ft, &lossless());
    assert!(report.delta_tensors > 0, "{report:?}");
    assert_eq!(report.base_model.as_deref(), Some("base"));
    assert_eq!(report.max_error, 0.0);

    let info = f.store.info("ft").unwrap();
    assert_eq!(info.base_model.as_deref(), Some("base"));
    assert_eq!(info.mode, "lossless");
    for (t, want) in info.tensors.iter().zip(&ft) {
        assert_eq!(t.name, want.name);
        let expected_base = format!("base/{}", t.name);
        match t.codec {
            "delta" => assert_eq!(t.base.as_deref(), Some(expected_base.as_str()), "{t:?}"),
            _ => assert_eq!(t.base, None, "{t:?}"),
        }
        if large(want) {
            assert_eq!(t.codec, "delta", "{t:?}");
        }
        assert!(t.tolerance.is_none() && t.max_error == 0.0, "{t:?}");
    }
    // The unchanged integer tensor is shared, not re-stored.
    let ids = info
        .tensors
        .iter()
        .find(|t| t.name == "position_ids")
        .unwrap();
    assert!(ids.shared && ids.codec != "delta", "{ids:?}");
    for t in report.tensor_reports.iter().filter(|t| t.codec == "delta") {
        assert_eq!(t.base, Some(format!("base/{}", t.name)), "{t:?}");
    }

    f.assert_model("ft", &ft, Mode::Lossless);
    f.assert_model("base", &base, Mode::Lossless);
    f.assert_model_fresh("ft", &ft, Mode::Lossless);
    f.assert_clean();

    // The same fine-tune stored standalone (into another store holding the same base) costs more.
    let g = Fixture::new();
    g.put("base", &base, &lossless());
    let standalone = g.put("ft", &ft, &options(Mode::Lossless, BaseChoice::None));
    assert_eq!(standalone.delta_tensors, 0);
    assert!(
        report.stored_bytes_added < standalone.stored_bytes_added,
        "delta {} vs standalone {}",
        report.stored_bytes_added,
        standalone.stored_bytes_added
    );
    assert!(
        f.store.info("ft").unwrap().exclusive_bytes < g.store.info("ft").unwrap().exclusive_bytes
    );
    assert!(f.pack_files_len() < g.pack_files_len());
}

/// Checks the catalog and the report agree with the bound of every tensor.
fn assert_bounds_recorded(f: &Fixture, name: &str, tensors: &[Tensor], mode: Mode) {
    let info = f.store.info(name).unwrap();
    assert_eq!(info.mode, mode.label());
    for (t, original) in info.tensors.iter().zip(tensors) {
        assert_eq!(t.name, original.name);
        match tolerance(mode, original) {
            Some(tol) => {
                assert!(t.max_error <= tol, "{name}/{}: {t:?} over {tol}", t.name);
                if let Some(recorded) = t.tolerance {
                    assert!(
                        (recorded - tol).abs() <= tol * 1e-12,
                        "{name}/{}: recorded bound {recorded}, expected {tol}",
                        t.name
                    );
                }
            }
            None => {
                assert!(t.tolerance.is_none() && t.max_error == 0.0, "{name}: {t:?}");
                assert_ne!(t.codec, "quantized", "{name}: {t:?}");
            }
        }
    }
}

fn assert_report_bounds(report: &neurstore::PutReport, tensors: &[Tensor], mode: Mode) {
    let mut largest = 0.0f64;
    for (r, t) in report.tensor_reports.iter().zip(tensors) {
        assert_eq!(r.name, t.name);
        let tol = tolerance(mode, t).unwrap_or(0.0);
        assert!(r.max_error <= tol, "{r:?} over {tol}");
        largest = largest.max(tol);
    }
    assert!(report.max_error <= largest, "{report:?}");
}

#[test]
fn bounded_models_stay_within_the_bound_and_keep_specials_exact() {
    for mode in [ABS, REL] {
        let f = Fixture::new();
        let mut base = family(3);
        plant_specials(&mut base, 30);
        let mut ft = fine_tune(&base, 4, 0.01);
        plant_specials(&mut ft, 40);

        let rb = f.put("base", &base, &bounded(mode));
        assert_eq!(rb.mode, mode.label());
        assert_report_bounds(&rb, &base, mode);
        let rf = f.put("ft", &ft, &bounded(mode));
        assert!(rf.delta_tensors > 0, "{mode:?}: {rf:?}");
        assert_report_bounds(&rf, &ft, mode);
        assert!(rf.max_error > 0.0, "{mode:?}: nothing was quantized");

        for t in ft.iter().filter(|t| large(t)) {
            assert!(is_delta(&f.store, "ft", t.name), "{mode:?}: {}", t.name);
        }
        assert_bounds_recorded(&f, "base", &base, mode);
        assert_bounds_recorded(&f, "ft", &ft, mode);
        for (name, tensors) in [("base", &base), ("ft", &ft)] {
            f.assert_model(name, tensors, mode);
            f.assert_model_fresh(name, tensors, mode);
        }
        f.assert_clean();
    }
}

#[test]
fn bounded_chain_errors_do_not_accumulate() {
    for mode in [ABS, REL] {
        let f = Fixture::new();
        let base = family(5);
        let ft1 = fine_tune(&base, 6, 0.01);
        let ft2 = fine_tune(&ft1, 7, 0.01);
        f.put("base", &base, &bounded(mode));
        let r1 = f.put(
            "ft1",
            &ft1,
            &options(mode, BaseChoice::Model("base".into())),
        );
        let r2 = f.put("ft2", &ft2, &options(mode, BaseChoice::Model("ft1".into())));
        assert!(r1.delta_tensors > 0 && r2.delta_tensors > 0, "{mode:?}");
        assert_eq!(
            f.store.info("ft2").unwrap().base_model.as_deref(),
            Some("ft1")
        );
        // ft2's deltas sit on ft1's, which sit on base's: a chain of two.
        for t in ft2.iter().filter(|t| large(t)) {
            let info = f.store.info("ft2").unwrap();
            let ti = info.tensors.iter().find(|i| i.name == t.name).unwrap();
            assert_eq!(ti.base, Some(format!("ft1/{}", t.name)), "{mode:?}");
            assert!(is_delta(&f.store, "ft1", t.name), "{mode:?}: {}", t.name);
        }
        for (name, tensors) in [("base", &base), ("ft1", &ft1), ("ft2", &ft2)] {
            assert_bounds_recorded(&f, name, tensors, mode);
            f.assert_model(name, tensors, mode);
            f.assert_model_fresh(name, tensors, mode);
        }
        f.assert_clean();
    }
}

/// What `info` says of each tensor that must not depend on when or where it was stored.
fn layout(f: &Fixture, model: &str) -> Vec<String> {
    let info = f.store.info(model).unwrap();
    info.tensors
        .iter()
        .map(|t| {
            format!(
                "{} {} {:?} {} {:?} {}",
                t.name, t.codec, t.base, t.stored_bytes, t.tolerance, t.max_error
            )
        })
        .collect()
}

#[test]
fn same_puts_give_identical_stores() {
    let base = family(8);
    let ft1 = fine_tune(&base, 9, 0.01);
    let ft2 = fine_tune(&base, 10, 0.02);
    let ft3 = fine_tune(&ft1, 11, 0.01);
    let other = family(12);
    let puts: Vec<(&str, &Vec<Tensor>, PutOptions)> = vec![
        ("base", &base, lossless()),
        ("ft1", &ft1, lossless()),
        ("ft2", &ft2, bounded(ABS)),
        ("ft3", &ft3, options(REL, BaseChoice::Model("ft1".into()))),
        ("other", &other, lossless()),
    ];
    let stores: Vec<Fixture> = (0..2).map(|_| Fixture::new()).collect();
    let mut added: Vec<Vec<u64>> = Vec::new();
    for f in &stores {
        added.push(
            puts.iter()
                .map(|(name, tensors, opts)| f.put(name, tensors, opts).stored_bytes_added)
                .collect(),
        );
    }
    assert_eq!(added[0], added[1]);
    for (name, _, _) in &puts {
        assert_eq!(layout(&stores[0], name), layout(&stores[1], name), "{name}");
        assert_eq!(
            stores[0].store.info(name).unwrap().base_model,
            stores[1].store.info(name).unwrap().base_model,
            "{name}"
        );
    }
    let packs: Vec<BTreeMap<String, Vec<u8>>> = stores
        .iter()
        .map(|f| {
            f.pack_files()
                .into_iter()
                .map(|p| {
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    (name, object_records(&std::fs::read(&p).unwrap()))
                })
                .collect()
        })
        .collect();
    assert!(!packs[0].is_empty());
    assert_eq!(
        packs[0].keys().collect::<Vec<_>>(),
        packs[1].keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &packs[0] {
        assert!(*bytes == packs[1][name], "pack {name} differs");
    }
}

/// The object records of a pack, in order (the pack header holds the store's random id, and
/// model records their creation time).
fn object_records(pack: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = PACK_HEADER_LEN;
    while let Some(header) = RecordHeader::decode(&pack[at as usize..]) {
        let end = header.end(at).unwrap();
        if header.kind == RecordType::Object {
            out.extend_from_slice(&pack[at as usize..end as usize]);
        }
        at = end;
    }
    assert_eq!(at, pack.len() as u64, "records tile the pack");
    out
}

#[test]
fn base_choice_pairs_by_name_searches_or_stays_standalone() {
    let f = Fixture::new();
    let a = family(20);
    let b = family(21);
    f.put("B", &b, &lossless());
    // A has the same names and shapes, and is put later: the newest is not preferred.
    f.put("A", &a, &lossless());
    let fts: Vec<Vec<Tensor>> = (0..3).map(|i| fine_tune(&b, 22 + i, 0.01)).collect();

    let named = f.put(
        "ft-named",
        &fts[0],
        &options(Mode::Lossless, BaseChoice::Model("B".into())),
    );
    let auto = f.put(
        "ft-auto",
        &fts[1],
        &options(Mode::Lossless, BaseChoice::Auto),
    );
    for (name, report) in [("ft-named", &named), ("ft-auto", &auto)] {
        assert!(report.delta_tensors > 0, "{name}: {report:?}");
        assert_eq!(report.base_model.as_deref(), Some("B"), "{name}");
        let info = f.store.info(name).unwrap();
        assert_eq!(info.base_model.as_deref(), Some("B"), "{name}");
        for t in &info.tensors {
            if let Some(base) = &t.base {
                assert_eq!(base, &format!("B/{}", t.name), "{name}");
            }
        }
        for t in fts[0].iter().filter(|t| large(t)) {
            assert!(is_delta(&f.store, name, t.name), "{name}/{}", t.name);
        }
    }
    // Only the float tensors were searched for; pairing by name needs no search.
    assert_eq!(named.tensors_searched, 0);
    assert!(auto.tensors_searched > 0);

    let none = f.put(
        "ft-none",
        &fts[2],
        &options(Mode::Lossless, BaseChoice::None),
    );
    assert_eq!(none.delta_tensors, 0);
    assert_eq!(none.tensors_searched, 0);
    assert_eq!(none.base_model, None);
    let info = f.store.info("ft-none").unwrap();
    assert_eq!(info.base_model, None);
    assert!(
        info.tensors
            .iter()
            .all(|t| t.base.is_none() && t.codec != "delta"),
        "{info:?}"
    );

    // Naming a model that does not exist is an error that writes nothing.
    let before = f.pack_files_len();
    let path = f.write("ft-missing", &fts[2]);
    let err = f
        .store
        .put(
            "ft-missing",
            &path,
            &options(Mode::Lossless, BaseChoice::Model("nope".into())),
            &NoProgress,
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(f.pack_files_len(), before);

    for (name, ft) in ["ft-named", "ft-auto", "ft-none"].iter().zip(&fts) {
        f.assert_model(name, ft, Mode::Lossless);
    }
    f.assert_clean();
}

#[test]
fn unrelated_models_cost_no_more_with_search_than_without() {
    for mode in [Mode::Lossless, ABS] {
        let with_search = Fixture::new();
        let without = Fixture::new();
        let models: Vec<Vec<Tensor>> = (0..3).map(|i| family(30 + i)).collect();
        let (mut auto_bytes, mut none_bytes) = (0u64, 0u64);
        for (i, m) in models.iter().enumerate() {
            let name = format!("w{i}");
            auto_bytes += with_search
                .put(&name, m, &options(mode, BaseChoice::Auto))
                .stored_bytes_added;
            none_bytes += without
                .put(&name, m, &options(mode, BaseChoice::None))
                .stored_bytes_added;
        }
        assert!(
            auto_bytes as f64 <= none_bytes as f64 * 1.01,
            "{mode:?}: {auto_bytes} with search, {none_bytes} without"
        );
        assert!(
            with_search.pack_files_len() as f64 <= without.pack_files_len() as f64 * 1.01,
            "{mode:?}: pack bytes"
        );
        for (i, m) in models.iter().enumerate() {
            with_search.assert_model(&format!("w{i}"), m, mode);
        }
        with_search.assert_clean();
    }
}

#[test]
fn chains_never_exceed_max_chain_depth() {
    let base = family(40);
    let ft1 = fine_tune(&base, 41, 0.01);
    let ft2 = fine_tune(&ft1, 42, 0.01);
    for (depth, mode) in [(1, Mode::Lossless), (1, ABS), (2, Mode::Lossless)] {
        let f = Fixture::new();
        let opts = PutOptions {
            max_chain_depth: depth,
            ..bounded(mode)
        };
        f.put("base", &base, &opts);
        f.put("ft1", &ft1, &opts);
        let r2 = f.put("ft2", &ft2, &opts);
        assert!(r2.delta_tensors > 0, "depth {depth} {mode:?}");
        let info = f.store.info("ft2").unwrap();
        for t in info.tensors.iter().filter(|t| t.base.is_some()) {
            let base = t.base.as_deref().unwrap();
            let (model, tensor) = base.split_once('/').unwrap();
            let base_is_delta = is_delta(&f.store, model, tensor);
            if depth == 1 {
                assert!(
                    !base_is_delta,
                    "{mode:?}: ft2/{} sits on delta {base}",
                    t.name
                );
            } else if large(ft2.iter().find(|x| x.name == t.name).unwrap()) {
                // With room for a chain of two, the closer ft1 is chosen.
                assert_eq!(model, "ft1", "{t:?}");
                assert!(base_is_delta, "{t:?}");
            }
        }
        for (name, tensors) in [("base", &base), ("ft1", &ft1), ("ft2", &ft2)] {
            f.assert_model(name, tensors, mode);
        }
        f.assert_clean();
    }

    let f = Fixture::new();
    let path = f.write("base", &base);
    let zero = PutOptions {
        max_chain_depth: 0,
        ..lossless()
    };
    let err = f.store.put("base", &path, &zero, &NoProgress).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(f.model_names().is_empty());
}

#[test]
fn dry_run_writes_nothing_and_predicts_the_put() {
    for mode in [Mode::Lossless, ABS] {
        let f = Fixture::new();
        let base = family(50);
        let ft = fine_tune(&base, 51, 0.01);
        f.put("base", &base, &bounded(mode));
        let packs_before = f.pack_files_len();
        let stats_before = f.store.stats().unwrap();

        let dry = PutOptions {
            dry_run: true,
            ..bounded(mode)
        };
        let planned = f.put("ft", &ft, &dry);
        assert!(planned.dry_run);
        assert_eq!(f.pack_files_len(), packs_before, "{mode:?}");
        assert_eq!(f.model_names(), ["base"], "{mode:?}");
        let stats = f.store.stats().unwrap();
        assert_eq!(stats.pack_bytes, stats_before.pack_bytes);
        assert_eq!(stats.unique_tensors, stats_before.unique_tensors);
        let err = f.store.info("ft").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);

        assert!(planned.ratio > 1.0, "{mode:?}: {planned:?}");
        assert!(planned.delta_tensors > 0, "{mode:?}");
        assert_eq!(planned.base_model.as_deref(), Some("base"));
        assert_eq!(planned.tensor_reports.len(), ft.len());
        for (r, t) in planned.tensor_reports.iter().zip(&ft) {
            assert_eq!(r.name, t.name);
            let tol = tolerance(mode, t).unwrap_or(0.0);
            assert!(r.max_error <= tol, "{r:?}");
            if large(t) {
                assert_eq!(r.base, Some(format!("base/{}", t.name)), "{r:?}");
                let bits = t.dtype.bits() as f64;
                assert!(r.bits_per_element < bits, "{r:?}");
                assert!(r.codec == "delta" || r.codec == "quantized", "{r:?}");
            }
        }

        // The real put does exactly what the dry run said.
        let done = f.put("ft", &ft, &bounded(mode));
        assert!(!done.dry_run);
        assert_eq!(done.stored_bytes_added, planned.stored_bytes_added);
        assert_eq!(done.delta_tensors, planned.delta_tensors);
        for (d, p) in done.tensor_reports.iter().zip(&planned.tensor_reports) {
            assert_eq!(
                (d.codec, &d.base, d.stored_bytes, d.max_error),
                (p.codec, &p.base, p.stored_bytes, p.max_error),
                "{}",
                d.name
            );
        }
        assert!(f.pack_files_len() > packs_before);
        f.assert_model("ft", &ft, mode);
    }
}

#[test]
fn bounded_puts_reuse_exact_objects_but_lossless_puts_never_reuse_bounded_ones() {
    let base = family(60);
    let ft = fine_tune(&base, 61, 0.01);

    // Stored exactly first: a bounded put of the same content reuses it and stays exact.
    let f = Fixture::new();
    f.put("exact", &base, &lossless());
    let packs = f.pack_files_len();
    let again = f.put("bounded", &base, &bounded(ABS));
    assert_eq!(again.new_objects, 0, "{again:?}");
    assert_eq!(again.stored_bytes_added, 0);
    assert_eq!(again.max_error, 0.0);
    assert!(again.tensor_reports.iter().all(|t| t.deduplicated));
    // Only the new model's manifest record.
    assert!(f.pack_files_len() - packs < 1024);
    f.assert_model("bounded", &base, Mode::Lossless);

    // Stored under a bound first: a lossless put of the same content must not reuse it.
    let g = Fixture::new();
    g.put("bounded", &base, &bounded(ABS));
    g.put("bounded-ft", &ft, &bounded(ABS));
    assert!(
        g.store
            .info("bounded")
            .unwrap()
            .tensors
            .iter()
            .any(|t| t.max_error > 0.0)
    );
    for (name, tensors) in [("exact", &base), ("exact-ft", &ft)] {
        let report = g.put(name, tensors, &lossless());
        for (r, t) in report.tensor_reports.iter().zip(tensors.iter()) {
            if is_float(t.dtype) {
                assert!(!r.deduplicated, "{name}: {r:?}");
                assert_eq!(r.max_error, 0.0, "{name}: {r:?}");
            }
        }
        let info = g.store.info(name).unwrap();
        assert!(
            info.tensors
                .iter()
                .all(|t| t.tolerance.is_none() && t.max_error == 0.0)
        );
        g.assert_model(name, tensors, Mode::Lossless);
        g.assert_model_fresh(name, tensors, Mode::Lossless);
    }
    // The bounded models are still within their bound.
    g.assert_model("bounded", &base, ABS);
    g.assert_model("bounded-ft", &ft, ABS);
    g.assert_clean();
}
