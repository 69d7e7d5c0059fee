"""README.md and docs/*.md: every relative link and image points at a file that exists, every
`#anchor` at a heading of its file, and the README stays a short front door."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 160
SETUP_COMMANDS = ("bash scripts/demo.sh", "bash scripts/test.sh")

FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target), optionally with a "title"; text may hold one level of [].
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose_lines(text: str) -> list[str]:
    """The file's lines with fenced code blocks blanked out and inline code removed."""
    lines, fence = [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * 3
            lines.append("")
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
            lines.append("")
        else:
            lines.append(INLINE_CODE.sub("", line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link syntax reduced to its text, lowercase, punctuation
    other than hyphens, underscores and spaces dropped, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor the file defines: its headings' slugs (repeats numbered as GitHub does)
    and explicit <a name/id> anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    text = path.read_text(encoding="utf-8")
    fence = None
    for line in text.splitlines():
        m = FENCE.match(line)
        if m:
            if fence is None:
                fence = m.group(1)[0] * 3
            elif line.strip().startswith(fence):
                fence = None
            continue
        if fence is not None:
            continue
        found.update(HTML_ANCHOR.findall(line))
        h = HEADING.match(line)
        if h:
            base = slug(h.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every inline, image and reference-style link in the file."""
    out = []
    for number, line in enumerate(_prose_lines(path.read_text(encoding="utf-8")), 1):
        out.extend((number, target) for target in LINK.findall(line))
        ref = REFERENCE.match(line)
        if ref:
            out.append((number, ref.group(1)))
    return out


def broken_links(path: Path) -> list[str]:
    problems = []
    for number, target in links(path):
        if SCHEME.match(target):  # http(s)://, mailto: and other absolute URLs
            continue
        file_part, _, anchor = target.partition("#")
        file_part = unquote(file_part)
        if not file_part:
            dest = path
        elif file_part.startswith("/"):
            dest = ROOT / file_part.lstrip("/")
        else:
            dest = (path.parent / file_part).resolve()
        where = f"{path.relative_to(ROOT)}:{number}: ({target})"
        shown = dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest
        if not dest.exists():
            problems.append(f"{where} -> no such file {shown}")
        elif anchor and dest.suffix == ".md" and unquote(anchor) not in anchors(dest):
            problems.append(f"{where} -> no heading with anchor #{anchor} in {shown}")
    return problems


def doc_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def test_slug_follows_githubs_rule() -> None:
    assert slug("0. Federating across organisations") == "0-federating-across-organisations"
    assert slug("Where SST-2's loss goes: the answer format, not the sentiment") == (
        "where-sst-2s-loss-goes-the-answer-format-not-the-sentiment"
    )
    assert slug("Adding a `codec` (one module)") == "adding-a-codec-one-module"


def test_links_parser_skips_code() -> None:
    text = 'see [a](a.md) and `[b](b.md)`\n```\n[c](c.md)\n```\n![img](x.png "t")\n'
    assert [t for line in _prose_lines(text) for t in LINK.findall(line)] == ["a.md", "x.png"]


def test_every_relative_link_and_anchor_resolves() -> None:
    problems = [p for path in doc_files() for p in broken_links(path)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_is_a_short_front_door() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    )
    head = "\n".join(lines[:40])
    missing = [c for c in SETUP_COMMANDS if c not in head]
    assert not missing, f"not in README.md's first 40 lines: {missing}"
