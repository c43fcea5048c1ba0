"""`a3c plot`: training return (smoothed) and evaluation mean ± std against frames, one line per run."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from a3c.checkpoint import CheckpointError
from a3c.evaluator import EVALUATIONS_CSV
from a3c.logger import TRAIN_EPISODES_CSV


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
    """Write a PNG comparing the runs; raises CheckpointError for a folder that is not a run."""
    try:
        import matplotlib
    except ImportError:
        raise CheckpointError("plotting needs matplotlib: pip install 'a3c[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    figure, (train_axis, eval_axis) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    for index, run in enumerate(Path(r) for r in run_dirs):
        if not (run / "config.json").exists():
            raise CheckpointError(f"{run} is not a run directory (no config.json)")
        color = f"C{index}"
        train = _columns(run / TRAIN_EPISODES_CSV, ["frames", "return"])
        order = np.argsort(train["frames"], kind="stable")  # workers report out of order
        if len(order):
            train_axis.plot(train["frames"][order], smooth(train["return"][order], window), color=color,
                            label=run.name)
        evaluation = _columns(run / EVALUATIONS_CSV, ["frames", "mean_reward", "std_reward"])
        if len(evaluation["frames"]):
            mean, std = evaluation["mean_reward"], evaluation["std_reward"]
            eval_axis.plot(evaluation["frames"], mean, marker="o", markersize=3, color=color, label=run.name)
            eval_axis.fill_between(evaluation["frames"], mean - std, mean + std, color=color, alpha=0.2)
    train_axis.set_title(f"Training episode return (mean of the last {window} episodes)")
    train_axis.set_ylabel("return")
    eval_axis.set_title("Evaluation return (mean ± std over the evaluation episodes)")
    eval_axis.set_ylabel("return")
    eval_axis.set_xlabel("environment frames")
    for axis in (train_axis, eval_axis):
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_formatter(EngFormatter())
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="best")
    figure.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output
