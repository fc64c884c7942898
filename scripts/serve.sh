#!/usr/bin/env bash
# Set up a virtualenv (.venv) with the project, then serve it under gunicorn on its embedded defaults
# (127.0.0.1:8080, SQLite file $XDG_DATA_HOME/priorauth-cds/priorauth-cds.sqlite3, default
# ~/.local/share/..., no JWT issuers: loopback only).
# Extra arguments go to `priorauth-cds serve` (--host, --port, --workers).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/venv.sh
. scripts/venv.sh
ensure_venv ""
exec .venv/bin/priorauth-cds serve "$@"
