# Sourced by serve.sh, test.sh and bench.sh: create .venv on first use and (re)install the project only when pyproject.toml
# changed since the last successful install of the same extras, so a complete .venv starts without a package index.
# Usage: ensure_venv EXTRAS   (EXTRAS: "" for the service alone, "test" or "test,bench" for extras)
ensure_venv() {
  local extras=$1 spec=. stamp digest
  PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  if [ -n "$extras" ]; then spec=".[$extras]"; fi
  stamp=".venv/.priorauth-installed-${extras:-base}"
  digest=$(.venv/bin/python -c 'import hashlib,sys; print(hashlib.sha256(open("pyproject.toml","rb").read()).hexdigest())')
  if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
    echo "$digest" >"$stamp"
    # the extras include the service itself
    if [ -n "$extras" ]; then echo "$digest" >.venv/.priorauth-installed-base; fi
  fi
}
