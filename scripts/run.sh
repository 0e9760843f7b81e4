#!/usr/bin/env bash
# One command: install into .venv, prepare the embedded default (demo data, trained PatchCore
# models, results, similarity index; reused when already built) and start ONE server that serves
# the dashboard and the REST API under /api (server.py: pages and API share the loaded models and
# the embedded Qdrant store). It listens on 127.0.0.1 only (.streamlit/config.toml). Extra
# arguments go to Streamlit, e.g. `bash scripts/run.sh --server.address 0.0.0.0` serves the
# network, with a login required for the dashboard (create users first: `python -m core users add
# NAME --role engineer`) and an API key for the API (`python -m core users add-key NAME --role
# inspector`, or INSPECT_API_KEY). The dashboard alone: `streamlit run app.py`; the API alone:
# `python -m core serve`.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
.venv/bin/python -m core setup
# EfficientAD for the demo categories, in the background at low priority (one at a time, resumed
# where it stopped; the Compare page shows its bars as each lands). INSPECT_AUTOTRAIN=0 skips it.
[ "${INSPECT_AUTOTRAIN:-1}" = 0 ] || .venv/bin/python -m core autotrain --background || true
exec .venv/bin/python -m streamlit run server.py "$@"
