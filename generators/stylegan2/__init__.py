"""StyleGAN2: one network (network.py), three checkpoint formats (checkpoints.py), the trainer adapter."""
from ipl.generators.stylegan2.network import Generator, channel_table, style_mix

__all__ = ["Generator", "channel_table", "style_mix"]
