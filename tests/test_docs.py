"""The README stays a short front page, and every relative link in README.md and docs/*.md resolves.

No imports from the package: these tests only read markdown files.
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKDOWN_FILES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 260

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
# [text](target) and ![alt](target), with an optional "title"; text may hold one level of nested brackets.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
EXTERNAL = ("http://", "https://", "mailto:")


def _strip_code(text: str) -> str:
    """Markdown without fenced blocks and inline code spans (links are not links there)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _links(path: Path) -> list[str]:
    return LINK.findall(_strip_code(path.read_text(encoding="utf-8")))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_markdown_files_found():
    assert README.is_file()
    assert len(MARKDOWN_FILES) > 1, "docs/*.md missing"


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES}): move detail to docs/"


def test_readme_setup_names_the_two_commands():
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^##\s+Set-?up\b(.*?)(?=^##\s)", text, re.M | re.S | re.I)
    assert m, "README.md has no '## Set-up' section"
    for command in ("make demo", "make test"):
        assert command in m.group(1), f"README set-up does not mention `{command}`"


def test_link_regex_on_known_cases():
    text = ("[a](docs/x.md) ![img](../assets/y.png \"title\") [b](https://e.org) [c](#top) "
            "`[not](a-link.md)` [d [nested]](z.md#part)\n```\n[also not](b.md)\n```\n")
    found = LINK.findall(_strip_code(text))
    assert found == ["docs/x.md", "../assets/y.png", "https://e.org", "#top", "z.md#part"]
    assert _slug("The length term (`--length-weight W --length-ratio R`)") == \
        "the-length-term---length-weight-w---length-ratio-r"


@pytest.mark.parametrize("md", MARKDOWN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(md: Path):
    broken = []
    for target in _links(md):
        if not target or target.startswith(EXTERNAL):
            continue
        if target.startswith("#"):  # an anchor in the same file
            if target[1:] not in _anchors(md):
                broken.append(f"{target} (no heading with that anchor)")
            continue
        file_part, _, anchor = target.partition("#")
        dest = (md.parent / unquote(file_part)).resolve()
        try:
            dest.relative_to(ROOT)
        except ValueError:
            broken.append(f"{target} (outside the repository)")
            continue
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading with anchor #{anchor} in {dest.relative_to(ROOT)})")
    assert not broken, f"{md.relative_to(ROOT)}: broken links: " + "; ".join(broken)


@pytest.mark.parametrize("md", MARKDOWN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_references_outside_the_repository(md: Path):
    text = md.read_text(encoding="utf-8")
    for needle in ("../shared", "DESIGN.md", "DESIGN section"):
        assert needle not in text, f"{md.relative_to(ROOT)} refers to {needle!r}, which is not in the repository"
