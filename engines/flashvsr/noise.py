"""Latent noise for FlashVSR's one denoising step, drawn per chunk for the whole padded frame.

A noise source is called as `noise(latent_start, count, height, width)` and returns
[1, C, count, height, width] float noise for latents latent_start ... latent_start + count
at height x width latent pixels. Tiles crop their part of it, so tiling never changes
which noise a pixel gets.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

NoiseSource = Callable[[int, int, int, int], torch.Tensor]


class SeededNoise:
    """Gaussian latent noise drawn chunk after chunk from one seed.

    Drawn on the CPU, so a seed gives the same video on every device.
    """

    def __init__(self, seed: int, channels: int = 16):
        self.generator = torch.Generator().manual_seed(int(seed))
        self.channels = channels
        self.next_latent = 0

    def __call__(self, latent_start: int, count: int, height: int, width: int) -> torch.Tensor:
        if latent_start != self.next_latent:
            raise ValueError(f"noise is drawn in order: expected latent {self.next_latent}, got {latent_start}")
        self.next_latent += count
        return torch.randn(1, self.channels, count, height, width, generator=self.generator)


class FixedNoise:
    """Latent noise taken from a given tensor [1, C, T, H/8, W/8] (tests, reproductions)."""

    def __init__(self, noise: torch.Tensor):
        self.noise = noise

    def __call__(self, latent_start: int, count: int, height: int, width: int) -> torch.Tensor:
        piece = self.noise[:, :, latent_start:latent_start + count, :height, :width]
        if piece.shape[2] != count or tuple(piece.shape[-2:]) != (height, width):
            raise ValueError(f"the fixed noise {tuple(self.noise.shape)} does not cover latents "
                             f"{latent_start}..{latent_start + count} at {height}x{width}")
        return piece.float()
