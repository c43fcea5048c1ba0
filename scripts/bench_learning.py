"""Learning benchmark: run a game for a frame budget and report the frames and wall-clock seconds at
which the evaluator's mean return first reached a target score.

    python scripts/bench_learning.py --target 18 --runs-dir benchmarks/runs -- --env-id ALE/Pong-v5 --total-frames 10000000
    python scripts/bench_learning.py --target 475 --repeats 3 -- --env-id CartPole-v1 --workers 2 --lr 1e-3

Everything after `--` is passed to `a3c train` (any of its flags, --ray too). --loopback-nodes N
starts a Ray cluster of N nodes on 127.0.0.1 here (workers/N CPUs each) and trains on it, to compare
Ray with the local trainer on one machine. Each repeat is a fresh run with
seed base+i. The table gives, per run, the first evaluation at or above the target (frames, seconds
of training), the best and the last evaluation. With --runs-dir the runs are kept there, for
`a3c plot` (score against frames and seconds, published scores beside it); else in a temporary folder
that is removed. Writes JSON beside the table.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from a3c.cli import build_parser, settings_from_args
from a3c.config import Config, RayOptions
from a3c.logger import EVALUATIONS_CSV
from a3c.plot import game_name
from a3c.trainer import Trainer


@contextlib.contextmanager
def loopback_cluster(nodes: int, cpus: int) -> Iterator[str]:
    """A Ray cluster of `nodes` nodes on 127.0.0.1; its address."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep Ray on loopback (read when ray is imported)
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": cpus, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus, node_ip_address="127.0.0.1")
        yield cluster.address
    finally:
        cluster.shutdown()


def train(config: Config, ray: RayOptions | None) -> Trainer:
    """One run, locally or on Ray; its output is swallowed (the table is the output)."""
    cluster, remote = None, None
    if ray is not None:
        from a3c.ray_cluster import RayCluster, RayWorkers

        cluster = RayCluster(ray, config.workers)
        remote = partial(RayWorkers, cluster, ray)
    try:
        output = io.StringIO()
        trainer = Trainer(config, remote=remote)
        with contextlib.redirect_stdout(output):
            code = trainer.run()
        if code != 0:
            print("\n".join(output.getvalue().splitlines()[-5:]), flush=True)
        return trainer
    finally:
        if cluster is not None:
            cluster.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, required=True, help="evaluation mean return to reach")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--runs-dir", help="keep the runs here (default: a temporary folder, removed)")
    parser.add_argument("--loopback-nodes", type=int, help="train on a Ray cluster of this many nodes on 127.0.0.1")
    parser.add_argument("--output", default="benchmarks/learning.json")
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    train_args = [a for a in args.train_args if a != "--"]
    parsed = build_parser().parse_args(["train", *train_args])
    settings = settings_from_args(parsed)
    ray = None if parsed.ray is None else RayOptions(parsed.ray or None, parsed.nodes, parsed.exchange_interval)
    with contextlib.ExitStack() as stack:
        if args.loopback_nodes:
            workers = settings.get("workers", Config().workers)
            address = stack.enter_context(loopback_cluster(args.loopback_nodes, workers // args.loopback_nodes))
            ray = RayOptions(address, args.loopback_nodes, parsed.exchange_interval)
        results = run_all(args, train_args, settings, ray)
    output_path = Path(args.output)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    output_path.write_text(json.dumps({"target": args.target, "train_args": train_args,
                                       "loopback_nodes": args.loopback_nodes, "runs": results}, indent=2) + "\n")
    print(f"wrote {output_path}")


def run_all(args: argparse.Namespace, train_args: list[str], settings: dict[str, Any],
            ray: RayOptions | None) -> list[dict[str, Any]]:
    results = []
    print(f"{'seed':>4} {'frames to target':>16} {'seconds to target':>17} {'best eval':>9} {'last eval':>9} "
          f"{'frames':>11} {'seconds':>8}")
    for repeat in range(args.repeats):
        runs = args.runs_dir or tempfile.mkdtemp(prefix="a3c-learning-")
        seed = settings.get("seed", 1) + repeat
        config = Config.from_dict({**settings, "runs_dir": runs, "seed": seed,
                                   "run_name": f"{game_name(settings.get('env_id', Config().env_id))}-seed{seed}"})
        try:
            trainer = train(config, ray)
            with open(trainer.run_dir / EVALUATIONS_CSV) as f:
                rows = list(csv.DictReader(f))
        finally:
            if not args.runs_dir:
                shutil.rmtree(runs, ignore_errors=True)
        hit = next((r for r in rows if float(r["mean_reward"]) >= args.target), None)
        result = {"seed": seed, "run_dir": str(trainer.run_dir) if args.runs_dir else None,
                  "frames_to_target": int(hit["frames"]) if hit else None,
                  "seconds_to_target": float(hit["time"]) if hit else None,
                  "best_eval": max(float(r["mean_reward"]) for r in rows),
                  "last_eval": float(rows[-1]["mean_reward"]), "frames": int(rows[-1]["frames"]),
                  "seconds": float(rows[-1]["time"]), "ray": None if ray is None else vars(ray),
                  "config": config.to_dict()}
        results.append(result)
        frames = f"{result['frames_to_target']:,}" if hit else "not reached"
        seconds = f"{result['seconds_to_target']:.1f}" if hit else "-"
        print(f"{seed:>4} {frames:>16} {seconds:>17} {result['best_eval']:>9.1f} {result['last_eval']:>9.1f} "
              f"{result['frames']:>11,} {result['seconds']:>8.1f}", flush=True)
    return results


if __name__ == "__main__":
    main()
