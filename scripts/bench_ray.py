"""Ray against local: training frames/s of the same workers and environments, run by the local
trainer and by the Ray trainer on a cluster of loopback nodes started here, alternating in one run.

    python scripts/bench_ray.py --layouts 2x1 1x2 --seconds 60 --repeats 2 [-- --envs-per-worker 4]

With --round-trips K it also times K exchanges (push a weight delta of the configured model, take the
weights back) between a NodeGroup's node and the ParameterServer, on one node and across two.

A layout NxW is N Ray nodes of W workers each (N*W workers in all, W CPUs per node); the local
trainer runs the N*W workers on this machine. Everything after `--` is passed as `a3c train` flags.
The evaluator is off in both, as in scripts/bench.py. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep Ray on loopback (read when ray is imported)

import numpy as np
import ray
import torch
from bench import cpu_model, train_fps
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from a3c.cli import build_parser, settings_from_args
from a3c.config import Config, RayOptions
from a3c.envs import env_spaces
from a3c.model import build_model
from a3c.ray_cluster import ParameterServer, RayCluster, RayWorkers


def _exchanges(server: object, size: int, count: int) -> list[float]:
    """Seconds of each of `count` exchanges with `server` of a `size`-weight delta."""
    delta, seconds = np.zeros(size, np.float32), []
    for _ in range(count):
        start = time.perf_counter()
        ray.get(server.exchange.remote(0, 0, delta, 0, [], None))  # type: ignore[attr-defined]
        seconds.append(time.perf_counter() - start)
    return seconds


def round_trips(config: Config, count: int) -> dict[str, float]:
    """Median milliseconds of an exchange from the server's own node and from a second node."""
    size = sum(p.numel() for p in build_model(config, *env_spaces(config)).parameters())
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        ray.init(address=cluster.address, log_to_driver=False)
        nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        server = ray.remote(ParameterServer).options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[0], soft=False)).remote(
            np.zeros(size, np.float32), 0)
        ray.get(server.register.remote(0, 0))
        result: dict[str, float] = {"weights": size}
        for name, node in (("same_node_ms", nodes[0]), ("other_node_ms", nodes[1])):
            task = ray.remote(_exchanges).options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
                node, soft=False))
            result[name] = round(1000 * float(np.median(ray.get(task.remote(server, size, count)))), 2)
        return result
    finally:
        ray.shutdown()
        cluster.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", nargs="*", default=["2x1", "1x2"], help="NODESxWORKERS_PER_NODE")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds left out at the start")
    parser.add_argument("--repeats", type=int, default=2, help="local and Ray runs of each layout, alternating")
    parser.add_argument("--exchange-interval", type=float, default=RayOptions.exchange_interval)
    parser.add_argument("--round-trips", type=int, default=0, help="also time this many exchanges")
    parser.add_argument("--output", default="benchmarks/ray.json")
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    settings = settings_from_args(build_parser().parse_args(["train", *[a for a in args.train_args if a != "--"]]))
    records = []
    trips = None
    if args.round_trips:
        trips = round_trips(Config.from_dict(settings), args.round_trips)
        print(f"exchange of {trips['weights']:,.0f} weights: {trips['same_node_ms']} ms on one node, "
              f"{trips['other_node_ms']} ms across two (median of {args.round_trips})", flush=True)
    print(f"{'layout':>6} {'workers':>7} {'repeat':>6} {'local fps':>10} {'ray fps':>10} {'ray/local':>9}", flush=True)
    for layout in args.layouts:
        nodes, per_node = (int(n) for n in layout.split("x"))
        config = Config.from_dict({**settings, "workers": nodes * per_node})
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": per_node, "node_ip_address": "127.0.0.1", "include_dashboard": False})
        try:
            for _ in range(nodes - 1):
                cluster.add_node(num_cpus=per_node, node_ip_address="127.0.0.1")
            options = RayOptions(cluster.address, nodes, args.exchange_interval)
            for repeat in range(args.repeats):
                local = train_fps(replace(config), args.warmup, args.seconds)
                connection = RayCluster(options, config.workers)
                try:
                    ray = train_fps(replace(config), args.warmup, args.seconds,
                                    remote=partial(RayWorkers, connection, options))
                finally:
                    connection.close()
                records.append({"layout": layout, "nodes": nodes, "workers": config.workers, "repeat": repeat,
                                "local_fps": round(local, 1), "ray_fps": round(ray, 1),
                                "ratio": round(ray / local, 3)})
                print(f"{layout:>6} {config.workers:>7} {repeat:>6} {local:>10,.0f} {ray:>10,.0f} {ray / local:>9.3f}",
                      flush=True)
        finally:
            cluster.shutdown()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "processor": cpu_model(), "python": sys.version.split()[0],
               "torch": torch.__version__}
    output.write_text(json.dumps({"machine": machine, "settings": settings, "exchange_interval": args.exchange_interval,
                                  "round_trips": trips, "records": records}, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
