"""`a3c plot`: training return (smoothed) and evaluation mean ± std of runs, against environment
frames and against wall-clock seconds, with published scores of the game beside them.

Reads only the run directory's CSV and JSON files: it starts without torch or gymnasium.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from a3c.checkpoint import writing
from a3c.config import ConfigError
from a3c.logger import EVALUATIONS_CSV, TRAIN_EPISODES_CSV
from a3c.scores import PUBLISHED_AGENTS, game_key


def game_name(env_id: str) -> str:
    """"ALE/Pong-v5" -> "Pong"."""
    return env_id.split("/")[-1].split("-v")[0]


def _columns(path: Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    if not path.exists():
        return {name: np.empty(0) for name in names}
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {name: np.array([float(r[name]) for r in rows]) for name in names}


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to `window` values (shorter at the start)."""
    if len(values) == 0:
        return values
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    ends = np.arange(1, len(values) + 1)
    return (cumulative[ends] - cumulative[ends - counts]) / counts


def plot_runs(run_dirs: Sequence[str | Path], output: str | Path, window: int = 100) -> Path:
    """Write a PNG comparing the runs; raises ConfigError for a folder that is not a run."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plotting needs matplotlib: pip install 'a3c[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    figure, axes = plt.subplots(2, 2, figsize=(14, 8), sharey="row")
    games = set()
    for index, run in enumerate(Path(r) for r in run_dirs):
        if not (run / "config.json").exists():
            raise ConfigError(f"{run} is not a run directory (no config.json)")
        games.add(game_name(json.loads((run / "config.json").read_text())["env_id"]))
        color = f"C{index}"
        train = _columns(run / TRAIN_EPISODES_CSV, ["frames", "return", "time"])
        order = np.argsort(train["frames"], kind="stable")  # workers report out of order
        evaluation = _columns(run / EVALUATIONS_CSV, ["frames", "time", "mean_reward", "std_reward"])
        for column, x in enumerate(("frames", "time")):
            if len(order):
                axes[0, column].plot(train[x][order], smooth(train["return"][order], window), color=color,
                                     label=run.name)
            if len(evaluation["frames"]):
                mean, std = evaluation["mean_reward"], evaluation["std_reward"]
                axes[1, column].plot(evaluation[x], mean, marker="o", markersize=3, color=color, label=run.name)
                axes[1, column].fill_between(evaluation[x], mean - std, mean + std, color=color, alpha=0.2)
    # Published scores of the game, drawn as lines (a3c/scores.py says how each was measured).
    references = [(agent.label, agent.scores[game_key(game)]) for game in sorted(games)
                  for agent in PUBLISHED_AGENTS if game_key(game) in agent.scores]
    for axis in axes.flat:
        for number, (label, score) in enumerate(references):
            axis.axhline(score, color="0.4", linestyle=("--", ":", "-.")[number % 3], linewidth=1,
                         label=f"{label}: {score:g}")
    axes[0, 0].set_title(f"Training episode return (mean of the last {window} episodes)")
    axes[1, 0].set_title("Evaluation return (mean ± std over the evaluation episodes)")
    for row in range(2):
        axes[row, 0].set_ylabel("return")
        axes[row, 1].set_title(axes[row, 0].get_title())
    for column, label in enumerate(("environment frames", "wall-clock seconds of training")):
        axes[1, column].set_xlabel(label)
    for axis in axes.flat:
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_formatter(EngFormatter())
    for axis in axes[:, 0]:  # the right column shares the left's lines and colours
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="best", fontsize="small")
    figure.tight_layout()
    output = Path(output)
    try:
        with writing(output):
            output.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(output, dpi=100)
    finally:
        plt.close(figure)
    return output
