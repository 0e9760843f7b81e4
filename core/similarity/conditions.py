"""What a query or count restricts to, independent of the engine that evaluates it.

The store speaks to two engines (qdrant-client for a server or local mode, Qdrant Edge embedded),
whose filter classes differ. :class:`Conditions` is the one description both translate, so the
same search means the same thing on each (the congruence tests check that it does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Conditions:
    """Points whose payload ``key == value`` for every ``equals`` item, whose ``key`` is one of
    ``any_of[key]`` and that are not in ``exclude_ids``."""

    equals: Mapping[str, str] = field(default_factory=dict)
    any_of: Mapping[str, Sequence[str]] = field(default_factory=dict)
    exclude_ids: Sequence[str] = ()

    @property
    def empty(self) -> bool:
        return not (self.equals or self.any_of or self.exclude_ids)


def search_conditions(label: str | None, defect_type: str | None, exclude_ids: Sequence[str]) -> Conditions:
    """Candidates with that label and defect type (None: any), without the excluded ids."""
    equals = {key: value for key, value in (("label", label), ("defect_type", defect_type)) if value is not None}
    return Conditions(equals=equals, exclude_ids=tuple(str(i) for i in exclude_ids))
