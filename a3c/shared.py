"""What every process of a run shares: the weights, the optimizer, the counters, the stop signals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from a3c.config import Config
from a3c.model import ActorCritic, bind_flat_parameters
from a3c.shared_optim import SharedAdam


@dataclass
class SharedTraining:
    """Handed to every child process at start. Each counter has one slot per worker, written by
    that worker alone, so counting needs no lock; totals are sums over the slots."""

    params: torch.Tensor          # flat model weights, shared
    optimizer: SharedAdam
    frames: torch.Tensor          # int64 per worker slot: environment frames (with frame skip)
    episodes: torch.Tensor        # int64 per worker slot: finished episodes
    skipped_updates: torch.Tensor  # int64 per worker slot: updates dropped for non-finite values
    stop: Any                     # multiprocessing Event: workers and evaluator wind down
    workers_done: Any             # multiprocessing Event: all workers joined; write the final checkpoint
    evaluate_at_end: Any          # multiprocessing Event: evaluate before that final checkpoint
    base_frames: int = 0          # frames and episodes done before a resume
    base_episodes: int = 0

    @classmethod
    def create(cls, model: ActorCritic, config: Config, context: Any) -> SharedTraining:
        params = bind_flat_parameters(model).share_memory_()
        optimizer = SharedAdam([params], lr=config.lr, eps=config.adam_eps)
        slots = config.workers

        def counter() -> torch.Tensor:
            return torch.zeros(slots, dtype=torch.int64).share_memory_()

        return cls(params, optimizer, counter(), counter(), counter(), context.Event(), context.Event(),
                   context.Event())

    def total_frames(self) -> int:
        return self.base_frames + int(self.frames.sum())

    def total_episodes(self) -> int:
        return self.base_episodes + int(self.episodes.sum())

    def budget_reached(self, config: Config) -> bool:
        return self.total_frames() >= config.total_frames
