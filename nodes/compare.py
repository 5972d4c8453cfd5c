"""Node: a before/after comparison clip (side by side, stacked, or a wipe)."""

from __future__ import annotations

from ..engines.video.compare import LAYOUTS, RESIZE_FILTERS, CompareOptions, compare_clips
from .types import CATEGORY, CLIP


class Compare:
    """Shows the source (plainly resized to the output size) against the upscaled clip."""

    DESCRIPTION = ("Before/after comparison of an upscale: the source clip resized with a plain filter "
                   "to the upscaled size, next to or wiped into the upscaled clip. Save it with Save Video.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "before": (CLIP, {"tooltip": "The source clip (e.g. Load Video's output), shown on the left/top; "
                                             "it is resized to the after clip's size with the resize filter."}),
                "after": (CLIP, {"tooltip": "The upscaled clip, shown on the right/bottom; it sets the output "
                                            "size, frame rate and audio. It must have as many frames as before."}),
                "layout": (list(LAYOUTS), {"default": "side_by_side",
                                           "tooltip": "side_by_side and stacked show both whole (twice the "
                                                      "width/height); wipe splits one frame at wipe_position; "
                                                      "wipe_sweep moves the split across and back."}),
                "resize": (list(RESIZE_FILTERS), {"default": "bicubic",
                                                  "tooltip": "Plain resize used for the before clip: what the "
                                                             "upscale is judged against."}),
                "wipe_position": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                                            "tooltip": "wipe: fraction of the width (from the left) that "
                                                       "shows the before clip."}),
                "sweep_seconds": ("FLOAT", {"default": 4.0, "min": 0.5, "max": 60.0, "step": 0.5,
                                            "tooltip": "wipe_sweep: seconds for one left-right-left sweep."}),
                "crop_x": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 1,
                                   "tooltip": "Left edge of the region to compare, in upscaled pixels."}),
                "crop_y": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 1,
                                   "tooltip": "Top edge of the region to compare, in upscaled pixels."}),
                "crop_width": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 1,
                                       "tooltip": "Width of the region in upscaled pixels; 0: to the right "
                                                  "edge. A crop keeps a side-by-side output small."}),
                "crop_height": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 1,
                                        "tooltip": "Height of the region in upscaled pixels; 0: to the "
                                                   "bottom edge."}),
                "labels": ("BOOLEAN", {"default": True,
                                       "tooltip": "Draw BEFORE and AFTER labels in the corners."}),
            },
        }

    RETURN_TYPES = (CLIP,)
    RETURN_NAMES = ("comparison",)
    OUTPUT_TOOLTIPS = ("The comparison clip; connect it to Save Video.",)
    FUNCTION = "compare"
    CATEGORY = f"{CATEGORY}/video"

    def compare(self, before, after, layout="side_by_side", resize="bicubic", wipe_position=0.5,
                sweep_seconds=4.0, crop_x=0, crop_y=0, crop_width=0, crop_height=0, labels=True):
        options = CompareOptions(layout=layout, resize=resize, wipe_position=float(wipe_position),
                                 sweep_seconds=float(sweep_seconds),
                                 crop=(int(crop_x), int(crop_y), int(crop_width), int(crop_height)),
                                 labels=bool(labels))
        return (compare_clips(before, after, options),)


NODE_CLASS_MAPPINGS = {"vsrkitCompare": Compare}
NODE_DISPLAY_NAME_MAPPINGS = {"vsrkitCompare": "Compare Before/After (vsrkit)"}
