"""How many of a trained network's body units still fire: per body layer, the units (conv channels,
hidden units) whose output is positive somewhere on N frames of random play. A ReLU unit that is
never positive gets no gradient and never learns again.

    python scripts/dead_units.py runs/KungFuMaster-seed1/checkpoints/latest.pt [more checkpoints] [--frames 600] [--detail]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

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


@dataclass
class LayerUse:
    alive: int  # units whose output is positive on some observation
    units: int
    mean_output: float  # over units, positions and observations
    busiest_unit_mean: float  # the largest of the units' mean outputs
    median_peak_input: float  # the median over units of a unit's highest input to its activation


@torch.no_grad()
def layer_use(path: str, frames: int) -> tuple[int, list[LayerUse]]:
    """The checkpoint's frames and how each body layer's units respond to `frames` observations."""
    policy = Policy.load(path, device="cpu")
    model = policy.model
    observations = random_play(policy.config, policy.checkpoint["n_actions"], frames)
    # encode computes the scaled input and every body layer's output into these
    record = [torch.empty((frames, *shape)) for shape in model.activation_shapes()]
    model.encode(observations, model.body_weights(), record)
    layers = []
    for layer, before, output in zip(model.body_layers(), record[:-1], record[1:], strict=True):
        if isinstance(layer, nn.Conv2d):
            units, unit_dims = layer.out_channels, (0, 2, 3)
            pre_activation = F.conv2d(before, layer.weight, layer.bias, layer.stride)
        else:
            units, unit_dims = layer.out_features, (0,)
            pre_activation = F.linear(before.flatten(1), layer.weight, layer.bias)
        per_unit_max = output.amax(dim=unit_dims)
        layers.append(LayerUse(int((per_unit_max > 0).sum()), units, float(output.mean()),
                               float(output.mean(dim=unit_dims).max()),
                               float(pre_activation.amax(dim=unit_dims).median())))
    return policy.frames, layers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--frames", type=int, default=600, help="agent steps of random play")
    parser.add_argument("--detail", action="store_true",
                        help="per layer also the mean output, the busiest unit's mean output and the median "
                             "unit's highest input to its activation (below 0: the unit is silent)")
    args = parser.parse_args(argv)
    for path in args.checkpoints:
        frames, layers = layer_use(path, args.frames)
        print(f"{path}  at {frames:,} frames  units ever positive per body layer: "
              + "  ".join(f"{layer.alive}/{layer.units}" for layer in layers))
        if args.detail:
            for i, layer in enumerate(layers, 1):
                print(f"  layer {i}: mean output {layer.mean_output:.4f}, busiest unit's mean "
                      f"{layer.busiest_unit_mean:.4f}, median unit's highest input {layer.median_peak_input:+.3f}")


if __name__ == "__main__":
    main()
