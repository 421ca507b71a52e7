"""Every section of papers.md that the code, configs, tests or README cite exists in the shipped file."""

from __future__ import annotations

import re

from tests.conftest import REPO

CITATION = re.compile(r"papers\.md,? (?:section )?((?:[A-F]\.\d+(?:, )?)+)")  # "papers.md A.11, B.3"
LABEL = re.compile(r"([A-F])\.(\d+)")
CITING = ["fewmult/**/*.py", "conf/**/*.yaml", "tests/*.py", "hydra_plugins/**/*.py", "README.md"]


def cited_sections() -> set[tuple[str, int]]:
    found = set()
    for pattern in CITING:
        for path in REPO.glob(pattern):
            for labels in CITATION.findall(path.read_text()):
                found |= {(part, int(n)) for part, n in LABEL.findall(labels)}
    return found


def test_cited_sections_of_papers_md_exist():
    text = (REPO / "papers.md").read_text()
    headings = set(re.findall(r"^### ([A-F])\.(\d+) ", text, flags=re.MULTILINE))
    errata = text.split("\n## D.", 1)[1].split("\n## E.", 1)[0]
    numbered = {int(n) for n in re.findall(r"^(\d+)\. ", errata, flags=re.MULTILINE)}
    cited = cited_sections()
    assert len(cited) > 10  # the pattern finds the citations
    missing = [
        f"{part}.{n}"
        for part, n in sorted(cited)
        if not ((part, str(n)) in headings or (part == "D" and n in numbered))
    ]
    assert not missing, f"cited but not in papers.md: {missing}"
