"""The A3C update in plain autograd: the place to read the algorithm first, and the oracle the
tests hold the fast worker (worker.py, replay.py) to.

Given one rollout of T steps on B environments, played by the model with weights theta:

    R_t   = r_t + gamma * R_{t+1}              the n-step return, R_T = V(s_T); 0 past game over
    A_t   = GAE(lambda) of the TD errors       r_t + gamma * V(s_{t+1}) - V(s_t)  (lambda = 1: R_t - V(s_t))
    loss  = sum_t [ -log pi(a_t | s_t) A_t  - beta e H(pi(. | s_t))  + c / 2 (R_t - V(s_t))^2 ] / B

where e is 1, or with entropy_relative min(1, the root mean square of the worker's recent advantages
over 0.4) (data, not differentiated). In a further pass over the rollout (rollout_passes), under
weights theta' that did not act, R_t and A_t stay those of theta's values, V(s_t) in the value loss
is theta''s, and -log pi(a_t | s_t) A_t becomes PPO's clipped surrogate
-min(rho_t A_t, clip(rho_t, 1 - epsilon, 1 + epsilon) A_t), rho_t = pi'(a_t | s_t) / pi(a_t | s_t) the
ratio to the policy that acted. The update is one step of the shared optimizer (Adam or RMSProp) along
d loss / d theta. With reward prediction on, the first pass adds reward_prediction_loss (below)
times its coefficient times the number of passes, the others nothing. Here everything is computed
again, one step at a time, in float32 (or the acting number format of the body, so that the tests
compare like with like), with torch only: no tape, no numpy, no batching tricks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from a3c.model import ActorCritic, LstmState


def returns_and_advantages(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
                           terminated: torch.Tensor, ended: torch.Tensor, gamma: float, gae_lambda: float
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """n-step returns and GAE advantages of a (T, B) rollout. next_values[t] is V(s_{t+1}) as the
    worker saw it after step t (for an episode cut by a time limit: its final observation's value);
    where an episode ended at t, neither recursion reaches past t, and game over adds no value."""
    returns, advantages = torch.zeros_like(rewards), torch.zeros_like(rewards)
    running_return, running_advantage = next_values[-1], torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        alive = (~terminated[t]).float()
        # An episode that ended at t restarts the return from its own bootstrap value.
        running_return = torch.where(ended[t], next_values[t], running_return)
        running_return = rewards[t] + gamma * alive * running_return
        delta = rewards[t] + gamma * alive * next_values[t] - values[t]
        running_advantage = delta + gamma * gae_lambda * (~ended[t]).float() * running_advantage
        returns[t], advantages[t] = running_return, running_advantage
    return returns, advantages


def a3c_loss(model: ActorCritic, observations: list[torch.Tensor], initial_state: LstmState | None,
             actions: torch.Tensor, rewards: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
             ended: torch.Tensor, gamma: float, gae_lambda: float, entropy_coef: float, value_loss_coef: float,
             body_dtype: torch.dtype = torch.float32, entropy_scale: float = 1.0,
             acting_values: torch.Tensor | None = None, acting_log_probs: torch.Tensor | None = None,
             clip_ratio: float = 0.1) -> torch.Tensor:
    """The loss of a rollout whose step t saw `observations[t]` (B observations), recomputed step by
    step with autograd. `next_values` are data (the bootstrap values the worker saw), not differentiated;
    so is `entropy_scale`, what the entropy bonus is multiplied by (entropy_relative). With the values
    and log pi(a_t | s_t) of the policy that acted, `acting_values` and `acting_log_probs`, the loss is
    a further pass's: the returns and advantages are those of the values that acted, the policy's term
    the clipped surrogate."""
    state = initial_state
    logits, values = [], []
    for t, obs in enumerate(observations):
        if t > 0 and state is not None:  # a new episode starts from a zero LSTM state
            keep = (~ended[t - 1]).float().unsqueeze(1)
            state = (state[0] * keep, state[1] * keep)
        step_logits, step_values, state = model.core(model.encode(obs, model.body_weights(body_dtype)), state)
        logits.append(step_logits)
        values.append(step_values)
    log_probs = F.log_softmax(torch.stack(logits), dim=-1)
    value = torch.stack(values)
    returns, advantages = returns_and_advantages(rewards, value.detach() if acting_values is None else acting_values,
                                                 next_values, terminated, ended, gamma, gae_lambda)
    batch = actions.shape[1]
    action_log_probs = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    if acting_log_probs is None:
        policy_loss = -(action_log_probs * advantages).sum()
    else:
        ratio = torch.exp(action_log_probs - acting_log_probs)
        policy_loss = -torch.min(ratio * advantages,
                                 torch.clamp(ratio, 1 - clip_ratio, 1 + clip_ratio) * advantages).sum()
    entropy = -(log_probs.exp() * log_probs).sum()
    value_loss = 0.5 * (returns - value).pow(2).sum()
    return (policy_loss - entropy_coef * entropy_scale * entropy + value_loss_coef * value_loss) / batch


def gradient(model: ActorCritic, loss: torch.Tensor) -> torch.Tensor:
    """d loss / d parameters, flat, in the order of model.parameters() (the shared weights' order);
    zero for a parameter the loss does not use (the reward-prediction head in the A3C loss)."""
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True, materialize_grads=True)
    return torch.cat([g.reshape(-1) for g in grads])


def reward_prediction_loss(model: ActorCritic, observations: torch.Tensor, classes: torch.Tensor,
                           body_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The auxiliary reward-prediction loss (a3c/auxiliary.py) of a batch, one observation at a time:
    the mean over it of -log p(the sign of the reward after the observation)."""
    losses = []
    for obs, sign in zip(observations, classes, strict=True):
        logits = model.reward_logits(model.encode(obs.unsqueeze(0), model.body_weights(body_dtype)))[0]
        losses.append(-F.log_softmax(logits, dim=-1)[sign])
    return torch.stack(losses).mean()
