"""Settings: the settings files of earlier versions read as they were meant (config.read_older, the
one place that knows them), and the command line's help: grouped, short, free of run figures."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from a3c.cli import build_parser
from a3c.config import GROUPS, Config, ConfigError


def test_a_configuration_saved_by_an_earlier_version_keeps_its_meaning(tmp_path, capsys):
    # As written by the version whose defaults were one environment per worker, t_max 20, lr 1e-4,
    # scaled rewards and greedy evaluation, with settings since renamed or removed.
    saved = {**Config().to_dict(), "envs_per_worker": 1, "t_max": 20, "lr": 1e-4, "eval_greedy": True,
             "reward_scale": None, "body": "seed", "screen_size": 42, "activation": "relu", "eval_niceness": 10}
    del saved["reward_transform"]
    for clip, transform, scale in ((False, "scale", 0.01), (True, "clip", 1.0)):
        (tmp_path / "config.json").write_text(json.dumps({**saved, "reward_clip": clip}))
        config = Config.from_dict(json.loads((tmp_path / "config.json").read_text()))
        assert (config.training_reward_transform, config.training_reward_scale) == (transform, scale)
        assert config.eval_greedy is True
        assert (config.envs_per_worker, config.t_max, config.lr) == (1, 20, 1e-4)
        assert (config.body, config.screen_size) == ("tutorial", 42)
        notes = capsys.readouterr().err
        assert "body 'seed' is now called 'tutorial'" in notes
        assert "setting 'eval_niceness' is gone" in notes and "activation" not in notes  # ReLU is what it had
    nature = Config.from_dict({**saved, "body": "nature", "screen_size": 84})
    assert nature.model_body == "mnih2013"


@pytest.mark.parametrize("setting,value", [("activation", "elu"), ("frame_norm", "standardize")])
def test_a_run_with_a_removed_setting_is_refused_with_the_reason(setting, value):
    with pytest.raises(ConfigError, match=rf"^{setting} '{value}' is no longer supported: .*docs/experiments.md"):
        Config.from_saved({**Config().to_dict(), setting: value})


def test_a_saved_run_without_later_settings_keeps_the_optimizer_and_episodes_it_had():
    # Runs saved before `optimizer`, `terminal_on_life_loss`, `frame_norm` and `rollout_passes`
    # existed trained with Adam, on frames scaled to [0, 1], on episodes that only game over ended,
    # one step a rollout; read back (to resume or evaluate), they stay so whatever today's defaults.
    # New settings without them take today's.
    saved = Config().to_dict()
    del saved["optimizer"], saved["terminal_on_life_loss"], saved["frame_norm"], saved["rollout_passes"]
    config = Config.from_saved(saved)
    assert (config.optimizer, config.terminal_on_life_loss, config.frame_norm) == ("adam", False, "scale")
    assert config.rollout_passes == 1 < Config().rollout_passes
    assert Config.from_saved({**saved, "optimizer": "rmsprop"}).optimizer == "rmsprop"
    assert Config.from_saved({**saved, "terminal_on_life_loss": True}).terminal_on_life_loss is True
    fresh = Config.from_dict(saved)
    assert (fresh.optimizer, fresh.terminal_on_life_loss, fresh.frame_norm) == (
        Config().optimizer, Config().terminal_on_life_loss, Config().frame_norm)
    assert (Config().terminal_on_life_loss, Config().frame_norm) == (True, "background")


def test_every_setting_is_in_one_help_group():
    grouped = [name for names in GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(f.name for f in dataclasses.fields(Config))
    assert len(grouped) == len(set(grouped))


def test_train_help_is_grouped_short_and_free_of_run_figures():
    train = next(action for action in build_parser()._subparsers._group_actions[0].choices.values()
                 if action.prog.endswith("train"))
    titles = [group.title for group in train._action_groups]
    assert [t for t in titles if t in GROUPS or t.startswith("on a Ray")] == [*GROUPS, titles[-1]]
    for action in train._actions:
        text = action.help or ""
        assert len(text) <= 200, (action.dest, len(text))
        assert not re.search(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", text), action.dest  # commits
        assert not re.search(r"\d[\d,.]* (M )?frames", text), action.dest  # results of runs
