"""The run directory: checkpoints written atomically and loaded with clear errors, found from a
run directory; the lock that keeps a second trainer out of a live run; and the one error that every
file a run writes turns into when the disk will not take it."""

from __future__ import annotations

import errno
import fcntl
import io
import os
import pickle
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads only where a checkpoint is written or read
    import torch

    from a3c.config import Config
    from a3c.shared import SharedTraining

FORMAT = "a3c-checkpoint"
VERSION = 1
CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.pt"
BEST = "best.pt"


LOCK_FILE = ".lock"


class CheckpointError(Exception):
    """A checkpoint or run directory that cannot be used; the message says why."""


class RunWriteError(Exception):
    """A file of the run could not be written (a full disk, say). The run stops at once: its last
    good checkpoint stays, and it resumes once the file can be written."""


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an OSError while writing `path` into a RunWriteError that names the file and the cause."""
    try:
        yield
    except OSError as error:
        raise RunWriteError(write_failure(path, error)) from None


def write_failure(path: str | Path, error: OSError) -> str:
    full = error.errno in (errno.ENOSPC, errno.EDQUOT)
    return (f"cannot write {path}: {error.strerror or error}"
            + (" (the disk is full: free some space, then --resume the run)" if full else ""))


def new_run_dir(config: Config) -> Path:
    name = config.run_name or (config.env_id.split("/")[-1].removesuffix("-v5").removesuffix("-v1")
                               + time.strftime("-%Y%m%d-%H%M%S"))
    root = Path(config.runs_dir)
    path = root / name
    suffix = 1
    while True:
        try:
            path.mkdir(parents=True)  # atomic: two trainers never get the same new directory
            return path
        except FileExistsError:
            suffix += 1
            path = root / f"{name}-{suffix}"
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise RunWriteError(write_failure(path, error)) from None
            raise CheckpointError(f"cannot create run directory {path}: {error.strerror}") from None


def lock_run_dir(run_dir: Path) -> IO[str]:
    """Hold `run_dir` for this process with an advisory lock (flock) on a file in it, which the
    operating system releases when the process ends however it ends, so a killed run never leaves a
    stale lock. Raises CheckpointError naming the holder's pid if another process holds it. Keep
    the returned file open for as long as the run lasts."""
    path = run_dir / LOCK_FILE
    with writing(path):
        lock = open(path, "a+")  # noqa: SIM115 -- held open for the whole run
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise CheckpointError(f"run directory {run_dir} is in use by another trainer (pid {holder}); "
                              "wait for it to end, or stop it first") from None
    try:
        with writing(path):
            lock.seek(0)
            lock.truncate()
            lock.write(f"{os.getpid()}\n")
            lock.flush()
    except RunWriteError:
        lock.close()
        raise
    return lock


def checkpoint_payload(config: Config, shared: SharedTraining, model_state: dict[str, torch.Tensor],
                       obs_shape: tuple[int, ...], n_actions: int, frames: int, episodes: int,
                       score: dict[str, float] | None, best_score: float | None) -> dict[str, Any]:
    """Everything a run needs to go on: the model, the shared optimizer's state (its running averages and step counts),
    the counters, the configuration, and the evaluation that came with it."""
    return {"config": config.to_dict(), "obs_shape": list(obs_shape), "n_actions": n_actions,
            "model": model_state, "optimizer": shared.optimizer.state_dict(), "frames": frames,
            "episodes": episodes, "score": score, "best_score": best_score, "seconds": shared.elapsed(),
            "saved_at": time.time()}


def check_fits(payload: dict[str, Any], obs_shape: tuple[int, ...], n_actions: int, path: str | Path) -> None:
    """Refuse a checkpoint made for another environment's observations or actions."""
    if list(obs_shape) != list(payload["obs_shape"]) or n_actions != payload["n_actions"]:
        raise CheckpointError(
            f"checkpoint {path} was made for observations {tuple(payload['obs_shape'])} and "
            f"{payload['n_actions']} actions, but {payload['config']['env_id']} gives {obs_shape} and {n_actions}")


def restore_model(model: torch.nn.Module, payload: dict[str, Any], path: str | Path) -> None:
    """Load the checkpoint's weights into `model`, or say in one line why they do not fit it."""
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {path} does not fit its model: "
                              f"{str(error).splitlines()[0]}") from None


def restore_training(shared: SharedTraining, payload: dict[str, Any]) -> None:
    """The shared optimizer's state (kept in shared memory: see SharedOptimizer.load_state_dict) and the
    counters of a resumed run; the weights come with the model (restore_model)."""
    shared.optimizer.load_state_dict(payload["optimizer"])
    shared.base_frames = int(payload["frames"])
    shared.base_episodes = int(payload["episodes"])
    shared.base_seconds = float(payload.get("seconds", 0.0))  # absent in older checkpoints


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`, so a crash
    at any moment leaves either the old checkpoint or the new one, never a broken file."""
    path = Path(path)
    with writing(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
    import torch  # here, not at the top: `a3c plot` finds runs without loading torch

    # Serialised in memory first: torch.save into a file turns a full disk into an opaque
    # RuntimeError, a plain write gives the OSError that says what happened.
    data = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, data)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with writing(path):
        try:
            with open(temporary, "wb") as f:
                f.write(data.getbuffer())
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


def remove_stale_temporaries(directory: Path) -> None:
    """Delete the temporary files of save_checkpoint writers that died mid-write (their pid is in
    the name), so that a killed evaluator leaves nothing behind."""
    for temporary in directory.glob(".*.tmp"):
        pid = temporary.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            temporary.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CheckpointWriter:
    """Writes checkpoints on a thread of its own, one at a time, so that serialising and fsyncing
    never holds up the caller's loop (the trainer's, which also watches the children). `error`
    keeps the first write's failure (RunWriteError's message)."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.error: str | None = None
        self.written = 0  # checkpoints written so far

    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def write(self, path: Path, payload: dict[str, Any]) -> None:
        """Start writing `payload` to `path`; the caller waits for the previous write first."""
        assert not self.busy()
        self.thread = threading.Thread(target=self._write, args=(path, payload), name="a3c-checkpoint",
                                       daemon=True)
        self.thread.start()

    def _write(self, path: Path, payload: dict[str, Any]) -> None:
        try:
            save_checkpoint(path, payload)
            self.written += 1
        except RunWriteError as error:
            self.error = self.error or str(error)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds for the write under way; whether none is left."""
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.busy()


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
