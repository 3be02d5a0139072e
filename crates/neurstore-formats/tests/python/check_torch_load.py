"""Loads a PyTorch file with torch.load(weights_only=True) and prints, per tensor,
name, dtype, shape and the CRC-32 of its contiguous little-endian bytes, one per line."""
import sys
import zlib

import torch

state = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
for name, t in state.items():
    data = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    print(f"{name}\t{str(t.dtype).removeprefix('torch.')}\t{list(t.shape)}\t{zlib.crc32(data)}")
