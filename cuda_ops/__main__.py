"""`python -m cuda_ops [--build] [--rebuild] [--arch 9.0]`: print the CUDA ops build status as JSON."""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cuda_ops", description=__doc__)
    parser.add_argument("--build", action="store_true", help="compile (or load from the cache) now")
    parser.add_argument("--rebuild", action="store_true", help="ignore cached builds and recorded failures")
    parser.add_argument("--arch", default=None, help="GPU architecture to build for without a GPU, e.g. 9.0")
    args = parser.parse_args(argv)
    from ipl.cuda_ops import _build

    if args.arch or args.rebuild:
        res = _build.build(with_cuda=True, arch=args.arch, rebuild=args.rebuild)
        status = res.as_dict()
    else:
        status = _build.build_status(build_now=args.build)
    print(json.dumps(status, indent=2))
    return 0 if status.get("available") or not (args.build or args.arch or args.rebuild) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
