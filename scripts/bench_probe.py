"""The 'grad' layer probe against the reference W+ probe: do they pick the same layers, and what does each cost?

`python scripts/benchmark.py probe [--sources toy,fixture] [--iters N] [--layer-every N] [--clip SPEC]`

For each source, one stage-2 run follows the 'grad' probe's picks and, at every pick, also asks the reference probe
(its own latent stream, the run's noise stream restored afterwards, so the run is the one `--probe grad` makes) which
layers it would pick; a second run does the reverse (follows the reference, asks the grad probe); a third ('self')
compares two reference probes on different latents, the spread of the reference itself. Reported per pick
after the first (which is the reference probe's in both): the overlap |grad ∩ reference| / k, as a distribution, and
the share of rows on which they agree over the run. Then seconds per stage-2 step of plain `--probe reference` and
`--probe grad` trainers, side by side. Sources: `toy` (the shipped toy generator and toy CLIP, IPL with a short
stage 1, the toy's run defaults: probe batch 4, a pick every step) and `fixture` (tests/data/fixtures'
64 px NVIDIA StyleGAN2-ADA pickle, random weights, with a random ViT-B-32: NADA's direction, probe batch 8, a
pick every --layer-every steps). Random weights: agreement and speed only, never quality.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def _sources(name: str, clip_spec: str):
    """(generator, clips, source text, target text, method, settings overrides) of one named source."""
    from ipl import generators
    from ipl.method.clip import load_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning: agreement and timing only
        if name == "toy":
            from ipl.run import resolve_source

            path, _, _ = resolve_source("toy", allow_download=False, progress=False)
            G = generators.load_adaptable(path)
            clips = [load_clip("toy")]
            return G, clips, "a solid shape", "a solid shape on a dark background", "ipl", \
                {"layer_batch": 4, "layer_every": 1, "noise": "fixed", "augment_views": 4}
        G = generators.load_adaptable(ROOT / "tests" / "data" / "fixtures" / "nvidia_sg2ada_64.pkl")
        clips = [load_clip(clip_spec)]
        return G, clips, "photo", "sketch", "nada", {}


def _overlaps(G, clips, src, tgt, method, over, follow: str, iters: int, learners) -> dict:
    """Run `iters` stage-2 steps following `follow`'s picks; at each pick also compute the other probe's."""
    from ipl.method.freezing import rank_layers, select_layers
    from ipl.method.stage2 import Stage2Settings, Stage2Trainer

    class Shadowed(Stage2Trainer):
        def _render_trained(self, latents, frozen):  # always render from a W+ leaf: the grad probe's scores
            w_plus = self.G_t.lift(latents).detach().requires_grad_(True)
            return self.G_t.render_layers(w_plus), w_plus

        def _pick_layers(self):
            s = self.settings
            due = self.current_layers is None or self.iteration % max(1, s.layer_every) == 0
            if not due or self.probe_scores is None:
                return super()._pick_layers()  # the first pick: the reference probe's, in both runs
            noise_state = self.noise_rng.get_state()
            lat = self.G_t.sample_latents(s.layer_batch, generator=shadow_rng, truncation=s.truncation)
            ref = select_layers(self.G_t, self.clips, self.probe_feats, s.layers, lat, lr=s.layer_lr,
                                autocast=self.autocast, allowed=self.params, layer_map=s.layer_map)
            self.noise_rng.set_state(noise_state)
            if follow == "self":  # the reference probe against itself on the run's own latents (its noise floor)
                grad = select_layers(self.G_t, self.clips, self.probe_feats, s.layers,
                                     self.G_t.sample_latents(s.layer_batch, generator=self.rng,
                                                             truncation=s.truncation),
                                     lr=s.layer_lr, autocast=self.autocast, allowed=self.params,
                                     layer_map=s.layer_map)
            else:
                grad = rank_layers(self.G_t, self.probe_scores, s.layers, allowed=self.params,
                                   layer_map=s.layer_map)
            picks.append((ref, grad))
            self.current_layers, self.probe_scores = (ref if follow == "reference" else grad), None
            return list(self.current_layers)

    shadow_rng = torch.Generator().manual_seed(12345)
    picks: list[tuple[list[int], list[int]]] = []
    k = default_k(G)
    settings = Stage2Settings(method=method, layers=k, probe=follow, seed=0, **over)
    trainer = Shadowed(G, clips, src, tgt, learners, settings)
    for _ in range(iters):
        trainer.step()
    shared = [len(set(a) & set(b)) for a, b in picks]
    hist = {str(n): shared.count(n) for n in range(k + 1)}
    return {"follow": follow, "picks_compared": len(picks), "k": k,
            "rows_agree": round(sum(shared) / (k * len(picks)), 3) if picks else None,
            "overlap_min": round(min(shared) / k, 3) if picks else None,
            "identical_picks": round(sum(s == k for s in shared) / len(picks), 3) if picks else None,
            "shared_rows_histogram": hist}


def default_k(G) -> int:
    from ipl.core.config import default_layers

    return min(default_layers(G.resolution), G.num_layers())


def _speed(G, clips, src, tgt, method, over, probe: str, iters: int, learners) -> dict:
    from ipl.method.stage2 import Stage2Settings, Stage2Trainer

    settings = Stage2Settings(method=method, layers=default_k(G), probe=probe, seed=0, **over)
    trainer = Stage2Trainer(G, clips, src, tgt, learners, settings)
    secs, probe_s = [], []
    for i in range(iters + 1):
        t0 = time.perf_counter()
        rec = trainer.step()
        if i > 0:  # the first step runs the reference probe in both
            secs.append(time.perf_counter() - t0)
            probe_s.append(rec["probe_s"])
    return {"stage2_s_per_it": round(statistics.median(secs), 4),
            "probe_s_per_it": round(statistics.mean(probe_s), 4)}


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="benchmark.py probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sources", default="toy,fixture")
    p.add_argument("--iters", type=int, default=40, help="stage-2 steps per agreement run")
    p.add_argument("--speed-iters", type=int, default=8, help="timed steps per probe (0: no timing)")
    p.add_argument("--layer-every", type=int, default=None, help="fixture: re-pick every N steps [AdaptConfig's]")
    p.add_argument("--prompt-iters", type=int, default=100, help="toy: stage-1 iterations (IPL's learners)")
    p.add_argument("--clip", default="ViT-B-32:none", help="fixture: CLIP spec (random weights)")
    p.add_argument("--follow", default="grad,reference,self", help="which probe's picks the agreement runs follow; "
                   "self: the reference probe against a second reference probe on other latents (its own spread)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    out: dict = {"suite": "probe", "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "weights": "toy: the shipped toy models; fixture: random (agreement and speed only)",
                 "iters": args.iters, "results": {}}
    for name in args.sources.split(","):
        G, clips, src, tgt, method, over = _sources(name, args.clip)
        if name != "toy" and args.layer_every is not None:
            over = {**over, "layer_every": args.layer_every}
        learners = None
        if method == "ipl":
            from ipl.method.stage1 import train_prompts

            learners = train_prompts(G, clips, src, tgt, iters=args.prompt_iters, batch=16, progress=False,
                                     seed=0, noise="fixed").learners
        res: dict = {"k": default_k(G), "num_layers": G.num_layers(), "method": method, "settings": over,
                     "clip": "toy" if name == "toy" else args.clip}
        for follow in args.follow.split(","):
            res[f"follow_{follow}"] = _overlaps(G, clips, src, tgt, method, over, follow, args.iters, learners)
        if args.speed_iters > 0:
            speed = {pr: _speed(G, clips, src, tgt, method, over, pr, args.speed_iters, learners)
                     for pr in ("reference", "grad")}
            res["speed"] = speed
            res["stage2_speedup_grad_vs_reference"] = round(speed["reference"]["stage2_s_per_it"]
                                                            / speed["grad"]["stage2_s_per_it"], 3)
        out["results"][name] = res
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(main(sys.argv[1:]), indent=2))
