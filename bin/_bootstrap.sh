# Sourced by bin/quickstart and bin/test: find Python 3.12+, make .venv, install the
# project (again only when pyproject.toml changed). Sets $PY to the venv's python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

python_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }

find_python() {
  local want candidates=()
  want="$(tr -d '[:space:]' < .python-version 2>/dev/null || echo 3.12)"
  if command -v pyenv >/dev/null 2>&1; then
    candidates+=("$(pyenv root)"/versions/"$want"*/bin/python)
  fi
  candidates+=("$HOME"/.pyenv/versions/"$want"*/bin/python "python$want" python3.13 python3.12 \
               "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python python3)
  for p in "${candidates[@]}"; do
    if [ -x "$p" ] || command -v "$p" >/dev/null 2>&1; then
      if python_ok "$p"; then command -v "$p" 2>/dev/null || echo "$p"; return 0; fi
    fi
  done
  echo "taskengine needs Python 3.12 or newer (see .python-version); none found. Install one (pyenv install 3.12) and retry." >&2
  return 1
}

if [ ! -x .venv/bin/python ] || ! python_ok .venv/bin/python; then
  BASE_PY="$(find_python)"
  echo "==> creating .venv with $BASE_PY ($("$BASE_PY" --version))"
  rm -rf .venv
  "$BASE_PY" -m venv .venv
fi
PY="$ROOT/.venv/bin/python"
stamp=".venv/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "==> installing taskengine and its dependencies into .venv"
  "$PY" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  "$PY" -m pip install -q -e ".[test,bench]" 2>&1 | grep -v "^WARNING: Location" || true
  "$PY" -c "import django, psycopg, django_prometheus, environ, pytest_django, pgqueuer" \
    || { echo "dependency install failed" >&2; exit 1; }
  rm -f .venv/.installed-*
  touch "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
