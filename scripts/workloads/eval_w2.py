#!/usr/bin/python3
"""Judges a (possibly reconstructed) W2 / W3 MLP checkpoint: runs the digits held-out set and prints,
as JSON, the accuracy and the agreement with the predictions recorded for the original file.

Usage: /usr/bin/python3 scripts/workloads/eval_w2.py MODEL.safetensors [--manifest data/w2/manifest.json]
           [--ref data/w2/epoch-NN.safetensors]
The reference is --ref, else the manifest entry whose file has MODEL's basename (agreement is null
without one). Use --manifest data/w3/manifest.json for the W3 MLPs.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wl_common as c  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--manifest", default=os.path.join(c.DATA_DIR, "w2", "manifest.json"))
    ap.add_argument("--ref", default=None)
    args = ap.parse_args()

    manifest = c.read_json(args.manifest)
    held_path = manifest.get("heldout") or manifest.get("mlp_heldout")
    if not os.path.isabs(held_path):
        held_path = os.path.join(c.REPO_ROOT, held_path)
    held = c.read_json(held_path)
    torch = c.setup_torch(1)
    mlp = c.make_mlp(torch)
    try:
        c.load_weights(torch, mlp, c.read_safetensors(args.model))
    except (ValueError, KeyError, OSError) as e:
        print(f"cannot load: {e}", file=sys.stderr)
        sys.exit(2)
    preds = c.mlp_predict(torch, mlp, held["inputs"])
    labels = held["labels"]
    acc = sum(int(p == t) for p, t in zip(preds, labels)) / len(labels)
    want = os.path.basename(args.ref or args.model)
    ref = next((m for m in manifest["models"] if os.path.basename(m["file"]) == want and "predictions" in m),
               None)
    out = {"model": args.model, "n": len(labels), "accuracy": acc, "ref": None, "ref_accuracy": None,
           "agreement": None, "accuracy_change": None}
    if ref is not None:
        out.update({"ref": ref["file"], "ref_accuracy": ref["heldout_accuracy"],
                    "agreement": sum(int(p == q) for p, q in zip(preds, ref["predictions"])) / len(preds),
                    "accuracy_change": acc - ref["heldout_accuracy"]})
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
