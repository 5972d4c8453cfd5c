"""Before/after comparison clips: layout geometry, frame pairing across chunks, crops, errors."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vsrkit.engines.clip import AudioTrack, Clip, ClipInfo
from vsrkit.engines.errors import InputError
from vsrkit.engines.video import compare as compare_module
from vsrkit.engines.video.compare import CompareOptions, compare_clips, resize_frames, wipe_split
from vsrkit.nodes.compare import NODE_CLASS_MAPPINGS


def indexed_clip(count: int, width: int, height: int, chunk: int, offset: float = 0.0,
                 fps: Fraction = Fraction(24)) -> Clip:
    """Frame i is a flat colour encoding i, served in chunks of `chunk` frames."""
    info = ClipInfo(width=width, height=height, fps=fps, frame_count=count)

    def source():
        for start in range(0, count, chunk):
            n = min(chunk, count - start)
            values = (torch.arange(start, start + n, dtype=torch.float32) / 100 + offset)
            yield values.view(n, 1, 1, 1).expand(n, height, width, 3).clone()

    return Clip(info, source)


def noise_clip(count: int, width: int, height: int, seed: int) -> Clip:
    g = torch.Generator().manual_seed(seed)
    return Clip.from_tensor(torch.rand((count, height, width, 3), generator=g), 24)


def test_side_by_side_puts_resized_before_left_and_after_right():
    before = noise_clip(3, 16, 12, seed=1)
    after = noise_clip(3, 32, 24, seed=2)
    options = CompareOptions(layout="side_by_side", divider_px=0, labels=False)
    out = compare_clips(before, after, options)
    assert (out.info.width, out.info.height, out.info.frame_count) == (64, 24, 3)
    frames = out.to_tensor()
    assert frames.shape == (3, 24, 64, 3)
    expected_left = resize_frames(before.to_tensor(), 32, 24, "bicubic")
    torch.testing.assert_close(frames[:, :, :32], expected_left)
    torch.testing.assert_close(frames[:, :, 32:], after.to_tensor())


def test_stacked_doubles_the_height():
    out = compare_clips(noise_clip(2, 8, 8, 1), noise_clip(2, 16, 16, 2),
                        CompareOptions(layout="stacked", divider_px=0, labels=False))
    frames = out.to_tensor()
    assert frames.shape == (2, 32, 16, 3)
    torch.testing.assert_close(frames[:, 16:], out_after := noise_clip(2, 16, 16, 2).to_tensor())
    assert not torch.equal(frames[:, :16], out_after)


def test_wipe_splits_at_the_position_with_a_divider():
    before = indexed_clip(4, 20, 10, chunk=4, offset=0.5)
    after = indexed_clip(4, 40, 20, chunk=4, offset=0.0)
    out = compare_clips(before, after, CompareOptions(layout="wipe", wipe_position=0.25, divider_px=2,
                                                      labels=False)).to_tensor()
    assert out.shape == (4, 20, 40, 3)
    split = 10
    for i in range(4):
        assert torch.allclose(out[i, :, : split - 1], torch.tensor(i / 100 + 0.5))
        assert torch.allclose(out[i, :, split + 1:], torch.tensor(i / 100))
        assert torch.all(out[i, :, split - 1: split + 1] == 1.0)


def test_wipe_sweep_moves_the_split_across_and_back():
    fps = 10.0
    options = CompareOptions(layout="wipe_sweep", sweep_seconds=2.0)
    splits = [wipe_split(i, 100, fps, options) for i in range(21)]
    assert splits[0] == 0
    assert splits[10] == 100
    assert splits[20] == 0
    assert splits[5] == 50 and splits[15] == 50
    assert all(a < b for a, b in zip(splits[:10], splits[1:11], strict=True))

    before = indexed_clip(21, 50, 10, chunk=7, offset=0.5, fps=Fraction(10))
    after = indexed_clip(21, 100, 20, chunk=5, fps=Fraction(10))
    out = compare_clips(before, after, CompareOptions(layout="wipe_sweep", sweep_seconds=2.0, divider_px=0,
                                                      labels=False)).to_tensor()
    before_columns = (out[:, 10, :, 0] >= 0.5).sum(dim=1).tolist()
    assert before_columns == splits


def test_frames_stay_paired_when_chunk_boundaries_differ():
    before = indexed_clip(23, 8, 6, chunk=5, offset=0.5)
    after = indexed_clip(23, 16, 12, chunk=7)
    out = compare_clips(before, after, CompareOptions(divider_px=0, labels=False))
    seen = 0
    for chunk in out.chunks():
        for frame in chunk:
            assert torch.allclose(frame[:, :16], torch.tensor(seen / 100 + 0.5), atol=1e-6)
            assert torch.allclose(frame[:, 16:], torch.tensor(seen / 100), atol=1e-6)
            seen += 1
    assert seen == 23


def test_crop_compares_one_region_of_the_upscaled_frame():
    before = noise_clip(2, 16, 16, 3)
    after = noise_clip(2, 64, 64, 4)
    out = compare_clips(before, after, CompareOptions(crop=(40, 8, 16, 20), divider_px=0, labels=False))
    assert (out.info.width, out.info.height) == (32, 20)
    frames = out.to_tensor()
    torch.testing.assert_close(frames[:, :, 16:], after.to_tensor()[:, 8:28, 40:56])
    full_left = resize_frames(before.to_tensor(), 64, 64, "bicubic")
    torch.testing.assert_close(frames[:, :, :16], full_left[:, 8:28, 40:56])


def full_resize_then_crop(frames: torch.Tensor, width: int, height: int, method: str,
                          region: tuple[int, int, int, int]) -> torch.Tensor:
    """The comparison's "before" as it was first computed: the whole frame resized, then cut."""
    nchw = frames.permute(0, 3, 1, 2)
    if method == "nearest":
        out = F.interpolate(nchw, size=(height, width), mode="nearest-exact")
    elif method == "area":
        out = F.interpolate(nchw, size=(height, width), mode="area")
    else:
        out = F.interpolate(nchw, size=(height, width), mode=method, align_corners=False, antialias=True)
    x, y, w, h = region
    return out.clamp(0, 1).permute(0, 2, 3, 1)[:, y:y + h, x:x + w]


@pytest.mark.parametrize("method", ["bicubic", "bilinear", "area", "nearest"])
@pytest.mark.parametrize("sizes", [(48, 27, 192, 108), (60, 40, 90, 60), (90, 60, 56, 38), (37, 23, 111, 80)],
                         ids=["4x", "1.5x", "down", "odd"])
def test_small_crop_resizes_only_its_region_and_matches_the_full_resize(monkeypatch, method, sizes):
    in_w, in_h, out_w, out_h = sizes
    before = noise_clip(3, in_w, in_h, seed=5)
    after = noise_clip(3, out_w, out_h, seed=6)

    def whole_frame_resize(*args, **kwargs):
        raise AssertionError("a small crop must not resize the whole before frame")

    for crop in [(out_w // 3, out_h // 4, 9, 7), (0, 0, 6, 5), (out_w - 7, out_h - 6, 0, 0)]:
        x, y = crop[:2]
        w, h = crop[2] or out_w - x, crop[3] or out_h - y
        expected = full_resize_then_crop(before.to_tensor(), out_w, out_h, method, (x, y, w, h))
        with monkeypatch.context() as patch:
            patch.setattr(compare_module, "resize_frames", whole_frame_resize)
            frames = compare_clips(before, after, CompareOptions(resize=method, crop=crop, divider_px=0,
                                                                 labels=False)).to_tensor()
        assert frames.shape == (3, h, 2 * w, 3)
        torch.testing.assert_close(frames[:, :, :w], expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(frames[:, :, w:], after.to_tensor()[:, y:y + h, x:x + w])


def test_large_crop_still_matches_the_full_resize():
    before, after = noise_clip(2, 40, 30, seed=7), noise_clip(2, 60, 45, seed=8)
    for crop in [(2, 1, 0, 0), (0, 10, 0, 20)]:
        frames = compare_clips(before, after, CompareOptions(crop=crop, divider_px=0, labels=False)).to_tensor()
        x, y = crop[:2]
        w, h = crop[2] or 60 - x, crop[3] or 45 - y
        expected = full_resize_then_crop(before.to_tensor(), 60, 45, "bicubic", (x, y, w, h))
        torch.testing.assert_close(frames[:, :, :w], expected, atol=1e-6, rtol=0)


def test_crop_is_clamped_to_the_frame_and_rejects_an_origin_outside():
    out = compare_clips(noise_clip(1, 8, 8, 1), noise_clip(1, 32, 32, 2),
                        CompareOptions(layout="wipe", crop=(24, 0, 100, 0)))
    assert (out.info.width, out.info.height) == (8, 32)
    with pytest.raises(InputError, match="crop origin"):
        compare_clips(noise_clip(1, 8, 8, 1), noise_clip(1, 32, 32, 2), CompareOptions(crop=(32, 0, 0, 0)))


def test_labels_mark_both_halves():
    plain = compare_clips(noise_clip(1, 160, 90, 1), noise_clip(1, 320, 180, 2),
                          CompareOptions(labels=False)).to_tensor()
    labelled = compare_clips(noise_clip(1, 160, 90, 1), noise_clip(1, 320, 180, 2),
                             CompareOptions(labels=True)).to_tensor()
    changed = (plain != labelled).any(dim=-1)[0]
    assert changed[:30, :60].any(), "no BEFORE label in the left half's corner"
    assert changed[:30, 320:380].any(), "no AFTER label in the right half's corner"
    assert not changed[60:, :].any(), "labels must stay in the top corners"
    corner = labelled[0, :30, :60]
    assert (corner == 1.0).any() and (corner == 0.0).any()


def test_result_keeps_the_after_clip_rate_and_audio():
    audio = AudioTrack(path="/nowhere/a.mkv", stream_index=1)
    after_info = ClipInfo(width=8, height=8, fps=Fraction(30000, 1001), frame_count=2, audio=audio)
    after = Clip(after_info, lambda: iter([torch.zeros(2, 8, 8, 3)]))
    out = compare_clips(noise_clip(2, 4, 4, 1), after)
    assert out.info.fps == Fraction(30000, 1001)
    assert out.info.audio is audio
    assert out.info.frame_count == 2


def test_frame_count_mismatch_is_refused_up_front_and_while_streaming():
    with pytest.raises(InputError, match="3 frames"):
        compare_clips(noise_clip(3, 4, 4, 1), noise_clip(4, 8, 8, 2))
    short = noise_clip(2, 4, 4, 1)
    lying = Clip(short.info.replace(frame_count=3), short.chunks)
    out = compare_clips(lying, noise_clip(3, 8, 8, 2))
    with pytest.raises(InputError, match="before clip ended at frame 2"):
        out.to_tensor()


def test_bad_options_name_the_parameter():
    with pytest.raises(InputError, match="layout"):
        compare_clips(noise_clip(1, 4, 4, 1), noise_clip(1, 8, 8, 2), CompareOptions(layout="diagonal"))
    with pytest.raises(InputError, match="wipe_position"):
        compare_clips(noise_clip(1, 4, 4, 1), noise_clip(1, 8, 8, 2), CompareOptions(wipe_position=1.5))


def test_real_clip_same_filter_halves_match_and_nearest_differs(footage):
    frames = []
    with av.open(str(footage / "carphone_qcif_pristine.mp4")) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == 6:
                break
    source = Clip.from_tensor(torch.from_numpy(np.stack(frames)).float() / 255, Fraction(30000, 1001))
    upscaled = source.map(lambda c: resize_frames(c, 352, 288, "bicubic"), width=352, height=288)
    same = compare_clips(source, upscaled, CompareOptions(divider_px=0, labels=False)).to_tensor()
    assert same.shape == (6, 288, 704, 3)
    torch.testing.assert_close(same[:, :, :352], same[:, :, 352:])
    nearest = compare_clips(source, upscaled, CompareOptions(resize="nearest", divider_px=0,
                                                             labels=False)).to_tensor()
    assert (nearest[:, :, :352] - nearest[:, :, 352:]).abs().mean() > 0.005


def test_node_builds_the_comparison_clip():
    node_cls = NODE_CLASS_MAPPINGS["vsrkitCompare"]
    spec = node_cls.INPUT_TYPES()["required"]
    assert spec["layout"][1]["default"] in spec["layout"][0]
    (clip,) = node_cls().compare(noise_clip(2, 8, 8, 1), noise_clip(2, 16, 16, 2), layout="wipe",
                                 crop_width=8, labels=False)
    assert (clip.info.width, clip.info.height, clip.info.frame_count) == (8, 16, 2)
    assert clip.to_tensor().shape == (2, 16, 8, 3)
