"""A tiny random world for CLI tests (16 px StyleGAN2 in our format + tiny random CLIP), and `ipl` run in-process."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from ipl import generators
from ipl.commands.cli import main
from ipl.generators.stylegan2.network import Generator
from tiny_clip import write_tiny_clip_files


def tiny_world(root: Path, seed: int = 0, clip_seed: int = 0, name: str = "tiny_sg2.safetensors") -> dict:
    """{"root", "gen" (str path), "clip" (spec with random weights)}; the same files for the same seeds."""
    torch.manual_seed(seed)
    G = Generator(z_dim=16, w_dim=16, img_resolution=16, mapping_layers=2, channels={4: 16, 8: 16, 16: 8})
    gen = generators.save(G, Path(root) / name)
    cfg, _ = write_tiny_clip_files(Path(root) / "clip", seed=clip_seed)
    return {"root": Path(root), "gen": str(gen), "clip": f"{cfg}:none"}


def run_main(monkeypatch, capsys, args) -> tuple[int, str]:
    """(exit status, stderr) of `ipl ARGS` through the console entry point (user errors exit 2)."""
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["ipl", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err

