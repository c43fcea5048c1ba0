"""The child processes of one machine: start the workers (and the evaluator), read what they send,
replace those that die, stop them. The local trainer runs one Supervisor; on a Ray cluster every
node's group of workers runs one too (a3c/ray_cluster.py), so both run the same worker processes."""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Final, Protocol, TypeVar, cast

import torch.multiprocessing as mp

from a3c.config import Config
from a3c.evaluator import run_evaluator
from a3c.messages import Message
from a3c.shared import STOP, SharedTraining
from a3c.worker import run_worker, seed_stream

# spawn: a CUDA evaluator cannot live in a forked child of a process that holds torch state.
START_METHOD: Final = "spawn"
POLL_S = 0.25
# A child's start (imports, environments, a CUDA context) may take this many times hang_timeout.
STARTUP_ALLOWANCE = 2.0
KILL_JOIN_S = 5.0  # a killed process is reaped at once, unless it waits on a device (uninterruptible)


def one_thread_per_child() -> None:
    """Children inherit the environment at spawn: one intra-op thread each, set before their torch
    import (torch.set_num_threads(1) in the child covers the rest)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"


class DeathLog:
    """Deaths of children (or Ray node groups) in the last death_window seconds: a few are replaced,
    too many in too short a time mean something is broken, and the run stops."""

    def __init__(self, config: Config) -> None:
        self.window, self.limit = config.death_window, config.max_deaths
        self.times: deque[float] = deque()

    def record(self) -> str | None:
        """Count one death; the reason to stop the run, if that was one too many."""
        now = time.time()
        self.times.append(now)
        while self.times and now - self.times[0] > self.window:
            self.times.popleft()
        if len(self.times) >= self.limit:
            return (f"{len(self.times)} processes died within {self.window:g} s; stopping "
                    "(the last good checkpoint is kept)")
        return None


@dataclass
class Progress:
    """What HangWatch knows of one child's heartbeat."""

    heartbeat: int = 0     # its last value seen
    beating: bool = False  # whether it has changed since the child started
    quiet_since: float = field(default_factory=time.monotonic)  # when it last changed
    hung_for: float | None = None  # seconds without progress, once the child is found hung


class Watched(Protocol):
    progress: Progress


W = TypeVar("W", bound=Watched)


class HangWatch:
    """Tells when a child has shown no progress for too long: hang_timeout seconds, or
    STARTUP_ALLOWANCE times that before its first beat. The time in which the watcher itself did
    not run (the machine asleep, the whole process group stopped) counts for no one."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.last_look: float | None = None

    def hung(self, running: list[W], heartbeat: Callable[[W], int]) -> list[W]:
        """Those of the `running` children newly found hung, given each one's heartbeat now."""
        now = time.monotonic()
        missed = self.last_look is not None and now - self.last_look > self.timeout / 2
        self.last_look = now
        found = []
        for child in running:
            progress, beat = child.progress, heartbeat(child)
            if progress.hung_for is not None:
                continue
            if beat != progress.heartbeat or missed:
                progress.beating = progress.beating or beat != progress.heartbeat
                progress.heartbeat, progress.quiet_since = beat, now
            elif now - progress.quiet_since > self.timeout * (1.0 if progress.beating else STARTUP_ALLOWANCE):
                progress.hung_for = now - progress.quiet_since
                found.append(child)
        return found


@dataclass
class Child:
    process: Any
    conn: Connection
    role: str          # "worker" or "evaluator"
    slot: int = -1     # the worker's counter slot in SharedTraining; -1 for the evaluator
    incarnation: int = 0
    progress: Progress = field(default_factory=Progress)


def _run_nicer(niceness: int, target: Callable[..., None], *args: Any) -> None:
    """A child's entry: lower its priority once its imports are done (a start-up at low priority
    waits behind busy workers for seconds), then run it."""
    if niceness:
        with contextlib.suppress(OSError):  # where the system refuses, it runs at our priority
            os.nice(niceness)
    target(*args)


class Supervisor:
    """`handle(message)` gets every message a child sends; `say(text)` every event worth a line
    (a death, a replacement). `worker_ids[slot]` is the id under which a slot's worker is seeded
    and logged: the slot itself locally, its place among all the cluster's workers on Ray, where
    `incarnation_base` also keeps a replaced node's workers off its predecessor's seeds."""

    def __init__(self, config: Config, shared: SharedTraining, handle: Callable[[Message], None],
                 say: Callable[[str], None], worker_ids: list[int] | None = None,
                 incarnation_base: int = 0, worker_niceness: int = 0) -> None:
        self.config, self.shared, self.handle, self.say = config, shared, handle, say
        self.worker_ids = worker_ids if worker_ids is not None else list(range(config.workers))
        self.incarnation_base = incarnation_base
        self.worker_niceness = worker_niceness
        self.context = mp.get_context(START_METHOD)
        self.children: list[Child] = []
        self.deaths = DeathLog(config)
        self.hang_watch = HangWatch(config.hang_timeout)
        self.evaluator_args: Callable[[], tuple[Any, ...]] | None = None
        self.failure: str | None = None  # set when too many children died in too short a time

    # -- starting ----------------------------------------------------------------------------
    def start_workers(self) -> None:
        for slot in range(len(self.worker_ids)):
            self.start_worker(slot)

    def start_worker(self, slot: int, incarnation: int = 0) -> None:
        seeds = seed_stream(self.config.seed, self.worker_ids[slot], self.incarnation_base + incarnation)
        self._start(run_worker, f"a3c-worker-{self.worker_ids[slot]}", "worker", slot, incarnation,
                    (slot, self.config, self.shared, seeds), self.worker_niceness)

    def start_evaluator(self, args: Callable[[], tuple[Any, ...]], incarnation: int = 0) -> None:
        """`args()`: run_evaluator's arguments after the shared state, read anew for a replacement
        (the best score so far changes)."""
        self.evaluator_args = args
        self._start(run_evaluator, "a3c-evaluator", "evaluator", -1, incarnation,
                    (self.config, self.shared, *args()))

    def _start(self, target: Callable[..., None], name: str, role: str, slot: int, incarnation: int,
               args: tuple[Any, ...], niceness: int = 0) -> None:
        """niceness: added to ours for the child, which then takes only the CPU that the processes
        at our priority leave."""
        receiver, sender = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_run_nicer, name=name, daemon=True,
                                       args=(niceness, target, *args, sender, os.getpid()))
        process.start()
        sender.close()
        child = Child(process, receiver, role, slot, incarnation)
        child.progress.heartbeat = self._heartbeat(child)
        self.children.append(child)

    def _heartbeat(self, child: Child) -> int:
        return self.shared.heartbeat(child.slot if child.role == "worker" else self.shared.evaluator_slot)

    def describe(self, child: Child) -> str:
        name = f"worker {self.worker_ids[child.slot]}" if child.role == "worker" else "evaluator"
        return f"{name} (pid {child.process.pid})"

    def workers(self) -> list[Child]:
        return [c for c in self.children if c.role == "worker"]

    def evaluator(self) -> Child | None:
        return next((c for c in self.children if c.role == "evaluator"), None)

    # -- messages ----------------------------------------------------------------------------
    def drain(self, timeout: float) -> None:
        """Handle what the children sent, waiting up to `timeout` seconds for the first message."""
        conns = [c.conn for c in self.children if not c.conn.closed]
        if not conns:
            time.sleep(timeout)  # nothing to read: this is the caller's idle tick
            return
        for conn in wait(conns, timeout):
            self._read_all(cast(Connection, conn))

    def _read_all(self, conn: Connection) -> None:
        try:
            while not conn.closed and conn.poll():
                self.handle(conn.recv())
        except (EOFError, OSError):  # the other end has gone
            conn.close()

    # -- supervision -------------------------------------------------------------------------
    def supervise(self) -> None:
        """Kill the children that stopped making progress, then replace them and the dead."""
        self.kill_hung()
        self.replace_dead()

    def kill_hung(self) -> None:
        """Kill the children that made no progress for too long (HangWatch); replace_dead reports them."""
        running = [c for c in self.children if c.process.exitcode is None]
        self.kill(self.hang_watch.hung(running, self._heartbeat))

    def replace_dead(self, stopping: bool = False) -> None:
        """Replace every child that died; `stopping`: the run is ending, so reap them only."""
        for child in list(self.children):
            code = child.process.exitcode
            if code is None:
                continue
            if child.role == "worker" and code == 0 and self.shared.budget_reached(self.config):
                continue  # finished its share of the budget
            self.children.remove(child)
            self._read_all(child.conn)  # what it sent before it died still counts
            child.conn.close()
            child.process.join()
            if stopping or self.failure is not None:
                continue
            if child.progress.hung_for is not None:
                self.say(f"{self.describe(child)} made no progress for {child.progress.hung_for:.0f} s: killed")
            else:
                self.say(f"{self.describe(child)} died with exit code {code}")
            self.failure = self.deaths.record()
            if self.failure is not None:
                return
            if child.role == "worker":
                self.start_worker(child.slot, child.incarnation + 1)
            else:
                assert self.evaluator_args is not None
                self.start_evaluator(self.evaluator_args, child.incarnation + 1)
            self.say(f"replaced by {self.describe(self.children[-1])}")

    # -- stopping ----------------------------------------------------------------------------
    def wait_for(self, children: list[Child], deadline: float, abort: Callable[[], bool] = lambda: False) -> bool:
        """Keep reading their pipes (a child blocked on a full pipe never exits) until they exit, the
        time.monotonic() `deadline` passes or `abort()` turns true; whether they all exited."""
        while any(c.process.exitcode is None for c in children):
            if abort() or time.monotonic() >= deadline:
                return False
            self.drain(min(POLL_S, max(0.0, deadline - time.monotonic())))
        return True

    def stop_workers(self, deadline: float, abort: Callable[[], bool] = lambda: False) -> None:
        """Raise the stop flag, let the workers finish their update until `deadline` (monotonic),
        kill those still running then (hung, or stopped), and read what they all sent last."""
        self.shared.set_flag(STOP)
        workers = self.workers()
        self.wait_for(workers, deadline, abort)
        self.kill(workers)
        for worker in workers:
            self._read_all(worker.conn)

    def kill(self, children: list[Child]) -> None:
        """SIGKILL those still running and reap them. Our children keep nothing that a gentler signal
        would let them save (they have no SIGTERM handler), and SIGKILL ends a stopped process too."""
        for child in children:
            if child.process.exitcode is None:
                child.process.kill()
        for child in children:
            child.process.join(timeout=KILL_JOIN_S)

    def close(self) -> None:
        """Stop every child at once and close the pipes."""
        self.shared.set_flag(STOP)
        self.kill(self.children)
        for child in self.children:
            child.conn.close()
