#!/usr/bin/env python3
"""ZipNN against the store on the same files, side by side in one run.

Usage: scripts/bench_zipnn.py [--repeat N] [--threads 1,2] [--json OUT] [--bench BIN]

1. Gets all-MiniLM-L6-v2 (scripts/fetch-minilm.sh) and its bf16 copy (scripts/make-bf16.py)
   under data/.
2. Creates data/venv-zipnn and installs zipnn there from PyPI with `--no-deps` plus numpy, the
   one dependency its byte path uses. zipnn declares torch and safetensors as dependencies
   (PyPI's torch pulls ~5 GB of CUDA wheels) but imports them at module level only for dtype
   names and its tensor paths; for byte input, small stand-in modules (written to
   data/venv-zipnn/stubs, raising if ever called) take their place. Compression output is
   checked byte for byte after every round trip, so a stand-in could not go unnoticed.
3. For each file and each thread count: ZipNN's ratio and its in-process compress and
   decompress speed (median of N; `compress` rewrites its input buffer in place, so each round
   gets a fresh copy made outside the timed region); the store's lossless ratio and its
   put/get speed from `neurstore-bench io`; and the store's tensor codec alone, in process,
   from `neurstore-entropy` (like for like with ZipNN's calls), with RAYON_NUM_THREADS set to
   the same count. Speeds are given over wall time and over the process's CPU time.
4. Prints a table and writes JSON (default target/bench-zipnn.json).

The store's put and get are whole operations (put: parse, hash, encode, write and fsync the
packs, commit the catalog; get: read, checksum, decode, write the file), so they do more work
than ZipNN's in-memory calls; the ratio column is like for like (the store's includes its
catalog). Build the benchmark first: cargo build --release -p neurstore-bench.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data")
VENV = os.path.join(DATA, "venv-zipnn")
STUBS = os.path.join(VENV, "stubs")
ZIPNN_VERSION = "0.5.4"

TORCH_STUB = '''"""Stand-in for torch: zipnn reads dtype names from it at import; byte input never calls it."""


class _Name:
    def __init__(self, name):
        self._name = name

    def __repr__(self):
        return "torch." + self._name

    def __call__(self, *args, **kwargs):
        raise RuntimeError("torch stand-in called: torch." + self._name)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Name(self._name + "." + name)


class jit:
    @staticmethod
    def script(fn):
        return fn


__version__ = "0.0.0"
_names = {}


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _names.setdefault(name, _Name(name))
'''

SAFETENSORS_STUB = '''"""Stand-in for safetensors.torch: zipnn imports safe_open; byte input never calls it."""


def safe_open(*args, **kwargs):
    raise RuntimeError("safetensors stand-in called")
'''

# Runs inside the venv: measures ZipNN on one file, prints one JSON line.
ZIPNN_PROBE = r'''
import json, statistics, sys, time
from zipnn import ZipNN

path, dtype, threads, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
original = open(path, "rb").read()
comp, decomp, comp_cpu, decomp_cpu, size = [], [], [], [], None
for _ in range(repeat + 1):  # the first round is a warm-up
    data = bytearray(original)  # compress rewrites its input in place
    z = ZipNN(input_format="byte", bytearray_dtype=dtype, threads=threads)
    t, c = time.perf_counter(), time.process_time()
    packed = z.compress(data)
    comp.append(time.perf_counter() - t)
    comp_cpu.append(time.process_time() - c)
    z = ZipNN(input_format="byte", bytearray_dtype=dtype, threads=threads)
    t, c = time.perf_counter(), time.process_time()
    back = z.decompress(packed)
    decomp.append(time.perf_counter() - t)
    decomp_cpu.append(time.process_time() - c)
    if bytes(back) != original:
        sys.exit("ZipNN round trip differs")
    size = len(packed)
n = len(original)
print(json.dumps({
    "bytes": n, "compressed": size, "ratio": n / size,
    "compress_mb_s": n / statistics.median(comp[1:]) / 1e6,
    "decompress_mb_s": n / statistics.median(decomp[1:]) / 1e6,
    "compress_cpu_mb_s": n / statistics.median(comp_cpu[1:]) / 1e6,
    "decompress_cpu_mb_s": n / statistics.median(decomp_cpu[1:]) / 1e6,
}))
'''


def run(cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, **kw)


def ensure_models():
    model_dir = run([os.path.join(ROOT, "scripts", "fetch-minilm.sh")],
                    capture_output=True, text=True).stdout.strip().splitlines()[-1]
    fp32 = os.path.join(model_dir, "model.safetensors")
    bf16 = os.path.join(DATA, "all-MiniLM-L6-v2-bf16.safetensors")
    if not os.path.exists(bf16):
        run([sys.executable, os.path.join(ROOT, "scripts", "make-bf16.py"), fp32, bf16])
    return [(fp32, "float32"), (bf16, "bfloat16")]


def ensure_venv():
    python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(python):
        run([sys.executable, "-m", "venv", VENV])
    probe = run([python, "-m", "pip", "show", "zipnn"], capture_output=True, text=True,
                check=False)
    if f"Version: {ZIPNN_VERSION}" not in probe.stdout:
        run([python, "-m", "pip", "install", "--quiet", "--no-deps", f"zipnn=={ZIPNN_VERSION}"])
        run([python, "-m", "pip", "install", "--quiet", "numpy"])
    os.makedirs(os.path.join(STUBS, "torch"), exist_ok=True)
    os.makedirs(os.path.join(STUBS, "safetensors"), exist_ok=True)
    for rel, text in [("torch/__init__.py", TORCH_STUB), ("safetensors/__init__.py", ""),
                      ("safetensors/torch.py", SAFETENSORS_STUB)]:
        with open(os.path.join(STUBS, rel), "w") as f:
            f.write(text)
    return python


def zipnn_measure(python, path, dtype, threads, repeat):
    env = dict(os.environ, PYTHONPATH=STUBS)
    out = run([python, "-c", ZIPNN_PROBE, path, dtype, str(threads), str(repeat)],
              capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def store_measure(bench, path, threads, repeat):
    with tempfile.TemporaryDirectory(prefix="bench-zipnn-") as tmp:
        out = os.path.join(tmp, "io.json")
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        run([bench, "io", "--model", path, "--repeat", str(repeat), "--json", out],
            env=env, stdout=subprocess.DEVNULL)
        with open(out) as f:
            result = json.load(f)["results"][0]
    ops = {o["op"]: o for o in result["ops"]}
    c = result["compression"]
    return {
        "ratio": c["ratio_with_catalog"],
        "codec_ratio": c["codec_ratio"],
        "put_mb_s": ops["put"]["bytes_per_s"] / 1e6,
        "get_mb_s": ops["get"]["bytes_per_s"] / 1e6,
        "others_cpu_share": result.get("others_cpu_share"),
    }


def codec_measure(entropy_bin, path, threads, repeat):
    """The store's tensor codec alone (encode_tensor / decode), from neurstore-entropy."""
    with tempfile.TemporaryDirectory(prefix="bench-zipnn-") as tmp:
        out = os.path.join(tmp, "entropy.json")
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        run([entropy_bin, "--model", path, "--codec-only", "--repeat", str(repeat),
             "--json", out], env=env, stdout=subprocess.DEVNULL)
        with open(out) as f:
            w = json.load(f)["tensor_codec"][0]
    return {
        "ratio": w["raw_bytes"] / w["stored_bytes"],
        "encode_mb_s": w["encode"]["wall_mb_s"],
        "decode_mb_s": w["decode"]["wall_mb_s"],
        "encode_cpu_mb_s": w["encode"]["cpu_mb_s"],
        "decode_cpu_mb_s": w["decode"]["cpu_mb_s"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--json", default=os.path.join(ROOT, "target", "bench-zipnn.json"))
    ap.add_argument("--bench", default=os.path.join(ROOT, "target", "release", "neurstore-bench"))
    args = ap.parse_args()
    if not os.path.exists(args.bench):
        sys.exit(f"{args.bench} missing: cargo build --release -p neurstore-bench")
    entropy_bin = os.path.join(os.path.dirname(args.bench), "neurstore-entropy")
    models = ensure_models()
    python = ensure_venv()
    rows = []
    for path, dtype in models:
        for threads in [int(t) for t in args.threads.split(",")]:
            z = zipnn_measure(python, path, dtype, threads, args.repeat)
            s = store_measure(args.bench, path, threads, args.repeat)
            c = codec_measure(entropy_bin, path, threads, args.repeat)
            rows.append({"file": os.path.basename(path), "dtype": dtype, "threads": threads,
                         "zipnn": z, "store": s, "codec": c})
            print(f"measured {os.path.basename(path)} threads={threads}", file=sys.stderr)

    print(f"{'file':<36} {'thr':>3} {'ZipNN':>7} {'store':>7} {'codec':>7} | wall MB/s: "
          f"{'Z comp':>6} {'enc':>6} {'put':>5} {'Z dec':>6} {'dec':>6} {'get':>5} | per CPU-s: "
          f"{'Z comp':>6} {'enc':>6} {'Z dec':>6} {'dec':>6}")
    for r in rows:
        z, s, c = r["zipnn"], r["store"], r["codec"]
        print(f"{r['file']:<36} {r['threads']:>3} {z['ratio']:>6.3f}x {s['ratio']:>6.3f}x "
              f"{c['ratio']:>6.3f}x |            {z['compress_mb_s']:>6.0f} "
              f"{c['encode_mb_s']:>6.0f} {s['put_mb_s']:>5.0f} {z['decompress_mb_s']:>6.0f} "
              f"{c['decode_mb_s']:>6.0f} {s['get_mb_s']:>5.0f} |            "
              f"{z['compress_cpu_mb_s']:>6.0f} {c['encode_cpu_mb_s']:>6.0f} "
              f"{z['decompress_cpu_mb_s']:>6.0f} {c['decode_cpu_mb_s']:>6.0f}")
    print("ratios: raw / stored (store: packs + catalog; codec: the tensor codec alone). "
          "MB/s of the file (codec: of tensor bytes), medians; Z = ZipNN in process; enc/dec = "
          "the store's tensor codec in process; put/get = whole store operations (fsync, "
          "checksums, catalog, files). Per CPU-s = over the process's CPU time, all threads: "
          "robust to other load on a shared machine.")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"zipnn_version": ZIPNN_VERSION, "repeat": args.repeat, "rows": rows}, f,
                  indent=2)
    print(f"JSON written to {args.json}")


if __name__ == "__main__":
    main()
