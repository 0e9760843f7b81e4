"""``python -m core serve``: the API alone under uvicorn, for headless line PCs.

No dashboard, no Streamlit: one process that loads the models it is asked for. With the
embedded Qdrant store it must be the only process using the workspace's store; to run it beside
the dashboard, either use the one-process server (``scripts/run.sh``) or point both at a Qdrant
server with QDRANT_URL.
"""

from __future__ import annotations

# FastAPI and uvicorn are imported in serve(): the CLI reads the defaults below on every command.

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Run the API on ``host``:``port`` until interrupted; refuses an open API beyond loopback."""
    from core.api.security import check_bind

    check_bind(host)
    import uvicorn

    from core.api.app import create_api

    uvicorn.run(create_api(host=host), host=host, port=port, log_level="info", access_log=False)
