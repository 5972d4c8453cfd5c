"""Per-stage values of FlashVSR runs, taken from outside the model code, for the golden fixture.

Forward hooks on the DiT's blocks take each block's output; test-side wrappers around the
DiT's chunk step, the block-mask draft, the LQ projector, the decoder and the tile blender
take the rest. Values are named as in the fixture (../shared/flashvsr/fixture):

    chunk<c>.lq_latents                  the projector's tokens for block 0
    chunk<c>.block<b>.blockmask          block b's self-attention block mask (uint8)
    chunk<c>.block<b>_out                block b's output
    chunk<c>.noise_pred                  the DiT's prediction
    chunk<c>.denoised                    the latents the decoder gets for chunk c
    chunk<c>.self_attn_cache_{k,v}.block<b>   block b's cache after chunk c
    video_pre_colorfix                   the blended frames of each decode, in order

The wrappers hold one stream's chunks in order, so a tiled run (several streams) is refused.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any
from unittest import mock

import torch

from vsrkit.engines import tiling
from vsrkit.engines.flashvsr import wan_dit


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().float().cpu()


class DiTRecorder:
    """Block outputs and block masks of every `forward_chunk` call of one DiT, one dict per call
    (`calls`), with the call's arguments (`arguments`) and result (`results`)."""

    def __init__(self, dit: wan_dit.WanDiT):
        self.dit = dit
        self.calls: list[dict[str, torch.Tensor]] = []
        self.arguments: list[dict[str, Any]] = []
        self.results: list[tuple[torch.Tensor, list]] = []
        self._block: int | None = None
        self._stack = ExitStack()

    def __enter__(self) -> DiTRecorder:
        for index, block in enumerate(self.dit.blocks):
            self._stack.callback(block.register_forward_pre_hook(functools.partial(self._enter_block, index)).remove)
            self._stack.callback(block.register_forward_hook(functools.partial(self._block_out, index)).remove)
        self._stack.enter_context(mock.patch.object(wan_dit, "draft_block_mask",
                                                    self._masks(wan_dit.draft_block_mask)))
        self._stack.enter_context(mock.patch.object(self.dit, "forward_chunk", self._chunks(self.dit.forward_chunk)))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _enter_block(self, index: int, module: torch.nn.Module, args: tuple) -> None:
        self._block = index

    def _block_out(self, index: int, module: torch.nn.Module, args: tuple, output: tuple) -> None:
        self.calls[-1][f"block{index}_out"] = _cpu(output[0])
        self._block = None

    def _masks(self, draft: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def recorded(*args: Any, **kwargs: Any) -> torch.Tensor:
            mask = draft(*args, **kwargs)
            if self._block is not None:
                self.calls[-1][f"block{self._block}.blockmask"] = mask[None].to(torch.uint8).cpu()
            return mask

        return recorded

    def _chunks(self, forward_chunk: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(forward_chunk)

        def recorded(*args: Any, **kwargs: Any) -> Any:
            self.calls.append({})
            self.arguments.append(dict(signature.bind(*args, **kwargs).arguments))
            result = forward_chunk(*args, **kwargs)
            self.results.append(result)
            return result

        return recorded


class PipelineRecorder:
    """The fixture's per-stage values of one untiled `FlashVSRPipeline` run (`stages`), the frames
    the projector saw (`projector_frames`, channel 0 at pixel (0, 0) of each frame) and each
    chunk's first latent (`latent_starts`)."""

    def __init__(self, pipeline: Any):
        self.pipeline = pipeline
        self.dit = DiTRecorder(pipeline.dit)
        self.decoded: list[torch.Tensor] = []
        self.blended: list[torch.Tensor] = []
        self.projector_frames: list[torch.Tensor] = []
        self._stack = ExitStack()

    def __enter__(self) -> PipelineRecorder:
        self._stack.enter_context(self.dit)
        decode, project = self.pipeline.decoder.decode, self.pipeline.lq_proj.stream
        frames = tiling.TileBlender.frames

        def decoded(latents: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            self.decoded.append(_cpu(latents))
            return decode(latents, *args, **kwargs)

        def projected(video: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.projector_frames.append(video[0, 0, :, 0, 0].cpu())
            return project(video, *args, **kwargs)

        def blended(blender: tiling.TileBlender) -> torch.Tensor:
            result = frames(blender)
            self.blended.append(_cpu(result))
            return result

        self._stack.enter_context(mock.patch.object(self.pipeline.decoder, "decode", decoded))
        self._stack.enter_context(mock.patch.object(self.pipeline.lq_proj, "stream", projected))
        self._stack.enter_context(mock.patch.object(tiling.TileBlender, "frames", blended))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def latent_starts(self) -> list[int]:
        return [int(arguments["first_frame"]) for arguments in self.dit.arguments]

    @property
    def stages(self) -> dict[str, Any]:
        starts = self.latent_starts
        if len(set(starts)) != len(starts):
            raise ValueError("the recorder follows one stream; this run had several tiles")
        stages: dict[str, Any] = {"video_pre_colorfix": list(self.blended)}
        decoded = torch.cat(self.decoded, dim=2) if self.decoded else None
        for chunk, (arguments, values, result) in enumerate(zip(self.dit.arguments, self.dit.calls, self.dit.results,
                                                                 strict=True)):
            prefix = f"chunk{chunk}."
            prediction, caches = result
            stages[prefix + "lq_latents"] = _cpu(arguments["lq_tokens"][0])
            stages[prefix + "noise_pred"] = _cpu(prediction)
            for key, value in values.items():
                stages[prefix + key] = value
            for block, cache in enumerate(caches):
                stages[f"{prefix}self_attn_cache_k.block{block}"] = _cpu(cache.k)
                stages[f"{prefix}self_attn_cache_v.block{block}"] = _cpu(cache.v)
            start, count = starts[chunk], prediction.shape[2]
            if decoded is not None and decoded.shape[2] >= start + count:
                stages[prefix + "denoised"] = decoded[:, :, start:start + count]
        return stages
