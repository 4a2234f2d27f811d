"""ipl: zero-shot generative domain adaptation with Image-specific Prompt Learning (CVPR 2023)."""

__version__ = "0.2.0"


def train_prompts(*args, **kwargs):
    """Stage 1: learn the image-specific prompt learners (see ipl.method.stage1.train_prompts)."""
    from ipl.method.stage1 import train_prompts as _train_prompts

    return _train_prompts(*args, **kwargs)


def invert(*args, **kwargs):
    """Invert real images into a source generator's latents (see ipl.inversion.invert)."""
    from ipl.inversion import invert as _invert

    return _invert(*args, **kwargs)


def edit(*args, **kwargs):
    """Put real images through adapted generators (see ipl.inversion.edit)."""
    from ipl.inversion import edit as _edit

    return _edit(*args, **kwargs)
