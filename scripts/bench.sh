#!/usr/bin/env bash
# Set up a virtualenv (.venv) with the project, its test extras (the FHIR server the fallback section runs)
# and the bench extra (matplotlib, for the PNG), then run the benchmark: benchmarks/bench.py, results in
# benchmarks/results/. Extra arguments go to bench.py (--quick, --skip-http, --skip-fallback, --soak N).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/venv.sh
. scripts/venv.sh
ensure_venv "test,bench"
exec .venv/bin/python benchmarks/bench.py "$@"
