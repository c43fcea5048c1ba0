"""Every test must leave no child process and no torch shared-memory segment behind. The one
exception: a Ray cluster that a test module shares between its tests (registered in
SHARED_PROCESS_ROOTS) lives, with what it starts, until that module's end. Tests may run in
several processes at once (pytest-xdist): a segment named for a live process outside this one's
tree belongs to another test."""

from __future__ import annotations

import os

import psutil
import pytest

from a3c.shared import made_by_another_process, torch_segments
from tests.helpers import CARTPOLE, TrainProcess

os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_PROCESS_ROOTS: set[int] = set()


def _shared(process: psutil.Process) -> bool:
    try:
        return any(p.pid in SHARED_PROCESS_ROOTS for p in (process, *process.parents()))
    except psutil.NoSuchProcess:
        return True  # gone


def _command(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # gone, or a zombie, since it was listed
        return ""


def _left_behind(process: psutil.Process) -> bool:
    """Alive and this test's: multiprocessing's resource tracker is shared by the whole session and
    ends with it, a shared Ray cluster's processes with their module."""
    try:
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return False
    return "resource_tracker" not in _command(process) and not _shared(process)


def segments_left(before: set[str]) -> set[str]:
    """The segments made since `before` that may be this test's: torch names one torch_<pid>_...
    after its creator, and one whose creator lives outside this process's tree is another test's,
    made in another process."""
    me = psutil.Process()
    tree = {me.pid, *(c.pid for c in me.children(recursive=True))}
    return {s for s in torch_segments() - before if not made_by_another_process(s, tree)}


@pytest.fixture(autouse=True)
def no_leftovers():
    segments = torch_segments()
    yield
    alive = [c for c in psutil.Process().children(recursive=True) if _left_behind(c)]
    assert not alive, f"processes left behind: {[(c.pid, _command(c)) for c in alive]}"
    left = segments_left(segments)
    assert not left, f"shared-memory segments left behind: {sorted(left)}"


# A CartPole run of `python -m a3c train` for tests of faults and shutdown: start(*more_flags).
@pytest.fixture
def train_process(tmp_path):
    started: list[TrainProcess] = []

    def start(*args: str) -> TrainProcess:
        process = TrainProcess([*CARTPOLE, "--runs-dir", str(tmp_path), "--run-name", "run", *args], tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None or process.alive_pids():
            process.kill_all()
