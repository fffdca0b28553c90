"""The code blocks of README.md and docs/service.md run as written, so they never go stale.

How each block is read (files, commands, servers, shown output) is in tests/doc_blocks.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from .doc_blocks import Reader, blocks, plan
from .support import ROOT, free_port

PAGES = ["README.md", "docs/service.md"]
# what a page builds on: docs/service.md uses the greeter package of the README's quick start
GIVEN = {"docs/service.md": ["README.md"]}


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[Reader]:
    directory = tmp_path / "reader"  # an empty directory, as the quick start asks
    directory.mkdir()
    reader = Reader(directory, free_port(), tmp_path / "server.log")
    yield reader
    reader.close()


@pytest.mark.parametrize("page", PAGES)
def test_every_block_is_run_or_says_why_not(page: str):
    """Before anything runs: each block is a file, a command, a program, shown output, a
    transcript or listed in NOT_RUN; and the page runs something."""
    steps = plan(blocks(ROOT, page))
    assert {"file", "sh"} <= {step.kind for step in steps}


@pytest.mark.parametrize("page", PAGES)
def test_the_page_runs_as_written(page: str, reader: Reader):
    for given in [*GIVEN.get(page, []), page]:
        reader.follow(plan(blocks(ROOT, given)))
        reader.stop_server()  # the page is over: Ctrl-C, drain, exit 0


def test_the_readme_starts_with_the_two_set_up_commands():
    first = blocks(ROOT, "README.md")[0]
    commands = [line.split("#")[0].strip() for line in first.text.splitlines()]
    assert (first.lang, commands) == ("sh", ["make demo", "make test"])


def test_no_doc_imports_the_package_by_its_old_name():
    """The runtime is installed as gz; its folder, framework/, is no package to import."""
    pages = [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("examples/**/*.md")]
    pages += ROOT.glob("scaffold/templates/**/*.md*")
    old = re.compile(r"^\s*(import framework|from framework\b)", re.MULTILINE)
    assert [str(p.relative_to(ROOT)) for p in pages if old.search(p.read_text())] == []
