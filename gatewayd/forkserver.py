"""The workers' fork server, started as early as the daemon can start it.

Workers are forked from one server process (``multiprocessing``'s
forkserver), which imports the worker's modules once (numpy, the native
core, the geometry facade). That import is most of a worker's start-up.
``start`` launches the server and returns at once: the server imports beside
the main process's own imports, on the other core, instead of after them.
``gatewayd.workers`` uses the same server later. Nothing here imports numpy.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Sequence

__all__ = ["WORKER_ENV", "start"]

# Environment a worker must have before its interpreter starts: glibc reads
# MALLOC_ARENA_MAX at start-up, OpenBLAS and OpenMP when numpy is imported.
WORKER_ENV = {"MALLOC_ARENA_MAX": "2", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def start(preload: Sequence[str]) -> None:
    """Launches the fork server with ``preload`` imported in it, unless it runs."""
    for key, value in WORKER_ENV.items():
        # The server, and so every worker, inherits the environment it starts with.
        os.environ.setdefault(key, value)
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    from multiprocessing import forkserver

    forkserver.ensure_running()
