"""FlashVSR's LQ projector: low-quality frames to tokens added to the DiT's input stream.

Both released variants share one structure and one set of state-dict keys
(`conv1`, `norm1.gamma`, `conv2`, `norm2.gamma`, `linear_layers.N`):

    frames [B, 3, T, H, W] in -1..1
      -> pixel-unshuffle 16x16          [B, 768, T, H/16, W/16]
      -> causal Conv3d (4,3,3) stride 2 in time, channel RMS norm, SiLU
      -> causal Conv3d (4,3,3) stride 2 in time, channel RMS norm, SiLU
      -> Linear per DiT layer            [B, T/4 * H/16 * W/16, dim]

so four frames make one latent frame, with tokens in (time, row, column) order.
The variants differ only in what the temporal convolutions see before the current
frames:

* v1 (`BufferLQProjector`, upstream `Buffer_LQ4x_Proj`) pads each 4-frame group
  with that group's own last two frames; groups are independent.
* v1.1 (`CausalLQProjector`, upstream `Causal_LQ4x_Proj`) carries the previous
  group's last two frames, so the stream is truly causal.

Streaming follows the upstream bookkeeping: the first call gets frame 0 alone
(warm-up, repeated to 4 frames, returns None); every later call gets a multiple of
4 frames and returns one latent frame of tokens per 4 frames. The hidden widths come
from the constructor (the loader reads them off the checkpoint's shapes).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

UNSHUFFLE = 16
FRAMES_PER_LATENT = 4
CACHE_FRAMES = 2


class ChannelRMSNorm(nn.Module):
    """RMS norm over the channel axis of a [B, C, T, H, W] tensor, with a learnt per-channel gain."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = channels ** 0.5
        self.gamma = nn.Parameter(torch.ones(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class CausalConv3d(nn.Conv3d):
    """A Conv3d that looks only backwards in time, with edge-replicating padding.

    Space is padded symmetrically; time gets `2 * padding` frames in front and none
    behind. Frames from before this call (`past`) take the place of that front padding.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int, int],
                 stride: tuple[int, int, int], padding: tuple[int, int, int]):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        self.time_pad = 2 * padding[0]
        self.space_pad = (padding[2], padding[2], padding[1], padding[1])

    def forward(self, x: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
        front = self.time_pad
        if past is not None and front > 0:
            x = torch.cat([past.to(x.device, x.dtype), x], dim=2)
            front -= past.shape[2]
        x = F.pad(x, (*self.space_pad, max(front, 0), 0), mode="replicate")
        return super().forward(x)


def pixel_unshuffle_video(frames: torch.Tensor, factor: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, C*factor*factor, T, H/factor, W/factor] (channel order c, row, col)."""
    b, c, t, h, w = frames.shape
    flat = frames.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    flat = F.pixel_unshuffle(flat, factor)
    return flat.reshape(b, t, c * factor * factor, h // factor, w // factor).permute(0, 2, 1, 3, 4)


@dataclasses.dataclass
class ProjectorState:
    """Where one stream stands: the frames each temporal convolution needs from the past."""

    cache1: torch.Tensor | None = None
    cache2: torch.Tensor | None = None
    started: bool = False


class LQProjector(nn.Module):
    """Shared structure of both projector variants; see the module docstring.

    Args mirror the checkpoint: `in_dim` colour channels, `out_dim` = the DiT width,
    `hidden_dim1`/`hidden_dim2` = the two convolutions' widths (2048 / 3072 in the
    release), `layer_num` = how many DiT blocks receive a projection (1 in the release).

    Stream state lives in a `ProjectorState`, so one module can serve several streams
    (spatial tiles); calls without a state use the module's own.
    """

    def __init__(self, in_dim: int = 3, out_dim: int = 1536, hidden_dim1: int = 2048,
                 hidden_dim2: int = 3072, layer_num: int = 1):
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.hidden_dim1 = hidden_dim1
        self.hidden_dim2 = hidden_dim2
        self.layer_num = layer_num
        kernel, stride, padding = (4, 3, 3), (2, 1, 1), (1, 1, 1)
        self.conv1 = CausalConv3d(in_dim * UNSHUFFLE * UNSHUFFLE, hidden_dim1, kernel, stride, padding)
        self.norm1 = ChannelRMSNorm(hidden_dim1)
        self.conv2 = CausalConv3d(hidden_dim1, hidden_dim2, kernel, stride, padding)
        self.norm2 = ChannelRMSNorm(hidden_dim2)
        self.linear_layers = nn.ModuleList(nn.Linear(hidden_dim2, out_dim) for _ in range(layer_num))
        self.state = ProjectorState()

    def reset(self) -> None:
        """Forget the module's own stream: the next `stream` call is a new clip's frame 0."""
        self.state = ProjectorState()

    def stream(self, frames: torch.Tensor, state: ProjectorState | None = None) -> list[torch.Tensor] | None:
        """Feed the next frames of a clip, [B, 3, T, H, W] in -1..1 (H, W multiples of 16).

        The first call takes frame 0 alone and returns None. Later calls take 4k frames
        and return `layer_num` tensors [B, k * H/16 * W/16, out_dim]. `state` is updated in place.
        """
        state = self.state if state is None else state
        if frames.ndim != 5 or frames.shape[1] != self.in_dim:
            raise ValueError(f"LQ frames must be [B, {self.in_dim}, T, H, W], got {tuple(frames.shape)}")
        if frames.shape[-1] % UNSHUFFLE or frames.shape[-2] % UNSHUFFLE:
            raise ValueError(f"LQ frame size must be a multiple of {UNSHUFFLE}, got "
                             f"{frames.shape[-1]}x{frames.shape[-2]}")
        weight = self.conv1.weight
        frames = frames.to(weight.device, weight.dtype)
        if not state.started:
            if frames.shape[2] != 1:
                raise ValueError(f"the first LQ projector call takes frame 0 alone, got {frames.shape[2]} frames")
            self._warm_up(pixel_unshuffle_video(frames.repeat(1, 1, FRAMES_PER_LATENT, 1, 1), UNSHUFFLE), state)
            state.started = True
            return None
        if frames.shape[2] == 0 or frames.shape[2] % FRAMES_PER_LATENT:
            raise ValueError(f"after frame 0 the LQ projector takes a multiple of {FRAMES_PER_LATENT} frames, "
                             f"got {frames.shape[2]}")
        hidden = self._advance(pixel_unshuffle_video(frames, UNSHUFFLE), state)
        tokens = hidden.flatten(2).transpose(1, 2)
        return [linear(tokens) for linear in self.linear_layers]

    def forward(self, video: torch.Tensor) -> list[torch.Tensor]:
        """A whole clip of 4k+1 frames at once, as its own stream."""
        state = ProjectorState()
        self.stream(video[:, :, :1], state)
        out = self.stream(video[:, :, 1:], state)
        assert out is not None
        return out

    def _first_stage(self, x: torch.Tensor, past: torch.Tensor | None) -> torch.Tensor:
        return F.silu(self.norm1(self.conv1(x, past)))

    def _second_stage(self, x: torch.Tensor, past: torch.Tensor | None) -> torch.Tensor:
        return F.silu(self.norm2(self.conv2(x, past)))

    def _warm_up(self, x: torch.Tensor, state: ProjectorState) -> None:
        raise NotImplementedError

    def _advance(self, x: torch.Tensor, state: ProjectorState) -> torch.Tensor:
        raise NotImplementedError


class CausalLQProjector(LQProjector):
    """v1.1 (`Causal_LQ4x_Proj`): each convolution sees the previous call's last two frames."""

    def _warm_up(self, x: torch.Tensor, state: ProjectorState) -> None:
        hidden = self._first_stage(x, None)
        state.cache1 = x[:, :, -CACHE_FRAMES:].clone()
        state.cache2 = hidden[:, :, -CACHE_FRAMES:].clone()

    def _advance(self, x: torch.Tensor, state: ProjectorState) -> torch.Tensor:
        hidden = self._first_stage(x, state.cache1)
        state.cache1 = x[:, :, -CACHE_FRAMES:].clone()
        out = self._second_stage(hidden, state.cache2)
        state.cache2 = hidden[:, :, -CACHE_FRAMES:].clone()
        return out


class BufferLQProjector(LQProjector):
    """v1 (`Buffer_LQ4x_Proj`): each 4-frame group is padded with its own last two frames."""

    def _warm_up(self, x: torch.Tensor, state: ProjectorState) -> None:
        """Nothing carries over between v1 groups, so frame 0's warm-up group has no effect."""

    def _advance(self, x: torch.Tensor, state: ProjectorState) -> torch.Tensor:
        outputs = []
        for start in range(0, x.shape[2], FRAMES_PER_LATENT):
            group = x[:, :, start:start + FRAMES_PER_LATENT]
            hidden = self._first_stage(group, group[:, :, -CACHE_FRAMES:])
            outputs.append(self._second_stage(hidden, hidden[:, :, -CACHE_FRAMES:]))
        return torch.cat(outputs, dim=2)


PROJECTORS: dict[str, type[LQProjector]] = {"v1": BufferLQProjector, "v1.1": CausalLQProjector}


def projector_class(version: str) -> type[LQProjector]:
    """The projector variant that FlashVSR `version` ("v1" or "v1.1") was trained with."""
    try:
        return PROJECTORS[version]
    except KeyError:
        raise ValueError(f"unknown FlashVSR version {version!r}; expected one of {sorted(PROJECTORS)}") from None
