#!/usr/bin/env bash
# One command: install into .venv, prepare the embedded default (demo data, trained PatchCore
# models, results, similarity index; reused when already built) and start the app.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
.venv/bin/python -m core setup
exec .venv/bin/python -m streamlit run app.py "$@"
