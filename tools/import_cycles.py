#!/usr/bin/env python3
"""Import cycles between the project's folders, counting imports inside functions too.

Usage (from the project root):  python tools/import_cycles.py [ROOT] [--files]

A cycle between two folders means neither can be read, tested or replaced without the other.
Imports placed inside functions hide such cycles from Python but not from this check.
Exit status 1 when a folder-level cycle exists; 0 otherwise (2 when ROOT/pyproject.toml cannot be read).

Modules are known by their import names: a folder installed under another name through
`[tool.setuptools.package-dir]` in ROOT/pyproject.toml (here "ipl.generators" = "generators") is named as
installed, so `import ipl.generators.stylegan2` resolves to generators/stylegan2/__init__.py. The nodes of
the cycle check stay folders on disk. `importlib.import_module("a.b")` (and `__import__("a.b")`) with a
string literal counts as an import of a.b; a computed name cannot be followed.

Used as a module (tests/test_layers.py): `scan(root)` returns the whole graph.
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

SKIP = {"tests", "build", "dist", ".venv", "venv", ".git", "runs", "docs", "assets"}


def package_dirs(root: Path) -> dict[str, str]:
    """ROOT/pyproject.toml's [tool.setuptools.package-dir]: import name -> folder relative to ROOT ({} if none)."""
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return {}
    text = pyproject.read_text(encoding="utf-8")
    if tomllib is None:
        if "package-dir" in text:
            raise RuntimeError(f"{pyproject} has a package-dir mapping; reading it needs Python 3.11+ or tomli")
        return {}
    table = tomllib.loads(text).get("tool", {}).get("setuptools", {}).get("package-dir", {})
    return {str(name): str(folder) for name, folder in table.items()}


def _parts(folder: str) -> tuple[str, ...]:
    return tuple(p for p in Path(folder).parts if p not in (".", ""))


def import_name(rel: Path, mapping: dict[str, str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(import name parts, path name parts) of a .py file at `rel` (relative to the root).

    The folder of the longest matching package-dir entry is replaced by that entry's import name.
    """
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    path_name = tuple(parts)
    best = None
    for name, folder in mapping.items():
        f = _parts(folder)
        if path_name[: len(f)] == f and len(rel.parts) > len(f) and (best is None or len(f) > len(best[1])):
            best = (tuple(p for p in name.split(".") if p), f)
    if best is None:
        return path_name, path_name
    return best[0] + path_name[len(best[1]):], path_name


def modules(root: Path, skip: set[str] = SKIP, mapping: dict[str, str] | None = None,
            path_names: dict[str, str] | None = None) -> dict[str, Path]:
    """Import name -> file of every project module. `path_names` (if given) collects the dotted path name
    of each module whose import name differs from it (path name -> import name)."""
    mapping = package_dirs(root) if mapping is None else mapping
    found = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in skip or any(p.startswith(".") for p in rel.parts):
            continue
        name, path_name = import_name(rel, mapping)
        if not name:
            continue
        dotted = ".".join(name)
        if dotted in found:
            print(f"warning: {rel} and {found[dotted].relative_to(root)} both import as {dotted}", file=sys.stderr)
            continue
        found[dotted] = path
        if path_names is not None and path_name != name and path_name:
            path_names[".".join(path_name)] = dotted
    return found


def _string(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _literal_import(call: ast.Call, mod: str, pkg: list[str]) -> str | None:
    """The absolute module name of `importlib.import_module("literal"[, package])` / `__import__("literal")`."""
    f = call.func
    if (isinstance(f, ast.Attribute) and f.attr == "import_module" and isinstance(f.value, ast.Name)
            and f.value.id == "importlib") or (isinstance(f, ast.Name) and f.id == "import_module"):
        relative_ok = True
    elif isinstance(f, ast.Name) and f.id == "__import__":
        relative_ok = False
    else:
        return None
    name = _string(call.args[0]) if call.args else None
    if not name:
        return None
    if not name.startswith("."):
        return name
    if not relative_ok:
        return None
    anchor = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "package"), None)
    if isinstance(anchor, ast.Name) and anchor.id == "__package__":
        base = pkg
    elif isinstance(anchor, ast.Name) and anchor.id == "__name__":
        base = mod.split(".")
    elif _string(anchor):
        base = _string(anchor).split(".")
    else:
        return None
    level = len(name) - len(name.lstrip("."))
    if level - 1 > len(base):
        return None
    up = base[: len(base) - (level - 1)]
    rest = name[level:]
    return ".".join(up + ([rest] if rest else [])) or None


def raw_imports(mod: str, path: Path):
    """Yield (candidate names, nested?, line) for every import in one file, relative imports made absolute.

    Candidates are tried in order: `from a import b` gives ("a.b", "a") (b may be a module or a name in a).
    """
    tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    is_pkg = path.name == "__init__.py"
    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]

    def visit(node, nested):
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for a in child.names:
                    yield (a.name,), nested, child.lineno
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = pkg[: len(pkg) - (child.level - 1)] if child.level > 1 else pkg
                    base = ".".join(up + ([base] if base else []))
                for a in child.names:
                    yield (f"{base}.{a.name}", base), nested, child.lineno
            elif isinstance(child, ast.Call):
                name = _literal_import(child, mod, pkg)
                if name:
                    yield (name,), nested, child.lineno
            yield from visit(child, inner)

    yield from visit(tree, False)


def _resolve(name: str, known) -> str | None:
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imported(mod: str, path: Path, known: dict[str, Path]):
    """Yield (target module, nested?) for every import of a project module in one file."""
    for candidates, nested, _ in raw_imports(mod, path):
        for c in candidates:
            t = _resolve(c, known)
            if t:
                yield t, nested
                break


def folder(mod: str, known: dict[str, Path]) -> str:
    return str(known[mod].parent)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            strong(v)
    return out


class Graph:
    """The import graph of one project (a plain class: the module also loads by path, outside sys.modules)."""

    def __init__(self, root: Path, known: dict[str, Path]):
        self.root = root
        self.known = known                                      # import name -> file
        self.files: dict[str, set[str]] = defaultdict(set)      # module -> modules it imports
        self.folders: dict[str, set[str]] = defaultdict(set)    # folder -> folders it imports from
        self.edges: dict[tuple[str, str], list[str]] = defaultdict(list)  # (folder, folder) -> "mod -> mod" lines
        self.hidden: set[tuple[str, str]] = set()               # (module, module) imports made inside a function
        self.path_imports: list[str] = []                       # imports by a path name the install maps elsewhere

    def folder_of(self, mod: str) -> str:
        """The module's folder relative to the root ('.' for a file at the root), '/'-separated."""
        return self.known[mod].parent.relative_to(self.root).as_posix()


def scan(root: Path, skip: set[str] = SKIP) -> Graph:
    root = Path(root).resolve()
    path_names: dict[str, str] = {}
    known = modules(root, skip, package_dirs(root), path_names)
    g = Graph(root, known)
    for mod, path in known.items():
        for candidates, is_nested, line in raw_imports(mod, path):
            target = next((t for t in map(lambda c: _resolve(c, known), candidates) if t), None)
            if target is None:
                shadow = next((t for t in map(lambda c: _resolve(c, path_names), candidates) if t), None)
                if shadow:
                    g.path_imports.append(f"{path.relative_to(root).as_posix()}:{line} imports {candidates[-1]}, "
                                          f"but that folder installs as {path_names[shadow]}")
                continue
            if target == mod:
                continue
            if is_nested:
                g.hidden.add((mod, target))
            g.files[mod].add(target)
            a, b = g.folder_of(mod), g.folder_of(target)
            if a != b:
                g.folders[a].add(b)
                g.edges[(a, b)].append(f"{mod} -> {target}{' (inside a function)' if is_nested else ''}")
    return g


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    root = Path(args[0] if args else ".").resolve()
    try:
        g = scan(root)
    except (RuntimeError, ValueError) as e:  # tomllib.TOMLDecodeError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in g.path_imports:
        print(f"warning: {line}", file=sys.stderr)
    folder_cycles = cycles(g.folders)
    print(f"{len(g.known)} modules, {sum(map(len, g.files.values()))} module-to-module imports, "
          f"{len(g.hidden)} of them made inside a function")
    for comp in folder_cycles:
        print(f"\nfolder cycle: {' <-> '.join(comp)}")
        members = set(comp)
        for (a, b), lines in sorted(g.edges.items()):
            if a in members and b in members:
                for line in lines[:6]:
                    print(f"  {a} -> {b}: {line}")
                if len(lines) > 6:
                    print(f"  {a} -> {b}: ... {len(lines) - 6} more")
    if "--files" in sys.argv:
        for comp in cycles(g.files):
            print(f"\nfile cycle: {' <-> '.join(comp)}")
    if not folder_cycles:
        print("no import cycle between folders")
    return 1 if folder_cycles else 0


if __name__ == "__main__":
    sys.exit(main())
