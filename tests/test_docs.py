"""The README is the front door and docs/ holds the rest (issue 29): the README stays short, every
link between them resolves, the README's numbers are the study's, and the command table in
docs/commands.md lists every command and every flag `szoq` has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))
MAX_README_LINES = 350
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)


def _without_code(text: str) -> str:
    """The markdown outside fenced code blocks (a `[x](y)` inside code is not a link)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a markdown file: lowercase, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", _without_code(path.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def _links(path: Path) -> list[str]:
    return LINK.findall(_without_code(path.read_text()))


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail to a docs/ page (at most {MAX_README_LINES})"


def test_readme_keeps_the_blocks_ci_and_tests_read():
    """CI (.ci/run) runs the block after <!-- test-command -->; tests run the Quickstart and the API example."""
    text = README.read_text()
    for marker, fence in (("main-command", "bash"), ("test-command", "bash"), ("quickstart", "bash"), ("api-example", "python")):
        assert re.search(rf"<!-- {marker} -->\s*```{fence}\n.+?\n```", text, re.S), f"README.md lost its <!-- {marker} --> {fence} block"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / target.split("#")[0]).resolve() for target in _links(README) if not re.match(r"[a-z]+:", target)}
    assert PAGES, "docs/ has no pages"
    unlinked = [p.name for p in PAGES if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    """Every relative link and image (README's and each docs page's) names an existing file, and an
    anchor names a heading of that file."""
    broken = []
    for target in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page.resolve()
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading with that anchor)")
    assert not broken, f"{page.relative_to(REPO)}: {broken}"


@pytest.mark.parametrize("title", ["**What to pick", "**Per memory budget"])
def test_readme_summary_tables_are_the_studys(title):
    """The README's "what to pick" and per-budget tables are copies of the study's: same rows, same numbers."""
    readme = README.read_text()
    study = (DOCS / "study.md").read_text()
    rows = [line for line in readme.split(title, 1)[1].split("\n\n", 2)[1].splitlines() if line.startswith("|")]
    assert len(rows) >= 4, rows
    missing = [row for row in rows if row not in study]
    assert not missing, f"README rows not in docs/study.md: {missing}"


def test_study_page_holds_the_generated_table():
    """bench/quality.py --report rewrites the text between these markers in docs/study.md."""
    study = (DOCS / "study.md").read_text()
    assert study.count("<!-- quality-table -->") == 1 and study.count("<!-- /quality-table -->") == 1
    assert "](bench/results/" not in study, "docs/ pages reach images as ../bench/results/..."


def _help_flags(run_cli, monkeypatch, command: list[str]) -> set[str]:
    monkeypatch.setenv("COLUMNS", "200")  # one option per row, never wrapped
    code, out, err = run_cli(*command, "--help")
    assert code == 0, err
    return set(re.findall(r"^\W*?(?:\*\s+)?(--[a-z0-9-]+)", out, re.M)) - {"--help"}


def _command_table() -> dict[str, set[str]]:
    """docs/commands.md's table: `szoq CMD ...` -> the flags its row lists."""
    text = (DOCS / "commands.md").read_text()
    table = text.split("<!-- command-table -->", 1)[1].split("<!-- /command-table -->", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.match(r"`szoq ([a-z]+(?: [a-z]+)?)", cells[0]) if cells else None
        if m:
            rows[m.group(1)] = set(re.findall(r"--[a-z0-9-]+", cells[2]))
    return rows


def test_commands_page_lists_every_command_and_flag(run_cli, monkeypatch):
    """Every command `szoq --help` (and its groups' --help) shows has a row, and each row lists exactly
    the flags that command's --help shows: a flag added, renamed or removed must reach the docs."""
    table = _command_table()
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli("--help")
    assert code == 0
    commands = []
    for name in re.findall(r"^│ ([a-z]+) ", out, re.M):
        code, sub, _ = run_cli(name, "--help")
        subcommands = re.findall(r"^│ ([a-z]+) ", sub.split("Commands", 1)[1], re.M) if "─ Commands " in sub else []
        commands += [f"{name} {s}" for s in subcommands] or [name]
    assert len(commands) >= 15, commands
    assert sorted(table) == sorted(commands), "docs/commands.md's command table and `szoq --help` list different commands"
    for command in commands:
        shown = _help_flags(run_cli, monkeypatch, command.split())
        assert table[command] == shown, f"szoq {command}: documented {sorted(table[command])}, --help shows {sorted(shown)}"
