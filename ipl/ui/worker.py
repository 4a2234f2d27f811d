"""`python -m ipl.ui.worker resume RUN`: continue a stopped run with its saved settings, through the same Python
API `ipl adapt --resume` calls (ipl.run.prepare + run_adapt). SIGTERM stops it like Ctrl-C."""
from __future__ import annotations

import signal
import sys
from pathlib import Path


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def resume(run: Path, progress: bool = True) -> Path:
    """Resume the run in folder `run` with the settings its config.json holds."""
    from ipl.core.config import AdaptConfig
    from ipl.run import prepare, read_run_config, run_adapt

    config = read_run_config(run, need=("settings",))
    settings = dict(config["settings"], out=str(run))
    cfg = AdaptConfig.from_dict(settings).validate()
    facts = prepare(cfg, resume=True, progress=progress)
    return run_adapt(cfg, resume=True, progress=progress, prepared=facts)


def main(argv: list[str]) -> int:
    """Entry point; user errors print `Error: ...` and exit 2, as the CLI does."""
    from ipl.core.errors import IPLError

    signal.signal(signal.SIGTERM, _terminate)
    if len(argv) != 2 or argv[0] != "resume":
        print("usage: python -m ipl.ui.worker resume RUN_FOLDER", file=sys.stderr)
        return 2
    run = Path(argv[1])
    sys.argv = ["ipl-ui-resume", str(run)]   # what config.json records as the command
    try:
        print(str(resume(run)))
    except IPLError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
