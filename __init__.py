"""vsrkit: video super-resolution for ComfyUI.

Loaded by ComfyUI as a folder in custom_nodes/ (relative imports only: ComfyUI has
its own top-level `nodes` module) and installable with pip as the `vsrkit` package.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__version__ = "0.1.0"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "__version__"]
