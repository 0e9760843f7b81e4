# Shared by run.sh and test.sh: create .venv and install requirements.txt once; re-install only
# when requirements.txt changed (a stamp file holds its hash), so re-running is cheap.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[inspect] creating .venv"
  "$PY" -m venv .venv
fi
STAMP=.venv/.requirements.sha256
WANT="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "[inspect] installing requirements (first time: a few minutes, ~6 GB)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
  echo "$WANT" > "$STAMP"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
