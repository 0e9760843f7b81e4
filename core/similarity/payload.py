"""What the similarity store keeps with each point: one :class:`CasePayload` per indexed image.

The stored form is a flat JSON object (Qdrant's payload)::

    {"image_path": ..., "category": ..., "split": "train" | "test" | "inspection",
     "label": "good" | "anomalous", "defect_type": ..., "score": 0.87 | null, "model": ...,
     "time": "2024-05-01T12:00:00+00:00", "inspection_id": "12" | null, "sha256": ...}

:meth:`CasePayload.to_dict` writes exactly that, in that order; :meth:`CasePayload.from_dict` reads
it back, tolerant of payloads written by older versions (a missing field gets its default, and
fields this version does not know are kept in ``extra`` and written back unchanged).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from core.data.layout import ANOMALOUS, DATASET_SPLITS

#: The named vectors of every point (see :mod:`core.similarity.embeddings`).
DESCRIPTORS: tuple[str, ...] = ("global", "defect")
#: ``split`` of an upload judged DEFECT and added by the app.
INSPECTION_SPLIT = "inspection"
#: ``defect_type`` of an inspected upload (nobody has named its defect).
INSPECTED = "inspected"


def _read(name: str, value: Any) -> Any:
    """A stored value as its field's type; a missing one is the field's default, and a score that
    is not a number reads as None (a hand-edited or foreign payload: no score rather than no case)."""
    if value is None or name != "score":
        return (None if name in ("score", "inspection_id") else "") if value is None else str(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class CasePayload:
    """One indexed image as stored with its point (see the module docstring for the JSON)."""

    image_path: str = ""
    category: str = ""
    split: str = ""
    label: str = ""
    defect_type: str = ""
    score: float | None = None
    model: str = ""
    time: str = ""
    inspection_id: str | None = None
    sha256: str = ""
    #: Fields of the stored payload that this version does not know, kept as they were.
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_dataset(self) -> bool:
        """Whether the image comes from the dataset (train/test) rather than an inspected upload."""
        return self.split in DATASET_SPLITS

    @property
    def is_anomalous(self) -> bool:
        return self.label == ANOMALOUS

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON object: the known fields in their fixed order, then ``extra``."""
        known = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**known, **{k: v for k, v in self.extra.items() if k not in known}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> CasePayload:
        """Read a stored payload; fields that older payloads lack get their defaults."""
        data = dict(data or {})
        known = [f.name for f in fields(cls) if f.name != "extra"]
        return cls(
            **{name: _read(name, data.get(name)) for name in known}, extra={k: v for k, v in data.items() if k not in known}
        )
