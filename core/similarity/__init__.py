"""Similar past cases: the store (``store``, ``backends``), what it holds (``payload``, ``embeddings``),
filling and measuring it (``indexing``, ``pending``, ``manifest``), ranking (``label_metric``) and
precision@k (``retrieval_eval``). Nothing is re-exported: the arithmetic imports no Qdrant."""
