"""Micro-benchmark of a worker's compute per agent step, one thread, no environment:

    python scripts/bench_update.py [--envs 1 8] [--repeats 30]

For each number of environments per worker B it times, per rollout of t_max=20 steps:
  acting only     - 20 no-grad forward passes on B frames (what choosing actions costs)
  recompute       - those 20 no-grad passes, then one batched forward + backward over 20*B frames
  recompute bf16  - the same with the batched forward + backward in bfloat16 autocast
  keep graph      - 20 forward passes with autograd on, then one backward through the 20 graphs
  adam step       - one SharedAdam step on the flat parameter vector
In float32 the worker recomputes for B = 1 and keeps the graph for B > 1, the faster of the two
here; in bfloat16 (the default where the CPU has it natively) it always recomputes.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np
import torch

from a3c.config import Config
from a3c.model import bind_flat_parameters, build_model
from a3c.shared_optim import SharedAdam
from a3c.worker import observation_buffer

T = 20


def per_rollout_ms(run, repeats: int) -> float:
    for _ in range(3):
        run()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats * 1e3


def measure(model, optimizer: SharedAdam, batch: int, repeats: int) -> list[float]:
    """Milliseconds per agent step (of B environments) of each variant."""
    obs, storage = observation_buffer((T, batch), (4, 42, 42), np.uint8)  # laid out as a worker's
    storage[...] = np.random.default_rng(0).integers(0, 256, storage.shape, dtype=np.uint8)
    starts = torch.zeros(T, batch, dtype=torch.bool)
    grad = torch.randn_like(optimizer.params[0])

    def acting() -> None:
        with torch.no_grad():
            state = model.initial_state(batch)
            for t in range(T):
                _, _, state = model(obs[t], state)

    def recompute(bfloat16: bool = False) -> None:
        acting()
        logits, values = model.unroll(obs, model.initial_state(batch), starts, bfloat16=bfloat16)
        (logits.sum() + values.sum()).backward()

    def keep_graph() -> None:
        state, total = model.initial_state(batch), 0
        for t in range(T):
            logits, values, state = model(obs[t].clone(), state)
            total = total + logits.sum() + values.sum()
        total.backward()

    def adam() -> None:  # once per rollout
        optimizer.step([grad])

    def recompute_bfloat16() -> None:
        recompute(bfloat16=True)

    return [per_rollout_ms(run, repeats) / T for run in (acting, recompute, recompute_bfloat16, keep_graph, adam)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--lstm", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(Config(lstm=args.lstm), (4, 42, 42), 14)
    optimizer = SharedAdam([bind_flat_parameters(model).share_memory_()])
    print(f"{'envs':>4} {'acting only':>12} {'recompute':>10} {'recompute bf16':>15} {'keep graph':>11} "
          f"{'adam step':>10}   (ms per agent step of all B environments)")
    for batch in args.envs:
        acting, recompute, recompute_bf16, keep, adam = measure(model, optimizer, batch, args.repeats)
        print(f"{batch:>4} {acting:>12.3f} {recompute:>10.3f} {recompute_bf16:>15.3f} {keep:>11.3f} "
              f"{adam:>10.4f}", flush=True)


if __name__ == "__main__":
    main()
