"""CLIP wrapper: spec parsing, offline-safe loading, frozen weights, differentiable preprocessing, text cache."""
import json

import pytest
import torch
import torch.nn.functional as F

from ipl.method import clip as clipmod
from ipl.method.clip import ClipSpec, RandomWeightsWarning, load_clip, load_clips, parse_clip_spec
from ipl.core.errors import CheckpointError, IPLError, WeightsNotFoundError
from tiny_clip import TINY_CLIP_CONFIG, make_tiny_clip, tiny_clip, write_tiny_clip_files  # noqa: F401


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("IPL_CLIP_CACHE", str(tmp_path / "empty_cache"))


@pytest.mark.parametrize("text, want", [
    ("ViT-B-32", ClipSpec("ViT-B-32", None, 1.0)),
    ("ViT-B-32:openai", ClipSpec("ViT-B-32", "openai", 1.0)),
    ("ViT-B-16:openai@0.5", ClipSpec("ViT-B-16", "openai", 0.5)),
    ("ViT-B-32@2", ClipSpec("ViT-B-32", None, 2.0)),
    ("ViT-B-32:/w/my@home/weights.pt", ClipSpec("ViT-B-32", "/w/my@home/weights.pt", 1.0)),
    ("ViT-B-32:/w/weights.pt@0.25", ClipSpec("ViT-B-32", "/w/weights.pt", 0.25)),
    ("toy", ClipSpec("toy", None, 1.0)),
    ("toy:none", ClipSpec("toy", "none", 1.0)),
    ("/cfg/tiny.json:/cfg/tiny.safetensors@3", ClipSpec("/cfg/tiny.json", "/cfg/tiny.safetensors", 3.0)),
])
def test_parse_clip_spec(text, want):
    got = parse_clip_spec(text)
    assert got == want
    assert parse_clip_spec(str(got)) == got  # round trip (written into config.json)


@pytest.mark.parametrize("bad", ["", "   ", ":openai", "ViT-B-32@-1"])
def test_parse_clip_spec_rejects(bad):
    with pytest.raises(IPLError):
        parse_clip_spec(bad)


def test_frozen_but_differentiable(tiny_clip):
    assert not any(p.requires_grad for p in tiny_clip.parameters())
    tiny_clip.train()
    assert not tiny_clip.model.training  # stays in eval mode
    images = (torch.rand(2, 3, 48, 48) * 2 - 1).requires_grad_(True)
    feats = tiny_clip.encode_images(images)
    assert feats.shape == (2, tiny_clip.embed_dim)
    feats.square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_clip.parameters())
    assert tiny_clip.ctx_dim == 32 and tiny_clip.embed_dim == 32 and tiny_clip.image_size == 32
    assert tiny_clip.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)


def test_preprocess_known_answer(tiny_clip):
    # At the model's own size the map is exactly ((x + 1) / 2 - mean) / std.
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean = torch.tensor(clipmod.OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(clipmod.OPENAI_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(tiny_clip.preprocess(x), ((x + 1) / 2 - mean) / std)
    # A constant image stays constant through the bicubic resize; a non-square one is centre-cropped.
    c = torch.full((1, 3, 100, 64), 0.5)
    out = tiny_clip.preprocess(c)
    assert out.shape == (1, 3, 32, 32)
    torch.testing.assert_close(out, ((0.75 - mean) / std).expand(1, 3, 32, 32), atol=1e-5, rtol=0)
    # Downsampling a 2x-replicated image recovers it closely (antialiased bicubic).
    up = F.interpolate(x, scale_factor=2, mode="nearest")
    assert (tiny_clip.preprocess(up) - tiny_clip.preprocess(x)).abs().mean() < 0.35


def test_encode_texts_cached(tiny_clip, monkeypatch):
    texts = ["a photo of a dog.", "a painting of a cat."]
    first = tiny_clip.encode_texts(texts)
    calls = []
    real = tiny_clip.model.encode_text
    monkeypatch.setattr(tiny_clip.model, "encode_text", lambda t: calls.append(t) or real(t))
    again = tiny_clip.encode_texts(list(reversed(texts)) + texts)
    assert calls == []  # served from the cache
    torch.testing.assert_close(again[:2], first.flip(0))
    torch.testing.assert_close(first, real(tiny_clip.tokenizer(texts)))
    tiny_clip.encode_texts(["something new"])
    assert len(calls) == 1


def test_config_and_safetensors_loading(tmp_path):
    cfg, weights = write_tiny_clip_files(tmp_path, seed=3)
    ref = make_tiny_clip(seed=3)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    for spec in [str(cfg), f"{cfg}:{weights}@0.5"]:
        c = load_clip(spec)
        assert not c.random_weights
        torch.testing.assert_close(c.encode_images(images), ref.encode_images(images))
        torch.testing.assert_close(c.encode_texts(["a cat"]), ref.encode_texts(["a cat"]))
    assert c.weight == 0.5


def test_toy_spec_reads_assets(tmp_path, monkeypatch):
    cfg, weights = write_tiny_clip_files(tmp_path, seed=5)
    monkeypatch.setattr(clipmod, "TOY_CLIP_CONFIG", cfg)
    monkeypatch.setattr(clipmod, "TOY_CLIP_WEIGHTS", weights)
    c = load_clip("toy")
    torch.testing.assert_close(c.encode_texts(["x"]), make_tiny_clip(seed=5).encode_texts(["x"]))
    monkeypatch.setattr(clipmod, "TOY_CLIP_CONFIG", tmp_path / "missing.json")
    with pytest.raises(WeightsNotFoundError, match="missing.json"):
        load_clip("toy")


def test_random_weights_warn(tmp_path):
    cfg, _ = write_tiny_clip_files(tmp_path)
    with pytest.warns(RandomWeightsWarning, match="RANDOM"):
        c = load_clip(f"{cfg}:none")
    assert c.random_weights


def test_offline_tag_names_file_to_fetch():
    with pytest.raises(WeightsNotFoundError) as err:
        load_clip("ViT-B-32:openai")
    msg = str(err.value)
    assert "timm/vit_base_patch32_clip_224.openai" in msg and "ViT-B-32.pt" in msg and "/path/to/weights" in msg
    with pytest.raises(WeightsNotFoundError, match="CLIP-ViT-B-16-laion2B"):
        load_clips(["ViT-B-16:laion2b_s34b_b88k"])
    with pytest.raises(IPLError, match="neither a known open_clip tag"):
        load_clip("ViT-B-32:no-such-tag")
    with pytest.raises(IPLError, match="Unknown CLIP model"):
        load_clip("ViT-Nope-1")


def test_mismatched_weights_are_a_checkpoint_error(tmp_path):
    _, weights = write_tiny_clip_files(tmp_path / "a")
    other = dict(TINY_CLIP_CONFIG, embed_dim=16)
    cfg_path = tmp_path / "b.json"
    cfg_path.write_text(json.dumps(other))
    with pytest.raises(CheckpointError, match="clip.safetensors"):
        load_clip(f"{cfg_path}:{weights}")


@pytest.mark.slow
def test_torchscript_archive_weights(tmp_path):
    # OpenAI's released .pt files are TorchScript archives; a scripted tiny CLIP stands in for one (~15 s).
    ref = make_tiny_clip(seed=4)
    torch.jit.script(ref.model).save(str(tmp_path / "ts.pt"))
    cfg, _ = write_tiny_clip_files(tmp_path / "cfg", seed=0)
    c = load_clip(f"{cfg}:{tmp_path / 'ts.pt'}")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(c.encode_images(images), ref.encode_images(images))
    torch.testing.assert_close(c.encode_texts(["a dog"]), ref.encode_texts(["a dog"]))


@pytest.mark.slow
def test_open_clip_name_with_local_weights_file(tmp_path):
    # ViT-B-32 architecture + a local state dict (random, ~600 MB written to tmp): the path form of a spec.
    from safetensors.torch import save_file

    with pytest.warns(RandomWeightsWarning):
        ref = load_clip("ViT-B-32:none")
    path = tmp_path / "vitb32.safetensors"
    save_file({k: v.contiguous() for k, v in ref.model.state_dict().items()}, str(path))
    c = load_clip(f"ViT-B-32:{path}@0.5")
    assert not c.random_weights and c.weight == 0.5
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(c.encode_images(images), ref.encode_images(images))
