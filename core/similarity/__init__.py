"""Similar past cases: descriptor storage and search in Qdrant, and retrieval evaluation.

* :mod:`core.similarity.store` -- the Qdrant store (collection design, embedded vs server);
* :mod:`core.similarity.retrieval_eval` -- precision@k arithmetic, independent of Qdrant.

Names are re-exported lazily so that importing the evaluation module does not import qdrant-client.
"""

from __future__ import annotations

import importlib
from typing import Any

_STORE_NAMES = (
    "LABELS",
    "VECTOR_NAMES",
    "Hit",
    "Record",
    "SimilarityStore",
    "collection_name",
    "is_embedded",
    "make_record",
    "open_client",
    "point_id",
    "sha256_of",
)
_EVAL_NAMES = ("EvalItem", "evaluate_retrieval", "neighbours_from_store", "precision_at_k")

__all__ = [*_STORE_NAMES, *_EVAL_NAMES]


def __getattr__(name: str) -> Any:
    if name in _STORE_NAMES:
        return getattr(importlib.import_module("core.similarity.store"), name)
    if name in _EVAL_NAMES:
        return getattr(importlib.import_module("core.similarity.retrieval_eval"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
