#!/usr/bin/python3
"""Judges a (possibly reconstructed) W1 model: runs the held-out set of TASK through the encoder
weights in MODEL and the head in HEAD, and prints, as JSON, the accuracy and the agreement with the
predictions recorded for the original model in data/w1/manifest.json.

Usage: /usr/bin/python3 scripts/workloads/eval_w1.py MODEL.safetensors HEAD.safetensors TASK
           [--manifest data/w1/manifest.json] [--ref data/w1/TASK-stepN.safetensors] [--threads 1]

MODEL must have the base tensor names and shapes (F32; F16 and BF16 are accepted and widened).
The reference model (whose recorded predictions are compared) is, in order: --ref (a manifest "file"
entry or its basename); the manifest model of TASK whose head file has HEAD's basename; the manifest
model of TASK whose file has MODEL's basename. Without a match, agreement is null.
Exit status 0 on success, 2 on a usage/input problem.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wl_common as c  # noqa: E402


def find_ref(models, task, model_path, head_path, ref):
    cand = [m for m in models if m["task"] == task]
    if ref:
        for m in cand:
            if m["file"] == ref or os.path.basename(m["file"]) == os.path.basename(ref):
                return m
        return None
    for key, path in (("head", head_path), ("file", model_path)):
        for m in cand:
            if os.path.basename(m[key]) == os.path.basename(path):
                return m
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("head")
    ap.add_argument("task")
    ap.add_argument("--manifest", default=os.path.join(c.DATA_DIR, "w1", "manifest.json"))
    ap.add_argument("--ref", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    if not os.path.exists(args.manifest):
        print(f"no manifest {args.manifest}: run scripts/workloads/make_w1.py", file=sys.stderr)
        sys.exit(2)
    manifest = c.read_json(args.manifest)
    if args.task not in manifest.get("tasks", {}):
        print(f"unknown task {args.task}; known: {sorted(manifest.get('tasks', {}))}", file=sys.stderr)
        sys.exit(2)
    held_path = manifest["tasks"][args.task]["heldout"]
    if not os.path.isabs(held_path):
        held_path = os.path.join(c.REPO_ROOT, held_path)
    held = c.read_json(held_path)

    torch = c.setup_torch(args.threads)
    t0 = time.time()
    enc = c.make_bert(torch, dropout=0.0)
    try:
        c.load_weights(torch, enc, c.read_safetensors(args.model))
        hw = c.read_safetensors(args.head)
    except (ValueError, KeyError, OSError) as e:
        print(f"cannot load: {e}", file=sys.stderr)
        sys.exit(2)
    w = torch.from_numpy(hw["classifier.weight"].astype("float32"))
    b = torch.from_numpy(hw["classifier.bias"].astype("float32"))
    if w.shape[0] != len(held["classes"]):
        print(f"head has {w.shape[0]} classes, task {args.task} has {len(held['classes'])}", file=sys.stderr)
        sys.exit(2)
    preds = c.predict(torch, enc, w, b, held["input_ids"])
    labels = held["labels"]
    acc = sum(int(p == t) for p, t in zip(preds, labels)) / len(labels)

    ref = find_ref(manifest.get("models", []), args.task, args.model, args.head, args.ref)
    out = {"task": args.task, "model": args.model, "head": args.head, "n": len(labels), "accuracy": acc,
           "ref": None, "ref_accuracy": None, "agreement": None, "accuracy_change": None,
           "seconds": round(time.time() - t0, 2)}
    if ref is not None:
        rp = ref["predictions"]
        out.update({"ref": ref["file"], "ref_accuracy": ref["heldout_accuracy"],
                    "agreement": sum(int(p == q) for p, q in zip(preds, rp)) / len(rp),
                    "accuracy_change": acc - ref["heldout_accuracy"]})
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
