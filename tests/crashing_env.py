"""A CartPole that raises after a few steps: a worker that keeps dying, for the supervision tests."""

from __future__ import annotations

import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class CrashingCartPole(CartPoleEnv):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.steps = 0

    def step(self, action):
        self.steps += 1
        if self.steps > 50:
            raise RuntimeError("simulated crash inside the environment")
        return super().step(action)


if "CrashingCartPole-v0" not in gym.registry:
    gym.register("CrashingCartPole-v0", entry_point=CrashingCartPole, max_episode_steps=500)
