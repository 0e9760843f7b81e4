"""The dashboard's logic without Streamlit: what the pages, the CLI and the REST API call.

One module per job:

* :mod:`~core.services.catalog` -- trained and unreadable models, categories, test images, the
  detector cache key, the device summary, training notes;
* :mod:`~core.services.inspection` -- run a model on one image, judge it at any threshold,
  record it in the history, add a DEFECT upload to the similar-defect index, overlay pictures;
* :mod:`~core.services.batch` -- many images: files, folders and globs read in the background,
  judged in batches, one CSV row each (``python -m core inspect`` and the Inspect page's table);
* :mod:`~core.services.history_view` -- the history page's rows, thumbnails and counts;
* :mod:`~core.services.comparison` -- results tables (metrics, per defect type, retrieval) and the
  published reference figures;
* :mod:`~core.services.similar` -- similar-case search, case captions and pictures.

Nothing here imports Streamlit, and importing this package imports no heavy library (torch,
anomalib, qdrant, pandas, plotly): each is imported inside the function that needs it, so a page
that only lists the history never pays for them.
"""

from __future__ import annotations

from core.services import batch, catalog, comparison, history_view, inspection, similar

__all__ = ["batch", "catalog", "comparison", "history_view", "inspection", "similar"]
