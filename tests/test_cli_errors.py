"""Bad input gets a one-line error, exit status 2, no traceback, and no run directory."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from a3c.cli import main
from a3c.config import Config
from tests.helpers import write_checkpoint


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("flags,message", [
    (["--env-id", "CartPol-v1"], "unknown environment 'CartPol-v1'; did you mean CartPole-v1"),
    (["--env-id", "Pendulum-v1"], "Box action space; only Discrete actions are supported"),
    (["--env-id", "Blackjack-v1"], "only flat Box observations"),
    (["--workers", "0"], "workers must be positive, got 0"),
    (["--workers", "-3"], "workers must be positive, got -3"),
    (["--workers", "many"], "argument --workers: invalid int value: 'many'"),
    (["--total-frames", "0"], "total_frames must be positive"),
    (["--lr", "-0.001"], "lr must be positive"),
    (["--lr", "0"], "lr must be positive"),
    (["--t-max", "0"], "t_max must be positive"),
    (["--gamma", "1.5"], "gamma must lie in (0, 1]"),
    (["--gamma", "0"], "gamma must lie in (0, 1]"),
    (["--gae-lambda", "-0.1"], "gae_lambda must lie in (0, 1]"),
    (["--runs-dir", "/proc/a3c-runs"], "cannot create run directory"),
    (["--precision", "float16"], "precision must be auto, float32 or bfloat16; got 'float16'"),
    (["--frame-colour", "hsv"], "frame_colour must be grey, rgb or rgb-newest; got 'hsv'"),
    (["--frame-colour", "rgb"], "CartPole-v1 has vector observations: frame_colour rgb is for Atari frames"),
])
def test_bad_training_input(flags, message, tmp_path, capsys):
    runs = ["--runs-dir", str(tmp_path / "runs")] if "--runs-dir" not in flags else []
    code, err = run_cli(["train", "--env-id", "CartPole-v1", *runs, *flags], capsys)
    assert code == 2
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # no run directory half-made


@pytest.mark.slow
def test_the_command_line_shows_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "a3c", "train", "--env-id", "NoSuchGame-v9",
                             "--runs-dir", str(tmp_path)], check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("a3c: error: unknown environment 'NoSuchGame-v9'")
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def good_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    config = Config(env_id="CartPole-v1", runs_dir=str(tmp_path))
    config.save(str(run / "config.json"))
    write_checkpoint(run / "checkpoints" / "latest.pt", config, (4,), 2)
    return run


@pytest.mark.parametrize("damage,message", [
    ("missing", "no checkpoint at"),
    ("empty", "is empty"),
    ("truncated", "is truncated or not a checkpoint"),
    ("text", "is truncated or not a checkpoint"),
    ("tensor", "is not an a3c checkpoint"),
])
def test_bad_checkpoints_are_named_clearly(damage, message, good_checkpoint, tmp_path, capsys):
    path = tmp_path / "bad.pt"
    data = (good_checkpoint / "checkpoints" / "latest.pt").read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "text":
        path.write_text("not a checkpoint\n")
    elif damage == "tensor":
        torch.save(torch.zeros(3), path)
    for command in (["eval", "--checkpoint", str(path)], ["train", "--resume", str(path)]):
        code, err = run_cli(command, capsys)
        assert code == 2 and message in err and len(err.splitlines()) == 1, (command, err)


def test_a_run_without_a_checkpoint_yet(tmp_path, capsys):
    (tmp_path / "empty-run").mkdir()
    for command in (["eval", "--run", str(tmp_path / "empty-run")], ["train", "--resume", str(tmp_path / "empty-run")]):
        code, err = run_cli(command, capsys)
        assert code == 2 and "has no checkpoint yet" in err


@pytest.mark.parametrize("flags,message", [
    (["--env-id", "Acrobot-v1"], "cannot change on resume: env_id 'CartPole-v1' -> 'Acrobot-v1'"),
    (["--lstm"], "cannot change on resume: lstm False -> True"),
    (["--mlp-hidden", "32"], "cannot change on resume: mlp_hidden 64 -> 32"),
    (["--optimizer", "rmsprop"], "cannot change on resume: optimizer 'adam' -> 'rmsprop'"),
])
def test_resume_refuses_another_environment_or_model_shape(flags, message, good_checkpoint, capsys):
    code, err = run_cli(["train", "--resume", str(good_checkpoint), *flags], capsys)
    assert code == 2 and message in err


def test_a_checkpoint_whose_model_does_not_fit(tmp_path, capsys):
    config = Config(env_id="CartPole-v1")
    wrong = Config(env_id="CartPole-v1", mlp_hidden=16)

    write_checkpoint(tmp_path / "odd.pt", config, (4,), 2, model_config=wrong)
    code, err = run_cli(["eval", "--checkpoint", str(tmp_path / "odd.pt")], capsys)
    assert code == 2 and "does not fit its model" in err and len(err.splitlines()) == 1
