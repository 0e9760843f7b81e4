"""One process for people and machines: the dashboard (``app.py``) and the REST API under ``/api``.

``streamlit run server.py`` (what ``scripts/run.sh`` does) finds the ``st.App`` below and serves
it with uvicorn: Streamlit's own routes and pages as with ``streamlit run app.py``, and the FastAPI
app of :mod:`core.api` mounted at ``/api`` (``/api/v1/inspect``, ``/api/healthz``, ``/api/docs``).
Pages and API calls then share one process, so

* one model cache: the API loads models through the dashboard's ``st.cache_resource`` loader
  (``pages._common.get_detector``), so a model loaded by either is there for both;
* one embedded Qdrant handle and lock (:func:`core.similarity.indexing.open_store` is per
  process), where two processes would lock each other out of the embedded store.

Settings come from ``.streamlit/config.toml`` and the command line as with ``streamlit run``
(``--server.address``, ``--server.port``). The dashboard's login rule is unchanged; the API's rule
is core.api.security's: with no API key it answers only while the server is bound to loopback.
"""

from __future__ import annotations

import logging
import sys

import streamlit as st
from starlette.routing import Mount

from core.api.app import create_api
from core.api.security import ADD_KEY_COMMAND, keys_configured
from core.auth import is_loopback
from pages import _common as ui

API_PREFIX = "/api"


class _NoContextWarning(logging.Filter):
    """Drop Streamlit's "missing ScriptRunContext" warning: an API thread that loads a model
    through the dashboard's cache has no script run, by design (Streamlit says it can be ignored)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "missing ScriptRunContext" not in record.getMessage()


logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").addFilter(_NoContextWarning())


def _api_host() -> str:
    """The address the server binds to, as the API's access rule needs it (None: all interfaces)."""
    address = st.get_option("server.address") or ""
    if not is_loopback(address) and not keys_configured():
        print(
            f"warning: the API under {API_PREFIX} answers 403 until an API key exists, since this server is "
            f"reachable from the network: `{ADD_KEY_COMMAND}` or set INSPECT_API_KEY",
            file=sys.stderr,
        )
    return address


app = st.App("app.py", routes=[Mount(API_PREFIX, app=create_api(host=_api_host(), load=ui.get_detector))])

if __name__ == "__main__":
    app.run()
