"""What a user sees: plots, videos, TensorBoard, configuration files, piped status lines."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from types import SimpleNamespace

import cv2
import pytest

from a3c.cli import main
from a3c.config import Config
from a3c.logger import EVALUATIONS_CSV, TRAIN_EPISODES_CSV, RunLogger
from tests.helpers import TrainProcess, write_checkpoint

pytestmark = pytest.mark.slow  # trains, or starts processes: left out by make test-fast

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fake_run(path, frames_per_episode=200, episodes=300):
    path.mkdir(parents=True)
    Config(env_id="CartPole-v1").save(str(path / "config.json"))
    with open(path / "train_episodes.csv", "w") as f:
        f.write("frames,worker,return,length,time\n")
        f.writelines(f"{(i + 1) * frames_per_episode},{i % 2},{20 + i * 0.5},{20 + i},{i * 0.1}\n" for i in range(episodes))
    with open(path / "evaluations.csv", "w") as f:
        f.write("frames,episodes,time,mean_reward,std_reward,min_reward,max_reward,mean_ep_length,n_episodes\n")
        f.writelines(f"{i * 10000},{i * 50},{i * 5.0},{i * 40.0},{i * 3.0},{i * 35.0},{i * 45.0},{i * 40.0},5\n" for i in range(1, 6))


def test_plot_writes_a_png_of_several_runs(tmp_path, capsys):
    _fake_run(tmp_path / "runs" / "a")
    _fake_run(tmp_path / "runs" / "b", frames_per_episode=150)
    output = tmp_path / "compare.png"
    assert main(["plot", str(tmp_path / "runs" / "a"), str(tmp_path / "runs" / "b"), "--output", str(output)]) == 0
    data = output.read_bytes()
    assert data.startswith(PNG_MAGIC)
    image = cv2.imread(str(output))
    assert image is not None and image.shape[0] > 400 and image.shape[1] > 600
    assert image.std() > 10  # not a blank canvas
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("env_id,fps,frames_per_step", [("ALE/KungFuMaster-v5", 60, 4), ("CartPole-v1", 50, 1)])
def test_eval_video_matches_the_episode(tmp_path, capsys, env_id, fps, frames_per_step):
    if not env_id.startswith("ALE/"):
        pytest.importorskip("pygame")  # the optional video extra draws classic-control games
    # An untrained model, and a short frame limit so the Atari episode ends quickly.
    config = Config(env_id=env_id, max_episode_frames=400)
    shape = (4, config.screen_size, config.screen_size) if config.is_atari else (4,)
    n_actions = 14 if config.is_atari else 2
    write_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", config, shape, n_actions)
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "best.pt"), "--episodes", "1",
                 "--video", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    length = float(re.search(r"mean episode length ([\d.]+)", out).group(1))
    video = tmp_path / "run" / "videos" / "best-000.mp4"
    capture = cv2.VideoCapture(str(video))
    assert capture.get(cv2.CAP_PROP_FPS) == fps
    # The frame after reset, then every emulator frame the episode played.
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 1 + int(length) * frames_per_step
    ok, frame = capture.read()
    assert ok and frame.ndim == 3
    capture.release()


def test_tensorboard_holds_the_usual_keys(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from a3c.trainer import Trainer

    config = Config(env_id="CartPole-v1", workers=2, total_frames=6000, lr=1e-3, eval_episodes=2,
                    status_interval=0.5, runs_dir=str(tmp_path), run_name="run")
    assert Trainer(config).run() == 0
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {"rollout/ep_rew_mean", "rollout/ep_len_mean", "eval/mean_reward", "eval/mean_ep_length",
                "train/policy_loss", "train/value_loss", "train/entropy", "train/grad_norm",
                "train/learning_rate", "train/explained_variance", "train/active_units", "train/staleness",
                "train/staleness_max", "time/fps"}
    assert expected <= scalars, expected - scalars
    assert any("hyperparameters" in tag for tag in events.Tags()["tensors"])


def _settings_train_would_start_with(argv: list[str], monkeypatch) -> Config:
    """The Config that `a3c train ARGV` hands to the trainer, without starting one."""
    from a3c import api

    started: list[Config] = []
    monkeypatch.setattr(api, "train", lambda config, ray=None: started.append(config) or SimpleNamespace(exit_code=0))
    assert main(["train", *argv]) == 0
    return started[0]


def test_a_saved_configuration_gives_the_same_settings_again(tmp_path, capsys, monkeypatch):
    settings = {"env_id": "CartPole-v1", "workers": 1, "total_frames": 300, "lr": 0.003, "t_max": 7,
                "eval_episodes": 1, "runs_dir": str(tmp_path)}
    (tmp_path / "first.json").write_text(json.dumps(settings))
    assert main(["train", "--config", str(tmp_path / "first.json"), "--run-name", "one", "--gamma", "0.95"]) == 0
    first = json.loads((tmp_path / "one" / "config.json").read_text())
    assert first["gamma"] == 0.95 and first["t_max"] == 7  # the flag overrides the file
    printed = capsys.readouterr().out
    assert "configuration: " in printed  # the effective configuration is printed at the start
    again = _settings_train_would_start_with(["--config", str(tmp_path / "one" / "config.json"), "--run-name", "two"],
                                             monkeypatch)
    again.save(str(tmp_path / "two.json"))
    second = json.loads((tmp_path / "two.json").read_text())
    assert {**second, "run_name": None} == {**first, "run_name": None}


def test_yaml_configuration(tmp_path, monkeypatch):
    pytest.importorskip("yaml")
    (tmp_path / "settings.yaml").write_text("env_id: CartPole-v1\nworkers: 1\ntotal_frames: 200\n"
                                            f"runs_dir: {tmp_path}\nrun_name: yaml\neval_episodes: 1\n")
    config = _settings_train_would_start_with(["--config", str(tmp_path / "settings.yaml")], monkeypatch)
    assert (config.env_id, config.workers, config.total_frames, config.run_name) == ("CartPole-v1", 1, 200, "yaml")


def test_piped_output_gets_plain_status_lines(tmp_path):
    run = TrainProcess(["--env-id", "CartPole-v1", "--workers", "1", "--total-frames", "3000",
                        "--status-interval", "0.2", "--runs-dir", str(tmp_path)], tmp_path)
    try:
        run.wait_for(r"^\[\d\d:\d\d:\d\d\] frames [\d,]+/3,000 ")
        assert run.finish() == 0
    finally:
        if run.process.poll() is None:
            run.kill_all()
    assert not any("\r" in line or "it/s" in line or "frame/s" in line for line in run.lines)


def test_help_shows_every_default():
    result = subprocess.run([sys.executable, "-m", "a3c", "train", "--help"], check=True, capture_output=True,
                            text=True, timeout=60)
    for flag in ("--workers", "--total-frames", "--lr", "--gamma", "--t-max", "--lstm", "--envs-per-worker"):
        assert flag in result.stdout
    assert result.stdout.count("(default:") >= len(Config.__dataclass_fields__)


def test_plot_starts_without_torch(tmp_path):
    # A plot needs the run's CSV and JSON files only: no torch, no gymnasium, no emulator.
    _fake_run(tmp_path / "runs" / "a")
    script = ("import sys\nfrom a3c.cli import main\n"
              f"code = main(['plot', {str(tmp_path / 'runs' / 'a')!r}])\n"
              "print(code, sorted(m for m in ('torch', 'gymnasium', 'ale_py') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=120)
    assert result.stdout.split("\n")[-2] == "0 []", result.stdout
    assert (tmp_path / "runs" / "a" / "plot.png").read_bytes().startswith(PNG_MAGIC)


def test_a_resume_drops_the_rows_written_after_its_checkpoint(tmp_path):
    """A run killed (power cut, OOM) after its last checkpoint wrote episodes and evaluations that
    its resume trains again: they go, with a last row the kill cut short, and the rest stays, its
    last episodes the start of the resumed run's training return."""
    (tmp_path / TRAIN_EPISODES_CSV).write_text(
        "frames,worker,return,length,time\n100,0,1.0,10,1.0\n200,1,2.0,10,2.0\n300,0,3.0,10,3.0\n31")
    (tmp_path / EVALUATIONS_CSV).write_text(
        "frames,episodes,time,mean_reward,std_reward,min_reward,max_reward,mean_ep_length,n_episodes\n"
        "150,1,1.5,1.0,0.0,1.0,1.0,10.0,2\n")
    console = io.StringIO()
    logger = RunLogger(Config(env_id="CartPole-v1"), tmp_path, initial_frames=200, tensorboard=False,
                       stream=console)
    assert list(logger.recent_returns) == [1.0, 2.0]  # the training return goes on from the kept episodes
    logger.episode(260, 1, 5.0, 10, 0.0)
    logger.close()
    assert logger.write_error is None
    lines = (tmp_path / TRAIN_EPISODES_CSV).read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ["frames", "100", "200", "260"]
    assert (tmp_path / EVALUATIONS_CSV).read_text().splitlines()[1].startswith("150,")  # before: kept
    assert "train_episodes.csv: 2 rows after the checkpoint's 200 frames dropped" in console.getvalue()
    assert "evaluations.csv" not in console.getvalue()
