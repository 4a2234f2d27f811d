"""The `ipl` command line: each subcommand lives in its own module under ipl/commands/."""
from __future__ import annotations

import importlib
import signal
import sys

import click

from ipl.core.errors import IPLError

# name -> module under ipl.commands exposing a click command called `command`.
SUBCOMMANDS = {
    "adapt": "adapt",
    "sample": "sample",
    "eval": "evaluate",
    "models": "models",
    "export": "export",
    "invert": "invert",
    "edit": "edit",
    "ui": "ui",
}


class LazyGroup(click.Group):
    """Import each subcommand only when it is used, so `ipl --help` stays fast."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str):
        if name not in SUBCOMMANDS:
            return None
        module = importlib.import_module(f"ipl.commands.{SUBCOMMANDS[name]}")
        return module.command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ipl")
def cli() -> None:
    """Zero-shot generative domain adaptation with Image-specific Prompt Learning."""


def _terminate(signum: int, frame: object) -> None:
    # `kill PID` (SIGTERM) stops a run the way Ctrl-C does: status "interrupted", the last checkpoint kept.
    raise KeyboardInterrupt


def main() -> None:
    """Console entry point: user errors print one clear message and exit 2."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except IPLError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
