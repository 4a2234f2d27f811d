"""Prompt splicing exactness, the prompt learner, and prompt features."""

import pytest
import torch
import torch.nn.functional as F

from ipl.method.clip import _build_model, _tokenizer_for
from ipl.method.prompts import (FIXED_TEMPLATE, EqualLinear, PromptLearner, encode_with_context, prompt_features,
                         text_tower, token_embeddings)
from tiny_clip import TINY_CLIP_CONFIG, make_tiny_clip, tiny_clip  # noqa: F401

CLASSES = ["dog", "Pixar character", "pencil sketch of a very old church"]

# Text towers that differ in width, heads, depth, context length, projection kind and model class.
TOWERS = {
    "tiny": TINY_CLIP_CONFIG,
    "wide-short-context-linear-proj": dict(TINY_CLIP_CONFIG, embed_dim=24, text_cfg=dict(
        context_length=24, vocab_size=49408, width=48, heads=3, layers=3, proj_type="linear", proj_bias=True)),
    "custom-text-quickgelu": dict(TINY_CLIP_CONFIG, custom_text=True, quick_gelu=True),
}


def _exact(model, tokenizer, classes, atol=1e-5):
    with torch.no_grad():
        ctx = token_embeddings(model, tokenizer, "a photo of a")
        assert ctx.shape[0] == 4
        got = encode_with_context(model, tokenizer, ctx[None].expand(len(classes), -1, -1), classes)
        want = model.encode_text(tokenizer([f"a photo of a {c}." for c in classes]))
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(TOWERS))
def test_splice_exactness(name):
    cfg = TOWERS[name]
    torch.manual_seed(1)
    model = _build_model(cfg).eval()
    _exact(model, _tokenizer_for(cfg["text_cfg"]), CLASSES)


def test_splice_exactness_vit_b32_text_tower():
    # The real ViT-B-32 text tower (random weights, no download): width 512, 12 layers, 8 heads, 77 tokens.
    import open_clip
    from open_clip.model import CLIPTextCfg, _build_text_tower

    cfg = open_clip.get_model_config("ViT-B-32")
    torch.manual_seed(0)
    tower = _build_text_tower(cfg["embed_dim"], CLIPTextCfg(**cfg["text_cfg"])).eval()
    tok = open_clip.get_tokenizer("ViT-B-32")

    class Wrap(torch.nn.Module):  # CustomTextCLIP-style: the text tower under `.text`
        def __init__(self):
            super().__init__()
            self.text = tower

        def encode_text(self, t):
            return self.text(t)

    _exact(Wrap(), tok, CLASSES[:2], atol=2e-5)


def test_one_class_text_broadcasts_and_grads_flow(tiny_clip):
    ctx = torch.randn(3, 4, tiny_clip.ctx_dim, requires_grad=True)
    a = tiny_clip.encode_prompts(ctx, "dog")
    b = tiny_clip.encode_prompts(ctx, ["dog"] * 3)
    torch.testing.assert_close(a, b)
    a.sum().backward()
    assert ctx.grad.abs().sum() > 0
    # Different context vectors, different features; ctx of another length works too.
    assert (a[0] - a[1]).abs().max() > 1e-4
    assert tiny_clip.encode_prompts(torch.randn(2, 8, tiny_clip.ctx_dim), "cat").shape == (2, tiny_clip.embed_dim)


def test_prompt_learner_shapes_and_equalised_lr():
    torch.manual_seed(0)
    m = PromptLearner(w_dim=16, n_ctx=4, ctx_dim=32)
    out = m(torch.randn(5, 16))
    assert out.shape == (5, 4, 32)
    # PixelNorm in front: the output does not depend on the code's scale.
    w = torch.randn(5, 16)
    torch.testing.assert_close(m(w), m(w * 7.0))
    # Equalised lr: stored weights are N(0, 1/lr_mul^2), applied with gain lr_mul/sqrt(in).
    layer = EqualLinear(256, 512, lr_multiplier=0.01)
    assert layer.weight.std().item() == pytest.approx(100.0, rel=0.05)
    assert layer.weight_gain == pytest.approx(0.01 / 16)
    x = torch.randn(4096, 256)
    y = layer(x)
    # lrelu(0.2) with gain sqrt(2) keeps unit second moment for unit-variance pre-activations.
    assert y.square().mean().item() == pytest.approx(2 * (1 + 0.04) / 2, rel=0.1)
    assert len([l for l in m.net if isinstance(l, EqualLinear)]) == 4
    with pytest.raises(AssertionError):
        m(torch.randn(2, 15))


def test_prompt_features_formula(tiny_clip):
    torch.manual_seed(0)
    m = PromptLearner(w_dim=8, n_ctx=4, ctx_dim=tiny_clip.ctx_dim)
    codes = torch.randn(3, 8)
    got = prompt_features(tiny_clip, m, codes, "cat")
    want = F.normalize(encode_with_context(tiny_clip.model, tiny_clip.tokenizer, m(codes), "cat")
                       + tiny_clip.model.encode_text(tiny_clip.tokenizer([FIXED_TEMPLATE.format("cat")])), dim=-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(3))


def test_text_tower_rejects_hf_like_models():
    from ipl.core.errors import IPLError

    with pytest.raises(IPLError):
        text_tower(torch.nn.Linear(2, 2))
