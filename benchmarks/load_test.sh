#!/usr/bin/env bash
# Bounded load run: `priorauth-cds serve` on a free loopback port with a temporary SQLite database, then
# `hey` posting one typical order-sign request (an acceptance scenario with prefetch) at a fixed total
# rate for a fixed time. Prints p50/p95/p99 latency and throughput; exits non-zero on any non-200
# answer, any client error (timeout, reset), no answers at all, or throughput below
# LOAD_MIN_RATIO x LOAD_RATE. The server is always stopped (trap), hey is bounded by `timeout`.
#
#   benchmarks/load_test.sh                           # 60 s at 100 req/s
#   LOAD_SECONDS=10 LOAD_RATE=50 benchmarks/load_test.sh
#
# Settings (environment): LOAD_SECONDS (60), LOAD_RATE total req/s (100), LOAD_CONCURRENCY hey workers
# (10; each sends LOAD_RATE/LOAD_CONCURRENCY req/s and waits for its answer), LOAD_WORKERS gunicorn
# workers (2), LOAD_SCENARIO (A-met-generic-with-exemestane), LOAD_MIN_RATIO (0.8), PYTHON (.venv/bin/python).
# Needs `hey` (Debian package; installed with apt-get when missing and running as root).
set -euo pipefail
cd "$(dirname "$0")/.."

LOAD_SECONDS=${LOAD_SECONDS:-60}
LOAD_RATE=${LOAD_RATE:-100}
LOAD_CONCURRENCY=${LOAD_CONCURRENCY:-10}
LOAD_WORKERS=${LOAD_WORKERS:-2}
LOAD_SCENARIO=${LOAD_SCENARIO:-A-met-generic-with-exemestane}
LOAD_MIN_RATIO=${LOAD_MIN_RATIO:-0.8}
PYTHON=${PYTHON:-.venv/bin/python}

if ! command -v hey >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "load_test: installing hey (Debian package)" >&2
  apt-get install -y -qq hey >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && apt-get install -y -qq hey >/dev/null; } || true
fi
if ! command -v hey >/dev/null 2>&1; then
  echo "load_test: hey not found (Debian: apt-get install -y hey)" >&2
  exit 2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/priorauth-load.XXXXXX")
SERVER=""
HEY=""
cleanup() {
  if [ -n "$HEY" ]; then
    kill -TERM "$HEY" 2>/dev/null || true
    wait "$HEY" 2>/dev/null || true
  fi
  if [ -n "$SERVER" ] && kill -0 "$SERVER" 2>/dev/null; then
    kill -TERM "$SERVER" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
server_log_tail() {
  echo "server log (last lines other than per-request records):"
  grep -v '"event":"request"' "$WORK/server.log" | tail -n 20 || true
}
trap 'exit 130' INT TERM

PORT=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT/cds-services/everolimus-order-sign"

# The body: the hook request the acceptance EHR would send for the scenario, prefetch included.
"$PYTHON" - "$LOAD_SCENARIO" >"$WORK/body.json" <<'EOF'
import json, sys
sys.path.insert(0, ".")
from tests.scenarios import request_for, scenario
print(json.dumps(request_for(scenario(sys.argv[1]))))
EOF

env -u CDS_TRUSTED_ISSUERS -u CDS_HOST -u CDS_PORT DATABASE_URL="sqlite:///$WORK/load.sqlite3" CDS_RATE_LIMIT_PER_MINUTE=0 \
  "$PYTHON" -m cds_service serve --host 127.0.0.1 --port "$PORT" --workers "$LOAD_WORKERS" \
  >"$WORK/server.log" 2>&1 &
SERVER=$!

# Up, and answering the body with an evaluation, before the clock starts.
"$PYTHON" - "$URL" "$WORK/body.json" "$SERVER" <<'EOF' || { server_log_tail; exit 1; }
import json, os, sys, time, urllib.error, urllib.request
url, body, pid = sys.argv[1], open(sys.argv[2], "rb").read(), int(sys.argv[3])
deadline = time.monotonic() + 30
while True:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("load_test: server exited during start-up")
    try:
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as answer:
            cards = json.loads(answer.read()).get("cards", [])
        if not any("priorauth-cds.evaluation" in (c.get("extension") or {}) for c in cards):
            sys.exit("load_test: warm-up answer has no evaluation card")
        break
    except urllib.error.HTTPError as error:
        sys.exit(f"load_test: warm-up answered HTTP {error.code}")
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("load_test: server not answering after 30 s")
        time.sleep(0.2)
EOF

PER_WORKER=$("$PYTHON" -c "print($LOAD_RATE / $LOAD_CONCURRENCY)")
echo "load: ${LOAD_SECONDS}s at ${LOAD_RATE} req/s (${LOAD_CONCURRENCY} clients x ${PER_WORKER} req/s)," \
  "${LOAD_WORKERS} gunicorn workers, scenario ${LOAD_SCENARIO}, body $(wc -c <"$WORK/body.json") bytes"
# In the background so that an interrupt is handled at once (bash runs traps only between commands).
timeout --kill-after=10 $((LOAD_SECONDS + 30)) \
  hey -z "${LOAD_SECONDS}s" -c "$LOAD_CONCURRENCY" -q "$PER_WORKER" -t 10 -m POST -T application/json \
  -D "$WORK/body.json" "$URL" >"$WORK/hey.txt" 2>&1 &
HEY=$!
status=0
wait "$HEY" || status=$?
HEY=""
if [ "$status" -ne 0 ]; then
  echo "load_test: hey failed or overran (exit $status)"; cat "$WORK/hey.txt"; exit 1
fi

# Judge hey's summary: percentiles, throughput, status codes, errors.
"$PYTHON" - "$WORK/hey.txt" "$LOAD_RATE" "$LOAD_MIN_RATIO" <<'EOF' || { server_log_tail; exit 1; }
import re, sys
text = open(sys.argv[1]).read()
rate, min_ratio = float(sys.argv[2]), float(sys.argv[3])
percentiles = {int(p): float(s) * 1000 for p, s in re.findall(r"^\s+(\d+)% in ([\d.]+) secs", text, re.M)}
statuses = {int(c): int(n) for c, n in re.findall(r"^\s+\[(\d{3})\]\s+(\d+) responses", text, re.M)}
error_part = text.split("Error distribution:", 1)[1] if "Error distribution:" in text else ""
errors = re.findall(r"^\s+\[(\d+)\]\s+(.+)$", error_part, re.M)
throughput = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
answered = sum(statuses.values())
print(f"responses: {answered}  status codes: {statuses or '{}'}  errors: {sum(int(n) for n, _ in errors)}")
if percentiles:
    p50, p95, p99 = (percentiles.get(p, 0.0) for p in (50, 95, 99))
    print(f"latency ms: p50 {p50:.1f}  p95 {p95:.1f}  p99 {p99:.1f}")
print(f"throughput: {throughput:.1f} req/s (target {rate:g})")
failures = []
if answered == 0:
    failures.append("no responses")
if any(code != 200 for code in statuses):
    failures.append(f"non-200 answers: { {c: n for c, n in statuses.items() if c != 200} }")
for count, message in errors:
    failures.append(f"{count} client errors: {message[:200]}")
if throughput < min_ratio * rate:
    failures.append(f"throughput {throughput:.1f} req/s below {min_ratio:g} x {rate:g}")
for failure in failures:
    print(f"FAIL: {failure}")
sys.exit(1 if failures else 0)
EOF
echo "load: OK"
