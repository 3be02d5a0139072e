"""Every tensor put from Python comes back bit for bit, with its dtype, shape and name, whatever
the dtype, shape, layout or byte order, with or without ml_dtypes."""

import os
import subprocess
import sys

import numpy as np
import pytest

import neurstore
from conftest import ALL_DTYPES, NEEDS_ML_DTYPES, SUB_BYTE, as_bytes, every_dtype, write_safetensors


def check_same(got, want):
    assert list(got) == list(want)
    for name in want:
        assert as_bytes(got[name]) == as_bytes(want[name]), name


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_every_dtype_round_trips(store, dtype):
    tensors = every_dtype()
    name = f"t_{dtype.lower()}"
    one = neurstore.TensorDict({name: tensors[name]}, dtypes=tensors.dtypes, shapes=tensors.shapes)
    store.put("m", one)
    got = store.get("m")
    assert got.dtypes == {name: dtype}
    assert got.shapes == {name: (4, 6)}
    assert as_bytes(got[name]) == as_bytes(one[name])
    info = store.info("m")
    assert [(t["name"], t["dtype"], t["shape"]) for t in info["tensors"]] == [(name, dtype, [4, 6])]


def test_numpy_types_come_back_as_themselves(store):
    pytest.importorskip("ml_dtypes")
    tensors = every_dtype()
    store.put("m", tensors)
    got = store.get("m")
    for name, array in got.items():
        dtype = got.dtypes[name]
        if dtype in SUB_BYTE:
            assert array.dtype == np.uint8 and array.ndim == 1
        else:
            assert neurstore._dtypes.safetensors_name(array.dtype) == dtype
            assert array.shape == (4, 6)
    check_same(got, tensors)


def test_ml_dtypes_types_are_accepted_directly(store):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    values = np.array([0.0, -0.0, 1.5, -2.25, np.inf, -np.inf, np.nan, 1e-30], dtype=np.float32)
    tensors = {
        "bf16": values.astype(ml_dtypes.bfloat16),
        "e4m3": values[:4].astype(ml_dtypes.float8_e4m3fn),
        "e5m2": values.astype(ml_dtypes.float8_e5m2),
    }
    store.put("m", tensors)
    got = store.get("m")
    assert got.dtypes == {"bf16": "BF16", "e4m3": "F8_E4M3", "e5m2": "F8_E5M2"}
    for name in tensors:
        assert got[name].dtype == tensors[name].dtype
    check_same(got, tensors)


def test_without_ml_dtypes_raw_views_carry_the_true_dtype(store, no_ml_dtypes):
    tensors = every_dtype()
    store.put("m", tensors)
    got = store.get("m")
    raw = {"BF16": np.uint16, "F8_E4M3": np.uint8, "F8_E5M2": np.uint8, "F8_E8M0": np.uint8}
    for name, array in got.items():
        dtype = got.dtypes[name]
        if dtype in NEEDS_ML_DTYPES:
            assert array.dtype == raw[dtype] and array.shape == (4, 6)
    check_same(got, tensors)
    # put(get()) keeps every dtype: the copy is stored as the very same tensors.
    before = store.stats()["unique_tensors"]
    report = store.put("copy", got)
    assert report["stored_bytes_added"] == 0
    assert store.stats()["unique_tensors"] == before
    assert [t["dtype"] for t in store.info("copy")["tensors"]] == [t["dtype"] for t in store.info("m")["tensors"]]


def test_get_then_put_keeps_every_dtype_with_ml_dtypes(store):
    pytest.importorskip("ml_dtypes")
    store.put("m", every_dtype())
    report = store.put("copy", store.get("m"))
    assert report["stored_bytes_added"] == 0
    assert report["deduplicated_objects"] == report["files"] + report["tensors"]


def test_special_float_values_survive(store):
    values = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 5e-324, -1e308, 1.0], dtype=np.float64)
    with np.errstate(all="ignore"):  # overflow to inf on the narrower types is intended
        tensors = {
            "f64": values,
            "f32": values.astype(np.float32),
            "f16": values.astype(np.float16),
            "c64": (values + 1j * values[::-1]).astype(np.complex64),
        }
    store.put("m", tensors)
    check_same(store.get("m"), tensors)


def test_shapes_scalars_and_empty_tensors(store):
    tensors = {
        "scalar": np.float32(3.5),
        "zero_d": np.array(7, dtype=np.int64),
        "empty": np.zeros((0, 5), dtype=np.float32),
        "empty_1d": np.zeros(0, dtype=np.uint8),
        "deep": np.arange(2 * 3 * 4 * 5, dtype=np.int16).reshape(2, 3, 4, 5),
    }
    store.put("m", tensors)
    got = store.get("m")
    assert got["scalar"].shape == () and got["scalar"] == np.float32(3.5)
    assert got["zero_d"].shape == () and got["zero_d"] == 7
    assert got["empty"].shape == (0, 5) and got["empty"].dtype == np.float32
    assert got["empty_1d"].shape == (0,)
    np.testing.assert_array_equal(got["deep"], tensors["deep"])


def test_non_contiguous_and_big_endian_inputs(store):
    base = np.arange(64, dtype=np.float32).reshape(8, 8)
    tensors = {
        "transposed": base.T,
        "strided": base[::2, 1::3],
        "fortran": np.asfortranarray(base),
        "big_endian": base.astype(">f4"),
        "big_endian_int": np.arange(10, dtype=">i8"),
    }
    store.put("m", tensors)
    got = store.get("m")
    for name, want in tensors.items():
        np.testing.assert_array_equal(got[name], want)
        assert got[name].flags.c_contiguous
    assert got["big_endian"].dtype == np.dtype("<f4")
    assert store.info("m")["tensors"][3]["dtype"] == "F32"


def test_tensor_order_and_names_are_kept(store):
    names = ["z.weight", "a.bias", "m/1", "ünïcode", "x" * 200]
    tensors = {n: np.full(3, i, dtype=np.int32) for i, n in enumerate(names)}
    store.put("m", tensors)
    assert list(store.get("m")) == names


def test_arrays_are_read_only_and_zero_copy_where_stored_raw(store):
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, size=1 << 16, dtype=np.uint8)  # incompressible: stored raw
    store.put("m", {"noise": noise, "zeros": np.zeros(1 << 14, dtype=np.float32)})
    codecs = {t["name"]: t["codec"] for t in store.info("m")["tensors"]}
    assert codecs["noise"] == "raw"
    first, second = store.get("m"), store.get("m")
    for got in (first, second):
        for array in got.values():
            assert not array.flags.writeable
            with pytest.raises(ValueError):
                array[0] = 1
    # Two reads of a raw tensor view the same mapped bytes: nothing was copied.
    assert np.shares_memory(first["noise"], second["noise"])
    assert not first["noise"].flags.owndata
    np.testing.assert_array_equal(first["noise"], noise)
    np.testing.assert_array_equal(first["zeros"].copy() + 1, np.ones(1 << 14, dtype=np.float32))


def test_arrays_outlive_close_delete_and_gc(tmp_path):
    rng = np.random.default_rng(2)
    noise = rng.integers(0, 256, size=1 << 16, dtype=np.uint8)
    with neurstore.open(tmp_path / "s") as store:
        store.put("m", {"noise": noise})
        got = store.get("m")
        store.delete("m")
        report = store.gc()
        assert report["packs_removed"] >= 1
    np.testing.assert_array_equal(got["noise"], noise)


def test_put_a_safetensors_file_and_export_it_byte_for_byte(store, tmp_path):
    tensors = {
        "w": np.arange(20, dtype=np.float32).reshape(4, 5),
        "b": np.ones(5, dtype=np.float16),
        "ids": np.arange(7, dtype=np.int64),
    }
    src = tmp_path / "model.safetensors"
    write_safetensors(src, tensors, metadata={"format": "np"})
    report = store.put("file", src)
    assert report["files"] == 1 and report["tensors"] == 3
    check_same(store.get("file"), tensors)
    out = tmp_path / "out.safetensors"
    store.export("file", out)
    assert out.read_bytes() == src.read_bytes()
    store.put("file-str-path", str(src))
    assert store.info("file-str-path")["source_format"] == "safetensors"


def test_put_a_model_directory_and_export_it(store, tmp_path):
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    write_safetensors(model / "model-00001-of-00002.safetensors", {"a": np.ones(4, dtype=np.float32)})
    write_safetensors(model / "model-00002-of-00002.safetensors", {"b": np.zeros(3, dtype=np.int8)})
    (model / "config.json").write_text('{"hidden_size": 4}')
    (model / "sub" / "tokenizer.txt").write_text("hello")
    store.put("dir", model)
    got = store.get("dir")
    assert sorted(got) == ["a", "b"]
    out = tmp_path / "restored"
    store.export("dir", out)
    for root, _dirs, files in os.walk(model):
        for f in files:
            path = os.path.join(root, f)
            rel = os.path.relpath(path, model)
            with open(path, "rb") as a, open(out / rel, "rb") as b:
                assert a.read() == b.read(), rel
    only = store.get("dir", file="model-00002-of-00002.safetensors")
    assert list(only) == ["b"]


def test_repeated_tensor_names_across_files_need_file(store, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    write_safetensors(model / "one.safetensors", {"w": np.ones(2, dtype=np.float32)})
    write_safetensors(model / "two.safetensors", {"w": np.zeros(2, dtype=np.float32)})
    store.put("dir", model)
    with pytest.raises(neurstore.InvalidInput, match="pass file="):
        store.get("dir")
    np.testing.assert_array_equal(store.get("dir", file="two.safetensors")["w"], np.zeros(2))
    with pytest.raises(neurstore.NotFound):
        store.get("dir", file="three.safetensors")


def test_matches_safetensors_numpy(store, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    tensors = {"w": np.random.default_rng(3).standard_normal((16, 16)).astype(np.float32)}
    src = tmp_path / "m.safetensors"
    st.save_file(tensors, str(src))
    store.put("m", src)
    theirs = st.load_file(str(src))
    ours = store.get("m")
    check_same(ours, theirs)
    out = tmp_path / "out.safetensors"
    store.export("m", out)
    check_same(st.load_file(str(out)), theirs)


def test_import_without_ml_dtypes_installed(tmp_path):
    """The package imports and falls back to raw views when ml_dtypes cannot be imported."""
    script = f"""
import sys
sys.modules["ml_dtypes"] = None  # any import of it now fails
import numpy as np
import neurstore
with neurstore.open({str(tmp_path / "s")!r}) as store:
    bits = np.array([0x3F80, 0xC000], dtype=np.uint16)  # bfloat16 1.0, -2.0
    store.put("m", neurstore.TensorDict({{"w": bits}}, dtypes={{"w": "BF16"}}))
    got = store.get("m")
    assert got["w"].dtype == np.uint16, got["w"].dtype
    assert got.dtypes == {{"w": "BF16"}}
    assert got["w"].tolist() == [0x3F80, 0xC000]
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_file_metadata_is_written_to_the_exported_file(store, tmp_path):
    st = pytest.importorskip("safetensors")
    store.put("m", {"w": np.ones(3, dtype=np.float32)}, file_metadata={"format": "pt"})
    out = tmp_path / "m.safetensors"
    store.export("m", out)
    with st.safe_open(str(out), framework="np") as f:
        assert f.metadata() == {"format": "pt"}
    with pytest.raises(neurstore.InvalidInput, match="str to str"):
        store.put("n", {"w": np.ones(3)}, file_metadata={"format": 1})
    with pytest.raises(neurstore.InvalidInput, match="keeps its own"):
        store.put("n", out, file_metadata={"format": "pt"})
