"""A suite of games in one command: train each with the defaults, one after another, into one
benchmark directory; then score each game (its last evaluation, its best checkpoint played again
over more episodes, its last 100 training episodes), human-normalise the scores, estimate the median
over the 57 Atari games from the Atari-5 and Atari-3 subsets (a3c/scores.py), and write a table and
a picture beside those of published agents.

    python scripts/benchmark.py --suite atari5 --frames 10000000 --dir benchmarks/atari5
    python scripts/benchmark.py --suite pong,breakout,kungfumaster --frames 10000000 -- --workers 16

`make benchmark SUITE=atari5 FRAMES=10000000 WORKERS=N` runs the first. A suite is `atari5`, a
comma-separated list of games, or a file of one game a line. Each game's run is DIR/GAME, its
console output DIR/GAME.log. It resumes: a game that has its frames
is skipped, an interrupted one goes on from its checkpoint, and Ctrl-C stops the suite where it is.
Everything after `--` goes to `a3c train` for every game.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from a3c import api
from a3c.checkpoint import CHECKPOINT_DIR, LATEST, load_checkpoint
from a3c.cli import build_parser, settings_from_args
from a3c.config import Config, ConfigError
from a3c.logger import EVALUATIONS_CSV, TRAIN_EPISODES_CSV, read_rows
from a3c.plot import game_name, smooth
from a3c.scores import (
    PUBLISHED_AGENTS,
    REFERENCE_SCORES,
    SUBSETS,
    agent_estimate,
    game_key,
    human_normalized,
    subset_estimate,
)

SUITES = {"atari5": [f"ALE/{game}-v5" for game in SUBSETS["atari5"].games]}
RESULT = "benchmark.json"  # in each game's run directory: its scores, once measured
MEASURES = ("last_evaluation", "best_checkpoint", "training")


def ale_id(game: str) -> str:
    """"pong", "Pong" or "ALE/Pong-v5" -> "ALE/Pong-v5"; any other Gymnasium id as it is."""
    if "/" in game or "-v" in game:
        return game
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    known = {game_key(env_id): env_id for env_id in gym.registry if env_id.startswith("ALE/") and env_id.endswith("-v5")}
    if game_key(game) not in known:
        raise SystemExit(f"benchmark: no ALE game called {game}")
    return known[game_key(game)]


def suite_games(suite: str) -> list[str]:
    if suite in SUITES:
        return SUITES[suite]
    path = Path(suite)
    names = ([line.split("#")[0].strip() for line in path.read_text().splitlines()] if path.is_file()
             else suite.split(","))
    return [ale_id(name.strip()) for name in names if name.strip()]


def train_game(env_id: str, settings: dict[str, Any], bench_dir: Path) -> Path:
    """Train (or resume, or skip) the game's run; its directory. Ctrl-C stops the whole suite."""
    name = game_name(env_id)
    run_dir = bench_dir / name
    config = Config.from_dict({**settings, "env_id": env_id, "runs_dir": str(bench_dir), "run_name": name})
    log_path = bench_dir / f"{name}.log"
    print(f"{name}: training to {config.total_frames:,} frames (log: {log_path})", flush=True)
    try:
        with open(log_path, "a") as log, contextlib.redirect_stdout(log):
            result = api.train_to_budget(config, settings)
    except ConfigError as error:
        raise SystemExit(f"benchmark: {error}") from None
    if result is None:
        print(f"{name}: has its {config.total_frames:,} frames already", flush=True)
    elif result.stopped:
        raise SystemExit(f"{name}: {result.reason}; run the same command again to go on")
    elif not result.ok:
        raise SystemExit(f"{name}: {result.reason} (see {log_path})")
    return run_dir


def score_game(run_dir: Path, episodes: int) -> dict[str, Any]:
    """The game's scores, cached in its run directory with the checkpoint's frames: a rerun of the
    suite plays them again only for a run that trained on since."""
    cached = run_dir / RESULT
    trained = int(load_checkpoint(run_dir / CHECKPOINT_DIR / LATEST)["frames"])
    if cached.exists() and json.loads(cached.read_text()).get("checkpoint_frames") == trained:
        return dict(json.loads(cached.read_text()))
    config = json.loads((run_dir / "config.json").read_text())
    evaluations = read_rows(run_dir / EVALUATIONS_CSV)
    episodes_rows = read_rows(run_dir / TRAIN_EPISODES_CSV)
    last = evaluations[-1] if evaluations else None
    best = api.Policy.load(run_dir, device="cpu").evaluate(episodes=episodes, seed=10_000)
    returns = [float(r["return"]) for r in sorted(episodes_rows, key=lambda r: int(r["frames"]))]
    result = {
        "env_id": config["env_id"], "checkpoint_frames": trained, "frames": int(last["frames"]) if last else None,
        "seconds": float(last["time"]) if last else None,
        "last_evaluation": float(last["mean_reward"]) if last else None,
        "best_checkpoint": best.mean_reward, "best_checkpoint_std": best.std_reward, "best_episodes": episodes,
        "training": float(np.mean(returns[-100:])) if returns else None,
    }
    cached.write_text(json.dumps(result, indent=2) + "\n")
    return result


def normalized(result: dict[str, Any], measure: str) -> float | None:
    value = result[measure]
    try:
        return None if value is None else human_normalized(result["env_id"], value)
    except KeyError:  # not an Atari game with reference scores
        return None


def report(results: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The markdown table of the games and the estimates, and the same as a dictionary."""
    lines = ["| game | frames | seconds | last evaluation | best checkpoint | training (last 100) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        cells = []
        for measure in MEASURES:
            value, norm = r[measure], normalized(r, measure)
            extra = f" ± {r['best_checkpoint_std']:.1f} ({r['best_episodes']} episodes)" if measure == "best_checkpoint" else ""
            cells.append("-" if value is None else f"{value:,.1f}{extra}" + ("" if norm is None else f"; {norm:.1f}%"))
        lines.append(f"| {game_name(r['env_id'])} | {r['frames'] or 0:,} | {r['seconds'] or 0:,.0f} | " + " | ".join(cells) + " |")
    estimates: dict[str, Any] = {}
    lines += ["", "| estimate of the median over 57 games | " + " | ".join(MEASURES) + " |", "|---|---|---|---|"]
    for key, subset in SUBSETS.items():
        per_measure = {}
        for measure in MEASURES:
            scores = {r["env_id"]: n for r in results if (n := normalized(r, measure)) is not None}
            per_measure[measure] = subset_estimate(subset, scores)
        estimates[key] = per_measure
        lines.append(f"| {subset.name} (±{subset.relative_error:g}%) | "
                     + " | ".join("-" if v is None else f"{v:.1f}%" for v in per_measure.values()) + " |")
    lines += ["", "| published agent | measure | Atari-5 | Atari-3 |", "|---|---|---|---|"]
    published = {}
    for agent in PUBLISHED_AGENTS:
        values = [agent_estimate(agent, SUBSETS["atari5"]), agent_estimate(agent, SUBSETS["atari3"])]
        published[agent.label] = values
        lines.append(f"| {agent.label} | {agent.measure} | "
                     + " | ".join("- (lacks a game)" if v is None else f"{v:.1f}%" for v in values) + " |")
    return "\n".join(lines), {"games": results, "estimates": estimates, "published": published}


def picture(bench_dir: Path, results: list[dict[str, Any]], estimates: dict[str, Any], output: Path) -> None:
    """Each game's training return, human-normalised, against frames; and the estimates beside
    those of published agents at their budgets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    figure, (curves, summary) = plt.subplots(1, 2, figsize=(14, 5))
    for r in results:
        episodes = sorted(read_rows(bench_dir / game_name(r["env_id"]) / TRAIN_EPISODES_CSV), key=lambda e: int(e["frames"]))
        if not episodes or game_key(r["env_id"]) not in REFERENCE_SCORES:
            continue
        frames = np.array([int(e["frames"]) for e in episodes])
        values = np.array([human_normalized(r["env_id"], float(e["return"])) for e in episodes])
        curves.plot(frames, smooth(values, 100), label=game_name(r["env_id"]))
    curves.set(title="Training return, human-normalised (last 100 episodes)", xlabel="frames",
               ylabel="% of human over random")
    curves.xaxis.set_major_formatter(EngFormatter())
    budget = max((r["frames"] or 0 for r in results), default=0)
    for number, measure in enumerate(MEASURES):
        for key, marker in (("atari5", "o"), ("atari3", "s")):
            value = estimates[key][measure]
            if value is not None:
                summary.scatter([budget], [value], marker=marker, color=f"C{number}",
                                label=f"here, {measure.replace('_', ' ')}: {SUBSETS[key].name} {value:.1f}%")
    budgets = [budget]
    for number, agent in enumerate(PUBLISHED_AGENTS):  # a point at its budget; a line where it had none
        value = agent_estimate(agent, SUBSETS["atari5"])
        if value is None:
            continue
        label = f"{agent.label}: Atari-5 {value:.1f}%"
        if agent.frames is None:
            summary.axhline(value, color="0.4", linestyle=("--", ":", "-.")[number % 3], linewidth=1, label=label)
        else:
            summary.scatter([agent.frames], [value], marker="D", color="0.3", label=label)
            budgets.append(agent.frames)
    summary.set(title="Estimated median human-normalised score over 57 games", xlabel="frames",
                ylabel="%", xlim=(0, 1.1 * max(budgets)), ylim=(0, None))
    summary.xaxis.set_major_formatter(EngFormatter())
    summary.legend(fontsize="x-small")
    if curves.get_legend_handles_labels()[0]:
        curves.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="atari5", help="atari5, a comma-separated list of games, or a file")
    parser.add_argument("--frames", type=int, default=10_000_000, help="frames per game")
    parser.add_argument("--dir", help="the benchmark directory (default: benchmarks/SUITE)")
    parser.add_argument("--episodes", type=int, default=30, help="episodes the best checkpoint is played again")
    args = parser.parse_args(argv[:split])
    settings = {**settings_from_args(build_parser().parse_args(["train", *argv[split + 1:]])),
                "total_frames": args.frames}
    bench_dir = Path(args.dir or Path("benchmarks") / Path(args.suite).stem.replace(",", "-"))
    bench_dir.mkdir(parents=True, exist_ok=True)
    games = suite_games(args.suite)
    print(f"benchmark {bench_dir}: {len(games)} games, {args.frames:,} frames each", flush=True)
    results = []
    for env_id in games:
        run_dir = train_game(env_id, settings, bench_dir)
        results.append(score_game(run_dir, args.episodes))
        print(f"{game_name(env_id)}: {json.dumps(results[-1])}", flush=True)
    table, summary = report(results)
    print(table)
    (bench_dir / "benchmark.md").write_text(table + "\n")
    (bench_dir / "benchmark.json").write_text(json.dumps(summary, indent=2) + "\n")
    picture(bench_dir, results, summary["estimates"], bench_dir / "benchmark.png")
    print(f"wrote {bench_dir / 'benchmark.md'}, benchmark.json and benchmark.png", flush=True)


if __name__ == "__main__":
    main()
