"""Stopping and resuming a long unattended run: signals, checkpoints on their schedule, resume, torn
and full-disk writes, a second trainer on the same run."""

from __future__ import annotations

import csv
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from a3c.checkpoint import RunWriteError, load_checkpoint, save_checkpoint
from a3c.cli import main
from a3c.config import Config
from a3c.envs import env_spaces
from a3c.logger import read_rows
from a3c.model import build_model
from a3c.shared import torch_segments
from a3c.trainer import Trainer, check_model_fits
from tests.conftest import segments_left
from tests.helpers import CARTPOLE, TrainProcess, wait_until, write_checkpoint

pytestmark = pytest.mark.slow  # trains, or starts processes: left out by make test-fast


def test_sigterm_stops_everything_cleanly_with_a_final_checkpoint(train_process, tmp_path):
    # SIGINT takes the same way out, with exit status 130: the SIGINT test below checks it.
    segments = torch_segments()
    run = train_process("--total-frames", "100000000", "--eval-interval", "600")
    run.wait_for(r"frames ([1-9][\d,]*)/")
    run.process.send_signal(signal.SIGTERM)
    assert run.finish(timeout=60) == 143
    assert any("final checkpoint" in line or "stopped by" in line for line in run.lines)
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert checkpoint["frames"] > 0 and checkpoint["score"] is None  # saved, not evaluated
    assert run.alive_pids() == []
    assert not segments_left(segments)


def _saved(path: Path) -> dict:
    """The checkpoint at `path`, or an empty dict before there is one (it appears whole: renamed)."""
    return load_checkpoint(path) if path.exists() else {}


def test_checkpoints_keep_their_schedule_while_the_evaluator_is_stopped_and_sigint_ends_within_the_bound(
        train_process, tmp_path):
    segments = torch_segments()
    run = train_process("--total-frames", "100000000", "--stop-timeout", "10", "--hang-timeout", "600")
    run.wait_for(r"frames ([1-9][\d,]*)/")
    os.kill(run.evaluator_pid(), signal.SIGSTOP)  # as a hung CUDA call or a game that never ends would
    stopped_at = time.time()
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    wait_until(lambda: _saved(latest).get("saved_at", 0) > stopped_at, 30, "a checkpoint after the stop")
    frames = _saved(latest)["frames"]
    wait_until(lambda: _saved(latest)["frames"] > frames, 30, "a later checkpoint of more frames")
    frames = _saved(latest)["frames"]
    signalled = time.monotonic()
    run.process.send_signal(signal.SIGINT)
    assert run.finish(timeout=60) == 130
    took = time.monotonic() - signalled
    assert took < 10 + 3, f"exit after {took:.1f} s:\n{run.lines_since(signalled)}"  # the bound, and the exit
    assert any("SIGINT: stopping within 10 s" in line for line in run.lines)
    final = load_checkpoint(latest)
    assert final["frames"] > frames and final["score"] is None  # from the shared weights
    assert final["episodes"] == len(read_rows(tmp_path / "run" / "train_episodes.csv"))
    assert run.alive_pids() == []  # the stopped evaluator too
    assert not list(latest.parent.glob(".*.tmp"))
    assert not segments_left(segments)


def test_latest_checkpoint_is_written_on_schedule_with_no_evaluator_at_all(tmp_path):
    config = Config(env_id="CartPole-v1", workers=1, total_frames=10_000_000, time_limit=4, checkpoint_interval=0.5,
                    runs_dir=str(tmp_path), run_name="run")
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    seen: dict[float, int] = {}  # saved_at: frames, of every checkpoint seen during the run

    def look(_now: float, _frames: int) -> None:
        checkpoint = _saved(latest)
        if checkpoint:
            seen[checkpoint["saved_at"]] = checkpoint["frames"]

    assert Trainer(config, evaluator=False, on_tick=look).run() == 0
    times = sorted(seen)
    assert len(times) >= 4, seen
    assert all(later - earlier < 0.5 + 1.0 for earlier, later in itertools.pairwise(times))
    assert [seen[t] for t in times] == sorted(seen.values())  # each of more frames
    assert load_checkpoint(latest)["frames"] >= seen[times[-1]]  # and the final one


def test_a_second_ctrl_c_stops_at_once(train_process):
    run = train_process("--total-frames", "100000000", "--eval-interval", "600")
    run.wait_for(r"frames ([1-9][\d,]*)/")
    run.process.send_signal(signal.SIGINT)
    run.process.send_signal(signal.SIGINT)
    assert run.finish(timeout=30) == 130
    assert run.alive_pids() == []


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_resume_restores_model_optimizer_and_counters(tmp_path, optimizer):
    config = Config(env_id="CartPole-v1", workers=2, total_frames=4000, lr=1e-3, eval_episodes=2,
                    optimizer=optimizer, runs_dir=str(tmp_path), run_name="run")
    assert Trainer(config).run() == 0
    run_dir = tmp_path / "run"
    payload = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    resumed_config = Config.from_dict({**payload["config"], "total_frames": 8000})
    trainer = Trainer(resumed_config, payload, run_dir)
    model = build_model(resumed_config, (4,), 2)
    model.load_state_dict(payload["model"])
    assert torch.equal(trainer.shared.params, torch.nn.utils.parameters_to_vector(model.parameters()))
    saved, restored = payload["optimizer"]["state"][0], trainer.shared.optimizer.state_dict()["state"][0]
    assert resumed_config.optimizer == optimizer
    assert set(saved) == set(restored) == {"step", *trainer.shared.optimizer.state_names}
    for key in saved:
        assert torch.equal(torch.as_tensor(saved[key]), restored[key])
    assert all(t.is_shared() for t in trainer.shared.optimizer.tensors())
    assert trainer.shared.total_frames() == payload["frames"]
    # latest.pt is written before the final evaluation; the best score so far is best.pt's.
    assert trainer.best_score == load_checkpoint(run_dir / "checkpoints" / "best.pt")["best_score"] is not None
    assert trainer.run() == 0
    assert trainer.shared.total_frames() >= 8000
    final = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert final["frames"] >= 8000 and float(final["optimizer"]["state"][0]["step"]) > float(saved["step"])
    with open(run_dir / "train_episodes.csv") as f:
        rows = list(csv.reader(f))
    assert rows.count(rows[0]) == 1 and len(rows) - 1 == final["episodes"]  # appended, one header
    assert len(read_rows(run_dir / "evaluations.csv")) == 2  # one final evaluation from each part


class _ExplodingTensor:
    """Pickling fails part way through, as a crash in the middle of a write would."""

    def __reduce__(self):
        raise RuntimeError("simulated crash while writing")


def test_an_interrupted_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    path = tmp_path / "latest.pt"
    save_checkpoint(path, {"frames": 1, "model": {"w": torch.arange(1000.0)}})
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_checkpoint(path, {"frames": 2, "model": {"w": torch.zeros(1000)}, "bad": _ExplodingTensor()})
    payload = load_checkpoint(path)
    assert payload["frames"] == 1 and torch.equal(payload["model"]["w"], torch.arange(1000.0))
    assert [p.name for p in Path(tmp_path).iterdir()] == ["latest.pt"]  # no temporary left over


def test_children_exit_when_the_parent_is_killed(train_process):
    run = train_process("--workers", "2", "--total-frames", "100000000", "--eval-interval", "600")
    run.wait_for(r"frames ([1-9][\d,]*)/")
    children = [p for p in run.pids if p != run.process.pid]
    assert len(children) == 3  # two workers and the evaluator
    run.process.kill()
    run.process.wait(timeout=30)
    _children_exit(run)
    assert run.alive_pids() == []
    run.finish()  # everything the children printed on their way out
    assert not [line for line in run.lines if "Traceback" in line or "Error" in line], run.lines[-20:]


def _children_exit(run: TrainProcess) -> None:
    for pid in run.pids - {run.process.pid}:
        try:
            psutil.Process(pid).wait(timeout=30)  # they notice the parent is gone and exit
        except psutil.NoSuchProcess:
            pass


def _a3c(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "a3c", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)


def test_a_second_trainer_is_refused_while_the_run_lives_and_taken_after_a_sigkill(train_process, tmp_path):
    run = train_process("--total-frames", "100000000", "--eval-interval", "0.5")
    run.wait_for(r"eval at")
    second = _a3c("train", "--resume", str(tmp_path / "run"), cwd=tmp_path)
    assert second.returncode == 2, second.stderr
    assert second.stderr.splitlines() == [
        (f"a3c: error: run directory {tmp_path / 'run'} is in use by another trainer (pid {run.process.pid}); "
        "wait for it to end, or stop it first")]
    assert "Traceback" not in second.stdout + second.stderr
    run.wait_for(r"eval at")  # the first run goes on unharmed
    assert run.process.poll() is None
    run.process.kill()  # the operating system releases its lock
    run.process.wait(timeout=30)
    _children_exit(run)
    frames = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")["frames"]
    third = _a3c("train", "--resume", str(tmp_path / "run"), "--total-frames", str(frames + 2000), cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert f"at {frames:,} frames" in third.stdout
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")["frames"] >= frames + 2000


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs, where this test may mount one (root with CAP_SYS_ADMIN)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here to fill: {result.stderr.strip() or result.returncode}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing left to write at close
        for chunk in (1 << 20, 512):  # then the last partial page too
            try:
                while f.write(b"\0" * chunk):
                    pass
            except OSError:
                pass
    return filler


def test_a_full_disk_stops_the_run_with_one_line_and_it_resumes_once_there_is_room(small_disk):
    run = TrainProcess([*CARTPOLE, "--total-frames", "100000000", "--eval-interval", "0.5",
                        "--runs-dir", str(small_disk), "--run-name", "run"], small_disk)
    try:
        run.wait_for(r"eval at")
        filler = _fill(small_disk)
        assert run.finish(timeout=120) == 1
    finally:
        if run.process.poll() is None:
            run.kill_all()
    output = "\n".join(run.lines)
    assert "Traceback" not in output, output
    full = [line for line in run.lines if "No space left on device" in line]
    assert len(full) == 1 and full[0].startswith(f"error: cannot write {small_disk / 'run'}"), output
    assert "the disk is full" in full[0]
    assert "died" not in output and "replaced by" not in output  # a full disk is no process's fault
    assert run.alive_pids() == []
    latest = load_checkpoint(small_disk / "run" / "checkpoints" / "latest.pt")
    # Resuming into the full disk: one line, no traceback.
    refused = _a3c("train", "--resume", str(small_disk / "run"), "--total-frames", str(latest["frames"] + 2000),
                   cwd=small_disk)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr + refused.stdout
    assert len(refused.stderr.splitlines()) == 1 and "No space left on device" in refused.stderr
    filler.unlink()
    resumed = _a3c("train", "--resume", str(small_disk / "run"), "--total-frames", str(latest["frames"] + 2000),
                   cwd=small_disk)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(small_disk / "run" / "checkpoints" / "latest.pt")["frames"] >= latest["frames"] + 2000


def test_a_checkpoint_write_that_hits_a_full_disk_names_it_and_keeps_the_previous_one(small_disk):
    path = small_disk / "latest.pt"
    save_checkpoint(path, {"frames": 1, "model": {"w": torch.arange(1000.0)}})
    _fill(small_disk)
    with pytest.raises(RunWriteError, match=r"cannot write .*latest.pt: No space left on device \(the disk is full"):
        save_checkpoint(path, {"frames": 2, "model": {"w": torch.zeros(4_000_000)}})
    assert load_checkpoint(path)["frames"] == 1
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "latest.pt"]


@pytest.mark.parametrize("body,smallest", [("tutorial", 15), ("mnih2013", 20), ("mnih2015", 36)])
def test_a_screen_too_small_for_the_body_is_refused_before_anything_starts(body, smallest, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", "--body", body, "--screen-size", str(smallest - 1), "--total-frames", "1", "--workers",
                 "1", "--runs-dir", str(runs)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        (f"a3c: error: screen_size {smallest - 1} is too small for the {body} body's convolutions: "
         f"the smallest that works is {smallest}")]
    assert not runs.exists()  # refused before any file was written
    config = Config(body=body, screen_size=smallest)
    check_model_fits(config, *env_spaces(config))  # the smallest itself works


def test_videos_and_plots_on_a_full_disk_end_with_one_line(small_disk, capsys):
    config = Config(max_episode_frames=400)  # an untrained KungFuMaster model, a short episode
    run_dir = small_disk / "run"
    write_checkpoint(run_dir / "checkpoints" / "best.pt", config, (4, config.screen_size, config.screen_size), 14)
    config.save(str(run_dir / "config.json"))
    _fill(small_disk)
    assert main(["eval", "--run", str(run_dir), "--episodes", "1", "--video", "--device", "cpu"]) == 1
    assert main(["plot", str(run_dir), "--output", str(small_disk / "plots" / "plot.png")]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all("No space left on device (the disk is full" in line for line in errors), errors
    assert f"cannot write {run_dir / 'videos'}" in errors[0] and f"cannot write {small_disk / 'plots'}" in errors[1]
