"""How useful are the "similar past cases"? Precision@k of the neighbours of anomalous images.

Each anomalous image (the query) gets its ``k`` nearest neighbours among the *other* images of its
category (leave-one-out), and two shares are averaged over the queries, per descriptor: neighbours
that are anomalous too, and neighbours of the query's defect type. Each is reported beside
*chance*, what ``k`` random other images of the category would score on average. Precision@k
divides by ``k`` even when fewer neighbours came back: missing ones count as misses. Plain Python
over labels, no Qdrant: :func:`neighbours_from_store` adapts a store's search.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.data.layout import ANOMALOUS
from core.similarity.payload import DESCRIPTORS, CasePayload


@dataclass(frozen=True)
class EvalItem:
    """One indexed image as the evaluation sees it."""

    id: str
    label: str  # "good" or "anomalous"
    defect_type: str  # MVTec: "good" for normal images, else the defect folder name
    category: str = ""

    @classmethod
    def from_payload(cls, id: str, payload: Mapping[str, Any] | CasePayload) -> EvalItem:
        case = payload if isinstance(payload, CasePayload) else CasePayload.from_dict(payload)
        return cls(id=str(id), label=case.label, defect_type=case.defect_type, category=case.category)


#: (query item, descriptor name, k) -> neighbours, best first. A neighbour is an
#: :class:`EvalItem`, a mapping with "label"/"defect_type" (and optionally "id", "category"), or
#: an object with ``id`` and a ``payload`` mapping (a store ``Hit``).
NeighboursFn = Callable[[EvalItem, str, int], Iterable[Any]]


def precision_at_k(query_labels: Sequence[Hashable], neighbour_labels_lists: Sequence[Sequence[Hashable]], k: int) -> float:
    """Mean over queries of (neighbours among the first ``k`` whose label equals the query's) / ``k``.

    NaN when there are no queries.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    if len(query_labels) != len(neighbour_labels_lists):
        raise ValueError(f"{len(query_labels)} query labels but {len(neighbour_labels_lists)} neighbour lists")
    if not query_labels:
        return math.nan
    total = 0.0
    for query, neighbours in zip(query_labels, neighbour_labels_lists, strict=True):
        total += sum(1 for label in list(neighbours)[:k] if label == query) / k
    return total / len(query_labels)


def _fields(neighbour: Any) -> tuple[str | None, str, str, str | None]:
    """(id, label, defect_type, category) of a neighbour in any of the accepted shapes."""
    if isinstance(neighbour, Mapping):
        data, nid = neighbour, neighbour.get("id")
    elif isinstance(getattr(neighbour, "payload", None), Mapping):
        data, nid = neighbour.payload, getattr(neighbour, "id", None)
    else:
        data, nid = vars(neighbour), getattr(neighbour, "id", None)
    category = data.get("category") or None
    return (None if nid is None else str(nid), str(data["label"]), str(data.get("defect_type") or ""), category and str(category))


def _chance(items: Sequence[EvalItem], queries: Sequence[EvalItem]) -> dict[str, float | None]:
    """Expected precision of a random pick among the other images of the query's category."""
    by_category: dict[str, list[EvalItem]] = defaultdict(list)
    for item in items:
        by_category[item.category].append(item)
    anomalous, same_type = [], []
    for query in queries:
        others = [i for i in by_category[query.category] if i.id != query.id]
        if not others:
            continue
        anomalous.append(sum(i.label == ANOMALOUS for i in others) / len(others))
        same_type.append(sum(i.defect_type == query.defect_type for i in others) / len(others))
    return {
        "precision_anomalous": _mean(anomalous),
        "precision_same_defect": _mean(same_type),
    }


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def evaluate_retrieval(
    items: Sequence[EvalItem],
    neighbours_fn: NeighboursFn,
    k: int = 5,
    descriptors: Sequence[str] = DESCRIPTORS,
) -> dict[str, Any]:
    """Precision@k of the neighbours of every anomalous item, per descriptor (and per category).

    ``items`` are all indexed images (for the chance level); ``neighbours_fn(item, descriptor, k)``
    must search the other images of the item's category: the query itself, or another category,
    is an error. Returns ``{"k", "n_items", "n_queries", "chance": {"precision_anomalous",
    "precision_same_defect"}, "descriptors": {name: {the two, "n_queries", "by_category": {...}}}}``,
    JSON-ready (``None`` where there were no anomalous queries).
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    queries = [item for item in items if item.label == ANOMALOUS]
    result: dict[str, Any] = {
        "k": k,
        "n_items": len(items),
        "n_queries": len(queries),
        "chance": _chance(items, queries),
        "descriptors": {},
    }
    for descriptor in descriptors:
        per_category: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for query in queries:
            neighbours = [_fields(n) for n in list(neighbours_fn(query, descriptor, k))[:k]]
            for nid, _, _, ncat in neighbours:
                if nid is not None and nid == query.id:
                    raise ValueError(f"neighbours of {query.id} ({descriptor}) include the query itself")
                if ncat is not None and query.category and ncat != query.category:
                    raise ValueError(f"neighbours of {query.id} ({descriptor}) include category {ncat!r}, not {query.category!r}")
            bucket = per_category[query.category]
            bucket["labels"].append([label for _, label, _, _ in neighbours])
            bucket["types"].append([dtype for _, _, dtype, _ in neighbours])
            bucket["query_types"].append(query.defect_type)

        def summary(labels: list, types: list, query_types: list) -> dict[str, Any]:
            return {
                "precision_anomalous": _nan_to_none(precision_at_k([ANOMALOUS] * len(labels), labels, k)),
                "precision_same_defect": _nan_to_none(precision_at_k(query_types, types, k)),
                "n_queries": len(labels),
            }

        all_labels = [x for b in per_category.values() for x in b["labels"]]
        all_types = [x for b in per_category.values() for x in b["types"]]
        all_query_types = [x for b in per_category.values() for x in b["query_types"]]
        entry = summary(all_labels, all_types, all_query_types)
        entry["by_category"] = {
            category: summary(b["labels"], b["types"], b["query_types"]) for category, b in sorted(per_category.items())
        }
        result["descriptors"][descriptor] = entry
    return result


def neighbours_from_store(search: Callable[..., list[Any]], model: str) -> NeighboursFn:
    """A ``neighbours_fn`` that asks ``search`` (``SimilarityStore.similar`` or a function with its
    keywords, e.g. :func:`core.similarity.label_metric.similar` bound to a store) by stored point
    id (leave-one-out)."""

    def neighbours(item: EvalItem, descriptor: str, k: int) -> list[Any]:
        return search(model, item.category, point_id=item.id, using=descriptor, k=k)

    return neighbours
