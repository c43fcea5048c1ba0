"""The Python API, for notebooks and scripts: train from a Config, load a checkpoint into a policy,
act with it and evaluate it. The command line (cli.py) is a thin layer over these functions.

    from a3c import Config, Policy, train

    run = train(Config(env_id="CartPole-v1", workers=2, total_frames=100_000, lr=1e-3))
    policy = Policy.load(run.run_dir)                # the run's best checkpoint
    actions, _ = policy.predict(observations)        # sampled; greedy=True for the likeliest
    print(policy.evaluate(episodes=10))              # mean ± std over 10 episodes
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch

from a3c.checkpoint import (
    BEST,
    CHECKPOINT_DIR,
    LATEST,
    check_fits,
    load_checkpoint,
    lock_run_dir,
    resolve_checkpoint,
    restore_model,
)
from a3c.config import Config, ConfigError, RayOptions, validate
from a3c.envs import env_spaces, make_env
from a3c.evaluator import Score, evaluate_policy, evaluation_envs, resolve_device
from a3c.model import ActorCritic, LstmState, build_model
from a3c.trainer import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    RemoteFactory,
    Trainer,
)

if TYPE_CHECKING:
    from a3c.ray_cluster import RayCluster

KEEP_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

# Settings a resumed run cannot change: they fix the environment's spaces or the model's shape.
FIXED_ON_RESUME = ("env_id", "body", "lstm", "mlp_hidden", "screen_size", "frame_stack", "frame_colour", "optimizer")


@dataclass(frozen=True)
class RunResult:
    """How a run ended: its directory, the exit status `a3c train` gives it (0: budget or time
    limit reached; 1: failed, its last good checkpoint kept; 130, 143: stopped by SIGINT, SIGTERM
    after a final checkpoint) and the reason in words."""

    run_dir: Path
    exit_code: int
    reason: str

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK

    @property
    def stopped(self) -> bool:
        """Stopped by SIGINT or SIGTERM: by the user, or a job scheduler."""
        return self.exit_code in (EXIT_INTERRUPTED, EXIT_TERMINATED)


def train(config: Config, ray: RayOptions | None = None) -> RunResult:
    """Train a new run until its frame budget, its time limit, a signal or a failure; on a Ray
    cluster when `ray` says where (a3c[ray])."""
    validate(config)
    cluster, remote = _connect(ray, config)
    try:
        return _run(Trainer(config, remote=remote))
    finally:
        if cluster is not None:
            cluster.close()


def resume(target: str | Path, overrides: dict[str, Any] | None = None, ray: RayOptions | None = None) -> RunResult:
    """Continue the run at `target` (a run directory or a checkpoint) from its latest checkpoint,
    with `overrides` of the settings that may change; on a Ray cluster when `ray` says where. A
    local run's checkpoint resumes on Ray and the other way round."""
    checkpoint_path = resolve_checkpoint(target, LATEST)
    run_dir = checkpoint_path.parent.parent
    # Locked before the checkpoint is read: a trainer still running there may write a newer one.
    run_lock = lock_run_dir(run_dir)
    cluster = None
    try:
        payload = load_checkpoint(checkpoint_path)
        config = resume_config(payload["config"], overrides or {})
        validate(config)
        check_fits(payload, *env_spaces(config), checkpoint_path)
        cluster, remote = _connect(ray, config)
        print(f"resuming {run_dir} from {checkpoint_path} at {payload['frames']:,} frames", flush=True)
        trainer = Trainer(config, payload, run_dir, run_lock=run_lock, remote=remote)
    except BaseException:
        run_lock.close()
        if cluster is not None:
            cluster.close()
        raise
    try:
        return _run(trainer)
    finally:
        if cluster is not None:
            cluster.close()


def train_to_budget(config: Config, given: dict[str, Any] | None = None) -> RunResult | None:
    """Train the run that `config` names (runs_dir/run_name) to its total_frames: a new run; or,
    where that directory has a checkpoint, the run resumed with the settings in `given` (those the
    caller chose) over its own; or nothing (None) where it has its frames already. What lets a
    benchmark of several runs be stopped and started again."""
    if config.run_name is None:
        raise ConfigError("train_to_budget needs a run_name: the run it trains or resumes")
    run_dir = Path(config.runs_dir) / config.run_name
    latest = run_dir / CHECKPOINT_DIR / LATEST
    if not latest.exists():
        if run_dir.exists():
            raise ConfigError(f"{run_dir} has no checkpoint to go on from (it was killed before its first): "
                              "remove it to train the run again")
        return train(config)
    if load_checkpoint(latest)["frames"] >= config.total_frames:
        return None
    return resume(run_dir, {**(given or {}), "total_frames": config.total_frames})


def _connect(options: RayOptions | None, config: Config) -> tuple[RayCluster | None, RemoteFactory | None]:
    """Join (or start) the Ray cluster before anything is written, so that bad input ends the
    command with one line; and what the trainer calls to start the workers there."""
    if options is None:
        return None, None
    options.check()
    if options.on_loopback:
        # Read by Ray when it is imported: without it Ray puts a local instance, and a loopback
        # address, on the machine's network address, reachable from outside.
        os.environ[KEEP_LOOPBACK_ENV] = "0"
    try:
        from a3c import ray_cluster
    except ModuleNotFoundError as error:
        if error.name is None or not error.name.startswith("ray"):
            raise
        raise ConfigError("training on Ray needs the ray package: pip install 'a3c[ray]'") from None
    cluster = ray_cluster.RayCluster(options, config.workers)
    return cluster, partial(ray_cluster.RayWorkers, cluster, options)


def resume_config(saved: dict[str, Any], overrides: dict[str, Any]) -> Config:
    before = Config.from_saved(saved).to_dict()
    changed = [k for k in FIXED_ON_RESUME if k in overrides and overrides[k] != before[k]]
    if changed:
        detail = ", ".join(f"{k} {before[k]!r} -> {overrides[k]!r}" for k in changed)
        raise ConfigError(f"cannot change on resume: {detail}")
    return Config.from_saved({**saved, **overrides})


def _run(trainer: Trainer) -> RunResult:
    code = trainer.run()
    return RunResult(trainer.run_dir, code, trainer.outcome[1] if trainer.outcome else "")


class Policy:
    """A trained actor-critic with its configuration, on CPU or CUDA, for acting and evaluation."""

    def __init__(self, model: ActorCritic, config: Config, device: torch.device, checkpoint: dict[str, Any],
                 path: Path) -> None:
        self.model, self.config, self.device = model.to(device).eval(), config, device
        self.checkpoint, self.path = checkpoint, path

    @classmethod
    def load(cls, target: str | Path, which: str = BEST, device: str = "auto") -> Policy:
        """The `which` checkpoint (best.pt, falling back to latest.pt) of a run directory, or a
        checkpoint file; on `device` (auto: CUDA when there is one)."""
        path = resolve_checkpoint(target, which)
        payload = load_checkpoint(path)
        config = Config.from_saved(payload["config"])
        check_fits(payload, *env_spaces(config), path)
        model = build_model(config, tuple(payload["obs_shape"]), payload["n_actions"])
        restore_model(model, payload, path)
        return cls(model, config, resolve_device(device), payload, path)

    @property
    def frames(self) -> int:
        """Environment frames the policy was trained for."""
        return int(self.checkpoint["frames"])

    def make_env(self, render_mode: str | None = None) -> gym.Env:
        """An environment like those the policy was trained on (the same preprocessing)."""
        return make_env(self.config, render_mode=render_mode)

    @torch.inference_mode()
    def predict(self, observation: np.ndarray, state: LstmState | None = None, greedy: bool = False,
                generator: torch.Generator | None = None) -> tuple[np.ndarray, LstmState | None]:
        """Actions for one observation or a batch of them, and the next LSTM state (None without an
        LSTM; pass it back with the next observations). Sampled from the policy, as it was trained,
        or its most probable action with greedy=True."""
        obs = torch.as_tensor(np.asarray(observation), device=self.device)
        single = obs.dim() == len(self.model.obs_shape)
        if single:
            obs = obs.unsqueeze(0)
        if state is None and self.model.lstm is not None:
            state = self.model.initial_state(obs.shape[0], self.device)
        logits, _, state = self.model(obs, state)
        if greedy:
            actions = logits.argmax(-1)
        else:
            actions = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
        actions_np = actions.cpu().numpy()
        return (actions_np[0] if single else actions_np), state

    def evaluate(self, episodes: int = 10, greedy: bool = False, seed: int = 0, env: gym.Env | None = None,
                 on_frame: Callable[[int, gym.Env], None] | None = None) -> Score:
        """Play `episodes` whole episodes (episode i reset with seed + i) and score them: on `env`
        one after another (a video's), else on environments of their own side by side."""
        envs = evaluation_envs(self.config, episodes) if env is None else [env]
        try:
            score = evaluate_policy(self.model, envs, episodes, greedy=greedy, seed=seed, device=self.device,
                                    on_frame=on_frame)
        finally:
            if env is None:
                for own in envs:
                    own.close()
        assert score is not None  # only a should_stop callback cuts an evaluation short
        return score
