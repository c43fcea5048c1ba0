"""Scaling benchmark: train one game at several worker counts, one run after another, and report per
count the frames and the seconds of training to a target evaluation score, the training return at a
few frame marks, and the staleness of the updates (how many other updates landed between a worker's
weight copy and its step); then a picture of all the runs (score against frames and against seconds,
one line per worker count: `a3c plot`).

    python scripts/bench_scaling.py --workers 2 16 --target 18 --runs-dir benchmarks/scaling \\
        -- --env-id ALE/Pong-v5 --total-frames 5000000 --eval-every-frames 250000

Everything after `--` goes to `a3c train` for every count. A count whose run directory exists is
resumed to its budget (a stopped benchmark goes on where it was), and skipped if it is there. Each
run's console output is kept beside its directory as NAME.log; the table is printed and written as
JSON and markdown beside the picture.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from a3c import api
from a3c.cli import build_parser, settings_from_args
from a3c.config import Config
from a3c.logger import EVALUATIONS_CSV, TRAIN_EPISODES_CSV, read_rows
from a3c.plot import game_name, plot_runs

STALENESS = re.compile(r"staleness ([\d.]+) \(max (\d+)\)")
MARKS = (1_000_000, 2_000_000, 3_000_000, 4_000_000, 5_000_000, 10_000_000)


def training_return_at(episodes: list[dict[str, str]], frames: int, reached: int, window: int = 100
                       ) -> float | None:
    """The mean return of the last `window` training episodes reported by `frames` frames, of a run
    that trained `reached` frames."""
    before = sorted((int(r["frames"]), float(r["return"])) for r in episodes if int(r["frames"]) <= frames)
    if len(before) < window // 2 or reached < frames:
        return None  # too few episodes yet, or the run did not get this far
    return float(np.mean([value for _, value in before[-window:]]))


def run_count(workers: int, settings: dict[str, Any], runs_dir: Path) -> Path:
    """Train (or resume, or skip) the run of `workers` workers; its directory."""
    name = f"{game_name(settings.get('env_id', Config().env_id))}-{workers}w"
    run_dir = runs_dir / name
    config = Config.from_dict({**settings, "workers": workers, "runs_dir": str(runs_dir), "run_name": name})
    runs_dir.mkdir(parents=True, exist_ok=True)
    with open(runs_dir / f"{name}.log", "a") as log, contextlib.redirect_stdout(log):
        result = api.train_to_budget(config, {**settings, "workers": workers})
    print(f"{name}: " + ("done already" if result is None else result.reason), flush=True)
    if result is not None and result.stopped:
        raise SystemExit(result.exit_code)  # stopped by the user: the next count waits for a rerun
    return run_dir


def summarise(workers: int, run_dir: Path, target: float) -> dict[str, Any]:
    evaluations = read_rows(run_dir / EVALUATIONS_CSV)
    episodes = read_rows(run_dir / TRAIN_EPISODES_CSV)
    reached = int(evaluations[-1]["frames"]) if evaluations else 0  # the final evaluation's, at the run's end
    hit = next((r for r in evaluations if float(r["mean_reward"]) >= target), None)
    log_path = run_dir.parent / f"{run_dir.name}.log"
    log = log_path.read_text() if log_path.exists() else ""
    staleness = [(float(m.group(1)), int(m.group(2))) for m in STALENESS.finditer(log)]
    return {"workers": workers, "run_dir": str(run_dir),
            "frames_to_target": int(hit["frames"]) if hit else None,
            "seconds_to_target": float(hit["time"]) if hit else None,
            "best_eval": max((float(r["mean_reward"]) for r in evaluations), default=None),
            "evaluations": len(evaluations),
            "frames": reached or None,
            "seconds": float(evaluations[-1]["time"]) if evaluations else None,
            "training_return": {mark: training_return_at(episodes, mark, reached) for mark in MARKS},
            "staleness_mean": float(np.mean([s for s, _ in staleness])) if staleness else None,
            "staleness_max": max((m for _, m in staleness), default=None)}


def markdown(results: list[dict[str, Any]], target: float) -> str:
    marks = [m for m in MARKS if any(r["training_return"][m] is not None for r in results)]
    head = (f"| workers | frames to {target:g} | seconds to {target:g} | best evaluation | "
            + " | ".join(f"training at {m / 1e6:g} M" for m in marks) + " | staleness mean (max) |")
    lines = [head, "|" + "---|" * (5 + len(marks))]
    for r in results:
        def number(value: float | None, form: str) -> str:
            return "-" if value is None else format(value, form)

        lines.append(f"| {r['workers']} | {number(r['frames_to_target'], ',')} | "
                     f"{number(r['seconds_to_target'], '.0f')} | {number(r['best_eval'], '.1f')} | "
                     + " | ".join(number(r["training_return"][m], ".1f") for m in marks)
                     + f" | {number(r['staleness_mean'], '.1f')} ({number(r['staleness_max'], 'd')}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", required=True, help="worker counts, run in this order")
    parser.add_argument("--target", type=float, required=True, help="evaluation mean return to reach")
    parser.add_argument("--runs-dir", required=True, help="where the runs, the table and the picture go")
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    train_args = [a for a in args.train_args if a != "--"]
    settings = settings_from_args(build_parser().parse_args(["train", *train_args]))
    runs_dir = Path(args.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for workers in args.workers:
        run_dir = run_count(workers, settings, runs_dir)
        results.append(summarise(workers, run_dir, args.target))
        print(markdown(results[-1:], args.target).splitlines()[-1], flush=True)
    table = markdown(results, args.target)
    print(table)
    (runs_dir / "scaling.md").write_text(table + "\n")
    (runs_dir / "scaling.json").write_text(json.dumps({"target": args.target, "train_args": train_args,
                                                       "results": results}, indent=2) + "\n")
    print(f"wrote {plot_runs([r['run_dir'] for r in results], runs_dir / 'scaling.png')}")


if __name__ == "__main__":
    main()
