#!/usr/bin/env python3
"""Converts the F32 tensors of a safetensors file to BF16; other tensors are copied unchanged.

Usage: scripts/make-bf16.py IN.safetensors OUT.safetensors

Rounding is round-to-nearest-even on the bit pattern (what torch's .to(torch.bfloat16) does);
NaNs stay NaNs (quiet). Uses numpy when installed, the standard library otherwise. The output is a
valid safetensors file: 8-byte little-endian header length, header JSON padded with spaces to a
multiple of 8 bytes, then the tensors back to back in their original order.
"""

import array
import json
import os
import struct
import sys

try:
    import numpy as np
except ImportError:  # the standard-library path below does the same, more slowly
    np = None


def f32_to_bf16_numpy(raw: bytes) -> bytes:
    bits = np.frombuffer(raw, dtype="<u4").astype(np.uint32)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    quiet = (bits >> 16) | 0x40
    out = np.where(nan, quiet, rounded).astype("<u2")
    return out.tobytes()


def f32_to_bf16_stdlib(raw: bytes) -> bytes:
    bits = array.array("I")
    if bits.itemsize != 4:
        bits = array.array("L")
        if bits.itemsize != 4:
            sys.exit("no 4-byte unsigned array type on this platform")
    bits.frombytes(raw)
    if sys.byteorder == "big":
        bits.byteswap()
    out = array.array("H", [
        ((b >> 16) | 0x40) if (b & 0x7FFFFFFF) > 0x7F800000
        else (b + 0x7FFF + ((b >> 16) & 1)) >> 16
        for b in bits
    ])
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


def f32_to_bf16(raw: bytes) -> bytes:
    if len(raw) % 4:
        sys.exit("an F32 tensor's byte length is not a multiple of 4")
    return f32_to_bf16_numpy(raw) if np is not None else f32_to_bf16_stdlib(raw)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[2])
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, "rb") as f:
        data = f.read()
    if len(data) < 8:
        sys.exit(f"{src}: too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        sys.exit(f"{src}: header length {header_len} runs past the file")
    header = json.loads(data[8:8 + header_len])
    body = memoryview(data)[8 + header_len:]

    metadata = header.pop("__metadata__", None)
    # Tensors in their original offset order, so the output keeps the same layout.
    names = sorted(header, key=lambda n: header[n]["data_offsets"][0])
    out_header = {}
    if metadata is not None:
        out_header["__metadata__"] = metadata
    chunks = []
    offset = 0
    converted = 0
    for name in names:
        info = header[name]
        start, end = info["data_offsets"]
        raw = bytes(body[start:end])
        dtype = info["dtype"]
        if dtype == "F32":
            raw = f32_to_bf16(raw)
            dtype = "BF16"
            converted += 1
        out_header[name] = {
            "dtype": dtype,
            "shape": info["shape"],
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)

    head = json.dumps(out_header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    tmp = dst + ".partial"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for chunk in chunks:
            f.write(chunk)
    os.replace(tmp, dst)
    print(f"{dst}: {converted} of {len(names)} tensors converted to BF16, {offset} data bytes")


if __name__ == "__main__":
    main()
