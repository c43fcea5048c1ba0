"""Command line: `a3c train`, `a3c eval`. Every Config field is a --flag with its default shown."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from a3c.checkpoint import (
    CheckpointError,
    RunWriteError,
    newest_run,
)
from a3c.config import GROUPS, PRESETS, Config, ConfigError, RayOptions


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line and exit 2, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parse_optional(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "") else kind(text)
    parse.__name__ = kind.__name__
    return parse


_TYPES: dict[str, Any] = {"int": int, "float": float, "str": str,
                          "float | None": _parse_optional(float), "str | None": _parse_optional(str),
                          "int | None": _parse_optional(int)}


def add_config_arguments(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """One --flag per Config field, in the groups of config.GROUPS; the argument groups by title.
    Defaults are SUPPRESSed so we can tell which flags were given."""
    defaults = Config()
    fields = {f.name: f for f in dataclasses.fields(Config)}
    groups = {}
    for title, names in GROUPS.items():
        group = groups[title] = parser.add_argument_group(title)
        for name in names:
            f = fields[name]
            flag = "--" + name.replace("_", "-")
            shown = f.metadata.get("default", getattr(defaults, name))
            help_text = f"{f.metadata.get('help', '')} (default: {shown})"
            if f.type == "bool":
                group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                   default=argparse.SUPPRESS, help=help_text)
            else:
                group.add_argument(flag, dest=name, type=_TYPES[str(f.type)], default=argparse.SUPPRESS,
                                   metavar=name.upper(), help=help_text)
    return groups


def load_config_file(path: str) -> dict[str, Any]:
    text = _read_text(path)
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise ConfigError("YAML configuration files need PyYAML: pip install 'a3c[yaml]'") from None
        values = yaml.safe_load(text)
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of settings")
    return values


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(Config)}
    return {k: v for k, v in vars(args).items() if k in names}


def command_train(args: argparse.Namespace) -> int:
    from a3c import api  # imports torch: only once the arguments are known good

    overrides = settings_from_args(args)
    if args.config:
        overrides = {**load_config_file(args.config), **overrides}
    if args.preset:
        overrides = {**PRESETS[args.preset], **overrides}
    ray = None
    if args.ray is not None:
        ray = RayOptions(args.ray or None, args.nodes, args.exchange_interval)
    elif args.nodes is not None:
        raise ConfigError("--nodes needs --ray")
    if args.resume:
        return api.resume(args.resume, overrides, ray).exit_code
    return api.train(Config.from_dict(overrides), ray).exit_code


def command_eval(args: argparse.Namespace) -> int:
    import gymnasium as gym

    from a3c.api import Policy
    from a3c.model import setup_cpu_compute

    setup_cpu_compute()
    policy = Policy.load(args.checkpoint or args.run or newest_run(args.runs_dir), device=args.device)
    path, config = policy.path, policy.config
    env = policy.make_env(render_mode="rgb_array" if args.video else None)
    print(f"evaluating {path} ({config.env_id}, {policy.frames:,} training frames) on {policy.device} "
          f"over {args.episodes} episodes, {'greedy' if args.greedy else 'sampled'} actions", flush=True)
    recorder = None
    if args.video:
        from a3c.video import VideoRecorder

        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        recorder = VideoRecorder(env, args.video_dir or run_dir / "videos", prefix=path.stem)
    try:
        score = policy.evaluate(args.episodes, greedy=args.greedy, seed=args.seed, env=env,
                                on_frame=None if recorder is None else recorder.on_step)
    except gym.error.DependencyNotInstalled as error:  # rendering a classic-control game needs pygame
        raise ConfigError(f"video of {config.env_id}: {error} (or pip install 'a3c[video]')") from None
    if recorder is not None:
        recorder.close()
        for video, frames in zip(recorder.paths, recorder.frames, strict=True):
            print(f"video: {video} ({frames} frames at {recorder.fps} fps)")
    env.close()
    print(score)
    return 0


def command_plot(args: argparse.Namespace) -> int:
    from a3c.plot import plot_runs

    runs = args.runs or [str(newest_run(args.runs_dir))]
    output = args.output or (Path(runs[0]) / "plot.png" if len(runs) == 1 else Path("plot.png"))
    print(f"wrote {plot_runs(runs, output, args.smooth)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="a3c", description="Asynchronous advantage actor-critic (Hogwild A3C).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train = commands.add_parser("train", help="train a model", usage="%(prog)s [options]")
    groups = add_config_arguments(train)
    control = groups["run control"]
    control.add_argument("--config", help="JSON or YAML file of settings (a run's config.json works); flags "
                         "override it (default: none)")
    control.add_argument("--preset", choices=sorted(PRESETS), help="start from the settings of the seed "
                         "tutorial or of the A3C paper; a config file and flags override them (default: none)")
    control.add_argument("--resume", help="run directory or checkpoint to continue from, with its settings; "
                         "flags override those that may change (default: none)")
    on_ray = train.add_argument_group("on a Ray cluster (pip install 'a3c[ray]')")
    on_ray.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                        help="train on the Ray cluster at HOST:PORT, or with no address on a Ray instance "
                        "started here on loopback (default: off, the local trainer)")
    on_ray.add_argument("--nodes", type=int, help="nodes to spread the workers over (default: every live node "
                        "of the cluster; one for a local instance)")
    on_ray.add_argument("--exchange-interval", type=float,
                        help="seconds between a node's exchanges with the global weights (default: as often as "
                        "sending about 10 MB/s per node allows)")
    evaluate = commands.add_parser("eval", help="evaluate a checkpoint")
    evaluate.add_argument("--run", help="run directory (default: the newest under --runs-dir)")
    evaluate.add_argument("--checkpoint", help="checkpoint file (overrides --run)")
    evaluate.add_argument("--runs-dir", default="runs", help="where runs are (default: runs)")
    evaluate.add_argument("--episodes", type=int, default=10, help="episodes to play (default: 10)")
    evaluate.add_argument("--greedy", action=argparse.BooleanOptionalAction, default=False,
                          help="play the most probable action instead of sampling from the policy, "
                          "the policy that was trained (default: sampled)")
    evaluate.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                          help="device to run the model on (default: auto)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the first episode (default: 0)")
    evaluate.add_argument("--video", action="store_true",
                          help="record each episode as an MP4 at the game's speed (default: off)")
    evaluate.add_argument("--video-dir", help="where the videos go (default: RUN/videos)")
    plot = commands.add_parser("plot", help="plot training and evaluation returns of runs")
    plot.add_argument("runs", nargs="*", help="run directories (default: the newest under --runs-dir)")
    plot.add_argument("--runs-dir", default="runs", help="where runs are (default: runs)")
    plot.add_argument("--output", help="PNG to write (default: RUN/plot.png for one run, else plot.png)")
    plot.add_argument("--smooth", type=int, default=100,
                      help="episodes in the training return's moving mean (default: 100)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"train": command_train, "eval": command_eval, "plot": command_plot}
    try:
        return commands[args.command](args)
    except (ConfigError, CheckpointError) as error:
        print(f"a3c: error: {error}", file=sys.stderr)
        return 2
    except RunWriteError as error:  # a full disk, say: nothing the user typed was wrong
        print(f"a3c: error: {error}", file=sys.stderr)
        return 1
