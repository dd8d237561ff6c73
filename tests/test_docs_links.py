"""README.md and docs/*.md: every relative link resolves, and the README stays a front page.

A link `file.md#anchor` must name a heading of that file, slugged as GitHub does. Links to
http(s) and mailto addresses are not followed (no network).
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 400

# [text](target) and ![alt](target), an optional "title" after the target.
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked."""
    lines, fence = [], None
    for line in text.splitlines():
        stripped = line.lstrip()
        marker = stripped[:3]
        if marker in ("```", "~~~"):
            if fence is None:
                fence = marker
            elif marker == fence:
                fence = None
            lines.append("")
            continue
        lines.append("" if fence else line)
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters, digits, _ (Unicode too)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file; repeated headings get -1, -2, ..."""
    seen: dict[str, int] = {}
    result = set()
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link and image outside code."""
    found = []
    for number, line in enumerate(_prose_lines(path.read_text(encoding="utf-8")), start=1):
        line = re.sub(r"`[^`]*`", "", line)
        found.extend((number, m.group(1)) for m in _LINK.finditer(line))
    return found


def _problem(path: Path, target: str) -> str | None:
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.IGNORECASE):
        return None  # http(s), mailto, ...: not followed
    file_part, _, anchor = target.partition("#")
    resolved = (path.parent / file_part).resolve() if file_part else path
    if not resolved.exists():
        return f"{file_part}: no such file"
    if anchor:
        if resolved.suffix != ".md":
            return f"#{anchor}: anchor into a file that is not Markdown"
        if anchor not in anchors(resolved):
            return f"#{anchor}: no such heading in {resolved.name}"
    return None


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    problems = [
        f"{path.relative_to(ROOT)}:{number}: ({target}) {problem}"
        for number, target in links(path)
        if (problem := _problem(path, target))
    ]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_docs_are_linked_from_the_readme() -> None:
    readme_targets = {target.partition("#")[0] for _, target in links(ROOT / "README.md")}
    unlinked = [path.name for path in DOCUMENTS[1:] if f"docs/{path.name}" not in readme_targets]
    assert not unlinked, f"docs not linked from README.md: {unlinked}"


def test_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines (limit {README_MAX_LINES})"


def test_github_slug() -> None:
    assert github_slug("MultiFCL, step by step against Algorithm 1") == (
        "multifcl-step-by-step-against-algorithm-1"
    )
    assert github_slug("Plug-in comparison (offline CIFAR-10 image folder, `finetune`)") == (
        "plug-in-comparison-offline-cifar-10-image-folder-finetune"
    )
    assert github_slug("Set-up: two commands") == "set-up-two-commands"
    assert github_slug("MultiFCL's communication, counted") == "multifcls-communication-counted"


def test_a_broken_link_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## A section\n\n[ok](#a-section) [bad](#nowhere) [gone](missing.md)\n"
        "[web](https://example.org/x.md) `[code](ignored.md)`\n\n```\n[fenced](no.md)\n```\n",
        encoding="utf-8",
    )
    problems = [t for _, t in links(page) if _problem(page, t)]
    assert problems == ["#nowhere", "missing.md"]
