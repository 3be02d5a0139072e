"""PyTorch support, used only when torch is installed (it is never imported otherwise)."""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ._neurstore import InvalidInput

_PAIRS = [
    ("F64", "float64"),
    ("F32", "float32"),
    ("F16", "float16"),
    ("BF16", "bfloat16"),
    ("C64", "complex64"),
    ("I64", "int64"),
    ("I32", "int32"),
    ("I16", "int16"),
    ("I8", "int8"),
    ("U64", "uint64"),
    ("U32", "uint32"),
    ("U16", "uint16"),
    ("U8", "uint8"),
    ("BOOL", "bool"),
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
    ("F8_E8M0", "float8_e8m0fnu"),
]


def require() -> Any:
    """The torch module, or an ImportError saying how to get it."""
    try:
        return importlib.import_module("torch")
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("this needs PyTorch (pip install torch)") from e


def is_tensor(value: Any) -> bool:
    """True for a torch tensor. Never imports torch: a tensor exists only if torch is loaded."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _to_torch(torch: Any) -> Dict[str, Any]:
    return {st: getattr(torch, name) for st, name in _PAIRS if hasattr(torch, name)}


def tensor_bytes(key: str, tensor: Any) -> Tuple[Optional[str], Tuple[int, ...], np.ndarray]:
    """``(safetensors dtype or None, shape, bytes as a 1-D uint8 array)`` of a torch tensor,
    moved to the CPU and made contiguous when it is not already."""
    torch = require()
    if tensor.layout != torch.strided:
        raise InvalidInput(f"tensor {key!r}: {tensor.layout} tensors are not supported; use .to_dense()")
    if tensor.device.type == "meta":
        raise InvalidInput(f"tensor {key!r} is on the meta device and has no data")
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.is_complex():
        t = t.resolve_conj()
    t = t.resolve_neg().contiguous()
    names = {v: k for k, v in _to_torch(torch).items()}
    name = names.get(t.dtype)
    shape = tuple(t.shape)
    flat = t.reshape(-1)
    if flat.numel() == 0:
        raw = np.empty(0, dtype=np.uint8)
    elif t.dtype == torch.uint8:
        raw = flat.numpy()
    else:
        raw = flat.view(torch.uint8).numpy()
    return name, shape, raw


def from_raw(name: str, shape: Tuple[int, ...], raw: np.ndarray, owned: bool, copy_shared: bool) -> Any:
    """A torch tensor of safetensors dtype ``name`` over ``raw`` (1-D uint8). Stored bytes are
    shared read-only memory: they are copied when ``copy_shared`` (torch has no read-only
    tensors, and a write to a read-only mapping would crash the process)."""
    torch = require()
    dtype = _to_torch(torch).get(name)
    if raw.size == 0:
        return torch.empty(shape if dtype is not None else (0,), dtype=dtype or torch.uint8)
    if not owned and copy_shared:
        raw = raw.copy()
    with warnings.catch_warnings():
        # Only reached for read-only arrays when the caller only reads (load_into).
        warnings.filterwarnings("ignore", message=".*non-writable.*")
        warnings.filterwarnings("ignore", message=".*not writable.*")
        t = torch.from_numpy(raw)
    if dtype is None:
        return t  # sub-byte floats: packed bytes
    if dtype != torch.uint8:
        t = t.view(dtype)
    return t.reshape(shape)
