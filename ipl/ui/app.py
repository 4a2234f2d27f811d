"""The Gradio page of `ipl ui`: Adapt, Runs and (where `ipl.edit` exists) Edit tabs. The only module importing
gradio; every callback is a thin wrapper over ipl.ui.actions."""
import atexit
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ipl.core.errors import IPLError
from ipl.ui import actions
from ipl.ui.actions import AdaptForm, Sampler
from ipl.ui.jobs import JobManager
from ipl.ui.paths import PathRefused, Roots

POLL_SECONDS = 1.0
NO_SHARE = ["download", "fullscreen"]   # no "share": it would offer to upload images to Hugging Face


@dataclass
class UiConfig:
    """How `ipl ui` was started."""

    runs: Path = Path("runs")
    cache: Optional[Path] = None           # default: $IPL_HOME (ipl.registry.ipl_home())
    source: str = "toy"                    # the source preselected on the Adapt tab
    device: str = "auto"                   # for adaptations
    sample_device: str = "cpu"             # for sampling and editing (`ipl sample`'s default)
    host: str = "127.0.0.1"
    port: Optional[int] = None
    share: bool = False
    max_upload_mb: float = 20.0
    extra_files: list[Path] = field(default_factory=list)


@dataclass
class Page:
    """A built page and what its callbacks share."""

    blocks: Any
    roots: Roots
    manager: JobManager
    sampler: Sampler
    has_edit: bool


def _refused(e: Exception) -> str:
    return f"**{'Refused' if isinstance(e, PathRefused) else 'Error'}:** {e}"


def prepare_environment(roots: Roots) -> None:
    """Before gradio is imported: no telemetry, and its uploads and cache inside this page's scratch folder."""
    roots.clean_scratch()
    roots.scratch.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(roots.scratch)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def build(config: UiConfig) -> Page:
    """The page (gradio.Blocks) for `config`, not yet launched."""
    from ipl.registry import ipl_home

    roots = Roots.make(config.runs, config.cache if config.cache is not None else ipl_home(),
                       extra_files=config.extra_files)
    prepare_environment(roots)
    import gradio as gr

    manager = JobManager(roots.scratch / "jobs")
    sampler = Sampler(roots, device=config.sample_device)
    has_edit = actions.edit_function() is not None
    upload_dirs = [roots.scratch]

    def run_lists():
        rows = actions.list_runs(roots)
        shown = [r for r in rows if r.grid is not None]
        items = [(actions.publish(roots, r.grid), r.caption()) for r in shown]
        names = [r.name for r in rows]
        table = "\n".join(["| run | target | method | status | eval |", "|---|---|---|---|---|"] + [
            f"| {r.name} | {r.target} | {r.method} | {r.status} | "
            + (", ".join(f"{k} {v:.3g}" for k, v in r.evals.items()) or "-") + " |" for r in rows]) if rows else \
            "No runs yet: start one on the **Adapt** tab."
        return items, [r.name for r in shown], names, table

    def refresh(picked):
        items, shown, names, table = run_lists()
        picked = [p for p in (picked or []) if p in names]
        out = [gr.update(value=items), shown, gr.update(choices=names, value=picked), table,
               gr.update(choices=actions.resumable_runs(roots), value=None)]
        return out + ([gr.update(choices=names)] if has_edit else [])

    # ------------------------------------------------------------------------------------ callbacks: Adapt
    def follow(job):
        while True:
            text, grid = actions.job_status(roots, manager, job)
            yield text, grid, job.id
            if job.finished:
                return
            time.sleep(POLL_SECONDS)

    def on_start(source, targets, method, iters_prompt, iters, layers, clip, seed, sample_every, run_name,
                 overwrite, device, job_id):
        form = AdaptForm(source=source, targets=targets or "", method=method, iters_prompt=iters_prompt,
                         iters=iters, layers=layers or "", clip=clip or "", seed=seed, sample_every=sample_every,
                         run_name=run_name or "", overwrite=bool(overwrite), device=device or "auto")
        try:
            argv, runs = actions.adapt_command(roots, form)
            job = actions.submit(manager, argv, runs)
        except IPLError as e:
            yield _refused(e), None, job_id
            return
        yield from follow(job)

    def on_resume(name, job_id):
        try:
            if not name:
                raise IPLError("choose a stopped run to resume")
            argv, runs = actions.resume_command(roots, name)
            job = actions.submit(manager, argv, runs)
        except IPLError as e:
            yield _refused(e), None, job_id
            return
        yield from follow(job)

    def on_stop(job_id):
        job = manager.get(job_id)
        if job is None or job.finished:
            job = manager.current()
        if job is None:
            return "Nothing is running."
        manager.stop(job)
        return (f"Stopping `{', '.join(r.name for r in job.runs)}`: the run records `interrupted` and keeps its "
                "last checkpoint; **Resume** continues it.")

    # ------------------------------------------------------------------------------------ callbacks: Runs
    def on_gallery_select(shown, picked, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else (evt.index or [0])[0]
        if not shown or index is None or not 0 <= index < len(shown):
            return gr.update(), ""
        name = shown[index]
        try:
            details = actions.run_details(roots, name)
        except IPLError as e:
            return gr.update(), _refused(e)
        picked = [p for p in (picked or []) if p != name] + [name]
        return gr.update(value=picked), details

    def on_sample(picked, seeds, truncation, source_too):
        try:
            items = sampler.sample(picked or [], seeds, truncation, bool(source_too))
        except IPLError as e:
            return gr.update(value=None), _refused(e)
        return gr.update(value=items), (f"{len(items)} images: runs {', '.join(picked)}, seeds {seeds}, "
                                        f"truncation {float(truncation):g}")

    def on_download(picked, fmt):
        try:
            if not picked:
                raise IPLError("choose a run")
            path = actions.export_generator(roots, picked[-1], fmt)
        except IPLError as e:
            return None, _refused(e)
        return str(path), f"`{path.name}` ({path.stat().st_size / 2**20:.1f} MiB)"

    def on_edit(picked, image, steps, loss):
        try:
            items = actions.edit_photo(roots, picked or [], image, steps, device=config.sample_device,
                                       upload_dirs=upload_dirs, loss=loss or None)
        except IPLError as e:
            return gr.update(value=None), _refused(e)
        return gr.update(value=items), f"{len(items)} images"

    # ------------------------------------------------------------------------------------ layout
    items, shown, names, table = run_lists()
    theme = None
    try:   # local fonts: the page must not reach out to a font server (it runs offline)
        theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                  font_mono=["ui-monospace", "monospace"])
    except Exception:  # noqa: BLE001 - a gradio without themes keeps its default
        theme = None
    with gr.Blocks(title="ipl", analytics_enabled=False) as blocks:
        gr.Markdown("## ipl: adapt a generator to a text, with no images of the target\n"
                    f"Runs folder `{roots.runs}` · model cache `{roots.cache}`")
        job_state = gr.State(None)
        shown_state = gr.State(shown)
        with gr.Tabs():
            with gr.Tab("Adapt", id="adapt"):
                with gr.Row():
                    with gr.Column():
                        choices = actions.source_choices(roots)
                        values = [v for _, v in choices]
                        default = config.source if config.source in values else (
                            str(Path(config.source).expanduser().resolve())
                            if Path(config.source).expanduser().exists() else "toy")
                        source = gr.Dropdown(choices=choices, value=default, allow_custom_value=True,
                                             label="Source generator (registry name, or a checkpoint inside the "
                                             "runs folder or model cache)", elem_id="source")
                        targets = gr.Textbox(lines=2, label="Target text(s), one per line", elem_id="targets",
                                             placeholder="on a dark background")
                        method = gr.Radio(["ipl", "nada"], value="ipl", label="Method", elem_id="method")
                        with gr.Row():
                            iters_prompt = gr.Textbox(label="Stage-1 iterations", placeholder="the source's default",
                                                      elem_id="iters_prompt")
                            iters = gr.Textbox(label="Stage-2 iterations", placeholder="the source's default",
                                               elem_id="iters")
                        with gr.Row():
                            layers = gr.Textbox(label="Layers unfrozen per step (K or all)",
                                                placeholder="the source's default", elem_id="layers")
                            seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="seed")
                        clip = gr.Textbox(label="CLIP models, comma-separated", placeholder="the source's default",
                                          elem_id="clip")
                        with gr.Accordion("More", open=False, elem_id="more"):
                            sample_every = gr.Textbox(label="Grid every N stage-2 iterations",
                                                      placeholder="the source's default", elem_id="sample_every")
                            run_name = gr.Textbox(label="Run name (one target; empty: <source>-<target>)",
                                                  elem_id="run_name")
                            overwrite = gr.Checkbox(False, label="Replace a run of the same name",
                                                    elem_id="overwrite")
                            device = gr.Dropdown(["auto", "cpu", "cuda"], value=config.device, label="Device",
                                                 elem_id="device")
                        with gr.Row():
                            start = gr.Button("Start", variant="primary", elem_id="start")
                            stop = gr.Button("Stop", variant="stop", elem_id="stop")
                        with gr.Row():
                            resume_pick = gr.Dropdown(actions.resumable_runs(roots), value=None,
                                                      label="Resume a stopped run", elem_id="resume_pick")
                            resume = gr.Button("Resume", elem_id="resume")
                    with gr.Column():
                        status = gr.Markdown("No adaptation started from this page yet.", elem_id="adapt_status")
                        gr.Markdown("Newest grid: source row over adapted row, the same latents")
                        grid = gr.Image(show_label=False, type="filepath", interactive=False, format="png", buttons=NO_SHARE,
                                        elem_id="adapt_grid")
            with gr.Tab("Runs", id="runs"):
                refresh_btn = gr.Button("Refresh", elem_id="refresh")
                gallery = gr.Gallery(value=items, label="Runs (click one to pick it)", columns=3,
                                     allow_preview=False, format="png", buttons=NO_SHARE, elem_id="runs_gallery")
                table_md = gr.Markdown(table, elem_id="runs_table")
                picked = gr.Dropdown(names, value=[], multiselect=True, label="Runs to sample and compare",
                                     elem_id="runs_pick")
                details = gr.Markdown("", elem_id="run_details")
                with gr.Row():
                    seeds = gr.Textbox("0-3", label="Seeds (e.g. 0-7 or 1,5,9)", elem_id="seeds")
                    truncation = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Truncation",
                                           elem_id="truncation")
                    source_too = gr.Checkbox(False, label="Source row too", elem_id="source_too")
                sample_btn = gr.Button("Sample", variant="primary", elem_id="sample")
                sample_msg = gr.Markdown("", elem_id="sample_msg")
                samples = gr.Gallery(label="Samples: the same seeds for every run", columns=8, format="png", buttons=NO_SHARE,
                                     elem_id="samples")
                with gr.Row():
                    fmt = gr.Radio(["ipl", "rosinality"], value="ipl", label="Download format (last picked run)",
                                   elem_id="format")
                    download_btn = gr.Button("Prepare download", elem_id="prepare_download")
                download = gr.File(label="Generator", interactive=False, elem_id="download")
                download_msg = gr.Markdown("", elem_id="download_msg")
            edit_picked = None
            if has_edit:
                with gr.Tab("Edit", id="edit"):
                    edit_picked = gr.Dropdown(names, value=[], multiselect=True, label="Runs", elem_id="edit_pick")
                    photo = gr.Image(type="filepath", sources=["upload"], label="Photo", elem_id="photo")
                    with gr.Row():
                        steps = gr.Textbox(label="Inversion steps", placeholder="default", elem_id="edit_steps")
                        loss = gr.Radio(["lpips", "mse"], value=None, label="Inversion loss (empty: default; lpips "
                                        "needs VGG weights, mse none)", elem_id="edit_loss")
                    edit_btn = gr.Button("Edit", variant="primary", elem_id="edit")
                    edit_msg = gr.Markdown("", elem_id="edit_msg")
                    edited = gr.Gallery(label="Input, reconstruction, and each run's domain", columns=6,
                                        format="png", buttons=NO_SHARE, elem_id="edited")
                    edit_btn.click(on_edit, [edit_picked, photo, steps, loss], [edited, edit_msg],
                                   concurrency_id="render", concurrency_limit=1)

        refresh_outputs = [gallery, shown_state, picked, table_md, resume_pick] + (
            [edit_picked] if edit_picked is not None else [])
        adapt_inputs = [source, targets, method, iters_prompt, iters, layers, clip, seed, sample_every, run_name,
                        overwrite, device, job_state]
        # One adaptation at a time: start and resume share one queue slot (the job manager queues too).
        start.click(on_start, adapt_inputs, [status, grid, job_state], concurrency_id="adapt",
                    concurrency_limit=1, show_progress="hidden").then(refresh, [picked], refresh_outputs)
        resume.click(on_resume, [resume_pick, job_state], [status, grid, job_state], concurrency_id="adapt",
                     concurrency_limit=1, show_progress="hidden").then(refresh, [picked], refresh_outputs)
        stop.click(on_stop, [job_state], [status], concurrency_limit=None, show_progress="hidden")
        refresh_btn.click(refresh, [picked], refresh_outputs)
        gallery.select(on_gallery_select, [shown_state, picked], [picked, details])
        sample_btn.click(on_sample, [picked, seeds, truncation, source_too], [samples, sample_msg],
                         concurrency_id="render", concurrency_limit=1)
        download_btn.click(on_download, [picked, fmt], [download, download_msg], concurrency_id="render",
                           concurrency_limit=1)
        blocks.load(refresh, [picked], refresh_outputs)
    blocks.queue(default_concurrency_limit=1)
    page = Page(blocks=blocks, roots=roots, manager=manager, sampler=sampler, has_edit=has_edit)
    page.theme = theme  # type: ignore[attr-defined]
    return page


def launch(config: UiConfig, block: bool = True) -> Page:
    """Build and serve the page on config.host:config.port (a public share link only with config.share)."""
    page = build(config)

    def close() -> None:
        import shutil

        page.manager.shutdown()
        shutil.rmtree(page.roots.scratch, ignore_errors=True)
    atexit.register(close)
    try:
        page.blocks.launch(server_name=config.host, server_port=config.port, share=bool(config.share),
                           max_file_size=f"{config.max_upload_mb:g}mb", ssr_mode=False, quiet=True,
                           prevent_thread_lock=True, show_error=True, theme=page.theme, pwa=False,
                           enable_monitoring=False, mcp_server=False)
    except OSError as e:   # the port is taken, the address is not this machine's
        close()
        raise IPLError(f"cannot serve the page on {config.host}:{config.port} ({e}); choose another --port "
                       "(0: a free one) or --host") from None
    print(f"ipl ui: {page.blocks.local_url} (runs folder {page.roots.runs}; Ctrl-C stops)"
          + (f"\npublic share link: {page.blocks.share_url}" if page.blocks.share_url else ""), flush=True)
    if block:
        try:
            page.blocks.block_thread()
        finally:
            close()
    return page
