"""CLIP-side check of a toy run: do the text directions stage 2 follows prefer a change that keeps the scene?

python scripts/toy/toy_direction_check.py RUN [--n 128] [--seed 7] [--clip SPEC]

For n latents of the toy source, the scene each was trained to draw (`scene_from_latent`) is rendered `solid`,
in the run's target domain (the faithful change) and in the target domain with its hue shifted by +-30 / +-60
degrees or its shape swapped (`content_variants`). Against the image change dI of each, measured by the run's
CLIP, it scores the text direction dT that stage 2 uses: NADA's template direction, and for an IPL run also the
per-image directions T_tgt(w) - T_src(w) of the run's prompt learner. Prints (and with --out writes) JSON per
direction: `wins` (share of latents where the faithful change has the highest cos), `margin` (its mean lead),
`cos_faithful` (mean cos of the faithful change), and for IPL its mean cos with NADA's direction and `spread`
(mean 1 - cos between the images' directions: 0 when the prompts describe nothing image-specific). When the run
used the length term, `reach` is the faithful change's mean projection on each direction over the term's goal
(length_ratio x the template change's length): below 1, the term asks stage 2 to go past the faithful change.
No judge is involved. --clip replaces the run's CLIP spec (e.g. when the shipped toy CLIP changed since the run).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from analysis import content_lead, content_variants
from ipl.core.errors import IPLError
from ipl.generators.toy.captions import domain_from_text
from ipl.generators.toy.render import render
from ipl.generators.toy.source import scene_from_latent


def score(d_img_true: torch.Tensor, d_img_others: list[torch.Tensor], d_txt: torch.Tensor,
          along_goal: tuple[torch.Tensor, float] | None = None) -> dict:
    """wins / margin / cos_faithful of unit image changes [N, D] against unit text directions [N or 1, D].

    along_goal: (the faithful image change unnormalised [N, D], the length term's goal): adds `reach`.
    """
    cos_true = (d_img_true * d_txt).sum(-1)
    out = dict(content_lead(cos_true, [(o * d_txt).sum(-1) for o in d_img_others]),
               cos_faithful=round(cos_true.mean().item(), 4))
    if along_goal is not None:
        change, goal = along_goal
        out["reach"] = round(((change * d_txt).sum(-1) / goal).mean().item(), 4)
    return out


@torch.no_grad()
def check(run: Path, n: int = 128, seed: int = 7, clip_spec: str | None = None) -> dict:
    """The JSON report for one toy run folder."""
    from ipl.method.clip import load_clip
    from ipl.method.prompts import prompt_features
    from ipl.run import load_learners, load_run
    from ipl.method.templates import template_features

    info = load_run(run)
    settings = info.config["settings"]
    if settings["source"] != "toy":
        raise IPLError(f"{run}: a run of the toy source is needed (its source is {settings['source']!r})")
    clip = load_clip(clip_spec or settings["clip"][0])
    src_text = info.config["resolved"]["source_text"]
    tgt_text = info.config["resolved"]["target_text"]
    domain = domain_from_text(tgt_text)
    G = info.source.G
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, G.z_dim, generator=g)
    c = F.one_hot(torch.arange(n) % G.c_dim, G.c_dim).float()
    w = G.mapping(z, c)[:, 0]
    scene = scene_from_latent(z, c)
    f_src = F.normalize(clip.encode_images(render(scene, "solid")).float(), dim=-1)

    def change(q):
        return F.normalize(clip.encode_images(render(q, domain)).float(), dim=-1) - f_src

    faithful = change(scene)
    true, others = F.normalize(faithful, dim=-1), [F.normalize(change(q), dim=-1) for q in content_variants(scene)]
    d_template = (F.normalize(template_features(clip, tgt_text).float(), dim=-1)
                  - F.normalize(template_features(clip, src_text).float(), dim=-1))
    nada = F.normalize(d_template, dim=-1)[None]
    # The length term's goal (ipl.method.losses.length_loss with the template change as reference, as stage 2 uses it).
    ratio = settings.get("length_ratio") if settings.get("length_weight") else None
    along_goal = (faithful, ratio * d_template.norm().item()) if ratio else None
    report = {"run": str(run), "target_domain": domain, "n": n, "seed": seed, "clip": clip_spec or settings["clip"][0],
              "nada": score(true, others, nada, along_goal)}
    learners = load_learners(Path(run), [clip], info.source.code_dim)
    if learners is not None:
        ipl = F.normalize(prompt_features(clip, learners[0], w, tgt_text)
                          - prompt_features(clip, learners[0], w, src_text), dim=-1)
        report["ipl"] = dict(score(true, others, ipl, along_goal),
                             cos_with_nada=round((ipl * nada).sum(-1).mean().item(), 4),
                             spread=round((1 - ipl @ ipl.T).mean().item(), 4))
    return report


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a run folder of `ipl adapt --source toy`")
    ap.add_argument("--n", type=int, default=128, help="latents to score")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--clip", default=None, help="CLIP spec to use instead of the run's")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error(f"--n must be >= 1, got {args.n}")
    torch.set_num_threads(1)
    try:
        report = check(Path(args.run), n=args.n, seed=args.seed, clip_spec=args.clip)
    except IPLError as e:
        ap.exit(2, f"error: {e}\n")
    print(json.dumps(report))
    if args.out:
        from ipl.core.atomic import write_json

        write_json(Path(args.out), report)
    return report


if __name__ == "__main__":
    main()
