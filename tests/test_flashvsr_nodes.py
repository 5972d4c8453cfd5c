"""FlashVSR nodes, called directly without a host, on the golden fixture's tiny random model."""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from vsrkit.engines.clip import AudioTrack, Clip, ClipInfo
from vsrkit.engines.errors import InputError, ModelNotFoundError
from vsrkit.engines.progress import Progress
from vsrkit.nodes import host
from vsrkit.nodes.flashvsr import NODE_CLASS_MAPPINGS, FlashVSRLoader, FlashVSRUpscale

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "flashvsr" / "fixture"
FILES = ("dit.safetensors", "lq_proj.safetensors", "tcdecoder.safetensors", "prompt.safetensors")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vsrkit_home(tmp_path_factory):
    if not (FIXTURE / "dit.safetensors").is_file():
        pytest.skip(f"golden fixture absent in {FIXTURE}")
    home = tmp_path_factory.mktemp("vsrkit_home")
    folder = home / "models" / "FlashVSR-v1.1"
    folder.mkdir(parents=True)
    for name in FILES:
        shutil.copy(FIXTURE / name, folder / name)
    return home


@pytest.fixture
def env(vsrkit_home, monkeypatch):
    monkeypatch.setenv("VSRKIT_HOME", str(vsrkit_home))
    monkeypatch.setenv("VSRKIT_QUIET", "1")
    return vsrkit_home


@pytest.fixture
def model(env):
    (loaded,) = FlashVSRLoader().load(version="v1.1", precision="fp32", device="cpu")
    return loaded


def frames_of(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(1, height, width, 3, generator=generator)
    drift = torch.linspace(0, 0.2, count)[:, None, None, None]
    return (base * 0.8 + drift).clamp(0, 1)


class CountingClip:
    """A streaming clip that records how often and how far it was pulled."""

    def __init__(self, frames: torch.Tensor, chunk: int = 2):
        self.pulled = 0
        count, height, width, _ = frames.shape
        audio = AudioTrack(path="/nonexistent/audio.wav", codec="pcm_s16le")
        info = ClipInfo(width=width, height=height, fps=Fraction(30000, 1001), frame_count=count, audio=audio)

        def source():
            for start in range(0, count, chunk):
                self.pulled += 1
                yield frames[start:start + chunk]

        self.clip = Clip(info, source)


def test_nodes_are_registered_with_tooltips():
    assert set(NODE_CLASS_MAPPINGS) == {"vsrkitFlashVSRLoader", "vsrkitFlashVSRUpscale"}
    spec = FlashVSRUpscale.INPUT_TYPES()
    assert set(spec["optional"]) == {"clip", "images", "scene_threshold"}
    for section in ("required", "optional"):
        for name, entry in spec[section].items():
            assert entry[1].get("tooltip"), name


def test_loader_reads_the_version_folder(model):
    assert model.models.version == "v1.1"
    assert model.models.config["dit"]["dim"] == 64
    assert model.models.files["dit"].parent.name == "FlashVSR-v1.1"
    assert model.managed.device == torch.device("cpu")
    assert not model.offload_after_run


def test_loader_names_the_folders_it_searched(env):
    with pytest.raises(ModelNotFoundError) as caught:
        FlashVSRLoader().load(version="v1", precision="fp32", device="cpu")
    message = str(caught.value)
    assert str(env / "models" / "FlashVSR") in message
    assert "LQ_proj_in.ckpt" in message


def test_loader_never_reads_v1_files_as_v1_1(tmp_path, monkeypatch):
    if not (FIXTURE / "dit.safetensors").is_file():
        pytest.skip(f"golden fixture absent in {FIXTURE}")
    monkeypatch.setenv("VSRKIT_HOME", str(tmp_path))
    v1 = tmp_path / "models" / "FlashVSR"
    v1.mkdir(parents=True)
    for name in FILES:
        shutil.copy(FIXTURE / name, v1 / name)
    with pytest.raises(ModelNotFoundError) as caught:
        FlashVSRLoader().load(version="v1.1", precision="fp32", device="cpu")
    message = str(caught.value)
    assert str(tmp_path / "models" / "FlashVSR-v1.1") in message
    assert str(v1 / "FlashVSR-v1.1") in message
    assert f"Not read for v1.1: {v1}" in message  # the user is told why their files were passed over
    # v1.1 files in a FlashVSR-v1.1 subfolder of models/FlashVSR are found, and v1 still reads its own.
    (v1 / "FlashVSR-v1.1").mkdir()
    for name in FILES:
        shutil.copy(FIXTURE / name, v1 / "FlashVSR-v1.1" / name)
    (v11,) = FlashVSRLoader().load(version="v1.1", precision="fp32", device="cpu")
    assert v11.models.files["dit"] == v1 / "FlashVSR-v1.1" / "dit.safetensors"
    (v1_model,) = FlashVSRLoader().load(version="v1", precision="fp32", device="cpu")
    assert v1_model.models.files["dit"] == v1 / "dit.safetensors"


def test_upscale_images_gives_every_frame_at_exact_size(model):
    images = frames_of(3, 18, 22)
    clip, out = FlashVSRUpscale().upscale(model, scale=4, images=images, seed=7)
    assert out.shape == (3, 72, 88, 3)
    assert out.dtype == torch.float32 and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert clip.info.frame_count == 3 and (clip.info.width, clip.info.height) == (88, 72)
    torch.testing.assert_close(clip.to_tensor(), out, rtol=0, atol=0)
    # Each output frame takes its own input frame's colours (AdaIN), so the brightening drift lines up.
    means_in, means_out = images.mean(dim=(1, 2)), out.mean(dim=(1, 2))
    assert (means_out - means_in).abs().max() < 0.03
    assert means_out[2].mean() - means_out[0].mean() > 0.15


def test_upscale_clip_is_lazy_and_matches_the_images_path(model, monkeypatch):
    frames = frames_of(3, 18, 22)
    counting = CountingClip(frames)
    bars: list[Progress] = []

    def recording_progress(total, desc=""):
        bars.append(Progress(total, desc))
        return bars[-1]

    monkeypatch.setattr(host, "progress", recording_progress)
    clip, images = FlashVSRUpscale().upscale(model, scale=4, clip=counting.clip, seed=7)
    assert counting.pulled == 0 and not bars
    assert images.shape[0] == 0
    info = clip.info
    assert (info.width, info.height, info.frame_count, info.fps) == (88, 72, 3, Fraction(30000, 1001))
    assert info.audio == counting.clip.info.audio
    streamed = clip.to_tensor()
    assert counting.pulled == 2
    assert len(bars) == 1 and bars[0].done == 3 and bars[0].total == 3
    _, from_images = FlashVSRUpscale().upscale(model, scale=4, images=frames, seed=7)
    torch.testing.assert_close(streamed, from_images, rtol=0, atol=1e-6)


def test_images_output_depends_only_on_the_input_kind(model):
    """ComfyUI caches a node by its inputs: the outputs must not depend on what they feed."""
    assert "hidden" not in FlashVSRUpscale.INPUT_TYPES()
    counting = CountingClip(frames_of(2, 16, 16))
    clip, images = FlashVSRUpscale().upscale(model, scale=2, clip=counting.clip)
    assert images.shape == (0, 32, 32, 3) and counting.pulled == 0
    frames = frames_of(2, 16, 16)
    clip, images = FlashVSRUpscale().upscale(model, scale=2, images=frames)
    assert images.shape == (2, 32, 32, 3)
    torch.testing.assert_close(clip.to_tensor(), images, rtol=0, atol=0)


def test_offload_after_each_run(env):
    (model,) = FlashVSRLoader().load(version="v1.1", precision="fp32", device="cpu", offload="after each run")
    calls = []
    model.managed.offload = lambda: calls.append("offload")
    clip, _ = FlashVSRUpscale().upscale(model, scale=2, clip=CountingClip(frames_of(1, 16, 16)).clip)
    assert not calls
    assert clip.to_tensor().shape == (1, 32, 32, 3)
    assert calls == ["offload"]


def test_wrong_inputs_are_refused(model):
    images = frames_of(1, 16, 16)
    with pytest.raises(InputError, match="exactly one input"):
        FlashVSRUpscale().upscale(model, scale=2)
    with pytest.raises(InputError, match="exactly one input"):
        FlashVSRUpscale().upscale(model, scale=2, images=images, clip=Clip.from_tensor(images, 24))
    with pytest.raises(InputError, match="tile size"):
        FlashVSRUpscale().upscale(model, scale=2, images=images, tile_size=100)
    with pytest.raises(InputError, match="offload"):
        FlashVSRLoader().load(offload="sometimes")
