#!/usr/bin/env bash
# Set up a virtualenv (.venv) with the project and its test extras, then run the whole test suite.
# Extra arguments go to pytest. PostgreSQL storage tests run when PRIORAUTH_TEST_POSTGRES_URL is set
# (.ci/run starts a server and sets it; `bash .ci/postgres.sh` prints a URL on Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/venv.sh
. scripts/venv.sh
ensure_venv "test"
exec .venv/bin/python -m pytest "$@"
