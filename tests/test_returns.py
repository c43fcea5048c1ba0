"""n-step returns and GAE against values computed by hand."""

from __future__ import annotations

import pytest
import torch

from a3c import reference
from a3c.worker import returns_and_advantages

GAMMA, LAMBDA = 0.9, 0.5
REWARDS = [1.0, 2.0, 3.0, 4.0]
VALUES = [0.5, 1.0, 1.5, 2.0]


def _run(next_values, terminated, ended):
    column = lambda xs, dtype=torch.float32: torch.tensor(xs, dtype=dtype).unsqueeze(1)
    returns, advantages = returns_and_advantages(
        column(REWARDS), column(VALUES), column(next_values), column(terminated, torch.bool),
        column(ended, torch.bool), GAMMA, LAMBDA)
    return returns.squeeze(1).tolist(), advantages.squeeze(1).tolist()


def test_bootstrap_at_the_end():
    # No episode ends: R_3 = r_3 + g*V(s_4) with V(s_4) = 10, and so on backwards.
    returns, advantages = _run([1.0, 1.5, 2.0, 10.0], [0, 0, 0, 0], [0, 0, 0, 0])
    r3 = 4 + 0.9 * 10            # 13.0
    r2 = 3 + 0.9 * r3            # 14.7
    r1 = 2 + 0.9 * r2            # 15.23
    r0 = 1 + 0.9 * r1            # 14.707
    assert returns == pytest.approx([r0, r1, r2, r3])
    d = [1 + 0.9 * 1.0 - 0.5, 2 + 0.9 * 1.5 - 1.0, 3 + 0.9 * 2.0 - 1.5, 4 + 0.9 * 10 - 2.0]
    a3 = d[3]
    a2 = d[2] + 0.45 * a3
    a1 = d[1] + 0.45 * a2
    a0 = d[0] + 0.45 * a1
    assert advantages == pytest.approx([a0, a1, a2, a3])


def test_terminal_inside_the_rollout_does_not_bootstrap():
    # The episode terminates after step 1; steps 2-3 belong to a new episode bootstrapped by 10.
    # next_values[1] is deliberately large: termination must ignore it.
    returns, advantages = _run([1.0, 99.0, 2.0, 10.0], [0, 1, 0, 0], [0, 1, 0, 0])
    r1 = 2.0
    r0 = 1 + 0.9 * r1
    r3 = 4 + 0.9 * 10
    r2 = 3 + 0.9 * r3
    assert returns == pytest.approx([r0, r1, r2, r3])
    d1 = 2 - 1.0
    d0 = 1 + 0.9 * 1.0 - 0.5
    d3 = 4 + 0.9 * 10 - 2.0
    d2 = 3 + 0.9 * 2.0 - 1.5
    assert advantages == pytest.approx([d0 + 0.45 * d1, d1, d2 + 0.45 * d3, d3])


def test_truncation_bootstraps_from_the_final_observation():
    # A time limit after step 1: V(final obs) = 5 bootstraps step 1; the recursion stops there.
    returns, advantages = _run([1.0, 5.0, 2.0, 10.0], [0, 0, 0, 0], [0, 1, 0, 0])
    r1 = 2 + 0.9 * 5
    r0 = 1 + 0.9 * r1
    r3 = 4 + 0.9 * 10
    r2 = 3 + 0.9 * r3
    assert returns == pytest.approx([r0, r1, r2, r3])
    d1 = 2 + 0.9 * 5 - 1.0
    d0 = 1 + 0.9 * 1.0 - 0.5
    d3 = 4 + 0.9 * 10 - 2.0
    d2 = 3 + 0.9 * 2.0 - 1.5
    assert advantages == pytest.approx([d0 + 0.45 * d1, d1, d2 + 0.45 * d3, d3])


def test_lambda_one_gives_the_n_step_advantage():
    column = lambda xs: torch.tensor(xs).unsqueeze(1)
    next_values = column([1.0, 1.5, 2.0, 10.0])
    flags = torch.zeros(4, 1, dtype=torch.bool)
    returns, advantages = returns_and_advantages(column(REWARDS), column(VALUES), next_values,
                                                 flags, flags, GAMMA, 1.0)
    assert advantages.squeeze(1).tolist() == pytest.approx((returns - column(VALUES)).squeeze(1).tolist())


@pytest.mark.parametrize("gae_lambda", [1.0, 0.95])
def test_the_worker_and_the_reference_compute_the_same_returns_and_advantages(gae_lambda):
    generator = torch.Generator().manual_seed(0)
    steps, batch = 20, 6
    rewards, values, next_values = (torch.randn(steps, batch, generator=generator) for _ in range(3))
    ended = torch.rand(steps, batch, generator=generator) < 0.15
    terminated = ended & (torch.rand(steps, batch, generator=generator) < 0.5)  # the others: time limits
    fast = returns_and_advantages(rewards, values, next_values, terminated, ended, 0.99, gae_lambda)
    plain = reference.returns_and_advantages(rewards, values, next_values, terminated, ended, 0.99, gae_lambda)
    for mine, theirs in zip(fast, plain, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
