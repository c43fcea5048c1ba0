"""Where a trained policy's episodes are won and lost, life by life: for each episode the step and
the score at which each life ended, and the points each life added. An Atari score that stalls may
come from one life that does well and later ones that add little (the states after a death), or
from every life ending alike; the mean return does not tell them apart.

    python scripts/lives.py runs/Qbert-seed1 [--episodes 6] [--screens DIR] [--trace 20]

With --screens, the screen at each lost life is written as DIR/episode{E}-life{L}.png; with
--trace N, the last N steps before each lost life are printed: the critic's value, the policy's
entropy, the action and its probability, the reward.
"""

from __future__ import annotations

import argparse
import collections
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from a3c.api import Policy


@dataclass
class Step:
    value: float  # the critic's value of the observation acted on
    entropy: float  # the policy's entropy there, in nats
    action: int
    probability: float  # the policy's probability of that action
    reward: float


@dataclass
class LifeEnd:
    step: int  # agent steps into the episode when the life was lost (or the episode ended)
    score: float  # the episode's score then
    last_steps: list[Step] = field(default_factory=list)  # the trace's steps before it, oldest first


@torch.inference_mode()
def play(policy: Policy, seed: int, screens: Path | None = None, episode: int = 0, trace: int = 0) -> list[LifeEnd]:
    """One episode sampled from the policy (reset with `seed`): where each life ended, the last
    entry the episode's end."""
    env = policy.make_env(render_mode="rgb_array" if screens else None)
    generator = torch.Generator().manual_seed(seed)
    recent: collections.deque[Step] = collections.deque(maxlen=trace)
    try:
        observation, info = env.reset(seed=seed)
        lives, score, step, state = info.get("lives", 0), 0.0, 0, None
        ends: list[LifeEnd] = []
        while True:
            logits, value, state = policy.model(torch.as_tensor(observation).unsqueeze(0), state)
            probabilities = logits.softmax(-1)[0]
            action = int(torch.multinomial(probabilities, 1, generator=generator))
            observation, reward, terminated, truncated, info = env.step(action)
            score, step = score + float(reward), step + 1
            recent.append(Step(float(value), float(-(probabilities * probabilities.log()).sum()), action,
                               float(probabilities[action]), float(reward)))
            if info.get("lives", 0) < lives or terminated or truncated:
                ends.append(LifeEnd(step, score, list(recent)))
                if screens is not None:
                    screen = np.asarray(env.render())  # RGB
                    cv2.imwrite(str(screens / f"episode{episode}-life{len(ends)}.png"), screen[:, :, ::-1])
                lives = info.get("lives", 0)
                recent.clear()
            if terminated or truncated:
                return ends
    finally:
        env.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run directory (its best checkpoint) or checkpoint file")
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--seed", type=int, default=100, help="episode i is reset with seed + i")
    parser.add_argument("--screens", type=Path, help="write the screen at each lost life here")
    parser.add_argument("--trace", type=int, default=0, help="print this many steps before each lost life")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    policy = Policy.load(args.run, device="cpu")
    if args.screens:
        args.screens.mkdir(parents=True, exist_ok=True)
    print(f"{policy.path} at {policy.frames:,} frames: per life, the step it ended at and the points it added")
    added = []
    for episode in range(args.episodes):
        ends = play(policy, args.seed + episode, args.screens, episode, args.trace)
        gains = np.diff([0.0] + [end.score for end in ends])
        added.append(gains)
        lives = "  ".join(f"{end.step}: +{gain:g}" for end, gain in zip(ends, gains, strict=True))
        print(f"episode {episode}: {ends[-1].score:g} in {ends[-1].step} steps | {lives}")
        for life, end in enumerate(ends, 1):
            if end.last_steps:
                print(f"  life {life}, its last steps: value, entropy, action, its probability, reward")
            first = end.step - len(end.last_steps) + 1
            for step, row in enumerate(end.last_steps, first):
                print(f"    step {step}: {row.value:.3f} {row.entropy:.2f} {row.action} {row.probability:.2f} "
                      f"{row.reward:g}")
    longest = max(len(gains) for gains in added)
    means = [np.mean([gains[i] for gains in added if len(gains) > i]) for i in range(longest)]
    print("mean points added by life 1, 2, ...: " + ", ".join(f"{mean:.0f}" for mean in means))


if __name__ == "__main__":
    main()
