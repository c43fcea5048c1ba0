"""The actor-critic network: a shared body, an optional LSTM cell, a policy head and a value head."""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from a3c.config import Config

LstmState = tuple[torch.Tensor, torch.Tensor]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # Config's number formats
# Added to an observation's standard deviation (frame_norm background), on the [0, 1] scale: a few
# grey levels, well below an Atari frame's; a blank frame comes out near zero.
STANDARDIZE_EPS = 1e-2


def _conv_layers(body: str, channels: int) -> tuple[nn.ModuleList, int]:
    if body == "tutorial":  # the seed tutorial's network, sized for 42x42
        layers = [nn.Conv2d(channels, 32, 3, stride=2), nn.Conv2d(32, 32, 3, stride=2),
                  nn.Conv2d(32, 32, 3, stride=2)]
        return nn.ModuleList(layers), 128
    if body == "mnih2013":  # Mnih et al. 2013's network, which the A3C paper used; sized for 84x84
        layers = [nn.Conv2d(channels, 16, 8, stride=4), nn.Conv2d(16, 32, 4, stride=2)]
        return nn.ModuleList(layers), 256
    if body == "mnih2015":  # the DQN Nature paper's wider network, which A2C and PPO use; for 84x84
        layers = [nn.Conv2d(channels, 32, 8, stride=4), nn.Conv2d(32, 64, 4, stride=2),
                  nn.Conv2d(64, 64, 3, stride=1)]
        return nn.ModuleList(layers), 512
    raise ValueError(f"unknown conv body {body!r}")


BodyWeights = list[tuple[torch.Tensor, torch.Tensor]]  # (weight, bias) of each body layer


def bias_of(layer: nn.Conv2d | nn.Linear) -> torch.Tensor:
    """The bias of a body layer: every one has one."""
    if layer.bias is None:
        raise ValueError(f"{layer} has no bias")
    return layer.bias


class ActorCritic(nn.Module):
    """Maps observations (and an LSTM state) to policy logits and a state value; with
    `reward_prediction`, also body features to the logits of a reward's sign (negative, none,
    positive), an auxiliary task that trains the body only (a3c/auxiliary.py).

    uint8 image observations are scaled to [0, 1] (or, with frame_norm background, centred on their
    commonest value, per colour of `channel_colours`, and amplified per observation) inside, so
    workers keep frames in uint8. The body is ReLU for images, tanh for vectors.
    The body calls the functional ops directly: a worker runs it once per step on a few frames,
    where nn.Module call overhead was about a fifth of the time.
    """

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, body: str = "tutorial",
                 lstm: bool = False, mlp_hidden: int = 64, frame_norm: str = "scale",
                 reward_prediction: bool = False, channel_colours: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.obs_shape = tuple(obs_shape)
        # The input channels of each colour (Config.observation_colours), whose background is taken
        # apart; None where all hold one colour (grey frames).
        colours = sorted(set(channel_colours or ()))
        self.colour_groups = None if len(colours) <= 1 else [
            [channel for channel, held in enumerate(channel_colours or ()) if held == colour] for colour in colours]
        self.n_actions = n_actions
        self.is_image = body != "mlp"
        self.frame_norm = frame_norm if self.is_image else "none"  # vector observations go in as they are
        self.activation = "relu" if self.is_image else "tanh"
        if self.is_image:
            self.convs, self.features = _conv_layers(body, obs_shape[0])
            self.hidden = nn.ModuleList()  # the conv output's size comes from activation_shapes()
            self.hidden.append(nn.Linear(math.prod(self.activation_shapes()[-1]), self.features))
        else:
            (n_inputs,) = obs_shape
            self.convs = nn.ModuleList()
            self.hidden = nn.ModuleList([nn.Linear(n_inputs, mlp_hidden), nn.Linear(mlp_hidden, mlp_hidden)])
            self.features = mlp_hidden
        self.lstm = nn.LSTMCell(self.features, self.features) if lstm else None
        self.policy = nn.Linear(self.features, n_actions)
        self.value = nn.Linear(self.features, 1)
        # Last, so that the other parameters keep their places in the flat weights; torch's own
        # initialisation.
        self.reward_prediction = nn.Linear(self.features, 3) if reward_prediction else None
        self._initialise()

    def _initialise(self) -> None:
        # Orthogonal weights; a near-uniform initial policy and a unit-scale value head.
        for module in self.body_layers():
            nn.init.orthogonal_(module.weight, math.sqrt(2))
            nn.init.zeros_(bias_of(module))
        nn.init.orthogonal_(self.policy.weight, 0.01)
        nn.init.zeros_(self.policy.bias)
        nn.init.orthogonal_(self.value.weight, 1.0)
        nn.init.zeros_(self.value.bias)
        if self.lstm is not None:
            nn.init.zeros_(self.lstm.bias_ih)
            nn.init.zeros_(self.lstm.bias_hh)

    def body_layers(self) -> list[nn.Conv2d | nn.Linear]:
        return [*self.convs, *self.hidden]

    def activation_shapes(self) -> list[tuple[int, ...]]:
        """Per-frame shapes of the body's input and of each body layer's output (see replay.ReplayTape)."""
        shapes = [self.obs_shape]
        for layer in self.body_layers():
            if isinstance(layer, nn.Conv2d):
                _, *sides = shapes[-1]
                shapes.append((layer.out_channels, *((side - kernel) // stride + 1 for side, kernel, stride
                                                     in zip(sides, layer.kernel_size, layer.stride, strict=True))))
            else:
                shapes.append((layer.out_features,))
        return shapes

    def initial_state(self, batch: int = 1, device: torch.device | str = "cpu") -> LstmState | None:
        if self.lstm is None:
            return None
        zeros = torch.zeros(batch, self.features, device=device)
        return zeros, zeros.clone()

    def body_weights(self, dtype: torch.dtype = torch.float32) -> BodyWeights:
        """The body's weights and biases in `dtype`, convolution weights channels-last (oneDNN's
        layout, so no conversion per call). A worker makes them once per rollout (replay.py)."""
        return [(layer.weight.to(dtype).contiguous(memory_format=torch.channels_last)
                 if isinstance(layer, nn.Conv2d) else layer.weight.to(dtype), bias_of(layer).to(dtype))
                for layer in self.body_layers()]

    def encode(self, obs: torch.Tensor, weights: BodyWeights | None = None,
               record: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Float32 body features of a batch of observations, computed in the number format of
        `weights` (body_weights(); the float32 parameters by default). `record`: see ReplayTape, the
        one caller that passes it; the scaled input and every layer's output are computed into it."""
        weights = self.body_weights() if weights is None else weights
        dtype = weights[0][0].dtype
        if record is not None:
            x = record[0].copy_(obs)
        elif self.is_image:  # channels_last takes oneDNN's faster convolutions
            x = obs.contiguous(memory_format=torch.channels_last).to(dtype, copy=True)
        else:
            x = obs.to(dtype)
        if self.frame_norm == "scale":  # a copy then in-place scaling: half the time of a mixed uint8-by-float multiply
            x.mul_(1.0 / 255.0)
        elif self.frame_norm == "background":  # in place, as the scaling, so into the tape too
            scale, shift = _background_removal(obs, x.dtype, self.colour_groups)
            x.mul_(scale).sub_(shift)
        return self.encode_scaled(x, weights, record)

    def encode_scaled(self, x: torch.Tensor, weights: BodyWeights, record: list[torch.Tensor] | None = None
                      ) -> torch.Tensor:
        """encode's body layers, from inputs already scaled (a ReplayTape's first layer)."""
        for i, (layer, (weight, bias)) in enumerate(zip(self.body_layers(), weights, strict=True)):
            if isinstance(layer, nn.Conv2d):
                x = F.conv2d(x, weight, bias, layer.stride)
            else:
                x = F.linear(x.flatten(1) if x.dim() > 2 else x, weight, bias)
            out = None if record is None else record[i + 1]
            if self.activation == "tanh":
                x = torch.tanh(x, out=out)
            elif out is None:  # relu's gradient at 0 is 0, as the replayed backward takes it
                x = torch.relu(x)
            else:  # into the tape: relu has no out=
                x = torch.clamp_min(x, 0, out=out)
        return x.float()

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy logits and state values of (LSTM) features."""
        logits = F.linear(features, self.policy.weight, self.policy.bias)
        value = F.linear(features, self.value.weight, self.value.bias)
        return logits, value.squeeze(-1)

    def reward_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of the sign of the reward that follows each observation (negative, none, positive),
        from its body features."""
        if self.reward_prediction is None:
            raise ValueError("this model was built without reward prediction")
        return F.linear(features, self.reward_prediction.weight, self.reward_prediction.bias)

    def core(self, features: torch.Tensor, state: LstmState | None) -> tuple[torch.Tensor, torch.Tensor, LstmState | None]:
        """From body features: the LSTM (if any) and the heads, in float32."""
        if self.lstm is not None:
            state = self.lstm(features, state)
            features = state[0]
        return (*self.heads(features), state)

    def forward(self, obs: torch.Tensor, state: LstmState | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, LstmState | None]:
        """One step for a batch of observations: logits (B, A), values (B,), the next LSTM state."""
        return self.core(self.encode(obs), state)


def _rows(pixels: torch.Tensor) -> torch.Tensor:
    """A batch of image observations, one row of pixels each: a view of the workers' channels-last
    frames (a strided copy of them would cost the histogram below more than the histogram itself)."""
    return pixels.permute(0, 2, 3, 1).reshape(len(pixels), -1)


def _background_removal(pixels: torch.Tensor, dtype: torch.dtype, colour_groups: list[list[int]] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per observation of a uint8 batch of frames: the factor and the offsets, in `dtype`, that make
    it (pixels - commonest) / 255 / (std + STANDARDIZE_EPS), the commonest value taken per colour
    (the background's colour; `colour_groups` lists each colour's channels, None: all one) and the
    std over all. The statistics come from 256-bin histograms, one per observation and colour
    (torch.mode sorts, and a float copy of the frames for the sums cost more than the histogram)."""
    per_colour = _histograms(pixels, colour_groups)
    commonest = per_colour.argmax(2)  # (batch, colours); the first of equal counts: the lowest value of a tie
    counts = per_colour.sum(1)
    weights = counts.double()
    values = torch.arange(256, dtype=torch.float64, device=pixels.device)
    total = weights.sum(1)
    mean = weights @ values / total
    variance = (weights @ (values * values) / total - mean * mean).clamp_min(0.0)
    scale = 1.0 / (variance.sqrt() + 255.0 * STANDARDIZE_EPS)
    shift = commonest * scale.unsqueeze(1)
    if colour_groups is not None:  # each channel its own colour's
        per_channel = shift.new_empty(len(pixels), pixels.shape[1])
        for colour, channels in enumerate(colour_groups):
            per_channel[:, channels] = shift[:, colour:colour + 1]
        shift = per_channel
    return scale.to(dtype).view(-1, 1, 1, 1), shift.to(dtype).view(len(pixels), -1, 1, 1)


def _histograms(pixels: torch.Tensor, colour_groups: list[list[int]] | None = None) -> torch.Tensor:
    """(batch, colours, 256) counts of each pixel value per observation of a uint8 batch and colour
    (`colour_groups` as in _background_removal)."""
    if colour_groups is None:
        return torch.stack([torch.bincount(row, minlength=256) for row in _rows(pixels)]).unsqueeze(1)
    pixel_channels = _rows(pixels).view(len(pixels), -1, pixels.shape[1])  # (batch, pixels, channels), a view
    return torch.stack([torch.stack([torch.bincount(row[:, channels].flatten(), minlength=256)
                                     for channels in colour_groups]) for row in pixel_channels])


def commonest_values(pixels: torch.Tensor) -> list[int]:
    """The commonest pixel value (0-255) of each observation of a uint8 batch of grey frames, the
    lowest of a tie: a game's background (what --frame-norm background subtracts;
    scripts/frame_stats.py)."""
    return _histograms(pixels)[:, 0].argmax(1).tolist()


def observation_buffer(batch: int, obs_shape: tuple[int, ...], dtype: np.dtype) -> tuple[torch.Tensor, np.ndarray]:
    """A zeroed (batch, *obs_shape) tensor for the current observations, and the numpy array to
    write it through. Image observations (C, H, W) are stored channels-last (H, W, C in memory),
    the layout oneDNN's convolutions take, so that the acting pass converts no layout."""
    if len(obs_shape) != 3:
        tensor = torch.from_numpy(np.zeros((batch, *obs_shape), dtype))
        return tensor, tensor.numpy()
    channels, height, width = obs_shape
    storage = np.zeros((batch, height, width, channels), dtype)
    return torch.from_numpy(storage).permute(0, 3, 1, 2), storage


def write_observation(slot: np.ndarray, obs: np.ndarray) -> None:
    """Store one environment observation into its `observation_buffer` slot."""
    if obs.ndim == 3:
        # (C, H, W) to (H, W, C): 2.4 us for 4x42x42, against 7 for numpy's strided copy. cv2
        # writes into `slot` in place because its shape and type fit (tests check the result).
        cv2.merge(tuple(obs), slot)
    else:
        slot[...] = obs


def setup_cpu_compute() -> None:
    """Set up a process that runs the network: one intra-op thread (the processes are the
    parallelism), and subnormal floats flushed to zero. A trained network's gradients, LSTM gates
    and Adam moments hold many subnormals (from units that stopped firing, moments decaying), and
    each costs the CPU a slow path that slowed trained runs several times over (docs/experiments.md,
    "Speed"). Values under 1.2e-38 change no result."""
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)


def build_model(config: Config, obs_shape: tuple[int, ...], n_actions: int) -> ActorCritic:
    return ActorCritic(obs_shape, n_actions, config.model_body, config.lstm, config.mlp_hidden, config.frame_norm,
                       reward_prediction=config.reward_prediction_coef > 0,
                       channel_colours=config.observation_colours if config.is_atari else None)


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
