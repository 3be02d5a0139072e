"""A store inside PostgreSQL, opened from Python by its URL: the same calls as a store directory.

The server comes from NEURSTORE_TEST_POSTGRES (scripts/test.sh starts one); without it the
test skips, except under CI, where it fails.
"""

import glob
import os
import subprocess

import numpy as np
import pytest

import neurstore

URL = os.environ.get("NEURSTORE_TEST_POSTGRES")


def fresh_database(name):
    """A new empty database on the test server, made with the server's own psql."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))
    psql = found[-1] if found else "psql"
    for sql in (f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"):
        subprocess.run([psql, URL, "-qc", sql], check=True)
    return URL.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def pg_url():
    if not URL:
        if os.environ.get("CI"):
            pytest.fail("CI runs the PostgreSQL tests: set NEURSTORE_TEST_POSTGRES")
        pytest.skip("NEURSTORE_TEST_POSTGRES is not set (scripts/postgres.sh up DIR)")
    return fresh_database("ns_python")


def test_a_store_in_postgres_is_used_like_a_directory(pg_url):
    rng = np.random.default_rng(0)
    base = {f"w{i}": rng.standard_normal((64, 64)).astype(np.float32) for i in range(4)}
    tune = {k: v + 1e-3 * rng.standard_normal(v.shape).astype(np.float32) for k, v in base.items()}
    with neurstore.open(pg_url) as store:
        assert store.path == pg_url  # the URL as given (it has no password), not a folded path
        store.put("base", base)
        report = store.put("tune", tune, tolerance=1e-4)
        assert report["delta_tensors"] == 4
        assert [m["name"] for m in store.list()] == ["base", "tune"]
        back = store.get("base")
        for k, v in base.items():
            np.testing.assert_array_equal(back[k], v)
        tuned = store.get("tune")
        for k, v in tune.items():
            assert np.max(np.abs(tuned[k] - v)) <= 1e-4
        assert store.verify()["problems"] == []
        assert store.stats()["models"] == 2
