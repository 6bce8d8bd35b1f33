"""The README's and the docs pages' examples run as written, and their links resolve.

Every ```python block of README.md and of every docs/*.md page runs on its own in a fresh
interpreter (cwd = the repo root, BPTORCH_OFFLINE=1, OMP_NUM_THREADS=1), so a block that
leans on a name defined in another block, or on an API that has since changed, fails
here. Material that is not meant to run (long trainings, commands, error transcripts) is
fenced as ```text or ```bash, and every fence must name its language, so no Python can hide
in an untagged one.

Every relative link and image of every page must point at a file inside the repository,
resolved from the page's own folder; a link with an #anchor must name a heading of its
target page, under GitHub's rules for heading ids.
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
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 300  # issue 20: a README a newcomer reads in ten minutes

FENCE = re.compile(r"^(\s*)```(.*)$")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`[^`\n]*`")
EMPTY_LINK = re.compile(r"\]\(\s*\)")

def name_of(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def fenced_blocks(text: str, name: str = "README.md") -> list[tuple[str, str, str, int]]:
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
    assert lang is None, f"{name}: the fence opened at line {start} is never closed"
    return blocks


def prose(text: str) -> str:
    """The text outside fenced blocks, inline code spans blanked: where links are read."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            out.append(CODE_SPAN.sub("`code`", line))
    return "\n".join(out)


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
    """The id GitHub gives a heading: the rendered text (a link's label, code without its
    backticks, no emphasis stars) in lower case, every character but letters, digits, `_`,
    `-` and spaces dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading id of a page; a repeated heading gets -1, -2, … as on GitHub."""
    out, seen = set(), {}
    for heading in headings(text):
        slug = github_anchor(heading)
        n = seen.get(slug, 0)
        out.add(slug if n == 0 else f"{slug}-{n}")
        seen[slug] = n + 1
    return out


def python_blocks() -> list[tuple[str, str, str, int]]:
    """(file, heading, code, line) of every ```python block: README.md's, then docs/*.md's."""
    out = []
    for path in PAGES:
        name = name_of(path)
        out += [(name, heading, code, line)
                for lang, heading, code, line in fenced_blocks(path.read_text("utf-8"), name)
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


def test_readme_is_short_and_has_its_examples():
    lines = len(README.read_text("utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"
    in_readme = [block for block in PYTHON if block[0] == "README.md"]
    assert len(in_readme) >= 3, f"found only {len(in_readme)} ```python blocks in README.md"


@pytest.mark.parametrize("path", PAGES, ids=name_of)
def test_every_fence_names_its_language(path):
    untagged = [line for lang, _, _, line in fenced_blocks(path.read_text("utf-8"), name_of(path))
                if not lang]
    assert not untagged, f"{name_of(path)}: fences at lines {untagged} name no language"


def test_every_docs_page_links_back_to_the_readme_and_is_linked_from_it():
    readme_links = {target.partition("#")[0] for target in LINK.findall(prose(
        README.read_text("utf-8")))}
    for path in DOCS:
        text = path.read_text("utf-8")
        assert text.startswith("# "), f"{name_of(path)} does not open with a title"
        opening = prose(text)[:1000]  # the title and the one-line purpose
        back = [t for t in LINK.findall(opening) if t.partition("#")[0] == "../README.md"]
        assert back, f"{name_of(path)} does not link back to the README at its top"
        assert name_of(path) in readme_links, f"README.md does not link to {name_of(path)}"


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


def link_problems(path: Path, text: str) -> dict[str, list[str]]:
    """The links of page ``path`` (holding ``text``) that leave the repository, name a file
    that does not exist, or name a heading its target lacks."""
    problems = {"outside": [], "missing": [], "dangling": []}
    problems["missing"] += ["(empty)"] * len(EMPTY_LINK.findall(prose(text)))
    for target in LINK.findall(prose(text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if resolved != ROOT and ROOT not in resolved.parents:
            problems["outside"].append(target)
        elif not resolved.exists() and resolved != path:
            problems["missing"].append(target)
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(
                text if resolved == path else resolved.read_text("utf-8"))):
            problems["dangling"].append(target)
    return problems


@pytest.mark.parametrize("path", PAGES, ids=name_of)
def test_links_resolve(path):
    name, text = name_of(path), path.read_text("utf-8")
    assert "shared/" not in text, f"{name} names the project's shared folder, outside the repo"
    problems = link_problems(path, text)
    assert not problems["outside"], f"{name} links outside the repository: {problems['outside']}"
    assert not problems["missing"], (
        f"{name} links to files that do not exist: {problems['missing']}")
    assert not problems["dangling"], (
        f"{name} links to headings that do not exist: {problems['dangling']}")


def test_the_link_check_rejects_broken_links():
    """The slug rules and the check itself on known cases: a check that passed everything
    would pass the pages too."""
    assert github_anchor("Swapping torch.nn for bptorch") == "swapping-torchnn-for-bptorch"
    assert github_anchor("Speed (`python -m benchmarks.conv [--quick]`)") == (
        "speed-python--m-benchmarksconv---quick")
    assert github_anchor("What `update_mini_batch` does") == "what-update_mini_batch-does"
    assert github_anchor("Convolutional layers and the book's chapter 6") == (
        "convolutional-layers-and-the-books-chapter-6")
    assert github_anchor("Results: 97.92% in [ch3](x.md)") == "results-9792-in-ch3"
    assert anchors("# A\n## B\n## B\n```text\n## C\n```\n") == {"a", "b", "b-1"}
    page = ROOT / "docs" / "not-a-page.md"  # never written: the check reads only `text`
    text = ("# Here\n[ok](../README.md#quickstart) [self](#here) [img](img/vanishing_speed.png)\n"
            "[gone](../no/such/file.md) [nohead](../README.md#no-such-heading) [selfbad](#nope)\n"
            "[out](../../etc/passwd) [web](https://pytorch.org) `[code](not/a/link.md)` [empty]()\n"
            "```text\n[fenced](not/a/link/either.md)\n```\n")
    assert link_problems(page, text) == {
        "outside": ["../../etc/passwd"], "missing": ["(empty)", "../no/such/file.md"],
        "dangling": ["../README.md#no-such-heading", "#nope"]}
    family = "[new](../bptorch/functions/linear.py) [typo](../bptorch/functions/lineer.py)\n"
    assert link_problems(page, family)["missing"] == ["../bptorch/functions/lineer.py"]
