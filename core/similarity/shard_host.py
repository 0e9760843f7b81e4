"""A shard host: one Qdrant Edge shard, opened and served in a process of its own.

Run by :meth:`core.similarity.edge_shard.RemoteShard.open` as ``python -m
core.similarity.shard_host <socket fd> <shard folder>``. It loads the shard (the GIL it holds
meanwhile is this process's, so the app's pages go on), answers ``ok`` (or ``error`` with the
reason), then answers calls, one message each way: ``(name, args)`` → ``("ok", result)`` or
``("error", message)``, where ``name`` is one of :data:`~core.similarity.edge_shard.CALLS`. On
``close``, or when the app's end of the socket closes (the app stopped), it closes the shard,
which releases the folder, and exits.
"""

from __future__ import annotations

import socket
import sys
from multiprocessing.connection import Connection


def serve(conn: Connection, folder: str) -> int:
    import qdrant_edge as qe

    from core.similarity.edge_shard import CALLS, LocalShard
    from core.similarity.edge_store import _one_line, drop_unused_indexes

    try:
        raw = qe.EdgeShard.load(folder)
        drop_unused_indexes(raw)
    except Exception as exc:  # noqa: BLE001 - reported to the app, which words it
        conn.send(("error", f"{type(exc).__name__}: {_one_line(exc)}"))
        return 1
    shard = LocalShard(raw)
    conn.send(("ok", None))
    try:
        while True:
            try:
                name, args = conn.recv()
            except (EOFError, OSError):
                return 0  # the app is gone
            if name == "close":
                break
            if name not in CALLS:
                conn.send(("error", f"unknown call {name!r}"))
                continue
            try:
                result = getattr(shard, name)(*args)
            except Exception as exc:  # noqa: BLE001 - the app raises it as a StoreError
                conn.send(("error", f"{type(exc).__name__}: {_one_line(exc)}"))
            else:
                conn.send(("ok", result))
    finally:
        shard.close()
    try:
        conn.send(("ok", None))  # closed: the folder is free
    except OSError:
        pass
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m core.similarity.shard_host <socket fd> <shard folder>", file=sys.stderr)
        return 2
    sock = socket.socket(fileno=int(argv[0]))
    return serve(Connection(sock.detach()), argv[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
