"""Real multi-process runs: several workers, learning on CartPole, Atari smoke runs with eval."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from a3c.checkpoint import load_checkpoint
from a3c.config import Config
from a3c.envs import env_spaces
from a3c.logger import read_rows
from a3c.model import build_model
from a3c.shared import SharedTraining
from a3c.supervisor import POLL_S, Supervisor
from a3c.trainer import Trainer

pytestmark = pytest.mark.slow  # trains, or starts processes: left out by make test-fast


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory):
    """One CartPole run that several tests read: three workers to 100,000 frames (many seconds, well
    past the 2-3 s by which spawned workers can start apart on 2 cores), evaluated every 25,000.
    Returns the trainer after its run, the weights it began with, and the run's directory."""
    runs = tmp_path_factory.mktemp("runs")
    config = Config(env_id="CartPole-v1", workers=3, total_frames=100_000, lr=1e-3, seed=1,
                    eval_interval=600, eval_every_frames=25_000, eval_episodes=5, runs_dir=str(runs),
                    run_name="cartpole")
    trainer = Trainer(config)
    before = trainer.shared.params.clone()
    assert trainer.run() == 0
    return trainer, before, runs / "cartpole"


def test_several_workers_update_the_shared_model(cartpole_run):
    trainer, before, run_dir = cartpole_run
    shared = trainer.shared
    assert not torch.equal(before, shared.params)  # the parent sees the workers' updates
    per_worker = shared.frames.tolist()
    assert len(per_worker) == 3 and all(frames > 0 for frames in per_worker)  # every worker stepped and counted
    assert shared.total_frames() == sum(per_worker) >= trainer.config.total_frames
    assert float(shared.optimizer.steps[0]) > 0
    episodes = read_rows(run_dir / "train_episodes.csv")
    assert len(episodes) == shared.total_episodes()
    for worker, frames in enumerate(per_worker):
        played = sum(int(r["length"]) for r in episodes if int(r["worker"]) == worker)
        assert played <= frames  # finished episodes fit inside the counted frames
    assert all(not c.process.is_alive() for c in trainer.supervisor.children)


def test_children_run_at_the_niceness_asked_for(tmp_path):
    # On Ray a node group's workers yield the CPU to the exchange (worker_niceness, added to the
    # parent's niceness); the evaluator runs at the parent's, held to its share by its schedule.
    config = Config(env_id="CartPole-v1", workers=1, runs_dir=str(tmp_path))
    obs_shape, n_actions = env_spaces(config)
    shared = SharedTraining.create(build_model(config, obs_shape, n_actions), config)
    supervisor = Supervisor(config, shared, handle=lambda message: None, say=lambda text: None, worker_niceness=3)
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    expected = {"worker": min(19, ours + 3), "evaluator": ours}

    def niceness() -> dict[str, int]:
        return {c.role: os.getpriority(os.PRIO_PROCESS, c.process.pid) for c in supervisor.children}

    try:
        supervisor.start_workers()
        supervisor.start_evaluator(lambda: (str(tmp_path), obs_shape, n_actions, None))
        deadline = time.monotonic() + 60  # each child lowers its priority once it has imported torch
        while niceness() != expected and time.monotonic() < deadline:
            supervisor.drain(POLL_S)
        seen = niceness()
    finally:
        supervisor.close()
    assert seen == expected
    assert all(not c.process.is_alive() for c in supervisor.children)


def test_cartpole_learns_well_above_random(cartpole_run):
    # A random policy scores about 22. Runs of this configuration evaluated at 500 by three quarters
    # of these frames, most past 200 by half: a wide margin.
    _, _, run_dir = cartpole_run
    evaluations = read_rows(run_dir / "evaluations.csv")
    assert len(evaluations) >= 3  # the 600 s interval never fired: frames triggered these
    best = max(float(r["mean_reward"]) for r in evaluations)
    assert best >= 200, f"best evaluation {best}"
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert checkpoint["score"]["mean_reward"] == best


@pytest.mark.parametrize("lstm", [False, True], ids=["feedforward", "lstm"])
def test_atari_smoke_run_writes_a_checkpoint_that_eval_plays(tmp_path, lstm):
    config = Config(workers=2, total_frames=4000, lstm=lstm, eval_episodes=1,
                    eval_interval=600, max_episode_frames=4000, runs_dir=str(tmp_path), run_name="smoke")
    assert Trainer(config).run() == 0
    run_dir = tmp_path / "smoke"
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert checkpoint["frames"] >= 4000
    assert checkpoint["config"]["lstm"] == lstm
    assert set(checkpoint["optimizer"]["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert (run_dir / "checkpoints" / "best.pt").exists()
    assert (run_dir / "config.json").exists()
    result = subprocess.run([sys.executable, "-m", "a3c", "eval", "--run", str(run_dir), "--episodes", "1",
                             "--device", "cpu"], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "mean reward" in result.stdout and "mean episode length" in result.stdout
    if not lstm:  # the diagnostic scripts, on the default network: once is enough
        _check_the_diagnostic_scripts_on(run_dir / "checkpoints" / "latest.pt")


def _check_the_diagnostic_scripts_on(checkpoint: Path) -> None:
    """The dead-unit, late-gradient and life-by-life diagnostics (scripts/) on a trained checkpoint."""
    # The dead-unit diagnostic: per body layer, the units ever positive.
    script = Path(__file__).resolve().parents[1] / "scripts" / "dead_units.py"
    result = subprocess.run([sys.executable, str(script), str(checkpoint),
                             "--frames", "50", "--detail"], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.findall(r"layer (\d): mean output", result.stdout) == ["1", "2", "3"]
    counts = re.findall(r"(\d+)/(\d+)", result.stdout.split("per body layer:")[1])
    assert [int(units) for _, units in counts] == [16, 32, 256]  # mnih2013's body
    assert all(0 < int(alive) <= int(units) for alive, units in counts)
    # The late-gradient diagnostic: one worker lands on the weights it copied, so its late gradient
    # is its on-time one; with two, each update lands on weights the other has stepped.
    script = Path(__file__).resolve().parents[1] / "scripts" / "stale_gradients.py"
    result = subprocess.run([sys.executable, str(script), str(checkpoint),
                             "--workers", "1", "2", "--updates", "4"], check=False, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    header, _, *rows = [line.split("|")[2:-1] for line in result.stdout.splitlines() if line.startswith("|")]
    columns = [name.strip() for name in header]
    by_workers = {int(row[0]): dict(zip(columns, map(float, row), strict=True)) for row in rows}
    assert by_workers[1]["updates"] == by_workers[2]["updates"] == 4
    assert by_workers[1]["cosine"] == pytest.approx(1.0, abs=1e-3)
    assert by_workers[1]["error"] == by_workers[1]["value_shift"] == by_workers[1]["weight_drift"] == 0.0
    assert by_workers[2]["weight_drift"] > 0 and by_workers[2]["value_shift"] > 0 and by_workers[2]["error"] > 0
    # The life-by-life diagnostic: where each life ended, the points it added (summing to the
    # episode's score), and the screen at each end.
    script = Path(__file__).resolve().parents[1] / "scripts" / "lives.py"
    screens = checkpoint.parents[1] / "screens"
    result = subprocess.run([sys.executable, str(script), str(checkpoint), "--episodes", "1", "--screens",
                             str(screens), "--trace", "3"], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    episode = re.search(r"episode 0: (\S+) in (\d+) steps \| (.*)", result.stdout)
    assert episode is not None, result.stdout
    ends = [(int(step), float(points)) for step, points in re.findall(r"(\d+): \+(\S+)", episode[3])]
    assert [step for step, _ in ends] == sorted({step for step, _ in ends}) and ends[-1][0] == int(episode[2])
    assert sum(points for _, points in ends) == pytest.approx(float(episode[1]))
    assert {path.name for path in screens.iterdir()} == {f"episode0-life{i}.png" for i in range(1, len(ends) + 1)}
    # --trace: each life's last three steps, the last one the step it ended at, its action's
    # probability in (0, 1] and the policy's entropy at most log(actions).
    traced = re.findall(r"step (\d+): (\S+) (\S+) (\d+) (\S+) (\S+)", result.stdout)
    assert [int(step) for step, *_ in traced[2::3]] == [step for step, _ in ends]
    assert all(0 < float(p) <= 1 and 0 <= float(entropy) <= math.log(14) + 1e-6
               for _, _, entropy, _, p, _ in traced)
