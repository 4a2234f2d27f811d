"""ipl: zero-shot generative domain adaptation with Image-specific Prompt Learning (CVPR 2023)."""

__version__ = "0.2.0"


def train_prompts(*args, **kwargs):
    """Stage 1: learn the image-specific prompt learners (see ipl.method.stage1.train_prompts)."""
    from ipl.method.stage1 import train_prompts as _train_prompts

    return _train_prompts(*args, **kwargs)
