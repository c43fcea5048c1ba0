"""Adam and RMSProp whose state and step counts live in shared memory, stepped lock-free by every worker.

Each update is torch's own functional optimizer (Adam fused into one kernel where this torch has a
fused Adam for the device: CPU from torch 2.4, half the time of the per-op version on a worker's
weights), so one process feeding it the same gradients as torch.optim.Adam or torch.optim.RMSprop
gets bit-identical results. Gradients are always passed explicitly to `step`: a shared parameter's
.grad is never used, which avoids the classic aliasing bugs of A3C ports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.optim.adam import adam
from torch.optim.rmsprop import rmsprop


def _adam_step(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
               exp_avg_sqs: list[torch.Tensor], steps: list[torch.Tensor], *, fused: bool, lr: float,
               betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
    adam(params, grads, exp_avgs, exp_avg_sqs, [], steps, foreach=False, capturable=False,
         differentiable=False, fused=fused or None, amsgrad=False, beta1=betas[0], beta2=betas[1], lr=lr,
         weight_decay=0.0, eps=eps, maximize=False)


def fused_adam_available(device: torch.device) -> bool:
    """Whether torch has a fused Adam kernel for `device` (CUDA always; CPU from torch 2.4)."""
    probe = [torch.zeros(1, device=device) for _ in range(4)]
    try:
        _adam_step(probe[:1], probe[1:2], probe[2:3], probe[3:], [torch.zeros((), device=device)], fused=True,
                   lr=0.0)
    except RuntimeError:
        return False
    return True


class SharedOptimizer:
    """What both optimizers share: per-parameter state tensors named as torch.optim names them,
    allocated up front in shared memory so that every process updates the same ones, and
    state_dict/load_state_dict in torch.optim's format."""

    kind = ""                            # the Config.optimizer value
    state_names: tuple[str, ...] = ()    # torch.optim's names of the per-parameter state

    def __init__(self, params: Sequence[torch.Tensor], lr: float, eps: float) -> None:
        self.params = [p.detach() for p in params]
        self.lr, self.eps = lr, eps
        self.state = {name: [torch.zeros_like(p).share_memory_() for p in self.params] for name in self.state_names}
        self.steps = [torch.zeros((), dtype=torch.float32).share_memory_() for _ in self.params]

    def tensors(self) -> list[torch.Tensor]:
        return [t for tensors in self.state.values() for t in tensors] + self.steps

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor], lr: float | None = None) -> None:
        """Apply `grads` (one per parameter, exactly this update's) to the shared parameters."""
        if len(grads) != len(self.params):
            raise ValueError(f"expected {len(self.params)} gradients, got {len(grads)}")
        self._update(list(grads), self.lr if lr is None else lr)

    def _update(self, grads: list[torch.Tensor], lr: float) -> None:
        raise NotImplementedError

    def hyperparameters(self) -> dict[str, Any]:
        """torch.optim's param_group entries of this optimizer, besides lr, eps and params."""
        raise NotImplementedError

    def forget_faster(self, power: float) -> None:
        """Raise the decay rates of the running averages to `power`: as many updates' worth of
        memory when this optimizer sees only every power-th update (a Ray node's share)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """A snapshot in torch.optim's format, cloned out of shared memory."""
        state = {i: {"step": step.clone(), **{name: self.state[name][i].clone() for name in self.state_names}}
                 for i, step in enumerate(self.steps)}
        group = {"lr": self.lr, "eps": self.eps, "weight_decay": 0.0, "maximize": False, **self.hyperparameters(),
                 "params": list(range(len(self.params)))}
        return {"state": state, "param_groups": [group]}

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Copy a saved state into the existing shared tensors, so it stays shared."""
        state = state_dict["state"]
        if len(state) != len(self.params):
            raise ValueError(f"optimizer state has {len(state)} parameters, expected {len(self.params)}")
        for i, step in enumerate(self.steps):
            entry = state[i]
            if set(entry) != {"step", *self.state_names}:
                raise ValueError(f"optimizer state holds {', '.join(sorted(entry))}, not {self.kind}'s "
                                 f"{', '.join(('step', *self.state_names))}: it was saved by another optimizer")
            for name in self.state_names:
                target = self.state[name][i]
                if entry[name].shape != target.shape:
                    raise ValueError(f"optimizer state {i} has shape {tuple(entry[name].shape)}, "
                                     f"expected {tuple(target.shape)}")
                target.copy_(entry[name])
            step.copy_(torch.as_tensor(entry["step"], dtype=step.dtype))


class SharedAdam(SharedOptimizer):
    kind = "adam"
    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params: Sequence[torch.Tensor], lr: float = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, lr, eps)
        self.betas = betas
        self.fused = fused_adam_available(self.params[0].device)

    def _update(self, grads: list[torch.Tensor], lr: float) -> None:
        _adam_step(self.params, grads, self.state["exp_avg"], self.state["exp_avg_sq"], self.steps,
                   fused=self.fused, lr=lr, betas=self.betas, eps=self.eps)

    def hyperparameters(self) -> dict[str, Any]:
        return {"betas": self.betas, "amsgrad": False}

    def forget_faster(self, power: float) -> None:
        self.betas = (self.betas[0] ** power, self.betas[1] ** power)


class SharedRMSprop(SharedOptimizer):
    """The A3C paper's shared RMSProp: one running mean of squared gradients for all workers, no
    momentum. torch adds eps outside the square root (the paper inside)."""

    kind = "rmsprop"
    state_names = ("square_avg",)

    def __init__(self, params: Sequence[torch.Tensor], lr: float = 7e-4, alpha: float = 0.99,
                 eps: float = 1e-5) -> None:
        super().__init__(params, lr, eps)
        self.alpha = alpha

    def _update(self, grads: list[torch.Tensor], lr: float) -> None:
        rmsprop(self.params, grads, self.state["square_avg"], [], [], self.steps, foreach=False, lr=lr,
                alpha=self.alpha, eps=self.eps, weight_decay=0.0, momentum=0.0, centered=False)

    def hyperparameters(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "momentum": 0.0, "centered": False}

    def forget_faster(self, power: float) -> None:
        self.alpha **= power
