"""`ipl models list|info|download`: the registry of known source generators."""
from __future__ import annotations

import json

import click


@click.group(context_settings={"show_default": True})
def command() -> None:
    """Known source models: list them, show one, download one into the cache ($IPL_HOME)."""


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
def list_models(as_json: bool) -> None:
    """One line per known source: name, resolution, format, source text, layers, cached?"""
    from ipl.registry import REGISTRY, cache_path

    rows = []
    for e in REGISTRY.values():
        cached = cache_path(e).exists()  # exists: diffusers sources are folders
        rows.append({**e.to_dict(), "cached": cached, "path": str(cache_path(e))})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'name':<14}{'res':>6}  {'format':<14}{'source text':<15}{'layers':>6}  {'status':<14}description")
    for r in rows:
        status = "not readable" if not r["readable"] else ("shipped" if r["url"] is None and r["cached"]
                                                           else "cached" if r["cached"] else "-")
        click.echo(f"{r['name']:<14}{r['resolution']:>6}  {r['format']:<14}{r['source_text']:<15}"
                   f"{r['layers']:>6}  {status:<14}{r['description']}")


@command.command("info")
@click.argument("name")
def info(name: str) -> None:
    """Everything the registry knows about NAME, its cache path and recorded SHA-256."""
    from ipl.download import recorded_sha256, source_url
    from ipl.registry import cache_path, get_source

    e = get_source(name)
    path = cache_path(e)
    d = {**e.to_dict(), "download_url": source_url(e), "path": str(path), "cached": path.is_file(),
         "recorded_sha256": recorded_sha256(path) if path.is_file() else None}
    click.echo(json.dumps(d, indent=2))


@command.command("download")
@click.argument("names", nargs=-1, required=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def download(names: tuple[str, ...], quiet: bool) -> None:
    """Download NAMES into $IPL_HOME/models (resumes partial files; records and checks SHA-256)."""
    from ipl.download import ensure_source
    from ipl.registry import get_source

    entries = [get_source(n) for n in names]  # all names checked before any download
    for e in entries:
        path, digest = ensure_source(e, allow_download=True, progress=not quiet)
        click.echo(f"{e.name}: {path} sha256={digest}")
