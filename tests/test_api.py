"""The Python API, as the README shows it: its example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from a3c import Config, Policy, resume, train
from a3c.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # trains, or starts processes: left out by make test-fast

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_example_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    section = text[text.index("## Python API"):]
    (example,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)[:1]
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})  # noqa: S102 -- the README's example, as written
    printed = capsys.readouterr().out
    assert re.search(r"mean reward [\d.]+ ± [\d.]+ .*\(10 episodes\)", printed), printed
    assert (tmp_path / "runs" / "api-example" / "checkpoints" / "best.pt").exists()


def test_a_policy_predicts_and_evaluates_and_a_run_resumes(tmp_path):
    run = train(Config(env_id="CartPole-v1", workers=1, envs_per_worker=2, total_frames=3000, eval_episodes=1,
                       runs_dir=str(tmp_path), run_name="run"))
    assert run.ok and run.exit_code == 0 and run.run_dir == tmp_path / "run"
    policy = Policy.load(run.run_dir, device="cpu")
    observations = np.zeros((5, 4), dtype=np.float32)
    actions, state = policy.predict(observations, greedy=True)
    assert actions.shape == (5,) and state is None and set(actions.tolist()) <= {0, 1}
    single, _ = policy.predict(observations[0])
    assert np.ndim(single) == 0
    score = policy.evaluate(episodes=2, greedy=True)
    assert score.n_episodes == 2 and score.mean_reward > 0
    frames = load_checkpoint(run.run_dir / "checkpoints" / "latest.pt")["frames"]
    resumed = resume(run.run_dir, {"total_frames": frames + 1000})
    assert resumed.ok and load_checkpoint(run.run_dir / "checkpoints" / "latest.pt")["frames"] >= frames + 1000


def test_a_failed_run_says_so():
    with pytest.raises(ValueError, match="workers must be positive"):
        train(Config(env_id="CartPole-v1", workers=0))
