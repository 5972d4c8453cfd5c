"""Peak memory of a transcode does not grow with the clip's length (measured in child processes).

The same measurement of the ComfyUI-core way (whole clip as a float32 IMAGE batch, then encode)
is taken as a control: it must grow, or the measurement could not tell the difference.
"""

from __future__ import annotations

import subprocess
import sys

from tests import testsrc

_CHILD = """
import resource, sys
from vsrkit.engines.clip import Clip
from vsrkit.engines.video.decode import open_clip
from vsrkit.engines.video.encode import EncodeOptions, save_clip

mode, source, target = sys.argv[1:4]
clip = open_clip(source)
if mode == "whole":
    clip = Clip.from_tensor(clip.to_tensor(), clip.info.fps, audio=clip.info.audio)
save_clip(clip, target, EncodeOptions(preset="ultrafast"))
try:  # this process's own high-water mark (ru_maxrss can carry the parent's RSS across fork + exec)
    with open("/proc/self/status") as status:
        print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")))
except OSError:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_kib(mode: str, source, target) -> int:
    done = subprocess.run([sys.executable, "-c", _CHILD, mode, str(source), str(target)], check=True,
                          capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return int(done.stdout.strip().splitlines()[-1])


def test_transcode_peak_memory_does_not_grow_with_length(tmp_path):
    width, height, short = 96, 64, 128  # two chunks of 64 frames, then twenty
    sources = {}
    for name, count in (("short", short), ("long", short * 10)):
        sources[name] = testsrc.write_video(tmp_path / f"{name}.mp4",
                                            (testsrc.pattern_rgb(i, width, height) for i in range(count)), 24,
                                            options={"preset": "ultrafast"}, audio=testsrc.tone(count / 24))
    streaming = {name: _peak_kib("stream", path, tmp_path / f"{name}-out.mp4") for name, path in sources.items()}
    whole = {name: _peak_kib("whole", path, tmp_path / f"{name}-whole.mp4") for name, path in sources.items()}
    assert streaming["long"] < streaming["short"] * 1.15, streaming
    # control: holding every frame grows by ~ 1280 x 96 x 64 x 3 x 4 bytes (94 MB)
    assert whole["long"] > whole["short"] * 1.15, whole
