"""`ipl invert` / `ipl edit`: the projector recovers images the generator drew, resume, bad and mixed inputs, the
grid layout, edits through StyleGAN2 and diffusion runs, and LPIPS refusing to run without its weights offline."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import ipl
from ipl import generators
from ipl.commands.cli import cli
from ipl.core.errors import IPLError, WeightsNotFoundError
from ipl.core.images import read_image, save_images
from ipl.core.integrity import sha256_file
from ipl.generators.toy.render import render
from ipl.generators.toy.source import GENERATOR_PATH, scene_from_latent
from ipl.inversion import psnr
from test_diffusion_adapt import OPTS, world as dworld  # noqa: F401  (module fixture: tiny UNet + CLIP)
from tiny_world import run_main, tiny_world

PAD = 2  # ipl.core.images.make_grid's padding


def invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def toy_renders(n: int, seed: int = 0) -> torch.Tensor:
    """Fresh renders of the toy renderer (solid domain), from the scenes the toy generator covers."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 16, generator=gen)
    c = torch.nn.functional.one_hot(torch.randint(0, 3, (n,), generator=gen), 3).float()
    return render(scene_from_latent(z, c), "solid")


def tile(grid: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    y, x = PAD + row * (size + PAD), PAD + col * (size + PAD)
    return grid[y:y + size, x:x + size]


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random 16 px StyleGAN2 (unconditional), a tiny CLIP, and a 1-step NADA run adapting it."""
    world = tiny_world(tmp_path_factory.mktemp("iworld"))
    runs = []
    for k, target in enumerate(("a striped shape", "a dotted shape")):
        out = world["root"] / f"run{k}"
        res = invoke(["adapt", "--source", world["gen"], "--source-text", "a solid shape", "--target", target,
                      "--clip", world["clip"], "--method", "nada", "--iters", "2", "--batch", "2", "--layers", "all",
                      "--lr", "0.05", "--sample-every", "0", "--sample-n", "2", "--out", out, "--device", "cpu",
                      "--quiet"])
        assert res.exit_code == 0, (res.output, res.exception)
        runs.append(out)
    return {**world, "runs": runs}


def test_projection_recovers_images_the_toy_generator_drew():
    """Images the toy generator drew come back. Bound: 24 dB, i.e. an RMS error under 6.3 % of the [-1, 1] range.
    A shape drawn at the wrong place or in the wrong colour alone costs ~10 % of the pixels an error near 1
    (PSNR <= 10 log10(4 / 0.1) = 16 dB), and the best class-mean start (checked) is below 17 dB, so passing needs
    the shape, its colour and placement found; 40 steps (of NVIDIA's 1000) reach 27-31 dB."""
    g = generators.load_adaptable(GENERATOR_PATH)
    lat = g.sample_latents(4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = g.render(lat)
    from ipl.generators.stylegan2.invert import w_stats

    starts, _ = w_stats(g.G)
    with torch.no_grad():
        start_psnr = torch.stack([psnr(g.render(starts), xi.expand(len(starts), -1, -1, -1)).max() for xi in x])
    assert (start_psnr < 17).all(), start_psnr
    result = ipl.invert(g, x, steps=40, loss="mse", progress=False)
    assert result.latents.shape == (4, g.G.num_ws, g.G.w_dim)
    assert result.config.loss == "mse" and result.config.space == "w+"
    got = psnr(result.reconstructions, x)
    assert (got > 24).all(), got
    with torch.no_grad():  # the latents are what renders the reconstructions
        assert torch.equal(g.render(result.latents), result.reconstructions)


def test_invert_cli_bad_and_mixed_inputs_grid_and_resume(tiny, tmp_path, monkeypatch, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.new("RGBA", (40, 20), (200, 30, 30, 128)).save(imgs / "a_wide.png")   # wide, with alpha
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16), "L").save(imgs / "b_grey.jpg")  # grey
    (imgs / "c_broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    args = ["invert", tiny["gen"], imgs, "--out", out, "--steps", "6", "--loss", "mse", "--quiet"]
    code, err = run_main(monkeypatch, capsys, args)
    assert code == 2 and "c_broken.png" in err and "2 were inverted" in err, err  # named; the rest ran
    data = torch.load(out / "latents.pt", weights_only=True)
    assert sorted(data["entries"]) == ["a_wide", "b_grey"]
    digest = sha256_file(tiny["gen"])
    assert all(e["source_sha256"] == digest for e in data["entries"].values()) and data["source_sha256"] == digest
    # Mixed sizes and modes: each input is the centre crop, resized to the generator's 16 px.
    for name, file in (("a_wide", "a_wide.png"), ("b_grey", "b_grey.jpg")):
        want = ((read_image(imgs / file, 16) + 1) * 127.5).round().permute(1, 2, 0).numpy()
        assert np.abs(png(out / "inputs" / f"{name}.png").astype(float) - want).max() <= 0.5
    # Grid: one row per image, input | reconstruction.
    grid = png(out / "grid.png")
    assert grid.shape == (2 * (16 + PAD) + PAD, 2 * (16 + PAD) + PAD, 3)
    for r, name in enumerate(["a_wide", "b_grey"]):
        assert np.array_equal(tile(grid, r, 0, 16), png(out / "inputs" / f"{name}.png"))
        assert np.array_equal(tile(grid, r, 1, 16), png(out / "reconstructions" / f"{name}.png"))
    # Without --resume a folder with results is refused; with it only the new image is inverted.
    code, err = run_main(monkeypatch, capsys, args[:-1])
    assert code == 2 and "--resume" in err
    (imgs / "c_broken.png").unlink()
    Image.new("RGB", (16, 16), (10, 200, 10)).save(imgs / "d_new.png")
    code, err = run_main(monkeypatch, capsys, args + ["--resume"])
    assert code == 0, err
    summary = json.loads((out / "invert.json").read_text())
    assert (summary["inverted_now"], summary["skipped"]) == (1, 2)
    again = torch.load(out / "latents.pt", weights_only=True)
    assert sorted(again["entries"]) == ["a_wide", "b_grey", "d_new"]
    assert all(torch.equal(again["entries"][n]["latent"], data["entries"][n]["latent"]) for n in data["entries"])
    assert png(out / "grid.png").shape[0] == 3 * (16 + PAD) + PAD
    # Other settings cannot resume the same folder.
    code, err = run_main(monkeypatch, capsys, args + ["--resume", "--space", "w"])
    assert code == 2 and "space" in err


def test_lpips_offline_names_the_weights_file(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IPL_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))  # an empty torch hub
    Image.new("RGB", (16, 16), (10, 20, 200)).save(tmp_path / "x.png")
    code, err = run_main(monkeypatch, capsys, ["invert", tiny["gen"], tmp_path / "x.png", "--out", tmp_path / "o",
                                               "--loss", "lpips", "--steps", "2", "--quiet"])
    assert code == 2
    assert "vgg16-397923af.pth" in err and str(tmp_path / "hub" / "checkpoints") in err and "--loss mse" in err
    with pytest.raises(WeightsNotFoundError):  # the API too: never a random backbone
        ipl.invert(tiny["gen"], torch.zeros(1, 3, 16, 16), loss="lpips", steps=2, progress=False)
    # A StyleGAN2 source's default distance is LPIPS; the toy's is MSE (offline), recorded as the source's.
    result = ipl.invert("toy", toy_renders(1), steps=2, progress=False)
    assert result.config.loss == "mse" and result.config.filled_by["loss"] == "source:toy"


def test_edit_cli_of_a_toy_image_through_two_runs(tiny, tmp_path, monkeypatch, capsys):
    img = tmp_path / "toy.png"
    save_images(toy_renders(1, seed=3), tmp_path, ["toy"])
    out = tmp_path / "edit"
    code, err = run_main(monkeypatch, capsys, ["edit", *tiny["runs"], img, "--out", out, "--steps", "6",
                                               "--loss", "mse", "--quiet"])
    assert code == 0, err
    grid = png(out / "grid.png")
    assert grid.shape == (16 + 2 * PAD, 4 * (16 + PAD) + PAD, 3)  # input | reconstruction | run0 | run1
    from ipl.run import load_run

    lat = torch.load(out / "latents.pt", weights_only=True)["entries"]["toy"]["latent"][None]
    infos = [load_run(r) for r in tiny["runs"]]
    with torch.no_grad():
        columns = [infos[0].source.render(lat)] + [info.adapted.render(lat) for info in infos]
    from ipl.core.images import to_uint8

    assert np.array_equal(tile(grid, 0, 0, 16), to_uint8(read_image(img, 16)))
    for k, want in enumerate(columns, start=1):
        assert np.abs(tile(grid, 0, k, 16).astype(int) - to_uint8(want[0]).astype(int)).max() <= 1
    assert not np.array_equal(tile(grid, 0, 1, 16), tile(grid, 0, 2, 16))  # the adapted generator differs

    # Reusing `ipl invert`'s latents: no new search, the same renders.
    code, err = run_main(monkeypatch, capsys, ["invert", tiny["gen"], img, "--out", tmp_path / "inv", "--steps",
                                               "6", "--loss", "mse", "--quiet"])
    assert code == 0, err
    code, err = run_main(monkeypatch, capsys, ["edit", tiny["runs"][0], "--latents", tmp_path / "inv" / "latents.pt",
                                               "--out", tmp_path / "edit2", "--quiet"])
    assert code == 0, err
    saved = torch.load(tmp_path / "inv" / "latents.pt", weights_only=True)["entries"]["toy"]["latent"][None]
    with torch.no_grad():
        want = to_uint8(infos[0].adapted.render(saved)[0]).astype(int)
    got = png(tmp_path / "edit2" / "adapted" / f"00_{tiny['runs'][0].name}" / "toy.png").astype(int)
    assert np.abs(got - want).max() <= 1
    # The API returns the same columns as tensors.
    res = ipl.edit(tiny["runs"][:1], [img], latents=tmp_path / "inv" / "latents.pt", progress=False)
    assert set(res.adapted) == {str(tiny["runs"][0])} and res.inputs.shape == res.reconstructions.shape
    with torch.no_grad():
        assert torch.allclose(res.adapted[str(tiny["runs"][0])], infos[0].adapted.render(saved))


def test_invert_refuses_a_diffusion_source_and_a_run_folder(tiny, dworld, tmp_path, monkeypatch, capsys):  # noqa: F811
    Image.new("RGB", (16, 16), (10, 20, 200)).save(tmp_path / "x.png")
    with pytest.raises(IPLError, match="cannot invert"):
        ipl.invert(str(dworld["ddpm"]), [tmp_path / "x.png"], progress=False)
    code, err = run_main(monkeypatch, capsys, ["invert", tiny["runs"][0], tmp_path / "x.png", "--out", tmp_path / "o"])
    assert code == 2 and "ipl edit" in err


def test_edit_of_a_diffusion_run_is_its_ddim_edit(dworld, tmp_path):  # noqa: F811
    out = tmp_path / "drun"
    args = ["adapt", "--source", dworld["ddpm"], "--source-text", "a solid shape", "--target", "a striped shape",
            "--method", "nada", "--clip", dworld["clip"], "--iters", "1", "--batch", "2", "--sample-every", "0",
            "--sample-n", "2", "--out", out, "--device", "cpu", "--quiet"]
    for o in OPTS:
        args += ["--diffusion", o]
    res = invoke(args)
    assert res.exit_code == 0, (res.output, res.exception)
    (tmp_path / "real").mkdir()
    for i in range(2):
        Image.new("RGB", (16, 16), (200, 60 * i, 10)).save(tmp_path / "real" / f"{i}.png")
    res = invoke(["edit", out, tmp_path / "real", "--out", tmp_path / "e", "--quiet"])
    assert res.exit_code == 0, (res.output, res.exception)
    from ipl.generators.diffusion.sampling import edit_images
    from ipl.run import load_run

    info = load_run(out)
    x = torch.stack([read_image(tmp_path / "real" / f"{i}.png", 16) for i in range(2)])
    want = edit_images(info.source, info.adapted, x)
    grid = png(tmp_path / "e" / "grid.png")
    assert grid.shape == (2 * (16 + PAD) + PAD, 3 * (16 + PAD) + PAD, 3)
    from ipl.core.images import to_uint8

    for i in range(2):
        assert np.abs(tile(grid, i, 2, 16).astype(int) - to_uint8(want[i]).astype(int)).max() <= 1


def test_pivotal_tuning_is_saved_and_reconstructs_closer(tiny, tmp_path, monkeypatch, capsys):
    x = toy_renders(2, seed=5)
    x = torch.nn.functional.interpolate(x, size=(16, 16), mode="area")
    plain = ipl.invert(tiny["gen"], x, steps=6, loss="mse", progress=False)
    tuned = ipl.invert(tiny["gen"], x, steps=6, loss="mse", pti_steps=8, progress=False)
    assert torch.equal(plain.latents, tuned.latents)  # the same search; PTI moves the generator, not the pivots
    assert (psnr(tuned.reconstructions, x) > psnr(plain.reconstructions, x)).all()
    save_images(x, tmp_path / "imgs", ["p", "q"])
    out = tmp_path / "out"
    code, err = run_main(monkeypatch, capsys, ["invert", tiny["gen"], tmp_path / "imgs", "--out", out, "--steps", "6",
                                               "--loss", "mse", "--pti-steps", "8", "--quiet"])
    assert code == 0, err
    entries = torch.load(out / "latents.pt", weights_only=True)["entries"]
    assert entries["p"]["pti"] == entries["q"]["pti"] == "pti/batch_0000.safetensors"
    G = generators.load_adaptable(out / entries["p"]["pti"])
    with torch.no_grad():
        want = G.render(entries["q"]["latent"][None])[0]
    from ipl.core.images import to_uint8

    assert np.abs(png(out / "reconstructions" / "q.png").astype(int) - to_uint8(want).astype(int)).max() <= 1


def test_lpips_distance_uses_the_local_backbone_file(tmp_path, monkeypatch):
    """With the backbone weights in torch hub's folder, the distance is the package's LPIPS on those weights
    (squeezenet: the small one; VGG loads the same way)."""
    import torchvision

    from ipl.core.lpips_model import backbone_weights, load_lpips
    from ipl.inversion import lpips_distance

    monkeypatch.setenv("IPL_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(weights=None)
    target = tmp_path / "hub" / "checkpoints" / backbone_weights("squeeze").filename
    target.parent.mkdir(parents=True)
    torch.save(net.state_dict(), target)
    distance = lpips_distance("squeeze")
    reference, _ = load_lpips("squeeze", weights=str(target), download=False)
    a, b = toy_renders(2, seed=1), toy_renders(2, seed=2)
    want = reference(a, b).reshape(2)
    assert torch.allclose(distance(a, b), want, rtol=1e-5, atol=1e-7) and (want > 0).all()
    assert torch.allclose(distance(a, a), torch.zeros(2), atol=1e-7)
