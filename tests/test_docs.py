"""The repository explains itself: every docs/ page a comment, docstring or README cites exists, every page is
reachable from docs/README.md, and nothing cites a document that is not in the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITE = re.compile(r"docs/([A-Za-z0-9_.-]+\.md)")
OUTSIDE = re.compile(r"\b(SPEC|KERNELS|DESIGN|STYLE)\.md\b|\.\./shared\b|SPEC §")


def _tracked_sources() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.py", "*.cu", "*.cpp", "*.h", "*.sh", "*.md", "*.toml", "*.html"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / p for p in out if not p.startswith("bench/results/") and (ROOT / p).is_file()]


def test_cited_docs_pages_exist():
    missing = sorted({f"{p.relative_to(ROOT)} cites docs/{m}" for p in _tracked_sources()
                      for m in CITE.findall(p.read_text(errors="replace")) if not (ROOT / "docs" / m).exists()})
    assert not missing, "\n".join(missing)


def test_no_citation_of_documents_outside_the_repository():
    this = Path(__file__).resolve()
    bad = sorted(f"{p.relative_to(ROOT)}:{i}" for p in _tracked_sources() if p.resolve() != this
                 for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if OUTSIDE.search(line))
    assert not bad, "cites a document users do not have:\n" + "\n".join(bad)


def test_every_docs_page_is_in_the_index():
    index = (ROOT / "docs" / "README.md").read_text()
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name != "README.md")
    assert pages, "docs/ has no pages"
    unlisted = [p for p in pages if f"({p})" not in index]
    assert not unlisted, f"docs/README.md does not link: {unlisted}"
