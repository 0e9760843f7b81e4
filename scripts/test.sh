#!/usr/bin/env bash
# One command: install into .venv (and, when apt is usable, Debian's chromium for the browser
# test and PostgreSQL for the database tests, started for the run and stopped after it), check lint
# and formatting (ruff, configured in pyproject.toml) and run the whole test suite. Extra
# arguments go to pytest.
REQUIREMENTS=requirements-dev.txt source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[inspect] installing chromium for the browser test"
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "[inspect] chromium not installed: the browser test will skip"
fi
export HF_HUB_OFFLINE=1
echo "[inspect] ruff: lint and format check"
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
source "$(dirname "${BASH_SOURCE[0]}")/_postgres.sh"
rc=0
.venv/bin/python -m pytest "$@" || rc=$?
if declare -F _stop_postgres >/dev/null; then _stop_postgres; fi
exit $rc
