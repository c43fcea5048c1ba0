from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from a3c.config import GREY, RGB, Config, ConfigError
from a3c.envs import make_env
from a3c.model import STANDARDIZE_EPS, ActorCritic, bind_flat_parameters, build_model
from a3c.replay import ReplayTape


@pytest.mark.parametrize("size", [42, 84])
def test_atari_observations_are_stacked_uint8_frames(size):
    env = make_env(Config(screen_size=size, body="tutorial" if size == 42 else "mnih2013"), seed=3)
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


def test_colour_frames_stack_each_frames_red_green_and_blue_as_the_screen_shows_them():
    env = make_env(Config(env_id="ALE/Qbert-v5", frame_colour="rgb"), seed=0)
    grey = make_env(Config(env_id="ALE/Qbert-v5"), seed=0)
    try:
        obs, _ = env.reset(seed=0)
        grey.reset(seed=0)
        assert obs.shape == env.observation_space.shape == (12, 84, 84) and obs.dtype == np.uint8
        frames = [obs]
        for _ in range(40):
            action = env.action_space.sample()
            obs, *_ = env.step(action)
            grey_obs, *_ = grey.step(action)
            frames.append(obs)
        # The stack shifts by one frame, three channels, each step.
        assert np.array_equal(frames[-1][:9], frames[-2][3:])
        # The newest frame is the screen (the last two emulator frames' maximum) in its colours:
        # Qbert's cube faces (84, 184, 153) are the commonest colour, as they are the commonest grey.
        newest = frames[-1][-3:].reshape(3, -1).T
        colours, counts = np.unique(newest, axis=0, return_counts=True)
        assert tuple(colours[np.argsort(counts)[-2]]) == (84, 184, 153)  # after black
        assert collections.Counter(grey_obs[-1].ravel().tolist()).most_common(2)[1][0] == 151  # the faces' grey
    finally:
        env.close()
        grey.close()


def test_rgb_newest_frames_hold_the_newest_frame_in_colour_and_the_older_ones_in_grey():
    seeded = [make_env(Config(env_id="ALE/Qbert-v5", frame_colour=colour), seed=0)
              for colour in ("rgb-newest", "rgb", "grey")]
    try:
        observations = [[env.reset(seed=0)[0]] for env in seeded]
        assert seeded[0].observation_space.shape == observations[0][0].shape == (6, 84, 84)
        for _ in range(40):
            action = seeded[0].action_space.sample()
            for env, frames in zip(seeded, observations, strict=True):
                frames.append(env.step(action)[0])
        newest, rgb, grey = (frames[-1] for frames in observations)
        assert np.array_equal(newest[-3:], rgb[-3:])  # the same emulation: the same colour frame
        # The three older frames are grey, as ALE's grey frames within one level of rounding.
        assert np.abs(newest[:3].astype(int) - grey[:3]).max() <= 1
        assert np.abs(newest[:3].astype(int) - grey[:3]).mean() < 0.5
        # The stack shifts by one frame each step: the last newest joins the grey ones.
        before = observations[0][-2]
        assert np.array_equal(newest[:2], before[1:3])
        assert np.array_equal(newest[2], cv2.cvtColor(np.ascontiguousarray(before[-3:].transpose(1, 2, 0)),
                                                      cv2.COLOR_RGB2GRAY))
    finally:
        for env in seeded:
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


@pytest.mark.parametrize("body,size,lstm", [("tutorial", 42, False), ("tutorial", 42, True),
                                            ("mnih2013", 84, False), ("mnih2013", 84, True),
                                            ("mnih2015", 84, False)])
def test_conv_model_shapes(body, size, lstm):
    model = build_model(Config(body=body, screen_size=size, lstm=lstm), (4, size, size), 6)
    obs = torch.randint(0, 255, (3, 4, size, size), dtype=torch.uint8)
    logits, value, state = model(obs, model.initial_state(3))
    assert logits.shape == (3, 6) and value.shape == (3,)
    assert (state is None) == (not lstm)


def test_the_tutorial_body_matches_the_seed_tutorial_network():
    model = build_model(Config(body="tutorial", screen_size=42), (4, 42, 42), 14)
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in model.convs] == [
        (4, 32, (3, 3), (2, 2)), (32, 32, (3, 3), (2, 2)), (32, 32, (3, 3), (2, 2))]
    (fc,) = model.hidden
    assert (fc.in_features, fc.out_features) == (512, 128)  # the seed's fc 512->128


@pytest.mark.parametrize("frame_norm", ["scale", "background"])
def test_the_body_sees_frames_scaled_or_less_their_background_per_observation(frame_norm):
    model = ActorCritic((4, 42, 42), 5, "tutorial", frame_norm=frame_norm)
    obs = torch.randint(0, 256, (4, 4, 42, 42), dtype=torch.uint8)
    obs[1] //= 4  # a darker, flatter observation
    obs[2] = 87  # a blank one, as a game's first frames can be
    obs[3, :, 10:] = 30  # a game's screen: a background of one colour, under noisy sprites above
    tape = ReplayTape(model, steps=1, batch=4, dtype=torch.float32)
    tape.start()
    recorded_logits, _, _ = tape.act(obs, None)
    scaled = obs.double() / 255
    flat = scaled.flatten(1)
    deviation = flat.std(1, correction=0, keepdim=True)
    if frame_norm == "scale":
        expected = scaled
    else:  # less its commonest value (the lowest of a tie), over its own standard deviation
        counts = [collections.Counter(observation.flatten().tolist()) for observation in obs]
        commonest = torch.tensor([max(sorted(c), key=c.__getitem__) for c in counts], dtype=torch.float64)
        assert commonest[2:].tolist() == [87, 30]
        expected = ((flat - commonest.unsqueeze(1) / 255) / (deviation + STANDARDIZE_EPS)).view_as(scaled)
    torch.testing.assert_close(tape.inputs().double(), expected, rtol=1e-5, atol=1e-5)
    # Acting unrecorded (the evaluator, the bootstrap values) sees the same inputs.
    torch.testing.assert_close(model(obs)[0], recorded_logits)


def test_colour_frames_lose_their_background_colour_channel_by_channel():
    # Two stacked RGB frames: a blue background under noisy sprites; each channel less the
    # background's value in it, all over the observation's one standard deviation.
    model = ActorCritic((6, 42, 42), 5, "tutorial", frame_norm="background", channel_colours=(1, 2, 3) * 2)
    obs = torch.randint(0, 256, (2, 6, 42, 42), dtype=torch.uint8)
    background = torch.tensor([66, 72, 200], dtype=torch.uint8)
    obs[:, :, 12:] = background.repeat(2).view(1, 6, 1, 1)
    obs[1, :, :6] = 0
    tape = ReplayTape(model, steps=1, batch=2, dtype=torch.float32)
    tape.start()
    tape.act(obs, None)
    flat = obs.double().flatten(1) / 255
    deviation = flat.std(1, correction=0).view(2, 1, 1, 1)
    shift = background.double().repeat(2).view(1, 6, 1, 1) / 255
    expected = (obs.double() / 255 - shift) / (deviation + STANDARDIZE_EPS)
    torch.testing.assert_close(tape.inputs().double(), expected, rtol=1e-5, atol=1e-5)
    assert tape.inputs()[:, :, 12:].abs().max() < 1e-6  # the background is zero in every channel
    # rgb-newest: two grey frames and a colour one; the grey ones lose the grey background's level.
    layout = (GREY, GREY, *RGB)
    model = ActorCritic((5, 42, 42), 5, "tutorial", frame_norm="background", channel_colours=layout)
    obs = torch.randint(0, 256, (2, 5, 42, 42), dtype=torch.uint8)
    background = torch.tensor([90, 90, 66, 72, 200], dtype=torch.uint8)
    obs[:, :, 12:] = background.view(1, 5, 1, 1)
    tape = ReplayTape(model, steps=1, batch=2, dtype=torch.float32)
    tape.start()
    tape.act(obs, None)
    deviation = (obs.double().flatten(1) / 255).std(1, correction=0).view(2, 1, 1, 1)
    expected = (obs.double() - background.double().view(1, 5, 1, 1)) / 255 / (deviation + STANDARDIZE_EPS)
    torch.testing.assert_close(tape.inputs().double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_frame_stats_reports_a_games_pixel_statistics_and_the_background_gain():
    script = Path(__file__).resolve().parents[1] / "scripts" / "frame_stats.py"
    result = subprocess.run([sys.executable, str(script), "--env-id", "ALE/Pong-v5", "--frames", "40"],
                            check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    fields = result.stdout.splitlines()[-1].split()
    assert fields[0] == "ALE/Pong-v5"
    low, high, mean, std, gain, background = (float(fields[i]) for i in (1, 2, 3, 6, 9, 11))
    assert 0 <= low < mean < high <= 1 and 0 < std < 0.5
    assert gain == pytest.approx(1 / (std + STANDARDIZE_EPS), rel=0.05)  # a mean of ratios, near the ratio
    assert background == pytest.approx(87 / 255, abs=0.01)  # Pong's brown field


@pytest.mark.slow
def test_frame_stats_names_the_colours_that_a_grey_frame_merges():
    # KungFuMaster's blue background and a brown of its sprites have one grey level; Pong's five colours have five.
    script = Path(__file__).resolve().parents[1] / "scripts" / "frame_stats.py"
    result = subprocess.run([sys.executable, str(script), "--colours", "--env-id", "ALE/KungFuMaster-v5",
                             "ALE/Pong-v5", "--frames", "50"], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    kungfumaster, pong = result.stdout.splitlines()[-2:]
    assert "grey 85: RGB (66, 72, 200)" in kungfumaster and "RGB (163, 57, 21)" in kungfumaster
    assert pong == "ALE/Pong-v5: 5 colours, 5 grey levels; sharing one: none"


@pytest.mark.slow
def test_reward_delay_finds_the_step_that_earned_each_reward():
    # KungFuMaster scores on the step of the blow; Breakout a ball's flight after the paddle's hit.
    script = Path(__file__).resolve().parents[1] / "scripts" / "reward_delay.py"
    result = subprocess.run([sys.executable, str(script), "--env-id", "ALE/KungFuMaster-v5", "ALE/Breakout-v5",
                             "--rewards", "3"], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
            for line in result.stdout.splitlines()[2:]}
    assert rows["ALE/KungFuMaster-v5"] == ["3", "1", "1", "1", "100%", "100%"]
    count, median, _, longest, within_5, _ = rows["ALE/Breakout-v5"]
    assert count == "3" and 5 < float(median) <= int(longest) < 60 and within_5 == "0%"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("body,obs_shape,lstm", [("tutorial", (4, 42, 42), False), ("tutorial", (4, 42, 42), True),
                                                 ("mnih2013", (4, 84, 84), False), ("mnih2015", (4, 84, 84), True),
                                                 ("mlp", (4,), True)])
def test_replaying_the_tape_gives_the_acting_outputs_and_their_exact_gradient(body, obs_shape, lstm, dtype):
    """The rollout's logits and values, and the features of a batch recorded after its steps (as
    reward prediction records its own), each with its gradient through one batched backward."""
    torch.manual_seed(0)
    model = ActorCritic(obs_shape, 5, body, lstm)
    steps, batch, recorded = 5, 3, 2
    if len(obs_shape) == 3:
        obs = torch.randint(0, 256, (steps, batch, *obs_shape), dtype=torch.uint8)
        extra = torch.randint(0, 256, (recorded, *obs_shape), dtype=torch.uint8)
    else:
        obs = torch.randn(steps, batch, *obs_shape)
        extra = torch.randn(recorded, *obs_shape)
    starts = torch.zeros(steps, batch, dtype=torch.bool)
    starts[3, 1] = True  # environment 1 begins a new episode at step 3
    initial = None if not lstm else (torch.randn(batch, model.features), torch.randn(batch, model.features))

    def play(tape: ReplayTape | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Step by step, as a worker acts: recording into the tape, or with autograd."""
        weights, state, outputs = model.body_weights(dtype), initial, []
        for t in range(steps):
            if state is not None:
                keep = (~starts[t]).float().unsqueeze(-1)
                state = (state[0] * keep, state[1] * keep)
            if tape is None:
                logits, values, state = model.core(model.encode(obs[t], weights), state)
            else:
                logits, values, state = tape.act(obs[t], state)
            outputs.append((logits, values))
        return torch.stack([o[0] for o in outputs]), torch.stack([o[1] for o in outputs])

    tape = ReplayTape(model, steps, batch, dtype, extra_rows=recorded)
    tape.start()
    acted_logits, acted_values = play(tape)
    tape.record(extra)
    with pytest.raises(RuntimeError, match="after the tape recorded"):
        tape.act(obs[0], initial)
    logits, values, features = tape.replay(initial, starts)
    torch.testing.assert_close(logits, acted_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(values, acted_values, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(features, model.encode(extra, model.body_weights(dtype)), rtol=1e-5, atol=1e-6)

    weights_of_loss = torch.randn(steps, batch, 5), torch.randn(steps, batch), torch.randn(recorded, model.features)

    def gradient(logits: torch.Tensor, values: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        loss = ((logits * weights_of_loss[0]).sum() + (values * weights_of_loss[1]).sum()
                + (features * weights_of_loss[2]).sum())
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True, materialize_grads=True)
        return torch.cat([g.reshape(-1) for g in grads])

    replayed = gradient(logits, values, features)
    reference = gradient(*play(None), model.encode(extra, model.body_weights(dtype)))
    if dtype == torch.float32:
        torch.testing.assert_close(replayed, reference, rtol=1e-4, atol=1e-5)
    else:  # each bfloat16 op rounds its output to 8 significant bits, batched and stepwise alike
        assert float((replayed - reference).norm() / reference.norm()) < 2e-2


def test_flat_parameters_are_views_of_one_tensor():
    model = build_model(Config(env_id="CartPole-v1"), (4,), 2)
    flat = bind_flat_parameters(model)
    flat.zero_()
    assert all(float(p.detach().abs().sum()) == 0 for p in model.parameters())


def test_auto_precision_is_bfloat16_only_for_batched_conv_bodies_on_cpus_with_native_bfloat16(monkeypatch):
    import a3c.config as config_module

    several = config_module.BFLOAT16_MIN_ENVS
    for native in (True, False):
        monkeypatch.setattr(config_module, "cpu_has_native_bfloat16", lambda native=native: native)
        assert Config(envs_per_worker=several).network_precision == ("bfloat16" if native else "float32")
        assert Config(envs_per_worker=several - 1).network_precision == "float32"  # too few frames per pass
        assert Config(env_id="CartPole-v1", envs_per_worker=16).network_precision == "float32"  # an MLP gains nothing
        assert Config(precision="float32").network_precision == "float32"
        assert Config(env_id="CartPole-v1", precision="bfloat16").network_precision == "bfloat16"


def test_a_tape_replays_only_the_weights_that_acted():
    model = ActorCritic((4, 42, 42), 5, "tutorial")
    weights = bind_flat_parameters(model)
    tape = ReplayTape(model, 2, 3, torch.float32, weights)
    starts = torch.zeros(2, 3, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="never started"):
        tape.replay(None, starts)
    tape.start()
    for _ in range(2):
        tape.act(torch.zeros(3, 4, 42, 42, dtype=torch.uint8), None)
    for change in (weights, model.policy.bias):
        with torch.no_grad():  # as a worker's next sync_weights would: through the flat weights, or a parameter
            change.add_(0.01)
        with pytest.raises(RuntimeError, match="weights changed after the rollout was played"):
            tape.replay(None, starts)
        tape.start()
        tape.act(torch.zeros(3, 4, 42, 42, dtype=torch.uint8), None)
    tape.start()  # a new rollout with the new weights replays
    tape.act(torch.zeros(3, 4, 42, 42, dtype=torch.uint8), None)
    logits, values, _ = tape.replay(None, starts[:1])
    assert logits.shape == (1, 3, 5) and values.shape == (1, 3)


def test_a_tape_refuses_layers_its_backward_does_not_cover():
    model = ActorCritic((4, 42, 42), 5, "tutorial")
    model.convs[1].padding = (1, 1)
    with pytest.raises(ValueError, match="only convolutions without padding"):
        ReplayTape(model, 2, 3, torch.float32)


@pytest.mark.parametrize("game", ["ALE/Pong-v5", "ALE/Breakout-v5"])
def test_a_seeded_reset_plays_the_same_episode_however_the_environment_was_used_before(game):
    # The emulator is seeded once (reloading the game takes a tenth of a second) and reset without
    # reloading after that: with no sticky actions its random numbers are never drawn.
    def episode_start(env):
        observations = [env.reset(seed=7)[0]]
        actions = np.random.default_rng(3).integers(env.action_space.n, size=200)
        observations += [env.step(int(action))[0] for action in actions]
        return np.stack(observations)

    used = make_env(Config(env_id=game))
    used.reset(seed=1)
    for action in np.random.default_rng(0).integers(used.action_space.n, size=400):
        if any(used.step(int(action))[2:4]):
            used.reset()
    assert np.array_equal(episode_start(used), episode_start(make_env(Config(env_id=game))))
