#!/usr/bin/python3
"""W1: a real fine-tune family of all-MiniLM-L6-v2 (base + full fine-tunes + intermediate checkpoints).

Each task is a text classification of Debian package descriptions (see wl_common.build_task). For each
task the whole encoder is fine-tuned together with a new linear head on the mean-pooled embedding.
Every saved encoder has exactly the tensor names, dtypes and shapes of the base model.safetensors
(the pooler and position_ids are carried unchanged: mean pooling does not use them); the head goes
to a small side file so the family shares shapes.

Output (under data/w1/ by default):
  packages.jsonl                    the package table the tasks come from (reused by later runs)
  heldout-<task>.json               held-out token ids, labels, class names
  <task>-step<N>.safetensors        encoder weights after N steps
  head-<task>-step<N>.safetensors   classifier.weight [C, 384], classifier.bias [C]
  manifest.json                     per model: file, head, task, step, held-out accuracy + predictions

Usage: nice -n 10 /usr/bin/python3 scripts/workloads/make_w1.py [--tasks section,role,islib,arch]
       [--steps 150] [--checkpoints 50,100] [--checkpoint-tasks section,role,islib] [--out data/w1]
Deterministic: the same inputs give byte-identical weight files (single-threaded torch, fixed seeds,
fixed data order). Tasks are independent, so running them one at a time gives the same files.
"""

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wl_common as c  # noqa: E402

ALL_TASKS = ["section", "role", "islib", "arch"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-dir", default=os.path.join(c.DATA_DIR, "all-MiniLM-L6-v2"),
                    help="model directory (model.safetensors, vocab.txt); see scripts/fetch-minilm.sh")
    ap.add_argument("--out", default=os.path.join(c.DATA_DIR, "w1"))
    ap.add_argument("--tasks", default=",".join(ALL_TASKS))
    ap.add_argument("--dumpavail", default=None,
                    help="parse this `apt-cache dumpavail` output instead of OUT/packages.jsonl / apt-cache")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--checkpoints", default="50,100", help="extra steps to save (besides the last)")
    ap.add_argument("--checkpoint-tasks", default="section,role,islib",
                    help="tasks whose intermediate checkpoints are saved")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=48)
    ap.add_argument("--lr", type=float, default=5e-5, help="encoder learning rate (AdamW)")
    ap.add_argument("--head-lr", type=float, default=1e-3, help="learning rate of the new linear head")
    ap.add_argument("--warmup", type=int, default=15, help="linear warm-up steps, then linear decay to 0")
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--heldout", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    torch = c.setup_torch(args.threads)
    F = torch.nn.functional
    os.makedirs(args.out, exist_ok=True)
    tasks = [t for t in args.tasks.split(",") if t]
    ckpt_steps = sorted(int(s) for s in args.checkpoints.split(",") if s)
    ckpt_tasks = set(t for t in args.checkpoint_tasks.split(",") if t)

    base_path = os.path.join(args.base_dir, "model.safetensors")
    if not os.path.exists(base_path):
        sys.exit(f"no {base_path}: run scripts/fetch-minilm.sh first")
    base = c.read_safetensors(base_path)
    base_header, _ = c.read_safetensors_header(base_path)
    tok = c.WordPieceTokenizer(os.path.join(args.base_dir, "vocab.txt"))

    pk_path = os.path.join(args.out, "packages.jsonl")
    pkgs = c.load_packages(pk_path, args.dumpavail)
    print(f"{len(pkgs)} packages from {c.rel(pk_path)}", flush=True)

    man_path = os.path.join(args.out, "manifest.json")
    manifest = c.read_json(man_path) if os.path.exists(man_path) else {}
    manifest.update({
        "workload": "w1",
        "description": "all-MiniLM-L6-v2 full fine-tunes on Debian package-description classification tasks",
        "base": {"file": c.rel(base_path), "sha256": c.sha256_file(base_path)},
        "packages": {"file": c.rel(pk_path), "sha256": c.sha256_file(pk_path), "count": len(pkgs)},
        "eval": {"script": "scripts/workloads/eval_w1.py", "batch": c.EVAL_BATCH, "pooling": "mean",
                 "note": "logits = mean_pool(encoder(ids)) @ classifier.weight.T + classifier.bias"},
    })
    manifest.setdefault("tasks", {})
    manifest.setdefault("models", [])

    ref_names = {k: (v["dtype"], v["shape"]) for k, v in base_header.items() if k != "__metadata__"}

    for ti, task in enumerate(tasks):
        t_task = time.time()
        seed = args.seed + ALL_TASKS.index(task) if task in ALL_TASKS else args.seed + 100 + ti
        classes, examples = c.build_task(task, pkgs)
        train, held = c.split_task(task, examples, args.heldout)
        enc = lambda ex: [tok.encode(e[1], args.max_len) for e in ex]  # noqa: E731
        train_ids, train_y = enc(train), [e[2] for e in train]
        held_ids, held_y = enc(held), [e[2] for e in held]
        held_path = os.path.join(args.out, f"heldout-{task}.json")
        c.write_json(held_path, {
            "task": task, "classes": classes, "max_len": args.max_len,
            "input_ids": held_ids, "labels": held_y,
            "packages": [e[0] for e in held], "descriptions": [e[1] for e in held],
        }, compact=True)
        counts = [held_y.count(k) for k in range(len(classes))]
        manifest["tasks"][task] = {
            "classes": classes, "n_train": len(train), "n_heldout": len(held), "seed": seed,
            "heldout": c.rel(held_path), "heldout_class_counts": counts,
            "majority_baseline_accuracy": max(counts) / len(held),
        }
        print(f"[{task}] {len(classes)} classes, {len(train)} train, {len(held)} held-out, "
              f"majority baseline {max(counts) / len(held):.3f}", flush=True)

        # model, head, optimizer
        torch.manual_seed(seed)
        model = c.make_bert(torch, dropout=args.dropout)
        c.load_weights(torch, model, base)
        head = torch.nn.Linear(384, len(classes))
        torch.nn.init.normal_(head.weight, std=0.02)
        torch.nn.init.zeros_(head.bias)
        decay, no_decay = [], []
        for n, p in model.named_parameters():
            (no_decay if n.endswith("bias") or "LayerNorm" in n else decay).append(p)
        opt = torch.optim.AdamW([
            {"params": decay, "weight_decay": args.weight_decay, "lr": args.lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": args.lr},
            {"params": list(head.parameters()), "weight_decay": 0.0, "lr": args.head_lr},
        ])
        base_lrs = [g["lr"] for g in opt.param_groups]

        def lr_factor(step):  # step is 1-based
            if step <= args.warmup:
                return step / max(1, args.warmup)
            return max(0.0, (args.steps - step) / max(1, args.steps - args.warmup))

        rng = random.Random(seed)
        order = []
        save_at = set(ckpt_steps if task in ckpt_tasks else []) | {args.steps}
        model.train()
        losses = []
        t0 = time.time()
        for step in range(1, args.steps + 1):
            if len(order) < args.batch:
                perm = list(range(len(train_ids)))
                rng.shuffle(perm)
                order.extend(perm)
            idx, order = order[: args.batch], order[args.batch:]
            ids, mask = c.pad_batch(torch, [train_ids[i] for i in idx])
            y = torch.tensor([train_y[i] for i in idx], dtype=torch.long)
            for g, lr0 in zip(opt.param_groups, base_lrs):
                g["lr"] = lr0 * lr_factor(step)
            loss = F.cross_entropy(head(model(ids, mask)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss))
            if step % 10 == 0:
                print(f"[{task}] step {step}/{args.steps} loss(avg10) {sum(losses[-10:]) / 10:.4f} "
                      f"{(time.time() - t0) / step:.2f}s/step", flush=True)
            if step in save_at:
                name = f"{task}-step{step}"
                mfile = os.path.join(args.out, name + ".safetensors")
                hfile = os.path.join(args.out, f"head-{name}.safetensors")
                weights = c.state_to_numpy(model)
                c.write_safetensors(mfile, weights, metadata={"format": "pt"})
                c.write_safetensors(hfile, {"classifier.weight": head.weight.detach().numpy().copy(),
                                            "classifier.bias": head.bias.detach().numpy().copy()},
                                    metadata={"format": "pt"})
                # the shared-shape contract
                hdr, _ = c.read_safetensors_header(mfile)
                got = {k: (v["dtype"], v["shape"]) for k, v in hdr.items() if k != "__metadata__"}
                if got != ref_names:
                    sys.exit(f"{mfile}: tensor names/dtypes/shapes differ from the base")
                # predictions from the files just written, exactly as eval_w1.py computes them
                ev = c.make_bert(torch, dropout=0.0)
                c.load_weights(torch, ev, c.read_safetensors(mfile))
                hw = c.read_safetensors(hfile)
                preds = c.predict(torch, ev, torch.from_numpy(hw["classifier.weight"]),
                                  torch.from_numpy(hw["classifier.bias"]), held_ids)
                acc = sum(int(p == t) for p, t in zip(preds, held_y)) / len(held_y)
                ds = c.delta_stats(weights, base)
                entry = {
                    "file": c.rel(mfile), "head": c.rel(hfile), "task": task, "step": step,
                    "final": step == args.steps, "sha256": c.sha256_file(mfile),
                    "heldout": c.rel(held_path), "heldout_accuracy": acc, "predictions": preds,
                    "train_loss_last10": sum(losses[-10:]) / len(losses[-10:]), "delta_vs_base": ds,
                }
                manifest["models"] = [m for m in manifest["models"] if m["file"] != entry["file"]]
                manifest["models"].append(entry)
                manifest["models"].sort(key=lambda m: (m["task"], m["step"]))
                c.write_json(man_path, manifest)
                print(f"[{task}] saved {name}: held-out accuracy {acc:.4f}, mean|d|/mean|b| "
                      f"{ds['mean_abs_delta_over_mean_abs_base']:.5f}, "
                      f"||d||/||b|| {ds['l2_delta_over_l2_base']:.5f}", flush=True)
        model.train()
        print(f"[{task}] done in {time.time() - t_task:.0f}s", flush=True)

    c.write_json(man_path, manifest)
    print(f"manifest: {c.rel(man_path)} ({len(manifest['models'])} models)")


if __name__ == "__main__":
    main()
