"""What the network's input looks like in a game: the per-observation pixel statistics of N frames
of random play (on the [0, 1] scale), and the gain and the background that `--frame-norm background`
takes from them.

    python scripts/frame_stats.py --env-id ALE/Pong-v5 ALE/Breakout-v5 ALE/KungFuMaster-v5 [--frames 3000]

If an observation's statistics hardly vary within a game, the transform is in effect one fixed
shift and gain for the game. "gain" is 1 / (std + eps); "0 becomes" is what a black pixel would
become centred on the mean (docs/experiments.md: centring on the mean slowed Breakout);
"background" is the commonest pixel value, the centre `background` takes.

With --colours, the screen colours of random play that the grey frame gives one grey level: sprites
that a grey observation cannot tell apart by shade (each colour with its share of the screen's pixels).
"""

from __future__ import annotations

import argparse
import collections

import numpy as np
import torch

# scripts/ is the script's own folder, so first on sys.path
from dead_units import random_play

from a3c.config import Config
from a3c.envs import AtariEnv, action_count, env_spaces
from a3c.model import STANDARDIZE_EPS, commonest_values


def frame_stats(env_id: str, frames: int, seed: int = 0) -> dict[str, float]:
    """Means over `frames` observations (and spread across them) of each one's statistics."""
    config = Config(env_id=env_id)
    _, n_actions = env_spaces(config)
    observations = random_play(config, n_actions, frames, seed)
    backgrounds = torch.tensor(commonest_values(observations), dtype=torch.float64) / 255.0
    pixels = observations.flatten(1).double() / 255.0
    means, stds = pixels.mean(1), pixels.std(1, correction=0)
    gains = 1.0 / (stds + STANDARDIZE_EPS)
    return {"min": pixels.min(1).values.mean().item(), "max": pixels.max(1).values.mean().item(),
            "mean": means.mean().item(), "mean_spread": means.std().item(),
            "std": stds.mean().item(), "std_spread": stds.std().item(),
            "gain": gains.mean().item(), "zero_after": (-means * gains).mean().item(),
            "background": backgrounds.mean().item(), "background_spread": backgrounds.std().item()}


def shared_greys(env_id: str, steps: int, seed: int = 0, min_share: float = 1e-4
                 ) -> tuple[int, int, dict[int, list[tuple[tuple[int, ...], float]]]]:
    """The colours on screen in `steps` steps of random play (every fifth screen), the grey levels
    ALE gives them, and each grey level that two or more colours covering at least `min_share` of
    the pixels share: {grey: [(rgb, share), ...]}."""
    env = AtariEnv(env_id, screen_size=84, noop_max=0)
    ale, actions = env.ale, action_count(env)
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    pixels: collections.Counter[tuple[int, ...]] = collections.Counter()
    grey_of: dict[tuple[int, ...], int] = {}
    for step in range(steps):
        _, _, terminated, truncated, _ = env.step(int(rng.integers(actions)))
        if step % 5 == 0:
            colours, first, counts = np.unique(ale.getScreenRGB().reshape(-1, 3), axis=0, return_index=True,
                                               return_counts=True)
            greys = ale.getScreenGrayscale().reshape(-1)[first]
            for colour, grey, count in zip(map(tuple, colours.tolist()), greys.tolist(), counts.tolist(), strict=True):
                pixels[colour] += count
                grey_of[colour] = grey
        if terminated or truncated:
            env.reset()
    env.close()
    total = sum(pixels.values())
    by_grey: dict[int, list[tuple[tuple[int, ...], float]]] = collections.defaultdict(list)
    for colour, grey in grey_of.items():
        if pixels[colour] / total >= min_share:
            by_grey[grey].append((colour, pixels[colour] / total))
    shared = {grey: sorted(group, key=lambda item: -item[1]) for grey, group in sorted(by_grey.items()) if len(group) > 1}
    return len(grey_of), len(set(grey_of.values())), shared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", nargs="+", default=["ALE/Pong-v5", "ALE/Breakout-v5", "ALE/KungFuMaster-v5"])
    parser.add_argument("--frames", type=int, default=3000, help="observations of random play per game")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--colours", action="store_true",
                        help="instead, the colours that share a grey level (at least 0.01%% of the pixels each)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.colours:
        for env_id in args.env_id:
            colours, greys, shared = shared_greys(env_id, args.frames, args.seed)
            groups = "; ".join(f"grey {grey}: " + ", ".join(f"RGB {rgb} {100 * share:.2f}%" for rgb, share in group)
                               for grey, group in shared.items())
            print(f"{env_id}: {colours} colours, {greys} grey levels; sharing one: {groups or 'none'}")
        return
    print(f"{'game':24s} {'min':>6s} {'max':>6s} {'mean':>14s} {'std':>14s} {'gain':>6s} {'0 becomes':>10s} {'background':>14s}")
    for env_id in args.env_id:
        s = frame_stats(env_id, args.frames, args.seed)
        print(f"{env_id:24s} {s['min']:6.3f} {s['max']:6.3f} {s['mean']:7.3f} ± {s['mean_spread']:.3f} "
              f"{s['std']:7.3f} ± {s['std_spread']:.3f} {s['gain']:6.2f} {s['zero_after']:10.2f} "
              f"{s['background']:7.3f} ± {s['background_spread']:.3f}")


if __name__ == "__main__":
    main()
