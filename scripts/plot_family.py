#!/usr/bin/python3
"""Plots the W1 results of `neurstore-family --json OUT`: family compression ratio (ours and the
NeurStore paper's rule, every stored byte counted) and the lowest prediction agreement over the
fine-tunes, against the absolute tolerance; the lossless ratio is a horizontal line.

Usage: /usr/bin/python3 scripts/plot_family.py RESULTS.json [--out docs/family-ratio.png]
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, MultipleLocator  # noqa: E402


def min_agreement(judgements):
    return min((j["agreement"] for j in judgements), default=None)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--out", default="docs/family-ratio.png")
    ap.add_argument("--workload", default="w1")
    args = ap.parse_args()

    with open(args.results) as f:
        r = json.load(f)
    runs = [x for x in r["runs"] if x["workload"] == args.workload and x["base"] == "auto"]
    bounded = sorted((x for x in runs if x["tolerance"] is not None), key=lambda x: x["tolerance"])
    lossless = next((x for x in runs if x["tolerance"] is None), None)
    paper = sorted((p for p in r["paper"] if p["workload"] == args.workload), key=lambda p: p["tolerance"])
    if not bounded:
        raise SystemExit(f"no bounded runs of {args.workload} in {args.results}")
    models = bounded[0]["models"]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    fig.suptitle(f"{args.workload.upper()}: {models} models put into one store (base + fine-tunes); "
                 "every stored byte counted", fontsize=12)

    tol = [x["tolerance"] for x in bounded]
    ours = [x["family_ratio"] for x in bounded]
    ax1.plot(tol, ours, "o-", color="tab:blue", lw=2, label="NeurStore (this store)")
    for t, v in zip(tol, ours):
        ax1.annotate(f"{v:.1f}x", (t, v), textcoords="offset points", xytext=(0, 8), ha="center",
                     color="tab:blue", fontsize=9)
    if paper:
        pt = [p["tolerance"] for p in paper]
        pv = [p["family_ratio"] for p in paper]
        ax1.plot(pt, pv, "s--", color="tab:orange", lw=2, label="paper's rule (8-bit bases, fixed-width deltas)")
        for t, v in zip(pt, pv):
            ax1.annotate(f"{v:.1f}x", (t, v), textcoords="offset points", xytext=(0, 9), ha="center",
                         color="tab:orange", fontsize=9)
    ax1.plot([1e-4], [10], marker="_", ms=22, mew=2.5, color="tab:green", ls="none",
             label="target at 1e-4: 10x")
    if lossless:
        ax1.axhline(lossless["family_ratio"], color="tab:gray", ls=":", lw=1.5,
                    label=f"NeurStore lossless ({lossless['family_ratio']:.2f}x)")
    ax1.set_xscale("log")
    ax1.set_xlabel("absolute tolerance (max |error| per element)")
    ax1.set_ylabel("family ratio (raw bytes / stored bytes)")
    ax1.set_ylim(bottom=0, top=max(ours + [lossless["family_ratio"] if lossless else 0]) * 1.18)
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(loc="upper left", fontsize=9)
    ax1.set_title("compression of the whole family")

    agree = [(x["tolerance"], min_agreement(x["judgements"])) for x in bounded]
    agree = [(t, a) for t, a in agree if a is not None]
    if agree:
        ax2.plot([t for t, _ in agree], [a * 100 for _, a in agree], "o-", color="tab:blue", lw=2,
                 label="NeurStore")
        for t, a in agree:
            ax2.annotate(f"{a * 100:.2f}%", (t, a * 100), textcoords="offset points", xytext=(0, 8),
                         ha="center", color="tab:blue", fontsize=9)
    pagree = [(p["tolerance"], min_agreement(p["judgements"])) for p in paper]
    pagree = [(t, a) for t, a in pagree if a is not None]
    if pagree:
        ax2.plot([t for t, _ in pagree], [a * 100 for _, a in pagree], "s", color="tab:orange", ms=8,
                 label="paper's rule")
        for t, a in pagree:
            ax2.annotate(f"{a * 100:.2f}%", (t, a * 100), textcoords="offset points", xytext=(8, -4),
                         ha="left", color="tab:orange", fontsize=9)
    ax2.axhline(99.9, color="tab:green", ls=":", lw=1.5, label="target 99.9%")
    ax2.set_xscale("log")
    ax2.set_xlim(ax1.get_xlim())
    lows = [a * 100 for _, a in agree + pagree]
    ax2.set_ylim(min(lows + [99.5]) - 0.15, 100.08)
    ax2.yaxis.set_major_locator(MultipleLocator(0.1))
    ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.1f}%"))
    ax2.set_xlim(ax1.get_xlim()[0] / 1.3, ax1.get_xlim()[1] * 1.3)
    ax2.set_xlabel("absolute tolerance (max |error| per element)")
    ax2.set_ylabel("prediction agreement with the original")
    ax2.set_title("lowest agreement over the fine-tunes (held-out sets)")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(loc="lower left", fontsize=9)

    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
