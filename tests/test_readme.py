"""The README's examples run as written, and its links stay inside the repository.

Every ```python block of README.md (and of docs/*.md) runs on its own in a fresh
interpreter (cwd = the repo root, BPTORCH_OFFLINE=1, OMP_NUM_THREADS=1), so a block that
leans on a name defined in another block, or on an API that has since changed, fails
here. Material that is not meant to run is fenced as ```text or ```bash, and every fence
of README.md must name its language, so no Python can hide in an untagged one.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^(\s*)```(.*)$")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def fenced_blocks(text: str) -> list[tuple[str, str, str, int]]:
    """(language, heading, code, first line number) for each fenced block, in order."""
    blocks, heading, lang, start, body = [], "top", None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if lang is None:
            if fence:
                lang, start, body = fence.group(2).strip(), number, []
            elif match := HEADING.match(line):
                heading = match.group(2)
        elif fence and not fence.group(2).strip():
            blocks.append((lang, heading, "\n".join(body) + "\n", start))
            lang = None
        else:
            body.append(line)
    assert lang is None, f"README.md: the fence opened at line {start} is never closed"
    return blocks


def headings(text: str) -> list[str]:
    """The headings outside fenced blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (match := HEADING.match(line)):
            out.append(match.group(2))
    return out


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


TEXT = README.read_text(encoding="utf-8")
BLOCKS = fenced_blocks(TEXT)
DOCS = sorted((ROOT / "docs").glob("*.md"))


def python_blocks() -> list[tuple[str, str, str, int]]:
    """(file, heading, code, line) of every ```python block: README.md's, then docs/*.md's."""
    out = []
    for path in [README, *DOCS]:
        blocks = BLOCKS if path == README else fenced_blocks(path.read_text(encoding="utf-8"))
        name = path.relative_to(ROOT).as_posix()
        out += [(name, heading, code, line) for lang, heading, code, line in blocks
                if lang == "python"]
    return out


PYTHON = python_blocks()


def _ids() -> list[str]:
    """The block's heading (prefixed by its file outside README.md); a second block under
    the same heading gets " #2"."""
    ids, seen = [], {}
    for name, heading, _, _ in PYTHON:
        base = heading if name == "README.md" else f"{name}: {heading}"
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base} #{seen[base]}")
    return ids


def test_readme_has_python_blocks_and_every_fence_names_its_language():
    in_readme = [block for block in PYTHON if block[0] == "README.md"]
    assert len(in_readme) >= 3, f"found only {len(in_readme)} ```python blocks in README.md"
    untagged = [line for lang, _, _, line in BLOCKS if not lang]
    assert not untagged, f"README.md fences at lines {untagged} name no language"


@pytest.mark.parametrize(("name", "heading", "code", "line"), PYTHON, ids=_ids())
def test_readme_python_block_runs(name, heading, code, line):
    env = dict(os.environ, BPTORCH_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,  # a hang guard, not a timing: each block takes seconds
    )
    assert proc.returncode == 0, (
        f"{name}: the block under '{heading}' (line {line}) exited {proc.returncode}\n"
        f"--- code ---\n{code}--- stderr ---\n{proc.stderr}"
    )


def test_readme_links_point_inside_the_repo():
    anchors = {github_anchor(h) for h in headings(TEXT)}
    outside, missing, dangling = [], [], []
    for target in LINK.findall(TEXT):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        if not path:
            if anchor not in anchors:
                dangling.append(target)
            continue
        resolved = (ROOT / path).resolve()
        if resolved != ROOT and ROOT not in resolved.parents:
            outside.append(target)
        elif not resolved.exists():
            missing.append(target)
        elif anchor and resolved.suffix == ".md":
            other = {github_anchor(h) for h in headings(resolved.read_text(encoding="utf-8"))}
            if anchor not in other:
                dangling.append(target)
    assert not outside, f"README.md links outside the repository: {outside}"
    assert not missing, f"README.md links to files that do not exist: {missing}"
    assert not dangling, f"README.md links to headings that do not exist: {dangling}"
    assert "shared/" not in TEXT, "README.md names the project's shared folder, outside the repo"
