"""Similar past cases ranked with what the gallery's own labels teach (a metric learned from them).

The ``defect`` descriptor finds defects well but mixes their types; yet every dataset image, and
every case an inspector has named, carries its label and defect type. Linear discriminant analysis
(eigen solver, Ledoit-Wolf shrinkage: fine with 152-d features and a few cases per type) finds the
directions that separate "good" and each defect type, and a candidate scores
``MIX * cos(LDA(query), LDA(candidate)) + (1 - MIX) * cos(query, candidate)``. Used only where the
gallery can teach it (``MIN_TYPES`` types with ``MIN_PER_TYPE`` named cases each); ``MIX`` comes from
a leave-one-out sweep (docs/similar-defects.md). Only the store's ``POOL`` nearest candidates are
re-ranked; the fit reads at most ``MAX_PER_CLASS`` cases a class, is cached per collection and redone
when the collection changed. The evaluation ranks each query by a fit without it (``leave_one_out``).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from core.data.layout import ANOMALOUS, GOOD
from core.similarity.payload import INSPECTED
from core.similarity.store import Hit, SimilarityStore
from core.similarity.store import point_id as id_of_hash

#: Weight of the learned (LDA) cosine; the rest is the descriptor's own cosine.
MIX = 0.87
#: Candidates the store returns for re-ranking (all of them in a gallery this small or smaller).
POOL = 500
#: The fit uses at most this many cases per class, and defects of all types together (the first
#: by point id: deterministic).
MAX_PER_CLASS = 500
MAX_DEFECTS = 5000
#: Points read per label at most while looking for named cases.
MAX_SCAN = 20_000
#: Named defect types, and cases of each, needed before the labels may reorder anything.
MIN_TYPES = 2
MIN_PER_TYPE = 2
#: Refit once the collection has this much more (or fewer) points than at the last fit; the count
#: is checked at most every ``CHECK_EVERY_S``.
REFIT_GROWTH = 0.05
CHECK_EVERY_S = 10.0


@dataclass(frozen=True)
class Labelled:
    """The labelled cases of one collection that the metric is fitted on."""

    ids: tuple[str, ...]
    vectors: np.ndarray  # n x d, unit rows
    classes: tuple[str, ...]  # "good" or the defect type

    def usable(self) -> bool:
        """Whether there are enough named defect types to learn anything from."""
        return sum(n >= MIN_PER_TYPE for c, n in Counter(self.classes).items() if c != GOOD) >= MIN_TYPES


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def case_class(payload: dict[str, Any]) -> str | None:
    """The class a stored case teaches: "good", its named defect type, or None (not named)."""
    if payload.get("label") == GOOD:
        return GOOD
    dtype = str(payload.get("defect_type") or "")
    if payload.get("label") == ANOMALOUS and dtype and dtype not in (GOOD, INSPECTED):
        return dtype
    return None


def labelled_points(store: SimilarityStore, model: str, category: str, using: str) -> Labelled:
    """The named cases of a collection with their vectors: at most ``MAX_PER_CLASS`` goods and
    ``MAX_DEFECTS`` defects, read in point-id order, which is a hash of the image (uuid5): a
    fixed, effectively random sample. The reads stop there, so a fit costs the same at 10k and 1M
    points."""
    ids, vectors, classes, per_class = [], [], [], Counter()
    for label, cap in ((GOOD, MAX_PER_CLASS), (ANOMALOUS, MAX_DEFECTS)):
        taken = 0
        for scanned, rec in enumerate(store.points(model, category, label=label, with_vectors=True, batch=256)):
            if taken >= cap or scanned >= MAX_SCAN:  # many unnamed uploads must not make it a full scan
                break
            cls = case_class(rec.payload)
            if cls is None or per_class[cls] >= MAX_PER_CLASS or using not in (rec.vectors or {}):
                continue
            per_class[cls] += 1
            taken += 1
            ids.append(rec.id)
            vectors.append(np.asarray(rec.vectors[using], dtype=np.float64))
            classes.append(cls)
    matrix = _unit(np.stack(vectors)) if vectors else np.zeros((0, 0))
    return Labelled(ids=tuple(ids), vectors=matrix, classes=tuple(classes))


def fit(labelled: Labelled, exclude_id: str | None = None) -> LinearDiscriminantAnalysis | None:
    """The LDA projection of the labelled cases (without ``exclude_id``), or None if too few."""
    keep = [i for i, pid in enumerate(labelled.ids) if pid != exclude_id]
    classes = tuple(labelled.classes[i] for i in keep)
    subset = Labelled(tuple(labelled.ids[i] for i in keep), labelled.vectors[keep] if keep else labelled.vectors[:0], classes)
    if not subset.usable():
        return None
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto")
    with warnings.catch_warnings():  # collinear features are expected: shrinkage handles them
        warnings.simplefilter("ignore")
        try:
            lda.fit(subset.vectors, np.asarray(subset.classes))
        except (np.linalg.LinAlgError, ValueError):  # degenerate cases (e.g. identical vectors): plain order
            return None
    return lda


def mixed_scores(lda: LinearDiscriminantAnalysis, query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """``MIX`` x cosine in the learned space + (1 - ``MIX``) x the descriptor's cosine."""
    q, c = _unit(query[None, :]), _unit(candidates)
    zq, zc = _unit(lda.transform(q)), _unit(lda.transform(c))
    return MIX * (zc @ zq[0]) + (1.0 - MIX) * (c @ q[0])


@dataclass
class _Fitted:
    count: int
    labelled: Labelled
    lda: LinearDiscriminantAnalysis | None
    checked: float  # time.monotonic() of the last count check


_cache: dict[tuple[str, str, str, str], _Fitted] = {}
_cache_lock = threading.Lock()


def _still_current(store: SimilarityStore, model: str, category: str, using: str, entry: _Fitted, count: int) -> bool:
    """Whether the collection (now ``count`` points) is still the one fitted: about as many points,
    and its first fitted case unchanged. A retrained model re-indexed by another process
    (``python -m core index``) keeps the point ids and count of the same images but not their vectors."""
    if abs(count - entry.count) > REFIT_GROWTH * max(entry.count, 1):
        return False
    if not entry.labelled.ids:
        return True
    found = store.get(model, category, [entry.labelled.ids[0]], with_vectors=True)
    if not found or using not in (found[0].vectors or {}):
        return False
    return bool(np.allclose(_unit(np.asarray(found[0].vectors[using])[None, :])[0], entry.labelled.vectors[0], atol=1e-5))


def _fitted(store: SimilarityStore, model: str, category: str, using: str) -> _Fitted:
    """The collection's cached fit, refitted when the collection has changed (see
    :func:`_still_current`, checked at most every ``CHECK_EVERY_S``)."""
    key = (store.location, model, category, using)
    now = time.monotonic()
    with _cache_lock:
        entry = _cache.get(key)
        if entry is not None and now - entry.checked < CHECK_EVERY_S:
            return entry
    count = store.count(model, category)  # an exact count: milliseconds at 100k points, so not per query
    if entry is not None and _still_current(store, model, category, using, entry, count):
        with _cache_lock:
            entry.checked = now
        return entry
    labelled = labelled_points(store, model, category, using)
    entry = _Fitted(count=count, labelled=labelled, lda=fit(labelled), checked=now)
    with _cache_lock:
        _cache[key] = entry
    return entry


def forget() -> None:
    """Drop every cached fit (a re-index, a test)."""
    with _cache_lock:
        _cache.clear()


def similar(
    store: SimilarityStore,
    model: str,
    category: str,
    *,
    vector: np.ndarray | None = None,
    point_id: str | None = None,
    using: str = "defect",
    k: int = 5,
    exclude_sha256: str | None = None,
    leave_one_out: bool = False,
    **filters: Any,
) -> list[Hit]:
    """:meth:`SimilarityStore.similar`, re-ranked by the learned metric where the gallery allows.

    Hits carry Qdrant's payloads; their ``score`` is the mixed score when re-ranked (else Qdrant's
    cosine). The query is never returned. ``leave_one_out``: a query that is itself one of the
    fitted cases is ranked by a fit without it (a refit: tens of milliseconds), so its own label
    cannot help find its type; the evaluation asks for it. The app does not: there a past case's
    label is known, and using it is fair.
    """
    query = {"vector": vector, "point_id": point_id, "using": using, "exclude_sha256": exclude_sha256, **filters}
    entry = _fitted(store, model, category, using)
    self_id = point_id or (id_of_hash(exclude_sha256, model, category) if exclude_sha256 else None)
    lda = entry.lda
    if leave_one_out and lda is not None and self_id in set(entry.labelled.ids):
        lda = fit(entry.labelled, exclude_id=self_id)
    if lda is None:
        return store.similar(model, category, k=k, **query)
    # the pool without payloads (converting them costs more than the search): the k kept read theirs
    pool = store.similar(model, category, k=max(k, POOL), with_vector=True, with_payload=False, **query)
    pool = [h for h in pool if h.vector is not None]
    if not pool:
        return []
    if vector is None:
        stored = store.get(model, category, [str(point_id)], with_vectors=True)
        vector = np.asarray(stored[0].vectors[using], dtype=np.float64)
    scores = mixed_scores(lda, np.asarray(vector, dtype=np.float64), np.stack([h.vector for h in pool]))
    order = np.argsort(-scores, kind="stable")[:k]
    payloads = {r.id: r.payload for r in store.get(model, category, [pool[i].id for i in order])}
    return [Hit(id=pool[i].id, score=float(scores[i]), payload=payloads.get(pool[i].id, {})) for i in order]


def ranks_with_labels(store: SimilarityStore, model: str, category: str, using: str = "defect") -> bool:
    """Whether :func:`similar` re-ranks this collection (the page says which ranking it shows)."""
    return _fitted(store, model, category, using).lda is not None
