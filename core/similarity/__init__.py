"""Similar past cases: descriptor storage and search in Qdrant, and retrieval evaluation.

* :mod:`core.similarity.store` -- the Qdrant store (collection design, embedded vs server);
* :mod:`core.similarity.payload` -- what is stored with each point (:class:`CasePayload`);
* :mod:`core.similarity.indexing` -- filling and searching the store (the pages and the CLI call it);
* :mod:`core.similarity.retrieval_eval` -- precision@k arithmetic, independent of Qdrant.

Import from the modules themselves; this package re-exports nothing, so that importing the
evaluation arithmetic does not import qdrant-client.
"""
