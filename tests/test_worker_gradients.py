"""The gradient a worker hands to the shared optimizer is exactly its update's fresh gradient.

The reference gradient is a3c/reference.py's: a fresh model with the weights the rollout was played
with, a step-by-step forward pass, and torch.autograd.grad. Two classic A3C bugs fail here:
gradients accumulating across updates (grads zeroed to None while the shared copy keeps the old
buffer, or never zeroed), and a shared grad left pointing at the first update's tensor (every later
update re-applies a stale gradient). Tests of the first pass's gradient (the A3C step) set
rollout_passes=1; test_each_pass_hands_over_its_rollout_s_gradient_under_the_weights_it_copied holds
every further pass to the reference.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from a3c import reference
from a3c.auxiliary import NEGATIVE, NONE, POSITIVE, REWARD_BATCH, RewardMemory
from a3c.config import PRESETS, Config, ConfigError, validate
from a3c.envs import env_spaces
from a3c.model import DTYPES, build_model
from a3c.shared import STOP, SharedTraining
from a3c.trainer import choices_line
from a3c.worker import (
    AdvantageScale,
    Rollout,
    UpdateStats,
    Worker,
    _mean_stats,
    a3c_loss,
    returns_and_advantages,
    sample_actions,
    seed_stream,
)


class RecordingOptimizer:
    """Wraps the shared optimizer and keeps a copy of every gradient it is handed."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.received: list[torch.Tensor] = []

    def step(self, grads, lr=None):
        self.received.append(torch.cat([g.reshape(-1) for g in grads]).clone())
        self.optimizer.step(grads, lr)


def record_acting_observations(worker: Worker) -> list[torch.Tensor]:
    """Spy on the worker's acting passes (those that record into the tape): a copy of the
    observations of each step, in order."""
    seen: list[torch.Tensor] = []
    tape = worker.rollout.tape
    act = tape.act

    def recording_act(obs, state):
        seen.append(obs.clone())
        return act(obs, state)

    tape.act = recording_act
    return seen


def recorded_worker(config: Config) -> tuple[Worker, RecordingOptimizer, list[torch.Tensor]]:
    """A worker on fresh shared weights (seeded: how far rounding goes depends on them) whose
    optimizer records every gradient it is handed, and the observations of its acting passes."""
    torch.manual_seed(0)
    obs_shape, n_actions = env_spaces(config)
    shared = SharedTraining.create(build_model(config, obs_shape, n_actions), config)
    worker = Worker(0, config, shared, seed_stream(config.seed, 0))
    recorder = RecordingOptimizer(shared.optimizer)
    worker.optimizer = recorder
    return worker, recorder, record_acting_observations(worker)


def reference_gradient(model, weights: torch.Tensor, rollout: Rollout, observations: list[torch.Tensor],
                       config: Config, reward_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
                       entropy_scale: float = 1.0, further_pass: bool = False) -> torch.Tensor:
    """a3c/reference.py's gradient of the rollout (and of reward prediction on `reward_batch`, if
    given), with a fresh copy of the model holding `weights` (those that acted, unless in a
    `further_pass`: then the policy's term is the clipped ratio to those that acted), its body in the
    number format the worker acts in, and the entropy bonus multiplied by `entropy_scale`."""
    fresh = copy.deepcopy(model)
    torch.nn.utils.vector_to_parameters(weights.clone(), fresh.parameters())
    state = None if rollout.initial_state is None else tuple(s.clone() for s in rollout.initial_state)
    body_dtype = DTYPES[config.network_precision]
    acting = (rollout.values, rollout.acting_log_probs) if further_pass else (None, None)
    loss = reference.a3c_loss(fresh, observations[:rollout.steps], state, rollout.actions, rollout.rewards,
                              rollout.next_values, rollout.terminated, rollout.ended, config.gamma,
                              config.gae_lambda, config.entropy_coef, config.value_loss_coef, body_dtype,
                              entropy_scale, *acting, config.further_pass_clip)
    if reward_batch is not None:
        # A rollout's one batch, in its first pass, weighted for all its passes.
        weight = config.rollout_passes * config.reward_prediction_coef
        assert config.reward_prediction_weight == weight
        loss = loss + weight * reference.reward_prediction_loss(fresh, *reward_batch, body_dtype)
    return reference.gradient(fresh, loss)


def entropy_scale_of(stats: UpdateStats, config: Config) -> float:
    """What the update multiplied its entropy bonus by: the reference's entropy_scale."""
    return AdvantageScale.entropy_factor(stats.advantage_scale) if config.entropy_relative else 1.0


def updates_and_their_references(worker: Worker, observations: list[torch.Tensor], config: Config,
                                 updates: int) -> tuple[list[torch.Tensor], int, list[float]]:
    """Play and apply `updates` updates; for each, the reference gradient of what it played (and of
    the reward-prediction batch it drew, if any); how many drew one; and each one's entropy scale."""
    drawn: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    memory = worker.reward_memory
    if memory is not None:
        def recording_sample(rng, size=REWARD_BATCH, sample=memory.sample):
            drawn.append(sample(rng, size))
            return drawn[-1]
        memory.sample = recording_sample
    references, entropy_scales = [], []
    for _ in range(updates):
        worker.sync_weights()
        weights = worker.local_params.clone()
        observations.clear()
        rollout = worker.collect()
        stats = worker.update(rollout)
        reward_batch = None if memory is None else drawn[-1]
        entropy_scales.append(entropy_scale_of(stats, config))
        references.append(reference_gradient(worker.model, weights, rollout, observations, config, reward_batch,
                                             entropy_scales[-1]))
    return references, sum(batch is not None for batch in drawn), entropy_scales


def relative_error(received: torch.Tensor, reference: torch.Tensor) -> float:
    return float((received - reference).norm() / reference.norm())


def assert_same_gradient(received: torch.Tensor, reference: torch.Tensor, precision: str,
                         model: torch.nn.Module) -> None:
    """The whole gradient equals the reference's up to rounding; in float32 each parameter's part
    of it too. Per parameter, not per element: an element may be a sum that cancels down to its
    rounding, which differs with the CPU's kernels; a wrong or missing part is wrong as a whole."""
    if precision != "float32":  # the same bfloat16 forward; the backward rounds differently batched than stepwise
        assert relative_error(received, reference) < 1e-2
        return
    assert relative_error(received, reference) < 2e-5
    start = 0
    for name, parameter in model.named_parameters():
        end = start + parameter.numel()
        part, expected = received[start:end], reference[start:end]
        assert relative_error(part, expected) < 1e-3 if expected.norm() > 0 else part.norm() == 0, name
        start = end


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("lstm", [False, True], ids=["feedforward", "lstm"])
@pytest.mark.parametrize("envs,env_id,frame_norm", [
    (1, "CartPole-v1", "scale"), (3, "CartPole-v1", "scale"), (1, "ALE/KungFuMaster-v5", "scale"),
    (3, "ALE/KungFuMaster-v5", "scale"), (3, "ALE/KungFuMaster-v5", "background")],
    ids=["mlp", "mlp-several-envs", "conv", "conv-several-envs", "conv-background"])
def test_each_update_hands_over_exactly_its_own_gradient(lstm, envs, env_id, frame_norm, precision):
    config = Config(env_id=env_id, workers=1, t_max=8, lstm=lstm, lr=1e-3, envs_per_worker=envs,
                    frame_norm=frame_norm, precision=precision, rollout_passes=1,
                    max_grad_norm=1e9)  # no clipping: the raw gradient is compared
    worker, recorder, observations = recorded_worker(config)
    references, _, _ = updates_and_their_references(worker, observations, config, 4)
    worker.close()
    assert len(recorder.received) == 4
    for received, expected in zip(recorder.received, references, strict=True):
        assert_same_gradient(received, expected, precision, worker.model)
    # The accumulating bug would hand over previous + this gradient, the stale-pointer bug the first
    # one: over the later updates the right answer must be far nearer than either. (Summed, as one
    # small previous gradient can lie within bfloat16's rounding of the next.)
    later = list(zip(recorder.received[1:], references[1:], references[:-1], strict=True))
    error = sum(float((received - expected).norm()) for received, expected, _ in later)
    assert sum(float((received - previous - expected).norm()) for received, expected, previous in later) > 3 * error
    assert sum(float((received - references[0]).norm()) for received, _, _ in later) > 3 * error


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_with_reward_prediction_an_update_hands_over_its_own_gradient_with_the_task_s(precision):
    config = Config(env_id="ALE/KungFuMaster-v5", workers=1, t_max=8, lr=1e-3, envs_per_worker=2,
                    precision=precision, reward_prediction_coef=0.5, rollout_passes=1, max_grad_norm=1e9)
    worker, recorder, observations = recorded_worker(config)
    assert worker.reward_memory is not None
    # One rewarding observation (the rollouts bring unrewarded ones): the task is on from the first update.
    worker.reward_memory.add(worker.obs_storage[0], 100.0)
    references, predicted, _ = updates_and_their_references(worker, observations, config, 3)
    worker.close()
    assert predicted == 3
    for received, expected in zip(recorder.received, references, strict=True):
        assert_same_gradient(received, expected, precision, worker.model)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_with_a_relative_entropy_bonus_an_update_hands_over_its_own_gradient(precision, monkeypatch):
    # A reference scale far above the rollouts' own, so that the bonus is surely shrunk in proportion
    # in every update (at the real reference the factor may well be 1 throughout).
    monkeypatch.setattr(AdvantageScale, "REFERENCE", 100.0)
    config = Config(env_id="ALE/KungFuMaster-v5", workers=1, t_max=8, lr=1e-3, envs_per_worker=2,
                    precision=precision, entropy_relative=True, rollout_passes=1, max_grad_norm=1e9)
    worker, recorder, observations = recorded_worker(config)
    references, _, entropy_scales = updates_and_their_references(worker, observations, config, 3)
    worker.close()
    assert len(entropy_scales) == 3 and max(abs(scale - 1.0) for scale in entropy_scales) > 0.1  # the scale shows
    for received, expected in zip(recorder.received, references, strict=True):
        assert_same_gradient(received, expected, precision, worker.model)


def acting_log_probs_at(model, weights: torch.Tensor, observations: list[torch.Tensor], actions: torch.Tensor,
                        dtype: torch.dtype) -> torch.Tensor:
    """log pi(a_t | s_t) of a feedforward model holding `weights`, step by step."""
    fresh = copy.deepcopy(model)
    torch.nn.utils.vector_to_parameters(weights.clone(), fresh.parameters())
    with torch.no_grad():
        logits = torch.stack([fresh.core(fresh.encode(obs, fresh.body_weights(dtype)), None)[0]
                              for obs in observations])
    return torch.log_softmax(logits, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("lstm,precision", [(False, "float32"), (False, "bfloat16"), (True, "float32")],
                         ids=["float32", "bfloat16", "lstm-float32"])
def test_each_pass_hands_over_its_rollout_s_gradient_under_the_weights_it_copied(lstm, precision):
    # A large rate, so that the policy moves past the clip within the passes and the clip is tested.
    config = Config(env_id="ALE/KungFuMaster-v5", workers=1, t_max=8, lr=1e-2, envs_per_worker=2, lstm=lstm,
                    precision=precision, rollout_passes=3, clip_ratio=0.1, reward_prediction_coef=0.5,
                    max_grad_norm=1e9)
    worker, recorder, observations = recorded_worker(config)
    assert worker.reward_memory is not None
    worker.reward_memory.add(worker.obs_storage[0], 100.0)  # reward prediction on from the first update
    drawn: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    def recording_sample(rng, size=REWARD_BATCH, sample=worker.reward_memory.sample):
        drawn.append(sample(rng, size))
        return drawn[-1]
    worker.reward_memory.sample = recording_sample
    weights_stepped: list[torch.Tensor] = []  # the shared weights before each step: one worker, so its copy's
    step = recorder.step
    def recording_step(grads, lr=None):
        weights_stepped.append(worker.shared.params.clone())
        step(grads, lr)
    recorder.step = recording_step
    body_dtype = DTYPES[config.network_precision]
    moved_past_clip = False
    other_worker = torch.Generator().manual_seed(1)
    for rollout_index in range(2 if not lstm else 1):
        worker.sync_weights()
        acting_weights = worker.local_params.clone()
        observations.clear()
        rollout = worker.collect()
        # Another worker's step lands between this one's copy and its update.
        recorder.optimizer.step([torch.randn(acting_weights.shape, generator=other_worker)])
        stats = worker.update(rollout)
        passes = weights_stepped[3 * rollout_index:]
        assert len(passes) == 3 and len(drawn) == rollout_index + 1  # one reward batch a rollout: the first pass's
        scale = entropy_scale_of(stats, config)
        received = recorder.received[3 * rollout_index:]
        # The first pass under the weights that acted, though the other worker's step moved the shared ones.
        assert not torch.equal(passes[0], acting_weights)
        assert_same_gradient(received[0], reference_gradient(worker.model, acting_weights, rollout, observations,
                                                             config, drawn[-1], scale), precision, worker.model)
        for weights, gradient in zip(passes[1:], received[1:], strict=True):
            assert relative_error(weights, passes[0]) > 0  # each pass copied the weights the last one stepped
            expected = reference_gradient(worker.model, weights, rollout, observations, config, None, scale,
                                          further_pass=True)
            assert_same_gradient(gradient, expected, precision, worker.model)
        if not lstm:
            steps = observations[:rollout.steps]
            acted = acting_log_probs_at(worker.model, acting_weights, steps, rollout.actions, body_dtype)
            assert torch.allclose(rollout.acting_log_probs, acted, atol=1e-4)
            outside = [(acting_log_probs_at(worker.model, weights, steps, rollout.actions, body_dtype) - acted
                        ).exp().sub(1).abs() > config.further_pass_clip for weights in passes[1:]]
            moved_past_clip |= bool(outside[1].any())
            # The update reports the further passes' mean share of clipped samples (16 a pass: one may
            # fall on the other side of the clip in the worker's own number format).
            expected_fraction = float(torch.stack(outside).float().mean())
            assert stats.clip_fraction == pytest.approx(expected_fraction, abs=1 / 16)
    worker.close()
    assert lstm or moved_past_clip


def one_rollout(config: Config) -> Rollout:
    """One rollout played by a worker on fresh shared weights."""
    obs_shape, n_actions = env_spaces(config)
    shared = SharedTraining.create(build_model(config, obs_shape, n_actions), config)
    worker = Worker(0, config, shared, seed_stream(config.seed, 0))
    worker.sync_weights()
    rollout = worker.collect()
    worker.close()
    return rollout


def test_a_further_pass_s_loss_is_the_clipped_surrogate_and_its_first_the_a3c_loss():
    config = Config(env_id="CartPole-v1", workers=1, t_max=8, envs_per_worker=3, precision="float32",
                    clip_ratio=0.2)
    rollout = one_rollout(config)
    logits, values, _ = rollout.replay()
    _, advantages = returns_and_advantages(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated,
                                           rollout.ended, config.gamma, config.gae_lambda)
    log_probs = torch.log_softmax(logits, -1).gather(-1, rollout.actions.unsqueeze(-1)).squeeze(-1)
    rollout.acting_log_probs = log_probs.detach()  # as the worker's first pass keeps them
    # Under the weights that acted the ratio is 1: both losses have the same gradient.
    first, first_stats = a3c_loss(rollout, logits, values, config)
    further, further_stats = a3c_loss(rollout, logits, values, config, further_pass=True)
    gradients = [torch.autograd.grad(loss, logits, retain_graph=True)[0] for loss in (first, further)]
    assert torch.allclose(gradients[0], gradients[1], atol=1e-6)
    assert np.isnan(first_stats.clip_fraction) and further_stats.clip_fraction == 0.0
    # A policy moved by +0.5 in log-probability: the ratio counts up to 1.2 where the advantage is positive.
    moved = replace(rollout, acting_log_probs=log_probs.detach() - 0.5)
    surrogate = torch.minimum(math.exp(0.5) * advantages, 1.2 * advantages).sum() / 3
    moved_loss, moved_stats = a3c_loss(moved, logits, values, config, further_pass=True)
    difference = float((moved_loss - first).detach())
    assert moved_stats.clip_fraction == 1.0  # every ratio is e^0.5, outside 1 +- 0.2
    # Half of the samples moved: half of them clipped.
    half = log_probs.detach().clone()
    half[: config.t_max // 2] -= 0.5
    assert a3c_loss(replace(rollout, acting_log_probs=half), logits, values, config,
                    further_pass=True)[1].clip_fraction == pytest.approx(0.5)
    expected = float((-surrogate + (log_probs * advantages).sum() / 3).detach())
    assert difference == pytest.approx(expected, rel=1e-4, abs=1e-6)
    with pytest.raises(ConfigError, match="clip_ratio"):
        validate(replace(config, clip_ratio=0.0))
    with pytest.raises(ConfigError, match="rollout_passes"):
        validate(replace(config, rollout_passes=0))


def test_the_advantage_scale_is_the_bias_corrected_moving_root_mean_square():
    scale = AdvantageScale()
    batches = [torch.full((5, 4), 2.0), torch.full((5, 4), -2.0), torch.full((5, 4), 4.0)]
    # Constant mean squares give that mean square's root from the first update on, as Adam's
    # corrected moments do.
    assert scale(batches[0]) == pytest.approx(2.0)
    assert scale(batches[1]) == pytest.approx(2.0)
    decay = AdvantageScale.DECAY
    weights = [decay ** 2, decay, 1.0]
    expected = math.sqrt(sum(w * float(b.pow(2).mean()) for w, b in zip(weights, batches, strict=True)) / sum(weights))
    assert scale(batches[2]) == pytest.approx(expected)
    # The bonus shrinks in proportion below the reference scale and is entropy_coef's whole above it.
    assert AdvantageScale.entropy_factor(AdvantageScale.REFERENCE / 4) == pytest.approx(0.25)
    assert AdvantageScale.entropy_factor(AdvantageScale.REFERENCE * 2) == 1.0
    # On by default; off in the presets and in runs saved before it existed.
    assert Config().entropy_relative is True
    assert all(preset["entropy_relative"] is False for preset in PRESETS.values())
    saved = {key: value for key, value in Config().to_dict().items() if key != "entropy_relative"}
    assert Config.from_saved(saved).entropy_relative is False
    stats = UpdateStats(0.0, 0.0, 0.0, 1.0, True, residual_variance=1.0, return_variance=3.0, active_units=1.0)
    assert np.isnan(_mean_stats([stats])["advantage_scale"])
    assert _mean_stats([stats, replace(stats, advantage_scale=3.0)])["advantage_scale"] == 3.0


def test_the_reward_memory_samples_half_rewarding_observations_by_their_sign():
    memory = RewardMemory((1, 2, 2), np.dtype(np.uint8), capacity=4)
    rng = np.random.default_rng(0)
    # Each observation's pixels hold the reward after it, + 100 (an unrewarded one: 100).
    def add(reward: int) -> None:
        memory.add(np.full((2, 2, 1), reward + 100, np.uint8), reward)  # channels-last, as the worker stores
    for _ in range(6):
        add(0)
    assert memory.sample(rng) is None  # no reward seen yet
    for reward in (1, 2, 3, 4, 5, -1):  # the first positive one is overwritten: 4 kept a sign
        add(reward)
    assert (memory.held(NEGATIVE), memory.held(NONE), memory.held(POSITIVE)) == (1, 4, 4)
    seen = []
    for _ in range(200):
        batch, classes = memory.sample(rng, size=8)
        assert batch.shape == (8, 1, 2, 2)
        assert classes[:4].tolist() == [NONE] * 4 and NONE not in classes[4:].tolist()
        values = batch.flatten(1)[:, 0].int() - 100
        assert (torch.sign(values) + 1).tolist() == classes.tolist()  # each observation with its own class
        seen += values.tolist()
    assert set(seen) == {-1, 0, 2, 3, 4, 5}  # the last four positive ones, held equally often
    assert seen.count(-1) == pytest.approx(seen.count(2), rel=0.5)


def test_reward_prediction_is_on_by_default_and_off_in_presets_and_runs_saved_without_it():
    config = Config(env_id="ALE/Pong-v5")
    assert config.reward_prediction_coef == 0.1
    assert all(preset["reward_prediction_coef"] == 0.0 for preset in PRESETS.values())
    obs_shape, n_actions = env_spaces(config)
    plain = build_model(replace(config, reward_prediction_coef=0.0), obs_shape, n_actions)
    assert plain.reward_prediction is None
    with pytest.raises(ValueError, match="without reward prediction"):
        plain.reward_logits(torch.zeros(1, plain.features))
    with_task = build_model(config, obs_shape, n_actions)
    # The head's weights come last: every other parameter keeps its place in the flat weights.
    assert [name for name, _ in with_task.named_parameters()][-2:] == ["reward_prediction.weight",
                                                                        "reward_prediction.bias"]
    assert [p.shape for p in plain.parameters()] == [p.shape for p in with_task.parameters()][:-2]
    saved = {key: value for key, value in config.to_dict().items() if key != "reward_prediction_coef"}
    assert Config.from_saved(saved).reward_prediction_coef == 0.0
    with pytest.raises(ConfigError, match="reward_prediction_coef"):
        validate(replace(config, reward_prediction_coef=-1.0))


def test_the_explained_variance_is_that_of_the_reported_updates_returns():
    config = Config(env_id="CartPole-v1", workers=1, t_max=8, envs_per_worker=3, precision="float32")
    rollout = one_rollout(config)
    returns, _ = returns_and_advantages(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated,
                                        rollout.ended, config.gamma, config.gae_lambda)
    _, terms = a3c_loss(rollout, *rollout.replay()[:2], config)
    assert terms.return_variance == pytest.approx(float(returns.var(unbiased=False)), rel=1e-5)
    assert terms.residual_variance == pytest.approx(float((returns - rollout.values).var(unbiased=False)), rel=1e-4)
    # Pooled over the report's updates, not a mean of each update's ratio.
    other = UpdateStats(0.0, 0.0, 0.0, 1.0, True, residual_variance=1.0, return_variance=3.0, active_units=1.0)
    pooled = 1 - (terms.residual_variance + 1.0) / (terms.return_variance + 3.0)
    assert _mean_stats([terms, other])["explained_variance"] == pytest.approx(pooled)
    assert np.isnan(_mean_stats([replace(other, residual_variance=0.0, return_variance=0.0)])["explained_variance"])


def test_update_changes_the_shared_weights_by_one_adam_step_of_that_gradient():
    config = Config(env_id="CartPole-v1", workers=1, t_max=5, lr=1e-2, rollout_passes=1, max_grad_norm=1e9)
    # Seeded: Adam's first step is about lr * sign(g), except where |g| nears its eps, and there the
    # gradient's rounding shows; some weights make such an element.
    torch.manual_seed(0)
    model = build_model(config, (4,), 2)
    shared = SharedTraining.create(model, config)
    worker = Worker(0, config, shared, seed_stream(config.seed, 0))
    observations = record_acting_observations(worker)
    worker.sync_weights()
    before = shared.params.clone()
    rollout = worker.collect()
    stats = worker.update(rollout)
    grad = reference_gradient(worker.model, before, rollout, observations, config,
                              entropy_scale=entropy_scale_of(stats, config))
    worker.close()
    expected = before.clone()
    adam = torch.optim.Adam([torch.nn.Parameter(expected)], lr=1e-2)
    adam.param_groups[0]["params"][0].grad = grad
    adam.step()
    torch.testing.assert_close(shared.params, adam.param_groups[0]["params"][0].detach(),
                               rtol=1e-4, atol=1e-6)


def test_sampled_actions_follow_the_softmax():
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0]]).repeat(50_000, 1)
    actions = sample_actions(logits, np.random.default_rng(0).gumbel(size=logits.shape))
    frequencies = np.bincount(actions, minlength=4) / len(actions)
    np.testing.assert_allclose(frequencies, torch.softmax(logits[0], 0).numpy(), atol=0.01)


def test_learning_rate_anneals_linearly_to_zero_over_the_budget():
    config = Config(env_id="CartPole-v1", workers=2, total_frames=1000, lr=1e-3, lr_anneal=True)
    shared = SharedTraining.create(build_model(config, (4,), 2), config)
    worker = Worker(0, config, shared, seed_stream(config.seed, 0))
    assert worker.learning_rate() == pytest.approx(1e-3)
    shared.frames[0], shared.frames[1] = 150, 100  # a quarter of the budget, from both workers
    assert worker.learning_rate() == pytest.approx(0.75e-3)
    shared.frames[1] = 2000
    assert worker.learning_rate() == 0.0
    worker.config = Config(env_id="CartPole-v1", workers=2, total_frames=1000, lr=1e-3)
    assert worker.learning_rate() == pytest.approx(1e-3)  # constant without the option
    worker.close()


def test_the_default_learning_rate_is_the_optimizer_s_for_any_number_of_workers():
    assert Config(workers=1).learning_rate == Config(workers=16).learning_rate == 3e-4
    assert Config(workers=16, lr=1e-4).learning_rate == 1e-4  # a given rate is kept
    assert Config(workers=16, optimizer="rmsprop").learning_rate == 7e-4
    config = Config(env_id="CartPole-v1", workers=8)
    shared = SharedTraining.create(build_model(config, (4,), 2), config)
    worker = Worker(0, config, shared, seed_stream(config.seed, 0))
    assert worker.learning_rate() == shared.optimizer.lr == 3e-4
    worker.close()
    rmsprop = SharedTraining.create(build_model(config, (4,), 2), replace(config, optimizer="rmsprop")).optimizer
    assert (rmsprop.kind, rmsprop.lr, rmsprop.alpha, rmsprop.eps) == ("rmsprop", 7e-4, 0.99, 1e-5)


def test_adam_s_default_momentum_falls_as_the_workers_make_each_update_late():
    # Momentum lags beta1 / (1 - beta1) updates, staleness about workers - 1: together 10, as at 2 workers.
    betas = [Config(workers=workers).adam_betas[0] for workers in (1, 2, 3, 8, 10, 11, 16)]
    assert betas == pytest.approx([0.9, 0.9, 8 / 9, 0.75, 0.5, 0.0, 0.0])
    assert Config(workers=16, adam_beta1=0.9).adam_betas == (0.9, 0.999)  # a given beta1 is kept
    config = Config(env_id="CartPole-v1", workers=16)
    assert SharedTraining.create(build_model(config, (4,), 2), config).optimizer.betas == (0.0, 0.999)
    assert Config.from_saved({**config.to_dict(), "adam_beta1": 0.9}).adam_betas[0] == 0.9  # an older run's


def test_the_start_line_says_what_was_chosen_for_the_workers_and_why():
    line = choices_line(Config(env_id="CartPole-v1", workers=16, precision="float32"))
    assert line == ("network precision: float32; adam learning rate 0.0003 (the default), beta1 0 (the default for "
                    "16 workers: each update lands 15 or more others late, a lag that momentum would add to); "
                    "2 steps on each rollout, the further ones clipped at 0.2 (the default for 16 workers: the "
                    "policy moves further between acting and a further step, as more updates land in between)")
    assert choices_line(Config(workers=2, lr=1e-3, rollout_passes=1)).endswith(
        "learning rate 0.001, beta1 0.9 (the default); one step on each rollout (A3C's)")
    assert choices_line(Config(workers=2)).endswith("the further ones clipped at 0.1 (the default)")
    assert choices_line(Config(workers=16, clip_ratio=0.3)).endswith("the further ones clipped at 0.3")


def test_the_further_passes_default_clip_widens_with_the_workers_between_the_counts_measured():
    # More workers, more updates between acting and a further pass: 0.1 up to 2 workers, 0.2 from 16.
    clips = [Config(workers=workers).further_pass_clip for workers in (1, 2, 9, 16, 32)]
    assert clips == pytest.approx([0.1, 0.1, 0.15, 0.2, 0.2])
    assert Config(workers=16, clip_ratio=0.1).further_pass_clip == 0.1  # a given clip is kept
    config = Config(workers=16)
    assert Config.from_saved(config.to_dict()).further_pass_clip == 0.2  # saved as the default, resolved again
    assert Config.from_saved({**config.to_dict(), "clip_ratio": 0.1}).further_pass_clip == 0.1  # an older run's


@pytest.mark.parametrize("env_id,frame_stack,precision", [
    ("ALE/KungFuMaster-v5", 4, "float32"), ("ALE/KungFuMaster-v5", 1, "float32"),
    ("ALE/KungFuMaster-v5", 4, "bfloat16"), ("CartPole-v1", 4, "float32")])
def test_the_tape_holds_exactly_the_observations_the_environments_returned(env_id, frame_stack, precision):
    # Image frames reach the tape through cv2 (channels-last) and are scaled on the way in (only
    # scaled here, to compare exactly; test_envs_and_model checks the standardised inputs).
    config = Config(env_id=env_id, workers=1, envs_per_worker=2, t_max=6,
                    frame_stack=frame_stack, precision=precision, frame_norm="scale")
    envs = config.envs_per_worker
    obs_shape, n_actions = env_spaces(config)
    shared = SharedTraining.create(build_model(config, obs_shape, n_actions), config)
    worker = Worker(0, config, shared, seed_stream(config.seed, 0))
    returned: list[list[np.ndarray]] = [[] for _ in worker.envs]
    for b, env in enumerate(worker.envs):
        def recording_step(action, step=env.step, seen=returned[b]):
            result = step(action)
            seen.append(result[0].copy())
            return result
        env.step = recording_step
    image = len(obs_shape) == 3
    dtype = torch.bfloat16 if precision == "bfloat16" and image else torch.float32

    def as_acting_input(obs: torch.Tensor) -> torch.Tensor:
        x = obs.to(dtype)
        return x.mul_(1.0 / 255.0) if image else x

    try:
        first = worker.obs.clone()
        rollout = worker.collect()
        assert rollout.steps == 6 and not rollout.ended.any()
        inputs = rollout.tape.inputs()
        assert inputs.dtype == dtype and inputs.shape == (6 * envs, *obs_shape)
        assert torch.equal(inputs[:envs], as_acting_input(first))
        for b in range(envs):
            for t in range(5):
                assert torch.equal(inputs[(t + 1) * envs + b], as_acting_input(torch.from_numpy(returned[b][t])))
            assert torch.equal(worker.obs[b], torch.from_numpy(returned[b][-1]))
        if image:  # the convolutions take them with no layout conversion
            assert all(layer.is_contiguous(memory_format=torch.channels_last)
                       for layer in rollout.tape.layers if layer.dim() == 4)
    finally:
        worker.close()


def test_a_worker_keeps_freed_memory_for_the_next_update():
    # In a fresh interpreter, as a worker process sets it up (mallopt changes the whole process).
    # An update frees and allocates again megabytes of activation gradients; glibc's defaults hand
    # them back to the system, and the next update faults them in again (about 1,600 page faults
    # per update of 8 KungFuMaster environments).
    script = """
import resource, sys, torch
from a3c.config import Config
from a3c.envs import env_spaces
from a3c.model import build_model
from a3c.shared import SharedTraining
from a3c.worker import Worker, keep_freed_memory, seed_stream
if not keep_freed_memory():
    sys.exit(3)
torch.set_num_threads(1)
config = Config(workers=1, envs_per_worker=8, t_max=20)
obs_shape, n_actions = env_spaces(config)
worker = Worker(0, config, SharedTraining.create(build_model(config, obs_shape, n_actions), config),
                seed_stream(1, 0))
rollout = worker.collect()
for _ in range(2):
    worker.update(rollout)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    worker.update(rollout)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
worker.close()
"""
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=300)
    if result.returncode == 3:
        pytest.skip("the C library has no mallopt (not glibc)")
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split()[-1]) < 400


def test_a_network_process_runs_one_thread_and_flushes_subnormal_floats():
    # In a fresh interpreter, as worker and evaluator processes set themselves up. Subnormal
    # gradients and moments made a trained network's update three times as slow.
    script = """
import torch
from a3c.model import setup_cpu_compute
tiny = torch.tensor([1e-39])
assert bool(tiny[0] != 0) and float((tiny * 0.5)[0]) != 0  # subnormals exist before
setup_cpu_compute()
print(torch.get_num_threads(), float((torch.tensor([1e-39]) * 0.5)[0]))
"""
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "0.0"]


@pytest.mark.parametrize("options,expected", [({"reward_scale": 0.25}, 0.25), ({"reward_transform": "clip", "reward_scale": 0.25}, 1.0)])
def test_the_rollout_holds_the_training_rewards(options, expected):
    # CartPole pays 1 per step: scaled by reward_scale, or clipped to its sign (scale ignored).
    config = Config(env_id="CartPole-v1", workers=1, envs_per_worker=2, t_max=6, **options)
    shared = SharedTraining.create(build_model(config, (4,), 2), config)
    worker = Worker(0, config, shared, seed_stream(config.seed, 0))
    try:
        rollout = worker.collect()
        assert torch.equal(rollout.rewards, torch.full((rollout.steps, 2), expected))
        if not rollout.ended.any():  # episode returns add up the game's own rewards
            assert worker.episode_returns == [float(rollout.steps)] * 2
    finally:
        worker.close()


def test_a_lost_life_ends_the_learners_episode_but_not_the_game():
    # Breakout with its five lives, an LSTM (whose state a lost life resets), played until a rollout
    # holds a lost life: it is terminal for the learner, the game goes on, and the update's gradient is
    # still exactly the reference's.
    config = Config(env_id="ALE/Breakout-v5", workers=1, envs_per_worker=1, t_max=50, lstm=True,
                    terminal_on_life_loss=True, rollout_passes=1, max_grad_norm=1e9, precision="float32")
    obs_shape, n_actions = env_spaces(config)
    shared = SharedTraining.create(build_model(config, obs_shape, n_actions), config)
    worker = Worker(0, config, shared, seed_stream(config.seed, 0))
    recorder = RecordingOptimizer(shared.optimizer)
    worker.optimizer = recorder
    observations = record_acting_observations(worker)
    try:
        for _ in range(40):
            worker.sync_weights()
            weights = worker.local_params.clone()
            observations.clear()
            lives_before = worker.lives[0]
            rollout = worker.collect()
            if not rollout.terminated.any() or worker.take_finished_episodes():
                worker.update(rollout)
                continue
            # Each terminal step lost a life, with no game over and no reset.
            assert lives_before - worker.lives[0] == int(rollout.terminated.sum()) > 0
            assert worker.episode_lengths[0] >= rollout.steps  # the game's episode was not restarted
            stats = worker.update(rollout)
            expected = reference_gradient(worker.model, weights, rollout, observations, config,
                                          entropy_scale=entropy_scale_of(stats, config))
            assert_same_gradient(recorder.received[-1], expected, "float32", worker.model)
            return
        pytest.fail("no life lost in 2,000 steps of Breakout")
    finally:
        worker.close()


def test_staleness_counts_the_updates_stepped_between_a_weight_copy_and_its_step():
    config = Config(env_id="CartPole-v1", workers=2, t_max=5, rollout_passes=1)
    shared = SharedTraining.create(build_model(config, (4,), 2), config)
    first, second = (Worker(i, config, shared, seed_stream(1, i)) for i in range(2))
    try:
        def update(worker: Worker) -> int:
            stats = worker.update(worker.collect())
            assert stats.applied
            return stats.staleness

        first.sync_weights()
        second.sync_weights()
        assert update(second) == 0  # nothing landed since its copy
        assert update(first) == 1   # the second's update landed after the first copied
        first.sync_weights()
        second.sync_weights()
        assert update(second) == 0
        second.sync_weights()
        assert update(second) == 0
        assert update(first) == 2   # both of the second's since the first's copy
        assert shared.total_updates() == 5 == float(shared.optimizer.steps[0])
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("lstm", [False, True], ids=["feedforward", "lstm"])
def test_a_rollout_cut_short_by_the_stop_signal_hands_over_its_own_gradient(lstm):
    # At shutdown each worker's last rollout ends at the step that saw the stop flag: its update
    # must be that shorter rollout's gradient, not one over stale rows of the buffers.
    config = Config(env_id="ALE/KungFuMaster-v5", workers=1, t_max=8, lstm=lstm, lr=1e-3, envs_per_worker=3,
                    precision="float32", rollout_passes=1, max_grad_norm=1e9)
    worker, recorder, observations = recorded_worker(config)
    shared = worker.shared
    worker.sync_weights()
    worker.update(worker.collect())  # a whole rollout first: the buffers hold its rows
    act = worker.rollout.tape.act

    def act_then_stop(obs, state):
        if len(observations) == 3:
            shared.set_flag(STOP)
        return act(obs, state)

    worker.rollout.tape.act = act_then_stop
    worker.sync_weights()
    weights = worker.local_params.clone()
    observations.clear()
    rollout = worker.collect()
    stats = worker.update(rollout)
    expected = reference_gradient(worker.model, weights, rollout, observations, config,
                                  entropy_scale=entropy_scale_of(stats, config))
    worker.close()
    assert rollout.steps == 4 and len(recorder.received) == 2
    assert_same_gradient(recorder.received[1], expected, "float32", worker.model)
