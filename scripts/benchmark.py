"""Benchmarks, printed as JSON: `python scripts/benchmark.py {generator,ops,stage1,adapt,diffusion,eval,probe,scale} [options]`.

Each suite lives in scripts/bench_<suite>.py with a `main(argv) -> dict` and measures its
candidates side by side in one run, so the ratios it prints are comparable.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

SUITES = ("generator", "ops", "stage1", "adapt", "diffusion", "eval", "probe", "scale")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUITES:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    module = importlib.import_module(f"bench_{argv[0]}")
    result = module.main(argv[1:])
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
