"""Packaging: pyproject lists every package folder, and the wheel ships one top-level name (ipl) that runs on its
own — sample and adapt the toy world from an installed copy, outside the repository."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PRODUCT = ("ipl", "generators", "cuda_ops")   # the repository folders that are installed


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def _folder_of(package: str, package_dir: dict[str, str]) -> Path:
    """The folder setuptools takes `package` from (longest package-dir entry that is a prefix of it)."""
    best = ""
    for name in package_dir:
        if (package == name or package.startswith(name + ".")) and len(name) > len(best):
            best = name
    rest = package[len(best):].lstrip(".")
    base = REPO / package_dir[best] if best in package_dir else REPO
    return base.joinpath(*rest.split(".")) if rest else base


def _import_name(folder: Path, package_dir: dict[str, str]) -> str:
    """The import name of a package folder: the longest package-dir folder containing it gives its prefix."""
    rel = folder.relative_to(REPO).parts
    hits = [(name, Path(d).parts) for name, d in package_dir.items() if rel[: len(Path(d).parts)] == Path(d).parts]
    if not hits:
        return ".".join(rel)
    name, base = max(hits, key=lambda h: len(h[1]))
    return ".".join([*(name.split(".") if name else []), *rel[len(base):]])


def test_pyproject_lists_every_package_folder():
    cfg = _setuptools()
    listed, package_dir = set(cfg["packages"]), cfg.get("package-dir", {})
    folders = {}   # import name -> folder, for every folder with an __init__.py
    for top in PRODUCT:
        for init in sorted((REPO / top).rglob("__init__.py")):
            if not any(p.startswith(".") or p == "__pycache__" for p in init.relative_to(REPO).parts):
                folders[_import_name(init.parent, package_dir)] = init.parent
    missing = sorted(set(folders) - listed)
    assert not missing, f"package folders missing from [tool.setuptools] packages: {missing} " \
                        f"({', '.join(str(folders[m].relative_to(REPO)) for m in missing)})"
    for name in sorted(listed):
        where = _folder_of(name, package_dir)
        assert (where / "__init__.py").is_file(), f"listed package {name} has no {where.relative_to(REPO)}/__init__.py"
    # Every package installs under the one top-level name.
    assert {n.split(".")[0] for n in listed} == {"ipl"}, sorted(listed)


def _run(cmd, cwd, env=None, timeout=300) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} exited {r.returncode}\n--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}"
    return r


@pytest.mark.wheel
def test_wheel_contents_install_and_run(tmp_path):
    py = sys.executable
    # 1. Build from the repository root. Build outputs (build/, ipl.egg-info) go to tmp_path, not the checkout:
    #    a stale build/lib would leak removed modules into later wheels.
    scratch = tmp_path / "scratch"
    (scratch / "egg").mkdir(parents=True)
    extra = tmp_path / "build.cfg"
    extra.write_text(f"[build]\nbuild_base = {scratch / 'build'}\n[egg_info]\negg_base = {scratch / 'egg'}\n"
                     f"[bdist_wheel]\nbdist_dir = {scratch / 'bdist'}\n")
    had_build = (REPO / "build").exists()
    env = dict(os.environ, DIST_EXTRA_CONFIG=str(extra), PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    wheels = tmp_path / "wheels"
    _run([py, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
         cwd=tmp_path, env=env)
    assert had_build or not (REPO / "build").exists(), "the wheel build wrote build/ into the repository"
    (wheel,) = wheels.glob("ipl-*.whl")

    # 2. Contents: one top-level name, the shipped toy assets, the CUDA sources, the mapped packages.
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"ipl"}, sorted(tops)
    for needed in ("ipl/assets/toy/generator.safetensors", "ipl/assets/toy/clip.safetensors",
                   "ipl/assets/toy/judge.safetensors", "ipl/generators/stylegan2/network.py",
                   "ipl/generators/__init__.py", "ipl/cuda_ops/__init__.py", "ipl/commands/cli.py"):
        assert needed in names, f"{needed} not in the wheel"
    ddpm = {n for n in names if n.startswith("ipl/assets/toy/ddpm/")}
    assert {"ipl/assets/toy/ddpm/config.json", "ipl/assets/toy/ddpm/diffusion_pytorch_model.safetensors"} <= ddpm, ddpm
    shipped_ddpm = {f"ipl/assets/toy/ddpm/{p.name}" for p in (REPO / "ipl" / "assets" / "toy" / "ddpm").iterdir()}
    assert shipped_ddpm <= ddpm, shipped_ddpm - ddpm
    cu = {n for n in names if n.startswith("ipl/cuda_ops/csrc/") and n.endswith(".cu")}
    assert cu == {f"ipl/cuda_ops/csrc/{p.name}" for p in (REPO / "cuda_ops" / "csrc").glob("*.cu")} and cu, cu
    assert not any(n.startswith(("ipl/tests/", "ipl/scripts/")) or "__pycache__" in n for n in names)

    # 3. Install into a plain folder and run from an empty working directory, the installed copy first on the
    #    path (ahead of the editable install of the checkout).
    target, work = tmp_path / "target", tmp_path / "work"
    work.mkdir()
    _run([py, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
         cwd=tmp_path, env=env)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "IPL_"))}
    env.update(PYTHONPATH=str(target), IPL_OFFLINE="1", IPL_HOME=str(tmp_path / "ipl_home"),
               TORCH_HOME=str(tmp_path / "torch_home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    # Each CLI call first reports where ipl, ipl.generators, ipl.cuda_ops and the CLI were imported from.
    cli = [py, "-c", "import sys, ipl, ipl.generators, ipl.cuda_ops, ipl.commands.cli as c\n"
                     "for m in (ipl, ipl.generators, ipl.cuda_ops, c): print('imported', m.__file__, file=sys.stderr)\n"
                     "c.main()"]

    def ipl_cli(*args: str) -> None:
        r = _run(cli + list(args), cwd=work, env=env)
        where = [line.split(" ", 1)[1] for line in r.stderr.splitlines() if line.startswith("imported ")]
        assert len(where) == 4 and all(Path(p).is_relative_to(target) for p in where), where

    # A 2+2-iteration adapt (small stage-1 batch and grids: ~half the CPU time of the defaults).
    ipl_cli("adapt", "--source", "toy", "--target", "on a dark background", "--iters", "2", "--iters-prompt", "2",
            "--batch-prompt", "4", "--sample-n", "2", "--out", "run", "--device", "cpu", "--quiet")
    assert (work / "run" / "generator.safetensors").is_file(), sorted(p.name for p in (work / "run").iterdir())
    resolved = json.loads((work / "run" / "config.json").read_text())["resolved"]
    assert Path(resolved["source_path"]).is_relative_to(target), resolved["source_path"]   # the installed toy asset
    # `ipl sample` of the registry name (the installed toy asset), and of the run (source row over adapted row).
    ipl_cli("sample", "toy", "--n", "2", "--out", "s.png")
    assert (work / "s.png").is_file()
    ipl_cli("sample", "run", "--n", "2", "--source-too", "--out", "run.png")
    assert (work / "run.png").is_file()
