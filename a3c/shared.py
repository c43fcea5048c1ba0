"""What every process of a run shares: the weights, the optimizer, the counters, the control flags."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from a3c.config import Config
from a3c.model import ActorCritic, bind_flat_parameters
from a3c.shared_optim import SharedAdam, SharedOptimizer, SharedRMSprop

# Control flags, written by the parent only. Plain shared memory rather than multiprocessing
# Events: an Event's condition variable deadlocks its set() once a waiting process is SIGKILLed.
STOP, WORKERS_DONE, EVALUATE_AT_END = range(3)
FLAG_POLL_S = 0.05


def torch_segments() -> set[str]:
    """The names of torch's shared-memory segments now on this machine (none without /dev/shm): what
    a run shares lives in them, so a leftover one is memory a run failed to give back."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return set()
    return {p.name for p in shm.iterdir() if p.name.startswith(("torch_", "psm_"))}


def segment_creator(name: str) -> int | None:
    """The pid of the process that made a torch segment, which torch names torch_<pid>_...; None for
    a name that does not say."""
    parts = name.split("_")
    return int(parts[1]) if parts[0] == "torch" and len(parts) > 1 and parts[1].isdigit() else None


def made_by_another_process(name: str, ours: set[int]) -> bool:
    """Whether a segment is another live process's, not one of `ours` (nor of a process gone): a check
    for leftovers may run beside other work that makes its own."""
    creator = segment_creator(name)
    return creator is not None and creator not in ours and psutil.pid_exists(creator)


def build_optimizer(config: Config, params: torch.Tensor) -> SharedOptimizer:
    """The run's shared optimizer over the flat shared weights."""
    if config.optimizer == "rmsprop":
        return SharedRMSprop([params], lr=config.learning_rate, alpha=config.rmsprop_alpha, eps=config.rmsprop_eps)
    return SharedAdam([params], lr=config.learning_rate, betas=config.adam_betas,
                      eps=config.adam_eps)


@dataclass
class SharedTraining:
    """Handed to every child process at start. The frame counter has one slot per worker, written
    by that worker alone, so counting needs no lock; the total is the sum over the slots. Episodes
    are counted by the parent as it logs them, so the count always equals the rows of
    train_episodes.csv, even when a worker is killed between finishing an episode and reporting it."""

    params: torch.Tensor           # flat model weights, shared
    optimizer: SharedOptimizer
    frames: torch.Tensor           # int64 per worker slot: environment frames (with frame skip)
    updates: torch.Tensor          # int64 per worker slot: updates it handed to the shared optimizer
    episodes: torch.Tensor         # int64, one element: episodes logged by the parent
    flags: torch.Tensor            # uint8 [STOP, WORKERS_DONE, EVALUATE_AT_END]
    heartbeats: torch.Tensor       # int64 per worker slot, then one for the evaluator: bumped as each makes progress
    frames_elsewhere: torch.Tensor  # int64, one element: frames counted by the rest of a Ray cluster
    base_frames: int = 0           # frames, episodes and seconds of training done before a resume
    base_episodes: int = 0
    base_seconds: float = 0.0
    clock_origin: float = 0.0      # time.time() at which the run would have started, had it never paused

    def start_clock(self) -> None:
        """The parent, as it starts its children: seconds of training count on from base_seconds."""
        self.clock_origin = time.time() - self.base_seconds

    def elapsed(self, at: float | None = None) -> float:
        """Seconds of training in the whole run, resumes included, at time.time() `at` (now by
        default): the time column of the CSVs."""
        return (time.time() if at is None else at) - self.clock_origin

    @classmethod
    def create(cls, model: ActorCritic, config: Config) -> SharedTraining:
        params = bind_flat_parameters(model).share_memory_()
        optimizer = build_optimizer(config, params)

        frames = torch.zeros(config.workers, dtype=torch.int64).share_memory_()
        updates = torch.zeros(config.workers, dtype=torch.int64).share_memory_()
        episodes = torch.zeros(1, dtype=torch.int64).share_memory_()
        flags = torch.zeros(3, dtype=torch.uint8).share_memory_()
        heartbeats = torch.zeros(config.workers + 1, dtype=torch.int64).share_memory_()
        elsewhere = torch.zeros(1, dtype=torch.int64).share_memory_()
        return cls(params, optimizer, frames, updates, episodes, flags, heartbeats, elsewhere)

    def total_frames(self) -> int:
        return self.base_frames + int(self.frames.sum()) + int(self.frames_elsewhere[0])

    def total_updates(self) -> int:
        """Updates stepped into this machine's shared optimizer so far: a worker's staleness is how
        many landed between its weight copy and its own step (Worker.update)."""
        return int(self.updates.numpy().sum())

    def set_frames_elsewhere(self, frames: int) -> None:
        """On a Ray cluster: the frames the other nodes have counted (their workers write no slot
        here), so that budget checks and the learning-rate schedule see the whole run's frames."""
        self.frames_elsewhere[0] = frames

    def total_episodes(self) -> int:
        return self.base_episodes + int(self.episodes.sum())

    def weights_are_finite(self) -> bool:
        """Checked on a snapshot: torch.isfinite tests x == x, and reading an element twice while a
        worker writes it can see two different values, so a check of the live weights can report
        non-finite weights that never were (tests/test_shared_optim.py races the two)."""
        return bool(torch.isfinite(self.params.clone()).all())

    def beat(self, slot: int) -> None:
        """A child shows progress: a worker after each rollout, the evaluator as it plays and waits.
        Each slot has one writer, so no lock; the parent only watches it change (Supervisor)."""
        self.heartbeats.numpy()[slot] += 1

    def heartbeat(self, slot: int) -> int:
        return int(self.heartbeats.numpy()[slot])

    @property
    def evaluator_slot(self) -> int:
        return self.heartbeats.numel() - 1

    def count_episode(self) -> None:
        """The parent only: one more episode logged."""
        self.episodes += 1

    def budget_reached(self, config: Config) -> bool:
        return self.total_frames() >= config.total_frames

    def set_flag(self, flag: int) -> None:
        self.flags[flag] = 1

    def flag(self, flag: int) -> bool:
        return bool(self.flags.numpy()[flag])  # a worker asks every step: numpy reads are cheapest

    def stop_requested(self) -> bool:
        return self.flag(STOP)

    def wait_flag(self, flag: int, timeout: float) -> bool:
        """Wait up to `timeout` seconds for `flag`; True once it is set."""
        deadline = time.monotonic() + timeout
        while not self.flag(flag):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(FLAG_POLL_S, remaining))
        return True
