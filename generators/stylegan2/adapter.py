"""StyleGAN2 behind the trainer's `AdaptableGenerator` interface: latents and codes are W vectors."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ipl.generators.stylegan2.network import Generator
from ipl.core.errors import IPLError
from ipl.core.interface import AdaptableGenerator


class StyleGAN2Adapter(AdaptableGenerator):
    """Samples W codes, renders them (W broadcast or W+), exposes W+ layer groups for adaptive freezing."""

    def __init__(
        self,
        G: Generator,               # the wrapped StyleGAN2 generator (owned by this adapter)
        noise_mode: str = "const",  # noise used by render(): 'const' keeps renders deterministic
        train_torgb: bool = False,  # let stage 2 train every ToRGB layer (NADA/IPL reach only the 4x4 one; below)
    ) -> None:
        super().__init__()
        self.G = G
        self.noise_mode = noise_mode
        self.noise_generator: Optional[torch.Generator] = None  # 'random' noise drawn from it (set_noise_mode)
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
        return self.G.synthesis(latents, noise_mode=self.noise_mode, noise=self._drawn_noise(latents.shape[0]))

    def num_layers(self) -> int:
        return self.G.num_ws

    def lift(self, latents: torch.Tensor) -> torch.Tensor:
        """W [N, w_dim] -> W+ [N, num_ws, w_dim] (one copy per layer)."""
        assert latents.ndim == 2 and latents.shape[1] == self.G.w_dim, tuple(latents.shape)
        return latents.unsqueeze(1).repeat([1, self.G.num_ws, 1])

    def render_layers(self, latents_plus: torch.Tensor) -> torch.Tensor:
        assert latents_plus.ndim == 3, tuple(latents_plus.shape)
        return self.G.synthesis(latents_plus, noise_mode=self.noise_mode,
                                noise=self._drawn_noise(latents_plus.shape[0]))

    def _drawn_noise(self, n: int) -> Optional[list[torch.Tensor]]:
        """'random' with a generator: fresh per-layer noise [n, 1, R, R]; otherwise None (the network's noise_mode).

        One draw from the run's generator seeds this render's noise, which is made on the network's own device: a
        GPU draws megapixels of noise itself (a CPU stream would cost ~1 s per stage-1 batch at 1024 px), and the
        run's stream stays a small state that --resume restores on any device (the noise itself differs by device).
        """
        if self.noise_mode != "random" or self.noise_generator is None:
            return None
        seed = int(torch.randint(0, 2**63 - 1, [1], generator=self.noise_generator,
                                 device=self.noise_generator.device))
        gen = torch.Generator(device=self.device).manual_seed(seed)
        return [torch.randn([n, 1, h, w], generator=gen, device=self.device) for (_, _, h, w) in self.G.noise_shapes()]

    def layer_parameters(self, index: int, layer_map: str = "reference") -> list[nn.Parameter]:
        """What unfreezing W+ row `index` trains.

        'reference': the NADA and IPL trainers' map (`determine_opt_layers`, ZSSGAN.py of both): the row indexes
        rosinality's [conv1, to_rgb1] + convs, so row 0 -> b4.conv1, row 1 -> b4.torgb, row i >= 2 -> the (i-2)-th of
        b8.conv0, b8.conv1, b16.conv0, ... (every parameter of that module: weight, affine, noise strength, bias, as
        their requires_grad on the module). One module per row, whatever the checkpoint's format; it is not the
        layer the row modulates (row i >= 1 feeds the (i-1)-th of those convolutions), but what those trainers train.
        'semantic': the convolutions the row modulates (`Generator.layer_groups`), its ToRGB only with train_torgb;
        the last row, which modulates only the last ToRGB, then trains nothing (and is never picked).
        """
        if layer_map == "reference":
            return list(self._reference_modules()[index].parameters())
        if layer_map == "semantic":
            group = self.G.layer_groups()[index]
            if self.train_torgb:
                return group
            torgb = {id(p) for block in self.G.synthesis.blocks() for p in block.torgb.parameters()}
            return [p for p in group if id(p) not in torgb]
        raise IPLError(f"unknown layer map {layer_map!r}; choose reference or semantic")

    def _reference_modules(self) -> list[nn.Module]:
        """The reference trainers' row -> module list: [conv1, to_rgb1] + convs in our names."""
        synthesis = self.G.synthesis
        convs = [layer for block in synthesis.blocks()[1:] for layer in block.layers()]
        modules = [synthesis.b4.conv1, synthesis.b4.torgb] + convs
        assert len(modules) == self.G.num_ws, (len(modules), self.G.num_ws)
        return modules

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What a layer map can train: every synthesis convolution (weight, affine, noise strength, bias) and the
        4x4 ToRGB (the reference map's row 1: NADA's and IPL's to_rgb1); not the constant input, the mapping
        network, nor the other ToRGBs unless train_torgb. The trainer keeps those of its map (`layer_parameters`)."""
        frozen = {id(self.G.synthesis.b4.const)}
        if not self.train_torgb:
            frozen |= {id(p) for block in self.G.synthesis.blocks()[1:] for p in block.torgb.parameters()}
        return [p for p in self.G.synthesis.parameters() if id(p) not in frozen]

    @property
    def metadata(self) -> dict[str, Any]:
        """What the checkpoint recorded (an adapted model: source, target text, method...)."""
        return dict(self.G.metadata)

    def set_noise_mode(self, mode: str, generator: Optional[torch.Generator] = None) -> None:
        """'const' (the stored noise buffers), 'random' (fresh each call; from `generator` when given) or 'none'."""
        if mode not in ("const", "random", "none"):
            raise ValueError(f"noise mode must be 'const', 'random' or 'none', got {mode!r}")
        self.noise_mode = mode
        self.noise_generator = generator if mode == "random" else None

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

    can_project = True
    # `ipl invert` defaults: NVIDIA's projector runs 1000 steps on a VGG16 perceptual distance (LPIPS here).
    projection_defaults = {"steps": 1000, "loss": "lpips"}

    def project(self, images: torch.Tensor, distance: Any, space: str = "w+", steps: Optional[int] = None,
                seed: int = 0, progress: bool = True) -> torch.Tensor:
        """W+ latents [N, num_ws, w_dim] for real images, by the projector of generators/stylegan2/invert.py."""
        from ipl.generators.stylegan2.invert import STEPS, project

        return project(self.G, images, distance, space=space, steps=STEPS if steps is None else steps, seed=seed,
                       progress=progress)

    def pivotal_tune(self, latents: torch.Tensor, images: torch.Tensor, distance: Any, steps: int,
                     progress: bool = True) -> "StyleGAN2Adapter":
        """A copy whose whole network is fine-tuned around the pivots `latents` (PTI)."""
        from ipl.generators.stylegan2.invert import pivotal_tune

        tuned = self.copy()
        pivotal_tune(tuned.G, latents, images, distance, steps, progress=progress)
        return tuned

    def noise_parameters(self) -> list[nn.Parameter]:
        """The per-layer noise strengths (one scalar per synthesis convolution); stage 2 may keep them frozen."""
        return [p for name, p in self.G.synthesis.named_parameters() if name.endswith("noise_strength")]

    def save(self, path: str, metadata: Optional[dict[str, Any]] = None) -> None:
        from ipl.generators.stylegan2.checkpoints import save

        save(self.G, path, metadata)
