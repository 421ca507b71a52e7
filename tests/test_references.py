"""Every section of docs/papers.md that the code, configs, tests or docs cite exists in the shipped file."""

from __future__ import annotations

import re

from tests.conftest import REPO

PAPERS = REPO / "docs/papers.md"
# "docs/papers.md A.11, B.3", "docs/papers.md section A.5", also broken over a line and a comment mark
CITATION = re.compile(r"docs/papers\.md,?(?:\s|#)+(?:section\s+)?((?:[A-G]\.\d+(?:,\s*)?)+)")
LABEL = re.compile(r"([A-G])\.(\d+)")
CITING = [
    "fewmult/**/*.py",
    "conf/**/*.yaml",
    "tests/*.py",
    "hydra_plugins/**/*.py",
    "benchmarks/*.py",
    "sweeps/*.yaml",
    "README.md",
    "BENCHMARKS.md",
]


def citing_files():
    for pattern in CITING:
        yield from REPO.glob(pattern)


def cited_sections() -> set[tuple[str, int]]:
    found = set()
    for path in citing_files():
        for labels in CITATION.findall(path.read_text()):
            found |= {(part, int(n)) for part, n in LABEL.findall(labels)}
    return found


def sections_of_papers_md() -> set[tuple[str, int]]:
    """Headings ``### X.n`` and the numbered items of section D."""
    text = PAPERS.read_text()
    headings = {(part, int(n)) for part, n in re.findall(r"^### ([A-G])\.(\d+) ", text, flags=re.MULTILINE)}
    departures = text.split("\n## D.", 1)[1].split("\n## E.", 1)[0]
    items = {("D", int(n)) for n in re.findall(r"^(\d+)\. ", departures, flags=re.MULTILINE)}
    return headings | items


def test_cited_sections_of_papers_md_exist():
    cited = cited_sections()
    assert len(cited) > 20  # the pattern finds the citations
    missing = sorted(cited - sections_of_papers_md())
    assert not missing, f"cited but not in docs/papers.md: {[f'{p}.{n}' for p, n in missing]}"


def test_the_departures_are_numbered_without_gaps():
    items = sorted(n for part, n in sections_of_papers_md() if part == "D")
    assert items == list(range(1, len(items) + 1))


def test_every_mention_of_papers_md_is_the_shipped_file():
    # a citation without the folder would point at a file that is not in the repository
    stray = [
        f"{path.relative_to(REPO)}: {line.strip()}"
        for path in citing_files()
        for line in path.read_text().splitlines()
        if re.search(r"(?<![/\w])papers\.md", line)
    ]
    assert not stray, stray
