#!/usr/bin/env python3
"""Reads of a whole model from Python: `neurstore` `store.get` against
`safetensors.numpy.load_file`, measured side by side in one run.

Usage: scripts/bench_python.py [--model FILE] [--runs N] [--json OUT]
       RAYON_NUM_THREADS=1 scripts/bench_python.py    # neurstore on one core, like load_file

Needs the `neurstore` package and `safetensors` installed in the running Python. By default the
model is all-MiniLM-L6-v2 (fp32), fetched with scripts/fetch-minilm.sh. Cases:

- the model put losslessly (the default put), read back with `store.get`;
- a synthetic incompressible model of the same size (random bit patterns), which the store keeps
  raw, so `store.get` returns zero-copy views of its memory-mapped pack.

Each case's store and file are read once first, so both sides read from the page cache. Each
run is timed twice over: the call alone, and the call plus reading one byte of every 4 KiB page
of every array (what it costs to actually reach the bytes: lazily mapped pages fault in then).
Figures are medians over the runs, alternating the two readers; throughput is tensor bytes per
second.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from safetensors.numpy import load_file, save_file

import neurstore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = 4096


def touch(tensors):
    """Reads one byte of every page of every array; returns a value so nothing is skipped."""
    total = 0
    for array in tensors.values():
        flat = array.reshape(-1).view(np.uint8)
        total += int(flat[::PAGE].sum(dtype=np.uint64))
    return total


def timed(fn, with_touch):
    start = time.perf_counter()
    out = fn()
    if with_touch:
        touch(out)
    return time.perf_counter() - start


def measure(name, store, model, path, runs):
    readers = {
        "neurstore store.get": lambda: store.get(model),
        "safetensors.numpy.load_file": lambda: load_file(path),
    }
    for fn in readers.values():  # warm the page cache and the store's maps
        touch(fn())
    times = {(r, t): [] for r in readers for t in (False, True)}
    for _ in range(runs):
        for reader, fn in readers.items():
            for with_touch in (False, True):
                times[(reader, with_touch)].append(timed(fn, with_touch))
    tensors = load_file(path)
    raw_bytes = sum(a.nbytes for a in tensors.values())
    info = store.info(model)
    codecs = sorted({t["codec"] for t in info["tensors"]})
    rows = []
    for reader in readers:
        row = {"case": name, "reader": reader, "tensors": len(tensors), "raw_bytes": raw_bytes, "codecs": codecs}
        for with_touch, key in ((False, "call"), (True, "call_and_touch")):
            median = statistics.median(times[(reader, with_touch)])
            row[f"{key}_ms"] = median * 1e3
            row[f"{key}_gb_s"] = raw_bytes / median / 1e9
        rows.append(row)
    ours, theirs = rows
    for key in ("call", "call_and_touch"):
        ours[f"{key}_ratio"] = ours[f"{key}_gb_s"] / theirs[f"{key}_gb_s"]
    return rows


def fetch_minilm():
    out = subprocess.run([os.path.join(ROOT, "scripts", "fetch-minilm.sh")], check=True, capture_output=True, text=True)
    return os.path.join(out.stdout.strip().splitlines()[-1], "model.safetensors")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a safetensors file (default: all-MiniLM-L6-v2)")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    model_path = args.model or fetch_minilm()

    rows = []
    with tempfile.TemporaryDirectory(prefix="neurstore-bench-") as tmp:
        with neurstore.open(os.path.join(tmp, "store")) as store:
            report = store.put("model", model_path)
            rows += measure("MiniLM, stored lossless", store, "model", model_path, args.runs)

            # The same tensor names and sizes, filled with random bit patterns (incompressible).
            rng = np.random.default_rng(0)
            noise = {
                k: rng.integers(0, 256, size=a.nbytes, dtype=np.uint8).view(a.dtype).reshape(a.shape)
                for k, a in load_file(model_path).items()
            }
            noise_path = os.path.join(tmp, "noise.safetensors")
            save_file(noise, noise_path)
            store.put("noise", noise_path, base="none")
            rows += measure("incompressible, stored raw", store, "noise", noise_path, args.runs)

    print(f"model: {model_path} ({report['tensors']} tensors, {report['raw_bytes'] / 1e6:.1f} MB, "
          f"lossless ratio {report['ratio']:.2f})")
    threads = os.environ.get("RAYON_NUM_THREADS", "all")
    print(f"python {platform.python_version()}, numpy {np.__version__}, neurstore {neurstore.__version__}, "
          f"{os.cpu_count()} cpus (neurstore threads: {threads}), median of {args.runs} runs\n")
    header = f"{'case':<28} {'reader':<29} {'stored as':<14} {'call ms':>8} {'GB/s':>6} {'touched ms':>10} {'GB/s':>6} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for r in rows:
        ours = "call_and_touch_ratio" in r
        ratio = f"{r['call_and_touch_ratio']:.2f}x" if ours else ""
        codecs = ",".join(r["codecs"]) if ours else "(file)"
        print(f"{r['case']:<28} {r['reader']:<29} {codecs:<14} {r['call_ms']:>8.1f} "
              f"{r['call_gb_s']:>6.2f} {r['call_and_touch_ms']:>10.1f} {r['call_and_touch_gb_s']:>6.2f} {ratio:>6}")
    print("\nratio: store.get throughput / load_file throughput, call plus touching every page")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": args.runs, "threads": threads, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
