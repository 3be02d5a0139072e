"""The store's behaviour seen from Python: dedup across puts, bounded modes within their
tolerance, reports, metadata, deletion and collection, and the writer lock."""

import numpy as np
import pytest

import neurstore


def model(seed, n=3, size=(64, 64)):
    rng = np.random.default_rng(seed)
    return {f"layer{i}.weight": rng.standard_normal(size).astype(np.float32) for i in range(n)}


def test_identical_models_are_stored_once(store):
    first = store.put("a", model(0))
    assert first["new_objects"] == 4  # 3 tensors and the header
    again = store.put("b", model(0))
    assert again["stored_bytes_added"] == 0
    assert again["deduplicated_objects"] == 4
    stats = store.stats()
    assert stats["models"] == 2 and stats["tensors"] == 6 and stats["unique_tensors"] == 3


def test_shared_tensors_are_stored_once(store):
    a = model(0)
    store.put("a", a)
    b = dict(a)
    b["layer1.weight"] = np.ones((64, 64), dtype=np.float32)
    report = store.put("b", b)
    dedup = {t["name"]: t["deduplicated"] for t in report["tensor_reports"]}
    assert dedup == {"layer0.weight": True, "layer1.weight": False, "layer2.weight": True}
    assert store.stats()["unique_tensors"] == 4
    shared = {t["name"]: t["shared"] for t in store.info("b")["tensors"]}
    assert shared["layer0.weight"] and not shared["layer1.weight"]


def test_dedup_between_dicts_and_files(store, tmp_path):
    from conftest import write_safetensors

    tensors = model(5)
    write_safetensors(tmp_path / "m.safetensors", tensors)
    store.put("from-file", tmp_path / "m.safetensors")
    report = store.put("from-dict", tensors)
    assert all(t["deduplicated"] for t in report["tensor_reports"])


def fine_tune(base, scale, seed):
    rng = np.random.default_rng(seed)
    return {k: v + (scale * rng.standard_normal(v.shape)).astype(np.float32) for k, v in base.items()}


@pytest.mark.parametrize("tolerance", [1e-2, 1e-4])
def test_absolute_tolerance_bounds_every_weight(store, tolerance):
    base = model(1, size=(128, 128))
    store.put("base", base)
    tuned = fine_tune(base, 1e-3, 2)
    tuned["steps"] = np.arange(10, dtype=np.int64)
    tuned["nan"] = np.array([np.nan, np.inf, 1.0], dtype=np.float32)
    report = store.put("tuned", tuned, tolerance=tolerance)
    assert report["mode"].startswith("abs:")
    assert report["max_error"] <= tolerance
    assert report["stored_bytes_added"] < report["raw_bytes"]
    got = store.get("tuned")
    for name, want in tuned.items():
        if want.dtype == np.float32 and name != "nan":
            err = np.max(np.abs(got[name].astype(np.float64) - want.astype(np.float64)))
            assert err <= tolerance, name
    np.testing.assert_array_equal(got["steps"], tuned["steps"])
    assert np.isnan(got["nan"][0]) and got["nan"][1] == np.inf and got["nan"][2] == 1.0
    info = store.info("tuned")
    assert info["mode"] == report["mode"]
    assert all(t["max_error"] <= tolerance for t in info["tensors"])


def test_relative_tolerance_bounds_every_weight(store):
    base = model(3, size=(128, 128))
    store.put("base", base)
    tuned = fine_tune(base, 1e-3, 4)
    rel = 1e-3
    report = store.put("tuned", tuned, rel_tolerance=rel, base="base")
    assert report["mode"].startswith("rel:") and report["base_model"] == "base"
    got = store.get("tuned")
    for name, want in tuned.items():
        rms = np.sqrt(np.mean(want.astype(np.float64) ** 2))
        err = np.max(np.abs(got[name].astype(np.float64) - want))
        assert err <= rel * rms * (1 + 1e-6), name


def test_lossless_fine_tune_is_delta_coded_and_exact(store):
    base = model(6, size=(128, 128))
    store.put("base", base)
    tuned = {k: v.copy() for k, v in base.items()}
    tuned["layer0.weight"][:4] += 0.5
    report = store.put("tuned", tuned, base="base")
    assert report["max_error"] == 0.0
    got = store.get("tuned")
    for name in tuned:
        assert got[name].tobytes() == tuned[name].tobytes()


def test_dry_run_writes_nothing(store):
    report = store.put("m", model(7), dry_run=True)
    assert report["dry_run"] and report["tensors"] == 3
    assert store.list() == []
    with pytest.raises(neurstore.NotFound):
        store.get("m")


def test_base_none_stores_standalone(store):
    base = model(8)
    store.put("base", base)
    report = store.put("other", fine_tune(base, 1e-3, 9), base="none")
    assert report["delta_tensors"] == 0


def test_list_info_stats_verify_metadata(store):
    store.put("b", model(10), metadata={"task": "demo", "epoch": 3, "tags": ["x"]})
    store.put("a", model(11))
    assert [m["name"] for m in store.list()] == ["a", "b"]
    info = store.info("b")
    assert info["metadata"] == {"task": "demo", "epoch": 3, "tags": ["x"]}
    assert info["source_format"] == "safetensors" and info["files"][0]["path"] == "model.safetensors"
    assert {t["name"] for t in info["tensors"]} == set(model(10))
    stats = store.stats()
    assert stats["models"] == 2 and stats["tensor_bytes"] == 2 * 3 * 64 * 64 * 4
    assert stats["raw_bytes"] == stats["tensor_bytes"] + stats["other_bytes"] > stats["tensor_bytes"]
    assert set(stats) >= {"stored_bytes", "ratio", "by_kind", "reclaimable_bytes"}
    report = store.verify()
    assert report["problems"] == [] and report["models"] == 2


def test_delete_and_gc_return_space(store):
    store.put("keep", model(12))
    store.put("drop", model(13))
    removed = store.delete("drop")
    # Its three tensors; the header is the same as "keep"'s (same names, dtypes, shapes).
    assert removed == {"name": "drop", "objects_freed": 3}
    assert store.stats()["reclaimable_bytes"] > 0
    report = store.gc()
    assert report["pack_bytes_after"] < report["pack_bytes_before"]
    assert store.stats()["reclaimable_bytes"] == 0
    assert [m["name"] for m in store.list()] == ["keep"]
    assert store.verify()["problems"] == []
    np.testing.assert_array_equal(store.get("keep")["layer0.weight"], model(12)["layer0.weight"])


def test_context_manager_closes(tmp_path):
    with neurstore.open(tmp_path / "s") as store:
        store.put("m", model(14, n=1))
        assert not store.closed
    assert store.closed
    with pytest.raises(neurstore.InvalidInput, match="closed"):
        store.list()
    store.close()  # closing twice is harmless


def test_writer_lock_is_taken_at_first_write_and_released_on_close(tmp_path):
    path = tmp_path / "s"
    first = neurstore.open(path)
    second = neurstore.open(path)
    assert not first.holds_lock
    first.put("a", model(15, n=1))
    assert first.holds_lock
    # A second writer is refused while the first holds the lock; reading is fine.
    with pytest.raises(neurstore.Locked) as caught:
        second.put("b", model(16, n=1))
    assert isinstance(caught.value, neurstore.NeurStoreError)
    assert [m["name"] for m in second.list()] == ["a"]
    assert second.get("a")
    first.close()
    assert not first.holds_lock
    second.put("b", model(16, n=1))
    assert second.holds_lock
    assert [m["name"] for m in second.list()] == ["a", "b"]
    second.close()


def test_read_only_store(tmp_path):
    path = tmp_path / "s"
    with neurstore.open(path) as store:
        store.put("m", model(17, n=1))
    with neurstore.open(path, writable=False) as store:
        assert store.get("m")
        with pytest.raises(neurstore.InvalidInput, match="read-only"):
            store.put("n", model(18, n=1))
        with pytest.raises(neurstore.InvalidInput, match="read-only"):
            store.delete("m")
        assert store.put("n", model(18, n=1), dry_run=True)["dry_run"]
    with pytest.raises(neurstore.NotFound):
        neurstore.open(tmp_path / "missing", writable=False)
    with pytest.raises(neurstore.NotFound):
        neurstore.open(tmp_path / "missing2", create=False)
    assert not (tmp_path / "missing").exists()


def test_repr_and_path(tmp_path):
    with neurstore.open(tmp_path / "s") as store:
        assert store.path == tmp_path / "s"
        assert "writable" in repr(store)
    assert "closed" in repr(store)
    assert neurstore.__version__
