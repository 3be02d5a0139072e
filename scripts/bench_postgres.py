#!/usr/bin/env python3
"""Stores in PostgreSQL against the embedded store and against models kept as bytea rows.

For one family of safetensors files (put in the order given), side by side in one run:
  * bytes: a store directory's stored bytes (packs + catalog), the same models in a store in
    PostgreSQL (every table of the store, with TOAST and indexes: pg_total_relation_size), and
    the files as bytea rows of one table (the paper's "models as BLOBs in the database");
  * speed: put and get of every model through the CLI, embedded and client-side PostgreSQL, and
    reading each file back as a bytea over the same connection kind (COPY ... binary to a file).

Usage:
  scripts/bench_postgres.py [--url URL] [--tolerance T ...] [--json OUT] FILE...
  Without --url a throwaway cluster is started with scripts/postgres.sh in target/postgres-bench.
Needs the release CLI (cargo build --release -p neurstore-cli) and the server's psql.
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(ROOT, "target", "release", "neurstore")


def psql_bin():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))
    return found[-1] if found else "psql"


def psql(url, sql, *extra):
    out = subprocess.run([psql_bin(), url, "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql, *extra],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def fresh_database(url, name):
    psql(url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    psql(url, f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


def ns(store, *args):
    return subprocess.run([CLI, "--store", store, *args], check=True, capture_output=True, text=True).stdout


def timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def schema_bytes(url, schema):
    return int(psql(url, "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                         f"JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '{schema}' "
                         "AND c.relkind IN ('r', 'm')"))


def run_store(store, files, mode_args, out_dir):
    """Puts then gets every file; returns (put seconds, get seconds)."""
    ns(store, "init")
    put = sum(timed(lambda i=i, f=f: ns(store, "put", f"m{i}", f, *mode_args)) for i, f in enumerate(files))
    get = 0.0
    for i, _ in enumerate(files):
        out = os.path.join(out_dir, f"m{i}.safetensors")
        get += timed(lambda i=i, out=out: ns(store, "get", f"m{i}", "-o", out))
        os.remove(out)
    return put, get


def bytea_baseline(url, files, out_dir):
    """The files as rows of one bytea table: (database bytes, insert seconds, select seconds)."""
    db = fresh_database(url, "ns_bench_bytea")
    psql(db, "CREATE TABLE models (name text PRIMARY KEY, data bytea NOT NULL)")
    insert = 0.0
    for i, f in enumerate(files):
        # The client streams the file as one hex literal through COPY (text format).
        with tempfile.NamedTemporaryFile("w", dir=out_dir, suffix=".copy", delete=False) as t:
            with open(f, "rb") as src:
                t.write(f"m{i}\t\\\\x{src.read().hex()}\n")
        insert += timed(lambda t=t: psql(db, f"\\copy models FROM '{t.name}'"))
        os.remove(t.name)
    select = 0.0
    for i, _ in enumerate(files):
        out = os.path.join(out_dir, f"m{i}.bin")
        select += timed(lambda i=i, out=out: psql(
            db, f"\\copy (SELECT data FROM models WHERE name = 'm{i}') TO '{out}' WITH (FORMAT binary)"))
        os.remove(out)
    size = int(psql(db, "SELECT pg_total_relation_size('models')"))
    return size, insert, select


def extension_vs_bytea(url, files, out_dir):
    """The extension's put_bytes / get_bytes against inserting / selecting the same bytea, all
    inside the server (the files are rows of the bytea database already): seconds summed over
    the files, or None where the extension is not installed."""
    db = url.rsplit("/", 1)[0] + "/ns_bench_bytea"
    if psql(db, "SELECT count(*) FROM pg_available_extensions WHERE name = 'neurstore'") == "0":
        return None
    psql(db, "CREATE EXTENSION IF NOT EXISTS neurstore")
    psql(db, "CREATE TABLE IF NOT EXISTS copies (name text PRIMARY KEY, data bytea NOT NULL)")
    t = {"insert_s": 0.0, "put_bytes_s": 0.0, "select_s": 0.0, "get_bytes_s": 0.0}
    for i, _ in enumerate(files):
        t["insert_s"] += timed(lambda i=i: psql(
            db, f"INSERT INTO copies SELECT name, data FROM models WHERE name = 'm{i}'"))
        t["put_bytes_s"] += timed(lambda i=i: psql(
            db, f"SELECT neurstore.put_bytes('m{i}', data) FROM models WHERE name = 'm{i}'"))
    for i, _ in enumerate(files):
        out = os.path.join(out_dir, f"m{i}.bin")
        t["select_s"] += timed(lambda i=i, out=out: psql(
            db, f"\\copy (SELECT data FROM models WHERE name = 'm{i}') TO '{out}' WITH (FORMAT binary)"))
        os.remove(out)
        t["get_bytes_s"] += timed(lambda i=i, out=out: psql(
            db, f"\\copy (SELECT neurstore.get_bytes('m{i}')) TO '{out}' WITH (FORMAT binary)"))
        os.remove(out)
    t["put_bytes_over_insert_speed"] = t["insert_s"] / t["put_bytes_s"]
    t["get_bytes_over_select_speed"] = t["select_s"] / t["get_bytes_s"]
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--url")
    ap.add_argument("--tolerance", type=float, action="append", default=[])
    ap.add_argument("--json")
    args = ap.parse_args()
    if not os.path.exists(CLI):
        sys.exit(f"build the release CLI first: cargo build --release -p neurstore-cli ({CLI})")
    url = args.url or subprocess.run([os.path.join(ROOT, "scripts", "postgres.sh"), "up",
                                      os.path.join(ROOT, "target", "postgres-bench")],
                                     check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    raw = sum(os.path.getsize(f) for f in args.files)
    work = tempfile.mkdtemp(prefix="bench-pg-")
    os.chmod(work, 0o755)
    results = {"files": len(args.files), "raw_bytes": raw, "modes": []}
    try:
        size, insert, select = bytea_baseline(url, args.files, work)
        results["bytea"] = {"database_bytes": size, "insert_s": insert, "select_s": select}
        print(f"{len(args.files)} files, {raw / 1e6:.1f} MB; as bytea rows: {size / 1e6:.1f} MB "
              f"(insert {insert:.2f} s, select {select:.2f} s)")
        ext = extension_vs_bytea(url, args.files, work)
        results["extension"] = ext
        if ext:
            print(f"extension (lossless, inside the server): put_bytes {ext['put_bytes_s']:.2f} s vs "
                  f"INSERT of the bytea {ext['insert_s']:.2f} s ({ext['put_bytes_over_insert_speed']:.2f}x "
                  f"speed); get_bytes {ext['get_bytes_s']:.2f} s vs SELECT {ext['select_s']:.2f} s "
                  f"({ext['get_bytes_over_select_speed']:.2f}x)")
        for tol in [None, *args.tolerance]:
            mode_args = [] if tol is None else ["--tolerance", str(tol)]
            label = "lossless" if tol is None else f"abs {tol:g}"
            store_dir = os.path.join(work, "store")
            e_put, e_get = run_store(store_dir, args.files, mode_args, work)
            embedded = json.loads(ns(store_dir, "stats", "--json"))
            shutil.rmtree(store_dir)
            db = fresh_database(url, "ns_bench_store")
            p_put, p_get = run_store(db, args.files, mode_args, work)
            in_db = schema_bytes(db, "neurstore_data")
            row = {
                "mode": label,
                "embedded_stored_bytes": embedded["stored_bytes"],
                "postgres_database_bytes": in_db,
                "postgres_over_embedded": in_db / embedded["stored_bytes"],
                "bytea_over_postgres": size / in_db,
                "put_s": {"embedded": e_put, "postgres": p_put},
                "get_s": {"embedded": e_get, "postgres": p_get, "bytea_select": select},
                "put_speed_postgres_over_embedded": e_put / p_put,
                "get_speed_postgres_over_embedded": e_get / p_get,
                "get_speed_postgres_over_bytea_select": select / p_get,
            }
            results["modes"].append(row)
            print(f"{label:>10}: embedded {embedded['stored_bytes'] / 1e6:.2f} MB, in PostgreSQL "
                  f"{in_db / 1e6:.2f} MB ({row['postgres_over_embedded']:.3f}x the embedded store; "
                  f"bytea rows {row['bytea_over_postgres']:.2f}x larger); put {p_put:.2f} s vs "
                  f"{e_put:.2f} s embedded ({row['put_speed_postgres_over_embedded']:.2f}x), get "
                  f"{p_get:.2f} s vs {e_get:.2f} s ({row['get_speed_postgres_over_embedded']:.2f}x), "
                  f"bytea select {select:.2f} s ({row['get_speed_postgres_over_bytea_select']:.2f}x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
