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
    ``any_of[key]``, that are not in ``exclude_ids`` and have none of ``exclude_equals``."""

    equals: Mapping[str, str] = field(default_factory=dict)
    any_of: Mapping[str, Sequence[str]] = field(default_factory=dict)
    exclude_ids: Sequence[str] = ()
    exclude_equals: Sequence[tuple[str, str]] = ()

    @property
    def empty(self) -> bool:
        return not (self.equals or self.any_of or self.exclude_ids or self.exclude_equals)


def search_conditions(
    label: str | None, defect_type: str | None, exclude_ids: Sequence[str], exclude_sha256: set[str]
) -> Conditions:
    """Candidates with that label and defect type (None: any), without the excluded ids and hashes."""
    equals = {key: value for key, value in (("label", label), ("defect_type", defect_type)) if value is not None}
    return Conditions(
        equals=equals,
        exclude_ids=tuple(str(i) for i in exclude_ids),
        exclude_equals=tuple(("sha256", sha) for sha in sorted(exclude_sha256)),
    )
