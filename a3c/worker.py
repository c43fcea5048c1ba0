"""A worker process: roll out t_max steps on its own environments with a local copy of the shared
model, compute the n-step / GAE actor-critic loss, and push exactly that update's gradient into the
shared optimizer, without locks (Hogwild)."""

from __future__ import annotations

import ctypes
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np
import torch
import torch.nn.functional as F

from a3c.auxiliary import REWARD_BATCH, RewardMemory, reward_prediction_loss
from a3c.config import Config
from a3c.envs import action_count, make_env, observation_shape
from a3c.messages import EpisodeFinished, LearnerStats, UpdateSkipped, parent_gone
from a3c.model import (
    DTYPES,
    LstmState,
    bind_flat_gradients,
    bind_flat_parameters,
    build_model,
    observation_buffer,
    setup_cpu_compute,
    write_observation,
)
from a3c.replay import ReplayTape
from a3c.shared import SharedTraining

STATS_INTERVAL_S = 2.0
# glibc's mallopt parameters: keep freed blocks up to this size in the heap, and the heap's top.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit systems


def keep_freed_memory() -> bool:
    """Make glibc keep the memory an update frees for the next one, rather than hand it back to the
    system and fault it in again page by page: an update's multi-megabyte activation gradients
    took thousands of page faults each time. False where the C library has
    no mallopt (not glibc), which changes nothing else."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


def returns_and_advantages(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
                           terminated: torch.Tensor, ended: torch.Tensor, gamma: float,
                           gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """n-step returns (the value targets) and GAE(lambda) advantages for a (T, B) rollout.

    values[t] = V(s_t). next_values[t] = V(s_{t+1}) as seen after step t: the next state's value,
    the final observation's value for a truncated episode (a time limit bootstraps), or anything
    for a terminal step (termination does not bootstrap: it is masked here). ended[t] is set where
    an episode finished by termination or truncation at step t; neither recursion crosses it.
    """
    # numpy: the T-step recursion on tiny arrays costs a tenth of the same torch ops' dispatch.
    reward, value, next_value = rewards.numpy(), values.numpy(), next_values.numpy()
    not_terminal = 1.0 - terminated.numpy().astype(np.float32)
    continues = 1.0 - ended.numpy().astype(np.float32)
    returns = np.empty_like(reward)
    advantages = np.empty_like(reward)
    running_return = next_value[-1]
    running_advantage = np.zeros_like(reward[0])
    for t in reversed(range(reward.shape[0])):
        # Where the episode ended at t, restart the return from that step's own bootstrap value.
        bootstrap = continues[t] * running_return + (1.0 - continues[t]) * next_value[t]
        running_return = reward[t] + gamma * not_terminal[t] * bootstrap
        returns[t] = running_return
        delta = reward[t] + gamma * not_terminal[t] * next_value[t] - value[t]
        running_advantage = delta + gamma * gae_lambda * continues[t] * running_advantage
        advantages[t] = running_advantage
    return torch.from_numpy(returns), torch.from_numpy(advantages)


def sample_actions(logits: torch.Tensor, gumbel_noise: np.ndarray) -> np.ndarray:
    """One action per row of `logits`, drawn from softmax(logits) with the Gumbel-max trick: exact,
    given standard Gumbel noise of the logits' shape (a worker draws a whole rollout's at once), and
    a few microseconds against about 30 for torch.multinomial on one row."""
    return np.argmax(logits.numpy() + gumbel_noise, axis=1)


@dataclass
class Rollout:
    """t_max steps of B environments: (T, B) tensors, and the tape of the acting passes from which
    the update differentiates (ReplayTape)."""

    tape: ReplayTape
    actions: torch.Tensor
    rewards: torch.Tensor
    values: torch.Tensor
    next_values: torch.Tensor
    terminated: torch.Tensor
    ended: torch.Tensor
    initial_state: LstmState | None = None
    steps: int = 0
    # log pi(a_t | s_t) of the policy that acted, the further passes' ratio's denominator: taken from
    # the first pass's replay (the acting passes' own logits) where rollout_passes asks for it.
    acting_log_probs: torch.Tensor | None = None

    @classmethod
    def allocate(cls, tape: ReplayTape, steps: int, batch: int) -> Rollout:
        """Buffers for `steps` steps of `batch` environments, around the tape of their acting passes."""
        def zeros(kind: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros((steps, batch), dtype=kind)

        return cls(tape, zeros(torch.int64), zeros(), zeros(), zeros(), zeros(torch.bool), zeros(torch.bool))

    def replay(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The acting passes' logits (T, B, A) and values (T, B), and the features of the batch the
        tape recorded after them, with the update's autograd graph (ReplayTape.replay)."""
        episode_starts = torch.zeros_like(self.ended)
        episode_starts[1:] = self.ended[:-1]
        return self.tape.replay(self.initial_state, episode_starts)

    def view(self) -> Rollout:
        """The first `steps` steps (a rollout cut short by the stop signal is shorter)."""
        n = self.steps
        return Rollout(self.tape, self.actions[:n], self.rewards[:n], self.values[:n], self.next_values[:n],
                       self.terminated[:n], self.ended[:n], self.initial_state, n)


@dataclass
class UpdateStats:
    policy_loss: float
    value_loss: float
    entropy: float
    grad_norm: float
    applied: bool
    residual_variance: float  # Var[returns - values]: what the value head missed
    return_variance: float  # Var[returns]
    active_units: float  # ReplayTape.active_units
    staleness: int = 0  # updates of other workers stepped in between this one's weight copy and its step
    reward_prediction_loss: float = math.nan  # nan where the update predicted no rewards (a3c/auxiliary.py)
    reward_prediction_accuracy: float = math.nan
    advantage_scale: float = math.nan  # AdvantageScale's; nan: not kept
    # The share of a further pass's samples whose ratio to the acting policy lies outside the clip
    # (Stable-Baselines3's clip_fraction); nan where no further pass ran.
    clip_fraction: float = math.nan


class AdvantageScale:
    """The root mean square of a worker's recent advantages: an exponential moving average of their
    mean square over its updates, bias-corrected as Adam's moments are; steadier than one update's
    few samples. The entropy bonus shrinks with it where a game's advantages are smaller than
    REFERENCE, so that it does not hold such a game's policy near uniform."""

    DECAY = 0.999  # about the last thousand updates
    # The scale at which the bonus is entropy_coef's whole: about that of games whose bonus suited
    # them at 0.01 (docs/experiments.md, "Entropy bonus").
    REFERENCE = 0.4

    def __init__(self) -> None:
        self.mean_square, self.updates = 0.0, 0

    def __call__(self, advantages: torch.Tensor) -> float:
        """Take in one update's advantages; the scale so far, theirs included."""
        self.updates += 1
        self.mean_square = self.DECAY * self.mean_square + (1 - self.DECAY) * float(advantages.pow(2).mean())
        return self.scale()

    def scale(self) -> float:
        """The scale so far (a further pass over a rollout takes its advantages in no second time)."""
        return math.sqrt(self.mean_square / (1 - self.DECAY ** self.updates)) if self.updates else math.nan

    @classmethod
    def entropy_factor(cls, scale: float) -> float:
        """What the entropy bonus is multiplied by at this scale: in proportion below REFERENCE, 1 above."""
        return min(1.0, scale / cls.REFERENCE)


@dataclass
class EpisodeRecord:
    worker: int
    episode_return: float
    length: int
    end_time: float


def a3c_loss(rollout: Rollout, logits: torch.Tensor, values: torch.Tensor, config: Config,
             advantage_scale: AdvantageScale | None = None, further_pass: bool = False
             ) -> tuple[torch.Tensor, UpdateStats]:
    """loss = policy loss - beta * entropy + c * value loss, summed over time, averaged over envs,
    and its terms for the logs (grad_norm and applied to be filled in after the backward pass). With
    `advantage_scale` (entropy_relative) the entropy bonus is multiplied by its entropy_factor. In a
    `further_pass` over the rollout (rollout_passes) the policy's term is PPO's clipped surrogate,
    its ratio to the policy that acted, and the advantage scale takes in no advantages again.

    The logits and values are the acting passes' own, replayed from the rollout's tape
    (Rollout.replay): the update's backward pass runs batched over the whole rollout, in the run's
    number format, without a second forward pass of the body. a3c/reference.py computes the same
    loss in plain autograd.
    """
    returns, advantages = returns_and_advantages(
        rollout.rewards, rollout.values, rollout.next_values, rollout.terminated, rollout.ended,
        config.gamma, config.gae_lambda)
    log_probs = F.log_softmax(logits, dim=-1)
    action_log_probs = log_probs.gather(-1, rollout.actions.unsqueeze(-1)).squeeze(-1)
    batch = rollout.actions.shape[1]
    entropy_coef, scale = config.entropy_coef, math.nan
    if advantage_scale is not None:
        scale = advantage_scale.scale() if further_pass else advantage_scale(advantages)
        entropy_coef *= AdvantageScale.entropy_factor(scale)
    if further_pass:
        assert rollout.acting_log_probs is not None, "the first pass keeps the acting policy's log-probabilities"
        ratio = (action_log_probs - rollout.acting_log_probs).exp()
        clip = config.further_pass_clip
        clipped = ratio.clamp(1 - clip, 1 + clip)
        policy_loss = -torch.minimum(ratio * advantages, clipped * advantages).sum() / batch
    else:
        policy_loss = -(action_log_probs * advantages).sum() / batch
    residual = returns - values
    value_loss = 0.5 * residual.pow(2).sum() / batch
    entropy = -(log_probs.exp() * log_probs).sum() / batch
    loss = policy_loss - entropy_coef * entropy + config.value_loss_coef * value_loss
    with torch.no_grad():
        terms = UpdateStats(float(policy_loss), float(value_loss), float(entropy), math.nan, False,
                            float(residual.var(unbiased=False)), float(returns.var(unbiased=False)),
                            rollout.tape.active_units(), advantage_scale=scale)
        if further_pass:
            terms.clip_fraction = float(((ratio - 1).abs() > clip).float().mean())
    return loss, terms


def seed_stream(seed: int, worker_id: int, incarnation: int = 0) -> np.random.SeedSequence:
    """The seed sequence of worker `worker_id`; a replacement worker gets the next incarnation."""
    return np.random.SeedSequence([seed, worker_id, incarnation])


class ReturnNormalizer:
    """Divides rewards by a running standard deviation of their discounted return, as
    Stable-Baselines3's VecNormalize(norm_reward=True) does: a game's points keep their relative
    sizes (clipping drops them), and every game's returns come to about unit scale (one fixed
    factor cannot do both for Pong's single points and KungFuMaster's hundreds)."""

    CLIP = 10.0  # bounds the first rollouts' rewards, while the estimate rests on few returns
    EPS = 1e-8

    def __init__(self, envs: int, gamma: float) -> None:
        self.gamma = gamma
        self.returns = np.zeros(envs)  # each environment's discounted return so far
        self.count, self.mean, self.var = 0, 0.0, 0.0

    def __call__(self, rewards: np.ndarray, ended: np.ndarray) -> None:
        """Normalise a rollout's rewards (steps x environments) in place."""
        seen = np.empty(rewards.shape)
        for t in range(len(rewards)):
            self.returns = self.returns * self.gamma + rewards[t]
            seen[t] = self.returns
            self.returns[ended[t]] = 0.0
        self._add(seen.ravel())
        rewards /= self.divisor
        np.clip(rewards, -self.CLIP, self.CLIP, out=rewards)

    @property
    def divisor(self) -> np.float64:
        """What the rewards are divided by: the returns' standard deviation so far (a float64, so
        that float32 rewards are divided in double precision)."""
        return np.float64(np.sqrt(self.var + self.EPS))

    def _add(self, values: np.ndarray) -> None:
        # Chan et al.'s merge of two samples' means and variances.
        n, mean, var = values.size, float(values.mean()), float(values.var())
        total = self.count + n
        delta = mean - self.mean
        self.var = (self.var * self.count + var * n + delta * delta * self.count * n / total) / total
        self.mean += delta * n / total
        self.count = total


# Rewrites a rollout's rewards (steps x environments) in place, given where episodes ended.
RewardTransform = Callable[[np.ndarray, np.ndarray], None]


def training_reward_transform(config: Config, envs: int) -> RewardTransform:
    """What the learner sees of the game's rewards: their sign, a running normalisation, or a
    fixed multiple (config.training_reward_transform, resolved once per worker)."""
    kind = config.training_reward_transform
    if kind == "normalize":
        return ReturnNormalizer(envs, config.gamma)
    if kind == "clip":
        def clip(rewards: np.ndarray, ended: np.ndarray) -> None:
            np.sign(rewards, out=rewards)
        return clip
    factor = config.training_reward_scale

    def scale(rewards: np.ndarray, ended: np.ndarray) -> None:
        rewards *= factor
    return scale


class Worker:
    """One A3C learner: local model and environments; the shared state is its only link to others.

    Its loop (run_worker) is the algorithm: sync_weights, collect (act and step t_max steps),
    update (returns and advantages, loss, backward, clip, one step of the shared optimizer)."""

    def __init__(self, worker_id: int, config: Config, shared: SharedTraining,
                 seeds: np.random.SeedSequence) -> None:
        self.worker_id = worker_id
        self.config = config
        self.shared = shared
        self.optimizer = shared.optimizer
        env_seed, sampling_seed = seeds.generate_state(2)
        self.rng = np.random.default_rng(int(sampling_seed))
        self.envs = [make_env(config, seed=int(env_seed) + i) for i in range(config.envs_per_worker)]
        obs_shape = observation_shape(self.envs[0])
        self.n_actions = action_count(self.envs[0])
        self.model = build_model(config, obs_shape, self.n_actions)
        self.local_params = bind_flat_parameters(self.model)
        self.grad = bind_flat_gradients(self.model)
        resets = [env.reset(seed=int(env_seed) + i) for i, env in enumerate(self.envs)]
        first = [obs for obs, _ in resets]
        # Lives, tracked only where a lost life ends the learner's episode (Atari games report them).
        self.track_lives = config.terminal_on_life_loss
        self.lives = [info.get("lives", 0) for _, info in resets]
        # The current observations, written through their numpy storage.
        self.obs, self.obs_storage = observation_buffer(len(self.envs), obs_shape, first[0].dtype)
        for slot, obs in zip(self.obs_storage, first, strict=True):
            write_observation(slot, obs)
        self.state = self.model.initial_state(len(self.envs))
        predicts_rewards = config.reward_prediction_coef > 0
        tape = ReplayTape(self.model, config.t_max, len(self.envs), DTYPES[config.network_precision],
                          self.local_params, extra_rows=REWARD_BATCH if predicts_rewards else 0)
        self.rollout = Rollout.allocate(tape, config.t_max, len(self.envs))
        self.episode_returns = [0.0] * len(self.envs)
        self.episode_lengths = [0] * len(self.envs)
        self.finished: list[EpisodeRecord] = []
        self.to_training_rewards = training_reward_transform(config, len(self.envs))
        self.updates_at_copy = 0  # the shared update count at the last weight copy
        self.reward_memory = RewardMemory(obs_shape, first[0].dtype) if predicts_rewards else None
        self.advantage_scale = AdvantageScale() if config.entropy_relative else None

    def sync_weights(self) -> None:
        """Load the shared weights into the local model."""
        self.updates_at_copy = self.shared.total_updates()
        self.local_params.copy_(self.shared.params)

    def collect(self) -> Rollout:
        """Play up to t_max steps with the local weights, sampling from the policy; fewer when the
        stop flag is raised, so that shutdown never waits for a whole rollout."""
        rollout = self.rollout
        rollout.initial_state = None if self.state is None else (self.state[0].clone(), self.state[1].clone())
        rollout.tape.start()
        self._play(rollout)
        self.to_training_rewards(rollout.rewards[:rollout.steps].numpy(), rollout.ended[:rollout.steps].numpy())
        return rollout.view()

    def _play(self, rollout: Rollout) -> None:
        tape, obs_storage, envs, reward_memory = rollout.tape, self.obs_storage, self.envs, self.reward_memory
        # Per-step writes go through numpy views of the tensors: far cheaper than tensor indexing.
        actions_np, values_np = rollout.actions.numpy(), rollout.values.numpy()
        rewards_np, terminated_np, ended_np = rollout.rewards.numpy(), rollout.terminated.numpy(), rollout.ended.numpy()
        gumbel_noise = self.rng.gumbel(size=(self.config.t_max, len(envs), self.n_actions))
        truncated_values: list[tuple[int, int, float]] = []  # (step, env, V(final observation))
        steps = 0
        for t in range(self.config.t_max):
            logits, value, self.state = tape.act(self.obs, self.state)
            actions = sample_actions(logits, gumbel_noise[t])
            actions_np[t], values_np[t] = actions, value.numpy()
            rewards, terminals, ends = [], [], []  # written to the rollout once per step
            for b, (env, action) in enumerate(zip(envs, actions.tolist(), strict=True)):
                obs, reward, terminated, truncated, info = env.step(action)
                reward = float(reward)
                life_lost = False
                if self.track_lives:
                    lives, self.lives[b] = self.lives[b], info.get("lives", 0)
                    life_lost = self.lives[b] < lives and not terminated
                    if life_lost:  # the learner's episode ends here; the game goes on
                        self._reset_state(b)
                rewards.append(reward)
                terminals.append(terminated or life_lost)
                ends.append(terminated or truncated or life_lost)
                self.episode_returns[b] += reward
                if reward_memory is not None:  # the observation acted on, with the game's own reward
                    reward_memory.add(obs_storage[b], reward)
                self.episode_lengths[b] += 1
                if terminated or truncated:
                    if not terminated:  # a time limit is not the end of the task: bootstrap
                        truncated_values.append((t, b, self._value(obs, b)))
                    self._end_episode(b)
                    obs, info = env.reset()
                    self.lives[b] = info.get("lives", 0)
                write_observation(obs_storage[b], obs)
            rewards_np[t], terminated_np[t], ended_np[t] = rewards, terminals, ends
            steps = t + 1
            if self.shared.stop_requested():
                break
        rollout.steps = steps
        # V(s_{t+1}) of every step, in one place: the next acting pass's value, V(s_T) after the last
        # step, the final observation's value where a time limit cut an episode. (After game over
        # the next value is the new episode's: returns_and_advantages masks it.)
        rollout.next_values[:steps - 1] = rollout.values[1:steps]
        rollout.next_values[steps - 1] = tape.peek(self.obs, self.state)[1]
        for t, b, final_value in truncated_values:
            rollout.next_values[t, b] = final_value

    def _end_episode(self, env_index: int) -> None:
        self.finished.append(EpisodeRecord(self.worker_id, self.episode_returns[env_index],
                                           self.episode_lengths[env_index], time.time()))
        self.episode_returns[env_index], self.episode_lengths[env_index] = 0.0, 0
        self._reset_state(env_index)

    def _reset_state(self, env_index: int) -> None:
        if self.state is not None:  # a new episode starts from a zero LSTM state
            self.state[0][env_index] = 0.0
            self.state[1][env_index] = 0.0

    def _value(self, obs: np.ndarray, env_index: int) -> float:
        state = None
        if self.state is not None:
            state = (self.state[0][env_index:env_index + 1], self.state[1][env_index:env_index + 1])
        return float(self.rollout.tape.peek(torch.from_numpy(obs).unsqueeze(0), state)[1][0])

    def learning_rate(self) -> float:
        if not self.config.lr_anneal:
            return self.config.learning_rate
        done = self.shared.total_frames() / self.config.total_frames
        return self.config.learning_rate * max(0.0, 1.0 - done)

    def update(self, rollout: Rollout) -> UpdateStats:
        """Compute this rollout's gradient (with reward prediction's, if on) and hand exactly it to
        the shared optimizer; then, for each further pass (rollout_passes), copy the shared weights
        again and hand over the rollout's gradient under them. The first pass's statistics, with the
        further passes' mean clip fraction."""
        stats = self.step(rollout)
        clip_fractions = []
        for _ in range(self.config.rollout_passes - 1):
            if self.shared.stop_requested():
                break
            self.sync_weights()
            rollout.tape.reencode()
            clip_fractions.append(self.step(rollout, further_pass=True).clip_fraction)
        if clip_fractions:
            stats.clip_fraction = float(np.mean(clip_fractions))
        return stats

    def step(self, rollout: Rollout, further_pass: bool = False) -> UpdateStats:
        """One step of the shared optimizer along the rollout's gradient under the local weights.
        Reward prediction's batch goes through the tape after the rollout's steps, so one batched
        backward differentiates both: one batch a rollout, in its first pass, at
        Config.reward_prediction_weight."""
        batch = None if self.reward_memory is None or further_pass else self.reward_memory.sample(self.rng)
        if batch is not None:
            rollout.tape.record(batch[0])
        logits, values, batch_features = rollout.replay()
        if not further_pass and self.config.rollout_passes > 1:  # the replay's logits are the acting passes'
            rollout.acting_log_probs = F.log_softmax(logits.detach(), dim=-1).gather(
                -1, rollout.actions.unsqueeze(-1)).squeeze(-1)
        loss, stats = a3c_loss(rollout, logits, values, self.config, self.advantage_scale, further_pass)
        if batch is not None:
            prediction_loss, stats.reward_prediction_accuracy = reward_prediction_loss(
                self.model, batch_features, batch[1])
            stats.reward_prediction_loss = float(prediction_loss.detach())
            loss = loss + self.config.reward_prediction_weight * prediction_loss
        self.grad.zero_()  # never None: backward accumulates into this flat buffer in place
        loss.backward()
        stats.grad_norm = grad_norm = float(self.grad.norm())
        stats.applied = bool(torch.isfinite(loss)) and np.isfinite(grad_norm)
        if stats.applied:
            if grad_norm > self.config.max_grad_norm:
                self.grad.mul_(self.config.max_grad_norm / (grad_norm + 1e-6))
            stats.staleness = self.shared.total_updates() - self.updates_at_copy
            self.optimizer.step([self.grad], lr=self.learning_rate())  # lock-free (Hogwild)
            self.shared.updates.numpy()[self.worker_id] += 1
        return stats

    def count_frames(self, steps: int) -> None:
        """Add a rollout's frames to this worker's own counter slot (no lock: no other writer)."""
        self.shared.frames[self.worker_id] += steps * len(self.envs) * self.config.frames_per_step

    def take_finished_episodes(self) -> list[EpisodeRecord]:
        """The episodes finished since the last call, for the parent to log and count."""
        finished, self.finished = self.finished, []
        return finished

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _mean_stats(stats: list[UpdateStats]) -> dict[str, float]:
    def mean(name: str) -> float:
        return float(np.mean([getattr(s, name) for s in stats]))

    def mean_of_finite(name: str) -> float:  # nan where none is (reward prediction off, or not yet on)
        values = [value for s in stats if math.isfinite(value := getattr(s, name))]
        return float(np.mean(values)) if values else math.nan

    # Over the whole report, as Stable-Baselines3 over its rollout buffer: one update's 20 returns
    # may barely vary.
    return_variance = mean("return_variance")
    explained = 1.0 - mean("residual_variance") / return_variance if return_variance > 0 else math.nan
    return {**{name: mean(name) for name in ("policy_loss", "value_loss", "entropy", "grad_norm", "active_units",
                                              "staleness")},
            **{name: mean_of_finite(name) for name in ("reward_prediction_loss", "reward_prediction_accuracy",
                                                        "advantage_scale", "clip_fraction")},
            "explained_variance": explained, "staleness_max": float(max(s.staleness for s in stats))}


def run_worker(worker_id: int, config: Config, shared: SharedTraining, seeds: np.random.SeedSequence,
               conn: Connection, parent_pid: int) -> None:
    """Process entry: train until the stop signal, the frame budget, or the parent's death."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    setup_cpu_compute()
    keep_freed_memory()
    worker = Worker(worker_id, config, shared, seeds)
    recent: list[UpdateStats] = []
    last_report = time.monotonic()

    def report(stats: list[UpdateStats]) -> None:
        conn.send(LearnerStats(worker_id, **_mean_stats(stats), learning_rate=worker.learning_rate()))

    try:
        while not shared.stop_requested() and os.getppid() == parent_pid:
            worker.sync_weights()
            rollout = worker.collect()
            stats = worker.update(rollout)
            worker.count_frames(rollout.steps)
            shared.beat(worker_id)
            for episode in worker.take_finished_episodes():
                conn.send(EpisodeFinished(episode.worker, shared.total_frames(), episode.episode_return,
                                          episode.length, episode.end_time))
            if not stats.applied:
                conn.send(UpdateSkipped(worker_id, stats.grad_norm))
            else:
                recent.append(stats)
            if recent and time.monotonic() - last_report > STATS_INTERVAL_S:
                report(recent)
                recent, last_report = [], time.monotonic()
            if shared.budget_reached(config):
                break
        if recent:  # what is left, so that even a short run reports its losses
            report(recent)
    except OSError as error:
        if not parent_gone(error, parent_pid):
            raise
    finally:
        worker.close()
        conn.close()
