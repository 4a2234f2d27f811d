"""The seed-list syntax shared by `ipl sample --seeds` and the web page: '0-15', '1,5,9', '0-3,10'."""
from __future__ import annotations

import re
from typing import Optional

from ipl.core.errors import IPLError


def parse_seeds(text: str, what: str = "--seeds", limit: Optional[int] = None) -> list[int]:
    """'0-15' / '1,5,9' / '0-3,10' -> list of ints (ranges inclusive); `what` names the field in errors,
    `limit` caps how many seeds one request may ask for."""
    seeds: list[int] = []
    for part in str(text or "").split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise IPLError(f"{what}: range '{part}' runs backwards; write it as {hi}-{lo}")
            if limit is not None and hi - lo >= limit:  # refuse before building a huge list
                raise IPLError(f"{what}: at most {limit} images at once")
            seeds.extend(range(lo, hi + 1))
        elif re.fullmatch(r"\d+", part):
            seeds.append(int(part))
        else:
            raise IPLError(f"{what}: cannot read '{part}'; use e.g. 0-15 or 1,5,9 or 0-3,10")
    if not seeds:
        raise IPLError(f"{what} is empty; use e.g. 0-15")
    if limit is not None and len(seeds) > limit:
        raise IPLError(f"{what}: at most {limit} images at once")
    return seeds
