"""Every hyperparameter of a run, in one dataclass, with its validation, and the reading of the
settings files of earlier versions (read_older).

The defaults are the settings that learned every game measured (docs/experiments.md); PRESETS keeps
the seed tutorial's settings and the A3C paper's one flag away.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

PRECISIONS = ("auto", "float32", "bfloat16")
REWARD_TRANSFORMS = ("auto", "clip", "scale", "normalize")
BODIES = ("auto", "mnih2013", "mnih2015", "tutorial", "mlp")
OPTIMIZERS = ("adam", "rmsprop")
FRAME_NORMS = ("background", "scale")
FRAME_COLOURS = ("grey", "rgb", "rgb-newest")
BFLOAT16_MIN_ENVS = 4  # see Config.network_precision
GREY, RED, GREEN, BLUE = range(4)  # what a channel of an image observation holds (Config.observation_colours)
RGB = (RED, GREEN, BLUE)


def observation_colours(frame_colour: str, frame_stack: int) -> tuple[int, ...]:
    """What each channel of an image observation holds, oldest frame first: GREY, RED, GREEN or BLUE."""
    if frame_colour == "rgb":
        return RGB * frame_stack
    if frame_colour == "rgb-newest":
        return (GREY,) * (frame_stack - 1) + RGB
    return (GREY,) * frame_stack

# The default learning rate of each optimizer, for any number of workers (Config.learning_rate).
# RMSProp's is baselines' A2C's (and pytorch-a2c-ppo-acktr's), not searched here.
DEFAULT_LR = {"adam": 3e-4, "rmsprop": 7e-4}
# Adam's default beta1 (Config.adam_betas): at most DEFAULT_ADAM_BETA1, and the updates of lag that
# its mean gradient and the workers' staleness add up to, kept at what they are with 2 workers.
DEFAULT_ADAM_BETA1 = 0.9
LAG_UPDATES = 10
# The further passes' default clip (Config.further_pass_clip): CLIP_RATIO_FEW up to FEW_WORKERS, wider
# in proportion to the workers up to CLIP_RATIO_MANY at MANY_WORKERS, and kept there. The later an
# update lands, the further the policy has moved from the one that acted (docs/experiments.md, "Late
# gradients at many workers").
FEW_WORKERS, CLIP_RATIO_FEW = 2, 0.1
MANY_WORKERS, CLIP_RATIO_MANY = 16, 0.2


class ConfigError(ValueError):
    """A setting the user gave cannot work; the message says which and why."""


# Named sets of settings, applied under a config file and flags (`a3c train --preset paper`).
PRESETS: dict[str, dict[str, Any]] = {
    # The seed tutorial's network and reward scaling, with ikostrikov/pytorch-a3c's rollout length:
    # the defaults of earlier versions.
    "tutorial": {"screen_size": 42, "body": "tutorial", "envs_per_worker": 1, "t_max": 20, "lr": 1e-4,
                 "reward_transform": "scale", "terminal_on_life_loss": False, "frame_norm": "scale",
                 "reward_prediction_coef": 0.0, "entropy_relative": False, "rollout_passes": 1},
    # Mnih et al. 2016's A3C FF: 84x84 frames, the network of Mnih et al. 2013, one environment per
    # worker, t_max 5, one step a rollout, clipped rewards, shared RMSProp (alpha 0.99) with its
    # learning rate annealed to zero, lives not terminal (the paper names no such step), no auxiliary
    # task, a fixed entropy weight; it searched the rate per game, 7e-4 is baselines' A2C's.
    "paper": {"screen_size": 84, "body": "mnih2013", "envs_per_worker": 1, "t_max": 5, "optimizer": "rmsprop",
              "lr": 7e-4, "lr_anneal": True, "reward_transform": "clip", "terminal_on_life_loss": False,
              "frame_norm": "scale", "reward_prediction_coef": 0.0, "entropy_relative": False,
              "rollout_passes": 1},
}


def _help(text: str, default: str | None = None) -> dict[str, str]:
    """Help for the command line; `default` replaces the shown default where the value needs words."""
    return {"help": text} if default is None else {"help": text, "default": default}


@dataclass
class Config:
    # Environment.
    env_id: str = field(default="ALE/KungFuMaster-v5", metadata=_help(
        "Gymnasium id: an ALE Atari game, or any env with a flat Box observation and Discrete actions"))
    screen_size: int = field(default=84, metadata=_help("side of the square grey frames (42 for the tutorial body)"))
    frame_skip: int = field(default=4, metadata=_help("emulator frames per agent step, the last two max-pooled"))
    frame_stack: int = field(default=4, metadata=_help("frames stacked into one observation"))
    frame_colour: str = field(default="grey", metadata=_help(
        "what a frame holds: grey (ALE's luminance), rgb (three channels, so that colours of one grey level "
        "stay apart) or rgb-newest (the newest frame rgb, the older grey: less compute)"))
    noop_max: int = field(default=30, metadata=_help("up to this many no-op steps at each reset"))
    sticky_actions: float = field(default=0.0, metadata=_help(
        "probability that the emulator repeats the previous action (ALE v5's own default is 0.25)"))
    terminal_on_life_loss: bool = field(default=True, metadata=_help(
        "a lost life ends the learner's episode (no bootstrap), as DQN, A2C and PPO train; the game goes on"))
    max_episode_frames: int = field(default=108_000, metadata=_help(
        "truncate an episode after this many frames (30 minutes of play)"))
    reward_transform: str = field(default="auto", metadata=_help(
        "what the learner sees of a reward: clip (its sign), scale (times reward_scale) or normalize (over a "
        "running std of the return); auto: clip for Atari, else as it is"))
    reward_scale: float | None = field(default=None, metadata=_help(
        "the factor of reward_transform scale", "0.01 for Atari, 1 otherwise"))

    # Network.
    body: str = field(default="auto", metadata=_help(
        "mnih2013 (the A3C paper's), mnih2015 (DQN Nature's, as A2C and PPO), tutorial (the seed's, 42x42) "
        "or mlp (vector observations); auto: mnih2013 for Atari, mlp otherwise"))
    frame_norm: str = field(default="background", metadata=_help(
        "what the conv body sees: background (each observation less its commonest pixel value, over its "
        "std) or scale (pixels / 255, as DQN, A2C and PPO)"))
    lstm: bool = field(default=False, metadata=_help("an LSTM cell between the body and the heads"))
    mlp_hidden: int = field(default=64, metadata=_help("width of the mlp body's two hidden layers"))
    precision: str = field(default="auto", metadata=_help(
        "number format of the conv body in workers: float32 or bfloat16; auto: bfloat16 with "
        f"{BFLOAT16_MIN_ENVS}+ environments per worker on CPUs with native bfloat16"))

    # Optimisation.
    workers: int = field(default_factory=lambda: os.cpu_count() or 1, metadata=_help(
        "worker processes, each with its own environments and its own copy of the weights",
        f"one per CPU core, {os.cpu_count()} here"))
    envs_per_worker: int = field(default=4, metadata=_help(
        "environments per worker, stepped together with one batched forward pass"))
    t_max: int = field(default=5, metadata=_help("steps per rollout: each update learns from t_max x envs_per_worker"))
    rollout_passes: int = field(default=2, metadata=_help(
        "steps on each rollout: after the first, the worker copies the shared weights again and steps on the "
        "same rollout with PPO's clipped ratio to the policy that acted; 1 is the A3C paper's"))
    clip_ratio: float | None = field(default=None, metadata=_help(
        "how far from 1 the further passes' probability ratio counts (PPO's clip)",
        f"{CLIP_RATIO_FEW:g} up to {FEW_WORKERS} workers, wider with more, {CLIP_RATIO_MANY:g} from {MANY_WORKERS} "
        "(see Config.further_pass_clip)"))
    optimizer: str = field(default="adam", metadata=_help(
        "the shared optimizer: adam, or rmsprop (the A3C paper's shared RMSProp)"))
    lr: float | None = field(default=None, metadata=_help(
        "learning rate", "adam 3e-4, rmsprop 7e-4, for any number of workers"))
    lr_anneal: bool = field(default=False, metadata=_help("anneal the learning rate linearly to 0 over total_frames"))
    adam_beta1: float | None = field(default=None, metadata=_help(
        "Adam's decay of the mean gradient (its momentum)",
        "0.9 up to 2 workers, falling with more, 0 from 11 (see Config.adam_betas)"))
    adam_beta2: float = field(default=0.999, metadata=_help("Adam's decay of the mean squared gradient"))
    adam_eps: float = field(default=1e-8, metadata=_help("Adam's epsilon"))
    rmsprop_alpha: float = field(default=0.99, metadata=_help("RMSProp's decay of the mean squared gradient"))
    rmsprop_eps: float = field(default=1e-5, metadata=_help(
        "RMSProp's epsilon, added to the root mean square as torch.optim.RMSprop does"))
    gamma: float = field(default=0.99, metadata=_help("discount factor"))
    gae_lambda: float = field(default=1.0, metadata=_help(
        "GAE lambda of the policy's advantage; 1 is the paper's n-step advantage"))
    entropy_coef: float = field(default=0.01, metadata=_help(
        "weight of the entropy bonus (with entropy_relative, the most it weighs)"))
    entropy_relative: bool = field(default=True, metadata=_help(
        "shrink the entropy bonus where a game's advantages are small: entropy_coef times the root mean square "
        "of recent advantages over 0.4, at most entropy_coef"))
    reward_prediction_coef: float = field(default=0.1, metadata=_help(
        "weight of an auxiliary task: predict from an observation the sign of the reward after it (UNREAL's "
        "reward prediction), once a rollout, weighted for each step on it; 0: off"))
    value_loss_coef: float = field(default=0.5, metadata=_help("weight of the value loss"))
    max_grad_norm: float = field(default=50.0, metadata=_help("clip each update's gradient to this norm"))

    # Evaluation and checkpoints.
    eval_interval: float = field(default=30.0, metadata=_help(
        "seconds at least between the starts of two evaluations"))
    eval_every_frames: int | None = field(default=None, metadata=_help(
        "also evaluate after every this many frames, whatever the interval and the CPU share", "off"))
    eval_episodes: int = field(default=10, metadata=_help("episodes per evaluation, played side by side"))
    eval_cpu_share: float = field(default=0.045, metadata=_help(
        "the evaluator waits after each evaluation until its CPU time since it started is within this share of "
        "the machine's"))
    eval_device: str = field(default="auto", metadata=_help("the evaluator's device: auto (cuda if any), cuda or cpu"))
    eval_greedy: bool = field(default=False, metadata=_help(
        "evaluate the most probable action rather than the sampled policy that was trained"))
    checkpoint_interval: float = field(default=300.0, metadata=_help(
        "seconds between writes of latest.pt, whatever the evaluator does: what a crash can lose at most"))

    # Run control.
    total_frames: int = field(default=20_000_000, metadata=_help(
        "stop after this many environment frames (the frame skip counted)"))
    time_limit: float | None = field(default=None, metadata=_help(
        "also stop after this many seconds of training", "no limit"))
    seed: int = field(default=1, metadata=_help("base seed: worker i seeds its environments and actions from (seed, i)"))
    runs_dir: str = field(default="runs", metadata=_help("parent folder of new run directories"))
    run_name: str | None = field(default=None, metadata=_help("run directory name", "game and start time"))
    status_interval: float = field(default=5.0, metadata=_help("seconds between status lines"))
    hang_timeout: float = field(default=60.0, metadata=_help(
        "kill and replace a worker or evaluator that shows no progress this long (twice at start-up)"))
    stop_timeout: float = field(default=30.0, metadata=_help(
        "after Ctrl-C or SIGTERM the run ends within this many seconds, with a final checkpoint"))
    max_deaths: int = field(default=5, metadata=_help(
        "stop the run when this many children died (or hung) within death_window seconds"))
    death_window: float = field(default=300.0, metadata=_help("see max_deaths"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """A Config from user or saved settings; those of earlier versions are read by read_older."""
        values = read_older(values)
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
    def observation_colours(self) -> tuple[int, ...]:
        return observation_colours(self.frame_colour, self.frame_stack)

    @property
    def model_body(self) -> str:
        if self.body != "auto":
            return self.body
        return "mnih2013" if self.is_atari else "mlp"

    @property
    def learning_rate(self) -> float:
        """`lr`, or the optimizer's default. The same for any number of workers: a rate that fell with
        the workers to offset their updates' staleness learned Pong later per frame at 16 workers
        (docs/experiments.md); a Ray run's nodes all take it."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def reward_prediction_weight(self) -> float:
        """The weight of reward prediction's one batch a rollout, drawn in its first pass: the
        coefficient for each pass, so that the task weighs as much against the policy's steps as
        with one pass (docs/experiments.md, "Sample reuse")."""
        return self.rollout_passes * self.reward_prediction_coef

    @property
    def adam_betas(self) -> tuple[float, float]:
        """Adam's (beta1, beta2), beta1 by default from the number of workers. Adam's mean gradient
        lags about beta1 / (1 - beta1) updates behind (9 at 0.9), and with W workers each gradient
        lands some W - 1 updates late already (train/staleness): the default keeps the two at the
        LAG_UPDATES of 2 workers, beta1 = k / (k + 1) with k = LAG_UPDATES + 1 - W, so 0 from 11
        workers (docs/experiments.md, "Learning rate and workers")."""
        if self.adam_beta1 is not None:
            return self.adam_beta1, self.adam_beta2
        momentum_lag = max(0, LAG_UPDATES - (self.workers - 1))
        return min(DEFAULT_ADAM_BETA1, momentum_lag / (momentum_lag + 1)), self.adam_beta2

    @property
    def further_pass_clip(self) -> float:
        """`clip_ratio`, by default from the number of workers: the more workers, the more updates
        land between the acting copy of the weights and a further pass's, so the further the policy
        has moved and the more samples a narrow clip leaves without a gradient (train/clip_fraction).
        Linear in the workers between the counts measured, FEW_WORKERS and MANY_WORKERS."""
        if self.clip_ratio is not None:
            return self.clip_ratio
        share = min(1.0, max(0.0, (self.workers - FEW_WORKERS) / (MANY_WORKERS - FEW_WORKERS)))
        return CLIP_RATIO_FEW + share * (CLIP_RATIO_MANY - CLIP_RATIO_FEW)

    @property
    def network_precision(self) -> str:
        """`precision` resolved on this machine: float32 or bfloat16."""
        if self.precision != "auto":
            return self.precision
        # Measured (docs/experiments.md): only convolutions gain, and only on batches of
        # BFLOAT16_MIN_ENVS frames or more; on fewer a bfloat16 pass is slower than a float32 one.
        fast = self.model_body != "mlp" and self.envs_per_worker >= BFLOAT16_MIN_ENVS and cpu_has_native_bfloat16()
        return "bfloat16" if fast else "float32"


# `a3c train --help` shows the settings in these groups, in this order (every field in one).
GROUPS: dict[str, tuple[str, ...]] = {
    "environment": ("env_id", "screen_size", "frame_skip", "frame_stack", "frame_colour", "noop_max",
                    "sticky_actions", "terminal_on_life_loss", "max_episode_frames", "reward_transform",
                    "reward_scale"),
    "network": ("body", "frame_norm", "lstm", "mlp_hidden", "precision"),
    "optimisation": ("workers", "envs_per_worker", "t_max", "rollout_passes", "clip_ratio", "optimizer", "lr",
                     "lr_anneal", "adam_beta1", "adam_beta2", "adam_eps", "rmsprop_alpha", "rmsprop_eps", "gamma",
                     "gae_lambda", "entropy_coef", "entropy_relative", "reward_prediction_coef", "value_loss_coef",
                     "max_grad_norm"),
    "evaluation and checkpoints": ("eval_interval", "eval_every_frames", "eval_episodes", "eval_cpu_share",
                                   "eval_device", "eval_greedy", "checkpoint_interval"),
    "run control": ("total_frames", "time_limit", "seed", "runs_dir", "run_name", "status_interval",
                    "hang_timeout", "stop_timeout", "max_deaths", "death_window"),
}


# -- settings of earlier versions ----------------------------------------------------------------
# Values renamed since: (setting, old value) -> new value.
RENAMED_VALUES = {("body", "seed"): "tutorial", ("body", "nature"): "mnih2013"}
# Settings gone: the value that is now the only behaviour (None: any value is dropped), and why.
REMOVED: dict[str, tuple[Any, str]] = {
    "activation": ("relu", "the conv bodies use ReLU; ELU lost every comparison (docs/experiments.md)"),
    "eval_niceness": (None, "the evaluator keeps to a share of the CPU instead (eval_cpu_share)"),
}
# Values gone, and why: a run that used one cannot be read by this version.
REMOVED_VALUES = {("frame_norm", "standardize"): "standardized frames lost to background (docs/experiments.md)"}
# Settings that earlier versions did not save, with the value their runs had (Config.from_saved).
UNSAVED_BEFORE = {"optimizer": "adam", "terminal_on_life_loss": False, "frame_norm": "scale",
                  "reward_prediction_coef": 0.0, "entropy_relative": False, "rollout_passes": 1}


def read_older(values: dict[str, Any]) -> dict[str, Any]:
    """Settings written by an earlier version (a run's config.json or checkpoint, a settings file),
    as this version reads them: renamed values and settings under their new names, removed settings
    dropped with a note where the run had what is now the only behaviour, refused where it had not."""
    values = dict(values)
    for (name, old), new in RENAMED_VALUES.items():
        if values.get(name) == old:
            values[name] = new
            print(f"a3c: note: {name} {old!r} is now called {new!r}", file=sys.stderr)
    if "reward_clip" in values:  # a boolean before reward_transform: true clipped, false scaled
        clip = values.pop("reward_clip")
        values.setdefault("reward_transform", "clip" if clip else "scale")
    for name in REMOVED.keys() & values.keys():
        kept, why = REMOVED[name]
        value = values.pop(name)
        if kept is not None and value != kept:
            raise ConfigError(f"{name} {value!r} is no longer supported: {why}")
        if kept is None:
            print(f"a3c: note: setting {name!r} is gone: {why}", file=sys.stderr)
    for (name, value), why in REMOVED_VALUES.items():
        if values.get(name) == value:
            raise ConfigError(f"{name} {value!r} is no longer supported: {why}")
    return values


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
    for name in ("workers", "envs_per_worker", "total_frames", "t_max", "rollout_passes", "screen_size", "frame_skip",
                 "frame_stack", "max_episode_frames", "eval_episodes", "mlp_hidden", "max_deaths"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        _positive(name, value)
    for name in ("adam_eps", "rmsprop_eps", "eval_interval", "status_interval", "death_window", "checkpoint_interval",
                 "hang_timeout", "stop_timeout"):
        _positive(name, getattr(config, name))
    for name in ("lr", "clip_ratio", "time_limit", "eval_every_frames"):
        if getattr(config, name) is not None:
            _positive(name, getattr(config, name))
    for name in ("gamma", "gae_lambda"):
        value = getattr(config, name)
        if not 0 < value <= 1:
            raise ConfigError(f"{name} must lie in (0, 1], got {value}")
    for name in ("entropy_coef", "reward_prediction_coef", "value_loss_coef", "noop_max"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name} must not be negative, got {getattr(config, name)}")
    _positive("max_grad_norm", config.max_grad_norm)
    if not 0 <= config.sticky_actions < 1:
        raise ConfigError(f"sticky_actions must lie in [0, 1), got {config.sticky_actions}")
    if config.reward_scale is not None:
        _positive("reward_scale", config.reward_scale)
    for name in ("adam_beta1", "adam_beta2"):
        value = getattr(config, name)
        if value is not None and not 0 <= value < 1:
            raise ConfigError(f"{name} must lie in [0, 1), got {value}")
    if not 0 < config.rmsprop_alpha < 1:
        raise ConfigError(f"rmsprop_alpha must lie in (0, 1), got {config.rmsprop_alpha}")
    if config.frame_colour not in FRAME_COLOURS:
        raise ConfigError(f"frame_colour must be {', '.join(FRAME_COLOURS[:-1])} or {FRAME_COLOURS[-1]}; "
                          f"got {config.frame_colour!r}")
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
    if config.frame_colour != "grey" and not config.is_atari:
        raise ConfigError(f"{config.env_id} has vector observations: frame_colour {config.frame_colour} is for "
                          "Atari frames")
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
