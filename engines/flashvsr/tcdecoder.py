"""FlashVSR's TCDecoder: a tiny conditional video decoder (TAEHV-style, decoder only).

It turns 16-channel DiT latents into RGB at 8x the size and 4x the frame count,
conditioned on the low-quality input: every 4 LQ frames are pixel-unshuffled 8x8
into 768 channels (3 * 4 * 8 * 8) and concatenated *before* the 16 latent channels,
giving the 784 input channels of the first convolution.

The layer list (`decoder.0` ... `decoder.26`, the official key names) is

    Clamp, Conv, ReLU, IdentityConv, ReLU,
    3 x MemBlock(c0), Upsample x2, TGrow(c0, 1), Conv(c0 -> c1),
    3 x MemBlock(c1), Upsample x2, TGrow(c1, 2), Conv(c1 -> c2),
    3 x MemBlock(c2), Upsample x2, TGrow(c2, 2), Conv(c2 -> c3),
    ReLU, IdentityConv, ReLU, Conv(c3 -> 3)

with `channels = (c0, c1, c2, c3)` = (512, 256, 128, 128) in the release. A MemBlock
mixes each frame with the previous frame's input to that block (zeros before the
first frame): that is the decoder's only temporal memory. TGrow(c, 2) turns each
frame into two. The decoder keeps that memory between `decode` calls, so decoding a
clip chunk by chunk gives the same frames as decoding it in one call.

Like upstream, the first call of a stream front-pads its conditioning with 3 copies
of LQ frame 0 and drops its first 3 output frames: n latent frames decode to 4n-3
frames on the first call and 4n frames on later calls.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

COND_UNSHUFFLE = (4, 8, 8)
IMAGE_CHANNELS = 3
COND_CHANNELS = IMAGE_CHANNELS * COND_UNSHUFFLE[0] * COND_UNSHUFFLE[1] * COND_UNSHUFFLE[2]


class Clamp(nn.Module):
    """Soft clamp to about +-3: 3 * tanh(x / 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class IdentityConv2d(nn.Conv2d):
    """A same-width 3x3 conv without bias that starts as the identity (the decoder's "deepening" layers).

    Trained checkpoints hold real weights for it; the Dirac start only matters before loading.
    """

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, bias=False)
        if self.weight.device.type != "meta":
            with torch.no_grad():
                nn.init.dirac_(self.weight)


def conv3x3(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class MemBlock(nn.Module):
    """Residual block fed the current frame and the previous frame's input to this block."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(conv3x3(n_in * 2, n_out), nn.ReLU(), conv3x3(n_out, n_out), nn.ReLU(),
                                  conv3x3(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TGrow(nn.Module):
    """Temporal upsampling: a 1x1 conv to `stride` times the channels, split into `stride` frames."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour spatial upsampling by 2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


def unshuffle_condition(cond: torch.Tensor) -> torch.Tensor:
    """LQ frames [B, C, 4n, H, W] -> [B, n, C*4*8*8, H/8, W/8] (channel order c, frame, row, col)."""
    b, c, t, h, w = cond.shape
    ft, fh, fw = COND_UNSHUFFLE
    x = cond.reshape(b, c, t // ft, ft, h // fh, fh, w // fw, fw)
    x = x.permute(0, 2, 1, 3, 5, 7, 4, 6)
    return x.reshape(b, t // ft, c * ft * fh * fw, h // fh, w // fw)


@dataclasses.dataclass
class DecoderState:
    """Where one stream stands: each MemBlock's last input frame, and whether frames were decoded yet."""

    memory: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict)
    started: bool = False


class TCDecoder(nn.Module):
    """The conditional tiny decoder; see the module docstring.

    Args mirror the checkpoint: `channels` (c0, c1, c2, c3) and `latent_channels`, the
    first conv's input width (16 latent + 768 condition = 784 in the release).

    Stream state lives in a `DecoderState`, so one module can serve several streams
    (spatial tiles); calls without a state use the module's own.
    """

    def __init__(self, channels: tuple[int, int, int, int] | list[int] = (512, 256, 128, 128),
                 latent_channels: int = 16 + 768):
        super().__init__()
        c0, c1, c2, c3 = (int(c) for c in channels)
        self.channels = (c0, c1, c2, c3)
        self.latent_channels = latent_channels
        self.cond_channels = COND_CHANNELS
        if latent_channels <= self.cond_channels:
            raise ValueError(f"latent_channels must exceed the {self.cond_channels} condition channels, "
                             f"got {latent_channels}")
        self.decoder = nn.Sequential(
            Clamp(), conv3x3(latent_channels, c0), nn.ReLU(), IdentityConv2d(c0), nn.ReLU(),
            MemBlock(c0, c0), MemBlock(c0, c0), MemBlock(c0, c0), Upsample(), TGrow(c0, 1),
            conv3x3(c0, c1, bias=False),
            MemBlock(c1, c1), MemBlock(c1, c1), MemBlock(c1, c1), Upsample(), TGrow(c1, 2),
            conv3x3(c1, c2, bias=False),
            MemBlock(c2, c2), MemBlock(c2, c2), MemBlock(c2, c2), Upsample(), TGrow(c2, 2),
            conv3x3(c2, c3, bias=False),
            nn.ReLU(), IdentityConv2d(c3), nn.ReLU(), conv3x3(c3, IMAGE_CHANNELS),
        )
        self.time_factor = 1
        for layer in self.decoder:
            if isinstance(layer, TGrow):
                self.time_factor *= layer.stride
        self.frames_to_trim = self.time_factor - 1
        self.state = DecoderState()

    @property
    def noise_channels(self) -> int:
        """Channels of the DiT latent (the input minus the LQ condition): 16."""
        return self.latent_channels - self.cond_channels

    def reset(self) -> None:
        """Forget the module's own stream: the next `decode` call starts a new clip."""
        self.state = DecoderState()

    def cond_frames_needed(self, latent_frames: int, state: DecoderState | None = None) -> int:
        """LQ frames that the next `decode` call of `latent_frames` latents takes (and frames it returns)."""
        state = self.state if state is None else state
        full = latent_frames * self.time_factor
        return full if state.started else full - self.frames_to_trim

    def decode(self, latents: torch.Tensor, cond: torch.Tensor, state: DecoderState | None = None,
               latents_per_pass: int = 1) -> torch.Tensor:
        """Decode the next latents of a stream.

        latents: [B, 16, n, h, w] DiT output. cond: the matching LQ frames [B, 3, F, 8h, 8w]
        in -1..1, F = `cond_frames_needed(n)` (4n-3 on the first call, 4n later).
        Returns F frames [B, 3, F, 8h, 8w], roughly in -1..1. `latents_per_pass` bounds
        memory (latent frames pushed through the network at once); it does not change the result.
        `state` is updated in place.
        """
        state = self.state if state is None else state
        if latents.ndim != 5 or latents.shape[1] != self.noise_channels:
            raise ValueError(f"latents must be [B, {self.noise_channels}, n, h, w], got {tuple(latents.shape)}")
        b, _, n, h, w = latents.shape
        expected = self.cond_frames_needed(n, state)
        if cond.shape[2] != expected:
            raise ValueError(f"{n} latent frames need {expected} LQ frames on this decode call, got {cond.shape[2]}")
        if tuple(cond.shape[-2:]) != (h * COND_UNSHUFFLE[1], w * COND_UNSHUFFLE[2]) or cond.shape[1] != IMAGE_CHANNELS:
            raise ValueError(f"LQ condition must be [B, 3, {expected}, {h * 8}, {w * 8}], got {tuple(cond.shape)}")
        weight = self.decoder[1].weight
        latents = latents.to(weight.device, weight.dtype)
        cond = cond.to(weight.device, weight.dtype)
        trim = 0
        if not state.started:
            cond = torch.cat([cond[:, :, :1].expand(-1, -1, self.frames_to_trim, -1, -1), cond], dim=2)
            trim = self.frames_to_trim
        x = torch.cat([unshuffle_condition(cond), latents.transpose(1, 2)], dim=2)
        outputs = []
        for start in range(0, n, max(1, latents_per_pass)):
            outputs.append(self._run(x[:, start:start + max(1, latents_per_pass)], state.memory))
        state.started = True
        video = torch.cat(outputs, dim=1)[:, trim:]
        return video.transpose(1, 2).mul(2).sub(1)

    def _run(self, x: torch.Tensor, memory: dict[int, torch.Tensor]) -> torch.Tensor:
        """[B, t, C, h, w] through every layer, carrying each MemBlock's last input to the next call."""
        b = x.shape[0]
        for index, layer in enumerate(self.decoder):
            t = x.shape[1]
            frames = x.flatten(0, 1)
            if isinstance(layer, MemBlock):
                before = memory.get(index)
                if before is None:
                    before = torch.zeros_like(x[:, :1])
                past = torch.cat([before, x[:, :-1]], dim=1).flatten(0, 1)
                memory[index] = x[:, -1:].clone()
                out = layer(frames, past)
            elif isinstance(layer, TGrow):
                grown = layer(frames)
                c = grown.shape[1] // layer.stride
                x = grown.reshape(b, t * layer.stride, c, *grown.shape[-2:])
                continue
            else:
                out = layer(frames)
            x = out.reshape(b, t, *out.shape[1:])
        return x
