"""Running `a3c` as a user would, in a subprocess, and reading its output as it comes."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

# A small CartPole run that reports, evaluates and checkpoints often: flags of `a3c train`. One worker,
# as the suite is CPU-bound and each worker trains flat out; a test about several adds --workers 2.
CARTPOLE = ["--env-id", "CartPole-v1", "--workers", "1", "--lr", "1e-3", "--status-interval", "0.5",
            "--eval-episodes", "2", "--checkpoint-interval", "1"]


class TrainProcess:
    """`python -m a3c train ...` in its own process group, its output read line by line."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        root = str(Path(__file__).resolve().parent.parent)  # so that `tests.*` modules import
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen([sys.executable, "-m", "a3c", "train", *args], cwd=cwd,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=env, start_new_session=True)
        self.lines: list[str] = []
        self.arrivals: list[float] = []  # when each line was read (time.monotonic())
        self.pids: set[int] = {self.process.pid}
        self._queue: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._queue.put((time.monotonic(), line.rstrip("\n")))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 120.0) -> re.Match:
        """Block until an output line matches `pattern`; fail on exit, or when `timeout` seconds pass
        without one (however many other lines come meanwhile)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n"
                                     + "\n".join(self.lines[-30:])) from None
            if item is None:
                raise AssertionError(f"process ended before {pattern!r}:\n" + "\n".join(self.lines[-30:]))
            line = self._keep(item)
            match = regex.search(line)
            if match:
                return match

    def wait_for_all(self, patterns: list[str], timeout: float = 120.0) -> None:
        """Block until every pattern has matched a line, in any order."""
        deadline = time.monotonic() + timeout
        left = [re.compile(p) for p in patterns if not any(re.search(p, line) for line in self.lines)]
        while left:
            match = self.wait_for("|".join(f"(?:{p.pattern})" for p in left), max(0.1, deadline - time.monotonic()))
            left = [p for p in left if not p.search(match.string)]

    def finish(self, timeout: float = 120.0) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        while True:
            item = self._queue.get_nowait() if not self._queue.empty() else None
            if item is None:
                break
            self._keep(item)
        return code

    def _keep(self, item: tuple[float, str]) -> str:
        arrival, line = item
        self.arrivals.append(arrival)
        self.lines.append(line)
        self.pids.update(int(p) for p in re.findall(r"pid (\d+)", line))
        return line

    def lines_since(self, moment: float) -> str:
        """The lines read after `moment` (time.monotonic()), each with its seconds since then."""
        return "\n".join(f"+{arrival - moment:.1f} s {line}" for arrival, line in zip(self.arrivals, self.lines,
                                                                                      strict=True)
                         if arrival >= moment)

    def worker_pid(self, slot: int) -> int:
        for line in reversed(self.lines):
            match = re.search(rf"worker {slot} \(pid (\d+)\)", line)
            if match:
                return int(match.group(1))
        raise AssertionError(f"no pid seen for worker {slot}")

    def evaluator_pid(self) -> int:
        for line in reversed(self.lines):
            match = re.search(r"evaluator \(pid (\d+)\)", line)
            if match:
                return int(match.group(1))
        raise AssertionError("no pid seen for the evaluator")

    def alive_pids(self) -> list[int]:
        alive = []
        for pid in self.pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        return alive

    def kill_all(self) -> None:
        """Cleanup after a failed test: end what this test started."""
        for pid in self.alive_pids():
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        self.process.wait(timeout=30)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds, saying `what` was awaited."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def write_checkpoint(path: Path, config, obs_shape: tuple[int, ...], n_actions: int,
                     model_config=None) -> None:
    """An untrained checkpoint for `config`; its model is built from `model_config` when given
    (a checkpoint whose model does not fit its own configuration)."""
    from a3c.checkpoint import checkpoint_payload, save_checkpoint
    from a3c.model import build_model
    from a3c.shared import SharedTraining

    model_config = model_config or config
    model = build_model(model_config, obs_shape, n_actions)
    shared = SharedTraining.create(model, model_config)
    save_checkpoint(path, checkpoint_payload(config, shared, model.state_dict(), obs_shape, n_actions,
                                             100, 3, None, None))
