"""What evaluation costs and how often it comes: resume a copy of a trained run with some number of
workers for a while, and report the evaluator's CPU time as a share of the machine, the training
frames/s, and the frames between evaluations. The share is given over the whole window, from 30 s
on (without the start-up), and between the ends of the first and the last evaluation: over whole
cycles of evaluating and resting, what the evaluator costs in a long run, whatever the phase of the
cycle at which the window ends.

    python scripts/bench_eval_cadence.py RUN --workers 16 --seconds 600 -- --eval-cpu-share 0.045

A trained run makes the evaluation episodes as long as they will be late in training. The run is
copied (its checkpoint and configuration) into a temporary folder; RUN itself is left as it is. The
evaluator runs with today's default settings, not those RUN was trained with; everything after `--`
goes to `a3c train --resume` and overrides them.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from a3c.checkpoint import CHECKPOINT_DIR, LATEST
from a3c.config import Config

STATUS = re.compile(r"\[(\d+):(\d+):(\d+)\] frames ([\d,]+)/")
EVALUATED = re.compile(r"^eval at ([\d,]+) frames", re.MULTILINE)
LENGTH = re.compile(r"^eval at .*mean length ([\d.]+)", re.MULTILINE)
EVALUATOR = re.compile(r"evaluator \(pid (\d+)\)")
WARMUP_S = 30.0  # the share is also reported from here on: without the start-up's imports
NO_BUDGET = "1000000000000"  # frames: the window, not the copied run's budget, ends the measurement


def evaluator_defaults() -> list[str]:
    """Today's evaluator settings as flags: a resumed run would keep those it was trained with."""
    defaults = Config()
    return ["--eval-cpu-share", str(defaults.eval_cpu_share), "--eval-interval", str(defaults.eval_interval),
            "--eval-episodes", str(defaults.eval_episodes)]


def measure(run: Path, workers: int, seconds: int, train_args: list[str]) -> str:
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / run.name
        (copy / CHECKPOINT_DIR).mkdir(parents=True)
        shutil.copy(run / "config.json", copy / "config.json")
        shutil.copy(run / CHECKPOINT_DIR / LATEST, copy / CHECKPOINT_DIR / LATEST)
        process = subprocess.Popen(
            [sys.executable, "-m", "a3c", "train", "--resume", str(copy), "--workers", str(workers),
             "--time-limit", str(seconds), "--status-interval", "5", "--total-frames", NO_BUDGET,
             *evaluator_defaults(), *train_args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(process.stdout or []), daemon=True)
        reader.start()
        evaluator = None
        while evaluator is None and process.poll() is None:
            found = EVALUATOR.search("".join(lines))
            evaluator = psutil.Process(int(found.group(1))) if found else None
            time.sleep(0.2)
        if evaluator is None:
            process.wait()
            reader.join()
            raise SystemExit("the run ended before its evaluator started:\n" + "".join(lines[-20:]))
        began, cpu = time.monotonic(), 0.0
        ended, settled = began, None  # settled: (time, CPU) once start-up is WARMUP_S behind
        at_evaluation_ends: list[tuple[float, float]] = []  # (time, CPU), read within 1 s of each end
        while process.poll() is None and not any(line.startswith("stopping:") for line in lines):
            try:
                times = evaluator.cpu_times()
            except psutil.Error:  # it ended (or was replaced): what it used so far counts
                break
            cpu, ended = times.user + times.system, time.monotonic()
            if settled is None and ended - began >= WARMUP_S:
                settled = (ended, cpu)
            ends = len(EVALUATED.findall("".join(lines)))
            at_evaluation_ends.extend([(ended, cpu)] * (ends - len(at_evaluation_ends)))
            time.sleep(1)
        process.wait()
        reader.join()
    text = "".join(lines)
    before_stop = text.split("stopping:")[0]
    frames = [int(f.replace(",", "")) for f in EVALUATED.findall(before_stop)]
    status = [(int(h) * 3600 + int(m) * 60 + int(s), int(f.replace(",", "")))
              for h, m, s, f in STATUS.findall(before_stop)]
    if len(status) < 3 or ended - began < 1:
        raise SystemExit("the run did not train long enough to measure:\n" + "".join(lines[-20:]))
    fps = (status[-1][1] - status[1][1]) / (status[-1][0] - status[1][0])
    cores = len(os.sched_getaffinity(0))
    share = 100 * cpu / (ended - began) / cores
    after = "" if settled is None or ended <= settled[0] else (
        f" ({100 * (cpu - settled[1]) / (ended - settled[0]) / cores:.2f}% from {WARMUP_S:g} s on)")
    if len(at_evaluation_ends) >= 2:
        (first_end, first_cpu), (last_end, last_cpu) = at_evaluation_ends[0], at_evaluation_ends[-1]
        after += (f" ({100 * (last_cpu - first_cpu) / (last_end - first_end) / cores:.2f}% between the ends of "
                  f"its first and last evaluations, {len(at_evaluation_ends) - 1} cycles)")
    gaps = [round((b - a) / 1e6, 2) for a, b in itertools.pairwise(frames)]
    lengths = [round(float(length)) for length in LENGTH.findall(before_stop)]  # an evaluation's CPU follows them
    return (f"{workers} workers: {fps:,.0f} frames/s; the evaluator used {share:.2f}% of the machine's CPU over "
            f"{ended - began:.0f} s{after}; evaluations at {[round(f / 1e6, 2) for f in frames]} M frames; gaps {gaps} M;"
            f" mean episode lengths {lengths}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run directory with checkpoints/latest.pt")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--seconds", type=int, default=600)
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)  # what follows goes to a3c train --resume
    args = parser.parse_args(argv[:split])
    print(measure(args.run, args.workers, args.seconds, argv[split + 1:]), flush=True)


if __name__ == "__main__":
    main()
