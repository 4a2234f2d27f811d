"""Diffusion generator: DDIM algebra, inversion/generation round trip, the adapter, saving, bad inputs."""
from __future__ import annotations

import json

import pytest
import torch

from ipl.generators import diffusion
from ipl.generators.diffusion import ddim
from ipl.generators.diffusion.adapter import DiffusionAdapter, DiffusionConfig, read_image_folder
from ipl.generators.diffusion.checkpoint import DDPM_SCHEDULER_CONFIG, make_scheduler
from ipl.core.errors import CheckpointError, IPLError, WeightsNotFoundError

# A diffusers-test-sized UNet, shrunk further to 16 px so a 100-call loop takes a few seconds on one core.
TINY_UNET = dict(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
                 norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def tiny_unet(seed: int = 0):
    from diffusers import UNet2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(**TINY_UNET).eval()


class FakeEncoder:
    """Stands in for a FrozenClip: a fixed random linear map of the image (enough to tell images apart)."""

    embed_dim = 8

    def __init__(self):
        self.w = torch.randn(3 * 16 * 16, 8, generator=torch.Generator().manual_seed(1))

    def encode_images(self, images):
        return images.flatten(1) @ self.w


def tiny_adapter(**cfg) -> DiffusionAdapter:
    base = dict(t0=300, inversion_steps=20, generation_steps=4, sample_steps=5, n_sources=4, pool_batch=4)
    base.update(cfg)
    return DiffusionAdapter(tiny_unet(), DDPM_SCHEDULER_CONFIG, DiffusionConfig(**base), code_encoder=FakeEncoder())


def alphas():
    return make_scheduler(DDPM_SCHEDULER_CONFIG).alphas_cumprod.float()


# ------------------------------------------------------------------ DDIM algebra
def test_inversion_path_grid():
    assert ddim.inversion_path(400, 40) == list(range(10, 401, 10))
    assert ddim.inversion_path(400, 6)[-1] == 400 and len(ddim.inversion_path(400, 6)) == 6
    with pytest.raises(ValueError):
        ddim.inversion_path(400, 0)


def test_constant_eps_round_trip_is_exact():
    # With a noise estimate that does not depend on x or t, DDIM inversion and generation are exact inverses
    # for any step counts: the round trip checks the algebra of every move.
    ac = alphas()
    eps_const = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    fn = lambda x, t: eps_const  # noqa: E731
    x0 = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4)) * 2 - 1
    xt = ddim.invert(fn, x0, ac, ddim.inversion_path(500, 40))
    # Known answer: x_t0 = sqrt(ab) x0 + sqrt(1 - ab) eps.
    ab = ac[500]
    torch.testing.assert_close(xt, ab.sqrt() * x0 + (1 - ab).sqrt() * eps_const, atol=1e-5, rtol=1e-5)
    back = ddim.generate(fn, xt, ac, ddim.inversion_path(500, 6))
    torch.testing.assert_close(back, x0, atol=1e-5, rtol=1e-5)


def test_model_output_conversions_agree():
    ac = alphas()
    ab = ac[300]
    x0 = torch.randn(2, 3, 4, 4)
    eps = torch.randn(2, 3, 4, 4)
    x = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    torch.testing.assert_close(ddim.model_output_to_eps(x0, x, ab, "sample"), eps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ddim.model_output_to_eps(v, x, ab, "v_prediction"), eps, atol=1e-5, rtol=1e-5)


def test_unet_inversion_then_generation_reconstructs():
    # A real (random) UNet: the first-order DDIM inversion error falls like 1/steps; with 40 steps the
    # round trip to t0 = 400 and back lands within 0.03 mean abs (range [-1, 1]) of the input.
    a = tiny_adapter(t0=400)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    errs = {}
    with torch.no_grad():
        for steps in (10, 40):
            path = ddim.inversion_path(400, steps)
            xt = ddim.invert(a.eps, x, a.alphas_cumprod, path)
            errs[steps] = (ddim.generate(a.eps, xt, a.alphas_cumprod, path) - x).abs().mean().item()
        assert (xt - x).abs().mean() > 0.2  # the latent really is noised
    assert errs[40] < 0.03, errs
    assert errs[40] < errs[10] / 2.5, errs


def test_generation_is_differentiable_with_checkpointing():
    a = tiny_adapter()
    xt = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    grads = []
    for ckpt in (False, True):
        a.unet.zero_grad()
        a.generate(xt, checkpoint=ckpt).square().mean().backward()
        grads.append(a.unet.conv_out.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    assert grads[0].abs().sum() > 0


# ------------------------------------------------------------------ the adapter
def test_adapter_pool_latents_codes_render():
    src = tiny_adapter()
    g = torch.Generator().manual_seed(0)
    lat = src.sample_latents(3, generator=g)
    assert lat.shape == (3, 6, 16, 16)
    lat2 = src.sample_latents(3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lat, lat2)
    # Source role renders the source images; the inverted half is the pool's inversion of them.
    torch.testing.assert_close(src.render(lat), lat[:, 3:])
    codes = src.codes(lat)
    assert codes.shape == (3, src.code_dim) == (3, 8)
    torch.testing.assert_close(codes.norm(dim=-1), torch.ones(3))
    # The adapted copy shares the pool and regenerates from x_t0 close to the source image.
    tgt = src.copy()
    assert tgt.role == "adapted" and tgt.pool is src.pool
    assert tgt.unet is not src.unet
    with torch.no_grad():
        out = tgt.render(lat)
    assert out.shape == (3, 3, 16, 16)
    assert (out - lat[:, 3:]).abs().mean() < 0.15
    # More draws than n_sources (evaluation): the pool grows, keeping its first images, all draws distinct.
    first = src.pool.images.clone()
    many = src.sample_latents(6, generator=g)
    assert many.shape == (6, 6, 16, 16) and len(tgt.pool.images) == 6
    torch.testing.assert_close(src.pool.images[:4], first)
    assert torch.cdist(many[:, 3:].flatten(1), many[:, 3:].flatten(1)).add(torch.eye(6)).min() > 0
    # Training draws still come from the first n_sources images only.
    again = src.sample_latents(4, generator=g)[:, 3:].flatten(1)
    assert torch.cdist(again, first.flatten(1)).min(dim=1).values.max() < 1e-6


def test_extra_losses_and_train_blocks():
    a = tiny_adapter(l1_weight=0.5)
    lat = a.sample_latents(2, generator=torch.Generator().manual_seed(0))
    img = lat[:, 3:] + 0.2
    torch.testing.assert_close(a.extra_losses(lat, img)["l1"], torch.tensor(0.5 * 0.2))
    n_all = len(a.trainable_parameters())
    a.config.train_blocks = "up_blocks.0,conv_out"
    chosen = a.trainable_parameters()
    names = {id(p): n for n, p in a.unet.named_parameters()}
    assert 0 < len(chosen) < n_all
    assert all(names[id(p)].startswith(("up_blocks.0.", "conv_out.")) for p in chosen)
    a.config.train_blocks = "nope"
    with pytest.raises(IPLError, match="matches no UNet parameter"):
        a.trainable_parameters()


def test_save_load_round_trip(tmp_path):
    a = tiny_adapter().copy()
    with torch.no_grad():
        a.unet.conv_out.bias.add_(0.1)
    path = tmp_path / "generator.safetensors"
    a.save(str(path), metadata={"ipl": {"target_text": "x"}})
    assert diffusion.is_diffusion_checkpoint(path) and diffusion.is_diffusion_checkpoint(tmp_path)
    from ipl import generators

    b = generators.load_adaptable(tmp_path)
    assert type(b).__name__ == "DiffusionAdapter"
    assert b.role == "adapted" and b.config == a.config
    assert b.metadata["ipl"]["target_text"] == "x"
    for (n, p), (_, q) in zip(a.unet.state_dict().items(), b.unet.state_dict().items()):
        torch.testing.assert_close(p, q, msg=n)
    # An adapted model loaded alone has no source pool, and says how to get one.
    with pytest.raises(IPLError, match="attach_source"):
        b.sample_latents(1)
    b.attach_source(tiny_adapter())
    assert b.sample_latents(2).shape == (2, 6, 16, 16)


def test_diffusers_folder_and_image_folder(tmp_path):
    from PIL import Image

    unet = tiny_unet()
    unet.save_pretrained(str(tmp_path / "pipe" / "unet"))
    (tmp_path / "pipe" / "scheduler").mkdir()
    (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "DDPMScheduler", "beta_end": 0.012, "num_train_timesteps": 1000}))
    assert diffusion.is_diffusion_source(tmp_path / "pipe")
    a = diffusion.load(tmp_path / "pipe", config={"t0": 200, "n_sources": 2, "code_clip": "unused"})
    assert a.resolution == 16 and a.scheduler_config["beta_end"] == 0.012 and a.config.t0 == 200
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (255 * (i % 2), 128, 0)).save(imgs / f"{i}.png")
    x = read_image_folder(imgs, 16)
    assert x.shape == (3, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x[0, 0], torch.full((16, 16), -1.0))


# ------------------------------------------------------------------ bad inputs
def test_bad_inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError, match="huggingface-cli download google/ddpm-ema-church-256"):
        diffusion.load("ddpm-church")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a diffusers UNet2DModel folder"):
        from ipl.generators.diffusion.checkpoint import load_diffusers_folder

        load_diffusers_folder(tmp_path / "empty")
    with pytest.raises(IPLError, match="not a registry name"):
        diffusion.load(str(tmp_path / "missing.safetensors"))
    with pytest.raises(IPLError, match="no images found"):
        read_image_folder(tmp_path / "empty", 16)
    with pytest.raises(IPLError, match="not a folder"):
        read_image_folder(tmp_path / "nope", 16)
    with pytest.raises(IPLError, match="t0=1000"):
        tiny_adapter(t0=1000)
    with pytest.raises(IPLError, match="inversion_steps"):
        DiffusionConfig(inversion_steps=0).validate()
    bad = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(bad))
    assert not diffusion.is_diffusion_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not an ipl diffusion model"):
        from ipl.generators.diffusion.checkpoint import load_file

        load_file(bad)
