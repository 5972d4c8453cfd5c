"""ComfyUI glue: one small class per node, all logic in `engines/`.

Each module below defines NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS;
this package merges them. The custom clip type that flows between vsrkit nodes
is `VSRKIT_CLIP` (an `engines.clip.Clip`).
"""

from . import compare, flashvsr, preprocess, realesrgan, temporal, video

_MODULES = (video, preprocess, realesrgan, flashvsr, temporal, compare)

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
for _module in _MODULES:
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
