"""The auxiliary task of reward prediction (Jaderberg et al. 2016, "Reinforcement Learning with
Unsupervised Auxiliary Tasks", UNREAL): from an observation, predict the sign of the reward that
follows it.

Where rewards are rare, an update's policy and value losses tell the body little about which states
lead to a reward. This task, on recent observations of which half preceded a reward, tells it
something on every update. Each worker keeps its own memory (nothing shared, no lock) and adds the
task's loss to its update's: the gradient it hands to the shared optimizer is still exactly its own
update's (a3c/reference.py has the same loss step by step).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from a3c.model import ActorCritic, observation_buffer

REWARD_MEMORY = 256  # observations kept per sign of the reward after them (negative, none, positive)
REWARD_BATCH = 16  # observations an update predicts: half that preceded a reward, half that did not
NEGATIVE, NONE, POSITIVE = 0, 1, 2  # the classes: a reward's sign + 1


class RewardMemory:
    """A worker's recent observations, by the sign of the reward that followed each, in rings of
    `capacity` per sign, stored as the worker stores its current observations (observation_buffer)."""

    def __init__(self, obs_shape: tuple[int, ...], dtype: np.dtype, capacity: int = REWARD_MEMORY) -> None:
        self.capacity = capacity
        buffers = [observation_buffer(capacity, obs_shape, dtype) for _ in range(3)]
        self.observations = [tensor for tensor, _ in buffers]  # per class, (capacity, *obs_shape)
        self.storage = [array for _, array in buffers]  # the same, written through numpy
        self.added = [0, 0, 0]

    def add(self, observation: np.ndarray, reward: float) -> None:
        """Keep an observation (a slot of the worker's observation storage) under the sign of the
        reward that followed it, over the oldest of that sign."""
        sign = int(np.sign(reward)) + 1
        self.storage[sign][self.added[sign] % self.capacity] = observation
        self.added[sign] += 1

    def held(self, sign: int) -> int:
        return min(self.added[sign], self.capacity)

    def sample(self, rng: np.random.Generator, size: int = REWARD_BATCH) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`size` observations drawn with replacement, the first half from those that preceded no
        reward, the rest from those that preceded one (either sign, as held), and their classes;
        None until the memory holds both kinds."""
        negative, rewarding = self.held(NEGATIVE), self.held(NEGATIVE) + self.held(POSITIVE)
        if self.held(NONE) == 0 or rewarding == 0:
            return None
        unrewarded = torch.from_numpy(rng.integers(self.held(NONE), size=size - size // 2))
        drawn = torch.from_numpy(rng.integers(rewarding, size=size // 2))  # negative ones first, then positive
        rows = {NONE: unrewarded, NEGATIVE: drawn[drawn < negative], POSITIVE: drawn[drawn >= negative] - negative}
        # Indexed, the rows keep the storage's channels-last layout, the one the body's pass takes.
        observations = torch.cat([self.observations[sign][index] for sign, index in rows.items()])
        classes = torch.cat([torch.full((len(index),), sign) for sign, index in rows.items()])
        return observations, classes


def reward_prediction_loss(model: ActorCritic, features: torch.Tensor, classes: torch.Tensor
                           ) -> tuple[torch.Tensor, float]:
    """The mean cross-entropy of the predicted reward signs of a batch, from its body features (the
    worker's tape computes them, ReplayTape.record), and the share it predicts right."""
    logits = model.reward_logits(features)
    accuracy = float((logits.detach().argmax(1) == classes).float().mean())
    return F.cross_entropy(logits, classes), accuracy
