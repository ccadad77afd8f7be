"""The docs hold together: every relative link in the README and the docs resolves (file and anchor), the README
links every docs page, stays short, and the generated parameters reference is current."""

from __future__ import annotations

import re
from pathlib import Path

from .conftest import REPO

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), REPO / "benchmarks" / "README.md",
                *(REPO / "results").glob("*/README.md")])  # fmt: skip


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in PAGES:
        for target in _links(page):
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_readme_is_short_and_links_every_docs_page() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    linked = {(REPO / t.partition("#")[0]).resolve() for t in _links(REPO / "README.md")}
    assert not [p.name for p in (REPO / "docs").glob("*.md") if p.resolve() not in linked]


def test_the_parameters_reference_is_generated_from_the_schema() -> None:
    from embedlab.cli.reference import BEGIN, END, render

    page = (REPO / "docs" / "parameters.md").read_text()
    committed = page[page.index(BEGIN) : page.index(END) + len(END)]
    assert committed == render(), "docs/parameters.md is stale: run python -m embedlab.cli.reference"


def test_the_architecture_map_matches_dvc_yaml() -> None:
    """docs/architecture.md's stage -> folder table: every stage of dvc.yaml has a row, and each folder it names is
    among that stage's code deps (the folder itself, or files in it)."""
    import yaml

    rows = re.findall(r"^\| `([\w@<>]+)` \| ([^|]+) \|", (REPO / "docs" / "architecture.md").read_text(), flags=re.M)
    mapped = {stage.split("@")[0]: re.findall(r"`(embedlab/[\w/]+)/`", cell) for stage, cell in rows}
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(mapped) == set(stages)
    for name, folders in mapped.items():
        stage = stages[name].get("do", stages[name])
        deps = [d for d in stage["deps"] if d.startswith("embedlab/")]
        assert folders, name
        for folder in folders:
            assert any(d == folder or d.startswith(folder + "/") for d in deps), f"{name}: {folder}"
