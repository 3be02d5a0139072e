#!/usr/bin/python3
"""W3: unrelated models of equal shapes (the negative control for delta compression).

- 4 copies of the W2 MLP (64-256-128-10), each independently initialised (seeds 101..104, W2 uses 0)
  and briefly trained (3 epochs) on digits: data/w3/mlp-seed<S>.safetensors;
- 2 randomly initialised MiniLM-shaped models with the base's exact tensor names, dtypes and shapes:
  every float tensor drawn from N(0, 0.02^2) (numpy PCG64, seeds 201, 202), position_ids copied from
  the base: data/w3/minilm-random-seed<S>.safetensors.

Usage: /usr/bin/python3 scripts/workloads/make_w3.py [--out data/w3]
Needs data/all-MiniLM-L6-v2/model.safetensors (scripts/fetch-minilm.sh) for the names and shapes.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wl_common as c  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(c.DATA_DIR, "w3"))
    ap.add_argument("--base", default=os.path.join(c.DATA_DIR, "all-MiniLM-L6-v2", "model.safetensors"))
    ap.add_argument("--mlp-seeds", default="101,102,103,104")
    ap.add_argument("--mlp-epochs", type=int, default=3)
    ap.add_argument("--minilm-seeds", default="201,202")
    args = ap.parse_args()

    torch = c.setup_torch(1)
    t0 = time.time()
    models = []
    train, held = c.load_digits_split()
    held_path = os.path.join(args.out, "heldout.json")
    c.write_json(held_path, {"inputs": held[0].tolist(), "labels": held[1].tolist(),
                             "note": "digits 8x8 images, values 0..16; the network sees value / 16 "
                                     "(the same split as data/w2/heldout.json)"}, compact=True)
    for seed in [int(s) for s in args.mlp_seeds.split(",") if s]:
        def on_epoch(ep, mlp, loss, seed=seed):
            if ep != args.mlp_epochs:
                return
            path = os.path.join(args.out, f"mlp-seed{seed}.safetensors")
            c.write_safetensors(path, c.state_to_numpy(mlp), metadata={"format": "pt"})
            preds = c.mlp_predict(torch, mlp, held[0])
            acc = sum(int(p == t) for p, t in zip(preds, held[1].tolist())) / len(preds)
            models.append({"file": c.rel(path), "kind": "mlp", "seed": seed, "epochs": ep,
                           "train_loss": loss, "heldout_accuracy": acc, "sha256": c.sha256_file(path),
                           "predictions": preds})
            print(f"mlp seed {seed}: {ep} epochs, held-out accuracy {acc:.4f}", flush=True)
        c.train_mlp(torch, seed, args.mlp_epochs, train, on_epoch)

    if not os.path.exists(args.base):
        sys.exit(f"no {args.base}: run scripts/fetch-minilm.sh first")
    base = c.read_safetensors(args.base)
    for seed in [int(s) for s in args.minilm_seeds.split(",") if s]:
        rng = np.random.default_rng(seed)
        tensors = {}
        for name in sorted(base):
            b = base[name]
            if b.dtype.kind == "f":
                tensors[name] = (rng.standard_normal(b.shape, dtype=np.float64) * 0.02).astype(b.dtype)
            else:
                tensors[name] = b.copy()
        path = os.path.join(args.out, f"minilm-random-seed{seed}.safetensors")
        c.write_safetensors(path, tensors, metadata={"format": "pt"})
        models.append({"file": c.rel(path), "kind": "minilm-random", "seed": seed,
                       "init": "every float tensor N(0, 0.02^2), names/shapes/dtypes of the base; "
                               "non-float tensors (position_ids) copied",
                       "sha256": c.sha256_file(path), "delta_vs_base": c.delta_stats(tensors, base)})
        print(f"minilm random seed {seed}: {c.rel(path)}", flush=True)

    c.write_json(os.path.join(args.out, "manifest.json"), {
        "workload": "w3",
        "description": "unrelated models of equal shapes: independently seeded MLPs and random MiniLM-shaped "
                       "models",
        "mlp_heldout": c.rel(held_path),
        "models": models,
    })
    print(f"done in {time.time() - t0:.1f}s: {len(models)} models in {c.rel(args.out)}")


if __name__ == "__main__":
    main()
