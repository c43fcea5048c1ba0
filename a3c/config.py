"""Every hyperparameter of a run, in one dataclass, with its validation.

The defaults are the settings that learned every game measured on a 2-core machine
(docs/benchmarks.md): 4 environments per worker (16 train faster but never left Pong's uniform
policy), t_max 5, Adam at lr 3e-4 for two workers and less for more (see Config.learning_rate),
rewards clipped to their sign, a lost life the end of the learner's episode. PRESETS keeps the
seed tutorial's settings and the A3C paper's one flag away.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

PRECISIONS = ("auto", "float32", "bfloat16")
REWARD_TRANSFORMS = ("auto", "clip", "scale", "normalize")
BODIES = ("auto", "mnih2013", "mnih2015", "tutorial", "mlp")
OPTIMIZERS = ("adam", "rmsprop")
ACTIVATIONS = ("relu", "elu")
FRAME_NORMS = ("scale", "standardize", "background")
# Names that earlier versions wrote into config.json and checkpoints, read as their new names.
RENAMED_BODIES = {"seed": "tutorial", "nature": "mnih2013"}
# Settings that earlier versions had and this one has not: read from their files and dropped, with why.
REMOVED = {"eval_niceness": "the evaluator takes a share of the CPU instead (eval_cpu_share)"}
# Settings that earlier versions did not save, with the value their runs had (Config.from_saved).
UNSAVED_BEFORE = {"activation": "relu", "optimizer": "adam", "terminal_on_life_loss": False, "frame_norm": "scale"}
BFLOAT16_MIN_ENVS = 4  # see Config.network_precision
# The default learning rate: BASE_LR up to BASE_LR_WORKERS workers, less above (Config.learning_rate).
# RMSProp's is baselines' A2C's (and pytorch-a2c-ppo-acktr's), not searched here.
BASE_LR = {"adam": 3e-4, "rmsprop": 7e-4}
BASE_LR_WORKERS = 2


class ConfigError(ValueError):
    """A setting the user gave cannot work; the message says which and why."""


# Named sets of settings, applied under a config file and flags (`a3c train --preset seed`).
PRESETS: dict[str, dict[str, Any]] = {
    # The seed tutorial's network and reward scaling, with ikostrikov/pytorch-a3c's rollout length:
    # the defaults of earlier versions.
    "tutorial": {"screen_size": 42, "body": "tutorial", "envs_per_worker": 1, "t_max": 20, "lr": 1e-4,
                 "reward_transform": "scale", "terminal_on_life_loss": False, "frame_norm": "scale"},
    # Mnih et al. 2016's A3C FF: 84x84 frames, the network of Mnih et al. 2013, one environment per
    # worker, t_max 5, clipped rewards, shared RMSProp (alpha 0.99) with its learning rate annealed
    # to zero, lives not terminal (the paper names no such step); it searched the rate per game,
    # 7e-4 is baselines' A2C's.
    "paper": {"screen_size": 84, "body": "mnih2013", "envs_per_worker": 1, "t_max": 5, "optimizer": "rmsprop",
              "lr": 7e-4, "lr_anneal": True, "reward_transform": "clip", "terminal_on_life_loss": False,
              "frame_norm": "scale"},
}


def _help(text: str, default: str | None = None) -> dict[str, str]:
    """Help for the command line; `default` replaces the shown default where the value needs words."""
    return {"help": text} if default is None else {"help": text, "default": default}


@dataclass
class Config:
    # What to train on.
    env_id: str = field(default="ALE/KungFuMaster-v5", metadata=_help(
        "Gymnasium id: an ALE Atari game, or any env with a flat Box observation and Discrete actions"))
    workers: int = field(default_factory=lambda: os.cpu_count() or 1, metadata=_help(
        "worker processes, each with its own environments", f"one per CPU core, {os.cpu_count()} here"))
    envs_per_worker: int = field(default=4, metadata=_help(
        "environments per worker, stepped in turn with one batched forward pass (Hogwild between workers)"))
    total_frames: int = field(default=20_000_000, metadata=_help(
        "stop after this many environment frames (Atari frames count the frame skip)"))
    time_limit: float | None = field(default=None, metadata=_help(
        "also stop after this many seconds of training", "no limit"))
    seed: int = field(default=1, metadata=_help(
        "base seed: worker i seeds its environment and sampling from (seed, i)"))

    # Atari preprocessing (ignored for vector environments).
    screen_size: int = field(default=84, metadata=_help(
        "square grey frame side: 84 as in the paper, 42 for the tutorial body"))
    frame_skip: int = field(default=4, metadata=_help("emulator frames per agent step, max-pooled"))
    frame_stack: int = field(default=4, metadata=_help("frames stacked into one observation"))
    noop_max: int = field(default=30, metadata=_help("up to this many no-op frames at each reset"))
    sticky_actions: float = field(default=0.0, metadata=_help(
        "probability that the emulator repeats the previous action (0 as in the paper; 0.25 as in ALE v5)"))
    terminal_on_life_loss: bool = field(default=True, metadata=_help(
        "end the learner's episode (no bootstrap, a fresh LSTM state) when the game takes a life, as DQN "
        "and baselines' A2C and PPO train: the value head learns sooner what loses (Breakout and "
        "KungFuMaster learned faster early, docs/benchmarks.md); the game and the scores go on to game "
        "over; games without lives are unaffected"))
    max_episode_frames: int = field(default=108_000, metadata=_help(
        "truncate an episode after this many frames (30 minutes of play)"))
    reward_transform: str = field(default="auto", metadata=_help(
        "what the learner sees of a reward: clip (its sign, as in the A3C paper: every game's points "
        "weigh alike), scale (times reward_scale, as in the seed), normalize (divided by a running "
        "standard deviation of the discounted return, each worker its own, as Stable-Baselines3's "
        "VecNormalize: points keep their relative sizes and every game's returns come to unit scale); "
        "auto clips Atari rewards and leaves other environments' as they are"))
    reward_scale: float | None = field(default=None, metadata=_help(
        "with reward_transform scale: multiply training rewards by this", "0.01 for Atari as in the seed, 1 otherwise"))

    # Model.
    body: str = field(default="auto", metadata=_help(
        "network body: mnih2013 (16@8x8/4, 32@4x4/2, fc 256: Mnih et al. 2013's network, which the A3C "
        "paper used; for 84x84), mnih2015 (32@8x8/4, 64@4x4/2, 64@3x3/1, fc 512: the DQN Nature paper's, "
        "which A2C and PPO use; for 84x84), tutorial (the seed tutorial's 3 conv 32@3x3/2, fc 128; for 42x42), mlp "
        "(vector observations); auto picks mnih2013 for Atari, mlp otherwise"))
    activation: str = field(default="relu", metadata=_help(
        "the conv bodies' activation: relu, or elu (as ikostrikov/pytorch-a3c and universe-starter-agent: "
        "below zero its gradient is small rather than none, so units do not stop learning as most ReLU units "
        "of a trained network do; but with it KungFuMaster's policy collapsed, and Pong's for a while, "
        "docs/benchmarks.md); the mlp body uses tanh"))
    frame_norm: str = field(default="background", metadata=_help(
        "what the conv body sees of an observation's pixels: background (less the observation's "
        "commonest pixel value, its background, over its standard deviation: an empty screen is zero, "
        "every change on it amplified 4 to 6 times; Pong's last 100 training episodes averaged +13.8 at "
        "4 M frames with it, where scaled frames had -19.8), scale (divided by 255, as DQN, A2C and PPO, and this "
        "trainer before commit 1346cbe) or standardize (less the observation's mean, over its standard "
        "deviation, near what ikostrikov/pytorch-a3c's running normalisation gives: Breakout stayed near "
        "random play for millions of frames); docs/benchmarks.md"))
    lstm: bool = field(default=False, metadata=_help("add an LSTM cell between the body and the heads"))
    mlp_hidden: int = field(default=64, metadata=_help("width of the two MLP hidden layers"))
    precision: str = field(default="auto", metadata=_help(
        "number format of a worker's network body in acting and in the update's backward pass: "
        "float32, or bfloat16 (the weights, their gradients, the optimizer, the LSTM and the heads stay "
        f"float32); auto picks bfloat16 for conv bodies with {BFLOAT16_MIN_ENVS} or more environments "
        "per worker on CPUs with native bfloat16 (AVX-512 BF16 or AMX), float32 otherwise"))

    # Algorithm.
    optimizer: str = field(default="adam", metadata=_help(
        "the shared optimizer: adam, or rmsprop (the A3C paper's shared RMSProp: one running mean of "
        "squared gradients for all workers, no momentum)"))
    lr: float | None = field(default=None, metadata=_help(
        "learning rate", "for adam 3e-4 up to 2 workers, 3e-4 x sqrt(2/workers) above (1.06e-4 for 16): the "
        "more Hogwild workers, the older the weights each gradient was computed on; for rmsprop 7e-4, scaled alike"))
    lr_anneal: bool = field(default=False, metadata=_help(
        "anneal the learning rate linearly to zero over total_frames, as in the paper"))
    adam_eps: float = field(default=1e-8, metadata=_help("Adam epsilon"))
    rmsprop_alpha: float = field(default=0.99, metadata=_help(
        "RMSProp's decay of the mean squared gradient (the paper's 0.99)"))
    rmsprop_eps: float = field(default=1e-5, metadata=_help(
        "RMSProp epsilon, added to the root mean square as torch.optim.RMSprop does (baselines' A2C "
        "used 1e-5 under the root, TensorFlow's RMSProp: a floor of 3.2e-3)"))
    gamma: float = field(default=0.99, metadata=_help("discount factor"))
    gae_lambda: float = field(default=1.0, metadata=_help(
        "GAE lambda for the policy's advantage; 1 gives the paper's n-step advantage"))
    t_max: int = field(default=5, metadata=_help("steps per rollout before each update"))
    entropy_coef: float = field(default=0.01, metadata=_help("entropy bonus weight beta"))
    value_loss_coef: float = field(default=0.5, metadata=_help("value loss weight"))
    max_grad_norm: float = field(default=50.0, metadata=_help("clip each update's gradient to this norm"))

    # Evaluator, checkpoints and supervision.
    eval_interval: float = field(default=30.0, metadata=_help(
        "seconds at least between the starts of two evaluations (eval_cpu_share may space them further)"))
    eval_every_frames: int | None = field(default=None, metadata=_help(
        "also evaluate after every this many frames, whatever eval_interval and eval_cpu_share say", "off"))
    eval_episodes: int = field(default=10, metadata=_help(
        "episodes per evaluation, played side by side with one batched forward pass"))
    eval_cpu_share: float = field(default=0.05, metadata=_help(
        "the share of the machine's CPU time the evaluator may take on average: after an evaluation it "
        "waits until its CPU time is within this share of the cores, so evaluations come at a steady cost "
        "however many workers fill the cores (it runs at the workers' priority)"))
    eval_device: str = field(default="auto", metadata=_help(
        "device of the evaluator: auto (cuda when available), cuda or cpu"))
    eval_greedy: bool = field(default=False, metadata=_help(
        "evaluate with the most probable action instead of sampling from the policy; the policy that "
        "was trained is the sampled one, and its greedy version often scores far less"))
    checkpoint_interval: float = field(default=300.0, metadata=_help(
        "seconds between writes of checkpoints/latest.pt from the shared weights, whatever the evaluator "
        "does: a crash or a power cut loses at most this much training (and a signal none)"))
    hang_timeout: float = field(default=60.0, metadata=_help(
        "a worker that finishes no rollout, or an evaluator that plays no step, for this many seconds is "
        "killed and replaced (start-up gets twice as long); it counts as a death (max_deaths)"))
    stop_timeout: float = field(default=30.0, metadata=_help(
        "after Ctrl-C or SIGTERM the run ends within this many seconds, with a final checkpoint, "
        "even when a child is hung"))
    max_deaths: int = field(default=5, metadata=_help(
        "stop the run with an error when this many processes died within death_window seconds"))
    death_window: float = field(default=300.0, metadata=_help("see max_deaths"))
    status_interval: float = field(default=5.0, metadata=_help("seconds between console status lines"))
    runs_dir: str = field(default="runs", metadata=_help("parent folder of new run directories"))
    run_name: str | None = field(default=None, metadata=_help(
        "run directory name", "game and start time"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """A Config from saved or user settings. Settings files of earlier versions are read as
        they were meant: `reward_clip` (true: clip, false: scale) became `reward_transform`, and
        the bodies `seed` and `nature` are called `tutorial` and `mnih2013`."""
        values = dict(values)
        if values.get("body") in RENAMED_BODIES:
            old, values["body"] = values["body"], RENAMED_BODIES[values["body"]]
            print(f"a3c: note: body {old!r} is now called {values['body']!r}", file=sys.stderr)
        if "reward_clip" in values:
            clip = values.pop("reward_clip")
            values.setdefault("reward_transform", "clip" if clip else "scale")
        for name in REMOVED.keys() & values.keys():
            del values[name]
            print(f"a3c: note: setting {name!r} is gone: {REMOVED[name]}", file=sys.stderr)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_saved(cls, values: dict[str, Any]) -> Config:
        """The settings of a saved run (config.json, a checkpoint), as that run had them: a setting
        its version did not save yet had the value of UNSAVED_BEFORE, whatever today's default."""
        return cls.from_dict({**UNSAVED_BEFORE, **values})

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    @property
    def is_atari(self) -> bool:
        return self.env_id.startswith("ALE/")

    @property
    def training_reward_transform(self) -> str:
        """`reward_transform` resolved for this environment: clip, scale or normalize."""
        if self.reward_transform != "auto":
            return self.reward_transform
        return "clip" if self.is_atari else "scale"

    @property
    def training_reward_scale(self) -> float:
        """The factor of the scale transform (1 when the rewards are clipped or normalized)."""
        if self.training_reward_transform != "scale":
            return 1.0
        if self.reward_scale is not None:
            return self.reward_scale
        return 0.01 if self.is_atari else 1.0

    @property
    def frames_per_step(self) -> int:
        return self.frame_skip if self.is_atari else 1

    @property
    def model_body(self) -> str:
        if self.body != "auto":
            return self.body
        return "mnih2013" if self.is_atari else "mlp"

    @property
    def learning_rate(self) -> float:
        """`lr` resolved for this many workers. Each Hogwild worker computes its gradient on weights
        that the other workers' updates have moved since, the more of them the more workers there are.
        Measured on Pong (docs/benchmarks.md): with 2 workers 3e-4 learned fastest of 1e-4, 3e-4 and
        7e-4; with 16 workers on 16 cores 3e-4 did not learn in 9.8 M frames where 1e-4 did. The
        square-root rule meets both; a Ray run takes it from all its workers, over every node."""
        if self.lr is not None:
            return self.lr
        return BASE_LR[self.optimizer] * math.sqrt(BASE_LR_WORKERS / max(self.workers, BASE_LR_WORKERS))

    @property
    def network_precision(self) -> str:
        """`precision` resolved on this machine: float32 or bfloat16."""
        if self.precision != "auto":
            return self.precision
        # Measured (docs/benchmarks.md): only convolutions gain, and only on batches of
        # BFLOAT16_MIN_ENVS frames or more; on fewer a bfloat16 pass is slower than a float32 one.
        fast = self.model_body != "mlp" and self.envs_per_worker >= BFLOAT16_MIN_ENVS and cpu_has_native_bfloat16()
        return "bfloat16" if fast else "float32"


@functools.cache
def cpu_has_native_bfloat16() -> bool:
    """AVX-512 BF16 or AMX-BF16 among the CPU's flags (Linux); elsewhere assume not: emulated
    bfloat16 is slower than float32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be positive, got {value}")


def validate(config: Config) -> None:
    """Raise ConfigError, naming the setting, for any value that cannot work."""
    for name in ("workers", "envs_per_worker", "total_frames", "t_max", "screen_size", "frame_skip", "frame_stack",
                 "max_episode_frames", "eval_episodes", "mlp_hidden", "max_deaths"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        _positive(name, value)
    for name in ("adam_eps", "rmsprop_eps", "eval_interval", "status_interval", "death_window", "checkpoint_interval",
                 "hang_timeout", "stop_timeout"):
        _positive(name, getattr(config, name))
    for name in ("lr", "time_limit", "eval_every_frames"):
        if getattr(config, name) is not None:
            _positive(name, getattr(config, name))
    for name in ("gamma", "gae_lambda"):
        value = getattr(config, name)
        if not 0 < value <= 1:
            raise ConfigError(f"{name} must lie in (0, 1], got {value}")
    for name in ("entropy_coef", "value_loss_coef", "noop_max"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name} must not be negative, got {getattr(config, name)}")
    _positive("max_grad_norm", config.max_grad_norm)
    if not 0 <= config.sticky_actions < 1:
        raise ConfigError(f"sticky_actions must lie in [0, 1), got {config.sticky_actions}")
    if config.reward_scale is not None:
        _positive("reward_scale", config.reward_scale)
    if not 0 < config.rmsprop_alpha < 1:
        raise ConfigError(f"rmsprop_alpha must lie in (0, 1), got {config.rmsprop_alpha}")
    if config.activation not in ACTIVATIONS:
        raise ConfigError(f"activation must be {' or '.join(ACTIVATIONS)}; got {config.activation!r}")
    if config.frame_norm not in FRAME_NORMS:
        raise ConfigError(f"frame_norm must be {' or '.join(FRAME_NORMS)}; got {config.frame_norm!r}")
    if config.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be {' or '.join(OPTIMIZERS)}; got {config.optimizer!r}")
    if config.body not in BODIES:
        raise ConfigError(f"body must be one of {', '.join(BODIES)}; got {config.body!r}")
    if config.reward_transform not in REWARD_TRANSFORMS:
        raise ConfigError(f"reward_transform must be one of {', '.join(REWARD_TRANSFORMS)}; "
                          f"got {config.reward_transform!r}")
    if config.precision not in PRECISIONS:
        raise ConfigError(f"precision must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}; "
                          f"got {config.precision!r}")
    if not 0 < config.eval_cpu_share <= 1:
        raise ConfigError(f"eval_cpu_share must lie in (0, 1], got {config.eval_cpu_share}")
    if config.eval_device not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"eval_device must be auto, cuda or cpu; got {config.eval_device!r}")
    if config.is_atari and config.model_body == "mlp":
        raise ConfigError("an Atari game needs a conv body (mnih2013 or tutorial), not mlp")
    if not config.is_atari and config.model_body != "mlp":
        raise ConfigError(f"{config.env_id} has vector observations: use body mlp")


@dataclass(frozen=True)
class RayOptions:
    """Where a Ray run's workers go. address None: a Ray instance started here, on loopback only,
    and shut down at the end; else HOST:PORT of a cluster started with `ray start --head`, left
    running. nodes None: one for a local instance, every live node of a cluster."""

    address: str | None = None
    nodes: int | None = None
    exchange_interval: float | None = None  # None: ray_cluster.auto_exchange_interval

    @property
    def on_loopback(self) -> bool:
        """A Ray instance started here, or a cluster at a loopback address: everything stays on
        127.0.0.1."""
        if self.address is None:
            return True
        host = self.address.rsplit(":", 1)[0].strip("[]")
        return host in ("localhost", "::1") or host.startswith("127.")

    def check(self) -> None:
        if self.nodes is not None and self.nodes < 1:
            raise ConfigError(f"--nodes must be at least 1, got {self.nodes}")
        if self.exchange_interval is not None and not self.exchange_interval > 0:
            raise ConfigError(f"--exchange-interval must be positive, got {self.exchange_interval}")
