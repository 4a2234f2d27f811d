"""Captions of toy scenes in several phrasings, the domain prompts, and the default adaptation texts."""
from __future__ import annotations

import random
from typing import Optional

from .render import COLOURS, DEGRADATIONS, DOMAINS, SHAPES

# The source text of the toy world and the target text used for each target domain.
SOURCE_TEXT = "a solid shape"
TARGET_TEXTS = {
    "dark": "on a dark background",
    "pastel": "a pastel shape",
    "outlined": "an outlined shape",
    "striped": "a striped shape",
    "dotted": "a dotted shape",
}

# Phrasings per domain. {s} = shape, {c} = colour. Each domain also has shape/colour-free phrasings,
# so short domain texts (as used for adaptation) are in-distribution for the toy CLIP.
DOMAIN_PHRASES: dict[str, list[str]] = {
    "solid": ["a solid shape", "a solid {c} {s}", "a {c} {s}", "a plain {c} {s} on a light background",
              "a flat {s}", "a solid {s}", "a {c} {s} on white", "a filled {c} {s}", "a solid colour shape"],
    "dark": ["on a dark background", "a {c} {s} on a dark background", "a {s} on a black background",
             "a shape on a dark background", "a {c} {s} at night", "a dark picture of a {c} {s}",
             "a {s} on black"],
    "pastel": ["a pastel shape", "a pastel {c} {s}", "a {s} in pastel colours", "a soft pastel {s}",
               "a light {c} {s} in pastel", "pastel colours", "a pale pastel {c} {s}"],
    "outlined": ["an outlined shape", "an outlined {c} {s}", "a {c} {s} with a dark outline",
                 "a {s} with a black outline", "a shape with a thick outline", "an outlined {s}",
                 "a {c} {s} with a black border"],
    "striped": ["a striped shape", "a striped {c} {s}", "a {s} with stripes", "a {c} {s} with white stripes",
                "a shape with stripes", "a striped {s}", "a {c} and white striped {s}"],
    "dotted": ["a dotted shape", "a dotted {c} {s}", "a {s} with polka dots", "a {c} {s} with white dots",
               "a polka dot shape", "a dotted {s}", "a spotted {c} {s}"],
}
DEGRADED_PHRASES: dict[str, list[str]] = {
    "blurred": ["a blurry picture", "a blurred image", "an out of focus picture", "a blurry picture of a {s}"],
    "faded": ["a faded picture", "a washed out image", "a faded picture of a {s}", "a low contrast picture"],
    "noisy": ["a noisy picture", "a grainy image", "a picture full of noise", "a noisy picture of a {s}"],
    "blank": ["an empty picture", "a blank image", "a picture of nothing", "an empty flat colour"],
    "colour_shifted": ["a picture with a colour cast", "a tinted image", "a discoloured picture",
                       "a picture with a strong colour tint"],
}
# Wrappers so that the text encoder sees the kinds of sentence prompt learning and templates produce.
WRAPPERS = ["{}", "{}", "{}", "a photo of {}.", "a photo of a {}.", "a picture of {}.", "a rendering of {}.",
            "an image of {}.", "a drawing of {}.", "a good photo of {}.", "a bad photo of {}.",
            "a close-up photo of {}.", "a low resolution photo of {}.", "a cropped photo of {}.",
            "a photo of the {}.", "itap of {}.", "a sketch of {}.", "art of {}.", "a {}.", "the {}."]

# Zero-shot prompts per judged domain (index = DOMAINS).
ZERO_SHOT_PROMPTS: dict[str, list[str]] = {
    "solid": ["a solid shape", "a solid shape on a light background", "a flat solid colour shape"],
    "dark": ["on a dark background", "a shape on a dark background", "a shape on a black background"],
    "pastel": ["a pastel shape", "a shape in pastel colours", "a soft pastel shape"],
    "outlined": ["an outlined shape", "a shape with a dark outline", "a shape with a black border"],
    "striped": ["a striped shape", "a shape with stripes", "a shape with white stripes"],
    "dotted": ["a dotted shape", "a shape with polka dots", "a shape with white dots"],
    "degraded": ["a blurry picture", "a faded picture", "a noisy picture", "an empty picture",
                 "a picture with a colour cast"],
}
assert tuple(ZERO_SHOT_PROMPTS) == DOMAINS


def caption(domain: int, shape: int, colour: int, degradation: int = -1,
            rng: Optional[random.Random] = None) -> str:
    """One random caption of a labelled scene (indices into DOMAINS, SHAPES, COLOURS, DEGRADATIONS)."""
    rng = rng or random
    if degradation >= 0:
        phrase = rng.choice(DEGRADED_PHRASES[DEGRADATIONS[degradation]])
    else:
        phrase = rng.choice(DOMAIN_PHRASES[DOMAINS[domain]])
    phrase = phrase.format(s=SHAPES[shape], c=COLOURS[colour])
    wrapped = rng.choice(WRAPPERS).format(phrase)
    return wrapped.replace("of a a ", "of a ").replace("of a an ", "of an ").replace("a a ", "a ")


def domain_from_text(text: str) -> str:
    """Name of the toy domain a target text or domain name refers to (raises ValueError if none)."""
    t = text.lower().strip()
    if t in DOMAINS:
        return t
    keys = [("dark", "dark"), ("black background", "dark"), ("pastel", "pastel"), ("outline", "outlined"),
            ("border", "outlined"), ("stripe", "striped"), ("dot", "dotted"), ("spot", "dotted"),
            ("solid", "solid")]
    for k, d in keys:
        if k in t:
            return d
    raise ValueError(f"cannot tell which toy domain {text!r} means; use one of {DOMAINS} or a text "
                     f"naming one (e.g. {TARGET_TEXTS['dark']!r})")
