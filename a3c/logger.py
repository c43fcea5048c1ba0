"""What a run reports: train_episodes.csv (always), the console (a progress bar on a terminal,
plain status lines otherwise), and TensorBoard when it is installed. Only the parent writes here.

A file that cannot be written (a full disk) never raises here: the first failure is kept in
`write_error`, files are left alone from then on, and the trainer stops the run with that line.
"""

from __future__ import annotations

import csv
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from a3c.checkpoint import write_failure
from a3c.config import Config
from a3c.messages import LEARNER_STAT_NAMES, LearnerStats

TRAIN_EPISODES_CSV = "train_episodes.csv"
EPISODE_FIELDS = ["frames", "worker", "return", "length", "time"]
EVALUATIONS_CSV = "evaluations.csv"  # written by the evaluator
EVAL_FIELDS = ["frames", "episodes", "time", "mean_reward", "std_reward", "min_reward", "max_reward",
               "mean_ep_length", "n_episodes"]
RECENT_EPISODES = 100
TENSORBOARD_DIR = "tensorboard"


def append_csv(path: Path, fields: list[str]) -> tuple[TextIO, Any]:
    """Open a run's CSV file to append rows, writing its header if the file is new (a resumed run
    appends to the file it had). Returns the file and a csv.writer on it."""
    new = not path.exists()
    file = open(path, "a", newline="")  # noqa: SIM115 -- open for the whole run
    writer = csv.writer(file)
    if new:
        writer.writerow(fields)
    return file, writer


def read_rows(path: Path) -> list[dict[str, str]]:
    """A run's CSV file as dictionaries, one a row; none if the file is not there yet."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def drop_rows_after(path: Path, frames: int) -> int:
    """Remove the rows of a run's CSV file (its first column: frames) past `frames`, and a last row
    cut short: what a run wrote after its last checkpoint before it was killed, which its resume
    trains again. Rewritten atomically; returns how many rows went."""
    if not path.exists():
        return 0
    with open(path, newline="") as f:
        text = f.read()
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        return 0
    header, body = rows[0], rows[1:]
    kept = [row for row in body if len(row) == len(header) and row[0].isdigit() and int(row[0]) <= frames]
    if len(kept) == len(body) and text.endswith("\n"):
        return 0
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", newline="") as f:
        csv.writer(f).writerows([header, *kept])
    os.replace(temporary, path)
    return len(body) - len(kept)


def _tensorboard_writer(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the optional extra is not installed; the CSV logs stay
        return None
    return SummaryWriter(str(log_dir))


def _progress_bar(total: int, initial: int, stream: Any) -> Any:
    if not stream.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="frame", unit_scale=True, dynamic_ncols=True,
                file=stream, smoothing=0.1)


class RunLogger:
    def __init__(self, config: Config, run_dir: Path, initial_frames: int = 0,
                 elapsed: Callable[[float | None], float] | None = None, tensorboard: bool = True,
                 stream: Any = None) -> None:
        """`elapsed(t)`: the run's seconds of training at time.time() t (SharedTraining.elapsed);
        by default, seconds since this logger started."""
        self.config = config
        self.stream = stream if stream is not None else sys.stdout
        start = time.time()

        def since_start(at: float | None) -> float:
            return (time.time() if at is None else at) - start

        self.elapsed = elapsed or since_start
        self.recent_returns: deque[float] = deque(maxlen=RECENT_EPISODES)
        self.recent_lengths: deque[int] = deque(maxlen=RECENT_EPISODES)
        self.last_eval: dict[str, float] | None = None
        self.train_stats: dict[int, LearnerStats] = {}  # latest report of each worker
        self.write_error: str | None = None
        self.episodes_file: Any = None
        self.tensorboard: Any = None
        self.previous_excepthook: Any = None
        self.bar = _progress_bar(config.total_frames, initial_frames, self.stream)
        self.bar_frames = initial_frames
        self.episodes_path = run_dir / TRAIN_EPISODES_CSV
        self.tensorboard_dir = run_dir / TENSORBOARD_DIR
        if initial_frames > 0:  # a resume: what came after its checkpoint is trained again
            for path in (self.episodes_path, run_dir / EVALUATIONS_CSV):
                self._write(path, partial(self._drop_rows_after, path, initial_frames))
            self._recall_recent_episodes()
        self._write(self.episodes_path, self._open_episodes)
        if tensorboard:
            self._write(self.tensorboard_dir, self._open_tensorboard)

    def _write(self, path: Path, action: Callable[[], Any]) -> None:
        """Run `action`, which writes `path`, unless a write has failed already; keep the first
        OSError as write_error."""
        if self.write_error is not None:
            return
        try:
            action()
        except OSError as error:
            self.write_error = write_failure(path, error)

    def _drop_rows_after(self, path: Path, frames: int) -> None:
        dropped = drop_rows_after(path, frames)
        if dropped:
            self.message(f"{path.name}: {dropped} rows after the checkpoint's {frames:,} frames dropped "
                         "(written before the run was killed; trained again now)")

    def _recall_recent_episodes(self) -> None:
        """A resume goes on from the last RECENT_EPISODES training episodes the run kept, so its
        training return (console, TensorBoard) carries on instead of starting from none."""
        try:
            rows = [(float(row["return"]), int(row["length"]))
                    for row in read_rows(self.episodes_path)[-RECENT_EPISODES:]]
        except (OSError, ValueError, TypeError, KeyError):  # unreadable: the return starts from none
            return
        for episode_return, length in rows:
            self.recent_returns.append(episode_return)
            self.recent_lengths.append(length)

    def _open_episodes(self) -> None:
        self.episodes_file, self.episodes = append_csv(self.episodes_path, EPISODE_FIELDS)

    def _open_tensorboard(self) -> None:
        self._catch_writer_thread_errors()  # before the writer starts its thread
        self.tensorboard = _tensorboard_writer(self.tensorboard_dir)
        if self.tensorboard is not None:
            self._log_hyperparameters()

    def _catch_writer_thread_errors(self) -> None:
        """TensorBoard writes from a thread of its own, which re-raises a failed write there: keep it
        as this run's write error instead of a traceback on the console."""
        previous = self.previous_excepthook = threading.excepthook

        def hook(args: threading.ExceptHookArgs) -> None:
            if isinstance(args.exc_value, OSError):
                if self.write_error is None:
                    self.write_error = write_failure(self.tensorboard_dir, args.exc_value)
            else:
                previous(args)

        threading.excepthook = hook

    def _log_hyperparameters(self) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in self.config.to_dict().items())
        self.tensorboard.add_text("hyperparameters", "| setting | value |\n|---|---|\n" + rows, 0)

    def message(self, text: str) -> None:
        """A line for the user, printed above the progress bar when there is one."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def episode(self, frames: int, worker: int, episode_return: float, length: int, end_time: float) -> None:
        self.recent_returns.append(episode_return)
        self.recent_lengths.append(length)
        row = [frames, worker, episode_return, length, round(self.elapsed(end_time), 3)]
        self._write(self.episodes_path, lambda: self.episodes.writerow(row))

    def train(self, stats: LearnerStats) -> None:
        self.train_stats[stats.worker] = stats

    def evaluation(self, frames: int, score: dict[str, float], improved: bool) -> None:
        self.last_eval = score
        mark = " (new best)" if improved else ""
        self.message(f"eval at {frames:,} frames: {score['mean_reward']:.2f} ± {score['std_reward']:.2f} "
                     f"over {score['n_episodes']} episodes, min {score['min_reward']:.1f}, "
                     f"max {score['max_reward']:.1f}, mean length {score['mean_ep_length']:.1f}{mark}")
        if self.tensorboard is not None:
            self._write(self.tensorboard_dir, lambda: self._write_evaluation_scalars(frames, score))

    def _write_evaluation_scalars(self, frames: int, score: dict[str, float]) -> None:
        for key in ("mean_reward", "std_reward", "mean_ep_length"):
            self.tensorboard.add_scalar(f"eval/{key}", score[key], frames)

    def status(self, frames: int, episodes: int, fps: float, rss_bytes: int) -> None:
        """Every status interval: the bar (or a plain line), TensorBoard scalars, a CSV flush."""
        recent = float(np.mean(self.recent_returns)) if self.recent_returns else None
        evaluation = (f"{self.last_eval['mean_reward']:.1f} ± {self.last_eval['std_reward']:.1f}"
                      if self.last_eval else "-")
        reports = self.train_stats.values()
        staleness = (f"{np.mean([s.staleness for s in reports]):.1f} (max {max(s.staleness_max for s in reports):.0f})"
                     if reports else "-")
        if self.bar is not None:
            shown = min(frames, self.config.total_frames)  # past the total tqdm drops its bar
            self.bar.update(shown - self.bar_frames)
            self.bar_frames = shown
            self.bar.set_postfix_str(f"{fps:,.0f} fps, ep {episodes:,}, return "
                                     f"{'-' if recent is None else f'{recent:.1f}'}, eval {evaluation}, "
                                     f"staleness {staleness}", refresh=True)
        else:
            elapsed = time.strftime("%H:%M:%S", time.gmtime(self.elapsed(None)))
            budget = self.config.total_frames
            print(f"[{elapsed}] frames {frames:,}/{budget:,} ({100 * frames / budget:.1f}%) | "
                  f"{fps:,.0f} fps | episodes {episodes:,} | return(last {len(self.recent_returns)}) "
                  f"{'-' if recent is None else f'{recent:.1f}'} | eval {evaluation} | staleness {staleness} | "
                  f"mem {rss_bytes / 2**20:,.0f} MiB", file=self.stream, flush=True)
        self._write(self.episodes_path, lambda: self.episodes_file.flush())
        if self.tensorboard is not None:
            self._write(self.tensorboard_dir, lambda: self._write_scalars(frames, fps, recent))

    def _write_scalars(self, frames: int, fps: float, recent: float | None) -> None:
        board = self.tensorboard
        board.add_scalar("time/fps", fps, frames)
        if recent is not None:
            board.add_scalar("rollout/ep_rew_mean", recent, frames)
            board.add_scalar("rollout/ep_len_mean", float(np.mean(self.recent_lengths)), frames)
        if self.train_stats:
            for key in LEARNER_STAT_NAMES:
                values = [getattr(s, key) for s in self.train_stats.values()]
                values = [v for v in values if np.isfinite(v)]  # a report whose returns did not vary
                if values:  # over the workers' latest reports: the mean, or the maximum of maxima
                    board.add_scalar(f"train/{key}", float(max(values) if key.endswith("_max") else np.mean(values)),
                                     frames)
        board.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        for path, file in ((self.episodes_path, self.episodes_file), (self.tensorboard_dir, self.tensorboard)):
            if file is not None:
                try:
                    file.close()
                except OSError as error:  # the last buffered rows; the run has stopped already
                    self.write_error = self.write_error or write_failure(path, error)
        if self.previous_excepthook is not None:
            threading.excepthook = self.previous_excepthook
