#!/usr/bin/env bash
# One command: install into .venv (and Debian's chromium for the browser test when apt is
# usable), check lint and formatting (ruff, configured in pyproject.toml) and run the whole test
# suite. Extra arguments go to pytest.
REQUIREMENTS=requirements-dev.txt source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[inspect] installing chromium for the browser test"
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "[inspect] chromium not installed: the browser test will skip"
fi
export HF_HUB_OFFLINE=1
echo "[inspect] ruff: lint and format check"
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
exec .venv/bin/python -m pytest "$@"
