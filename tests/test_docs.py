"""README.md stays a newcomer's page and links to docs/; every relative link in them resolves (issue #21)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_every_relative_link_in_readme_and_docs_resolves() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://|#", target):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert broken == []


def test_readme_links_a_page_for_every_table_family_memory_scale_out_and_the_config() -> None:
    readme = (REPO / "README.md").read_text()
    for page in ("glue", "wmt16", "mmlu", "memory", "baselines", "training", "scale", "config"):
        assert f"docs/{page}.md" in readme, page
    assert len(readme.splitlines()) < 150  # the long reference lives in docs/
