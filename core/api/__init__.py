"""The REST API for line-side clients: :func:`core.api.app.create_api` builds it.

One job per module: ``app`` wires the FastAPI app, ``routes`` holds the endpoints, ``inspecting``
runs an upload through :mod:`core.services.inspection`, ``detectors`` caches the models,
``security`` decides who may call, ``errors`` turns every problem into ``{"error": ...}``,
``middleware`` checks keys and sizes before a body is read, ``schemas`` and ``views`` are the
JSON the endpoints answer, ``server`` is ``python -m core serve``.
"""
