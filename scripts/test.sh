#!/usr/bin/env bash
# The whole test suite: unit, property, integration and doc tests of every crate, then the
# Python package's tests (tests/python), run against a fresh build of it in .venv.
#
# The virtual environment is made once and reused; PYTHON picks the interpreter (default python3).
#
# The tests of stores in PostgreSQL run against a real server: NEURSTORE_TEST_POSTGRES (its
# URL) and NEURSTORE_TEST_POSTGRES_DIR (its cluster directory) name one; when they are unset,
# a throwaway cluster is started in target/postgres-test with scripts/postgres.sh (installing
# PostgreSQL when run as root) and stopped at the end. Where none can be had, those tests skip,
# except under CI (`CI` set), where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${NEURSTORE_TEST_POSTGRES:-}" ]]; then
    pgdir="$PWD/target/postgres-test"
    if url=$(scripts/postgres.sh up "$pgdir" | tail -n 1) && [[ -n "$url" ]]; then
        export NEURSTORE_TEST_POSTGRES="$url" NEURSTORE_TEST_POSTGRES_DIR="$pgdir"
        trap 'scripts/postgres.sh down "$pgdir"' EXIT
    else
        echo "warning: no PostgreSQL server; the tests of stores in PostgreSQL will skip" >&2
    fi
fi

cargo test --workspace --locked "$@"

echo "== Python package"
venv="$PWD/.venv"
if [[ ! -x "$venv/bin/python" ]]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check --quiet)
"${pip[@]}" install "maturin>=1.7,<2" numpy pytest
# Optional dependencies: with them the tests also cover bfloat16/float8 as real dtypes and the
# comparison with safetensors; without them those tests fall back or skip.
"${pip[@]}" install ml_dtypes safetensors ||
    echo "warning: ml_dtypes/safetensors did not install; their tests will skip" >&2
VIRTUAL_ENV="$venv" "$venv/bin/maturin" develop --release --quiet -m crates/neurstore-py/Cargo.toml

status=0
"$venv/bin/python" -m pytest tests/python -q || status=$?
if [[ $status -eq 5 ]]; then
    echo "error: pytest collected no tests in tests/python" >&2
    exit 1
fi
exit "$status"
