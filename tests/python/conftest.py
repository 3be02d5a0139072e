"""Shared fixtures of the Python package's tests: a fresh store, tensors of every dtype, and a
switch that hides ml_dtypes."""

import json
import struct

import numpy as np
import pytest

import neurstore
from neurstore import _dtypes

ALL_DTYPES = list(_dtypes.BITS)
SUB_BYTE = ["F4", "F6_E2M3", "F6_E3M2"]
NEEDS_ML_DTYPES = ["BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0"]


@pytest.fixture
def store(tmp_path):
    with neurstore.open(tmp_path / "store") as s:
        yield s


@pytest.fixture
def no_ml_dtypes(monkeypatch):
    """Behave as if ml_dtypes were not installed."""
    monkeypatch.setattr(_dtypes, "ml_dtypes", None)


def raw_bytes(dtype, shape, seed=0):
    """Random bytes for a tensor of `dtype` and `shape` (every bit pattern, NaNs included)."""
    n = _dtypes.byte_len(dtype, shape)
    assert n is not None
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=n, dtype=np.uint8)
    if dtype == "BOOL":
        data &= 1
    return data


def every_dtype(seed=0):
    """A TensorDict with one tensor of every safetensors dtype, made from random bytes.

    Types numpy has come as arrays of that type; the others as raw bytes with their dtype and
    shape declared, which works with or without ml_dtypes.
    """
    out = neurstore.TensorDict()
    for i, dtype in enumerate(ALL_DTYPES):
        shape = (4, 6)
        data = raw_bytes(dtype, shape, seed + i)
        np_dtype = _dtypes.numpy_dtype(dtype)
        name = f"t_{dtype.lower()}"
        if np_dtype is not None and _dtypes.is_exact(dtype, np_dtype):
            out[name] = data.view(np_dtype).reshape(shape)
        else:
            out[name] = data
            out.dtypes[name] = dtype
            out.shapes[name] = shape
    return out


def as_bytes(array):
    return np.ascontiguousarray(array).tobytes()


def write_safetensors(path, tensors, metadata=None):
    """A minimal safetensors writer (numpy dtypes only), independent of the package."""
    names = {v: k for k, v in _dtypes._NUMPY.items()}
    header = {}
    offset = 0
    blobs = []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {
            "dtype": names[array.dtype.str],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in blobs:
            f.write(data)
