"""Learning benchmark: frames and wall time until the evaluator's mean return first reaches a target.

    python scripts/bench_learning.py --target 475 --repeats 3 -- --env-id CartPole-v1 --workers 2 --lr 1e-3

Everything after `--` is passed to `a3c train` (any of its flags). Each repeat is a fresh run with
seed base+i; the table gives, per run, the first evaluation at or above the target (frames, seconds
since the start) and the best evaluation. Writes JSON beside the table.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import shutil
import tempfile
from pathlib import Path

from a3c.cli import build_parser, settings_from_args
from a3c.config import Config
from a3c.logger import EVALUATIONS_CSV
from a3c.trainer import Trainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="benchmarks/learning.json")
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    train_args = [a for a in args.train_args if a != "--"]
    settings = settings_from_args(build_parser().parse_args(["train", *train_args]))
    results = []
    print(f"{'seed':>4} {'frames to target':>16} {'seconds to target':>17} {'best eval':>9} {'total s':>8}")
    for repeat in range(args.repeats):
        runs = tempfile.mkdtemp(prefix="a3c-learning-")
        try:
            config = Config.from_dict({**settings, "runs_dir": runs, "run_name": "run",
                                       "seed": settings.get("seed", 1) + repeat})
            output = io.StringIO()
            with contextlib.redirect_stdout(output):  # the table is the output
                code = Trainer(config).run()
            if code != 0:
                print("\n".join(output.getvalue().splitlines()[-5:]), flush=True)
            with open(Path(runs) / "run" / EVALUATIONS_CSV) as f:
                rows = list(csv.DictReader(f))
        finally:
            shutil.rmtree(runs, ignore_errors=True)
        hit = next((r for r in rows if float(r["mean_reward"]) >= args.target), None)
        best = max(float(r["mean_reward"]) for r in rows)
        result = {"seed": config.seed, "frames_to_target": int(hit["frames"]) if hit else None,
                  "seconds_to_target": float(hit["time"]) if hit else None, "best_eval": best,
                  "total_seconds": float(rows[-1]["time"]), "config": config.to_dict()}
        results.append(result)
        frames = f"{result['frames_to_target']:,}" if hit else "not reached"
        seconds = f"{result['seconds_to_target']:.1f}" if hit else "-"
        print(f"{config.seed:>4} {frames:>16} {seconds:>17} {best:>9.1f} {result['total_seconds']:>8.1f}",
              flush=True)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"target": args.target, "train_args": train_args, "runs": results},
                                 indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
