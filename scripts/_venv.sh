# Shared by run.sh and test.sh: create .venv, install the pinned requirements and this project
# (editable, so `core` imports from anywhere without sys.path tricks) once; re-install only when
# they or pyproject.toml changed (a stamp file holds their hash), so re-running is cheap.
# REQUIREMENTS (default requirements.txt, the runtime set) names the file: test.sh sets
# requirements-dev.txt (the runtime set and the test tools).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[inspect] creating .venv"
  "$PY" -m venv .venv
fi
REQUIREMENTS="${REQUIREMENTS:-requirements.txt}"
STAMP=".venv/.${REQUIREMENTS%.txt}.sha256"
WANT="$(cat requirements.txt "$REQUIREMENTS" pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "[inspect] installing requirements (first time: a few minutes, ~6 GB)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$WANT" > "$STAMP"
fi
