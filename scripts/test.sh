#!/usr/bin/env bash
# The whole test suite: unit, property, integration and doc tests of every crate, then the
# Python package's tests (tests/python), run against a fresh build of it in .venv.
#
# The virtual environment is made once and reused; PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
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
