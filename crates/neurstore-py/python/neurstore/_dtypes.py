"""Element types: safetensors names (what the store records) and numpy dtypes.

numpy has no bfloat16 or float8 types. With ``ml_dtypes`` installed those tensors come back with
its dtypes; without it, as raw unsigned integer views of the same bytes (``uint16`` for BF16,
``uint8`` for the F8 types). Sub-byte floats (F4, F6_E2M3, F6_E3M2) have no numpy dtype either
way and come back as their packed bytes, a 1-D ``uint8`` array.
"""

from __future__ import annotations

import sys
from typing import Iterable, Optional

import numpy as np

try:  # optional: real bfloat16 / float8 dtypes
    import ml_dtypes
except ImportError:  # pragma: no cover - depends on the environment
    ml_dtypes = None  # type: ignore[assignment]

#: Bits per element of every dtype the safetensors format defines.
BITS = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}

# Little-endian numpy type strings of the types numpy has.
_NUMPY = {
    "BOOL": "|b1",
    "U8": "|u1",
    "I8": "|i1",
    "I16": "<i2",
    "U16": "<u2",
    "F16": "<f2",
    "I32": "<i4",
    "U32": "<u4",
    "F32": "<f4",
    "C64": "<c8",
    "F64": "<f8",
    "I64": "<i8",
    "U64": "<u8",
}
_FROM_NUMPY = {v: k for k, v in _NUMPY.items()}

# ml_dtypes names, and the raw views used without ml_dtypes.
_ML = {
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
}
_FROM_ML = {v: k for k, v in _ML.items()}
_RAW = {"BF16": "<u2", "F8_E4M3": "|u1", "F8_E5M2": "|u1", "F8_E8M0": "|u1"}


def numpy_dtype(name: str) -> Optional[np.dtype]:
    """The numpy dtype tensors of safetensors dtype ``name`` are returned as; ``None`` for
    sub-byte types, returned as packed bytes."""
    if name in _NUMPY:
        return np.dtype(_NUMPY[name])
    if name in _ML:
        ml = ml_dtypes
        if ml is not None and hasattr(ml, _ML[name]):
            found: np.dtype = np.dtype(getattr(ml, _ML[name]))
            return found
        return np.dtype(_RAW[name])
    return None


def is_exact(name: str, dtype: np.dtype) -> bool:
    """True when ``dtype`` is the real type of ``name`` rather than a raw view of its bytes."""
    return safetensors_name(dtype) == name


def safetensors_name(dtype: np.dtype) -> Optional[str]:
    """The safetensors name of a numpy dtype, or ``None`` when the format has no such type."""
    if dtype.names is not None or dtype.subdtype is not None:
        return None
    found = _FROM_ML.get(dtype.name)  # no numpy dtype has these names
    if found is not None:
        return found
    return _FROM_NUMPY.get(little_endian(dtype).str)


def little_endian(dtype: np.dtype) -> np.dtype:
    """``dtype`` in little-endian byte order (the order safetensors stores)."""
    order = dtype.byteorder
    if order == ">" or (order == "=" and sys.byteorder == "big"):
        return dtype.newbyteorder("<")
    return dtype


def byte_len(name: str, shape: Iterable[int]) -> Optional[int]:
    """Bytes a tensor of ``name`` and ``shape`` occupies; ``None`` if the bits do not fill
    whole bytes."""
    elements = 1
    for d in shape:
        elements *= int(d)
    bits = elements * BITS[name]
    return bits // 8 if bits % 8 == 0 else None


def supported() -> str:
    """The supported numpy dtypes, for error messages."""
    return (
        "bool, uint8/16/32/64, int8/16/32/64, float16/32/64, complex64, and with ml_dtypes "
        "bfloat16, float8_e4m3fn, float8_e5m2, float8_e8m0fnu"
    )
