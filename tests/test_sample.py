"""`ipl sample`: seeds, grids, per-seed PNGs, errors; ipl.core.images helpers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ipl import generators
from ipl.commands.cli import cli
from ipl.commands.sample import render_seeds, resolve_generators
from ipl.core.seeds import parse_seeds
from ipl.core.errors import IPLError
from ipl.core.images import make_grid, save_grid, to_uint8


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("5, 1,7-8") == [5, 1, 7, 8]
    for bad in ["3-1", "a", ""]:
        with pytest.raises(IPLError):
            parse_seeds(bad)


def test_to_uint8_and_grid_layout():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 1, 4).expand(1, 3, 1, 4)
    assert to_uint8(x)[0, 0].tolist() == [[0, 0, 0], [128, 128, 128], [255, 255, 255], [255, 255, 255]]
    a = torch.full([3, 3, 4, 4], -1.0)  # black
    b = torch.full([3, 3, 4, 4], 1.0)   # white
    grid = make_grid([a, b], padding=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    assert (grid[1:5, 1:5] == 0).all() and (grid[6:10, 1:5] == 255).all()  # row a over row b
    grid = make_grid([a, b], nrow=2, padding=1)  # wraps: a[0:2], b[0:2], a[2:], b[2:]
    assert grid.shape == (4 * 5 + 1, 2 * 5 + 1, 3)
    assert (grid[11:15, 1:5] == 0).all() and (grid[16:20, 1:5] == 255).all()


def test_render_seeds_is_batch_independent(fixtures_dir):
    G = generators.load(fixtures_dir / "nvidia_sg2ada_64_cond_clamp.pkl")
    a = render_seeds(G, [3, 4, 5], truncation=0.7, batch=3, progress=False)
    b = render_seeds(G, [5], truncation=0.7, batch=1, progress=False)
    assert torch.allclose(a[2], b[0], atol=1e-4)
    assert (a[0] - a[1]).abs().max() > 1e-2  # different seeds, different images
    c0 = render_seeds(G, [3], truncation=0.7, class_idx=0, progress=False)
    c1 = render_seeds(G, [3], truncation=0.7, class_idx=1, progress=False)
    assert (c0 - c1).abs().max() > 1e-2  # same z, the label matters
    with pytest.raises(IPLError, match="out of range"):
        render_seeds(G, [0], class_idx=9, progress=False)


def test_cli_grid_and_outdir(tmp_path, fixtures_dir):
    ckpt = fixtures_dir / "rosinality_sg2_64.pt"
    runner = CliRunner()
    res = runner.invoke(cli, ["sample", "--ckpt", str(ckpt), "--n", "4", "--seeds", "0-3", "--truncation", "0.7",
                              "--out", str(tmp_path / "grid.png"), "--outdir", str(tmp_path / "imgs")])
    assert res.exit_code == 0, res.output
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (2 * 66 + 2, 2 * 66 + 2, 3)  # 4 images laid out 2x2 with 2-px padding
    G = generators.load(ckpt)
    expected = to_uint8(render_seeds(G, [0, 1, 2, 3], truncation=0.7, progress=False))
    tile = grid[2 + 66: 2 + 66 + 64, 2: 2 + 64]  # seed 2: second line, first column
    assert np.abs(tile.astype(int) - expected[2].astype(int)).max() <= 1
    files = sorted(p.name for p in (tmp_path / "imgs").iterdir())
    assert files == [f"seed{s:04d}.png" for s in range(4)]
    png = np.asarray(Image.open(tmp_path / "imgs" / "seed0003.png"))
    assert np.abs(png.astype(int) - expected[3].astype(int)).max() <= 1


def test_cli_errors(tmp_path, fixtures_dir):
    runner = CliRunner()
    res = runner.invoke(cli, ["sample", "--ckpt", str(fixtures_dir / "rosinality_sg2_64.pt"), "--n", "3",
                              "--seeds", "0-3", "--out", str(tmp_path / "g.png")])
    assert isinstance(res.exception, IPLError) and "disagrees" in str(res.exception)
    res = runner.invoke(cli, ["sample", str(tmp_path / "missing.pt")])
    assert isinstance(res.exception, IPLError) and "missing.pt" in str(res.exception)
    with pytest.raises(IPLError, match="run folder"):
        resolve_generators(fixtures_dir / "rosinality_sg2_64.pt", source_too=True)


def test_save_grid_accepts_single_tensor(tmp_path):
    path = save_grid(torch.zeros(5, 3, 8, 8), tmp_path / "g.png")
    assert Image.open(path).size == (3 * 10 + 2, 2 * 10 + 2)


@pytest.mark.slow
def test_sample_run_folder_source_too(tmp_path, fixtures_dir):
    """A real (1-iteration NADA, toy CLIP) run folder: rows are source over adapted, latents shared."""
    ckpt = fixtures_dir / "rosinality_sg2_64.pt"
    runner = CliRunner()
    res = runner.invoke(cli, ["adapt", "--source", str(ckpt), "--clip", "toy", "--method", "nada", "--target",
                              "on a dark background", "--iters", "1", "--batch", "1", "--layer-batch", "2",
                              "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["sample", str(tmp_path / "run"), "--source-too", "--seeds", "0-2", "--outdir",
                              str(tmp_path / "imgs"), "--out", str(tmp_path / "cmp.png")])
    assert res.exit_code == 0, res.output
    expected = to_uint8(render_seeds(generators.load(ckpt), [0, 1, 2], progress=False))
    src = np.asarray(Image.open(tmp_path / "imgs" / "source" / "seed0001.png")).astype(int)
    assert np.abs(src - expected[1].astype(int)).max() <= 1
    assert (tmp_path / "imgs" / "adapted" / "seed0001.png").is_file()
    assert Image.open(tmp_path / "cmp.png").size == (3 * 66 + 2, 2 * 66 + 2)
