"""What the evaluation measures, and what settings mean: the sampled policy by default, greedy on
request; Atari rewards clipped by default; settings saved by earlier versions read as they were meant."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import gymnasium as gym
import numpy as np
import pytest
import torch

from a3c.config import PRESETS, Config
from a3c.evaluator import EvaluationSchedule, evaluate_policy
from a3c.model import ActorCritic, build_model
from a3c.shared import SharedTraining
from a3c.worker import ReturnNormalizer, Worker, seed_stream
from tests.helpers import write_checkpoint


class ActionCounter(gym.Env):
    """Counts the actions it is given; every episode lasts `length` steps."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(3)

    def __init__(self, length: int = 200) -> None:
        self.length, self.steps, self.actions = length, 0, Counter()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.steps = 0
        return np.zeros(4, np.float32), {}

    def step(self, action):
        self.actions[int(action)] += 1
        self.steps += 1
        return np.zeros(4, np.float32), 1.0, False, self.steps >= self.length, {}


def policy_preferring_action_one() -> ActorCritic:
    model = ActorCritic((4,), 3, body="mlp")
    with torch.no_grad():
        model.policy.weight.zero_()
        model.policy.bias.copy_(torch.tensor([0.0, 0.5, 0.0]))  # probabilities 0.28, 0.45, 0.28
    return model


@pytest.mark.parametrize("greedy", [False, True], ids=["sampled", "greedy"])
def test_evaluation_samples_from_the_policy_unless_asked_to_play_greedily(greedy):
    env = ActionCounter()
    kwargs = {} if not greedy else {"greedy": True}
    score = evaluate_policy(policy_preferring_action_one(), env, episodes=3, **kwargs)
    assert score.n_episodes == 3 and score.mean_reward == 200.0
    if greedy:
        assert env.actions == Counter({1: 600})
    else:  # 600 draws of (0.28, 0.45, 0.28): each share within a few standard deviations
        shares = [env.actions[a] / 600 for a in range(3)]
        assert shares[1] == pytest.approx(0.45, abs=0.08)
        assert shares[0] == pytest.approx(0.275, abs=0.08) and shares[2] == pytest.approx(0.275, abs=0.08)


@pytest.mark.slow
def test_the_trainer_and_a3c_eval_evaluate_the_sampled_policy_by_default(tmp_path):
    assert Config().eval_greedy is False
    config = Config(env_id="CartPole-v1")
    write_checkpoint(tmp_path / "model.pt", config, (4,), 2)
    for flags, mode in (([], "sampled"), (["--greedy"], "greedy")):
        result = subprocess.run([sys.executable, "-m", "a3c", "eval", "--checkpoint", str(tmp_path / "model.pt"),
                                 "--episodes", "1", "--device", "cpu", *flags],
                                check=False, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert f"{mode} actions" in result.stdout


def test_atari_rewards_are_clipped_to_their_sign_by_default():
    # Pong pays +-1 a point: clipped, they reach the learner as they are (the seed's 0.01 scaling
    # made a point weigh less than the entropy bonus); KungFuMaster's hundreds become 1.
    for env_id in ("ALE/Pong-v5", "ALE/KungFuMaster-v5"):
        assert Config(env_id=env_id).training_reward_transform == "clip"
    assert Config(env_id="CartPole-v1").training_reward_transform == "scale"
    assert Config(env_id="CartPole-v1").training_reward_scale == 1.0
    tutorial = Config(env_id="ALE/Pong-v5", **PRESETS["tutorial"])
    assert (tutorial.training_reward_transform, tutorial.training_reward_scale) == ("scale", 0.01)


def _point_value(worker: Worker) -> float:
    """What one point of Pong is worth to this worker's learner now."""
    transform = worker.to_training_rewards
    if not isinstance(transform, ReturnNormalizer):
        return worker.config.training_reward_scale
    return min(ReturnNormalizer.CLIP, 1.0 / transform.divisor)


@pytest.mark.parametrize("settings", [{}, PRESETS["tutorial"], {"reward_transform": "normalize"}],
                         ids=["default", "tutorial", "normalize"])
def test_a_pong_worker_hands_the_learner_the_chosen_transform_of_the_points(settings):
    config = Config(**{**settings, "env_id": "ALE/Pong-v5", "workers": 1, "envs_per_worker": 1,
                       "t_max": 100, "screen_size": 42, "body": "tutorial"})
    shared = SharedTraining.create(build_model(config, (4, 42, 42), 6), config)
    worker = Worker(0, config, shared, seed_stream(config.seed, 0))
    try:
        for _ in range(20):  # a random policy loses a point every hundred steps or so
            before = worker.episode_returns[0]
            rollout = worker.collect()
            if rollout.ended.any() or not rollout.rewards.any():
                continue
            game_points = worker.episode_returns[0] - before
            expected = _point_value(worker)
            points = torch.tensor([-expected, 0.0, expected], dtype=rollout.rewards.dtype)
            assert torch.isin(rollout.rewards, points).all(), rollout.rewards.unique()
            assert float(rollout.rewards.sum()) == pytest.approx(expected * game_points)
            return
        pytest.fail("no point scored in 2,000 steps of Pong")
    finally:
        worker.close()


def test_normalized_rewards_keep_their_sizes_and_divide_by_the_spread_of_the_discounted_return():
    # KungFuMaster-like points (hundreds, of several sizes) in 4 environments whose episodes end
    # at different steps; the same returns computed here plainly, restarting at each episode's end.
    rng = np.random.default_rng(0)
    gamma, envs, steps = 0.99, 4, 5
    normalizer = ReturnNormalizer(envs, gamma)
    running, seen = np.zeros(envs), []
    for _ in range(200):
        raw = (rng.random((steps, envs)) < 0.1) * rng.choice([100.0, 200.0, 500.0], (steps, envs))
        ended = rng.random((steps, envs)) < 0.02
        for t in range(steps):
            running = running * gamma + raw[t]
            seen.extend(running)
            running[ended[t]] = 0.0
        rewards = raw.astype(np.float32)
        normalizer(rewards, ended)
        std = np.std(seen)
        assert normalizer.var == pytest.approx(std ** 2, rel=1e-9)
        scaled = np.clip(raw / np.sqrt(std ** 2 + 1e-8), -ReturnNormalizer.CLIP, ReturnNormalizer.CLIP)
        np.testing.assert_allclose(rewards, scaled, rtol=1e-5)
    # After 4,000 returns the divisor is the returns' spread: a 500 is worth five 100s, not one.
    assert 100 < std < 5_000 and np.abs(rewards).max() < ReturnNormalizer.CLIP


def test_normalized_rewards_are_bounded_while_the_estimate_rests_on_few_returns():
    normalizer = ReturnNormalizer(1, 0.99)
    rewards = np.zeros((200, 1), np.float32)
    rewards[-1, 0] = 1.0  # Pong's first point after 199 empty steps: the returns' spread is 0.07
    normalizer(rewards, np.zeros((200, 1), bool))
    assert rewards[-1, 0] == ReturnNormalizer.CLIP and not rewards[:-1].any()


@pytest.mark.parametrize("lstm", [False, True], ids=["feedforward", "lstm"])
def test_episodes_played_side_by_side_score_as_played_one_after_another(lstm):
    # Greedy play is a function of each episode's observations (its reset seed) and, with an LSTM,
    # of a state that each new episode starts from zero: rows that finish, drop out or start a new
    # episode on a shared batch must not disturb the others.
    config = Config(env_id="CartPole-v1", lstm=lstm)
    torch.manual_seed(0)  # weights whose greedy play differs between episodes, whatever ran before
    model = build_model(config, (4,), 2)
    one = evaluate_policy(model, gym.make("CartPole-v1"), episodes=7, greedy=True, seed=5)
    side_by_side = evaluate_policy(model, [gym.make("CartPole-v1") for _ in range(3)], episodes=7, greedy=True,
                                   seed=5)
    assert one == side_by_side and one.n_episodes == 7 and one.std_reward > 0


def test_the_schedule_keeps_the_evaluator_within_its_cpu_share_over_its_life():
    # 0.1 s of CPU per second of wall clock; an evaluation is due 30 s after the last one began.
    schedule = EvaluationSchedule(interval=30, every_frames=None, cpu_per_second=0.1, now=100.0, cpu=5.0,
                                  frames=0)
    assert not schedule.due(129.9, 10**9) and schedule.due(130.0, 0)
    schedule.started(130.0, 1_000)
    schedule.finished(cpu=7.0)  # 2 s of CPU: within the share 20 s after the start, so the interval rules
    assert not schedule.due(159.9, 0) and schedule.due(160.0, 0)
    schedule.started(160.0, 2_000)
    schedule.finished(cpu=25.0)  # 20 s since the start in all: not before 200 s of wall clock have passed
    assert not schedule.due(299.9, 0) and schedule.due(300.0, 0)
    schedule.started(300.0, 3_000)
    schedule.finished(cpu=26.0)  # the waiting loop's CPU counts too: 21 s, due at 310, after the interval
    assert not schedule.due(329.9, 0) and schedule.due(330.0, 0)


@pytest.mark.parametrize("interval", [0.0, 30.0])
def test_over_many_evaluations_the_evaluator_takes_its_share_on_average(interval):
    # Evaluations of uneven cost, each started as soon as it is due: the CPU share over a stretch of
    # the run, averaged over where the stretch ends, is the share asked for.
    costs = np.random.default_rng(0).uniform(5.0, 15.0, size=400)  # CPU seconds; each takes twice that
    share, now, cpu = 0.09, 0.0, 0.0
    schedule = EvaluationSchedule(interval=interval, every_frames=None, cpu_per_second=share, now=now, cpu=cpu,
                                  frames=0)
    samples = []  # (wall clock, CPU) at each start and each end
    for cost in costs:
        now = max(now, schedule.next_due)
        schedule.started(now, 0)
        samples.append((now, cpu))
        now, cpu = now + 2 * cost, cpu + cost
        schedule.finished(cpu)
        samples.append((now, cpu))
    began, cpu_began = samples[0]
    window = [(c - cpu_began) / (t - began) for t, c in samples[40:]]  # stretches of 20 evaluations or more
    assert abs(np.mean(window) / share - 1) < 0.02
    assert max(window) / share < 1.1 and min(window) / share > 0.9


def test_evaluations_by_frames_come_whatever_the_interval_and_the_share():
    schedule = EvaluationSchedule(interval=600, every_frames=50_000, cpu_per_second=0.01, now=0.0, cpu=0.0,
                                  frames=10_000)
    assert not schedule.due(1.0, 59_999) and schedule.due(1.0, 60_000)
    schedule.started(1.0, 60_000)
    schedule.finished(cpu=100.0)  # far over its share: the frames still decide
    assert not schedule.due(2.0, 109_999) and schedule.due(2.0, 110_000)
