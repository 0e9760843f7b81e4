#!/usr/bin/env bash
# One command: install into .venv, prepare the embedded default (demo data, trained PatchCore
# models, results, similarity index; reused when already built) and start the app.
# The app listens on 127.0.0.1 only (.streamlit/config.toml). Extra arguments go to Streamlit, e.g.
# `bash scripts/run.sh --server.address 0.0.0.0` serves the network, with a login required
# (create users first: `python -m core users add NAME --role engineer`).
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
.venv/bin/python -m core setup
exec .venv/bin/python -m streamlit run app.py "$@"
