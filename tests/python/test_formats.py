"""Models in other formats from Python: a PyTorch checkpoint written by `export(format="pt")`
goes back in, is stored once with the safetensors model, reads back by name and byte for byte;
a lossy conversion raises unless forced; a hostile pickle fails the put and runs nothing."""

import struct
import zipfile

import numpy as np
import pytest

import neurstore


def _tensors():
    rng = np.random.default_rng(3)
    return {
        "layer.weight": rng.standard_normal((64, 32)).astype(np.float32),
        "layer.bias": rng.standard_normal(64).astype(np.float32),
    }


def test_pytorch_checkpoint_round_trips_and_dedups(store, tmp_path):
    tensors = _tensors()
    store.put("st", tensors)
    pt = tmp_path / "model.pt"
    report = store.export("st", pt, format="pt")
    assert report["converted_to"] == "PyTorch"
    again = store.put("pt", pt)
    assert again["tensors"] == 2
    assert all(t["deduplicated"] for t in again["tensor_reports"])
    assert store.info("pt")["files"][0]["kind"] == "pytorch"
    got = store.get("pt")
    for name, value in tensors.items():
        np.testing.assert_array_equal(got[name], value)
    back = tmp_path / "back.pt"
    store.export("pt", back)
    assert back.read_bytes() == pt.read_bytes()
    # By the extension: a safetensors copy of the checkpoint's tensors, nothing lost.
    out = tmp_path / "out.safetensors"
    assert store.export("pt", out)["converted_to"] == "safetensors"
    with pytest.raises(ValueError, match="unknown format"):
        store.export("pt", tmp_path / "x", format="onnx")


def test_lossy_conversion_needs_force(store, tmp_path):
    # A GGUF file: its metadata is lost in a conversion.
    name = b"w"
    header = b"GGUF" + struct.pack("<IQQ", 3, 1, 1)
    header += struct.pack("<Q", 20) + b"general.architecture" + struct.pack("<IQ", 8, 5) + b"llama"
    header += struct.pack("<Q", len(name)) + name + struct.pack("<IQIQ", 1, 4, 0, 0)
    header += b"\0" * (-len(header) % 32)
    path = tmp_path / "model.gguf"
    path.write_bytes(header + np.arange(4, dtype=np.float32).tobytes())
    store.put("g", path)
    with pytest.raises(neurstore.InvalidInput, match="lose information"):
        store.export("g", tmp_path / "g.safetensors")
    assert not (tmp_path / "g.safetensors").exists()
    report = store.export("g", tmp_path / "g.safetensors", force=True)
    assert report["losses"]
    store.export("g", tmp_path / "g.gguf")
    assert (tmp_path / "g.gguf").read_bytes() == path.read_bytes()


def test_a_pickle_that_would_run_a_command_is_refused(store, tmp_path):
    marker = tmp_path / "marker"
    command = f"touch {marker}".encode()
    pickle = b"\x80\x02cposix\nsystem\nX" + struct.pack("<I", len(command)) + command + b"\x85R."
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle)
        z.writestr("archive/version", "3\n")
    with pytest.raises(neurstore.InvalidInput, match="posix.system is not allowed"):
        store.put("evil", evil)
    assert not marker.exists()
    assert store.list() == []
