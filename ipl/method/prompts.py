"""Image-specific prompts: splice learned context vectors into CLIP's text path, and the prompt learner M."""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ipl.core.errors import IPLError

#: The fixed prompt whose features are added to the learned prompt's (the residual of T_c(w)).
FIXED_TEMPLATE = "a photo of a {}."
#: The placeholder word whose token embeddings the context vectors replace.
PLACEHOLDER = "X"


# ----------------------------------------------------------------------------------------------------------
# CLIP's text path, opened up.

@dataclass
class TextTower:
    """The pieces of an open_clip text encoder that the spliced forward pass needs."""

    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor
    transformer: nn.Module
    attn_mask: Optional[torch.Tensor]
    ln_final: nn.Module
    text_projection: Any           # nn.Parameter [width, embed_dim], nn.Linear, or None
    pool_type: str                 # 'argmax' (CLIP), 'eos', 'first', 'last'
    eos_id: Optional[int]


def text_tower(clip_model: nn.Module) -> TextTower:
    """The text-encoder parts of an open_clip CLIP (flat attributes) or CustomTextCLIP (a `.text` TextTransformer)."""
    src = clip_model
    if not hasattr(clip_model, "token_embedding") and hasattr(clip_model, "text"):
        src = clip_model.text
    if not hasattr(src, "token_embedding") or not hasattr(src, "positional_embedding"):
        raise IPLError(f"{type(clip_model).__name__}: prompt learning needs an open_clip text transformer "
                       f"(token embedding + positional embedding); Hugging Face text towers are not supported.")
    if getattr(src, "cls_emb", None) is not None or getattr(src, "use_pad_mask", False):
        raise IPLError(f"{type(clip_model).__name__}: CoCa-style text towers (class token / padding mask) "
                       f"are not supported for prompt learning.")
    pool = getattr(src, "text_pool_type", None) or getattr(src, "pool_type", "argmax")
    eos = getattr(src, "text_eos_id", None)
    if eos is None:
        eos = getattr(src, "eos_id", None)
    return TextTower(src.token_embedding, src.positional_embedding, src.transformer, getattr(src, "attn_mask", None),
                     src.ln_final, src.text_projection, pool, eos)


def _pool(x: torch.Tensor, tokens: torch.Tensor, tower: TextTower) -> torch.Tensor:
    rows = torch.arange(x.shape[0], device=x.device)
    if tower.pool_type == "argmax":
        return x[rows, tokens.argmax(dim=-1)]   # EOT has the highest token id
    if tower.pool_type == "eos":
        return x[rows, (tokens == tower.eos_id).int().argmax(dim=-1)]
    if tower.pool_type == "first":
        return x[:, 0]
    if tower.pool_type == "last":
        return x[:, -1]
    raise IPLError(f"text pool type {tower.pool_type!r} is not supported for prompt learning")


def _project(x: torch.Tensor, tower: TextTower) -> torch.Tensor:
    proj = tower.text_projection
    if proj is None:
        return x
    if isinstance(proj, nn.Linear):
        return proj(x)
    return x @ proj


def _pooled_length(tokens: torch.Tensor, tower: TextTower) -> int:
    """How many leading positions the pooled output can depend on (causal mask: up to the pooled token)."""
    L = tokens.shape[1]
    if tower.attn_mask is None:
        return L  # bidirectional: every position matters
    if tower.pool_type == "argmax":
        return int(tokens.argmax(dim=-1).max().item()) + 1
    if tower.pool_type == "eos":
        return int((tokens == tower.eos_id).int().argmax(dim=-1).max().item()) + 1
    if tower.pool_type == "first":
        return 1
    return L


def encode_token_embeddings(tower: TextTower, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Run CLIP's text path from token embeddings x [B, L, width]; tokens [B, L] locate the pooled position."""
    assert x.ndim == 3 and tokens.shape == x.shape[:2], (tuple(x.shape), tuple(tokens.shape))
    # With a causal mask the pooled token never sees later (padding) positions: drop them. Same result,
    # several times faster for short prompts in a 77-token context.
    n = _pooled_length(tokens, tower)
    x, tokens = x[:, :n], tokens[:, :n]
    mask = tower.attn_mask[:n, :n] if tower.attn_mask is not None else None
    cast_dtype = getattr(tower.transformer, "get_cast_dtype", lambda: x.dtype)()
    x = x.to(cast_dtype) + tower.positional_embedding[:n].to(cast_dtype)
    x = tower.transformer(x, attn_mask=mask)
    x = tower.ln_final(x)
    return _project(_pool(x, tokens, tower), tower)


# Token ids of "X X X X {class}." per tokenizer, per (n_ctx, class text): fixed, so built once.
_TOKEN_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _placeholder_tokens(tokenizer: Any, n_ctx: int, class_text: str) -> torch.Tensor:
    try:
        cache = _TOKEN_CACHE.setdefault(tokenizer, {})
    except TypeError:  # tokenizer not weak-referenceable
        cache = {}
    key = (n_ctx, class_text)
    if key not in cache:
        text = " ".join([PLACEHOLDER] * n_ctx) + f" {class_text}."
        tokens = tokenizer([text])[0]
        holder = tokenizer([PLACEHOLDER])[0][1]
        if not bool((tokens[1:1 + n_ctx] == holder).all()):
            raise IPLError(f"tokenizer did not map {PLACEHOLDER!r} to one token per context vector")
        eot = int(tokens.argmax())
        if eot <= n_ctx + 1:
            raise IPLError(f"class text {class_text!r} does not fit the text context after {n_ctx} prompt vectors")
        cache[key] = tokens
    return cache[key]


def encode_with_context(clip_model: nn.Module, tokenizer: Any, ctx: torch.Tensor,
                        class_texts: Union[str, Sequence[str]]) -> torch.Tensor:
    """Unnormalised text features [B, embed_dim] of 'ctx_1 .. ctx_n {class}.' with ctx [B, n_ctx, width]."""
    if hasattr(clip_model, "tokenizer") and hasattr(clip_model, "model"):  # a FrozenClip
        clip_model = clip_model.model
    tower = text_tower(clip_model)
    assert ctx.ndim == 3, f"ctx must be [B, n_ctx, width], got {tuple(ctx.shape)}"
    B, n_ctx, width = ctx.shape
    assert width == tower.token_embedding.weight.shape[1], \
        f"ctx width {width} != text transformer width {tower.token_embedding.weight.shape[1]}"
    if isinstance(class_texts, str):
        class_texts = [class_texts]
    class_texts = list(class_texts)
    if len(class_texts) == 1:
        class_texts = class_texts * B
    assert len(class_texts) == B, f"{len(class_texts)} class texts for {B} contexts"
    device = tower.token_embedding.weight.device
    tokens = torch.stack([_placeholder_tokens(tokenizer, n_ctx, c) for c in class_texts]).to(device)
    emb = tower.token_embedding(tokens)                                     # [B, L, width]
    x = torch.cat([emb[:, :1], ctx.to(emb.dtype), emb[:, 1 + n_ctx:]], dim=1)  # SOT, ctx, rest
    return encode_token_embeddings(tower, x, tokens)


def token_embeddings(clip_model: nn.Module, tokenizer: Any, words: str) -> torch.Tensor:
    """Token embeddings [n_tokens, width] of `words` (without start/end tokens), e.g. to initialise a context."""
    if hasattr(clip_model, "tokenizer") and hasattr(clip_model, "model"):
        clip_model = clip_model.model
    tower = text_tower(clip_model)
    tokens = tokenizer([words])[0]
    n = int(tokens.argmax()) - 1
    return tower.token_embedding(tokens[1:1 + n].to(tower.token_embedding.weight.device))


# ----------------------------------------------------------------------------------------------------------
# The prompt learner M.

class PixelNorm(nn.Module):
    """Normalise each vector to unit root-mean-square."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate, lr multiplier, then leaky ReLU 0.2 with gain sqrt(2)."""

    def __init__(self, in_features: int,   # input width
                 out_features: int,        # output width
                 lr_multiplier: float = 0.01,  # scales the effective learning rate (StyleGAN mapping style)
                 bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init) / lr_multiplier))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return F.leaky_relu(x, 0.2) * math.sqrt(2.0)


class PromptLearner(nn.Module):
    """Maps a code w [B, w_dim] to n_ctx prompt vectors [B, n_ctx, ctx_dim] (one learner per CLIP model)."""

    def __init__(self, w_dim: int,       # width of the generator's code (StyleGAN2: 512)
                 n_ctx: int = 4,         # number of learned context vectors
                 ctx_dim: int = 512,     # width of the CLIP text transformer
                 num_layers: int = 4,    # equalised-lr linear layers
                 lr_multiplier: float = 0.01):
        super().__init__()
        self.w_dim, self.n_ctx, self.ctx_dim = int(w_dim), int(n_ctx), int(ctx_dim)
        self.init_kwargs = dict(w_dim=self.w_dim, n_ctx=self.n_ctx, ctx_dim=self.ctx_dim,
                                num_layers=num_layers, lr_multiplier=lr_multiplier)
        widths = [self.w_dim] * num_layers + [self.n_ctx * self.ctx_dim]
        self.net = nn.Sequential(PixelNorm(), *[EqualLinear(widths[i], widths[i + 1], lr_multiplier)
                                                for i in range(num_layers)])

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        assert codes.ndim == 2 and codes.shape[1] == self.w_dim, \
            f"expected codes [B, {self.w_dim}], got {tuple(codes.shape)}"
        return self.net(codes.float()).view(codes.shape[0], self.n_ctx, self.ctx_dim)


def prompt_features(clip: Any, learner: PromptLearner, codes: torch.Tensor,
                    class_text: Union[str, Sequence[str]]) -> torch.Tensor:
    """T_c(w) = norm(E_T(P_c(w)) + E_T('a photo of a {c}.')), normalised [B, embed_dim]."""
    ctx = learner(codes)
    if isinstance(class_text, str):
        fixed = clip.encode_texts([FIXED_TEMPLATE.format(class_text)])            # [1, D], cached
    else:
        fixed = clip.encode_texts([FIXED_TEMPLATE.format(c) for c in class_text])  # [B, D], cached
    feats = clip.encode_prompts(ctx, class_text).float() + fixed.float()
    return F.normalize(feats, dim=-1)
