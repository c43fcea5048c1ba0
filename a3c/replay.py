"""The replayed update: acting passes that record the body's activations, and an update that
differentiates exactly those passes without computing the body again.

A worker acts for T steps on B environments, then differentiates the loss of those T*B acting
passes. Computing the body again, batched, would cost a second forward pass; keeping T per-step
autograd graphs would cost their overhead. Instead the acting passes compute every body layer's
output straight into a ReplayTape, and the update runs one custom autograd function per layer
(_ReplayedLayer) whose forward hands back the recorded output and whose backward is the layer's
usual backward, batched over the whole rollout, in the run's number format (float32 or bfloat16).
The LSTM and the heads are cheap and run again, in float32, with ordinary autograd.

tests/test_worker_gradients.py checks the result against a3c/reference.py, the same update in plain
autograd.
"""

from __future__ import annotations

import torch
from torch import nn

from a3c.model import ActorCritic, LstmState


class _ReplayedLayer(torch.autograd.Function):
    """A body layer (convolution or linear map, then its activation) whose output the acting pass
    already computed: the forward hands the recorded output back, the backward differentiates
    through it, batched over the rollout and in the recorded activations' number format."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, output: torch.Tensor,
                stride: tuple[int, int] | None, activation: str) -> torch.Tensor:
        ctx.save_for_backward(x, weight, output)
        ctx.stride, ctx.activation = stride, activation
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, weight, output = ctx.saved_tensors
        if ctx.stride is not None:
            # Through a flatten the gradient arrives in NCHW order, oneDNN's slow path here.
            grad_output = grad_output.contiguous(memory_format=torch.channels_last)
        if ctx.activation == "relu":
            grad = torch.ops.aten.threshold_backward(grad_output, output, 0)
        else:
            grad = torch.ops.aten.tanh_backward(grad_output, output)
        compute_weight = weight.to(x.dtype)
        needs_input_grad = ctx.needs_input_grad[0]
        if ctx.stride is None:
            grad_x = grad @ compute_weight if needs_input_grad else None
            grad_weight, grad_bias = grad.t() @ x, grad.sum(0)
        else:  # no padding, no dilation, one group: check_replayable makes sure
            grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                grad, x, compute_weight, [weight.shape[0]], list(ctx.stride), [0, 0], [1, 1], False, [0, 0], 1,
                [needs_input_grad, True, True])
        return grad_x, grad_weight.to(weight.dtype), grad_bias.to(weight.dtype), None, None, None


def check_replayable(model: ActorCritic) -> None:
    """The backward of _ReplayedLayer covers the body layers ActorCritic builds: convolutions
    without padding or dilation in one group, linear maps, each with a bias, then ReLU or tanh."""
    if model.activation not in ("relu", "tanh"):
        raise ValueError(f"cannot replay the activation {model.activation!r}")
    for layer in model.body_layers():
        if layer.bias is None:
            raise ValueError(f"cannot replay {layer}: it has no bias")
        if isinstance(layer, nn.Conv2d) and (layer.padding != (0, 0) or layer.dilation != (1, 1)
                                             or layer.groups != 1):
            raise ValueError(f"cannot replay {layer}: only convolutions without padding or dilation, "
                             "in one group")


class ReplayTape:
    """One rollout's acting passes, recorded, and the update's replay of them.

    It owns the activation buffers (step t of B environments owns rows t*B to t*B + B - 1 of each
    layer; image activations channels-last, the layout the convolutions take), the acting copy of
    the body's weights in the run's number format, and the check that the update replays the
    weights that acted: `start` before a rollout, `act` once per step, `record` at most once after
    the steps (an auxiliary batch, differentiated in the same backward), then `replay` once; for a
    further pass over the same steps under new weights, `reencode`, then `replay` again.
    """

    def __init__(self, model: ActorCritic, steps: int, batch: int, dtype: torch.dtype,
                 flat_weights: torch.Tensor | None = None, extra_rows: int = 0) -> None:
        """`flat_weights`: the one tensor the model's parameters are views of, if any
        (bind_flat_parameters), through which new weights are copied in. `extra_rows`: room for the
        largest batch `record` will take."""
        check_replayable(model)
        self.model, self.batch, self.dtype, self.flat_weights = model, batch, dtype, flat_weights
        self.extra_rows = extra_rows
        self.layers = [torch.empty((steps * batch + extra_rows, *shape), dtype=dtype,
                                   memory_format=torch.channels_last if len(shape) == 3 else torch.contiguous_format)
                       for shape in model.activation_shapes()]
        self.rows_of_step = [[layer[t * batch:(t + 1) * batch] for layer in self.layers] for t in range(steps)]
        self.steps = 0
        self.recorded = 0  # rows recorded after the steps' (record)
        self.weights = model.body_weights(dtype)
        self.acted_with: tuple[int, ...] | None = None

    def _weights_version(self) -> tuple[int, ...]:
        # torch counts the in-place changes of each tensor: new weights copied in, through the flat
        # tensor or into a parameter, change its count. (A parameter bound to a view of the flat
        # tensor keeps a count of its own, hence both.)
        own = () if self.flat_weights is None else (self.flat_weights._version,)
        return own + tuple(p._version for p in self.model.parameters())

    def start(self) -> None:
        """Begin a rollout with the model's current weights (copied once into the acting format)."""
        self.weights = self.model.body_weights(self.dtype)
        self.acted_with = self._weights_version()
        self.steps = self.recorded = 0

    @torch.no_grad()
    def act(self, obs: torch.Tensor, state: LstmState | None) -> tuple[torch.Tensor, torch.Tensor, LstmState | None]:
        """One acting step for all B environments, recorded: logits (B, A), values (B,), next state."""
        if self.recorded:
            raise RuntimeError("a step acted after the tape recorded a batch past the rollout's steps")
        features = self.model.encode(obs, self.weights, self.rows_of_step[self.steps])
        self.steps += 1
        return self.model.core(features, state)

    @torch.no_grad()
    def peek(self, obs: torch.Tensor, state: LstmState | None) -> tuple[torch.Tensor, torch.Tensor, LstmState | None]:
        """The same pass, not recorded: values to bootstrap from (the state after the last step, the
        final observation of an episode cut by a time limit)."""
        return self.model.core(self.model.encode(obs, self.weights), state)

    @torch.no_grad()
    def record(self, obs: torch.Tensor) -> None:
        """Pass a batch of observations that are not steps of the rollout (reward prediction's,
        a3c/auxiliary.py) through the acting weights into the rows after the steps', so that
        `replay` differentiates them in the same batched backward, without a forward pass of its own."""
        if self.recorded or len(obs) > self.extra_rows:
            raise ValueError(f"the tape has room for one batch of at most {self.extra_rows} rows past the "
                             f"rollout's steps; asked for {len(obs)} (recorded already: {self.recorded})")
        first = self.steps * self.batch
        self.model.encode(obs, self.weights, [layer[first:first + len(obs)] for layer in self.layers])
        self.recorded = len(obs)

    @torch.no_grad()
    def reencode(self) -> None:
        """The recorded steps' inputs again, through the model's current weights (copied in since the
        rollout): the next replay differentiates the rollout under those weights, a further pass
        over the same steps. A batch recorded past them is dropped."""
        self.weights = self.model.body_weights(self.dtype)
        self.acted_with = self._weights_version()
        self.recorded = 0
        rows = self.steps * self.batch
        self.model.encode_scaled(self.layers[0][:rows], self.weights, [layer[:rows] for layer in self.layers])

    def active_units(self) -> float:
        """The fraction of the body's last layer's units that fired (output above zero) on some
        observation of the rollout. A ReLU body at 0 passes no gradient below the heads: dead for good."""
        last = self.layers[-1][:self.steps * self.batch]
        return float((last > 0).flatten(1).any(0).float().mean())

    def inputs(self) -> torch.Tensor:
        """The recorded, scaled observations of the steps acted so far (T*B rows)."""
        return self.layers[0][:self.steps * self.batch]

    def replay(self, initial_state: LstmState | None, episode_starts: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rollout's logits (T, B, A) and values (T, B), and the body features of the recorded
        batch (`record`; no rows if none), with the update's autograd graph; the LSTM state is
        zeroed where `episode_starts` is set."""
        if self.acted_with is None or self._weights_version() != self.acted_with:
            raise RuntimeError("the model's weights changed after the rollout was played (or it was never "
                               "started): its replay would differentiate a policy that did not act")
        steps, batch = self.steps, self.batch
        model, rows = self.model, steps * batch + self.recorded
        x = self.layers[0][:rows]
        for layer, output in zip(model.body_layers(), self.layers[1:], strict=True):
            conv = isinstance(layer, nn.Conv2d)
            x = _ReplayedLayer.apply(x if conv else x.flatten(1), layer.weight, layer.bias, output[:rows],
                                     layer.stride if conv else None, model.activation)
        features, recorded_features = x.float().split([steps * batch, self.recorded])
        if model.lstm is not None:  # step by step; the heads then run batched
            assert initial_state is not None  # an LSTM model always carries a state
            state, hidden = initial_state, []
            for t, step_features in enumerate(features.view(steps, batch, -1)):
                keep = (~episode_starts[t]).float().unsqueeze(-1)
                state = model.lstm(step_features, (state[0] * keep, state[1] * keep))
                hidden.append(state[0])
            features = torch.cat(hidden)
        logits, values = model.heads(features)
        return logits.view(steps, batch, -1), values.view(steps, batch), recorded_features
