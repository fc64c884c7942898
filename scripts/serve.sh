#!/usr/bin/env bash
# Set up a virtualenv (.venv) with the project, then serve it under gunicorn on its embedded defaults
# (127.0.0.1:8080, SQLite file $XDG_DATA_HOME/priorauth-cds/priorauth-cds.sqlite3, default
# ~/.local/share/..., no JWT issuers: loopback only).
# Extra arguments go to `priorauth-cds serve` (--host, --port, --workers).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/priorauth-cds serve "$@"
