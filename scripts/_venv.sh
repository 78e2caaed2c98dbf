# Sourced by the scripts: make sure the project's virtual environment exists
# and holds what pyproject.toml asks for, then put it first on PATH.
# Re-installs only when pyproject.toml changed (a stamp holds its hash).
# MEDKV_NO_INSTALL=1 uses the environment as it is and never installs: for an
# environment someone else maintains (the interpreter a test runs under, a
# shared or packaged one), where a pip install from this checkout would be wrong.
set -euo pipefail
MEDKV_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MEDKV_VENV:-$MEDKV_ROOT/.venv}"
_want="$(sha256sum "$MEDKV_ROOT/pyproject.toml" | cut -d' ' -f1)"
_stamp="$VENV/.medkv-installed"
if [ "${MEDKV_NO_INSTALL:-}" = 1 ] && [ ! -x "$VENV/bin/python" ]; then
  echo "medkv: MEDKV_NO_INSTALL=1 but $VENV/bin/python does not exist (MEDKV_VENV)" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "medkv: creating the virtual environment in $VENV" >&2
  PY="${PYTHON:-}"
  if [ -z "$PY" ]; then
    for cand in python3.11 python3 python; do
      if command -v "$cand" >/dev/null 2>&1; then PY="$cand"; break; fi
    done
  fi
  "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || { echo "medkv: Python >= 3.11 is required ($PY is older)" >&2; exit 1; }
  "$PY" -m venv "$VENV"
fi
if [ "${MEDKV_NO_INSTALL:-}" = 1 ]; then
  :
elif [ ! -f "$_stamp" ] || [ "$(cat "$_stamp")" != "$_want" ]; then
  echo "medkv: installing dependencies into $VENV (once per pyproject.toml change)" >&2
  _log="$VENV/pip-install.log"
  if ! "$VENV/bin/python" -m pip install -e "$MEDKV_ROOT[dev]" >"$_log" 2>&1; then
    tail -n 40 "$_log" >&2
    echo "medkv: dependency installation failed (full log: $_log)" >&2
    exit 1
  fi
  echo "$_want" > "$_stamp"
fi
export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$MEDKV_ROOT${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="$VENV/bin/python"
