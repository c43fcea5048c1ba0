"""Throughput benchmark: training frames/s of N Hogwild workers against the frames/s of N processes
that only step the same preprocessed environment with random actions, and the raw emulator rate.

    python scripts/bench.py --workers 1 2 --seconds 60 [--envs-per-worker 1 8] [--from-checkpoint PATH]

Frames count the frame skip. Training runs with the evaluator off; the first --warmup seconds
(process start, imports) are left out of every rate. With --from-checkpoint training starts from a
trained run's weights and optimizer state (its game, network and settings; workers, environments per
worker and precision from the flags): a trained network can be slower than a fresh one. Prints a
table and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np
import torch
import torch.multiprocessing as mp

from a3c.checkpoint import load_checkpoint
from a3c.config import FRAME_COLOURS, FRAME_NORMS, PRECISIONS, Config
from a3c.envs import AtariEnv, make_env
from a3c.trainer import RemoteFactory, Trainer


def _step_env(config: Config, raw: bool, seed: int, warmup: float, seconds: float, barrier, results) -> None:
    """Step random actions; report frames done between warmup and warmup + seconds."""
    torch.set_num_threads(1)
    env = make_env(config, seed=seed)
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    n_actions = int(env.action_space.n)
    if raw:  # the emulator alone: frame skip 4, no pooling, resizing or stacking
        assert isinstance(env, AtariEnv)
        ale, actions = env._ale, env._actions
    barrier.wait()
    start = time.perf_counter()
    counted_from, frames = start + warmup, 0
    counting = False
    while True:
        now = time.perf_counter()
        if not counting and now >= counted_from:
            counting, frames = True, 0
        if now >= counted_from + seconds:
            break
        for _ in range(64):
            action = int(rng.integers(n_actions))
            if raw:
                for _ in range(config.frame_skip):
                    ale.act(actions[action])
                frames += config.frame_skip
                if ale.game_over():
                    ale.reset_game()
            else:
                _, _, terminated, truncated, _ = env.step(action)
                frames += config.frames_per_step
                if terminated or truncated:
                    env.reset()
    elapsed = time.perf_counter() - counted_from
    results.put(frames / elapsed)
    env.close()


def env_only_fps(config: Config, workers: int, raw: bool, warmup: float, seconds: float) -> float:
    context = mp.get_context("spawn")
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [context.Process(target=_step_env, args=(config, raw, i, warmup, seconds, barrier, results))
                 for i in range(workers)]
    for p in processes:
        p.start()
    total = sum(results.get(timeout=warmup + seconds + 120) for _ in processes)
    for p in processes:
        p.join()
    return total


def train_fps(config: Config, warmup: float, seconds: float, remote: RemoteFactory | None = None,
              start: dict[str, Any] | None = None) -> float:
    """Training frames/s between warmup and warmup + seconds; on a Ray cluster with `remote`; from
    the checkpoint `start` if given."""
    runs = tempfile.mkdtemp(prefix="a3c-bench-")
    try:
        config.runs_dir, config.time_limit = runs, warmup + seconds
        config.total_frames, config.status_interval = 10**12, 3600.0
        samples: list[tuple[float, int]] = []
        trainer = Trainer(config, start, evaluator=False, on_tick=lambda now, frames: samples.append((now, frames)),
                          remote=remote)
        with contextlib.redirect_stdout(io.StringIO()):  # the table is the output
            trainer.run()
        t0 = samples[0][0] + warmup
        window = [(t, f) for t, f in samples if t >= t0]
        (t_start, f_start), (t_end, f_end) = window[0], window[-1]
        return (f_end - f_start) / (t_end - t_start)
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--envs-per-worker", type=int, nargs="+", default=[1])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per configuration")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds left out at the start")
    parser.add_argument("--env-id", default="ALE/KungFuMaster-v5")
    parser.add_argument("--lstm", action="store_true")
    parser.add_argument("--precision", nargs="+", default=["auto"], choices=PRECISIONS,
                        help="number format of the network passes (default: auto)")
    parser.add_argument("--frame-norm", nargs="+", choices=FRAME_NORMS,
                        help="what the network sees of a frame (default: the default's, or the checkpoint's)")
    parser.add_argument("--frame-colour", nargs="+", choices=FRAME_COLOURS,
                        help="what a frame holds (default: the default's, or the checkpoint's)")
    parser.add_argument("--checkpoint-interval", type=float, nargs="+",
                        help="seconds between checkpoints of latest.pt (default: the default's)")
    parser.add_argument("--reward-prediction-coef", type=float, nargs="+",
                        help="weight of the reward-prediction task, 0 for off (default: the default's)")
    parser.add_argument("--train-only", action="store_true",
                        help="measure training alone, not the env-only and raw emulator rates")
    parser.add_argument("--from-checkpoint", metavar="PATH",
                        help="train from this checkpoint's weights and optimizer state, with its settings")
    parser.add_argument("--output", default="benchmarks/latest.json")
    args = parser.parse_args(argv)
    if args.from_checkpoint and args.reward_prediction_coef:
        parser.error("--reward-prediction-coef: a checkpoint's network has the task's head or not; it keeps its own")
    if args.from_checkpoint and args.frame_colour:
        parser.error("--frame-colour: a checkpoint's network was trained on its own frames; it keeps them")

    start = None if args.from_checkpoint is None else load_checkpoint(args.from_checkpoint)
    base = Config(env_id=args.env_id, lstm=args.lstm) if start is None else Config.from_saved(start["config"])
    records = []
    header = (f"{'workers':>7} {'envs/worker':>11} {'precision':>9} {'frame norm':>11} {'colour':>7} {'reward pred':>11} "
              f"{'checkpoints':>11} "
              f"{'train fps':>10} {'env-only fps':>12} {'ratio':>6} {'raw ALE fps':>11}")
    print(header, flush=True)
    colours = args.frame_colour or [base.frame_colour]
    for workers in args.workers:
        # The env-only rate depends on the frame's colour (what is grabbed and resized); the raw one does not.
        env_rates = {colour: None if args.train_only else env_only_fps(replace(base, frame_colour=colour), workers,
                                                                        False, args.warmup, args.seconds)
                     for colour in colours}
        raw_fps = None if args.train_only or not base.is_atari else env_only_fps(base, workers, True, args.warmup,
                                                                                 args.seconds)
        for envs, precision, frame_norm, colour, prediction, interval in itertools.product(
                args.envs_per_worker, args.precision, args.frame_norm or [base.frame_norm], colours,
                args.reward_prediction_coef or [base.reward_prediction_coef],
                args.checkpoint_interval or [base.checkpoint_interval]):
            config = replace(base, workers=workers, envs_per_worker=envs, precision=precision,
                             frame_norm=frame_norm, frame_colour=colour, reward_prediction_coef=prediction,
                             checkpoint_interval=interval, run_name=None)
            env_fps = env_rates[colour]
            fps = train_fps(config, args.warmup, args.seconds, start=start)
            record = {"workers": workers, "envs_per_worker": envs, "precision": config.network_precision,
                      "frame_norm": frame_norm, "frame_colour": colour, "reward_prediction_coef": prediction,
                      "checkpoint_interval": interval,
                      "train_fps": round(fps, 1),
                      "env_only_fps": None if env_fps is None else round(env_fps, 1),
                      "ratio": None if env_fps is None else round(fps / env_fps, 3),
                      "raw_emulator_fps": None if raw_fps is None else round(raw_fps, 1),
                      "env_vs_raw": None if raw_fps is None or env_fps is None else round(env_fps / raw_fps, 3),
                      "env_id": base.env_id, "lstm": base.lstm, "seconds": args.seconds,
                      "from_checkpoint": args.from_checkpoint}
            records.append(record)
            raw_text = "-" if raw_fps is None else f"{raw_fps:,.0f}"
            env_text, ratio_text = ("-", "-") if env_fps is None else (f"{env_fps:,.0f}", f"{fps / env_fps:.2f}")
            print(f"{workers:>7} {envs:>11} {config.network_precision:>9} {frame_norm:>11} {colour:>7} {prediction:>11g} "
                  f"{f'{interval:g} s':>11} "
                  f"{fps:>10,.0f} {env_text:>12} {ratio_text:>6} {raw_text:>11}", flush=True)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "processor": cpu_model(),
               "python": sys.version.split()[0], "torch": torch.__version__}
    output.write_text(json.dumps({"machine": machine, "records": records}, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
