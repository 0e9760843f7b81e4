"""Durations as people type them (``45m``, ``1.5h``, ``900s``, ``2700``), for ``--time-budget``.

Kept apart from the model so the command line and the background queue read a budget without
importing torch.
"""

from __future__ import annotations

import math
import re

from core.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h|hr)?\s*$", re.IGNORECASE)
_UNIT_S = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


def parse_duration(value: float | str) -> float:
    """Seconds from ``2700``, ``"45m"``, ``"1.5h"`` or ``"90s"``; a ConfigError unless positive."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ConfigError(f"EfficientAD --time-budget must be a duration such as 45m, 1.5h or 900s (got '{value}')")
        seconds = float(match.group(1)) * _UNIT_S[(match.group(2) or "").lower() or None]
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigError(f"EfficientAD needs --time-budget > 0 (got {value})")
    return seconds
