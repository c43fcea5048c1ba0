"""How much a late update's gradient differs from the one it would have had on time, and how much
of that difference delay compensation (DC-ASGD, Zheng et al. 2017) could remove.

From a checkpoint (its weights and shared Adam state), W workers take turns in one process, as W
asynchronous workers do when each takes as long as the others: a worker copies the shared weights,
plays its rollout, and by its own step the other W - 1 have stepped. For each update this compares,
on the same rollout, the A3C loss's gradient at the weights the worker copied (what it hands over)
with the gradient at the shared weights it lands on (what it would hand over with no delay), in
float32 with a3c/reference.py. Beside them:

- the sampling noise: how far apart two successive updates' on-time gradients are (different
  rollouts, weights one step apart);
- how far the critic moved on the rollout's observations, |V(w_now) - V(w_copy)|, beside the size of
  the rollout's advantages (their root mean square), the signal it estimates;
- DC-ASGD's correction g + lambda g*g*(w_now - w_copy), plain and adaptive (lambda over the root
  of Adam's mean squared gradient), each with the lambda that fits that update best: a bound on what
  any fixed lambda could do.

    python scripts/stale_gradients.py RUN/checkpoints/latest.pt --workers 2 4 8 16 --updates 120
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from a3c import reference
from a3c.checkpoint import load_checkpoint, restore_model, restore_training
from a3c.config import Config
from a3c.envs import env_spaces
from a3c.model import LstmState, build_model
from a3c.shared import SharedTraining
from a3c.worker import AdvantageScale, Rollout, Worker, seed_stream


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a, b) / (a.norm() * b.norm() + 1e-30))


def relative_error(estimate: torch.Tensor, target: torch.Tensor) -> float:
    return float((estimate - target).norm() / (target.norm() + 1e-30))


def best_fit_error(gradient: torch.Tensor, correction: torch.Tensor, target: torch.Tensor) -> float:
    """The relative error of gradient + lambda * correction with the lambda that minimises it."""
    lam = float(torch.dot(correction, target - gradient) / (torch.dot(correction, correction) + 1e-30))
    return relative_error(gradient + lam * correction, target)


@dataclass
class UpdateComparison:
    cosine: float            # late gradient against on-time gradient
    error: float             # |late - on time| / |on time|
    noise_cosine: float      # on-time gradient against the previous update's (nan for the first)
    noise_error: float
    dc_error: float          # with DC-ASGD's correction at its best lambda
    dc_adaptive_error: float
    value_shift: float       # mean |V(w_now) - V(w_copy)| over the rollout's observations
    advantage_rms: float     # the rollout's advantages' root mean square
    weight_drift: float      # |w_now - w_copy| / |w_copy|


class TurnTakingWorker:
    """A worker whose acting observations are recorded, for the reference gradient of its rollout."""

    def __init__(self, worker_id: int, config: Config, shared: SharedTraining) -> None:
        self.worker = Worker(worker_id, config, shared, seed_stream(config.seed, worker_id))
        self.observations: list[torch.Tensor] = []
        tape = self.worker.rollout.tape
        act = tape.act

        def recording_act(obs: torch.Tensor, state: LstmState | None) -> tuple[torch.Tensor, torch.Tensor,
                                                                               LstmState | None]:
            self.observations.append(obs.clone())
            return act(obs, state)

        tape.act = recording_act  # type: ignore[method-assign]
        self.copied_weights = torch.empty(0)
        self.rollout: Rollout | None = None

    def copy_and_play(self) -> None:
        self.worker.sync_weights()
        self.copied_weights = self.worker.local_params.clone()
        self.observations.clear()
        self.rollout = self.worker.collect()

    def entropy_scale(self) -> float:
        """What the worker's next update multiplies its entropy bonus by (1 before any update)."""
        scale = self.worker.advantage_scale
        return 1.0 if scale is None else AdvantageScale.entropy_factor(scale.scale())

    def gradient_at(self, model: torch.nn.Module, weights: torch.Tensor, config: Config) -> torch.Tensor:
        """reference.py's A3C-loss gradient of the played rollout, with `weights` in `model`."""
        rollout = self.rollout
        assert rollout is not None
        torch.nn.utils.vector_to_parameters(weights, model.parameters())
        state = None if rollout.initial_state is None else tuple(s.clone() for s in rollout.initial_state)
        loss = reference.a3c_loss(model, self.observations[:rollout.steps], state,  # type: ignore[arg-type]
                                  rollout.actions, rollout.rewards, rollout.next_values, rollout.terminated,
                                  rollout.ended, config.gamma, config.gae_lambda, config.entropy_coef,
                                  config.value_loss_coef, torch.float32, self.entropy_scale())
        return reference.gradient(model, loss)  # type: ignore[arg-type]

    @torch.no_grad()
    def value_shift_and_advantages(self, model: torch.nn.Module, now: torch.Tensor, config: Config
                                   ) -> tuple[float, float]:
        """Mean |V(now) - V(copy)| on the rollout's observations; its advantages' root mean square."""
        rollout = self.rollout
        assert rollout is not None
        observations = torch.cat(self.observations[:rollout.steps])
        values = []
        for weights in (self.copied_weights, now):
            torch.nn.utils.vector_to_parameters(weights, model.parameters())
            values.append(model(observations)[1])
        _, advantages = reference.returns_and_advantages(rollout.rewards, rollout.values, rollout.next_values,
                                                         rollout.terminated, rollout.ended, config.gamma,
                                                         config.gae_lambda)
        return float((values[1] - values[0]).abs().mean()), float(advantages.pow(2).mean().sqrt())


def compare(checkpoint: str, workers: int, rounds: int, seed: int, lr: float | None = None,
            adam_beta1: float | None = None) -> list[UpdateComparison]:
    """Every update of `rounds` turns of `workers` turn-taking workers, from `checkpoint`'s state and
    settings, but `lr` where given and `adam_beta1` (by default the worker count's)."""
    payload = load_checkpoint(checkpoint)
    saved = Config.from_saved(payload["config"])
    config = replace(saved, workers=workers, seed=seed, precision="float32", adam_beta1=adam_beta1,
                     lr=saved.lr if lr is None else lr)
    obs_shape, n_actions = env_spaces(config)
    model = build_model(config, obs_shape, n_actions)
    restore_model(model, payload, checkpoint)
    shared = SharedTraining.create(model, config)
    restore_training(shared, payload)
    scratch = build_model(config, obs_shape, n_actions)  # holds the weights a reference gradient is taken at
    mean_squares = shared.optimizer.state["exp_avg_sq" if config.optimizer == "adam" else "square_avg"][0]
    beta2 = config.adam_betas[1] if config.optimizer == "adam" else 0.0
    turn_takers = [TurnTakingWorker(k, config, shared) for k in range(workers)]
    try:
        for taker in turn_takers:  # all play on the same weights; the first steps then land in turn
            taker.copy_and_play()
        results, previous_on_time = [], None
        for _ in range(rounds):
            for taker in turn_takers:
                now = shared.params.clone()
                late = taker.gradient_at(scratch, taker.copied_weights, config)
                on_time = taker.gradient_at(scratch, now, config)
                drift = now - taker.copied_weights
                curvature = late * late * drift  # DC-ASGD's diagonal estimate times the drift
                steps = float(shared.optimizer.steps[0])
                mean_square = mean_squares / (1 - beta2 ** steps) if beta2 else mean_squares
                noise = (math.nan, math.nan) if previous_on_time is None else (
                    cosine(on_time, previous_on_time), relative_error(previous_on_time, on_time))
                results.append(UpdateComparison(
                    cosine(late, on_time), relative_error(late, on_time), *noise,
                    best_fit_error(late, curvature, on_time),
                    best_fit_error(late, curvature / (mean_square.sqrt() + 1e-8), on_time),
                    *taker.value_shift_and_advantages(scratch, now, config),
                    float(drift.norm() / taker.copied_weights.norm())))
                previous_on_time = on_time
                assert taker.rollout is not None
                taker.worker.update(taker.rollout)  # the worker's own late step, as in training
                taker.copy_and_play()
        return results
    finally:
        for taker in turn_takers:
            taker.worker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="+")
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 16], help="worker counts to compare")
    parser.add_argument("--updates", type=int, default=120, help="updates compared per checkpoint and count")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lr", type=float, default=None, help="the learning rate (the checkpoint's run's)")
    parser.add_argument("--adam-beta1", type=float, default=None, help="Adam's beta1 (by the worker count)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    columns = ("cosine", "error", "noise_cosine", "noise_error", "dc_error", "dc_adaptive_error", "value_shift",
               "advantage_rms", "weight_drift")
    print("| checkpoint | workers | updates | " + " | ".join(columns) + " |")
    print("|---|---|---|" + "---|" * len(columns))
    for checkpoint in args.checkpoint:
        for workers in args.workers:
            rounds = 1 + math.ceil(args.updates / workers)
            # The first round is left out: it landed on weights the others had not all moved yet.
            results = compare(checkpoint, workers, rounds, args.seed, args.lr, args.adam_beta1)[workers:]
            means = [float(np.nanmean([getattr(r, name) for r in results])) for name in columns]
            print(f"| {checkpoint} | {workers} | {len(results)} | " + " | ".join(f"{m:.3g}" for m in means) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
