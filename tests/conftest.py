"""Every test must leave no child process and no torch shared-memory segment behind. The one
exception: a Ray cluster that a test module shares between its tests (registered in
SHARED_PROCESS_ROOTS) lives, with what it starts, until that module's end."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_PROCESS_ROOTS: set[int] = set()


def _shared(process: psutil.Process) -> bool:
    try:
        return any(p.pid in SHARED_PROCESS_ROOTS for p in (process, *process.parents()))
    except psutil.NoSuchProcess:
        return True  # gone


def _torch_segments() -> set[str]:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return set()
    return {p.name for p in shm.iterdir() if p.name.startswith(("torch_", "psm_"))}


@pytest.fixture(autouse=True)
def no_leftovers():
    segments = _torch_segments()
    yield
    children = psutil.Process().children(recursive=True)
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    # multiprocessing's resource tracker is shared by the whole session and ends with it.
    alive = [c for c in alive if "resource_tracker" not in " ".join(c.cmdline()) and not _shared(c)]
    assert not alive, f"processes left behind: {[(c.pid, c.cmdline()) for c in alive]}"
    assert _torch_segments() <= segments, "shared-memory segments left behind"
