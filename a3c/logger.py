"""What a run reports: train_episodes.csv (always), the console (a progress bar on a terminal,
plain status lines otherwise), and TensorBoard when it is installed. Only the parent writes here."""

from __future__ import annotations

import csv
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from a3c.config import Config

TRAIN_EPISODES_CSV = "train_episodes.csv"
EPISODE_FIELDS = ["frames", "worker", "return", "length", "time"]
EVALUATIONS_CSV = "evaluations.csv"  # written by the evaluator
EVAL_FIELDS = ["frames", "episodes", "time", "mean_reward", "std_reward", "min_reward", "max_reward",
               "mean_ep_length", "n_episodes"]
RECENT_EPISODES = 100
TENSORBOARD_DIR = "tensorboard"


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
        self.elapsed = elapsed or (lambda at=None: (time.time() if at is None else at) - start)
        self.recent_returns: deque[float] = deque(maxlen=RECENT_EPISODES)
        self.recent_lengths: deque[int] = deque(maxlen=RECENT_EPISODES)
        self.last_eval: dict[str, float] | None = None
        self.train_stats: dict[int, dict[str, float]] = {}  # latest report of each worker
        path = run_dir / TRAIN_EPISODES_CSV
        new = not path.exists()
        self.episodes_file = open(path, "a", newline="")  # noqa: SIM115 -- open for the whole run
        self.episodes = csv.writer(self.episodes_file)
        if new:
            self.episodes.writerow(EPISODE_FIELDS)
        self.tensorboard = _tensorboard_writer(run_dir / TENSORBOARD_DIR) if tensorboard else None
        if self.tensorboard is not None:
            self._log_hyperparameters()
        self.bar = _progress_bar(config.total_frames, initial_frames, self.stream)
        self.bar_frames = initial_frames

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
        self.episodes.writerow([frames, worker, episode_return, length, round(self.elapsed(end_time), 3)])

    def train(self, worker: int, stats: dict[str, float]) -> None:
        self.train_stats[worker] = stats

    def evaluation(self, frames: int, score: dict[str, float], improved: bool) -> None:
        self.last_eval = score
        mark = " (new best)" if improved else ""
        self.message(f"eval at {frames:,} frames: {score['mean_reward']:.2f} ± {score['std_reward']:.2f} "
                     f"over {score['n_episodes']} episodes, min {score['min_reward']:.1f}, "
                     f"max {score['max_reward']:.1f}, mean length {score['mean_ep_length']:.1f}{mark}")
        if self.tensorboard is not None:
            self.tensorboard.add_scalar("eval/mean_reward", score["mean_reward"], frames)
            self.tensorboard.add_scalar("eval/std_reward", score["std_reward"], frames)
            self.tensorboard.add_scalar("eval/mean_ep_length", score["mean_ep_length"], frames)

    def status(self, frames: int, episodes: int, fps: float, rss_bytes: int) -> None:
        """Every status interval: the bar (or a plain line), TensorBoard scalars, a CSV flush."""
        recent = float(np.mean(self.recent_returns)) if self.recent_returns else None
        evaluation = (f"{self.last_eval['mean_reward']:.1f} ± {self.last_eval['std_reward']:.1f}"
                      if self.last_eval else "-")
        if self.bar is not None:
            shown = min(frames, self.config.total_frames)  # past the total tqdm drops its bar
            self.bar.update(shown - self.bar_frames)
            self.bar_frames = shown
            self.bar.set_postfix_str(f"{fps:,.0f} fps, ep {episodes:,}, return "
                                     f"{'-' if recent is None else f'{recent:.1f}'}, eval {evaluation}",
                                     refresh=True)
        else:
            elapsed = time.strftime("%H:%M:%S", time.gmtime(self.elapsed(None)))
            budget = self.config.total_frames
            print(f"[{elapsed}] frames {frames:,}/{budget:,} ({100 * frames / budget:.1f}%) | "
                  f"{fps:,.0f} fps | episodes {episodes:,} | return(last {len(self.recent_returns)}) "
                  f"{'-' if recent is None else f'{recent:.1f}'} | eval {evaluation} | "
                  f"mem {rss_bytes / 2**20:,.0f} MiB", file=self.stream, flush=True)
        self.episodes_file.flush()
        if self.tensorboard is not None:
            self._write_scalars(frames, fps, recent)

    def _write_scalars(self, frames: int, fps: float, recent: float | None) -> None:
        board = self.tensorboard
        board.add_scalar("time/fps", fps, frames)
        if recent is not None:
            board.add_scalar("rollout/ep_rew_mean", recent, frames)
            board.add_scalar("rollout/ep_len_mean", float(np.mean(self.recent_lengths)), frames)
        if self.train_stats:
            for key in ("policy_loss", "value_loss", "entropy", "grad_norm", "learning_rate"):
                board.add_scalar(f"train/{key}", float(np.mean([s[key] for s in self.train_stats.values()])),
                                 frames)
        board.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.episodes_file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
