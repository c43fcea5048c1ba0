"""Children that die, hang or break in a long unattended run: replaced and reported, or the run
stopped with one clear line; and a chaos soak of all of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from a3c.checkpoint import load_checkpoint
from a3c.config import Config
from a3c.logger import read_rows
from a3c.model import bind_flat_parameters, build_model
from a3c.shared import SharedTraining
from a3c.supervisor import HangWatch, Progress
from a3c.trainer import Trainer
from a3c.worker import Worker, seed_stream
from tests.helpers import TrainProcess

pytestmark = pytest.mark.slow  # trains, or starts processes: left out by make test-fast


def test_killed_workers_and_evaluator_are_replaced_and_training_reaches_its_budget(train_process, tmp_path):
    # Two workers: one trains on while the other is replaced.
    run = train_process("--workers", "2", "--total-frames", "30000", "--eval-interval", "600")
    run.wait_for(r"frames ([1-9][\d,]*)/")
    worker, evaluator = run.worker_pid(0), run.evaluator_pid()
    os.kill(worker, signal.SIGKILL)
    os.kill(evaluator, signal.SIGKILL)
    run.wait_for_all([rf"worker 0 \(pid {worker}\) died with exit code -9", r"replaced by worker 0 \(pid \d+\)",
                      rf"evaluator \(pid {evaluator}\) died with exit code -9", r"replaced by evaluator \(pid \d+\)"])
    assert run.finish() == 0, "\n".join(run.lines[-40:])
    assert any("reached 30,000 frames" in line for line in run.lines)
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")  # by the new evaluator
    assert checkpoint["frames"] >= 30000
    episodes = read_rows(tmp_path / "run" / "train_episodes.csv")
    assert checkpoint["episodes"] == len(episodes)  # the counters stayed consistent
    assert run.alive_pids() == []


def test_stopped_children_are_killed_reported_and_replaced(train_process, tmp_path):
    run = train_process("--total-frames", "100000000", "--hang-timeout", "5", "--eval-interval", "1")
    run.wait_for(r"frames ([1-9][\d,]*)/")
    worker, evaluator = run.worker_pid(0), run.evaluator_pid()
    os.kill(worker, signal.SIGSTOP)
    os.kill(evaluator, signal.SIGSTOP)
    run.wait_for_all([rf"worker 0 \(pid {worker}\) made no progress for \d+ s: killed",
                      rf"evaluator \(pid {evaluator}\) made no progress for \d+ s: killed",
                      r"replaced by worker 0 \(pid \d+\)", r"replaced by evaluator \(pid \d+\)"])
    run.wait_for(r"eval at")  # the new evaluator evaluates
    run.process.send_signal(signal.SIGINT)
    assert run.finish() == 130, "\n".join(run.lines[-30:])
    assert not any(f"pid {worker}) died" in line or f"pid {evaluator}) died" in line for line in run.lines)
    assert run.alive_pids() == []


def test_the_hang_watch_allows_a_start_up_and_forgives_time_it_did_not_run(monkeypatch):
    class Watched:
        def __init__(self) -> None:
            self.progress, self.beat = Progress(), 0

    clock = [0.0]
    monkeypatch.setattr("a3c.supervisor.time.monotonic", lambda: clock[0])
    watch = HangWatch(timeout=10)
    starting, running = Watched(), Watched()
    starting.progress.quiet_since = running.progress.quiet_since = 0.0
    children = [starting, running]

    def look(at: float) -> list[Watched]:
        clock[0] = at
        return watch.hung(children, lambda child: child.beat)

    for second in range(1, 20):  # one beats every second, the other has not started yet
        running.beat += 1
        assert look(second) == []
    assert look(20.5) == [starting]  # twice the timeout for a start-up
    assert starting.progress.hung_for == 20.5
    assert look(25) == []  # found once
    assert look(28.9) == []
    assert look(29.1) == [running]  # 10 s after its last beat, seen at 19 s
    late = Watched()
    late.progress = Progress(heartbeat=0, beating=True, quiet_since=29.1)
    children = [late]
    assert look(33) == []
    assert look(1000) == []  # the watcher itself did not run for 967 s: nobody is judged on that
    assert look(1004) == []
    assert look(1008) == []
    assert look(1010.5) == [late]


def test_workers_that_keep_dying_stop_the_run_with_a_clear_error(tmp_path):
    run = TrainProcess(["--env-id", "tests.crashing_env:CrashingCartPole-v0", "--workers", "2",
                        "--max-deaths", "3", "--total-frames", "1000000", "--eval-interval", "600",
                        "--runs-dir", str(tmp_path), "--run-name", "run"], tmp_path)
    try:
        assert run.finish(timeout=120) == 1
    finally:
        if run.process.poll() is None:
            run.kill_all()
    assert sum("died with exit code 1" in line for line in run.lines) >= 3
    assert any("3 processes died within 300 s; stopping" in line for line in run.lines)
    assert not (tmp_path / "run" / "checkpoints" / "latest.pt").exists()  # nothing written from a failed run
    assert run.alive_pids() == []


def test_a_nan_gradient_never_reaches_the_shared_model():
    config = Config(env_id="CartPole-v1", workers=1, t_max=5)
    shared = SharedTraining.create(build_model(config, (4,), 2), config)
    worker = Worker(0, config, shared, seed_stream(1, 0))
    worker.model.policy.weight.register_hook(lambda grad: grad * float("nan"))
    before = shared.params.clone()
    worker.sync_weights()
    stats = worker.update(worker.collect())
    worker.close()
    assert not stats.applied
    assert torch.equal(shared.params, before)
    assert torch.isfinite(shared.params).all()
    assert float(shared.optimizer.steps[0]) == 0


@pytest.mark.parametrize("dead", [True, False])
def test_a_run_whose_network_died_stops_with_a_clear_error(tmp_path, capsys, dead):
    config = Config(env_id="ALE/Pong-v5", workers=1, envs_per_worker=1, total_frames=8_000, eval_interval=600,
                    eval_episodes=1, max_episode_frames=400, runs_dir=str(tmp_path), run_name="run")
    trainer = Trainer(config)
    if dead:  # every unit of the body's last layer below zero on every observation, as in a collapsed run
        model = build_model(config, trainer.obs_shape, trainer.n_actions)
        bind_flat_parameters(model, trainer.shared.params)
        model.hidden[-1].bias.data.fill_(-1e4)
    assert trainer.run() == (1 if dead else 0)
    error = capsys.readouterr().err
    assert ("error: the network died" in error) == dead
    assert (f"--resume {tmp_path / 'run' / 'checkpoints' / 'best.pt'}" in error) == dead
    assert (tmp_path / "run" / "checkpoints" / "latest.pt").exists() != dead  # a failed run writes nothing


def test_a_run_whose_weights_become_non_finite_stops_with_a_clear_error(tmp_path, capsys):
    # Checked every WEIGHTS_CHECK_INTERVAL_S, not at every tick: a NaN written part way through a run
    # still stops it, and no checkpoint of the broken weights is written.
    config = Config(env_id="CartPole-v1", workers=1, total_frames=10_000_000, eval_interval=600,
                    runs_dir=str(tmp_path), run_name="run")
    trainer: Trainer

    def break_the_weights(_now: float, frames: int) -> None:
        if frames >= 2_000 and not torch.isnan(trainer.shared.params[0]):
            trainer.shared.params[0] = float("nan")

    trainer = Trainer(config, on_tick=break_the_weights)
    assert trainer.run() == 1
    assert "error: the shared model became non-finite (non-finite values: weights 1, exp_avg 0," in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints" / "latest.pt").exists()


def test_a_short_chaos_soak_survives_every_fault(tmp_path):
    """scripts/chaos_soak.py on CartPole: a child killed, terminated or stopped every 0.6 s or so."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "chaos_soak.py"
    report = tmp_path / "soak.json"
    result = subprocess.run([sys.executable, str(script), "--env-id", "CartPole-v1", "--workers", "2",
                             "--seconds", "24", "--fault-interval", "0.6", "--checkpoint-interval", "2",
                             "--hang-timeout", "5", "--warmup", "3", "--resume-frames", "2000",
                             "--runs-dir", str(tmp_path / "runs"), "--output", str(report),
                             "--", "--lr", "1e-3", "--eval-interval", "2", "--eval-episodes", "2"],
                            capture_output=True, text=True, timeout=300, check=False)
    soak = json.loads(report.read_text()) if report.exists() else {}
    failed = [name for name, ok in soak.get("checks", {}).items() if not ok]
    assert result.returncode == 0 and soak and not failed, (
        f"failed checks: {failed}\n" + result.stdout[-3000:] + result.stderr[-2000:])
    # Faults fall between the warm-up (3 s) and 2 hang timeouts + 5 s before the end: about 10, fewer
    # where a loaded machine is slow to start the children; each kind comes once in every three.
    assert soak["faults"] >= 6 and soak["faults_survived"] == soak["faults"]
    assert set(soak["faults_by_signal"]) == {"SIGKILL", "SIGTERM", "SIGSTOP"}
