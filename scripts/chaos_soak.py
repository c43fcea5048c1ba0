"""Chaos soak: a real training run while a random child (a worker or the evaluator) is killed, stopped
or terminated every few seconds; then the checks a long unattended run must pass.

    python scripts/chaos_soak.py --seconds 1800 --output benchmarks/soak.json       # Pong, 4 workers
    python scripts/chaos_soak.py --env-id CartPole-v1 --workers 2 --seconds 60 --fault-interval 1

Faults: SIGKILL (a crash), SIGTERM (a polite kill) and SIGSTOP (a hang: the trainer must notice the
missing heartbeat, kill and replace the child), each once in every three faults, so that a short soak
has them all. The run gets --max-deaths high enough for the soak
and a short --hang-timeout. Checked at the end: the run reached its time limit with exit status 0;
every fault was survived (each targeted child was replaced); episodes in the final checkpoint equal
the rows of train_episodes.csv; the counted frames hold the finished episodes' and exceed them by no
more than the episodes cut off by faults or under way at the end can explain; latest.pt was never older than the checkpoint interval plus its write time; the run resumes
from it; no process, temporary file or shared-memory segment is left; the trainer's open files and
memory stayed flat (the trainer lives through every fault; the children, replaced every few seconds,
say nothing of a leak: their memory is reported, not checked). Prints a summary and writes it as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from a3c.shared import made_by_another_process, torch_segments

FAULTS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGSTOP": signal.SIGSTOP}
SLACK_S = 2.0    # on top of the checkpoint interval: the trainer's tick, the write, our sampling


def training_children(trainer: psutil.Process) -> list[psutil.Process]:
    """The trainer's workers and evaluator (spawned children; not multiprocessing's resource tracker)."""
    found = []
    for child in trainer.children():
        try:
            if "spawn_main" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.Error:
            pass
    return found


class Trainer:
    """`python -m a3c train ARGS`, its output read and kept line by line."""

    def __init__(self, args: list[str], cwd: Path, echo: bool) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "a3c", "train", *args], cwd=cwd, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        self.lines: list[str] = []
        self.echo = echo
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if self.echo:
                print(line, end="", flush=True)


def mib(samples: list[dict[str, float]], key: str) -> int:
    """The median of the samples' `key`, in MiB."""
    return round(float(np.median([s[key] for s in samples])) / 2**20)


def file_age(path: Path) -> float | None:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def soak(options: argparse.Namespace, runs_dir: Path) -> dict[str, Any]:
    rng = random.Random(options.seed)
    run_dir = runs_dir / "soak"
    latest = run_dir / "checkpoints" / "latest.pt"
    segments_before = torch_segments()
    args = ["--env-id", options.env_id, "--workers", str(options.workers), "--time-limit", str(options.seconds),
            "--total-frames", str(10**12), "--checkpoint-interval", str(options.checkpoint_interval),
            "--hang-timeout", str(options.hang_timeout), "--max-deaths", "1000000", "--status-interval", "5",
            "--runs-dir", str(runs_dir), "--run-name", "soak", *options.train_args]
    trainer = Trainer(args, runs_dir, options.echo)
    parent = psutil.Process(trainer.process.pid)
    seen_pids: set[int] = set()
    faults: list[dict[str, Any]] = []
    kinds_left: list[str] = []
    samples: list[dict[str, float]] = []
    start = time.monotonic()
    next_fault = start + options.warmup
    first_checkpoint_due = start + options.warmup + options.checkpoint_interval
    oldest_checkpoint = 0.0
    while trainer.process.poll() is None:
        now = time.monotonic()
        children = training_children(parent) if trainer.process.poll() is None else []
        seen_pids.update(c.pid for c in children)
        try:
            tree = [parent, *parent.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in tree if p.is_running())
            samples.append({"t": now - start, "fds": parent.num_fds(), "rss": rss,
                            "trainer_rss": parent.memory_info().rss})
        except psutil.Error:
            pass
        age = file_age(latest)
        if now > first_checkpoint_due and now - start < options.seconds - 1:
            age = float("inf") if age is None else age
            oldest_checkpoint = max(oldest_checkpoint, age)
        if now >= next_fault and children and now - start < options.seconds - options.hang_timeout * 2 - 5:
            victim = rng.choice(children)
            if not kinds_left:  # each kind once in every round of three, in a random order
                kinds_left = rng.sample(sorted(FAULTS), len(FAULTS))
            name = kinds_left.pop()
            try:
                role = "evaluator" if any(f"evaluator (pid {victim.pid})" in line for line in trainer.lines) \
                    else "worker"
                victim.send_signal(FAULTS[name])
                faults.append({"t": round(now - start, 2), "pid": victim.pid, "role": role, "signal": name})
            except psutil.Error:
                pass
            next_fault = now + rng.uniform(0.5, 1.5) * options.fault_interval
        time.sleep(0.2)
    trainer.reader.join(timeout=10)
    code = trainer.process.wait()
    output = "\n".join(trainer.lines)

    # Every fault survived: each victim was reported dead or hung, then replaced.
    survived = 0
    for fault in faults:
        pid = fault["pid"]
        reported = re.search(rf"\(pid {pid}\) (died with exit code|made no progress)", output)
        fault["survived"] = bool(reported)
        survived += bool(reported)
    replacements = len(re.findall(r"replaced by (worker \d+|evaluator) \(pid \d+\)", output))

    # Counting: the checkpoint's episodes are the CSV's rows, no row twice, episodes fit the frames.
    import torch

    payload = torch.load(latest, map_location="cpu", weights_only=True)
    with open(run_dir / "train_episodes.csv") as f:
        rows = list(csv.DictReader(f))
    config = json.loads((run_dir / "config.json").read_text())
    frames_per_step = config["frame_skip"] if options.env_id.startswith("ALE/") else 1
    episode_frames = sum(int(r["length"]) for r in rows) * frames_per_step
    # Frames counted but in no finished episode: those of the episodes a killed worker cut off, and
    # of those under way at the end; each at most the longest episode seen.
    longest = max((int(r["length"]) for r in rows), default=0) * frames_per_step
    worker_faults = sum(f["role"] == "worker" for f in faults)
    unfinished = (worker_faults + options.workers) * config["envs_per_worker"] * longest

    # The run resumes from its checkpoint.
    # With the default supervision: the soak's short hang timeout is for its faults, not for a resume
    # that may start beside other work.
    resumed = subprocess.run([sys.executable, "-m", "a3c", "train", "--resume", str(run_dir), "--total-frames",
                              str(payload["frames"] + options.resume_frames), "--time-limit", "120",
                              "--hang-timeout", "60"],
                             cwd=runs_dir, capture_output=True, text=True, timeout=600, check=False)
    after = torch.load(latest, map_location="cpu", weights_only=True)

    # Nothing left behind.
    leftover = [pid for pid in seen_pids if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    temporaries = [p.name for p in latest.parent.glob(".*.tmp")]
    new_segments = sorted(s for s in torch_segments() - segments_before
                          if not made_by_another_process(s, {trainer.process.pid, *seen_pids}))
    settled = [s for s in samples if s["t"] >= options.warmup + 5]
    quarter = max(1, len(settled) // 4)
    first, last = settled[:quarter], settled[-quarter:]
    report = {
        "env_id": options.env_id, "workers": options.workers, "seconds": options.seconds,
        "fault_interval": options.fault_interval, "checkpoint_interval": options.checkpoint_interval,
        "hang_timeout": options.hang_timeout, "exit_code": code,
        "reached_time_limit": "reached the time limit" in output,
        "faults": len(faults), "faults_by_signal": {n: sum(f["signal"] == n for f in faults) for n in FAULTS},
        "faults_by_role": {r: sum(f["role"] == r for f in faults) for r in ("worker", "evaluator")},
        "faults_survived": survived, "replacements": replacements,
        "frames": payload["frames"], "episodes": payload["episodes"], "csv_rows": len(rows),
        "frames_in_finished_episodes": episode_frames, "frames_bound_of_unfinished_episodes": unfinished,
        "oldest_checkpoint_s": round(oldest_checkpoint, 2),
        "resumed_exit_code": resumed.returncode, "resumed_frames": after["frames"] - payload["frames"],
        "processes_left": leftover, "temporary_files_left": temporaries, "shared_memory_left": new_segments,
        "trainer_fds": [int(np.median([s["fds"] for s in first])), int(np.median([s["fds"] for s in last]))]
        if settled else None,
        "trainer_memory_mib": [mib(first, "trainer_rss"), mib(last, "trainer_rss")] if settled else None,
        "run_memory_mib": [mib(first, "rss"), mib(last, "rss")] if settled else None,
    }
    report["checks"] = {
        "exit 0 at the time limit": code == 0 and report["reached_time_limit"],
        "every fault survived": survived == len(faults) and len(faults) > 0,
        "episodes counted once": payload["episodes"] == len(rows),
        "frames counted once": episode_frames <= payload["frames"] <= episode_frames + unfinished,
        "latest.pt never older than the interval": oldest_checkpoint <= options.checkpoint_interval + SLACK_S,
        "resumes": resumed.returncode == 0 and after["frames"] >= payload["frames"] + options.resume_frames,
        "nothing left behind": not leftover and not temporaries and not new_segments,
        "open files flat": bool(settled) and report["trainer_fds"][1] <= report["trainer_fds"][0] + 2,
        "trainer's memory flat": bool(settled)
        and report["trainer_memory_mib"][1] <= report["trainer_memory_mib"][0] * 1.1 + 50,
    }
    report["passed"] = all(report["checks"].values())
    if not report["passed"]:
        report["output_tail"] = trainer.lines[-40:]
        report["resume_stderr"] = resumed.stderr[-2000:]
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="ALE/Pong-v5")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=1800, help="the run's time limit")
    parser.add_argument("--fault-interval", type=float, default=8.0, help="mean seconds between faults")
    parser.add_argument("--checkpoint-interval", type=float, default=30.0)
    parser.add_argument("--hang-timeout", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=15.0,
                        help="seconds before the first fault (the children start); memory is compared after it")
    parser.add_argument("--resume-frames", type=int, default=20_000, help="frames the resume check trains")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault schedule")
    parser.add_argument("--runs-dir", help="keep the run here (default: a temporary folder, removed)")
    parser.add_argument("--output", help="write the report as JSON here")
    parser.add_argument("--echo", action="store_true", help="print the trainer's output as it comes")
    parser.add_argument("train_args", nargs="*", help="more `a3c train` flags, after --")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        runs_dir = Path(options.runs_dir or scratch).resolve()
        runs_dir.mkdir(parents=True, exist_ok=True)
        report = soak(options, runs_dir)
    for name, ok in report["checks"].items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    summary = {k: v for k, v in report.items() if k not in ("checks", "output_tail", "resume_stderr")}
    print(json.dumps(summary, indent=1))
    if not report["passed"]:
        print("\n".join(report.get("output_tail", [])))
        print(report.get("resume_stderr", ""))
    if options.output:
        Path(options.output).parent.mkdir(parents=True, exist_ok=True)
        Path(options.output).write_text(json.dumps(report, indent=1) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
