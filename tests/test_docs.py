"""The README stays a product page and every relative link in it and in docs/ resolves (file and
#anchor, GitHub's heading slugs), so moving a section cannot silently break a reference."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```.*?```", re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation except '-' and '_' dropped, spaces
    to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", FENCE.sub("", page.read_text()), re.M)}


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(FENCE.sub("", page.read_text())) if not re.match(r"[a-z]+://|mailto:", t)]


def test_the_readme_is_a_page_not_a_notebook():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines < 300, f"README.md has {lines} lines; move detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = []
    for target in relative_links(page):
        path, _, fragment = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists() or (fragment and (destination.suffix != ".md" or fragment not in anchors(destination))):
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)}: broken links {broken}"


def test_the_link_check_sees_a_broken_anchor(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Results at a glance\n\n[ok](#results-at-a-glance) [bad](#results)\n")
    assert relative_links(page) == ["#results-at-a-glance", "#results"]
    assert "results-at-a-glance" in anchors(page) and "results" not in anchors(page)
