"""One store object serves many threads at once: concurrent reads return the right bytes, reads
run beside a writing thread, and the GIL is released while the store works."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import neurstore


def models():
    rng = np.random.default_rng(0)
    base = {f"w{i}": rng.standard_normal((96, 96)).astype(np.float32) for i in range(4)}
    out = {"base": base}
    out["copy"] = dict(base)
    out["tuned"] = {k: v + np.float32(1e-3) * np.sign(v) for k, v in base.items()}
    out["noise"] = {"n": rng.integers(0, 256, size=1 << 15, dtype=np.uint8)}
    out["ints"] = {"i": np.arange(5000, dtype=np.int64), "b": rng.random(100) > 0.5}
    return out


def test_concurrent_reads_from_threads(store):
    want = models()
    for name, tensors in want.items():
        store.put(name, tensors)
    jobs = [name for _ in range(12) for name in want]

    def read(name):
        got = store.get(name)
        assert list(got) == list(want[name])
        for k, v in want[name].items():
            assert got[k].tobytes() == v.tobytes(), (name, k)
        return name

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert sorted(pool.map(read, jobs)) == sorted(jobs)


def test_reads_beside_a_writing_thread(store):
    want = models()
    store.put("base", want["base"])
    errors = []

    def writer():
        try:
            for i in range(6):
                store.put(f"w{i}", {"x": np.full(4096, i, dtype=np.float32)})
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def reader():
        try:
            for _ in range(20):
                got = store.get("base")
                assert got["w0"].tobytes() == want["base"]["w0"].tobytes()
                store.list()
                store.stats()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list()) == 7
    assert store.verify()["problems"] == []


def test_separate_store_objects_read_concurrently(tmp_path):
    want = models()
    path = tmp_path / "s"
    with neurstore.open(path) as store:
        for name, tensors in want.items():
            store.put(name, tensors)

    def read(name):
        with neurstore.open(path, writable=False) as reader:
            got = reader.get(name)
            return all(got[k].tobytes() == v.tobytes() for k, v in want[name].items())

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(read, list(want) * 3))


def test_gil_is_released_during_put(store):
    rng = np.random.default_rng(1)
    big = {f"w{i}": rng.standard_normal((512, 512)).astype(np.float32) for i in range(8)}
    ticks = 0
    done = threading.Event()

    def count():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0)

    counter = threading.Thread(target=count)
    counter.start()
    try:
        start = ticks
        store.put("big", big, base="none")
        store.verify()
        during = ticks - start
    finally:
        done.set()
        counter.join()
    # With the GIL held throughout, the counting thread could not have run at all.
    assert during > 0
