"""vsrkit: video super-resolution for ComfyUI.

Loaded by ComfyUI as a folder in custom_nodes/ (relative imports only: ComfyUI has
its own top-level `nodes` module) and installable with pip as the `vsrkit` package.
"""

__version__ = "0.1.0"

if __package__:
    # Imported as a package (ComfyUI, pip). pytest also loads this file bare, as the
    # package of the tests folder, where relative imports cannot work and are not needed.
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "__version__"]
