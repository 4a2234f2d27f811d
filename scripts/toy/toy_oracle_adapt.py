"""Diagnostic: `ipl adapt` on the toy source with an oracle in place of CLIP that sees only background darkness.

python scripts/toy/toy_oracle_adapt.py --target "on a dark background" --method nada [other ipl adapt flags]

The oracle's image feature is (C, -L, r - L, g - L), C = 10, of the mean colour (r, g, b), lightness L, of a 4-pixel
frame along the image border (the background, for toy scenes); its text feature is (C, +-1, 0, 0), +1 for a
text containing "dark". So the directional loss toward "dark" is about 0 for any pure darkening of the
frame, whatever its size, and rewards nothing else: what stage 2 does with it is the generator's and the trainer's part of an
adaptation, with the CLIP taken out of the question. Use `--method nada` (IPL's prompt learner needs a real
text tower). Never report these runs as results of the method.
"""
from __future__ import annotations

import sys

import torch

import ipl.method.clip

FRAME = 4  # border width in pixels read by the oracle
# Size of the constant first axis: large enough that unit-normalising a feature barely bends it (a pure
# darkening then scores cos > 0.99 at any size), small enough that a change of lightness of 0.01 is still
# longer than the directional loss's linear zone (ipl.method.losses.MIN_IMAGE_DELTA).
CONSTANT = 10.0


def oracle_image_features(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] images in [-1, 1] -> [N, 4] features of the border frame's mean colour."""
    x = (images.float() + 1) / 2
    frame = torch.cat([x[:, :, :FRAME].flatten(2), x[:, :, -FRAME:].flatten(2),
                       x[:, :, :, :FRAME].flatten(2), x[:, :, :, -FRAME:].flatten(2)], dim=2).mean(2)
    light = frame.mean(1, keepdim=True)
    return torch.cat([CONSTANT * torch.ones_like(light), -light, frame[:, :2] - light], dim=1)


def oracle_text_features(texts: list[str]) -> torch.Tensor:
    """[N, 4]: +1 on the darkness axis for a text mentioning "dark", else -1."""
    out = torch.zeros(len(texts), 4)
    out[:, 0] = CONSTANT
    out[:, 1] = torch.tensor([1.0 if "dark" in t.lower() else -1.0 for t in texts])
    return out


def main() -> None:
    load_clips = ipl.method.clip.load_clips

    def load_oracles(specs, device="cpu"):
        clips = load_clips(specs, device=device)
        for clip in clips:  # keep the loaded object (weights, image size) but answer with the oracle
            clip.encode_images = oracle_image_features
            clip.encode_texts = oracle_text_features
        return clips

    ipl.method.clip.load_clips = load_oracles
    from ipl.commands.cli import main as cli_main

    sys.argv = ["ipl", "adapt", "--source", "toy", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
