"""The package layers: no import cycle between folders, imports only go down the layer order, and the product
never imports scripts or tests. Uses tools/import_cycles.py (import names follow pyproject's package-dir
mapping, so generators/ is known as ipl.generators and cuda_ops/ as ipl.cuda_ops).
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOOL = REPO / "tools" / "import_cycles.py"

# Bottom-up. A folder may import from its own layer or a lower one, never from a higher one. A sub-folder not
# listed takes the layer of its nearest listed parent; "generators/*" is every family folder under generators/.
LAYERS = [
    ["ipl/core"],
    ["cuda_ops"],
    ["ipl/method"],
    ["generators/*"],    # the families: stylegan2, diffusion, toy
    ["generators"],      # generators/__init__.py: the family table, may import the families
    ["ipl"],             # run.py, registry.py, download.py, inversion.py, distributed.py, __init__.py
    ["ipl/metrics"],
    ["ipl/ui"],          # the web page: calls the product and the metrics, never the CLI modules
    ["ipl/commands"],
]
PRODUCT = ("ipl", "generators", "cuda_ops")   # top folders of what is installed (as ipl, ipl.generators, ipl.cuda_ops)


def layer_of(folder: str) -> int | None:
    """Layer index of a folder ('/'-separated, relative to the repo); None outside the product.

    Fails on a product folder the table does not place, so a new folder has to be given a layer."""
    if folder.split("/")[0] not in PRODUCT:
        return None
    best, best_len = None, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if name.endswith("/*"):
                base = name[:-2]
                hit = folder.startswith(base + "/")
                size = len(base) + 1
            else:
                hit = folder == name or folder.startswith(name + "/")
                size = len(name)
            if hit and size > best_len:
                best, best_len = i, size
    if best is None:
        pytest.fail(f"folder {folder!r} has no layer: add it to LAYERS in {__file__}")
    return best


def _load_tool():
    spec = importlib.util.spec_from_file_location("import_cycles", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool():
    return _load_tool()


@pytest.fixture(scope="module")
def graph(tool):
    return tool.scan(REPO)


def _run_tool(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), str(root)], capture_output=True, text=True, timeout=120)


# ----------------------------------------------------------------------------------------------- the repository

def test_no_import_cycle_between_folders():
    r = _run_tool(REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no import cycle between folders" in r.stdout, r.stdout


def test_mapped_packages_are_known_by_their_import_names(graph):
    assert graph.known["ipl.generators"] == REPO / "generators" / "__init__.py"
    assert graph.known["ipl.generators.stylegan2.network"] == REPO / "generators" / "stylegan2" / "network.py"
    assert graph.known["ipl.cuda_ops"] == REPO / "cuda_ops" / "__init__.py"
    assert not any(m.split(".")[0] in ("generators", "cuda_ops") for m in graph.known)


def test_imports_only_go_down_the_layers(graph):
    wrong = []
    for (a, b), lines in sorted(graph.edges.items()):
        la, lb = layer_of(a), layer_of(b)
        if la is not None and lb is not None and la < lb:
            wrong.append(f"{a} (layer {la}) -> {b} (layer {lb}): " + "; ".join(sorted(set(lines))[:4]))
    assert not wrong, "imports from a lower layer to a higher one:\n" + "\n".join(wrong)


def test_every_product_folder_has_a_layer(graph):
    for mod in graph.known:
        layer_of(graph.folder_of(mod))   # fails on an unplaced product folder


def test_product_imports_no_scripts_tests_or_tools(tool, graph):
    # 1. Through the graph: no edge from the product to a folder outside it (scripts/, tools/, the root).
    outside = [f"{a} -> {b}: {lines[0]}" for (a, b), lines in sorted(graph.edges.items())
               if a.split("/")[0] in PRODUCT and b.split("/")[0] not in PRODUCT]
    assert not outside, "the product imports non-product code:\n" + "\n".join(outside)
    # 2. By name, whatever resolves: tests/ is no node of the graph, and a script can be imported through a
    #    sys.path edit by its bare file name (as the benchmarks do with bench_common).
    bare = {p.stem for top in ("scripts", "tests") for p in (REPO / top).rglob("*.py")} - {"__init__"}
    found = []
    for mod, path in graph.known.items():
        if graph.folder_of(mod).split("/")[0] not in PRODUCT:
            continue
        for candidates, _nested, line in tool.raw_imports(mod, path):
            top = candidates[-1].split(".")[0]
            if top in ("scripts", "tests") or (top in bare and top not in graph.known):
                found.append(f"{path.relative_to(REPO)}:{line} imports {candidates[-1]}")
    assert not found, "the product imports scripts or tests:\n" + "\n".join(found)


def test_product_imports_mapped_folders_by_their_import_names(graph):
    """`import generators` works from the repository root only (and loads a second copy of every module)."""
    bad = [line for line in graph.path_imports if line.split("/")[0] in PRODUCT]
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------------------- the tool on a small fake project

PYPROJECT = """\
[project]
name = "pkg"
version = "0"

[tool.setuptools]
packages = ["pkg", "pkg.plugins"]

[tool.setuptools.package-dir]
"pkg.plugins" = "plugins"
"""


def _fake_project(root: Path, core: str, plugin: str, pyproject: str = PYPROJECT) -> Path:
    files = {
        "pyproject.toml": pyproject,
        "pkg/__init__.py": "",
        "pkg/core.py": core,
        "plugins/__init__.py": "",
        "plugins/a.py": plugin,
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


CORE_TO_PLUGIN = {
    "from-import": "from pkg.plugins.a import thing\n",
    "import-in-function": "def f():\n    import pkg.plugins.a\n",
    "relative": "from .plugins import a\n",
    "import_module": "import importlib\nA = importlib.import_module('pkg.plugins.a')\n",
    "import_module-relative": "from importlib import import_module\n"
                              "def f():\n    return import_module('.plugins.a', __package__)\n",
}
PLUGIN_TO_CORE = {
    "absolute": "import pkg.core\nthing = 1\n",
    "relative": "from ..core import f\nthing = 1\n",
}


@pytest.mark.parametrize("core", sorted(CORE_TO_PLUGIN))
@pytest.mark.parametrize("plugin", sorted(PLUGIN_TO_CORE))
def test_tool_finds_a_cycle_through_a_mapped_package(tmp_path, core, plugin):
    root = _fake_project(tmp_path, CORE_TO_PLUGIN[core], PLUGIN_TO_CORE[plugin])
    r = _run_tool(root)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "folder cycle: pkg <-> plugins" in r.stdout, r.stdout
    assert "pkg.core -> pkg.plugins.a" in r.stdout and "pkg.plugins.a -> pkg.core" in r.stdout, r.stdout


def test_tool_without_the_cycle_exits_0(tmp_path):
    root = _fake_project(tmp_path, CORE_TO_PLUGIN["import_module"], "thing = 1\n")
    r = _run_tool(root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no import cycle between folders" in r.stdout
    assert r.stdout.startswith("4 modules, 1 module-to-module imports, 0 of them made inside a function"), r.stdout


def test_tool_reads_the_mapping_from_pyproject(tmp_path, tool):
    # Without the mapping plugins/ is the top-level package `plugins`: pkg.plugins.a is nothing of ours.
    unmapped = PYPROJECT.split("[tool.setuptools.package-dir]")[0]
    root = _fake_project(tmp_path, CORE_TO_PLUGIN["from-import"], PLUGIN_TO_CORE["absolute"], unmapped)
    assert _run_tool(root).returncode == 0
    assert set(tool.scan(root).known) == {"pkg", "pkg.core", "plugins", "plugins.a"}
    (root / "pyproject.toml").write_text(PYPROJECT)
    assert set(tool.scan(root).known) == {"pkg", "pkg.core", "pkg.plugins", "pkg.plugins.a"}
    assert _run_tool(root).returncode == 1


def test_tool_flags_imports_by_the_path_name(tmp_path, tool):
    root = _fake_project(tmp_path, "import plugins.a\n", "thing = 1\n")
    g = tool.scan(root)
    assert g.path_imports == ["pkg/core.py:1 imports plugins.a, but that folder installs as pkg.plugins.a"]
    assert not g.files.get("pkg.core")
