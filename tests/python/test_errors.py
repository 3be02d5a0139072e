"""Bad inputs raise the package's exceptions, carrying the Rust message, and leave the store
unchanged."""

import numpy as np
import pytest

import neurstore


def test_hierarchy():
    for cls in (neurstore.NotFound, neurstore.InvalidInput, neurstore.Corrupt, neurstore.Locked):
        assert issubclass(cls, neurstore.NeurStoreError)
    assert issubclass(neurstore.NeurStoreError, Exception)
    assert neurstore.NotFound.__module__ == "neurstore"


def test_unknown_model(store):
    for call in (store.get, store.info, store.delete):
        with pytest.raises(neurstore.NotFound, match="no model named"):
            call("nope")
    with pytest.raises(neurstore.NotFound):
        store.export("nope", "/nonexistent/out.safetensors")


@pytest.mark.parametrize("name", ["", " padded", "a/b", "tab\there", "x" * 201])
def test_bad_model_names(store, name):
    with pytest.raises(neurstore.InvalidInput, match="invalid model name"):
        store.put(name, {"w": np.ones(2, dtype=np.float32)})
    assert store.list() == []


def test_name_taken(store):
    store.put("m", {"w": np.ones(2, dtype=np.float32)})
    with pytest.raises(neurstore.InvalidInput, match="m"):
        store.put("m", {"w": np.zeros(2, dtype=np.float32)})
    np.testing.assert_array_equal(store.get("m")["w"], np.ones(2))


@pytest.mark.parametrize(
    "value",
    [
        np.ones(2, dtype=np.complex128),
        np.ones(2, dtype=np.longdouble) if np.dtype(np.longdouble).itemsize > 8 else np.array(["s"]),
        np.array(["a", "b"]),
        np.array([object(), 1], dtype=object),
        np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]),
        np.array(["2020-01-01"], dtype="datetime64[D]"),
    ],
    ids=["complex128", "longdouble-or-str", "str", "object", "structured", "datetime"],
)
def test_unsupported_dtypes(store, value):
    with pytest.raises(neurstore.InvalidInput, match="no safetensors equivalent"):
        store.put("m", {"w": value})
    assert store.list() == []


@pytest.mark.parametrize(
    "tensors, match",
    [
        ([("w", np.ones(2))], "dict of numpy arrays"),
        (42, "dict of numpy arrays"),
        ({"w": [1.0, 2.0]}, "expected a numpy array"),
        ({"w": b"bytes"}, "expected a numpy array"),
        ({1: np.ones(2)}, "names must be str"),
    ],
)
def test_bad_tensor_containers(store, tensors, match):
    with pytest.raises(neurstore.InvalidInput, match=match):
        store.put("m", tensors)


def test_declared_dtype_must_match_the_bytes(store):
    bits = np.zeros(6, dtype=np.uint16)
    with pytest.raises(neurstore.InvalidInput, match="12 bytes given"):
        store.put("m", neurstore.TensorDict({"w": bits}, dtypes={"w": "F32"}))
    with pytest.raises(neurstore.InvalidInput, match="unknown dtype"):
        store.put("m", neurstore.TensorDict({"w": bits}, dtypes={"w": "F128"}))
    with pytest.raises(neurstore.InvalidInput, match="whole number of bytes"):
        store.put("m", neurstore.TensorDict({"w": bits}, dtypes={"w": "F4"}, shapes={"w": (3,)}))
    with pytest.raises(neurstore.InvalidInput, match="negative"):
        store.put("m", neurstore.TensorDict({"w": bits[:0]}, dtypes={"w": "F32"}, shapes={"w": (0, -1)}))
    store.put("m", neurstore.TensorDict({"w": bits}, dtypes={"w": "F32"}, shapes={"w": (3,)}))
    assert store.get("m")["w"].shape == (3,)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tolerance": -1.0}, "positive"),
        ({"tolerance": 0.0}, "positive"),
        ({"rel_tolerance": float("nan")}, "between 0 and 1"),
        ({"rel_tolerance": 2.0}, "between 0 and 1"),
        ({"tolerance": float("inf")}, "positive"),
        ({"tolerance": 1e300}, "largest magnitude"),
        ({"tolerance": "big"}, "must be a number"),
        ({"tolerance": 1e-3, "rel_tolerance": 1e-3}, "not both"),
        ({"base": ""}, "base must be"),
        ({"base": None}, "base must be"),
        ({"base": "no-such-model"}, "no model named"),
        ({"max_chain_depth": 0}, "positive integer"),
        ({"metadata": {"x": object()}}, "JSON"),
        ({"metadata": {1: "x"}}, "str keys"),
        ({"metadata": ["x"]}, "dict"),
    ],
)
def test_bad_options(store, kwargs, match):
    with pytest.raises(neurstore.NeurStoreError, match=match):
        store.put("m", {"w": np.ones(4, dtype=np.float32)}, **kwargs)
    assert store.list() == []


def test_bad_files(store, tmp_path):
    with pytest.raises(neurstore.NotFound):
        store.put("m", tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(neurstore.InvalidInput, match="not a valid safetensors file"):
        store.put("m", bad)
    truncated = tmp_path / "short.safetensors"
    truncated.write_bytes(b"\x01\x02")
    with pytest.raises(neurstore.InvalidInput):
        store.put("m", truncated)
    assert store.list() == []


def test_corrupt_pack_is_reported(tmp_path):
    path = tmp_path / "s"
    noise = np.random.default_rng(0).integers(0, 256, size=1 << 14, dtype=np.uint8)
    with neurstore.open(path) as store:
        store.put("m", {"noise": noise})
    pack = next((path / "packs").glob("*.pack"))
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    with neurstore.open(path) as store:
        with pytest.raises(neurstore.Corrupt, match="checksum"):
            store.get("m")
        assert store.verify()["problems"]


def test_not_a_store(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file.txt").write_text("x")
    with pytest.raises(neurstore.NeurStoreError):
        neurstore.open(tmp_path / "full")
