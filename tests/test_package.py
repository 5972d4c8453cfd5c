"""The pack's skeleton: importable by pip name, mappings well formed, no ComfyUI import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import vsrkit

PACKAGE = "vsrkit"
PACKAGE_ROOT = Path(vsrkit.__file__).resolve().parent
# ComfyUI's top-level modules (and the host's `nodes`), which engines must never import.
COMFY_MODULES = frozenset({"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server",
                           "execution", "latent_preview", "node_helpers", "nodes"})
NODES_PACKAGE = f"{PACKAGE}.nodes"


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


def _forbidden(module: str) -> bool:
    """Whether absolute module `module` is ComfyUI's or the pack's own nodes package."""
    return module.split(".")[0] in COMFY_MODULES or module == NODES_PACKAGE or module.startswith(NODES_PACKAGE + ".")


def _resolve(package: str, level: int, module: str | None) -> str | None:
    """The absolute name `from <level dots><module>` means inside `package` (None: above the top)."""
    parts = package.split(".")
    if level > len(parts):
        return None
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _imported_names(node: ast.AST, package: str) -> list[str]:
    """Absolute module names an import statement or import call may load (empty when it is neither)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level == 0:
            base = node.module or ""
        else:
            base = _resolve(package, node.level, node.module)
            if base is None:
                return [f"{'.' * node.level}{node.module or ''} (beyond the top-level package)"]
        # `from X import y` may load the submodule X.y as well as X itself.
        return [base] + [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
    if isinstance(node, ast.Call) and node.args:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        first = node.args[0]
        if name in ("import_module", "__import__") and isinstance(first, ast.Constant) and isinstance(first.value, str):
            text = first.value
            if text.startswith("."):
                level = len(text) - len(text.lstrip("."))
                resolved = _resolve(package, level, text.lstrip(".") or None)
                return [resolved if resolved is not None else f"{text} (beyond the top-level package)"]
            return [text]
    return []


def comfy_imports(path: Path, package: str) -> list[str]:
    """`file:line: ...` for each import in `path` (a module of `package`) of ComfyUI or of the pack's
    nodes: import statements anywhere (guarded or not), relative imports, importlib.import_module
    and __import__ with a literal name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        bad = [m for m in _imported_names(node, package) if _forbidden(m) or m.endswith("top-level package)")]
        if bad:
            found.append(f"{path}:{node.lineno}: imports {bad[0]}")
    return sorted(found, key=lambda line: int(line[len(f"{path}:"):].split(":")[0]))


def _package_of(path: Path) -> str:
    """The package a file of the pack belongs to, as Python sets __package__ for it."""
    return ".".join([PACKAGE, *path.resolve().parent.relative_to(PACKAGE_ROOT).parts])


def test_engine_sources_never_import_comfyui_or_the_nodes():
    files = sorted((PACKAGE_ROOT / "engines").rglob("*.py"))
    assert len(files) > 20 and PACKAGE_ROOT / "engines" / "realesrgan" / "loading.py" in files
    found = [line for path in files for line in comfy_imports(path, _package_of(path))]
    assert not found, "engines must stay ComfyUI-free:\n" + "\n".join(found)


ENGINES = f"{PACKAGE}.engines"
REALESRGAN = f"{PACKAGE}.engines.realesrgan"


@pytest.mark.parametrize("package,source,bad_lines", [
    (ENGINES, "from ..nodes import host\n", [1]),
    (REALESRGAN, "from ...nodes.realesrgan import RealESRGANLoader\n", [1]),
    (REALESRGAN, "from ... import nodes\n", [1]),
    (ENGINES, "from vsrkit.nodes import host\nfrom vsrkit import nodes\n", [1, 2]),
    (ENGINES, "import vsrkit.nodes.host as h\n", [1]),
    (ENGINES, "try:\n    import folder_paths\nexcept ImportError:\n    folder_paths = None\n", [2]),
    (ENGINES, "from ..nodes import host\ntry:\n    import folder_paths\nexcept ImportError:\n    pass\n", [1, 3]),
    (REALESRGAN, "def f():\n    from comfy.model_management import get_torch_device\n", [2]),
    (ENGINES, "import os, comfy_api.latest\nfrom comfy_extras import nodes_upscale_model\n", [1, 2]),
    (ENGINES, "import server\nimport execution\nimport latent_preview\nimport node_helpers\nimport nodes\n",
     [1, 2, 3, 4, 5]),
    (ENGINES, "from comfy_execution.graph import ExecutionBlocker\n", [1]),
    (ENGINES, "import importlib\nmodel_management = importlib.import_module('comfy.model_management')\n", [2]),
    (ENGINES, "from importlib import import_module\nx = import_module('folder_paths')\n", [2]),
    (ENGINES, "x = __import__('nodes')\n", [1]),
    (REALESRGAN, "import importlib\nx = importlib.import_module('...nodes.host', __package__)\n", [2]),
    (ENGINES, "from ... import anything\n", [1]),
    # allowed: the engines' own modules, look-alike names, names the scan cannot read
    (REALESRGAN, "from ..errors import InputError\nfrom .srvgg import SRVGGNetCompact\n", []),
    (REALESRGAN, "from ..nodes import x\n", []),  # vsrkit.engines.nodes, not the pack's nodes
    (ENGINES, "from .. import engines\nimport comfyui_like\nimport nodes_helper\nimport serverless\n", []),
    (ENGINES, "import importlib\nname = 'x'\nimportlib.import_module(name)\nimportlib.util.find_spec('os')\n", []),
])
def test_comfy_import_scan_catches_violations(tmp_path, package, source, bad_lines):
    """The scan itself, on a stand-in module probe.py of `package`: it names the file and each bad line."""
    path = tmp_path / "probe.py"
    path.write_text(source)
    found = comfy_imports(path, package)
    assert all(line.startswith(f"{path}:") for line in found), found
    assert [int(line[len(f"{path}:"):].split(":")[0]) for line in found] == bad_lines, found


def test_engines_never_import_comfyui():
    """Importing every engine module loads no ComfyUI module (vsrkit's own nodes come with the package)."""
    code = (
        "import sys, vsrkit.engines, pkgutil, importlib\n"
        "import vsrkit.engines as e\n"
        "for m in pkgutil.walk_packages(e.__path__, 'vsrkit.engines.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {sorted(COMFY_MODULES)!r}]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_help_runs():
    out = subprocess.run([sys.executable, "-m", "vsrkit.cli", "--help"], capture_output=True, text=True, check=True)
    assert "vsrkit" in out.stdout


def test_package_data_ships_the_files_read_at_run_time():
    """A non-editable install must carry the kernel source, the example workflows (UI, API, thumbnails)."""
    from vsrkit.engines.realesrgan.native_runtime import KERNEL_SOURCE

    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((PACKAGE_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"][PACKAGE]
    shipped = {path.resolve() for pattern in patterns for path in PACKAGE_ROOT.glob(pattern)}  # as setuptools does
    workflows = PACKAGE_ROOT / "workflows"
    needed = [KERNEL_SOURCE, *sorted(workflows.rglob("*.json")), *sorted(workflows.glob("*.jpg"))]
    assert any(p.parent.name == "api" for p in needed) and any(p.suffix == ".jpg" for p in needed)
    for path in needed:
        assert path.resolve() in shipped, f"{path.resolve().relative_to(PACKAGE_ROOT)} is not in package-data"


# What `engines/` keeps at its top: what every engine and the video package share.
SHARED_ENGINE_MODULES = {"__init__", "clip", "errors", "paths", "progress", "weights", "tiling", "device"}
ENGINE_PACKAGES = {"video", "realesrgan", "flashvsr", "cluster"}
MODEL_PACKAGES = (f"{PACKAGE}.engines.realesrgan", f"{PACKAGE}.engines.flashvsr")


def engine_import_graph() -> dict[str, set[str]]:
    """Module name -> the pack's engine modules it imports (statically, anywhere in the file)."""
    engines = PACKAGE_ROOT / "engines"
    modules = {}
    for path in sorted(engines.rglob("*.py")):
        relative = path.relative_to(PACKAGE_ROOT).with_suffix("")
        name = ".".join([PACKAGE, *relative.parts]).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        package = _package_of(path)
        targets = {m for node in ast.walk(tree) for m in _imported_names(node, package)}
        graph[name] = {m for m in targets if m in modules and m != name}
    return graph


def test_engines_layout_keeps_only_shared_modules_at_the_top():
    engines = PACKAGE_ROOT / "engines"
    top = {p.stem for p in engines.glob("*.py")}
    packages = {p.name for p in engines.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert top <= SHARED_ENGINE_MODULES, f"not shared, belongs in a package: {sorted(top - SHARED_ENGINE_MODULES)}"
    assert packages == ENGINE_PACKAGES
    assert not (engines / "testsrc.py").exists() and not (engines / "workflow.py").exists()


def test_video_modules_never_import_a_model_package():
    graph = engine_import_graph()
    video = [m for m in graph if m.startswith(f"{PACKAGE}.engines.video")]
    assert len(video) >= 10
    bad = {m: sorted(t for t in graph[m] if t.startswith(MODEL_PACKAGES)) for m in video}
    assert not any(bad.values()), bad


def test_shared_engine_modules_import_no_package_of_engines():
    graph = engine_import_graph()
    shared = [m for m in graph if m.count(".") == 2]
    assert f"{PACKAGE}.engines.clip" in shared
    bad = {m: sorted(t for t in graph[m] if t.count(".") > 2) for m in shared}
    assert not any(bad.values()), bad


def test_engine_imports_have_no_cycles():
    graph = engine_import_graph()
    # A package's __init__ is loaded with each of its modules; follow module edges only.
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        if name in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(name):] + [name]))
        if name in done:
            return
        for target in sorted(graph.get(name, ())):
            visit(target, stack + [name])
        done.add(name)

    for name in graph:
        visit(name, [])


def test_cycle_check_sees_a_cycle(monkeypatch):
    """The cycle check on a made-up graph: a -> b -> a is reported."""
    fake = {"a": {"b"}, "b": {"a"}}
    monkeypatch.setattr(sys.modules[__name__], "engine_import_graph", lambda: fake)
    with pytest.raises(AssertionError, match="a -> b -> a"):
        test_engine_imports_have_no_cycles()


# Test instrumentation lives in the tests (forward hooks, wrappers), never in production signatures.
INSTRUMENTATION_PARAMETERS = frozenset({"trace", "record"})
MAX_MODULE_LINES = 500
MAX_POSITIONAL = 6
# Where the positional-argument limit is held (model constructors elsewhere mirror their checkpoints).
FEW_ARGUMENT_MODULES = ("flashvsr", "tiling.py", "device.py")


def _functions(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]


def _parameters(function: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> list[str]:
    args = function.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return names


def _positional(function: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> int:
    """Positional parameters besides self and cls."""
    names = [a.arg for a in (*function.args.posonlyargs, *function.args.args)]
    return len([name for name in names if name not in ("self", "cls")])


def instrumentation_parameters(path: Path) -> list[str]:
    """`file:line: name(parameter)` for each function of `path` with a trace or record parameter."""
    return [f"{path}:{f.lineno}: {getattr(f, 'name', 'lambda')}({name})"
            for f in _functions(path) for name in _parameters(f) if name in INSTRUMENTATION_PARAMETERS]


def engine_files() -> list[Path]:
    files = sorted((PACKAGE_ROOT / "engines").rglob("*.py"))
    assert len(files) > 20 and PACKAGE_ROOT / "engines" / "flashvsr" / "wan_dit.py" in files
    return files


def test_no_engine_function_takes_a_trace_or_record_argument():
    found = [line for path in engine_files() for line in instrumentation_parameters(path)]
    assert not found, "capture values in the tests with hooks or wrappers instead:\n" + "\n".join(found)


@pytest.mark.parametrize("source,bad_lines", [
    ("def f(x, trace=None):\n    pass\n", [1]),
    ("class A:\n    def forward(self, x, *, record):\n        pass\n", [2]),
    ("async def f(record, /):\n    pass\n", [1]),
    ("g = lambda x, trace: x\n", [1]),
    ("def f(x, **trace):\n    pass\n", [1]),
    ("def f(x, recorder=None, traced=False):\n    trace = {}\n    record = []\n", []),
])
def test_instrumentation_scan_catches_violations(tmp_path, source, bad_lines):
    path = tmp_path / "probe.py"
    path.write_text(source)
    found = instrumentation_parameters(path)
    assert [int(line[len(f"{path}:"):].split(":")[0]) for line in found] == bad_lines, found


@pytest.mark.parametrize("folder", ["engines", "cli", "nodes"])
def test_no_module_of_engines_cli_or_nodes_is_over_500_lines(folder):
    files = engine_files() if folder == "engines" else sorted((PACKAGE_ROOT / folder).rglob("*.py"))
    lengths = {str(path.relative_to(PACKAGE_ROOT)): len(path.read_text(encoding="utf-8").splitlines())
               for path in files}
    assert len(lengths) > 3 and max(lengths.values()) > 100
    long = {name: lines for name, lines in lengths.items() if lines > MAX_MODULE_LINES}
    assert not long, f"split these by job (at most {MAX_MODULE_LINES} lines each): {long}"


def test_flashvsr_and_shared_engine_functions_take_few_positional_arguments():
    engines = PACKAGE_ROOT / "engines"
    files = [path for path in engine_files() if path.relative_to(engines).parts[0] in FEW_ARGUMENT_MODULES]
    assert engines / "flashvsr" / "pipeline.py" in files and engines / "tiling.py" in files
    found = [f"{path.relative_to(PACKAGE_ROOT)}:{f.lineno}: {getattr(f, 'name', 'lambda')} takes {_positional(f)}"
             for path in files for f in _functions(path) if _positional(f) > MAX_POSITIONAL]
    assert not found, "use keyword-only arguments or a small dataclass:\n" + "\n".join(found)
