"""Shared stores and careless hands from Python: read_only opens that change nothing, waiting
for another writer, the CLI's option rules, output paths never replaced silently, and symbolic
links out of a model directory refused unless asked for."""

import os
import pathlib
import shutil
import tempfile
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import neurstore

from conftest import write_safetensors


def snapshot(root):
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            out.append((os.path.join(dirpath, name), st.st_size, st.st_mtime_ns))
    return sorted(out)


def test_read_only_is_writable_false_and_changes_nothing(tmp_path):
    path = tmp_path / "s"
    with neurstore.open(path) as store:
        store.put("m", {"w": np.arange(8, dtype=np.float32)})
    before = snapshot(path)
    with neurstore.open(path, read_only=True) as store:
        assert not store.writable
        assert store.get("m")["w"].tolist() == list(range(8))
        assert store.verify()["problems"] == []
        with pytest.raises(neurstore.InvalidInput, match="read-only"):
            store.delete("m")
    assert snapshot(path) == before
    with neurstore.open(path, writable=False) as store:
        assert not store.writable
    with pytest.raises(neurstore.InvalidInput, match="disagree"):
        neurstore.open(path, read_only=True, writable=True)
    with pytest.raises(neurstore.NotFound):
        neurstore.open(tmp_path / "missing", read_only=True)
    assert not (tmp_path / "missing").exists()


def test_wait_waits_for_the_other_writer(tmp_path):
    path = tmp_path / "s"
    holder = neurstore.open(path)
    holder.put("a", {"w": np.ones(4, dtype=np.float32)})
    assert holder.holds_lock
    with neurstore.open(path) as other:
        with pytest.raises(neurstore.Locked, match=f"pid {os.getpid()}"):
            other.put("b", {"w": np.zeros(4, dtype=np.float32)})
    started = time.monotonic()
    with neurstore.open(path, wait=0.2) as other:
        with pytest.raises(neurstore.Locked, match="waited"):
            other.put("b", {"w": np.zeros(4, dtype=np.float32)})
    assert time.monotonic() - started >= 0.2
    threading.Timer(0.3, holder.close).start()
    with neurstore.open(path, wait=True) as other:
        other.put("b", {"w": np.zeros(4, dtype=np.float32)})
        assert [m["name"] for m in other.list()] == ["a", "b"]
    with pytest.raises(neurstore.InvalidInput, match="wait"):
        neurstore.open(path, wait=-1)


def test_tolerance_rules_match_the_cli(store):
    w = {"w": np.array([0.5, -2.0, 1.0], dtype=np.float32)}
    with pytest.raises(neurstore.InvalidInput, match="--force"):
        store.put("m", w, tolerance=2.0)
    assert store.list() == []
    report = store.put("m", w, tolerance=2.0, force=True)
    assert report["max_error"] <= 2.0


def test_export_refuses_to_replace_unless_forced(store, tmp_path):
    store.put("m", {"w": np.ones(4, dtype=np.float32)})
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(neurstore.InvalidInput, match="already exists"):
        store.export("m", out)
    assert out.read_bytes() == b"precious"
    store.export("m", out, force=True)
    assert out.read_bytes() != b"precious"


def test_reports_split_raw_bytes_and_say_fully_deduplicated(store, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    write_safetensors(model / "model.safetensors", {"w": np.ones(4, dtype=np.float32)})
    (model / "vocab.txt").write_bytes(b"x" * 100)
    first = store.put("a", model)
    assert first["raw_bytes"] == first["tensor_bytes"] + first["other_bytes"]
    assert first["tensor_bytes"] == 16 and first["other_bytes"] >= 100
    assert not first["fully_deduplicated"]
    assert store.put("b", model)["fully_deduplicated"]
    listed = store.list()[0]
    assert listed["created"].endswith("Z") and listed["raw_bytes"] == first["raw_bytes"]


def test_links_out_of_a_model_directory_need_follow_symlinks(store, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    write_safetensors(model / "model.safetensors", {"w": np.ones(4, dtype=np.float32)})
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not yours")
    os.symlink(secret, model / "leak.txt")
    with pytest.raises(neurstore.InvalidInput, match="follow-symlinks"):
        store.put("m", model)
    assert store.list() == []
    assert store.put("m", model, follow_symlinks=True)["files"] == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as a second user needs root")
def test_load_as_a_user_who_cannot_write_the_store():
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="neurstore-shared-"))
    if subprocess.run(["id", "nsreader"], capture_output=True).returncode != 0:
        made = subprocess.run(["useradd", "-M", "-r", "-s", "/usr/sbin/nologin", "nsreader"])
        if made.returncode != 0:
            pytest.skip("could not create the user nsreader")
    os.chmod(tmp_path, 0o755)
    path = tmp_path / "s"
    with neurstore.open(path) as store:
        store.put("m", {"w": np.arange(6, dtype=np.float32)})
    before = snapshot(path)
    # The package and numpy from where this interpreter found them; the interpreter itself may
    # sit in a directory only root can enter (pyenv under /root), so the system one is tried too.
    paths = [os.path.dirname(os.path.dirname(m.__file__)) for m in (neurstore, np)]
    script = (
        "import sys, neurstore\n"
        f"s = neurstore.open({str(path)!r}, read_only=True)\n"
        "print(s.get('m')['w'].tolist(), s.stats()['models'])\n"
    )
    run = None
    for python in (sys.executable, "/usr/bin/python3"):
        run = subprocess.run(
            ["runuser", "-u", "nsreader", "--", python, "-c", script],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
        )
        if "Permission denied" not in run.stderr and "No module named" not in run.stderr:
            break
    else:
        pytest.skip(f"the package is not importable as nsreader: {run.stderr.strip()[-200:]}")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["[0.0,", "1.0,", "2.0,", "3.0,", "4.0,", "5.0]", "1"]
    assert snapshot(path) == before
    shutil.rmtree(tmp_path)
