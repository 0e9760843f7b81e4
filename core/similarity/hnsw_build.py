"""Build the HNSW index of one Qdrant Edge shard copy, in a process of its own.

Run by :mod:`core.similarity.edge_store` as ``python -m core.similarity.hnsw_build <live> <copy>``:
Edge's optimiser holds the GIL for the whole build, so in the app's process it would freeze every
page for tens of seconds. Here it runs at low priority: it copies the flushed live shard (sparse
files stay sparse, the WAL is left behind), writes ``<copy>.copied`` (the parent's writes wait for
it), builds HNSW on the copy nobody else opens, and writes ``<copy>.done``: ready to swap in.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def copy(live: Path, folder: Path) -> None:
    """Copy the shard without its WAL, keeping sparse files sparse (``cp``), else with shutil."""
    import shutil
    import subprocess

    folder.mkdir(parents=True)
    try:
        for item in live.iterdir():
            if item.name not in ("wal", ".lock"):
                subprocess.run(["cp", "-r", "--sparse=always", str(item), str(folder)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(live, folder, ignore=shutil.ignore_patterns("wal", ".lock"))
    folder.with_name(folder.name + ".copied").write_text("ok\n")


def build(folder: Path) -> None:
    import qdrant_edge as qe

    shard = qe.EdgeShard.load(str(folder))
    try:
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
