"""StyleGAN2: one network (network.py), four checkpoint formats (checkpoints.py, nvidia_tf.py), the adapter."""
from ipl.generators.stylegan2.network import Generator, channel_table, style_mix

__all__ = ["Generator", "channel_table", "style_mix"]
