"""`python -m ipl ARGS` runs the `ipl` command (what `torchrun ... -m ipl adapt ...` starts in every process).

A launcher, not library code: it runs ipl/commands/cli.py as `python -m ipl.commands.cli` would (runpy), so the
package root, which sits below its command line in the layer order (docs/architecture.md), imports nothing above it.
"""
import runpy

if __name__ == "__main__":
    runpy.run_module("ipl.commands.cli", run_name="__main__")
