"""Block-sparse self-attention of FlashVSR's streaming DiT, with no compiled extension.

FlashVSR groups the self-attention tokens into windows of 2 latent frames x 8 x 8 tokens
(128 tokens, one kernel block), scores every (query window, key window) pair from the
windows' mean vectors, keeps the best pairs inside a local spatial window, and attends
only within the kept pairs. Upstream runs this with the `block_sparse_attn` CUDA
extension; here the same block mask drives PyTorch's SDPA on any device (CPU included),
and FlexAttention on CUDA where a self-check shows it gives the same result.

Keys and values of past windows stay in a `WindowKVCache` so later chunks can attend
to them; the cache drops its oldest time slice once it holds more than `kv_len`.
"""

from __future__ import annotations

import dataclasses
import math
import threading

import torch
import torch.nn.functional as F

WINDOW = (2, 8, 8)
BLOCK_TOKENS = WINDOW[0] * WINDOW[1] * WINDOW[2]
DESIGN_PIXELS = 768 * 1280
PIXELS_PER_TOKEN = 16
SDPA_MASK_BUDGET = 1 << 26


def topk_ratio_for(sparse_ratio: float, height: int, width: int) -> float:
    """The upstream `topk_ratio` for a `sparse_ratio` at an output size of height x width pixels."""
    return sparse_ratio * DESIGN_PIXELS / (height * width)


def topk_for(blocks_per_slice: int, topk_ratio: float) -> int:
    """How many (query block, key block) pairs one head may keep per query time slice."""
    return int(blocks_per_slice * blocks_per_slice * topk_ratio) - 1


@dataclasses.dataclass(frozen=True)
class SparseSettings:
    """What the block mask depends on: top-k budget, cached time slices, local window."""

    topk: int
    kv_len: int
    local_range: int

    @classmethod
    def from_ratios(cls, height: int, width: int, sparse_ratio: float, kv_ratio: float, local_range: int,
                    topk_ratio: float | None = None) -> SparseSettings:
        """Settings for an output (or tile) of height x width pixels, whose token grid is
        height/16 x width/16 (VAE stride 8, patch 2).

        `topk_ratio` overrides the value derived from `sparse_ratio` (the fixture's case C
        states it directly).
        """
        ratio = topk_ratio if topk_ratio is not None else topk_ratio_for(sparse_ratio, height, width)
        token_h, token_w = height // PIXELS_PER_TOKEN, width // PIXELS_PER_TOKEN
        blocks = WINDOW[0] * token_h * token_w // BLOCK_TOKENS
        return cls(topk=topk_for(blocks, ratio), kv_len=int(kv_ratio), local_range=int(local_range))


def check_token_grid(token_h: int, token_w: int) -> None:
    if token_h % WINDOW[1] or token_w % WINDOW[2]:
        raise ValueError(
            f"token grid {token_h}x{token_w} does not tile into {WINDOW[1]}x{WINDOW[2]} windows; "
            "the output height and width must be multiples of 128 pixels"
        )


def to_windows(x: torch.Tensor, frames: int, token_h: int, token_w: int) -> torch.Tensor:
    """Tokens [L, D] in (frame, row, col) order to windows [n, 128, D] in (slice, row, col) order."""
    wf, wh, ww = WINDOW
    dim = x.shape[-1]
    x = x.reshape(frames // wf, wf, token_h // wh, wh, token_w // ww, ww, dim)
    return x.permute(0, 2, 4, 1, 3, 5, 6).reshape(-1, BLOCK_TOKENS, dim)


def from_windows(windows: torch.Tensor, frames: int, token_h: int, token_w: int) -> torch.Tensor:
    """The inverse of `to_windows`: windows [n, 128, D] back to tokens [L, D]."""
    wf, wh, ww = WINDOW
    dim = windows.shape[-1]
    x = windows.reshape(frames // wf, token_h // wh, token_w // ww, wf, wh, ww, dim)
    return x.permute(0, 3, 1, 4, 2, 5, 6).reshape(frames * token_h * token_w, dim)


def local_block_mask(grid_h: int, grid_w: int, local_range: int,
                     device: torch.device | None = None) -> torch.Tensor:
    """Which spatial blocks each block may see: [n, n] bool with n = grid_h * grid_w.

    Block (r, c) sees rows r - lr//2 ... r - lr//2 + lr - 1 and the same span of columns,
    not clamped at the borders, so an even `local_range` gives an off-centre window.
    """
    rows = torch.arange(grid_h, device=device).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, device=device).repeat(grid_h)
    half = local_range // 2
    row_ok = (rows[None, :] >= rows[:, None] - half) & (rows[None, :] <= rows[:, None] - half + local_range - 1)
    col_ok = (cols[None, :] >= cols[:, None] - half) & (cols[None, :] <= cols[:, None] - half + local_range - 1)
    return row_ok & col_ok


def tile_local_mask(local_mask: torch.Tensor, n_q: int, n_k: int) -> torch.Tensor:
    """One time slice's local mask [n, n] repeated over n_q query and n_k key windows."""
    per_slice = local_mask.shape[0]
    if n_q % per_slice or n_k % per_slice:
        raise ValueError(f"{n_q} query and {n_k} key windows are not whole time slices of {per_slice}")
    return local_mask.repeat(n_q // per_slice, n_k // per_slice)


def draft_block_mask(q_pooled: torch.Tensor, k_pooled: torch.Tensor, num_heads: int, q_slices: int,
                     topk: int, local_mask: torch.Tensor) -> torch.Tensor:
    """The block mask [heads, n_q, n_k] (bool) from window-mean queries and keys.

    q_pooled [n_q, D] and k_pooled [n_k, D] are the means of each window's post-norm,
    post-RoPE vectors. Per head: scaled scores, the local window (tiled over all time
    slices) as -inf, softmax over key blocks; then per head and query time slice the
    probabilities of all its rows are ranked together and those strictly above the
    (k+1)-th largest are kept, k = min(candidates - 1, topk).

    local_mask: the local window over all time slices, [n_q, n_k] (`tile_local_mask` of
    `local_block_mask`; the DiT builds it once per chunk for all its blocks).
    """
    n_q, dim = q_pooled.shape
    n_k = k_pooled.shape[0]
    if tuple(local_mask.shape) != (n_q, n_k):
        raise ValueError(f"local mask {tuple(local_mask.shape)} does not fit {n_q} query and {n_k} key windows: "
                         "every block's cache must hold the same time slices")
    head_dim = dim // num_heads
    q = q_pooled.float().reshape(n_q, num_heads, head_dim).transpose(0, 1)
    k = k_pooled.float().reshape(n_k, num_heads, head_dim).transpose(0, 1)
    scores = torch.matmul(q, k.transpose(1, 2)) / math.sqrt(head_dim)
    allowed = local_mask.to(scores.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    groups = probs.reshape(num_heads * q_slices, -1)
    keep = max(0, min(groups.shape[1] - 1, topk))
    threshold = torch.topk(groups, keep + 1, dim=1).values[:, -1:]
    return (groups > threshold).reshape(num_heads, n_q, n_k)


def pooled(windows: torch.Tensor) -> torch.Tensor:
    """The mean vector of each window [n, 128, D] -> [n, D], in float32."""
    return windows.mean(dim=1, dtype=torch.float32)


@dataclasses.dataclass
class WindowKVCache:
    """Post-RoPE keys and values of past windows, oldest time slice first.

    k, v: [n_windows, 128, D]; `windows_per_slice` windows make one time slice.
    """

    k: torch.Tensor
    v: torch.Tensor
    windows_per_slice: int

    @property
    def slices(self) -> int:
        return self.k.shape[0] // self.windows_per_slice


def extend_cache(cache: WindowKVCache | None, k_windows: torch.Tensor, v_windows: torch.Tensor,
                 windows_per_slice: int, kv_len: int) -> WindowKVCache:
    """Cache for the next chunk: every window this chunk used, less the oldest slice if over `kv_len`.

    `k_windows`/`v_windows` already hold the cached windows followed by the current ones.
    Only one slice is dropped per chunk, as upstream does.
    """
    if k_windows.shape[0] // windows_per_slice > kv_len:
        k_windows = k_windows[windows_per_slice:]
        v_windows = v_windows[windows_per_slice:]
    return WindowKVCache(k_windows, v_windows, windows_per_slice)


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor,
                           backend: str = "auto") -> torch.Tensor:
    """Attention of q [H, Lq, d] over k, v [H, Lk, d] restricted to the blocks of `block_mask`.

    block_mask [H, Lq/128, Lk/128] bool. Query rows whose blocks see nothing give 0.
    backend: "sdpa" (any device), "flex" (FlexAttention), or "auto" (flex on CUDA when
    its self-check passes, else sdpa).
    """
    if backend == "auto":
        backend = "flex" if q.is_cuda and flex_matches_sdpa(q.device, q.dtype) else "sdpa"
    if backend == "flex":
        return _flex_block_attention(q, k, v, block_mask)
    if backend != "sdpa":
        raise ValueError(f"unknown attention backend {backend!r}; use 'auto', 'sdpa' or 'flex'")
    return _sdpa_block_attention(q, k, v, block_mask)


def _sdpa_block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          block_mask: torch.Tensor) -> torch.Tensor:
    heads, len_q, _ = q.shape
    len_k = k.shape[1]
    block_mask = block_mask.to(q.device)
    if bool(block_mask.all()):
        return F.scaled_dot_product_attention(q[None], k[None], v[None])[0]
    alive = block_mask.any(dim=-1)
    # Dead query blocks attend everywhere (to avoid NaN rows) and are zeroed afterwards.
    safe_mask = block_mask | ~alive[..., None]
    rows_per_step = max(BLOCK_TOKENS, (SDPA_MASK_BUDGET // max(1, heads * len_k)) // BLOCK_TOKENS * BLOCK_TOKENS)
    out = torch.empty_like(q)
    for start in range(0, len_q, rows_per_step):
        stop = min(len_q, start + rows_per_step)
        blocks = safe_mask[:, start // BLOCK_TOKENS:stop // BLOCK_TOKENS]
        mask = blocks.repeat_interleave(BLOCK_TOKENS, dim=1).repeat_interleave(BLOCK_TOKENS, dim=2)
        out[:, start:stop] = F.scaled_dot_product_attention(
            q[None, :, start:stop], k[None], v[None], attn_mask=mask[None])[0]
    if not bool(alive.all()):
        dead_rows = (~alive).repeat_interleave(BLOCK_TOKENS, dim=1)
        out = out.masked_fill(dead_rows[..., None], 0)
    return out


_flex_lock = threading.Lock()
_flex_verdicts: dict[tuple[str, torch.dtype], bool] = {}
_flex_compiled = None


def _flex_kernel():
    global _flex_compiled
    if _flex_compiled is None:
        from torch.nn.attention.flex_attention import flex_attention

        _flex_compiled = torch.compile(flex_attention, dynamic=False)
    return _flex_compiled


def _flex_block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          block_mask: torch.Tensor, compiled: bool = True) -> torch.Tensor:
    """FlexAttention over the kept blocks, listed as full blocks for the fused kernel.

    The same mask is also given as a `mask_mod`, which is what FlexAttention's unfused
    (eager) fallback honours, so both paths attend to the same keys.
    """
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    len_q, len_k = q.shape[1], k.shape[1]
    block_mask = block_mask.to(q.device)
    counts = block_mask.sum(dim=-1, dtype=torch.int32)
    order = torch.argsort((~block_mask).to(torch.int8), dim=-1, stable=True).to(torch.int32)

    def inside_kept_block(batch, head, q_index, kv_index):
        return block_mask[head, q_index // BLOCK_TOKENS, kv_index // BLOCK_TOKENS]

    sparse = BlockMask.from_kv_blocks(torch.zeros_like(counts)[None], order[None], counts[None], order[None],
                                      BLOCK_SIZE=BLOCK_TOKENS, mask_mod=inside_kept_block,
                                      seq_lengths=(len_q, len_k))
    kernel = _flex_kernel() if compiled else flex_attention
    out = kernel(q[None], k[None], v[None], block_mask=sparse)[0]
    alive = block_mask.any(dim=-1).repeat_interleave(BLOCK_TOKENS, dim=1)
    return out.masked_fill(~alive[..., None], 0)


def flex_matches_sdpa(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether compiled FlexAttention reproduces the SDPA reference on this device and dtype.

    Checked once per (device, dtype) on a random problem with dead rows and ragged masks;
    any failure (no compiler, unsupported dtype, a mismatch) means SDPA is used instead.
    """
    key = (str(device), dtype)
    with _flex_lock:
        if key in _flex_verdicts:
            return _flex_verdicts[key]
        verdict = False
        try:
            generator = torch.Generator().manual_seed(0)
            heads, n_q, n_k, dim = 2, 3, 5, 64
            q = torch.randn(heads, n_q * BLOCK_TOKENS, dim, generator=generator).to(device, dtype)
            k = torch.randn(heads, n_k * BLOCK_TOKENS, dim, generator=generator).to(device, dtype)
            v = torch.randn(heads, n_k * BLOCK_TOKENS, dim, generator=generator).to(device, dtype)
            mask = torch.rand(heads, n_q, n_k, generator=generator) > 0.5
            mask[0, 1] = False
            mask[1, 0] = True
            mask = mask.to(device)
            want = _sdpa_block_attention(q.float(), k.float(), v.float(), mask)
            got = _flex_block_attention(q, k, v, mask).float()
            tolerance = 1e-4 if dtype == torch.float32 else 3e-2
            verdict = bool(torch.isfinite(got).all()) and float((got - want).abs().max()) <= tolerance
        except Exception:
            verdict = False
        _flex_verdicts[key] = verdict
        return verdict
