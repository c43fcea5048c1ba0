"""How many of a trained network's body units still fire: per body layer, the units (conv channels,
hidden units) whose output is positive somewhere on N frames of random play. A ReLU unit that is
never positive gets no gradient and never learns again.

    python scripts/dead_units.py runs/KungFuMaster-seed1/checkpoints/latest.pt [more checkpoints] [--frames 600]

With ELU (`--activation elu`) a unit that is never positive still passes gradient; its count says
how many units ever take the linear side.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from a3c.api import Policy
from a3c.config import Config
from a3c.envs import make_env


def random_play(config: Config, n_actions: int, frames: int, seed: int = 0) -> torch.Tensor:
    """`frames` observations of random play, episodes restarted as they end."""
    env = make_env(config, seed=seed)
    rng = np.random.default_rng(seed)
    observations = []
    env.reset(seed=seed)
    for _ in range(frames):
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(n_actions)))
        observations.append(obs)
        if terminated or truncated:
            env.reset()
    env.close()
    return torch.from_numpy(np.stack(observations))


@torch.no_grad()
def units_ever_positive(path: str, frames: int) -> tuple[int, list[tuple[int, int]]]:
    """The checkpoint's frames and, per body layer, (units ever positive, units)."""
    policy = Policy.load(path, device="cpu")
    model = policy.model
    observations = random_play(policy.config, policy.checkpoint["n_actions"], frames)
    # encode computes the scaled input and every body layer's output into these
    record = [torch.empty((frames, *shape)) for shape in model.activation_shapes()]
    model.encode(observations, model.body_weights(), record)
    counts = []
    for layer, output in zip(model.body_layers(), record[1:], strict=True):
        units = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        per_unit = output.amax(dim=(0, 2, 3)) if output.dim() == 4 else output.amax(dim=0)
        counts.append((int((per_unit > 0).sum()), units))
    return policy.frames, counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--frames", type=int, default=600, help="agent steps of random play")
    args = parser.parse_args(argv)
    for path in args.checkpoints:
        frames, counts = units_ever_positive(path, args.frames)
        layers = "  ".join(f"{alive}/{units}" for alive, units in counts)
        print(f"{path}  at {frames:,} frames  units ever positive per body layer: {layers}")


if __name__ == "__main__":
    main()
