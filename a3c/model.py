"""The actor-critic network: a shared body, an optional LSTM cell, a policy head and a value head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from a3c.config import Config

LstmState = tuple[torch.Tensor, torch.Tensor]


def _conv_layers(body: str, channels: int) -> tuple[nn.ModuleList, int]:
    if body == "seed":  # the seed tutorial's network, sized for 42x42
        layers = [nn.Conv2d(channels, 32, 3, stride=2), nn.Conv2d(32, 32, 3, stride=2),
                  nn.Conv2d(32, 32, 3, stride=2)]
        return nn.ModuleList(layers), 128
    if body == "nature":  # Mnih et al. 2016 (after Mnih et al. 2013), sized for 84x84
        layers = [nn.Conv2d(channels, 16, 8, stride=4), nn.Conv2d(16, 32, 4, stride=2)]
        return nn.ModuleList(layers), 256
    raise ValueError(f"unknown conv body {body!r}")


class ActorCritic(nn.Module):
    """Maps observations (and an LSTM state) to policy logits and a state value.

    uint8 image observations are scaled to [0, 1] inside, so workers keep frames in uint8.
    The forward pass calls the functional ops directly: a worker runs it once per step on a
    single frame, where nn.Module call overhead was about a fifth of the time.
    """

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, body: str = "seed",
                 lstm: bool = False, mlp_hidden: int = 64) -> None:
        super().__init__()
        self.obs_shape = tuple(obs_shape)
        self.n_actions = n_actions
        self.is_image = body != "mlp"
        if self.is_image:
            self.convs, self.features = _conv_layers(body, obs_shape[0])
            with torch.no_grad():
                flat = self._convolve(torch.zeros(1, *obs_shape)).shape[1]
            self.hidden = nn.ModuleList([nn.Linear(flat, self.features)])
        else:
            (n_inputs,) = obs_shape
            self.convs = nn.ModuleList()
            self.hidden = nn.ModuleList([nn.Linear(n_inputs, mlp_hidden), nn.Linear(mlp_hidden, mlp_hidden)])
            self.features = mlp_hidden
        self.lstm = nn.LSTMCell(self.features, self.features) if lstm else None
        self.policy = nn.Linear(self.features, n_actions)
        self.value = nn.Linear(self.features, 1)
        self._initialise()

    def _initialise(self) -> None:
        # Orthogonal weights; a near-uniform initial policy and a unit-scale value head.
        for module in (*self.convs, *self.hidden):
            nn.init.orthogonal_(module.weight, math.sqrt(2))
            nn.init.zeros_(module.bias)
        nn.init.orthogonal_(self.policy.weight, 0.01)
        nn.init.zeros_(self.policy.bias)
        nn.init.orthogonal_(self.value.weight, 1.0)
        nn.init.zeros_(self.value.bias)
        if self.lstm is not None:
            nn.init.zeros_(self.lstm.bias_ih)
            nn.init.zeros_(self.lstm.bias_hh)

    def initial_state(self, batch: int = 1, device: torch.device | str = "cpu") -> LstmState | None:
        if self.lstm is None:
            return None
        zeros = torch.zeros(batch, self.features, device=device)
        return zeros, zeros.clone()

    def _convolve(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.relu(F.conv2d(x, conv.weight, conv.bias, conv.stride), inplace=True)
        return x.flatten(1)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.is_image:
            x = obs.float()
            for layer in self.hidden:
                x = torch.tanh(F.linear(x, layer.weight, layer.bias))
            return x
        # channels_last input takes oneDNN's convolutions on CPU: measured 15-20% faster here.
        # Workers store frames channels-last already (the conversion is then free); the copy to
        # float32 then an in-place scaling is half the time of a mixed uint8-by-float multiply.
        x = obs.contiguous(memory_format=torch.channels_last)
        x = self._convolve(x.to(torch.float32, copy=True).mul_(1.0 / 255.0))
        (fc,) = self.hidden
        return F.relu(F.linear(x, fc.weight, fc.bias))

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = F.linear(features, self.policy.weight, self.policy.bias)
        value = F.linear(features, self.value.weight, self.value.bias)
        return logits, value.squeeze(-1)

    def forward(self, obs: torch.Tensor, state: LstmState | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, LstmState | None]:
        """One step for a batch: logits (B, A), values (B,), next LSTM state."""
        features = self.encode(obs)
        if self.lstm is not None:
            state = self.lstm(features, state)
            features = state[0]
        logits, value = self.heads(features)
        return logits, value, state

    def unroll(self, obs: torch.Tensor, state: LstmState | None, episode_starts: torch.Tensor,
               bfloat16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole rollout (T, B, ...) in one pass: the body runs batched over all T*B frames and
        only the LSTM steps in time, its state zeroed where `episode_starts` (T, B) is set.
        With `bfloat16` the pass runs under bfloat16 autocast (the weights and their gradients stay
        float32); the outputs are float32 either way."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            logits, values = self._unroll(obs, state, episode_starts)
        return logits.float(), values.float()

    def _unroll(self, obs: torch.Tensor, state: LstmState | None, episode_starts: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        steps, batch = obs.shape[:2]
        features = self.encode(obs.reshape(steps * batch, *obs.shape[2:]))
        if self.lstm is not None:
            features = features.view(steps, batch, -1)
            outputs = []
            for t in range(steps):
                keep = (~episode_starts[t]).float().unsqueeze(-1)
                state = self.lstm(features[t], (state[0] * keep, state[1] * keep))
                outputs.append(state[0])
            features = torch.stack(outputs).reshape(steps * batch, -1)
        logits, value = self.heads(features)
        return logits.view(steps, batch, -1), value.view(steps, batch)


def build_model(config: Config, obs_shape: tuple[int, ...], n_actions: int) -> ActorCritic:
    return ActorCritic(obs_shape, n_actions, config.model_body, config.lstm, config.mlp_hidden)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def bind_flat_parameters(model: nn.Module, flat: torch.Tensor | None = None) -> torch.Tensor:
    """Make every parameter a view into one flat tensor and return it.

    With `flat` given (say, the shared weights) the model uses it as its storage; otherwise a new
    flat tensor is filled with the model's current weights. One flat tensor lets a worker load the
    shared weights with a single copy and the optimizer step in a single kernel.
    """
    params = list(model.parameters())
    if flat is None:
        flat = torch.cat([p.detach().reshape(-1) for p in params])
    if flat.numel() != parameter_count(model):
        raise ValueError(f"flat tensor has {flat.numel()} elements, model {parameter_count(model)}")
    offset = 0
    for p in params:
        p.data = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


def bind_flat_gradients(model: nn.Module) -> torch.Tensor:
    """Give every parameter a .grad that is a view into one zeroed flat tensor and return it.

    Autograd accumulates into an existing .grad in place, so after backward the flat tensor holds
    exactly the gradient of that backward pass, provided it is zeroed (never set to None) before.
    """
    params = list(model.parameters())
    flat = torch.zeros(parameter_count(model))
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat
