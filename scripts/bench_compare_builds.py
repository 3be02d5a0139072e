#!/usr/bin/env python3
"""Two builds of the CLI side by side on the same files: put and get times, stored bytes.

Each round puts every file into a fresh store directory, then gets every model back, with one
build and then the other, alternating so that both see the same machine; the medians of the
rounds are compared. Use it to check that a change costs the embedded store nothing.

Usage: scripts/bench_compare_builds.py [--rounds N] [--tolerance T] [--json OUT] OLD_CLI NEW_CLI FILE...
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time


def run(cli, store, *args):
    subprocess.run([cli, "--store", store, *args], check=True, capture_output=True)


def one_round(cli, files, mode_args, work):
    store = os.path.join(work, "store")
    run(cli, store, "init")
    t = time.perf_counter()
    for i, f in enumerate(files):
        run(cli, store, "put", f"m{i}", f, *mode_args)
    put = time.perf_counter() - t
    t = time.perf_counter()
    for i, _ in enumerate(files):
        out = os.path.join(work, f"m{i}.out")
        run(cli, store, "get", f"m{i}", "-o", out)
        os.remove(out)
    get = time.perf_counter() - t
    stats = json.loads(subprocess.run([cli, "--store", store, "stats", "--json"], check=True,
                                      capture_output=True, text=True).stdout)
    shutil.rmtree(store)
    return put, get, stats["stored_bytes"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("files", nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tolerance", type=float)
    ap.add_argument("--json")
    args = ap.parse_args()
    mode_args = [] if args.tolerance is None else ["--tolerance", str(args.tolerance)]
    work = tempfile.mkdtemp(prefix="bench-builds-")
    times = {"old": [], "new": []}
    try:
        for _ in range(args.rounds):
            for which in ("old", "new"):
                times[which].append(one_round(getattr(args, which), args.files, mode_args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {}
    for which, rounds in times.items():
        result[which] = {
            "put_s": statistics.median(r[0] for r in rounds),
            "get_s": statistics.median(r[1] for r in rounds),
            "stored_bytes": rounds[0][2],
        }
    result["put_speed_new_over_old"] = result["old"]["put_s"] / result["new"]["put_s"]
    result["get_speed_new_over_old"] = result["old"]["get_s"] / result["new"]["get_s"]
    raw = sum(os.path.getsize(f) for f in args.files)
    print(f"{len(args.files)} files, {raw / 1e6:.1f} MB, {args.rounds} rounds (medians):")
    for which in ("old", "new"):
        r = result[which]
        print(f"  {which}: put {r['put_s']:.2f} s, get {r['get_s']:.2f} s, stored {r['stored_bytes']} B")
    print(f"  new/old speed: put {result['put_speed_new_over_old']:.3f}x, "
          f"get {result['get_speed_new_over_old']:.3f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
