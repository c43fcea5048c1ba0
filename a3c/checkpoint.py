"""Checkpoints: written atomically, loaded with clear errors, found from a run directory."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

FORMAT = "a3c-checkpoint"
VERSION = 1
CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.pt"
BEST = "best.pt"


class CheckpointError(Exception):
    """A checkpoint or run directory that cannot be used; the message says why."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`, so a crash
    at any moment leaves either the old checkpoint or the new one, never a broken file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import torch  # here, not at the top: `a3c plot` finds runs without loading torch

    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, TypeError,
            pickle.UnpicklingError) as error:  # the many ways a damaged file fails to load
        raise CheckpointError(f"checkpoint {path} is truncated or not a checkpoint "
                              f"({type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an a3c checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {payload.get('version')}, "
                              f"this a3c reads version {VERSION}")
    return payload


def run_checkpoint(run_dir: str | Path, which: str = BEST) -> Path:
    """The `which` checkpoint of a run, falling back to the latest one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"no run directory at {run_dir}")
    for name in (which, LATEST):
        candidate = run_dir / CHECKPOINT_DIR / name
        if candidate.exists():
            return candidate
    raise CheckpointError(f"run directory {run_dir} has no checkpoint yet")


def newest_run(runs_dir: str | Path) -> Path:
    runs = [p for p in Path(runs_dir).glob("*") if (p / "config.json").exists()]
    if not runs:
        raise CheckpointError(f"no runs under {runs_dir}/: train first (make train)")
    return max(runs, key=lambda p: (p / "config.json").stat().st_mtime)  # the last started or resumed


def resolve_checkpoint(target: str | Path, which: str = BEST) -> Path:
    """A checkpoint file as given, or the `which` checkpoint of a run directory."""
    target = Path(target)
    return run_checkpoint(target, which) if target.is_dir() else target
