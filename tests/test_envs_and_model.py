from __future__ import annotations

import numpy as np
import pytest
import torch

from a3c.config import Config, ConfigError
from a3c.envs import make_env
from a3c.model import bind_flat_parameters, build_model


@pytest.mark.parametrize("size", [42, 84])
def test_atari_observations_are_stacked_uint8_frames(size):
    env = make_env(Config(screen_size=size, body="seed" if size == 42 else "nature"), seed=3)
    try:
        obs, _ = env.reset(seed=3)
        assert obs.shape == (4, size, size) and obs.dtype == np.uint8
        assert env.observation_space.shape == (4, size, size)
        assert env.observation_space.contains(obs)
        frames = [obs]
        for _ in range(10):
            obs, reward, _terminated, _truncated, info = env.step(env.action_space.sample())
            assert obs.shape == (4, size, size) and obs.dtype == np.uint8
            assert isinstance(reward, float) and info["frames"] == 4
            frames.append(obs)
        # The stack shifts by one frame each step.
        assert np.array_equal(frames[-1][:3], frames[-2][1:])
        assert frames[-1].max() > 0
    finally:
        env.close()


def test_atari_reset_with_the_same_seed_replays_the_same_frames():
    env = make_env(Config(), seed=0)
    try:
        first, _ = env.reset(seed=11)
        again, _ = env.reset(seed=11)
        assert np.array_equal(first, again)
    finally:
        env.close()


def test_atari_episode_is_truncated_at_the_frame_limit():
    env = make_env(Config(max_episode_frames=40), seed=0)
    try:
        env.reset(seed=0)
        for step in range(10):
            _, _, terminated, truncated, _ = env.step(0)
            assert truncated == (step == 9) and not terminated
    finally:
        env.close()


def test_vector_env_gives_float32_observations():
    env = make_env(Config(env_id="CartPole-v1"), seed=0)
    try:
        obs, _ = env.reset(seed=0)
        assert obs.dtype == np.float32 and obs.shape == (4,)
    finally:
        env.close()


@pytest.mark.parametrize("env_id,message", [
    ("Pendulum-v1", "action space"),
    ("CartPol-v1", "did you mean CartPole-v1"),
])
def test_unsupported_environments_are_refused_clearly(env_id, message):
    with pytest.raises(ConfigError, match=message):
        make_env(Config(env_id=env_id))


@pytest.mark.parametrize("body,size,lstm", [("seed", 42, False), ("seed", 42, True),
                                            ("nature", 84, False), ("nature", 84, True)])
def test_conv_model_shapes(body, size, lstm):
    model = build_model(Config(body=body, screen_size=size, lstm=lstm), (4, size, size), 6)
    obs = torch.randint(0, 255, (3, 4, size, size), dtype=torch.uint8)
    logits, value, state = model(obs, model.initial_state(3))
    assert logits.shape == (3, 6) and value.shape == (3,)
    assert (state is None) == (not lstm)


def test_seed_body_matches_the_tutorial_network():
    model = build_model(Config(), (4, 42, 42), 14)
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in model.convs] == [
        (4, 32, (3, 3), (2, 2)), (32, 32, (3, 3), (2, 2)), (32, 32, (3, 3), (2, 2))]
    (fc,) = model.hidden
    assert (fc.in_features, fc.out_features) == (512, 128)  # the seed's fc 512->128


def test_unroll_equals_step_by_step_forward_with_resets():
    torch.manual_seed(0)
    model = build_model(Config(env_id="CartPole-v1", lstm=True), (4,), 2)
    obs = torch.randn(6, 2, 4)
    starts = torch.zeros(6, 2, dtype=torch.bool)
    starts[3, 1] = True
    state = (torch.randn(2, 64), torch.randn(2, 64))
    logits, values = model.unroll(obs, state, starts)
    step_state = state
    for t in range(6):
        keep = (~starts[t]).float().unsqueeze(-1)
        step_state = (step_state[0] * keep, step_state[1] * keep)
        step_logits, step_values, step_state = model(obs[t], step_state)
        torch.testing.assert_close(logits[t], step_logits)
        torch.testing.assert_close(values[t], step_values)


def test_flat_parameters_are_views_of_one_tensor():
    model = build_model(Config(env_id="CartPole-v1"), (4,), 2)
    flat = bind_flat_parameters(model)
    flat.zero_()
    assert all(float(p.detach().abs().sum()) == 0 for p in model.parameters())


def test_auto_precision_is_bfloat16_only_for_conv_bodies_on_cpus_with_native_bfloat16(monkeypatch):
    import a3c.config as config_module

    for native in (True, False):
        monkeypatch.setattr(config_module, "cpu_has_native_bfloat16", lambda native=native: native)
        assert Config().learner_precision == ("bfloat16" if native else "float32")
        assert Config(env_id="CartPole-v1").learner_precision == "float32"  # an MLP gains nothing
        assert Config(precision="float32").learner_precision == "float32"
        assert Config(env_id="CartPole-v1", precision="bfloat16").learner_precision == "bfloat16"
