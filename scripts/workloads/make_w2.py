#!/usr/bin/python3
"""W2: a checkpoint series. A small MLP (64-256-128-10, ReLU) trained 20 epochs with Adam on
scikit-learn's bundled digits data set; one safetensors checkpoint per epoch (epoch 0 = the
initialisation) into data/w2/, with a manifest of epoch, train loss, held-out accuracy and predictions.

Usage: /usr/bin/python3 scripts/workloads/make_w2.py [--epochs 20] [--seed 0] [--out data/w2]
Output: data/w2/epoch-NN.safetensors (fc1/fc2/fc3 .weight/.bias, F32), heldout.json, manifest.json.
Deterministic (single-threaded torch, fixed seeds): byte-identical files on rerun.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wl_common as c  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(c.DATA_DIR, "w2"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    torch = c.setup_torch(1)
    t0 = time.time()
    train, held = c.load_digits_split()
    held_path = os.path.join(args.out, "heldout.json")
    c.write_json(held_path, {"inputs": held[0].tolist(), "labels": held[1].tolist(),
                             "note": "digits 8x8 images, values 0..16; the network sees value / 16"},
                 compact=True)
    models = []

    def on_epoch(ep, mlp, loss):
        path = os.path.join(args.out, f"epoch-{ep:02d}.safetensors")
        c.write_safetensors(path, c.state_to_numpy(mlp), metadata={"format": "pt"})
        preds = c.mlp_predict(torch, mlp, held[0])
        acc = sum(int(p == t) for p, t in zip(preds, held[1].tolist())) / len(preds)
        models.append({"file": c.rel(path), "epoch": ep, "train_loss": loss, "heldout_accuracy": acc,
                       "sha256": c.sha256_file(path), "predictions": preds})
        print(f"epoch {ep:2d}: train loss {loss if loss is None else round(loss, 4)}, "
              f"held-out accuracy {acc:.4f}", flush=True)

    c.train_mlp(torch, args.seed, args.epochs, train, on_epoch, lr=args.lr, batch=args.batch)
    c.write_json(os.path.join(args.out, "manifest.json"), {
        "workload": "w2",
        "description": "MLP 64-256-128-10 on sklearn digits, one checkpoint per epoch (epoch 0 = init)",
        "architecture": {"sizes": list(c.MLP_SIZES), "activation": "relu",
                         "tensors": "fc{1,2,3}.weight [out, in], fc{1,2,3}.bias [out]",
                         "input_scale": "value / 16"},
        "training": {"seed": args.seed, "epochs": args.epochs, "optimizer": "Adam", "lr": args.lr,
                     "batch": args.batch, "n_train": len(train[1]), "n_heldout": len(held[1])},
        "heldout": c.rel(held_path),
        "models": models,
    })
    print(f"done in {time.time() - t0:.1f}s: {len(models)} checkpoints in {c.rel(args.out)}")


if __name__ == "__main__":
    main()
