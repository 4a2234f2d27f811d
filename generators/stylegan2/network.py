"""The StyleGAN2 generator (config-f family): mapping network, modulated-conv synthesis with skip ToRGBs.

Written from the paper's maths (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN").
Resampling and fused bias+activation go through `cuda_ops`, with the implementation (`'auto'|'cuda'|'ref'`)
passed through from `Generator.impl`.

Parameter layout (the project's own state-dict names, also used by our file format):
    mapping.embed.{weight,bias}             label embedding (c_dim > 0 only)
    mapping.fc{i}.{weight,bias}             mapping layers, raw (equalised-lr gains applied at run time)
    mapping.w_avg                           truncation centre (buffer)
    synthesis.b4.const                      learned constant input [C, 4, 4]
    synthesis.b{R}.conv0.*                  upsampling modulated conv (R > 4)
    synthesis.b{R}.conv1.*                  modulated conv at R x R
    synthesis.b{R}.torgb.*                  modulated 1x1 conv to RGB, summed into the upsampled skip image
    synthesis.b{R}.resample_filter          the FIR used for upsampling in block R (buffer)
    *.conv{0,1}.{weight,bias,noise_strength,noise_const,affine.weight,affine.bias}
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ipl import cuda_ops

NoiseArg = Optional[Sequence[Optional[torch.Tensor]]]

# Add the noise map and each ToRGB output in place, as NVIDIA's code does (bit-identical to the out-of-place adds,
# one temporary less per layer; speed: docs/benchmarks.md). False restores the out-of-place formulation (the parity
# test's reference and the benchmark's `outofplace` candidate).
INPLACE_ADDS = True

# rosinality's base widths; resolutions above 32 are multiplied by channel_multiplier.
_ROSINALITY_BASE = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}


def channel_table(
    img_resolution: int,
    channel_base: int = 32768,
    channel_max: int = 512,
    channel_multiplier: Optional[int] = None,
) -> dict[int, int]:
    """Feature-map width per resolution: NVIDIA's min(base // res, max), or rosinality's table x multiplier."""
    log2 = int(np.log2(img_resolution))
    resolutions = [2 ** i for i in range(2, log2 + 1)]
    if channel_multiplier is not None:
        table = {}
        for res in resolutions:
            base = _ROSINALITY_BASE.get(res, max(16 * 1024 // res, 1))
            table[res] = base if res <= 32 else base * channel_multiplier
        return table
    return {res: max(min(channel_base // res, channel_max), 1) for res in resolutions}


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each vector to unit root-mean-square (PixelNorm)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


class FullyConnected(nn.Module):
    """Equalised-learning-rate linear layer with an optional fused activation."""

    def __init__(
        self,
        in_features: int,            # input width
        out_features: int,           # output width
        activation: str = "linear",  # 'linear' or any ipl.cuda_ops.bias_act activation, e.g. 'lrelu'
        lr_multiplier: float = 1.0,  # learning-rate multiplier (scales weight and bias at run time)
        bias_init: float = 0.0,      # initial (effective) bias value
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        # Stored weights are N(0, 1/lr^2) so that weight * weight_gain has unit-variance rows after scaling.
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init) / lr_multiplier))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.impl = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 2 and x.shape[1] == self.in_features, (tuple(x.shape), self.in_features)
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear":
            return torch.addmm(b.unsqueeze(0), x, w.t())
        x = x.matmul(w.t())
        return cuda_ops.bias_act(x, b, act=self.activation, impl=self.impl)


class MappingNetwork(nn.Module):
    """z (and one-hot c) -> w, broadcast to num_ws rows, optionally truncated toward w_avg."""

    def __init__(
        self,
        z_dim: int,                   # latent z width
        c_dim: int,                   # conditioning label width (0 = unconditional)
        w_dim: int,                   # intermediate latent w width
        num_ws: int,                  # number of W+ rows the synthesis network consumes
        num_layers: int = 8,          # depth of the MLP
        lr_multiplier: float = 0.01,  # learning-rate multiplier of every MLP layer
        truncation_style: str = "lerp",  # 'lerp' (NVIDIA, torch.lerp) or 'affine' (rosinality, mean + psi*(w - mean))
    ) -> None:
        super().__init__()
        assert z_dim > 0 and w_dim > 0 and num_layers >= 1
        assert truncation_style in ("lerp", "affine"), truncation_style
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers = num_layers
        self.truncation_style = truncation_style
        embed_features = w_dim if c_dim > 0 else 0
        if c_dim > 0:
            self.embed = FullyConnected(c_dim, embed_features)
        features = [z_dim + embed_features] + [w_dim] * num_layers
        for i in range(num_layers):
            layer = FullyConnected(features[i], features[i + 1], activation="lrelu", lr_multiplier=lr_multiplier)
            setattr(self, f"fc{i}", layer)
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def embed_input(self, z: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        """Normalised z, concatenated with the normalised label embedding when conditional."""
        assert z.ndim == 2 and z.shape[1] == self.z_dim, f"z must be [N, {self.z_dim}], got {tuple(z.shape)}"
        x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this generator is conditional (c_dim={self.c_dim}); pass c [N, {self.c_dim}]")
            assert c.shape == (z.shape[0], self.c_dim), f"c must be [N, {self.c_dim}], got {tuple(c.shape)}"
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1)
        return x

    def truncate(self, ws: torch.Tensor, psi: float) -> torch.Tensor:
        """Move ws toward w_avg: psi=1 leaves them, psi=0 collapses to w_avg."""
        if psi == 1:
            return ws
        w_avg = self.w_avg.to(ws.dtype)
        if self.truncation_style == "lerp":
            return torch.lerp(w_avg, ws, psi)
        return w_avg + psi * (ws - w_avg)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None, truncation_psi: float = 1.0) -> torch.Tensor:
        x = self.embed_input(z, c)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        ws = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        return self.truncate(ws, truncation_psi)


def modulated_conv2d(
    x: torch.Tensor,                  # input activations [N, I, H, W]
    weight: torch.Tensor,             # raw conv weight [O, I, k, k]
    styles: torch.Tensor,             # per-sample input-channel scales [N, I]
    demodulate: bool = True,          # normalise each output filter to unit L2 norm
    up: int = 1,                      # 1 or 2 (transposed conv followed by the FIR)
    padding: int = 0,                 # conv padding (k // 2 keeps the size)
    resample_filter: Optional[torch.Tensor] = None,  # 2-D FIR for up=2
    fused: bool = True,               # True: one grouped conv with per-sample weights; False: scale activations
    impl: str = "auto",               # cuda_ops implementation
) -> torch.Tensor:
    """Modulate the conv weight by styles, (de)modulate, convolve; optional 2x upsampling."""
    batch, in_ch, height, width = x.shape
    out_ch, in_ch_w, kh, kw = weight.shape
    assert in_ch == in_ch_w, f"input has {in_ch} channels, weight expects {in_ch_w}"
    assert styles.shape == (batch, in_ch), (tuple(styles.shape), batch, in_ch)
    assert up in (1, 2)

    if demodulate and x.dtype == torch.float16:
        # fp16 would overflow on raw weight * style products; demodulation cancels any per-filter and
        # per-sample scale, so rescale both to max-abs 1 first.
        weight = weight * (1 / math.sqrt(in_ch * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    w = weight.unsqueeze(0) * styles.reshape(batch, 1, in_ch, 1, 1)  # [N, O, I, k, k]
    dcoefs = None
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]
        if fused:
            w = w * dcoefs.reshape(batch, out_ch, 1, 1, 1)

    if fused:
        xs = x.reshape(1, batch * in_ch, height, width)
        if up == 1:
            y = F.conv2d(xs, w.reshape(batch * out_ch, in_ch, kh, kw), padding=padding, groups=batch)
        else:
            wt = w.transpose(1, 2).reshape(batch * in_ch, out_ch, kh, kw)
            y = F.conv_transpose2d(xs, wt, stride=2, groups=batch)
        y = y.reshape(batch, out_ch, y.shape[2], y.shape[3])
    else:
        xs = x * styles.to(x.dtype).reshape(batch, in_ch, 1, 1)
        if up == 1:
            y = F.conv2d(xs, weight, padding=padding)
        else:
            y = F.conv_transpose2d(xs, weight.transpose(0, 1), stride=2)

    if up == 2:
        # Transposed conv gives 2(H-1)+k samples; the FIR (gain up^2) trims back to exactly 2H.
        assert resample_filter is not None
        fh, fw = resample_filter.shape[-2], resample_filter.shape[-1]
        px0 = padding + (fw + up - 1) // 2 - (kw - 1)
        px1 = padding + (fw - up) // 2 - (kw - up)
        py0 = padding + (fh + up - 1) // 2 - (kh - 1)
        py1 = padding + (fh - up) // 2 - (kh - up)
        y = cuda_ops.upfirdn2d(y, resample_filter, padding=[px0, px1, py0, py1], gain=up * up, impl=impl)

    if dcoefs is not None and not fused:
        y = y * dcoefs.to(y.dtype).reshape(batch, out_ch, 1, 1)
    return y


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv + noise + bias + leaky ReLU (+ clamp)."""

    def __init__(
        self,
        in_channels: int,              # input feature maps
        out_channels: int,             # output feature maps
        w_dim: int,                    # width of the w row that modulates this layer
        resolution: int,               # output resolution (noise map size)
        up: int = 1,                   # 2 for the first conv of a block
        kernel_size: int = 3,          # conv kernel size
        conv_clamp: Optional[float] = None,  # clamp activations to +-conv_clamp after the gain (None: no clamp)
        resample_filter: Optional[torch.Tensor] = None,  # FIR for up=2 (shared with the block)
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resolution, self.up, self.conv_clamp = resolution, up, conv_clamp
        self.padding = kernel_size // 2
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn([resolution, resolution]))
        if up == 2:
            assert resample_filter is not None
            self.register_buffer("resample_filter", resample_filter.clone())
        else:
            self.resample_filter = None
        self.fused = True
        self.impl = "auto"

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const",
                noise: Optional[torch.Tensor] = None, gain: float = 1.0) -> torch.Tensor:
        assert x.shape[1] == self.in_channels and x.shape[2] * self.up == self.resolution, \
            (tuple(x.shape), self.in_channels, self.resolution)
        styles = self.affine(w)
        x = modulated_conv2d(x, self.weight.to(x.dtype), styles.to(x.dtype), demodulate=True, up=self.up,
                             padding=self.padding, resample_filter=self.resample_filter, fused=self.fused,
                             impl=self.impl)
        noise_map = None
        if noise is not None:
            noise = noise.to(device=x.device, dtype=x.dtype)
            if noise.ndim == 2:
                noise = noise[None, None]
            assert noise.ndim == 4 and noise.shape[-2:] == (self.resolution, self.resolution), \
                f"noise for a {self.resolution}x{self.resolution} layer must be [N|1, 1, R, R], got {tuple(noise.shape)}"
            noise_map = noise * self.noise_strength.to(x.dtype)
        elif noise_mode == "random":
            noise_map = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device,
                                    dtype=x.dtype) * self.noise_strength.to(x.dtype)
        elif noise_mode == "const":
            noise_map = self.noise_const.to(x.dtype) * self.noise_strength.to(x.dtype)
        elif noise_mode != "none":
            raise ValueError(f"noise_mode must be 'const', 'random' or 'none', got {noise_mode!r}")
        if noise_map is not None:
            # In place (as NVIDIA's): x is a fresh conv output no backward saves, so autograd allows it and the
            # result and gradients are bit-identical to `x + noise_map` (tests/test_stylegan2_inplace.py).
            x = x.add_(noise_map) if INPLACE_ADDS else x + noise_map
        act_gain = math.sqrt(2) * gain
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return cuda_ops.bias_act(x, self.bias.to(x.dtype), act="lrelu", alpha=0.2, gain=act_gain, clamp=clamp,
                                 impl=self.impl)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv without demodulation, + bias (+ clamp)."""

    def __init__(
        self,
        in_channels: int,            # input feature maps
        out_channels: int,           # image channels
        w_dim: int,                  # width of the w row that modulates this layer
        conv_clamp: Optional[float] = None,  # clamp output to +-conv_clamp (None: no clamp)
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.conv_clamp = in_channels, out_channels, conv_clamp
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels)
        self.fused = True
        self.impl = "auto"

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight.to(x.dtype), styles.to(x.dtype), demodulate=False, fused=self.fused,
                             impl=self.impl)
        return cuda_ops.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp, impl=self.impl)


class SynthesisBlock(nn.Module):
    """One resolution: (const | upsampling conv0) -> conv1 -> ToRGB added to the upsampled skip image."""

    def __init__(
        self,
        in_channels: int,            # feature maps from the previous block (0 for the 4x4 block)
        out_channels: int,           # feature maps at this resolution
        w_dim: int,                  # w width
        resolution: int,             # this block's resolution
        img_channels: int,           # image channels
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # FIR taps for every 2x upsampling
        conv_clamp: Optional[float] = None,  # activation clamp (None: no clamp)
        use_fp16: bool = False,      # run in float16 on CUDA unless force_fp32
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resolution, self.use_fp16 = resolution, use_fp16
        self.register_buffer("resample_filter", cuda_ops.setup_filter(list(resample_filter)))
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp,
                                        resample_filter=self.resample_filter)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1
        self.impl = "auto"

    def layers(self) -> list[SynthesisLayer]:
        """The conv layers in W+ order."""
        return [self.conv1] if self.in_channels == 0 else [self.conv0, self.conv1]

    def forward(self, x: Optional[torch.Tensor], img: Optional[torch.Tensor], ws: torch.Tensor,
                noise_mode: str = "const", noise: NoiseArg = None,
                force_fp32: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        assert ws.shape[1] == self.num_conv + self.num_torgb, (tuple(ws.shape), self.num_conv)
        dtype = torch.float16 if (self.use_fp16 and not force_fp32 and ws.device.type == "cuda") else torch.float32
        noise = list(noise) if noise is not None else [None] * self.num_conv
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, ws[:, 0], noise_mode=noise_mode, noise=noise[0])
        else:
            assert x is not None
            x = x.to(dtype)
            x = self.conv0(x, ws[:, 0], noise_mode=noise_mode, noise=noise[0])
            x = self.conv1(x, ws[:, 1], noise_mode=noise_mode, noise=noise[1])
        if img is not None:
            img = cuda_ops.upsample2d(img, self.resample_filter, impl=self.impl)
        y = self.torgb(x, ws[:, self.num_conv]).to(torch.float32)
        if img is None:
            img = y
        elif INPLACE_ADDS and img.dtype == y.dtype:
            # The upsampled skip image is fresh and saved by no backward: add in place. (Under autocast the
            # reference upsampling returns a half image, which `img + y` promotes to float32: keep that.)
            img = img.add_(y)
        else:
            img = img + y
        return x, img


class SynthesisNetwork(nn.Module):
    """W+ [N, num_ws, w_dim] -> image [N, img_channels, R, R]."""

    def __init__(
        self,
        w_dim: int,                  # w width
        img_resolution: int,         # output resolution, a power of two in 4..1024 (or more)
        img_channels: int,           # image channels
        channels: dict[int, int],    # feature-map width per resolution
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # FIR taps
        conv_clamp: Optional[float] = None,  # activation clamp (None: no clamp)
        num_fp16_res: int = 0,       # the highest this many resolutions run in fp16 on CUDA
    ) -> None:
        super().__init__()
        log2 = int(round(math.log2(img_resolution)))
        assert img_resolution >= 4 and 2 ** log2 == img_resolution, \
            f"img_resolution must be a power of two >= 4, got {img_resolution}"
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            in_ch = channels[res // 2] if res > 4 else 0
            block = SynthesisBlock(in_ch, channels[res], w_dim, res, img_channels, resample_filter=resample_filter,
                                   conv_clamp=conv_clamp, use_fp16=(num_fp16_res > 0 and res >= fp16_resolution))
            setattr(self, f"b{res}", block)
            self.num_ws += block.num_conv
        self.num_ws += 1  # the last block's ToRGB

    def blocks(self) -> list[SynthesisBlock]:
        """Blocks from 4x4 upward."""
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def conv_layers(self) -> list[SynthesisLayer]:
        """Every noise-taking conv layer, in the explicit-noise-list order."""
        return [layer for block in self.blocks() for layer in block.layers()]

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", noise: NoiseArg = None,
                force_fp32: bool = True) -> torch.Tensor:
        # fp16 blocks (num_fp16_res) are opt-in with force_fp32=False, CUDA only; float32 is the exact path.
        if ws.ndim == 2:
            ws = ws.unsqueeze(1).repeat([1, self.num_ws, 1])
        assert ws.ndim == 3 and ws.shape[1:] == (self.num_ws, self.w_dim), \
            f"ws must be [N, {self.w_dim}] or [N, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}"
        ws = ws.to(torch.float32)
        n_layers = len(self.conv_layers())
        if noise is not None:
            noise = list(noise)
            if len(noise) != n_layers:
                raise ValueError(f"noise must be a list of {n_layers} tensors (one per conv layer), got {len(noise)}")
        x = img = None
        w_idx = noise_idx = 0
        for block in self.blocks():
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            block_noise = noise[noise_idx: noise_idx + block.num_conv] if noise is not None else None
            x, img = block(x, img, block_ws, noise_mode=noise_mode, noise=block_noise, force_fp32=force_fp32)
            w_idx += block.num_conv
            noise_idx += block.num_conv
        return img


class Generator(nn.Module):
    """StyleGAN2 generator: `G(z, c) = synthesis(mapping(z, c))`."""

    def __init__(
        self,
        z_dim: int = 512,                     # input latent z width
        w_dim: int = 512,                     # intermediate latent w width
        c_dim: int = 0,                       # conditioning label width (0 = unconditional)
        img_resolution: int = 1024,           # output resolution (power of two >= 4)
        img_channels: int = 3,                # output image channels
        mapping_layers: int = 8,              # depth of the mapping MLP
        mapping_lr_multiplier: float = 0.01,  # learning-rate multiplier of the mapping MLP
        channel_base: int = 32768,            # NVIDIA table: width = min(channel_base // res, channel_max)
        channel_max: int = 512,               # NVIDIA table: maximum width
        channel_multiplier: Optional[int] = None,  # rosinality table (2 = config-f); overrides channel_base/max
        channels: Optional[dict] = None,      # explicit {resolution: width}; overrides both tables
        conv_clamp: Optional[float] = None,   # clamp conv activations to +-conv_clamp (None = no clamp)
        num_fp16_res: int = 0,                # the highest this many resolutions run in fp16 on CUDA
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # FIR taps for 2x upsampling
        truncation_style: str = "lerp",       # 'lerp' (NVIDIA) or 'affine' (rosinality); same maths, last-ulp rounding
        impl: str = "auto",                   # cuda_ops implementation: 'auto', 'cuda' or 'ref'
    ) -> None:
        super().__init__()
        if channels is None:
            channels = channel_table(img_resolution, channel_base, channel_max, channel_multiplier)
        channels = {int(k): int(v) for k, v in channels.items()}
        self.z_dim, self.w_dim, self.c_dim = z_dim, w_dim, c_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channels,
                                          resample_filter=resample_filter, conv_clamp=conv_clamp,
                                          num_fp16_res=num_fp16_res)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, num_layers=mapping_layers,
                                      lr_multiplier=mapping_lr_multiplier, truncation_style=truncation_style)
        # Everything needed to rebuild this network (written into our checkpoint format).
        self.config = dict(
            architecture="stylegan2", z_dim=z_dim, w_dim=w_dim, c_dim=c_dim, img_resolution=img_resolution,
            img_channels=img_channels, mapping_layers=mapping_layers, mapping_lr_multiplier=mapping_lr_multiplier,
            channels={str(r): channels[r] for r in self.synthesis.block_resolutions}, conv_clamp=conv_clamp,
            num_fp16_res=num_fp16_res, resample_filter=[float(t) for t in resample_filter],
            truncation_style=truncation_style,
        )
        # What a checkpoint in our format recorded about this network (source, target text, method...).
        self.metadata: dict = {}
        self.set_impl(impl)

    @classmethod
    def from_config(cls, config: dict, impl: str = "auto") -> "Generator":
        """Rebuild from `G.config` (e.g. read from a checkpoint)."""
        kwargs = {k: v for k, v in config.items() if k != "architecture"}
        return cls(**kwargs, impl=impl)

    @property
    def w_avg(self) -> torch.Tensor:
        """Truncation centre [w_dim]."""
        return self.mapping.w_avg

    def set_impl(self, impl: str) -> "Generator":
        """Choose the cuda_ops implementation ('auto', 'cuda', 'ref') for every layer."""
        assert impl in ("auto", "cuda", "ref"), impl
        self.impl = impl
        for module in self.modules():
            if hasattr(module, "impl") and module is not self:
                module.impl = impl
        return self

    def set_fused_modconv(self, fused: bool) -> "Generator":
        """Grouped conv with per-sample weights (True) or activations scaled around one shared conv (False)."""
        for module in self.modules():
            if isinstance(module, (SynthesisLayer, ToRGBLayer)):
                module.fused = fused
        return self

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None, truncation_psi: float = 1.0,
                noise_mode: str = "const", noise: NoiseArg = None, force_fp32: bool = True) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi)
        return self.synthesis(ws, noise_mode=noise_mode, noise=noise, force_fp32=force_fp32)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """For each W+ index, the parameters of the layers that row modulates (conv and/or ToRGB)."""
        groups: list[list[nn.Parameter]] = [[] for _ in range(self.num_ws)]
        w_idx = 0
        for block in self.synthesis.blocks():
            for i, layer in enumerate(block.layers()):
                groups[w_idx + i].extend(layer.parameters())
            groups[w_idx + block.num_conv].extend(block.torgb.parameters())
            w_idx += block.num_conv
        return groups

    def noise_shapes(self) -> list[tuple[int, int, int, int]]:
        """Shapes of the explicit noise list: one [1, 1, R, R] per conv layer, in order."""
        return [(1, 1, layer.resolution, layer.resolution) for layer in self.synthesis.conv_layers()]

    def sample_labels(self, n: int, generator: Optional[torch.Generator] = None,
                      device: Union[str, torch.device] = "cpu") -> Optional[torch.Tensor]:
        """Uniform random one-hot labels [n, c_dim], or None for an unconditional generator."""
        if self.c_dim == 0:
            return None
        idx = torch.randint(0, self.c_dim, [n], generator=generator)
        return F.one_hot(idx, self.c_dim).to(device=device, dtype=torch.float32)

    @torch.no_grad()
    def estimate_w_avg(self, n: int = 4096, seed: int = 0, batch: int = 1024) -> torch.Tensor:
        """Set w_avg to the mean of n mapped w (uniform random labels when conditional); returns it."""
        gen = torch.Generator().manual_seed(seed)
        device = self.w_avg.device
        total = torch.zeros([self.w_dim], dtype=torch.float64, device=device)
        done = 0
        while done < n:
            b = min(batch, n - done)
            z = torch.randn([b, self.z_dim], generator=gen).to(device)
            c = self.sample_labels(b, gen, device)
            total += self.mapping(z, c)[:, 0].sum(0).double()
            done += b
        self.mapping.w_avg.copy_((total / n).to(self.w_avg.dtype))
        return self.w_avg


def style_mix(ws_a: torch.Tensor, ws_b: torch.Tensor, index: int) -> torch.Tensor:
    """W+ rows [0, index) from ws_a and [index, num_ws) from ws_b."""
    assert ws_a.shape == ws_b.shape and ws_a.ndim == 3, (tuple(ws_a.shape), tuple(ws_b.shape))
    assert 0 <= index <= ws_a.shape[1], index
    return torch.cat([ws_a[:, :index], ws_b[:, index:]], dim=1)
