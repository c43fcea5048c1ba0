"""Environment-only frames/s in one process on one thread: ale-py's AtariVectorEnv (C++ stepping and
preprocessing) against the same number of our AtariEnv instances stepped in turn, as a worker with
--envs-per-worker N does:

    python scripts/bench_vector_env.py [--envs 1 8] [--seconds 20]

Both are set up alike: 42x42 grey frames, a stack of 4, frame skip 4 with max-pooling, up to 30
no-op starts, no sticky actions, no reward clipping; random actions. Frames count the frame skip.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np
from ale_py.vector_env import AtariVectorEnv

from a3c.config import Config
from a3c.envs import make_env

FRAME_SKIP = 4


def frames_per_second(step, n_envs: int, n_actions: int, seconds: float, warmup: float = 2.0) -> float:
    rng = np.random.default_rng(0)
    end_warmup = time.perf_counter() + warmup
    while time.perf_counter() < end_warmup:
        step(rng.integers(n_actions, size=n_envs))
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        step(rng.integers(n_actions, size=n_envs))
        steps += 1
    return steps * n_envs * FRAME_SKIP / (time.perf_counter() - start)


def ours(n_envs: int, seconds: float) -> float:
    config = Config(screen_size=42, body="tutorial")  # as the AtariVectorEnv below
    envs = [make_env(config, seed=i) for i in range(n_envs)]
    for i, env in enumerate(envs):
        env.reset(seed=i)

    def step(actions: np.ndarray) -> None:
        for env, action in zip(envs, actions, strict=True):
            _, _, terminated, truncated, _ = env.step(int(action))
            if terminated or truncated:
                env.reset()

    try:
        return frames_per_second(step, n_envs, int(envs[0].action_space.n), seconds)
    finally:
        for env in envs:
            env.close()


def vector(n_envs: int, seconds: float) -> float:
    env = AtariVectorEnv("kung_fu_master", n_envs, num_threads=1, img_height=42, img_width=42,
                         stack_num=4, frameskip=FRAME_SKIP, noop_max=30, repeat_action_probability=0.0,
                         reward_clipping=False, use_fire_reset=False, autoreset_mode="SameStep")
    env.reset(seed=0)
    try:
        return frames_per_second(env.step, n_envs, int(env.single_action_space.n), seconds)
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    print(f"{'envs':>4} {'AtariEnv fps':>13} {'AtariVectorEnv fps':>19}")
    for n_envs in args.envs:
        print(f"{n_envs:>4} {ours(n_envs, args.seconds):>13,.1f} {vector(n_envs, args.seconds):>19,.1f}", flush=True)


if __name__ == "__main__":
    main()
