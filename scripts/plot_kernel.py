#!/usr/bin/python3
"""Plots `neurstore-kernel --json OUT`: speed of the compressed linear layer relative to a dense
f32 GEMM (above 1 = faster) against batch size, one panel per MiniLM weight shape, one line per
compressed form; the batch-1 whole-model sweep is marked at batch 1 in the first panel.

Usage: /usr/bin/python3 scripts/plot_kernel.py RESULTS.json [--out docs/kernel-speed.png]
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--out", default="docs/kernel-speed.png")
    args = ap.parse_args()
    with open(args.results) as f:
        data = json.load(f)

    shapes = sorted({r["shape"] for r in data["shapes"]}, key=lambda s: [int(x) for x in s.split("x")])
    forms = list(dict.fromkeys(r["form"] for r in data["shapes"]))
    color = {form: f"C{i}" for i, form in enumerate(forms)}
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.2 * len(shapes), 3.8), sharey=True)
    for ax, shape in zip(axes, shapes):
        for form in forms:
            rows = sorted((r for r in data["shapes"] if r["shape"] == shape and r["form"] == form),
                          key=lambda r: r["batch"])
            held = rows[0]["held_pct"]
            ax.plot([r["batch"] for r in rows], [r["speed_ratio"] for r in rows], marker="o",
                    color=color[form], label=f"{form} ({held:.0f}% held)")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axhline(0.7, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xscale("log", base=2)
        ax.set_title(f"W {shape} (out x in)")
        ax.set_xlabel("batch")
        ax.grid(alpha=0.3)
    for r in data.get("sweep_batch1", []):
        axes[0].scatter([1], [r["speed_ratio"]], marker="*", s=90, zorder=5,
                        color=color.get(r["form"], "black"))
    axes[0].set_ylabel("speed vs dense f32 GEMM (x)")
    axes[0].annotate("* = batch-1 sweep over all 36\n   encoder weights (42 MB)", xy=(0.02, 0.98),
                     xycoords="axes fraction", va="top", fontsize=8)
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Compressed linear layer vs dense f32 (one thread; dotted: 0.7x target)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
