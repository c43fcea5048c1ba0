"""What the children tell the parent, one dataclass a kind, sent through their pipes."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


def parent_gone(error: OSError, parent_pid: int) -> bool:
    """Whether a child's OSError means its parent is gone, so that the child should end quietly.
    A broken pipe says so at once: a killed parent's pipes close before the kernel hands its
    children to a new parent, so for a moment the old parent's pid is still ours to see."""
    return isinstance(error, BrokenPipeError | ConnectionResetError) or os.getppid() != parent_pid


@dataclass(frozen=True)
class EpisodeFinished:
    """A worker finished a training episode (the game's own reward, not the learner's)."""

    worker: int
    frames: int          # the run's total frames when it was reported
    episode_return: float
    length: int
    end_time: float      # time.time() at its end


@dataclass(frozen=True)
class LearnerStats:
    """A worker's mean losses over its updates since its last report."""

    worker: int
    policy_loss: float
    value_loss: float
    entropy: float
    grad_norm: float
    explained_variance: float  # 1 - Var[returns - values] / Var[returns] (nan if returns did not vary)
    active_units: float  # the fraction of the body's last layer's units that fired, per update
    staleness: float  # mean over its updates: others' updates stepped between its weight copy and its step
    staleness_max: float
    reward_prediction_loss: float  # nan without reward prediction (a3c/auxiliary.py)
    reward_prediction_accuracy: float
    advantage_scale: float  # the root mean square of recent advantages (nan without entropy_relative)
    clip_fraction: float  # further passes' share of samples outside the clip (nan with one pass)
    learning_rate: float


# What the logs show of LearnerStats (TensorBoard's train/ keys).
LEARNER_STAT_NAMES = tuple(f.name for f in fields(LearnerStats) if f.name != "worker")


@dataclass(frozen=True)
class UpdateSkipped:
    """A worker dropped an update whose loss or gradient was not finite."""

    worker: int
    grad_norm: float


@dataclass(frozen=True)
class EvaluatorStarted:
    device: str


@dataclass(frozen=True)
class Evaluated:
    """An evaluation's score (evaluator.Score's fields), and whether it is the best so far."""

    frames: int
    score: dict[str, float]
    improved: bool


@dataclass(frozen=True)
class SharedModelNonFinite:
    frames: int


@dataclass(frozen=True)
class WriteFailed:
    """A file of the run could not be written (checkpoint.RunWriteError's message)."""

    reason: str


@dataclass(frozen=True)
class Note:
    """A line for the run's log from elsewhere (a Ray node: a worker died and was replaced)."""

    text: str


Message = (EpisodeFinished | LearnerStats | UpdateSkipped | EvaluatorStarted | Evaluated | SharedModelNonFinite
           | WriteFailed | Note)
