#!/usr/bin/env bash
# Set up a virtualenv (.venv) with the project, its test extras (the FHIR server the fallback section runs)
# and the bench extra (matplotlib, for the PNG), then run the benchmark: benchmarks/bench.py, results in
# benchmarks/results/. Extra arguments go to bench.py (--quick, --skip-http, --skip-fallback, --soak N).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
exec .venv/bin/python benchmarks/bench.py "$@"
