"""`ipl adapt`: adapt a source generator to one or more target texts (IPL or the NADA baseline)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import click

from ipl.core.config import LAYER_MAPS, PROBES, AdaptConfig, layered_defaults, slugify
from ipl.core.errors import IPLError

_D = AdaptConfig()  # defaults shown in --help come from the dataclass
# The AdaptConfig field each option sets, where the names differ (for the provenance of settings, filled_by).
_FIELD_OF = {"clips": "clip", "targets": "target_text", "target_file": "target_text", "diffusion_opts": "diffusion",
             "source_images": "diffusion", "compile_": "compile"}


def _read_targets(targets: tuple[str, ...], target_file: Optional[str]) -> list[str]:
    out = []
    flag = "--target-file"
    for t in targets:  # --target @FILE reads a file of targets, like --target-file FILE
        if t.startswith("@") and len(t) > 1:
            if not Path(t[1:]).is_file():
                raise IPLError(f"--target {t}: no such file {t[1:]} (--target @FILE reads one target text per "
                               "line; a target text cannot start with '@')")
            target_file, flag = target_file or t[1:], "--target @FILE"
            if target_file != t[1:]:
                raise IPLError("give at most one file of targets")
        else:
            out.append(t)
    if target_file is not None:
        path = Path(target_file)
        if not path.is_file():
            raise IPLError(f"{flag} {target_file}: no such file (expected one target text per line)")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise IPLError(f"{flag} {target_file}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                           f"{e.start}); save it as UTF-8") from None
        except OSError as e:
            raise IPLError(f"{flag} {target_file}: cannot read it ({e.strerror or e})") from None
        lines = [l.strip() for l in text.splitlines()]
        out += [l for l in lines if l and not l.startswith("#")]
    if not out:
        raise IPLError("no target given: pass --target \"TEXT\" (repeatable) or --target-file FILE")
    for t in out:
        if not t.strip():
            raise IPLError("a target text is empty or only whitespace: pass --target \"TEXT\", "
                           "e.g. --target \"Pixar character\"")
    seen = set()
    for t in out:
        key = " ".join(t.lower().split())
        if key in seen:
            raise IPLError(f"target {t!r} is given twice")
        seen.add(key)
    return [" ".join(t.split()) for t in out]


@click.command(context_settings={"show_default": True})
@click.option("--source", default=_D.source, help="Registry name (see `ipl models list`) or checkpoint path "
              "(.pt rosinality, .pkl NVIDIA, .safetensors ours).")
@click.option("--source-text", default=None, help="Text of the source domain [default: the registry's, e.g. "
              "'photo'; 'photo' for a checkpoint file].")
@click.option("--target", "targets", multiple=True, help="Target domain text, e.g. 'Pixar character'. "
              "Repeatable: one run per target, sharing the loaded models; @FILE reads a file of targets.")
@click.option("--target-file", type=click.Path(dir_okay=False), default=None,
              help="File with one target text per line (# comments allowed).")
@click.option("--method", type=click.Choice(["ipl", "nada"]), default=_D.method,
              help="ipl: image-specific prompts (two stages); nada: one fixed text direction (baseline), with "
              "NADA's recipe as its defaults (--layers all --layer-every 1 --lr 0.0016 --batch 2 --iters 301 "
              "--ema-decay 0); a flag given or a source's run_defaults win over the recipe.")
@click.option("--clip", "clips", multiple=True, help="CLIP model NAME[:PRETRAINED][@WEIGHT], repeatable "
              "[default: the registry's, ViT-B-32:openai; 'toy' for --source toy].")
@click.option("--iters-prompt", type=int, default=_D.iters_prompt, help="Stage-1 iterations (prompt learners). "
              "Defaults marked here are the paper's; a registry source may change some (`ipl models info NAME`, "
              "run_defaults: toy uses fewer iterations).")
@click.option("--batch-prompt", type=int, default=_D.batch_prompt, help="Stage-1 batch size.")
@click.option("--lr-prompt", type=float, default=_D.lr_prompt, help="Stage-1 Adam learning rate.")
@click.option("--n-ctx", type=int, default=_D.n_ctx, help="Learned context vectors per prompt.")
@click.option("--lambda-l", type=float, default=_D.lambda_l, help="Weight of the domain regulariser L_d.")
@click.option("--lambda-src", type=float, default=_D.lambda_src, help="Weight of L_d on the source text.")
@click.option("--iters", type=int, default=_D.iters, help="Stage-2 iterations (generator).")
@click.option("--batch", type=int, default=_D.batch, help="Stage-2 batch size.")
@click.option("--lr", type=float, default=_D.lr, help="Stage-2 Adam learning rate (0.002*0.8; diffusion "
              "sources take their own, e.g. 4e-6 with Adam betas 0.9/0.999: `ipl models info NAME`, run_defaults).")
@click.option("--ema-decay", type=float, default=_D.ema_decay, help="EMA decay of the saved generator.")
@click.option("--layers", default=None, help="Adaptive layer freezing: unfreeze K layers per step; 'all' turns "
              "freezing off [default: the registry's, floor(2/3 * num_ws)].")
@click.option("--layer-batch", type=int, default=_D.layer_batch, help="Latents used to pick layers each step.")
@click.option("--layer-every", type=int, default=_D.layer_every,
              help="Re-pick the unfrozen layers every N steps (1 = every step, as NADA; larger is cheaper).")
@click.option("--layer-map", type=click.Choice(list(LAYER_MAPS)), default=_D.layer_map,
              help="What unfreezing W+ row i trains: reference = the NADA/IPL trainers' map (row 0 -> conv1, row 1 "
              "-> to_rgb1, row i >= 2 -> convs[i-2], rosinality names); semantic = the convolutions row i modulates "
              "(ToRGB never trained).")
@click.option("--probe", type=click.Choice(list(PROBES)), default=_D.probe,
              help="How the layers to train are picked: reference = NADA's W+ probe (a forward and backward of "
              "--layer-batch latents through G_t and CLIP); grad = rank the W+ rows by the gradient stage 2's own "
              "backward computes (no extra pass; docs/adapt.md).")
@click.option("--compile/--no-compile", "compile_", default=_D.compile,
              help="torch.compile the stage-2 renders and the CLIP image encoders (needs a C++ compiler on CPU; "
              "falls back to eager with one warning where compiling fails).")
@click.option("--augment", "augment_views", type=int, default=_D.augment_views,
              help="Paired random crops/flips per image fed to CLIP in stage 2 (0 = none, as NADA/IPL).")
@click.option("--length-weight", type=float, default=_D.length_weight,
              help="Weight of the length term: the image change's CLIP projection on the text change must "
              "reach --length-ratio x the text change's length (0 = off, as NADA/IPL).")
@click.option("--length-ratio", type=float, default=None,
              help="Image/text change-length ratio of the CLIP model for the length term [default: the "
              "registry's; toy: measured on the toy CLIP].")
@click.option("--freeze-noise/--train-noise", default=_D.freeze_noise,
              help="Keep StyleGAN2's per-layer noise strengths as in the source, or train them as NADA/IPL do (a "
              "weak CLIP can reward speckle drawn through them) [default: train; toy: freeze].")
@click.option("--noise", type=click.Choice(["random", "fixed"]), default=_D.noise,
              help="Per-pixel noise of the training renders: random = fresh for every render (stage 1, G_s, G_t, "
              "the layer probe) from the run's seeded generator, as NADA/IPL; fixed = the one stored noise set. "
              "Sample grids and `ipl sample` always use the stored set [toy: fixed].")
@click.option("--truncation", type=float, default=None, help="Truncation psi for training latents "
              "[default: the registry's, 1.0].")
@click.option("--diffusion", "diffusion_opts", multiple=True, metavar="KEY=VALUE",
              help="Diffusion sources only, repeatable: t0, inversion_steps, generation_steps, sample_steps, "
              "n_sources, lean, checkpointing, l1_weight, train_blocks (see generators/diffusion/adapter.py).")
@click.option("--source-images", type=click.Path(file_okay=False), default=None,
              help="Diffusion sources only: a folder of real images to invert and adapt instead of samples.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder [default: runs/<source>-<target-slug>]; with several targets, the parent folder "
              "of runs <source>-<target-slug>.")
@click.option("--device", default=_D.device, help="auto | cuda | cuda:N | cpu.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=_D.precision,
              help="Autocast precision of the forward passes (weights stay fp32).")
@click.option("--seed", type=int, default=_D.seed, help="Seed of every random draw (same seed, same result).")
@click.option("--sample-every", type=int, default=_D.sample_every,
              help="Write a sample grid every N stage-2 iterations (0: only at start and end).")
@click.option("--sample-n", type=int, default=_D.sample_n, help="Images per row of the sample grids.")
@click.option("--checkpoint-every", type=int, default=_D.checkpoint_every,
              help="Write the resumable checkpoint every N stage-2 iterations.")
@click.option("--data-parallel", is_flag=True,
              help="Under torchrun: each run uses every process, its --batch and --batch-prompt split evenly over "
              "them (without it, several --target runs are spread over the processes; docs/distributed.md).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--force", is_flag=True, help="Replace a run already in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def command(source, source_text, targets, target_file, method, clips, iters_prompt, batch_prompt, lr_prompt,
            n_ctx, lambda_l, lambda_src, iters, batch, lr, ema_decay, layers, layer_batch, layer_every, layer_map,
            probe, compile_, augment_views,
            length_weight, length_ratio, freeze_noise, noise, truncation, diffusion_opts, source_images, out,
            device, precision, seed, sample_every, sample_n, checkpoint_every, data_parallel, resume, force, quiet):
    """Adapt SOURCE to each --target with IPL (or NADA); writes a run folder per target."""
    from ipl import generators
    from ipl.registry import get_source, is_registry_name, run_defaults_for
    from ipl.run import Resources, prepare, run_adapt

    if resume and force:
        raise IPLError("--resume and --force contradict each other; pass one of them")
    target_list = _read_targets(targets, target_file)
    ctx = click.get_current_context()
    given = {_FIELD_OF.get(name, name) for name in ctx.params
             if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)}
    given &= {f.name for f in dataclasses.fields(AdaptConfig)}
    if is_registry_name(source):
        entry = get_source(source)
        default_text, default_clips = entry.source_text, list(entry.clip)
    elif Path(source).expanduser().exists() or any(f.claims_name(source) for f in generators.FAMILIES):
        default_text, default_clips = "photo", list(_D.clip)  # a file, a folder, a hub id a family finds
    else:
        get_source(source)  # unknown name: lists the known ones
        raise AssertionError("unreachable")
    # Defaults in layers (ipl.core.config.layered_defaults): a flag given > the source's (registry run_defaults, or
    # those of the family reading a path; its source text and CLIP) > the method's recipe > AdaptConfig.
    label = "source:" + (Path(source).expanduser().name if Path(source).expanduser().exists() else source)
    source_defaults = {"source_text": default_text, "clip": default_clips, **run_defaults_for(source)}
    defaults, filled_by = layered_defaults(method, source_defaults, given, label)
    if layers is not None and str(layers).strip().lower() != "all":
        try:
            layers = int(layers)
        except ValueError:
            raise IPLError(f"--layers must be a positive integer or 'all', got {layers!r}") from None

    diffusion = {}
    for item in diffusion_opts:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise IPLError(f"--diffusion {item!r}: expected KEY=VALUE, e.g. --diffusion t0=400")
        diffusion[key.strip()] = value.strip()
    if source_images is not None:
        diffusion["source_images"] = str(Path(source_images).resolve())

    configs = []
    for target in target_list:
        if out is None:
            run_out = None
        elif len(target_list) == 1:
            run_out = out
        else:
            stem = Path(source).stem if Path(source).suffix else source
            run_out = str(Path(out) / f"{slugify(stem)}-{slugify(target)}")
        cfg = AdaptConfig(source=source, target_text=target,
                          source_text=source_text if source_text is not None else default_text,
                          method=method, clip=list(clips) if clips else default_clips,
                          iters_prompt=iters_prompt, batch_prompt=batch_prompt, lr_prompt=lr_prompt, n_ctx=n_ctx,
                          lambda_l=lambda_l, lambda_src=lambda_src, iters=iters, batch=batch, lr=lr,
                          ema_decay=ema_decay, layers=layers, layer_batch=layer_batch, layer_every=layer_every,
                          layer_map=layer_map, probe=probe, compile=compile_,
                          augment_views=augment_views, length_weight=length_weight,
                          length_ratio=length_ratio, freeze_noise=freeze_noise, noise=noise, truncation=truncation,
                          diffusion=diffusion,
                          out=run_out, device=device, precision=precision, seed=seed, sample_every=sample_every,
                          sample_n=sample_n, checkpoint_every=checkpoint_every, data_parallel=data_parallel)
        cfg = dataclasses.replace(cfg, **defaults, filled_by=dict(filled_by))
        configs.append(cfg.validate())

    from ipl import distributed as dist

    # Under torchrun (docs/distributed.md): join the job, check every process was given the same runs, take this
    # process's GPU. --data-parallel: each run on all processes; otherwise the runs are spread over them.
    launch = dist.init_from_env(device)
    dist.check_same({"runs": [c.to_dict() for c in configs], "resume": resume, "force": force}, "adapt settings")
    if launch is not None and data_parallel:
        for cfg in configs:
            dist.split_batch(cfg.batch)
            if cfg.method == "ipl":
                dist.split_batch(cfg.batch_prompt, "--batch-prompt")
    configs = [dataclasses.replace(c, device=dist.local_device(c.device)) for c in configs]
    spread = launch is not None and not data_parallel

    # Check every run before starting any (nothing is written when one of them is bad).
    with dist.main_first():  # rank 0 first: it may download the source into a cache the others share
        prepared = [prepare(cfg, resume=resume, force=force, progress=not quiet) for cfg in configs]
    dist.check_same([p["source_sha256"] for p in prepared], "source checkpoints (SHA-256)")  # same file on every node
    outs = [p["out"].resolve() for p in prepared]
    if len(set(outs)) != len(outs):
        raise IPLError("two targets map to the same run folder; give them distinct texts")
    resources = Resources()
    for i, (cfg, facts) in enumerate(zip(configs, prepared)):
        if spread and not dist.shard_of(i):
            continue  # another process's run
        follower = launch is not None and data_parallel and not dist.is_main()  # rank 0 speaks for the run
        if not follower:
            where = f" (rank {launch.rank} of {launch.world_size})" if launch is not None else ""
            click.echo(f"adapting {cfg.source} -> {cfg.target_text!r} ({cfg.method}) into {facts['out']}{where}",
                       err=True)
        try:
            run_dir = run_adapt(cfg, resume=resume, force=force, progress=not quiet, resources=resources,
                                prepared=facts)
        except KeyboardInterrupt:  # cli.main exits 130; say where the run stands first (rank 0 owns the run)
            if not follower:
                click.echo(f"\nInterrupted: {_stopped_message(facts['out'])}", err=True)
            raise
        except RuntimeError as e:  # under torchrun: a collective failed because another process stopped
            if launch is None or not dist.lost_peer(e):
                raise
            where = (f"({str(e).splitlines()[0][:200]})" if follower
                     else _stopped_message(facts["out"]))  # rank 0's says what config.json recorded
            raise IPLError(f"rank {launch.rank}: another process of this torchrun job stopped during the run; "
                           f"torchrun's report names it (Root Cause). {where}") from None
        if launch is None:
            click.echo(str(run_dir))
    if launch is not None:  # the summary: rank 0, once every process has finished its runs
        dist.barrier()
        if dist.is_main():
            for facts in prepared:
                click.echo(str(facts["out"]))


def _stopped_message(out: Path) -> str:
    """What config.json of an interrupted run says (status, where it stopped, how to continue)."""
    import json

    try:
        record = json.loads((Path(out) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"nothing of {out} was started yet"
    error = str(record.get("error") or "").rstrip(".")
    how = "" if "`ipl adapt --resume" in error else f"; `ipl adapt --resume --out {out}` with the same settings continues"
    return f"{out} has status {record.get('status')!r}: {error}{how}."
