"""Build the HNSW index of one Qdrant Edge shard copy, in a process of its own.

Run by :mod:`core.similarity.edge_store` as ``python -m core.similarity.hnsw_build <live> <copy>``:
Edge's optimiser holds the GIL for the whole build, so in the app's process it would freeze every
page for tens of seconds. Here it runs at low priority: it copies the flushed live shard (sparse
files stay sparse), writes ``<copy>.copied`` (the parent's writes wait for it), builds HNSW on the
copy nobody else opens, and writes ``<copy>.done``: ready to swap in.

The copy keeps the write-ahead log. Without it the new generation numbers its operations from
scratch while its points keep the versions of the old one, and Edge then silently skips updates
and deletes of those points (an operation older than a point's version is ignored): seen as a
relabelled point keeping its old payload (``tests/test_similarity_edge.py``). Replaying the log
makes loading the generation slower (430 ms instead of ~85 ms at 100k points), which is why the
parent swaps it in only while idle.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def copy(live: Path, folder: Path, attempts: int = 3) -> None:
    """Copy the shard with its WAL, keeping sparse files sparse (``cp``), else with shutil.

    The live shard's own optimiser may merge a segment while it is copied (a file vanishes): the
    copy is then made again from the start.
    """
    import shutil
    import subprocess
    import time

    for attempt in range(attempts):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            for item in live.iterdir():
                if item.name != ".lock":
                    subprocess.run(["cp", "-r", "--sparse=always", str(item), str(folder)], check=True, capture_output=True)
            break
        except (OSError, subprocess.CalledProcessError):
            try:
                shutil.rmtree(folder, ignore_errors=True)
                shutil.copytree(live, folder, ignore=shutil.ignore_patterns(".lock"))
                break
            except (OSError, shutil.Error):
                if attempt == attempts - 1:
                    raise
                time.sleep(1.0)
    folder.with_name(folder.name + ".copied").write_text("ok\n")


def build(folder: Path) -> None:
    import qdrant_edge as qe

    from core.similarity.edge_store import drop_unused_indexes

    shard = qe.EdgeShard.load(str(folder))
    try:
        drop_unused_indexes(shard)  # the generation the app will load: without an index it no longer uses
        shard.optimize()
        shard.flush()
    finally:
        shard.close()
    done = folder.with_name(folder.name + ".done")
    done.write_text("ok\n")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m core.similarity.hnsw_build <live shard folder> <copy folder>", file=sys.stderr)
        return 2
    try:
        os.nice(10)  # the app's pages come first
    except OSError:
        pass
    copy(Path(argv[0]), Path(argv[1]))
    build(Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
