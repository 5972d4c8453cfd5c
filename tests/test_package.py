"""The pack's skeleton: importable by pip name, mappings well formed, no ComfyUI import."""

import subprocess
import sys


def test_node_mappings_are_consistent():
    import vsrkit

    for name, cls in vsrkit.NODE_CLASS_MAPPINGS.items():
        assert name.startswith("vsrkit"), name
        assert name in vsrkit.NODE_DISPLAY_NAME_MAPPINGS, name
        assert cls.CATEGORY.startswith("vsrkit"), name
        assert isinstance(cls.RETURN_TYPES, tuple), name
        assert callable(getattr(cls, cls.FUNCTION)), name
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for input_name, entry in spec.get(section, {}).items():
                options = entry[1] if len(entry) > 1 else {}
                assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"


def test_engines_never_import_comfyui():
    code = (
        "import sys, vsrkit.engines, pkgutil, importlib\n"
        "import vsrkit.engines as e\n"
        "for m in pkgutil.walk_packages(e.__path__, 'vsrkit.engines.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'folder_paths', 'comfy_api', 'nodes')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_help_runs():
    out = subprocess.run([sys.executable, "-m", "vsrkit.cli", "--help"], capture_output=True, text=True, check=True)
    assert "vsrkit" in out.stdout
