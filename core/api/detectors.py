"""Trained models for the API: loaded on first use and kept in a small per-process LRU.

The cache key is the dashboard's (:func:`core.services.catalog.detector_cache_key`: model,
category, current checkpoint, its mtime, its runtime choice), so a retrained model (a new version
folder) or a newly chosen runtime is picked up by the next request. In the one-process server (``server.py``) the dashboard's own cache is passed
in as ``load``: pages and API calls then share every loaded model.

Each detector runs one call at a time by itself (``Detector.run_batch`` holds its own lock), so
pages and API requests can share a model safely.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from core.services import catalog, inspection

if TYPE_CHECKING:
    from core.inference.detector import Detector

Loader = Callable[[str, str], "Detector"]
CacheKey = tuple[str, str, str, float, float]

#: Models kept loaded by the API's own cache (each is tens to hundreds of MB).
MAX_LOADED = 4


def load_warm(model: str, category: str) -> Detector:
    """Load a model and run it once on a blank image, so the first client request is not the slow one."""
    detector = inspection.load_detector(model, category)
    inspection.warm_up(detector)
    return detector


class DetectorCache:
    """Per-process detectors by cache key, at most ``max_entries``, least recently used dropped first.

    Two requests for a model not yet loaded wait for one load (a per-key lock), not two.
    """

    def __init__(self, max_entries: int = MAX_LOADED, load: Loader | None = None) -> None:
        self.max_entries = max_entries
        self._external = load  # another cache (the dashboard's) that keeps the models itself
        self._entries: OrderedDict[CacheKey, Detector] = OrderedDict()
        self._seen: dict[tuple[str, str], str] = {}  # (model, category) -> version, for /readyz
        self._guard = threading.Lock()
        self._loading: dict[CacheKey, threading.Lock] = {}
        #: Called after a model version is loaded for the first time (a station's heartbeat).
        self.on_load: Callable[[], None] | None = None

    def get(self, model: str, category: str) -> Detector:
        """The detector of (model, category), loading it on first use (raises ModelNotTrainedError...)."""
        key = catalog.detector_cache_key(model, category)
        if self._external is not None:
            detector = self._external(model, category)
            self._note(detector)
            return detector
        with self._guard:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._guard:
                if key in self._entries:
                    return self._entries[key]
            detector = load_warm(model, category)
            self._store(key, detector)
        return detector

    def _store(self, key: CacheKey, detector: Detector) -> None:
        with self._guard:
            for old in [k for k in self._entries if k[:2] == key[:2]]:  # an older version of this pair
                del self._entries[old]
            self._entries[key] = detector
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            self._loading.pop(key, None)
            self._note(detector)

    def _note(self, detector: Detector) -> None:
        pair = (detector.meta.model, detector.meta.category)
        new = self._seen.get(pair) != detector.version
        self._seen[pair] = detector.version
        if new and self.on_load is not None:
            self.on_load()

    def loaded(self) -> list[str]:
        """``model/category@version`` of the models this cache holds (or has handed out)."""
        with self._guard:
            if self._external is None:
                pairs = {(d.meta.model, d.meta.category): d.version for d in self._entries.values()}
            else:
                pairs = dict(self._seen)
        return sorted(f"{m}/{c}@{v}" for (m, c), v in pairs.items())

    def is_loaded(self, model: str, category: str) -> bool:
        return any(name.startswith(f"{model}/{category}@") for name in self.loaded())
