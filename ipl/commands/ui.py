"""`ipl ui`: the local web page (Gradio) for adapting, browsing, sampling and editing runs. Needs `ipl[ui]`."""
from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Optional

import click

from ipl.core.errors import IPLError

INSTALL = "pip install 'ipl[ui]'"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command(context_settings={"show_default": True})
@click.option("--runs", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              help="The runs folder: the page lists, samples and writes run folders only inside it.")
@click.option("--source", default="toy", help="Source preselected on the Adapt tab: a registry name (toy works "
              "offline on a CPU) or a checkpoint file (the page may then read that one file too).")
@click.option("--host", default="127.0.0.1", help="Address to listen on. Anything but a loopback address lets "
              "other machines use the page (and the machine's disk through it): a warning is printed.")
@click.option("--port", type=int, default=7860, help="Port (0: a free one).")
@click.option("--share", is_flag=True, help="Also open a public Gradio share link (off unless given).")
@click.option("--device", default="auto", help="Device of the adaptations: auto | cpu | cuda | cuda:N.")
@click.option("--sample-device", default="cpu", help="Device for sampling and editing on the Runs / Edit tabs.")
@click.option("--max-upload-mb", type=float, default=20.0, help="Largest file a visitor may upload (Edit tab).")
def command(runs: Path, source: str, host: str, port: int, share: bool, device: str, sample_device: str,
            max_upload_mb: float) -> None:
    """Serve the ipl web page: adapt (with live progress, stop and resume), browse and sample runs, edit photos."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise IPLError(f"`ipl ui` needs gradio, which this installation lacks: {INSTALL}") from None
    from ipl.ui.app import UiConfig, launch

    if max_upload_mb <= 0:
        raise IPLError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    if not 0 <= port <= 65535:
        raise IPLError(f"--port must be in 0..65535, got {port}")
    extra = []
    if Path(source).expanduser().is_file():
        extra.append(Path(source).expanduser())   # named by the operator: the page may read this one file
    if not _is_loopback(host):
        click.echo(f"WARNING: --host {host} serves the page to other machines on the network. Anyone who can "
                   f"reach it can start adaptations and read the runs in {runs}. There is no login; use "
                   "127.0.0.1 (the default) unless this network is trusted.", err=True)
    if share:
        click.echo("WARNING: --share opens a public Gradio link to this page: anyone with the link can use it.",
                   err=True)
    launch(UiConfig(runs=runs, source=source, host=host, port=_free_port(host) if port == 0 else port,
                    share=share, device=device, sample_device=sample_device, max_upload_mb=max_upload_mb,
                    extra_files=extra))


def _free_port(host: str) -> Optional[int]:
    import socket

    with socket.socket() as s:
        s.bind((host if host != "localhost" else "127.0.0.1", 0))
        return int(s.getsockname()[1])
