"""StyleGAN2 behind the trainer's `AdaptableGenerator` interface: latents and codes are W vectors."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ipl.generators.stylegan2.network import Generator
from ipl.core.interface import AdaptableGenerator


class StyleGAN2Adapter(AdaptableGenerator):
    """Samples W codes, renders them (W broadcast or W+), exposes W+ layer groups for adaptive freezing."""

    def __init__(
        self,
        G: Generator,               # the wrapped StyleGAN2 generator (owned by this adapter)
        noise_mode: str = "const",  # noise used by render(): 'const' keeps renders deterministic
        train_torgb: bool = False,  # let stage 2 train the ToRGB layers (NADA/IPL never do; see below)
    ) -> None:
        super().__init__()
        self.G = G
        self.noise_mode = noise_mode
        self.train_torgb = train_torgb
        self.code_dim = G.w_dim
        self.resolution = G.img_resolution

    @property
    def device(self) -> torch.device:
        return self.G.w_avg.device

    def sample_latents(self, n: int, generator: Optional[torch.Generator] = None,
                       truncation: float = 1.0) -> torch.Tensor:
        """n W codes [n, w_dim]: z ~ N(0, I) (and uniform one-hot labels if conditional) through the mapping."""
        z = torch.randn([n, self.G.z_dim], generator=generator).to(self.device)
        c = self.G.sample_labels(n, generator, self.device)
        return self.G.mapping(z, c, truncation_psi=truncation)[:, 0]

    def codes(self, latents: torch.Tensor) -> torch.Tensor:
        """The prompt-learner input is w itself."""
        assert latents.ndim == 2 and latents.shape[1] == self.G.w_dim, tuple(latents.shape)
        return latents

    def render(self, latents: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] from W codes [N, w_dim] (or W+ [N, num_ws, w_dim])."""
        return self.G.synthesis(latents, noise_mode=self.noise_mode)

    def num_layers(self) -> int:
        return self.G.num_ws

    def lift(self, latents: torch.Tensor) -> torch.Tensor:
        """W [N, w_dim] -> W+ [N, num_ws, w_dim] (one copy per layer)."""
        assert latents.ndim == 2 and latents.shape[1] == self.G.w_dim, tuple(latents.shape)
        return latents.unsqueeze(1).repeat([1, self.G.num_ws, 1])

    def render_layers(self, latents_plus: torch.Tensor) -> torch.Tensor:
        assert latents_plus.ndim == 3, tuple(latents_plus.shape)
        return self.G.synthesis(latents_plus, noise_mode=self.noise_mode)

    def layer_parameters(self, index: int) -> list[nn.Parameter]:
        return self.G.layer_groups()[index]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The synthesis convolutions (with their affines): not the constant input, nor ToRGB unless asked."""
        # The NADA and IPL reference trainers adapt "everything except mapping and ToRGB": the layer groups
        # still list ToRGB parameters (their affines read the W+ rows), but they stay as in the source.
        frozen = {id(self.G.synthesis.b4.const)}
        if not self.train_torgb:
            frozen |= {id(p) for block in self.G.synthesis.blocks() for p in block.torgb.parameters()}
        return [p for p in self.G.synthesis.parameters() if id(p) not in frozen]

    @property
    def metadata(self) -> dict[str, Any]:
        """What the checkpoint recorded (an adapted model: source, target text, method...)."""
        return dict(self.G.metadata)

    def set_noise_mode(self, mode: str) -> None:
        """'const' (the stored noise buffers), 'random' or 'none' for render()."""
        self.noise_mode = mode

    @property
    def num_classes(self) -> int:
        return int(self.G.c_dim)

    def sample_class_latents(self, n: int, class_idx: int, generator: Optional[torch.Generator] = None,
                             truncation: float = 1.0) -> torch.Tensor:
        """n W codes of one class: z ~ N(0, I) with a one-hot label through the mapping."""
        z = torch.randn([n, self.G.z_dim], generator=generator).to(self.device)
        c = torch.zeros([n, self.G.c_dim], device=self.device)
        c[:, class_idx] = 1
        return self.G.mapping(z, c, truncation_psi=truncation)[:, 0]

    export_formats = ("rosinality",)

    def export(self, path: str, fmt: str, metadata: Optional[dict[str, Any]] = None) -> None:
        """Write the network as another tool's checkpoint: 'rosinality' (stylegan2-pytorch `.pt`, g_ema)."""
        if fmt != "rosinality":
            super().export(path, fmt, metadata)
        from ipl.generators.stylegan2.export import export_rosinality

        export_rosinality(self.G, path, metadata)

    def noise_parameters(self) -> list[nn.Parameter]:
        """The per-layer noise strengths (one scalar per synthesis convolution); stage 2 may keep them frozen."""
        return [p for name, p in self.G.synthesis.named_parameters() if name.endswith("noise_strength")]

    def save(self, path: str, metadata: Optional[dict[str, Any]] = None) -> None:
        from ipl.generators.stylegan2.checkpoints import save

        save(self.G, path, metadata)
