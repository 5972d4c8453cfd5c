"""The Wan 2.1 DiT as FlashVSR runs it: one step, streaming, block-sparse self-attention.

Parameter names match `diffusion_pytorch_model_streaming_dmd.safetensors`; every size
comes from the constructor, so the official 1.3B model (`WanDiT()`) and the tiny
random models of the tests share the code. State that lives across chunks (the
self-attention key/value cache, the prompt's cross-attention keys and values) is
passed in and returned rather than stored on the modules, so one model can serve
several streams (spatial tiles) at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .sparse_attention import (
    WINDOW,
    SparseSettings,
    WindowKVCache,
    block_sparse_attention,
    check_token_grid,
    draft_block_mask,
    extend_cache,
    from_windows,
    local_block_mask,
    pooled,
    tile_local_mask,
    to_windows,
)

TIMESTEP = 1000.0
ROPE_THETA = 10000.0


def sinusoidal_embedding(dim: int, position: torch.Tensor) -> torch.Tensor:
    """[cos | sin] of position x 10000^(-i / (dim/2)), computed in float64, returned in position's dtype."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float64, device=position.device).div(half)
    angles = torch.outer(position.to(torch.float64), torch.pow(10000.0, -exponent))
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).to(position.dtype)


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Real dims of a head given to the time, row and column axes (time gets the remainder)."""
    third = head_dim // 3
    return head_dim - 2 * third, third, third


def _axis_angles(dims: int, positions: torch.Tensor) -> torch.Tensor:
    exponents = torch.arange(0, dims, 2, dtype=torch.float64, device=positions.device)[: dims // 2] / dims
    return torch.outer(positions.to(torch.float64), 1.0 / (ROPE_THETA ** exponents))


def rope_angles(head_dim: int, frame_positions: torch.Tensor, token_h: int, token_w: int) -> torch.Tensor:
    """RoPE angles [f*h*w, head_dim/2] (float64) for tokens in (frame, row, col) order.

    Any frame position works (RoPE acts on differences), so long clips need no table limit.
    """
    dims_f, dims_h, dims_w = rope_split(head_dim)
    device = frame_positions.device
    frames = frame_positions.numel()
    f = _axis_angles(dims_f, frame_positions)
    h = _axis_angles(dims_h, torch.arange(token_h, device=device))
    w = _axis_angles(dims_w, torch.arange(token_w, device=device))
    grid = torch.cat([
        f[:, None, None, :].expand(frames, token_h, token_w, -1),
        h[None, :, None, :].expand(frames, token_h, token_w, -1),
        w[None, None, :, :].expand(frames, token_h, token_w, -1),
    ], dim=-1)
    return grid.reshape(frames * token_h * token_w, head_dim // 2)


@dataclasses.dataclass
class Rope:
    """cos and sin [L, 1, head_dim/2] for one chunk, in the precision the rotation runs in."""

    cos: torch.Tensor
    sin: torch.Tensor

    @classmethod
    def build(cls, head_dim: int, first_frame: int, frames: int, token_h: int, token_w: int, *,
              device: torch.device, dtype: torch.dtype) -> Rope:
        positions = torch.arange(first_frame, first_frame + frames, device=device)
        angles = rope_angles(head_dim, positions, token_h, token_w)[:, None, :]
        # float32 activations rotate in float64 as upstream does; half precision in float32.
        work = torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32
        return cls(torch.cos(angles).to(work), torch.sin(angles).to(work))

    def apply(self, x: torch.Tensor, num_heads: int) -> torch.Tensor:
        """Rotate consecutive channel pairs of each head of x [B, L, heads*head_dim]."""
        batch, length, dim = x.shape
        pairs = x.to(self.cos.dtype).reshape(batch, length, num_heads, dim // num_heads // 2, 2)
        real, imag = pairs.unbind(-1)
        rotated = torch.stack([real * self.cos - imag * self.sin, real * self.sin + imag * self.cos], dim=-1)
        return rotated.reshape(batch, length, dim).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


@dataclasses.dataclass
class ChunkGeometry:
    """Token grid of one chunk, and its local window mask tiled to [query windows, key windows]
    (the same in every block, so `forward_chunk` builds it once per chunk)."""

    frames: int
    token_h: int
    token_w: int
    local_mask: torch.Tensor


@dataclasses.dataclass
class BlockInputs:
    """What every block gets for one chunk besides its hidden state, cache and prompt keys:
    the timestep modulation, the chunk's RoPE and token grid, and how attention runs."""

    t_mod: torch.Tensor
    rope: Rope
    grid: ChunkGeometry
    sparse: SparseSettings
    backend: str = "auto"


class AttentionProjections(nn.Module):
    """The q/k/v/o projections and q/k RMS norms that self and cross attention share (official keys)."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps=eps)
        self.norm_k = RMSNorm(dim, eps=eps)


class SelfAttention(AttentionProjections):
    def forward(self, x: torch.Tensor, cache: WindowKVCache | None,
                inputs: BlockInputs) -> tuple[torch.Tensor, WindowKVCache]:
        _, length, dim = x.shape
        grid, rope, sparse = inputs.grid, inputs.rope, inputs.sparse
        frames, token_h, token_w = grid.frames, grid.token_h, grid.token_w
        q = rope.apply(self.norm_q(self.q(x)), self.num_heads)[0]
        k = rope.apply(self.norm_k(self.k(x)), self.num_heads)[0]
        v = self.v(x)[0]
        q_w = to_windows(q, frames, token_h, token_w)
        k_w = to_windows(k, frames, token_h, token_w)
        v_w = to_windows(v, frames, token_h, token_w)
        per_slice = k_w.shape[0] // (frames // WINDOW[0])
        if cache is not None:
            k_w = torch.cat([cache.k, k_w], dim=0)
            v_w = torch.cat([cache.v, v_w], dim=0)
        mask = draft_block_mask(pooled(q_w), pooled(k_w), self.num_heads, frames // WINDOW[0], sparse.topk,
                                grid.local_mask)
        head_dim = dim // self.num_heads

        def heads_first(windows: torch.Tensor) -> torch.Tensor:
            return windows.reshape(-1, self.num_heads, head_dim).transpose(0, 1)

        out = block_sparse_attention(heads_first(q_w), heads_first(k_w), heads_first(v_w), mask,
                                     inputs.backend)
        out = out.transpose(0, 1).reshape(q_w.shape)
        out = from_windows(out, frames, token_h, token_w).reshape(1, length, dim)
        return self.o(out), extend_cache(cache, k_w, v_w, per_slice, sparse.kv_len)


@dataclasses.dataclass
class CrossKV:
    """The prompt's cross-attention keys and values, one (k, v) [1, L, dim] pair per block."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    embedded: torch.Tensor


class CrossAttention(AttentionProjections):
    def key_value(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.norm_k(self.k(context)), self.v(context)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        heads = self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], t.shape[1], heads, dim // heads).transpose(1, 2)

        q = self.norm_q(self.q(x))
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.o(out.transpose(1, 2).reshape(batch, length, dim))


class DiTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_dim: int, eps: float = 1e-6):
        super().__init__()
        self.self_attn = SelfAttention(dim, num_heads, eps)
        self.cross_attn = CrossAttention(dim, num_heads, eps)
        self.norm1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, cache: WindowKVCache | None, cross_k: torch.Tensor, cross_v: torch.Tensor,
                inputs: BlockInputs) -> tuple[torch.Tensor, WindowKVCache]:
        t_mod = inputs.t_mod
        shift_attn, scale_attn, gate_attn, shift_ffn, scale_ffn, gate_ffn = (
            self.modulation.to(t_mod.dtype) + t_mod).chunk(6, dim=1)
        attn_in = self.norm1(x) * (1 + scale_attn) + shift_attn
        attn, cache = self.self_attn(attn_in, cache, inputs)
        x = x + gate_attn * attn
        x = x + self.cross_attn(self.norm3(x), cross_k, cross_v)
        ffn_in = self.norm2(x) * (1 + scale_ffn) + shift_ffn
        x = x + gate_ffn * self.ffn(ffn_in)
        return x, cache


class Head(nn.Module):
    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_dim * math.prod(patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.to(t.dtype) + t[:, None, :]).chunk(2, dim=1)
        return self.head(self.norm(x) * (1 + scale) + shift)


@dataclasses.dataclass
class TimeEmbedding:
    """The fixed timestep's embedding `t` [1, dim] and block modulation `t_mod` [1, 6, dim]."""

    t: torch.Tensor
    t_mod: torch.Tensor


@dataclasses.dataclass(frozen=True)
class StreamContext:
    """What every chunk of one stream shares: the fixed timestep's embedding, the prompt's
    cross-attention keys and values, the block sparsity (it depends on the stream's frame or
    tile size) and the attention backend ("auto", "sdpa" or "flex")."""

    time: TimeEmbedding
    prompt: CrossKV
    sparse: SparseSettings
    backend: str = "auto"


class WanDiT(nn.Module):
    """Wan 2.1 text-to-video DiT (no image branch); defaults are the 1.3B model FlashVSR uses."""

    def __init__(self, *, dim: int = 1536, in_dim: int = 16, ffn_dim: int = 8960, out_dim: int = 16,
                 text_dim: int = 4096, freq_dim: int = 256, eps: float = 1e-6,
                 patch_size: Sequence[int] = (1, 2, 2), num_heads: int = 12, num_layers: int = 30):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.freq_dim = freq_dim
        self.num_heads = num_heads
        self.patch_size = tuple(int(p) for p in patch_size)
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList([DiTBlock(dim, num_heads, ffn_dim, eps) for _ in range(num_layers)])
        self.head = Head(dim, out_dim, self.patch_size, eps)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    @torch.no_grad()
    def embed_time(self, timestep: float = TIMESTEP) -> TimeEmbedding:
        position = torch.tensor([timestep], device=self.device, dtype=self.dtype)
        t = self.time_embedding(sinusoidal_embedding(self.freq_dim, position))
        return TimeEmbedding(t, self.time_projection(t).unflatten(1, (6, self.dim)))

    @torch.no_grad()
    def embed_prompt(self, context: torch.Tensor) -> CrossKV:
        """Feed the fixed prompt [1, L, text_dim] through the text embedding into every block's K/V."""
        embedded = self.text_embedding(context.to(self.device, self.dtype))
        keys, values = [], []
        for block in self.blocks:
            k, v = block.cross_attn.key_value(embedded)
            keys.append(k)
            values.append(v)
        return CrossKV(keys, values, embedded)

    def patchify(self, latents: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        x = self.patch_embedding(latents)
        grid = tuple(x.shape[2:])
        return x.flatten(2).transpose(1, 2), grid

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        frames, rows, cols = grid
        pf, ph, pw = self.patch_size
        x = x.reshape(x.shape[0], frames, rows, cols, pf, ph, pw, self.out_dim)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(x.shape[0], self.out_dim, frames * pf, rows * ph, cols * pw)

    @torch.no_grad()
    def forward_chunk(self, latents: torch.Tensor, lq_tokens: Sequence[torch.Tensor] | None,
                      caches: list[WindowKVCache | None] | None, first_frame: int,
                      context: StreamContext) -> tuple[torch.Tensor, list[WindowKVCache]]:
        """The DiT output for one streaming chunk of noisy latents [1, C, f, H/8, W/8].

        lq_tokens: the LQ projector's outputs [1, tokens, dim], added before blocks 0, 1, ...
        caches: each block's self-attention cache from the previous chunk (None at the start).
        first_frame: the latent index of this chunk's first frame (its RoPE time position).
        Returns the prediction (same shape as latents) and the caches for the next chunk.
        """
        if latents.shape[0] != 1:
            raise ValueError("the streaming DiT runs one stream at a time (batch size 1)")
        x, grid = self.patchify(latents.to(self.dtype))
        frames, token_h, token_w = grid
        check_token_grid(token_h, token_w)
        if frames % WINDOW[0]:
            raise ValueError(f"a chunk needs an even number of latent frames, got {frames}")
        caches = list(caches) if caches is not None else [None] * len(self.blocks)
        grid_h, grid_w = token_h // WINDOW[1], token_w // WINDOW[2]
        query_windows = grid_h * grid_w * (frames // WINDOW[0])
        key_windows = query_windows + (caches[0].k.shape[0] if caches[0] is not None else 0)
        local = local_block_mask(grid_h, grid_w, context.sparse.local_range, device=x.device)
        geometry = ChunkGeometry(frames, token_h, token_w, tile_local_mask(local, query_windows, key_windows))
        rope = Rope.build(self.head_dim, first_frame, frames, token_h, token_w, device=x.device, dtype=x.dtype)
        inputs = BlockInputs(context.time.t_mod, rope, geometry, context.sparse, context.backend)
        lq_tokens = list(lq_tokens) if lq_tokens is not None else []
        prompt = context.prompt
        for index, block in enumerate(self.blocks):
            if index < len(lq_tokens):
                x = x + lq_tokens[index].to(x.dtype)
            x, caches[index] = block(x, caches[index], prompt.k[index], prompt.v[index], inputs)
        x = self.head(x, context.time.t)
        return self.unpatchify(x, grid), caches


# Head sizes tried, in order, when a checkpoint's head count is not given: Wan's, then small models'.
HEAD_DIMS = (128, 32)


def dit_config_from_shapes(shapes: Mapping[str, Sequence[int]], num_heads: int | None = None) -> dict:
    """WanDiT constructor arguments read off a state dict's key -> shape map.

    The head count is not visible in the shapes; it defaults to dim / 128 (Wan's head size,
    the official configuration) when that divides, else dim / 32 (small test models).
    """
    dim, in_dim = shapes["patch_embedding.weight"][:2]
    patch_size = tuple(shapes["patch_embedding.weight"][2:])
    layers = 1 + max(int(key.split(".")[1]) for key in shapes if key.startswith("blocks."))
    if num_heads is None:
        head_dim = next((size for size in HEAD_DIMS if dim % size == 0), None)
        if head_dim is None:
            raise ValueError(f"cannot infer the head count of a DiT {dim} wide; pass num_heads")
        num_heads = dim // head_dim
    return {
        "dim": int(dim),
        "in_dim": int(in_dim),
        "ffn_dim": int(shapes["blocks.0.ffn.0.weight"][0]),
        "out_dim": int(shapes["head.head.weight"][0]) // math.prod(patch_size),
        "text_dim": int(shapes["text_embedding.0.weight"][1]),
        "freq_dim": int(shapes["time_embedding.0.weight"][1]),
        "patch_size": patch_size,
        "num_heads": int(num_heads),
        "num_layers": layers,
    }
