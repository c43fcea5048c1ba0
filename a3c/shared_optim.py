"""Adam whose moments and step counts live in shared memory, stepped lock-free by every worker.

The update is torch's own functional Adam, fused into one kernel where this torch has a fused Adam
for the device (CPU from torch 2.4: half the time of the per-op version on a worker's 87k
weights), so one process feeding it the same gradients as torch.optim.Adam with the same `fused`
setting gets bit-identical results. Gradients are always passed explicitly to `step`: a
shared parameter's .grad is never used, which avoids the classic aliasing bugs of A3C ports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.optim.adam import adam


def _adam_step(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
               exp_avg_sqs: list[torch.Tensor], steps: list[torch.Tensor], *, fused: bool, lr: float,
               betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> None:
    adam(params, grads, exp_avgs, exp_avg_sqs, [], steps, foreach=False, capturable=False,
         differentiable=False, fused=fused or None, amsgrad=False, beta1=betas[0], beta2=betas[1], lr=lr,
         weight_decay=weight_decay, eps=eps, maximize=False)


def fused_adam_available(device: torch.device) -> bool:
    """Whether torch has a fused Adam kernel for `device` (CUDA always; CPU from torch 2.4)."""
    probe = [torch.zeros(1, device=device) for _ in range(4)]
    try:
        _adam_step(probe[:1], probe[1:2], probe[2:3], probe[3:], [torch.zeros((), device=device)], fused=True,
                   lr=0.0)
    except RuntimeError:
        return False
    return True


class SharedAdam:
    def __init__(self, params: Sequence[torch.Tensor], lr: float = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        self.params = [p.detach() for p in params]
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.fused = fused_adam_available(self.params[0].device)
        # Allocated up front and shared, so every process updates the same moments and counts.
        self.exp_avgs = [torch.zeros_like(p).share_memory_() for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p).share_memory_() for p in self.params]
        self.steps = [torch.zeros((), dtype=torch.float32).share_memory_() for _ in self.params]

    def tensors(self) -> list[torch.Tensor]:
        return [*self.exp_avgs, *self.exp_avg_sqs, *self.steps]

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor], lr: float | None = None) -> None:
        """Apply `grads` (one per parameter, exactly this update's) to the shared parameters."""
        if len(grads) != len(self.params):
            raise ValueError(f"expected {len(self.params)} gradients, got {len(grads)}")
        _adam_step(self.params, list(grads), self.exp_avgs, self.exp_avg_sqs, self.steps, fused=self.fused,
                   lr=self.lr if lr is None else lr, betas=self.betas, eps=self.eps,
                   weight_decay=self.weight_decay)

    def state_dict(self) -> dict[str, Any]:
        """A snapshot in torch.optim.Adam's format, cloned out of shared memory."""
        state = {i: {"step": s.clone(), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
                 for i, (s, m, v) in enumerate(zip(self.steps, self.exp_avgs, self.exp_avg_sqs, strict=True))}
        group = {"lr": self.lr, "betas": self.betas, "eps": self.eps,
                 "weight_decay": self.weight_decay, "amsgrad": False, "maximize": False,
                 "params": list(range(len(self.params)))}
        return {"state": state, "param_groups": [group]}

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Copy a saved state into the existing shared tensors, so it stays shared."""
        state = state_dict["state"]
        if len(state) != len(self.params):
            raise ValueError(f"optimizer state has {len(state)} parameters, expected {len(self.params)}")
        for i, (s, m, v) in enumerate(zip(self.steps, self.exp_avgs, self.exp_avg_sqs, strict=True)):
            entry = state[i]
            if entry["exp_avg"].shape != m.shape:
                raise ValueError(f"optimizer state {i} has shape {tuple(entry['exp_avg'].shape)}, "
                                 f"expected {tuple(m.shape)}")
            s.copy_(torch.as_tensor(entry["step"], dtype=s.dtype))
            m.copy_(entry["exp_avg"])
            v.copy_(entry["exp_avg_sq"])
