"""Micro-benchmark of a worker's network compute per agent step, one thread, no environment:

    python scripts/bench_update.py [--envs 1 4 16] [--repeats 30] [--body mnih2013 --screen-size 84]

For each number of environments per worker B it times, per rollout of t_max=5 steps, in ms per
agent step (one pass over all B environments), with the default network unless told otherwise:
  acting          - 5 no-grad passes on B frames, recording the body's activations in the tape
                    (float32, and bfloat16 with bfloat16 weights)
  replay update   - the update's backward pass from the tape (what the worker does), float32 and
                    bfloat16: the heads run again, the body is only differentiated
  recompute       - for comparison, the earlier way: one batched forward of the body over the 5*B
                    frames with autograd, then the backward (bfloat16 under autocast)
  adam step       - one SharedAdam step on the flat parameter vector
Memory is kept as a worker keeps it (worker.keep_freed_memory) unless --default-malloc is given.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ["OMP_NUM_THREADS"] = "1"

import torch

from a3c.config import Config
from a3c.model import bind_flat_parameters, build_model
from a3c.replay import ReplayTape
from a3c.shared_optim import SharedAdam
from a3c.worker import keep_freed_memory

T = Config().t_max
COLUMNS = ("acting f32", "acting bf16", "replay f32", "replay bf16", "recompute f32", "recompute bf16", "adam step")


def per_step_ms(run, repeats: int) -> float:
    for _ in range(3):
        run()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats / T * 1e3


def measure(model, optimizer: SharedAdam, batch: int, repeats: int) -> list[float]:
    channels, height, width = model.obs_shape
    # (T, B, C, H, W) frames stored channels-last, as a worker stores them
    obs = torch.randint(0, 256, (T, batch, height, width, channels), dtype=torch.uint8).permute(0, 1, 4, 2, 3)
    starts = torch.zeros(T, batch, dtype=torch.bool)
    tapes = {dtype: ReplayTape(model, T, batch, dtype) for dtype in (torch.float32, torch.bfloat16)}
    grad = torch.randn_like(optimizer.params[0])

    def acting(dtype: torch.dtype) -> None:
        tape = tapes[dtype]
        tape.start()
        for t in range(T):
            tape.act(obs[t], None)

    def replay(dtype: torch.dtype) -> None:
        logits, values, _ = tapes[dtype].replay(None, starts)
        (logits.sum() + values.sum()).backward()

    def recompute(dtype: torch.dtype) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            logits, values, _ = model(obs.reshape(T * batch, *model.obs_shape))
        (logits.float().sum() + values.float().sum()).backward()

    for dtype in tapes:
        acting(dtype)  # fill the tapes
    runs = [lambda: acting(torch.float32), lambda: acting(torch.bfloat16),
            lambda: replay(torch.float32), lambda: replay(torch.bfloat16),
            lambda: recompute(torch.float32), lambda: recompute(torch.bfloat16),
            lambda: optimizer.step([grad])]  # once per rollout
    return [per_step_ms(run, repeats) for run in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--body", default=Config().model_body, choices=("mnih2013", "tutorial"))
    parser.add_argument("--screen-size", type=int, default=Config().screen_size)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc's defaults, for comparison")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.default_malloc:
        keep_freed_memory()
    torch.manual_seed(0)
    config = Config(body=args.body, screen_size=args.screen_size)
    model = build_model(config, (len(config.observation_colours), config.screen_size, config.screen_size), 14)
    optimizer = SharedAdam([bind_flat_parameters(model).share_memory_()])
    print(f"{'envs':>4} " + " ".join(f"{name:>14}" for name in COLUMNS) + "   (ms per agent step of all B environments)")
    for batch in args.envs:
        times = measure(model, optimizer, batch, args.repeats)
        print(f"{batch:>4} " + " ".join(f"{ms:>14.4f}" for ms in times), flush=True)


if __name__ == "__main__":
    main()
