"""How many agent steps before a reward the last action that earned it was taken, in random play.

For each positive reward the script goes back j steps (restoring the emulator's saved state) and
plays no-ops from there: while the reward still comes, the actions of those j steps did not earn it.
The first j at which it no longer comes is the reward's delay: the n-step return sees an action's
reward directly only when the delay is within t_max (docs/experiments.md, "Games beyond the three").

    python scripts/reward_delay.py --env-id ALE/BattleZone-v5 --rewards 30
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from a3c.envs import AtariEnv


def noops_collect_reward(env: AtariEnv, state: Any, steps: int) -> bool:
    """Whether no-ops for `steps` agent steps from the emulator `state` collect a positive reward."""
    env.ale.restoreState(state)
    noop = env.ale.getMinimalActionSet()[0]
    return any(env.ale.act(noop) > 0 for _ in range(steps * env.frame_skip))


def reward_delays(env_id: str, rewards: int, max_delay: int, seed: int, max_steps: int) -> list[int]:
    """The delays of the first `rewards` positive rewards of uniform random play (at most
    `max_steps` agent steps of it); a reward whose delay exceeds `max_delay` counts as max_delay."""
    env = AtariEnv(env_id, screen_size=84)
    ale = env.ale
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    states: list[Any] = []
    delays: list[int] = []
    for _ in range(max_steps):
        if len(delays) >= rewards:
            break
        states.append(ale.cloneState())
        _, reward, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        if terminated or truncated:
            env.reset()
            states.clear()
            continue
        if reward > 0 and len(states) > max_delay:
            after = ale.cloneState()
            delay = next((j for j in range(1, max_delay + 1)
                          if not noops_collect_reward(env, states[-j], j + 1)), max_delay)
            delays.append(delay)
            ale.restoreState(after)
    env.close()
    return delays


def table_row(env_id: str, delays: list[int]) -> str:
    """One game's markdown row: how many delays, their median, 90th percentile and maximum, and the
    shares within the default t_max (5) and within 20 steps."""
    if not delays:
        return f"| {env_id} | 0 | | | | | |"
    ordered = sorted(delays)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    within = [f"{sum(d <= steps for d in ordered) / len(ordered):.0%}" for steps in (5, 20)]
    return (f"| {env_id} | {len(ordered)} | {statistics.median(ordered):g} | {p90} | {ordered[-1]} "
            f"| {within[0]} | {within[1]} |")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-id", nargs="+", default=["ALE/BattleZone-v5"], help="ALE games")
    parser.add_argument("--rewards", type=int, default=30, help="positive rewards measured per game")
    parser.add_argument("--max-delay", type=int, default=60, help="agent steps looked back at most")
    parser.add_argument("--max-steps", type=int, default=200_000, help="agent steps of random play at most")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    print("| game | rewards | delay: median | 90th percentile | max | within 5 | within 20 |")
    print("|---|---|---|---|---|---|---|")
    for env_id in args.env_id:
        print(table_row(env_id, reward_delays(env_id, args.rewards, args.max_delay, args.seed, args.max_steps)))


if __name__ == "__main__":
    main()
