"""Replacing a file atomically: whoever reads it sees the old content or the new, never half of it."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(
    target: Path,
    data: bytes | Callable[[BinaryIO], object],
    *,
    sync: bool = False,
    private: bool = False,
) -> None:
    """Write ``data`` (bytes, or a function that writes to a binary handle) to a temporary file
    beside ``target``, then rename it over ``target``; on any failure the temporary file is removed.

    ``sync``: flushed to disk before the rename, so that a power cut cannot leave an empty file.
    ``private``: the file is readable by its owner only (0600); otherwise the umask decides.
    """
    if private:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".tmp")
    else:
        tmp = str(target.with_name(f"{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
